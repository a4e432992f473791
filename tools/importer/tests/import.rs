//! `import` against an in-process stand-in for Meridian's HTTP services.

mod mock;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_importer::session::{Credentials, Secret, SessionError};
use meridian_importer::vessel::Verification;
use meridian_importer::{import, ImportError, ImportOptions, ImportReport, RetryPolicy};
use mock::{Faults, MockMeridian};
use tempfile::TempDir;

/// Three vessels with shuffled columns, a vessel name on some rows and three invalid rows.
const SMALL_FILE: &str = "\
VesselName,LAT,BaseDateTime,SOG,MMSI,LON
,40.1,2020-06-30T00:00:00,0.0,111,-74.1
FERRY ONE,40.2,2020-06-30T00:00:05,0.0,111,-74.2
TUG,41.0,2020-06-30T00:00:01,0.0,222,-73.0
BAD,95.5,2020-06-30T00:00:02,0.0,222,-73.0
,40.3,2020-06-30T00:00:10,0.0,111,-74.3
,41.1,2020-06-30T00:00:03,0.0,222,-73.1
,42.0,2020-06-30T00:00:00,0.0,333,-72.0
,40.4,yesterday,0.0,111,-74.4
,40.5,2020-06-30T00:00:10,0.0,111,-74.5
,41.2,2020-06-30T00:00:02,0.0,222,-73.2
,42.1,2020-06-30T00:00:00,0.0,,-72.1
";

fn write_file(directory: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = directory.path().join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    path
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn options(path: &Path, mock: &MockMeridian) -> ImportOptions {
    ImportOptions {
        command_url: mock.command_url.clone(),
        query_url: mock.query_url.clone(),
        batch_size: 2,
        concurrency: 2,
        wait_timeout: Duration::from_secs(10),
        show_progress: false,
        retry: fast_retry(),
        request_timeout: Duration::from_secs(10),
        lookup_timeout: Duration::from_secs(5),
        ..ImportOptions::new(path, mock.credentials())
    }
}

fn time(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

async fn import_small_file(faults: Faults) -> (TempDir, MockMeridian, ImportReport) {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(faults).await;
    let report = import(options(&path, &mock)).await.unwrap();
    (directory, mock, report)
}

#[tokio::test]
async fn small_file_is_imported() {
    let (_directory, mock, report) = import_small_file(Faults::default()).await;

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.rows_read, 11);
    let skipped: Vec<u64> = report.skipped_rows.iter().map(|row| row.line).collect();
    assert_eq!(skipped, vec![5, 9, 12]);
    assert_eq!(report.valid_rows(), 8);
    assert_eq!(report.reports_imported(), 8);
    assert_eq!(report.events_stored(), 8);
    assert_eq!(report.verified_vessels(), 3);
    let order: Vec<u64> = report.vessels.iter().map(|vessel| vessel.mmsi).collect();
    assert_eq!(order, vec![111, 222, 333]);

    let state = mock.state();
    let (user_id, user) = state.user_by_email("vessel-111@ais.example").unwrap();
    assert_eq!(user.name, "FERRY ONE");
    assert_eq!(report.vessels[0].user_id, Some(user_id));
    let latitudes: Vec<f64> = state.tracks[&user_id]
        .iter()
        .map(|stored| stored.report.latitude)
        .collect();
    assert_eq!(latitudes, vec![40.1, 40.2, 40.3, 40.5]);
    let (_, unnamed) = state.user_by_email("vessel-333@ais.example").unwrap();
    assert_eq!(unnamed.name, "MMSI 333");
}

#[tokio::test]
async fn latest_location_follows_file_order_on_ties() {
    let (_directory, mock, report) = import_small_file(Faults::default()).await;

    // Lines 6 and 10 share the greatest timestamp of vessel 111; line 10 comes later.
    let vessel = &report.vessels[0];
    let expected = vessel.expected_latest.unwrap();
    assert_eq!(expected.line, 10);
    assert_eq!(expected.report.latitude, 40.5);
    assert_eq!(vessel.verification, Verification::Matched);
    let state = mock.state();
    let latest = &state.latest[&vessel.user_id.unwrap()];
    assert_eq!(latest.report.latitude, 40.5);
    assert_eq!(latest.report.recorded_at, time("2020-06-30T00:00:10Z"));
}

#[tokio::test]
async fn older_last_report_still_catches_up() {
    let (_directory, _mock, report) = import_small_file(Faults::default()).await;

    // Vessel 222 reports at 00:01, 00:03 and 00:02: its last event is not its latest report.
    let vessel = &report.vessels[1];
    assert_eq!(vessel.last_sequence, Some(3));
    let expected = vessel.expected_latest.unwrap();
    assert_eq!(expected.line, 7);
    assert_eq!(expected.sequence, Some(2));
    assert_eq!(vessel.verification, Verification::Matched);
}

#[tokio::test]
async fn every_request_has_an_idempotency_key() {
    let (_directory, mock, report) = import_small_file(Faults::default()).await;
    let state = mock.state();

    let mut user_keys: Vec<String> = state
        .requests
        .iter()
        .filter(|request| request.path == "/v1/users")
        .filter_map(|request| request.idempotency_key.clone())
        .collect();
    user_keys.sort();
    assert_eq!(
        user_keys,
        vec!["import-user-111", "import-user-222", "import-user-333"]
    );

    let batch_keys: Vec<String> = state
        .location_requests()
        .iter()
        .map(|request| request.idempotency_key.clone().unwrap())
        .collect();
    let distinct: HashSet<&String> = batch_keys.iter().collect();
    // Vessel 111 has 4 reports, 222 has 3 and 333 has 1: 2 + 2 + 1 batches of at most 2.
    assert_eq!(batch_keys.len(), 5);
    assert_eq!(distinct.len(), 5);
    assert_eq!(report.vessels[0].last_sequence, Some(4));
}

#[tokio::test]
async fn rerun_finds_same_users_and_stores_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults::default()).await;

    let first = import(options(&path, &mock)).await.unwrap();
    let second = import(options(&path, &mock)).await.unwrap();

    assert!(second.is_success(), "{}", second.summary());
    for (before, after) in first.vessels.iter().zip(&second.vessels) {
        assert_eq!(before.user_id, after.user_id, "vessel {}", before.mmsi);
    }
    assert_eq!(first.events_stored(), 8);
    assert_eq!(first.reports_replayed(), 0);
    assert_eq!(second.reports_imported(), 8);
    assert_eq!(second.reports_replayed(), 8);
    assert_eq!(second.events_stored(), 0);
    let summary = second.summary().to_string();
    assert!(
        summary.contains("(0 new location events, 8 reports sent by an earlier import)"),
        "{summary}"
    );
    let state = mock.state();
    assert_eq!(state.vessel_users(), 3);
    let stored: usize = state.tracks.values().map(Vec::len).sum();
    assert_eq!(stored, 8);
}

