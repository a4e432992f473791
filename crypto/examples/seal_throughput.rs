//! Measures how fast personal data is sealed and opened, and how long a key provider takes to
//! unwrap a data key.
//!
//! ```text
//! cargo run --release -p meridian-crypto --example seal_throughput
//! ```
//!
//! Needs PostgreSQL (a scratch database is created and dropped, as in the tests) and the moto
//! KMS server of `make up` on `MERIDIAN_KMS_ENDPOINT` (default `http://127.0.0.1:4566`).
//!
//! Sealing runs through `EventCipher`, as the services call it: the personal fields of a
//! stored payload are serialized, encrypted with AES-256-GCM-SIV and base64url-encoded, with
//! the user's key already in the cache. A "value" is the personal data of one event: a
//! latitude and longitude pair, an email address, or a settings object of about 4 KiB. MB/s
//! counts the plaintext JSON bytes of those fields, in units of 10^6 bytes. Each measurement
//! runs for a bounded number of values or a bounded time, whichever ends first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_crypto::cache::CachePolicy;
use meridian_crypto::personal::personal_fields;
use meridian_crypto::provider::{KeyProvider, KmsProvider, KmsSettings, LocalProvider};
use meridian_crypto::{EventCipher, Keyring};
use meridian_event_log::testing::TestDatabase;
use serde_json::{json, Map, Value};

const USER: &str = "7d0c2b1e-1f5c-4d7e-9a43-2b7f1f0c9b11";
/// Maximum values and time of one throughput measurement.
const MAX_VALUES: u32 = 200_000;
const MAX_TIME: Duration = Duration::from_secs(3);
/// Unwrap calls per provider, and the time after which the measurement stops early.
const LOCAL_UNWRAPS: usize = 5_000;
const KMS_UNWRAPS: usize = 500;
const MAX_UNWRAP_TIME: Duration = Duration::from_secs(60);
const DEFAULT_KMS_ENDPOINT: &str = "http://127.0.0.1:4566";

struct Case {
    name: &'static str,
    event_type: &'static str,
    payload: Value,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = TestDatabase::create()
        .await
        .context("failed to create a scratch database; is PostgreSQL running?")?;
    let dir = tempfile::tempdir()?;
    let local = Arc::new(LocalProvider::create(dir.path().join("master-keys.json"))?);
    let keyring = Keyring::new(database.pool.clone(), local.clone(), CachePolicy::default());
    let cipher = EventCipher::new(Arc::new(keyring), true);

    let result = run(&cipher, local).await;
    database.drop_database().await?;
    result
}

async fn run(cipher: &EventCipher, local: Arc<LocalProvider>) -> anyhow::Result<()> {
    println!(
        "## Sealing and opening through EventCipher (one value = one event's personal data)\n"
    );
    println!("| value | plaintext bytes | seal values/s | seal MB/s | open values/s | open MB/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for case in cases() {
        measure_case(cipher, &case).await?;
    }

    println!("\n## Unwrapping one data key\n");
    println!("| provider | calls | p50 | p99 | mean |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    measure_unwrap("local (key file)", local.as_ref(), LOCAL_UNWRAPS).await?;
    let endpoint = std::env::var("MERIDIAN_KMS_ENDPOINT")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| DEFAULT_KMS_ENDPOINT.to_owned());
    let (kms, key_id) = create_kms_key(&endpoint).await?;
    let label = format!("kms (moto at {endpoint})");
    let measured = measure_unwrap(&label, &kms, KMS_UNWRAPS).await;
    kms_client(&endpoint)?
        .schedule_key_deletion()
        .key_id(&key_id)
        .pending_window_in_days(7)
        .send()
        .await
        .context("failed to schedule the deletion of the benchmark's KMS key")?;
    measured
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "location pair",
            event_type: "LocationRecorded",
            payload: json!({"LocationRecorded": {
                "latitude": 40.689247,
                "longitude": -74.044502,
                "recorded_at": "2026-12-04T10:00:00Z"
            }}),
        },
        Case {
            name: "email",
            event_type: "EmailChanged",
            payload: json!({"EmailChanged": {"email": "ada.lovelace@example.com"}}),
        },
        Case {
            name: "settings object",
            event_type: "ProfileSettingsUpdated",
            payload: json!({"ProfileSettingsUpdated": {"settings": settings_object(4096)}}),
        },
    ]
}

/// Builds a settings object whose JSON text is at least `size` bytes.
fn settings_object(size: usize) -> Value {
    let mut settings = Map::new();
    settings.insert("theme".into(), json!("dark"));
    settings.insert("language".into(), json!("en-GB"));
    let mut index = 0;
    while serde_json::to_vec(&settings).expect("JSON").len() < size {
        settings.insert(
            format!("preference_{index:03}"),
            json!({"enabled": index % 2 == 0, "value": format!("option-{index}")}),
        );
        index += 1;
    }
    Value::Object(settings)
}

