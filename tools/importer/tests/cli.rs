//! The `meridian-import` binary: exit statuses, stderr reports and the summary.

mod mock;

use std::io::Write;
use std::process::Output;

use mock::{Faults, MockMeridian};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_meridian-import");

/// Runs the binary with `arguments` after the mock admin's login flags.
async fn run(arguments: &[&str]) -> Output {
    let password = password_file(mock::ADMIN_PASSWORD);
    run_as(mock::ADMIN_EMAIL, &password, arguments).await
}

/// Runs the binary with `arguments`, logging in as `email` with the password in
/// `password_file`.
async fn run_as(
    email: &str,
    password_file: &tempfile::NamedTempFile,
    arguments: &[&str],
) -> Output {
    Command::new(BINARY)
        .args(["--email", email, "--password-file"])
        .arg(password_file.path())
        .args(arguments)
        .env_remove("MERIDIAN_COMMAND_URL")
        .env_remove("MERIDIAN_QUERY_URL")
        .env_remove("MERIDIAN_IMPORT_FILE")
        .env_remove("MERIDIAN_IMPORTER_EMAIL")
        .env_remove("MERIDIAN_IMPORTER_PASSWORD_FILE")
        .output()
        .await
        .unwrap()
}

fn password_file(password: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{password}").unwrap();
    file
}

fn temp_csv(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn missing_column_exits_with_2() {
    let file = temp_csv("MMSI,LAT,LON\n1,40,-74\n");
    let output = run(&[file.path().to_str().unwrap()]).await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("missing required column BaseDateTime"),
        "{stderr}"
    );
}

#[tokio::test]
async fn unreadable_file_exits_with_2() {
    let output = run(&["/nonexistent/ais.csv"]).await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot open /nonexistent/ais.csv"),
        "{stderr}"
    );
}

#[tokio::test]
async fn missing_file_argument_exits_with_2() {
    let output = run(&[]).await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn invalid_batch_size_exits_with_2() {
    let file = temp_csv("MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,40,-74\n");
    let output = run(&[file.path().to_str().unwrap(), "--batch-size", "0"]).await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid batch size"), "{stderr}");
}

#[tokio::test]
async fn import_prints_skips_and_summary() {
    let mock = MockMeridian::start(Faults::default()).await;
    let file = temp_csv(
        "MMSI,BaseDateTime,LAT,LON\n\
         1,2020-06-30T00:00:00,40,-74\n\
         1,2020-06-30T00:00:01,91,-74\n\
         2,2020-06-30T00:00:00,41,-73\n",
    );
    let output = run(&[
        "--file",
        file.path().to_str().unwrap(),
        "--command-url",
        &mock.command_url,
        "--query-url",
        &mock.query_url,
        "--quiet",
    ])
    .await;

    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("line 3: row skipped: LAT 91 is outside [-90, 90]"),
        "{stderr}"
    );
    assert!(stdout.contains("rows read:  3"), "{stdout}");
    assert!(stdout.contains("imported:   2 reports"), "{stdout}");
    assert!(stdout.contains("skipped:    1 rows"), "{stdout}");
    assert!(
        stdout.contains("vessels:    2 (0 failed, 2 verified)"),
        "{stdout}"
    );
    assert!(stdout.contains("reports/s"), "{stdout}");
}

#[tokio::test]
async fn environment_sets_service_urls() {
    let mock = MockMeridian::start(Faults::default()).await;
    let file = temp_csv("MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,40,-74\n");
    let password = password_file(mock::ADMIN_PASSWORD);
    let output = Command::new(BINARY)
        .arg(file.path())
        .env("MERIDIAN_COMMAND_URL", &mock.command_url)
        .env("MERIDIAN_QUERY_URL", &mock.query_url)
        .env("MERIDIAN_IMPORT_QUIET", "true")
        .env("MERIDIAN_IMPORTER_EMAIL", mock::ADMIN_EMAIL)
        .env("MERIDIAN_IMPORTER_PASSWORD_FILE", password.path())
        .output()
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(mock.state().vessel_users(), 1);
    assert_eq!(mock.state().auth.logins, 1);
}

#[tokio::test]
async fn lagging_query_service_exits_with_1() {
    let mock = MockMeridian::start(Faults {
        hide_locations: true,
        ..Faults::default()
    })
    .await;
    let file = temp_csv("MMSI,BaseDateTime,LAT,LON\n367000140,2020-06-30T00:00:00,40,-74\n");
    let output = run(&[
        file.path().to_str().unwrap(),
        "--command-url",
        &mock.command_url,
        "--query-url",
        &mock.query_url,
        "--wait-timeout-secs",
        "1",
    ])
    .await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("did not catch up with: 367000140"),
        "{stdout}"
    );
}

#[tokio::test]
async fn wrong_password_exits_with_2() {
    let mock = MockMeridian::start(Faults::default()).await;
    let file = temp_csv("MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,40,-74\n");
    let wrong = password_file("not the admin password");
    let output = run_as(
        mock::ADMIN_EMAIL,
        &wrong,
        &[
            file.path().to_str().unwrap(),
            "--command-url",
            &mock.command_url,
            "--query-url",
            &mock.query_url,
        ],
    )
    .await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("rejected the login of admin@meridian.test"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid_credentials"), "{stderr}");
    assert!(!stderr.contains("not the admin password"), "{stderr}");
    assert_eq!(mock.state().auth.failed_logins, 1);
    assert!(mock.state().location_requests().is_empty());
}

#[tokio::test]
async fn missing_password_file_exits_with_2() {
    let file = temp_csv("MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,40,-74\n");
    let output = Command::new(BINARY)
        .args([file.path().to_str().unwrap(), "--email", "a@example.com"])
        .args(["--password-file", "/nonexistent/admin-password"])
        .output()
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot read the password file /nonexistent/admin-password"),
        "{stderr}"
    );
}

#[tokio::test]
async fn output_never_contains_password_or_tokens() {
    let mock = MockMeridian::start(Faults {
        access_ttl_secs: 1,
        expired_tokens: 1,
        rate_limited_locations: 1,
        unavailable_locations: 1,
        location_delay: std::time::Duration::from_millis(300),
        ..Faults::default()
    })
    .await;
    let file = temp_csv(
        "MMSI,BaseDateTime,LAT,LON\n\
         1,2020-06-30T00:00:00,40,-74\n\
         1,2020-06-30T00:00:01,40.1,-74\n\
         1,2020-06-30T00:00:02,40.2,-74\n\
         2,2020-06-30T00:00:00,41,-73\n",
    );
    let output = run(&[
        file.path().to_str().unwrap(),
        "--command-url",
        &mock.command_url,
        "--query-url",
        &mock.query_url,
        "--batch-size",
        "1",
        "--concurrency",
        "1",
    ])
    .await;

    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // The faults made the importer print retries and waits, and renew its token.
    assert!(stderr.contains("rate limited (429)"), "{stderr}");
    assert!(stderr.contains("retrying in"), "{stderr}");
    let state = mock.state();
    assert!(
        state.auth.refreshes >= 2,
        "{} refreshes",
        state.auth.refreshes
    );
    let printed = format!("{stdout}\n{stderr}");
    assert!(!printed.contains(mock::ADMIN_PASSWORD), "{printed}");
    for token in &state.auth.issued {
        assert!(
            !printed.contains(token.as_str()),
            "{token} printed:\n{printed}"
        );
    }
}