#[tokio::test]
async fn rerun_with_other_batch_size_stores_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults::default()).await;

    import(options(&path, &mock)).await.unwrap();
    let second = import(ImportOptions {
        batch_size: 3,
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert!(second.is_success(), "{}", second.summary());
    assert_eq!(second.events_stored(), 0);
    assert_eq!(second.verified_vessels(), 3);
    assert!(second
        .vessels
        .iter()
        .all(|vessel| vessel.last_sequence.is_none()));
}

#[tokio::test]
async fn unavailable_service_is_retried() {
    let faults = Faults {
        unavailable_locations: 3,
        ..Faults::default()
    };
    let (_directory, mock, report) = import_small_file(faults).await;

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.events_stored(), 8);
    let state = mock.state();
    let refused = state
        .location_requests()
        .iter()
        .filter(|request| request.status == 503)
        .count();
    assert_eq!(refused, 3);
}

#[tokio::test]
async fn persistent_failure_stops_vessel() {
    let faults = Faults {
        unavailable_locations: 1_000,
        ..Faults::default()
    };
    let (_directory, mock, report) = import_small_file(faults).await;

    assert!(!report.is_success());
    assert_eq!(report.failed_vessels(), vec![111, 222, 333]);
    assert_eq!(report.reports_imported(), 0);
    // Each vessel stops after its first batch fails 5 times; later batches are never sent.
    assert_eq!(mock.state().location_requests().len(), 15);
    let failure = report.vessels[0].failure.as_deref().unwrap();
    assert!(failure.contains("batch 1 of 2 (lines 2-3)"), "{failure}");
}

