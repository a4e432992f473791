//! Command line of `meridian-live-bench`: one subcommand per benchmark, each option with a
//! default that matches the services `make up` starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "meridian-live-bench",
    version,
    about = "Measures live-update latency and idle Socket.IO capacity of running Meridian services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send location commands at a paced rate and measure the time from each accepted
    /// command to its update on a Socket.IO subscriber of the whole-world area.
    Latency(LatencyOptions),
    /// Open idle Socket.IO connections in steps and read the query service's resident memory
    /// after each step.
    Sockets(SocketOptions),
    /// Append location updates to `rm_updates` at a paced rate, publish them on Redis as the
    /// projection does, and measure the time from each commit to its arrival at a Socket.IO
    /// subscriber of every query service given. Needs no Kafka.
    Fanout(FanoutOptions),
}

/// The account a benchmark logs in as, at the command service.
#[derive(Debug, Clone, Args)]
pub struct LoginOptions {
    /// Email address of the account: an admin for `latency`, which records locations for
    /// the users it registers; an admin or analyst for `sockets` and `fanout`.
    #[arg(long, env = "MERIDIAN_BENCH_EMAIL", value_name = "EMAIL")]
    pub email: String,

    /// File that contains the account's password (line breaks at its end are ignored).
    #[arg(long, env = "MERIDIAN_BENCH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct LatencyOptions {
    /// Base URL of the command service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub command_url: String,

    #[command(flatten)]
    pub login: LoginOptions,

    /// Base URL of the query service's HTTP API, sampled for projection lag (GET /v1/stats).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub query_url: String,

    /// URL of the query service's Socket.IO endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8091")]
    pub socket_url: String,

    /// Users to register before the load starts; commands go to them in turn, and a user
    /// never has two commands in flight.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub users: u32,

    /// Location events per second to send, in total.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub rate: u32,

    /// Reports per command: 1 sends single reports, more sends batches.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,

    /// Seconds of load before the measurement starts; their updates are not measured.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=120))]
    pub warmup_secs: u64,

    /// Seconds of measured load.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration_secs: u64,

    /// Seconds to wait after the load for updates still on their way.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub drain_secs: u64,

    /// Registrations sent at once (each hashes a password with argon2id).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub register_concurrency: u32,

    /// Seconds before one HTTP request times out.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub request_timeout_secs: u64,

    /// PostgreSQL URL of the services' database. When set, the event's store time and the
    /// projection's commit time split the latency into stages.
    #[arg(long, env = "MERIDIAN_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory of the Node.js scripts and their node_modules.
    #[arg(long, default_value = "e2e/js")]
    pub js_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutOptions {
    /// Base URL of the command service, where the login goes.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub command_url: String,

    #[command(flatten)]
    pub login: LoginOptions,

    /// PostgreSQL URL of the database that the query services read. The database is created
    /// and migrated if it is missing; use one of its own, because the tool appends rows.
    #[arg(long, env = "MERIDIAN_DATABASE_URL")]
    pub database_url: String,

    /// Redis URL on which the query services receive updates.
    #[arg(
        long,
        env = "MERIDIAN_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,

    /// Topic prefix of the query services; updates go to the Redis channel
    /// `<prefix>updates`. No default, so that a run never publishes to another stack.
    #[arg(long, env = "MERIDIAN_TOPIC_PREFIX")]
    pub topic_prefix: String,

    /// Socket.IO URLs, one per query-service replica, comma-separated. Each gets one
    /// subscriber of the whole-world area.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8091",
        num_args = 1..
    )]
    pub socket_url: Vec<String>,

    /// Location updates per second, in total.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub rate: u32,

    /// Milliseconds between two transactions; each appends the updates due in its tick.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub tick_ms: u64,

    /// Fake users that take turns in the updates; each update is a random point in --bbox.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub users: u32,

    /// Box the locations lie in, as min_lon,min_lat,max_lon,max_lat in degrees.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-74.3,40.5,-73.7,40.9"
    )]
    pub bbox: Vec<f64>,

    /// Seconds of load before the measurement starts; their updates are not measured.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=120))]
    pub warmup_secs: u64,

    /// Seconds of measured load.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration_secs: u64,

    /// Seconds to wait after the load for updates still on their way.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub drain_secs: u64,

    /// Directory of the Node.js scripts and their node_modules.
    #[arg(long, default_value = "e2e/js")]
    pub js_dir: PathBuf,
}

