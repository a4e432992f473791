//! The command line of `meridian-import`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::options::{
    ImportOptions, DEFAULT_BATCH_SIZE, DEFAULT_COMMAND_URL, DEFAULT_CONCURRENCY, DEFAULT_QUERY_URL,
};
use crate::session::Credentials;
use crate::ImportError;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  every vessel was imported and the query service shows its last report
     (skipped rows and rejected batches are reported but do not fail the import)
  1  a vessel failed, the query service did not catch up in time or shows another
     latest location, or a service could not be reached
  2  invalid arguments, an unreadable file or password file, a missing required
     column, or an email address and password that the command service rejects";

/// Imports AIS vessel reports (MarineCadastre CSV) into Meridian: one user per vessel, one
/// location report per row.
#[derive(Debug, Parser)]
#[command(name = "meridian-import", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// AIS CSV file with the columns MMSI, BaseDateTime, LAT, LON and optionally VesselName.
    #[arg(value_name = "FILE", required_unless_present = "file_option")]
    file: Option<PathBuf>,

    /// AIS CSV file, as an alternative to the positional argument.
    #[arg(
        id = "file_option",
        long = "file",
        value_name = "FILE",
        env = "MERIDIAN_IMPORT_FILE",
        conflicts_with = "file"
    )]
    file_option: Option<PathBuf>,

    /// Base URL of the command service.
    #[arg(long, env = "MERIDIAN_COMMAND_URL", default_value = DEFAULT_COMMAND_URL)]
    command_url: String,

    /// Email address of the admin account the importer logs in as.
    #[arg(long, env = "MERIDIAN_IMPORTER_EMAIL", value_name = "EMAIL")]
    email: String,

    /// File that contains the account's password (line breaks at its end are ignored).
    #[arg(long, env = "MERIDIAN_IMPORTER_PASSWORD_FILE", value_name = "FILE")]
    password_file: PathBuf,

    /// Base URL of the query service.
    #[arg(long, env = "MERIDIAN_QUERY_URL", default_value = DEFAULT_QUERY_URL)]
    query_url: String,

    /// Reports per request, 1 to 1000.
    #[arg(long, env = "MERIDIAN_IMPORT_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,

    /// Vessels imported at the same time; each vessel's batches are sent one after another.
    #[arg(long, env = "MERIDIAN_IMPORT_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,

    /// Seconds to wait for the query service to show every vessel's last report.
    #[arg(long, env = "MERIDIAN_IMPORT_WAIT_TIMEOUT_SECS", default_value_t = 120)]
    wait_timeout_secs: u64,

    /// Hides the progress bars; skipped rows, errors and the summary are still printed.
    #[arg(long, short, env = "MERIDIAN_IMPORT_QUIET")]
    quiet: bool,
}

impl Cli {
    /// Converts the command line into import options, reading the password file; the rest
    /// keep their defaults.
    pub fn into_options(self) -> Result<ImportOptions, ImportError> {
        let file = self.file.or(self.file_option).unwrap_or_default();
        let credentials = Credentials::from_password_file(self.email, &self.password_file)?;
        Ok(ImportOptions {
            command_url: self.command_url,
            query_url: self.query_url,
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            wait_timeout: Duration::from_secs(self.wait_timeout_secs),
            show_progress: !self.quiet,
            ..ImportOptions::new(file, credentials)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `arguments` after a login with a password file that exists.
    fn parse(arguments: &[&str]) -> Result<ImportOptions, clap::Error> {
        let directory = tempfile::tempdir().unwrap();
        let password_file = directory.path().join("password");
        std::fs::write(&password_file, "service password\n").unwrap();
        let mut all = vec![
            "meridian-import",
            "--email",
            "admin@example.com",
            "--password-file",
            password_file.to_str().unwrap(),
        ];
        all.extend_from_slice(arguments);
        parse_all(&all).map(|options| options.unwrap())
    }

    fn parse_all(arguments: &[&str]) -> Result<Result<ImportOptions, ImportError>, clap::Error> {
        Cli::try_parse_from(arguments).map(Cli::into_options)
    }

    #[test]
    fn positional_file_is_accepted() {
        let options = parse(&["data.csv"]).unwrap();
        assert_eq!(options.file, PathBuf::from("data.csv"));
    }

    #[test]
    fn file_option_is_accepted() {
        let options = parse(&["--file", "data.csv"]).unwrap();
        assert_eq!(options.file, PathBuf::from("data.csv"));
    }

    #[test]
    fn file_is_required() {
        let error = parse(&[]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn two_files_conflict() {
        let error = parse(&["a.csv", "--file", "b.csv"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn flags_set_options() {
        let options = parse(&[
            "data.csv",
            "--command-url",
            "http://127.0.0.1:9000",
            "--query-url",
            "http://127.0.0.1:9001",
            "--batch-size",
            "250",
            "--concurrency",
            "3",
            "--wait-timeout-secs",
            "7",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(options.command_url, "http://127.0.0.1:9000");
        assert_eq!(options.query_url, "http://127.0.0.1:9001");
        assert_eq!(options.batch_size, 250);
        assert_eq!(options.concurrency, 3);
        assert_eq!(options.wait_timeout, Duration::from_secs(7));
        assert!(!options.show_progress);
    }

    #[test]
    fn login_flags_set_credentials() {
        let options = parse(&["data.csv"]).unwrap();
        assert_eq!(options.credentials.email, "admin@example.com");
        assert_eq!(options.credentials.password.expose(), "service password");
    }

    #[test]
    fn email_is_required() {
        let error =
            parse_all(&["meridian-import", "data.csv", "--password-file", "p"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn password_file_is_required() {
        let error =
            parse_all(&["meridian-import", "data.csv", "--email", "a@example.com"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn unreadable_password_file_is_a_usage_error() {
        let arguments = [
            "meridian-import",
            "data.csv",
            "--email",
            "a@example.com",
            "--password-file",
            "/nonexistent/password",
        ];
        let error = parse_all(&arguments).unwrap().unwrap_err();
        assert_eq!(error.exit_code(), crate::EXIT_USAGE);
        assert!(
            error.to_string().contains("/nonexistent/password"),
            "{error}"
        );
    }

    #[test]
    fn non_numeric_batch_size_is_an_error() {
        let error = parse(&["data.csv", "--batch-size", "many"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