#[tokio::test]
async fn rejected_batch_is_reported_and_next_sent() {
    let directory = tempfile::tempdir().unwrap();
    let text = "\
MMSI,BaseDateTime,LAT,LON
7,2019-01-01T00:00:00,40.0,-74.0
7,2019-01-01T00:00:01,40.1,-74.0
7,2001-01-01T00:00:02,40.2,-74.0
7,2019-01-01T00:00:03,40.3,-74.0
7,2019-01-01T00:00:04,40.4,-74.0
";
    let path = write_file(&directory, "rejected.csv", text);
    let mock = MockMeridian::start(Faults {
        reject_year: Some(2001),
        ..Faults::default()
    })
    .await;
    let report = import(options(&path, &mock)).await.unwrap();

    assert!(report.is_success(), "{}", report.summary());
    let rejected: Vec<_> = report.rejected_batches().collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].index, 1);
    assert_eq!(rejected[0].lines, vec![4, 5]);
    assert_eq!(rejected[0].offending_line, Some(4));
    assert_eq!(rejected[0].field.as_deref(), Some("reports[0].recorded_at"));
    assert_eq!(rejected[0].status, 422);
    assert_eq!(report.reports_imported(), 3);
    let vessel = &report.vessels[0];
    assert_eq!(vessel.expected_latest.unwrap().line, 6);
    assert_eq!(vessel.verification, Verification::Matched);
}

#[tokio::test]
async fn rejected_last_batch_moves_expected_latest() {
    let directory = tempfile::tempdir().unwrap();
    let text = "\
MMSI,BaseDateTime,LAT,LON
7,2019-01-01T00:00:00,40.0,-74.0
7,2019-01-01T00:00:01,40.1,-74.0
7,2001-01-01T00:00:02,40.2,-74.0
";
    let path = write_file(&directory, "rejected.csv", text);
    let mock = MockMeridian::start(Faults {
        reject_year: Some(2001),
        ..Faults::default()
    })
    .await;
    let report = import(options(&path, &mock)).await.unwrap();

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.vessels[0].expected_latest.unwrap().line, 3);
}

#[tokio::test]
async fn taken_email_is_looked_up() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        lookup_misses: 3,
        ..Faults::default()
    })
    .await;
    let existing = mock
        .state()
        .register_elsewhere("vessel-222@ais.example", "Registered elsewhere");

    let report = import(options(&path, &mock)).await.unwrap();

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.vessels[1].user_id, Some(existing));
    assert_eq!(mock.state().tracks[&existing].len(), 3);
}

#[tokio::test]
async fn taken_email_never_shown_fails_vessel() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        lookup_misses: usize::MAX,
        ..Faults::default()
    })
    .await;
    mock.state()
        .register_elsewhere("vessel-333@ais.example", "Registered elsewhere");

    let report = import(ImportOptions {
        lookup_timeout: Duration::from_millis(600),
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert_eq!(report.failed_vessels(), vec![333]);
    assert!(!report.is_success());
    let failure = report.vessels[2].failure.as_deref().unwrap();
    assert!(failure.contains("registration failed"), "{failure}");
}

#[tokio::test]
async fn stalled_query_service_names_lagging_vessels() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        hide_locations: true,
        ..Faults::default()
    })
    .await;

    let report = import(ImportOptions {
        wait_timeout: Duration::from_secs(1),
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert!(!report.is_success());
    assert_eq!(report.lagging_vessels(), vec![111, 222, 333]);
    assert!(report.wait_time >= Duration::from_secs(1));
    let summary = report.summary().to_string();
    assert!(
        summary.contains("did not catch up with: 111, 222, 333"),
        "{summary}"
    );
}

#[tokio::test]
async fn lagging_sequence_is_not_caught_up() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        sequence_lag: 1,
        ..Faults::default()
    })
    .await;

    let report = import(ImportOptions {
        wait_timeout: Duration::from_millis(500),
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert_eq!(report.lagging_vessels(), vec![111, 222, 333]);
    let Verification::Lagging { seen_sequence, .. } = &report.vessels[0].verification else {
        panic!("expected Lagging, got {:?}", report.vessels[0].verification);
    };
    assert_eq!(*seen_sequence, Some(3));
}

#[tokio::test]
async fn wrong_latest_location_is_a_mismatch() {
    let (_directory, _mock, report) = import_small_file(Faults {
        wrong_latitude: true,
        ..Faults::default()
    })
    .await;

    assert!(!report.is_success());
    assert_eq!(report.mismatched_vessels(), vec![111, 222, 333]);
    let Verification::Mismatch { found } = &report.vessels[0].verification else {
        panic!("expected Mismatch");
    };
    assert_eq!(found.latitude, 40.0);
}

#[tokio::test]
async fn unreachable_command_service_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults::default()).await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);

    let error = import(ImportOptions {
        command_url: closed_url,
        ..options(&path, &mock)
    })
    .await
    .unwrap_err();

    assert!(
        matches!(
            error,
            ImportError::Unreachable {
                service: "command service",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.exit_code(), 1);
    assert!(mock.state().requests.is_empty());
}

#[tokio::test]
async fn missing_column_sends_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(
        &directory,
        "no-lat.csv",
        "MMSI,BaseDateTime,LON\n1,2020-06-30T00:00:00,-74.0\n",
    );
    let mock = MockMeridian::start(Faults::default()).await;

    let error = import(options(&path, &mock)).await.unwrap_err();

    assert!(matches!(error, ImportError::Parse { .. }), "{error}");
    assert_eq!(error.exit_code(), 2);
    assert!(
        error.to_string().contains("missing required column LAT"),
        "{error}"
    );
    assert!(mock.state().requests.is_empty());
}