impl FanoutOptions {
    /// Checks what clap cannot: a non-empty prefix, at least one socket URL, and a box
    /// inside the coordinate ranges with its minimum below its maximum.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.topic_prefix.is_empty() {
            anyhow::bail!("--topic-prefix must not be empty; use the query services' prefix");
        }
        if self.socket_url.iter().any(|url| url.trim().is_empty()) {
            anyhow::bail!("--socket-url must list at least one non-empty URL");
        }
        let &[min_lon, min_lat, max_lon, max_lat] = self.bbox.as_slice() else {
            anyhow::bail!(
                "--bbox must have 4 numbers (min_lon,min_lat,max_lon,max_lat), got {}",
                self.bbox.len()
            );
        };
        for (name, value, limit) in [
            ("min_lon", min_lon, 180.0),
            ("max_lon", max_lon, 180.0),
            ("min_lat", min_lat, 90.0),
            ("max_lat", max_lat, 90.0),
        ] {
            if !(-limit..=limit).contains(&value) {
                anyhow::bail!("--bbox {name} must be within ±{limit} degrees, got {value}");
            }
        }
        if min_lon >= max_lon || min_lat >= max_lat {
            anyhow::bail!(
                "--bbox minimum must be below maximum, got lon {min_lon}..{max_lon} and lat \
                 {min_lat}..{max_lat}"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct SocketOptions {
    /// Base URL of the command service, where the login goes.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub command_url: String,

    #[command(flatten)]
    pub login: LoginOptions,

    /// URL of the query service's Socket.IO endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8091")]
    pub socket_url: String,

    /// Process id of the query service whose memory is read. Without it, the id is read
    /// from --pid-file.
    #[arg(long)]
    pub pid: Option<u32>,

    /// File holding the query service's process id, as infra/services.sh writes it.
    #[arg(long, default_value = ".stack/run/query-service.pid")]
    pub pid_file: PathBuf,

    /// Total open sockets after each step, in increasing order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,5000,10000",
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub steps: Vec<u32>,

    /// Sockets held by one Node.js process; more start further processes. Keep it below
    /// the open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub sockets_per_process: u32,

    /// Connections each Node.js process opens at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub parallel: u32,

    /// Seconds to wait after each step before reading memory.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=120))]
    pub settle_secs: u64,

    /// Seconds one step may take to open its sockets.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=1800))]
    pub step_timeout_secs: u64,

    /// Directory of the Node.js scripts and their node_modules.
    #[arg(long, default_value = "e2e/js")]
    pub js_dir: PathBuf,
}

impl SocketOptions {
    /// Checks what clap cannot: the steps must increase.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.steps.is_empty() {
            anyhow::bail!("--steps must name at least one socket count");
        }
        if let Some(pair) = self.steps.windows(2).find(|pair| pair[0] >= pair[1]) {
            anyhow::bail!(
                "--steps must increase, but {} is followed by {}",
                pair[0],
                pair[1]
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `arguments`, adding login flags after the subcommand.
    fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
        let login = [
            "--email",
            "admin@example.com",
            "--password-file",
            "password",
        ];
        let mut all = vec!["meridian-live-bench"];
        if let Some((subcommand, rest)) = arguments.split_first() {
            all.push(subcommand);
            all.extend(login);
            all.extend(rest);
        }
        Cli::try_parse_from(all)
    }

    fn rejection(arguments: &[&str]) -> String {
        match parse(arguments) {
            Ok(cli) => panic!("{arguments:?} was accepted as {cli:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn latency_defaults() {
        let Command::Latency(options) = parse(&["latency"]).expect("defaults parse").command else {
            panic!("latency parsed as another subcommand");
        };
        assert_eq!(options.users, 200);
        assert_eq!(options.rate, 2000);
        assert_eq!(options.batch, 10);
        assert_eq!(options.warmup_secs, 5);
        assert_eq!(options.duration_secs, 30);
    }

    #[test]
    fn login_flags_set_login() {
        let Command::Latency(options) = parse(&["latency"]).expect("defaults parse").command else {
            panic!("latency parsed as another subcommand");
        };
        assert_eq!(options.login.email, "admin@example.com");
        assert_eq!(options.login.password_file, PathBuf::from("password"));
    }

    #[test]
    fn login_required() {
        let error = Cli::try_parse_from(["meridian-live-bench", "sockets"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn batch_above_command_limit_rejected() {
        let message = rejection(&["latency", "--batch", "1001"]);
        assert!(message.contains("--batch"), "{message}");
    }

    #[test]
    fn zero_rate_rejected() {
        let message = rejection(&["latency", "--rate", "0"]);
        assert!(message.contains("--rate"), "{message}");
    }

    #[test]
    fn unbounded_duration_rejected() {
        let message = rejection(&["latency", "--duration-secs", "601"]);
        assert!(message.contains("--duration-secs"), "{message}");
    }

    #[test]
    fn steps_parse_as_list() {
        let Command::Sockets(options) = parse(&["sockets", "--steps", "10,20"])
            .expect("steps parse")
            .command
        else {
            panic!("sockets parsed as another subcommand");
        };
        assert_eq!(options.steps, vec![10, 20]);
        assert!(options.validate().is_ok());
    }

    #[test]
    fn decreasing_steps_rejected() {
        let Command::Sockets(options) = parse(&["sockets", "--steps", "20,10"])
            .expect("steps parse")
            .command
        else {
            panic!("sockets parsed as another subcommand");
        };
        let message = options.validate().expect_err("20,10 must fail").to_string();
        assert!(message.contains("20 is followed by 10"), "{message}");
    }

    fn fanout(arguments: &[&str]) -> FanoutOptions {
        let arguments = [
            "fanout",
            "--database-url",
            "postgres://x/y",
            "--topic-prefix",
            "t.",
        ]
        .into_iter()
        .chain(arguments.iter().copied())
        .collect::<Vec<_>>();
        match parse(&arguments).expect("fanout options parse").command {
            Command::Fanout(options) => options,
            other => panic!("fanout parsed as {other:?}"),
        }
    }

    #[test]
    fn fanout_defaults_valid() {
        let options = fanout(&[]);
        assert_eq!(options.rate, 2000);
        assert_eq!(options.tick_ms, 10);
        assert_eq!(options.socket_url, vec!["http://127.0.0.1:8091"]);
        assert!(options.validate().is_ok());
    }

    #[test]
    fn fanout_socket_urls_parse_as_list() {
        let options = fanout(&["--socket-url", "http://a:1,http://b:2"]);
        assert_eq!(options.socket_url, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn fanout_empty_prefix_rejected() {
        let options = FanoutOptions {
            topic_prefix: String::new(),
            ..fanout(&[])
        };
        let message = options.validate().expect_err("empty prefix").to_string();
        assert!(message.contains("--topic-prefix"), "{message}");
    }

    #[test]
    fn fanout_empty_socket_url_rejected() {
        let options = fanout(&["--socket-url", "http://a:1,"]);
        let message = options.validate().expect_err("empty URL").to_string();
        assert!(message.contains("--socket-url"), "{message}");
    }

    #[test]
    fn fanout_inverted_box_rejected() {
        let options = fanout(&["--bbox=10,0,5,1"]);
        let message = options.validate().expect_err("inverted box").to_string();
        assert!(message.contains("below maximum"), "{message}");
    }

    #[test]
    fn fanout_latitude_out_of_range_rejected() {
        let options = fanout(&["--bbox=0,-91,1,1"]);
        let message = options.validate().expect_err("latitude -91").to_string();
        assert!(message.contains("min_lat"), "{message}");
    }

    #[test]
    fn fanout_box_of_three_numbers_rejected() {
        let options = fanout(&["--bbox", "1,2,3"]);
        let message = options.validate().expect_err("three numbers").to_string();
        assert!(message.contains("got 3"), "{message}");
    }

    #[test]
    fn fanout_negative_box_parses() {
        let options = fanout(&["--bbox", "-10,-20,10,20"]);
        assert_eq!(options.bbox, vec![-10.0, -20.0, 10.0, 20.0]);
        assert!(options.validate().is_ok());
    }

    #[test]
    fn fanout_zero_tick_rejected() {
        let message = rejection(&[
            "fanout",
            "--database-url",
            "postgres://x/y",
            "--topic-prefix",
            "t.",
            "--tick-ms",
            "0",
        ]);
        assert!(message.contains("--tick-ms"), "{message}");
    }

    #[test]
    fn non_numeric_step_rejected() {
        let message = rejection(&["sockets", "--steps", "1000,many"]);
        assert!(message.contains("--steps"), "{message}");
    }
}