/// Counts the bytes of the personal fields of the case's payload, as JSON text.
fn plaintext_len(case: &Case) -> usize {
    let body = &case.payload[case.event_type];
    personal_fields(case.event_type)
        .iter()
        .filter_map(|field| body.get(*field))
        .map(|value| serde_json::to_vec(value).expect("JSON").len())
        .sum()
}

async fn measure_case(cipher: &EventCipher, case: &Case) -> anyhow::Result<()> {
    let bytes = plaintext_len(case);
    // Loads the key into the cache, so the loops measure sealing only.
    let mut sealed = case.payload.clone();
    cipher
        .seal_event(USER, case.event_type, &mut sealed)
        .await?;

    let seal = run_bounded(|| {
        let mut payload = case.payload.clone();
        async move { cipher.seal_event(USER, case.event_type, &mut payload).await }
    })
    .await?;
    let open = run_bounded(|| {
        let mut payload = sealed.clone();
        async move { cipher.open_event(USER, case.event_type, &mut payload).await }
    })
    .await?;

    println!(
        "| {} | {bytes} | {:.0} | {:.1} | {:.0} | {:.1} |",
        case.name,
        seal.rate(),
        seal.rate() * bytes as f64 / 1e6,
        open.rate(),
        open.rate() * bytes as f64 / 1e6,
    );
    Ok(())
}

struct Throughput {
    values: u32,
    elapsed: Duration,
}

impl Throughput {
    fn rate(&self) -> f64 {
        f64::from(self.values) / self.elapsed.as_secs_f64()
    }
}

/// Runs `step` until `MAX_VALUES` values or `MAX_TIME`, whichever comes first. The clone of
/// the payload made by each step is part of the measured time.
async fn run_bounded<F, Fut, E>(mut step: F) -> anyhow::Result<Throughput>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    let mut values = 0;
    while values < MAX_VALUES && start.elapsed() < MAX_TIME {
        step().await?;
        values += 1;
    }
    Ok(Throughput {
        values,
        elapsed: start.elapsed(),
    })
}

/// Unwraps one wrapped key `calls` times in a row, or until `MAX_UNWRAP_TIME`.
async fn measure_unwrap(
    label: &str,
    provider: &dyn KeyProvider,
    calls: usize,
) -> anyhow::Result<()> {
    let subject = format!("user:{USER}");
    let (_, wrapped) = provider.generate(&subject).await?;
    provider.unwrap(&wrapped, &subject).await?;

    let start = Instant::now();
    let mut latencies = Vec::with_capacity(calls);
    while latencies.len() < calls && start.elapsed() < MAX_UNWRAP_TIME {
        let call = Instant::now();
        provider.unwrap(&wrapped, &subject).await?;
        latencies.push(call.elapsed());
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "| {label} | {} | {} | {} | {} |",
        latencies.len(),
        format_duration(percentile(&latencies, 50)),
        format_duration(percentile(&latencies, 99)),
        format_duration(mean),
    );
    Ok(())
}

/// Returns the nearest-rank percentile of sorted `latencies`.
fn percentile(latencies: &[Duration], percent: usize) -> Duration {
    let rank = (latencies.len() * percent).div_ceil(100).max(1);
    latencies[rank - 1]
}

fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

fn kms_client(endpoint: &str) -> anyhow::Result<aws_sdk_kms::Client> {
    KmsSettings {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".to_owned(),
        key_id: String::new(),
    }
    .client()
}

/// Creates a KMS key for the measurement and returns a provider of it and its key id. The
/// deletion names the key id, because moto 5.2 fails ScheduleKeyDeletion for a key ARN.
async fn create_kms_key(endpoint: &str) -> anyhow::Result<(KmsProvider, String)> {
    let client = kms_client(endpoint)?;
    let created = client
        .create_key()
        .description("meridian-crypto seal_throughput benchmark")
        .send()
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "the KMS server at {endpoint} is not reachable ({}); start moto with `make up` \
                 or set MERIDIAN_KMS_ENDPOINT",
                aws_sdk_kms::error::DisplayErrorContext(&error)
            )
        })?;
    let metadata = created
        .key_metadata
        .context("CreateKey returned no key metadata")?;
    let key_arn = metadata.arn.context("CreateKey returned no key ARN")?;
    let settings = KmsSettings {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".to_owned(),
        key_id: key_arn.clone(),
    };
    Ok((KmsProvider::with_client(client, settings), metadata.key_id))
}