#[tokio::test]
async fn missing_file_is_a_usage_error() {
    let directory = tempfile::tempdir().unwrap();
    let mock = MockMeridian::start(Faults::default()).await;

    let error = import(options(&directory.path().join("absent.csv"), &mock))
        .await
        .unwrap_err();

    assert!(matches!(error, ImportError::Open { .. }), "{error}");
    assert_eq!(error.exit_code(), 2);
}

#[tokio::test]
async fn invalid_batch_size_is_a_usage_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults::default()).await;

    let error = import(ImportOptions {
        batch_size: 1001,
        ..options(&path, &mock)
    })
    .await
    .unwrap_err();

    assert!(
        matches!(error, ImportError::InvalidOption { .. }),
        "{error}"
    );
    assert_eq!(error.exit_code(), 2);
}

#[tokio::test]
async fn first_hour_file_is_imported() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/ais/nyharbor_2020_06_30_first_hour.csv");
    let mock = MockMeridian::start(Faults::default()).await;

    let report = import(ImportOptions {
        batch_size: 500,
        concurrency: 8,
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.rows_read, 8_689);
    assert_eq!(report.vessels.len(), 295);
    assert_eq!(report.reports_imported(), 8_689);
    assert_eq!(report.verified_vessels(), 295);
    let state = mock.state();
    assert_eq!(state.vessel_users(), 295);
    let stored: usize = state.tracks.values().map(Vec::len).sum();
    assert_eq!(stored as u64, report.events_stored());
}

#[tokio::test]
async fn every_request_carries_an_issued_token() {
    let (_directory, mock, report) = import_small_file(Faults::default()).await;

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.session.logins, 1);
    let state = mock.state();
    assert_eq!(state.auth.logins, 1);
    assert_eq!(state.auth.rejected_tokens, 0);
    let api_requests: Vec<_> = state
        .requests
        .iter()
        .filter(|request| !request.path.starts_with("/v1/auth/"))
        .collect();
    assert!(api_requests.len() > 10, "{} requests", api_requests.len());
    for request in api_requests {
        let token = request.bearer.as_ref();
        assert!(
            token.is_some_and(|token| state.auth.issued.contains(token)),
            "{} {} carried {token:?}",
            request.method,
            request.path
        );
    }
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let (_directory, mock, report) = import_small_file(Faults {
        access_ttl_secs: 1,
        location_delay: Duration::from_millis(400),
        ..Faults::default()
    })
    .await;

    assert!(report.is_success(), "{}", report.summary());
    let state = mock.state();
    // Five batches of 400 ms at concurrency 2 outlast a token renewed every 750 ms.
    assert!(
        state.auth.refreshes >= 1,
        "{} refreshes",
        state.auth.refreshes
    );
    assert_eq!(report.session.refreshes as usize, state.auth.refreshes);
    assert_eq!(
        state.auth.expired_responses, 0,
        "no request used an expired token"
    );
    assert_eq!(state.auth.reused_refresh_tokens, 0);
    assert_eq!(state.auth.logins, 1);
}

#[tokio::test]
async fn expired_token_is_refreshed_and_request_repeated() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        expired_tokens: 1,
        ..Faults::default()
    })
    .await;

    let report = import(ImportOptions {
        concurrency: 1,
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.events_stored(), 8);
    let state = mock.state();
    assert_eq!(state.auth.expired_responses, 1);
    assert_eq!(state.auth.refreshes, 1);
    assert_eq!(state.auth.reused_refresh_tokens, 0);
    let rejected = state
        .requests
        .iter()
        .position(|request| request.status == 401)
        .unwrap();
    let repeated = &state.requests[rejected + 2];
    assert_eq!(state.requests[rejected + 1].path, "/v1/auth/refresh");
    assert_eq!(repeated.path, state.requests[rejected].path);
    assert_ne!(repeated.bearer, state.requests[rejected].bearer);
    assert!(
        repeated.status < 300,
        "the repeat returned {}",
        repeated.status
    );
}

#[tokio::test]
async fn token_expired_after_refresh_fails_vessel() {
    let (_directory, mock, report) = import_small_file(Faults {
        expired_tokens: usize::MAX,
        ..Faults::default()
    })
    .await;

    assert_eq!(report.failed_vessels(), vec![111, 222, 333]);
    let failure = report.vessels[0].failure.as_deref().unwrap();
    assert!(failure.contains("401"), "{failure}");
    assert!(failure.contains("token_expired"), "{failure}");
    let state = mock.state();
    // Each of the three registrations renews the token at most once.
    assert!(
        state.auth.refreshes <= 3,
        "{} refreshes",
        state.auth.refreshes
    );
    assert!(state.location_requests().is_empty());
}

#[tokio::test]
async fn rate_limited_request_waits_for_retry_after() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        rate_limited_locations: 2,
        ..Faults::default()
    })
    .await;

    let report = import(ImportOptions {
        concurrency: 1,
        ..options(&path, &mock)
    })
    .await
    .unwrap();

    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.events_stored(), 8);
    assert_eq!(report.session.rate_limited, 2);
    assert!(report.session.rate_limited_wait >= Duration::from_secs(2));
    let summary = report.summary().to_string();
    assert!(summary.contains("limited:    2 responses 429"), "{summary}");
    let state = mock.state();
    let locations = state.location_requests();
    for (index, request) in locations.iter().enumerate() {
        if request.status != 429 {
            continue;
        }
        let next = locations[index + 1];
        assert_eq!(next.idempotency_key, request.idempotency_key);
        let waited = next.at - request.at;
        assert!(
            waited >= Duration::from_secs(1),
            "repeated after {waited:?}"
        );
    }
}

#[tokio::test]
async fn rate_limit_waits_are_bounded() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults {
        rate_limited_locations: usize::MAX,
        ..Faults::default()
    })
    .await;

    let mut options = ImportOptions {
        concurrency: 1,
        ..options(&path, &mock)
    };
    options.rate_limit.max_waits = 2;
    options.rate_limit.max_wait = Duration::from_millis(10);
    let report = import(options).await.unwrap();

    assert_eq!(report.failed_vessels(), vec![111, 222, 333]);
    let failure = report.vessels[0].failure.as_deref().unwrap();
    assert!(failure.contains("429"), "{failure}");
    // One request and two repeats per vessel, each stopping after its first batch.
    assert_eq!(mock.state().location_requests().len(), 9);
    assert_eq!(report.session.rate_limited, 9);
}

#[tokio::test]
async fn wrong_password_is_a_login_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_file(&directory, "small.csv", SMALL_FILE);
    let mock = MockMeridian::start(Faults::default()).await;

    let error = import(ImportOptions {
        credentials: Credentials::new(mock::ADMIN_EMAIL, Secret::new("wrong password")),
        ..options(&path, &mock)
    })
    .await
    .unwrap_err();

    assert!(
        matches!(error, ImportError::Login(SessionError::Rejected { .. })),
        "{error}"
    );
    assert_eq!(error.exit_code(), 2);
    let message = error.to_string();
    assert!(message.contains(mock::ADMIN_EMAIL), "{message}");
    assert!(message.contains("password file"), "{message}");
    assert!(!message.contains("wrong password"), "{message}");
    let state = mock.state();
    assert_eq!(state.auth.failed_logins, 1);
    assert_eq!(state.vessel_users(), 0);
}
