//! The `wallet` command line: global options, one subcommand per operator task.
//!
//! Adding a subcommand is one variant of [`Command`] (with its `Args` struct) and one function
//! `fn name(global: &GlobalOpts, args: NameArgs) -> Result<(), Failure>` called from [`run`].
//! Input errors (bad flag values) come back as [`Failure::usage`] (exit 2), everything else as a
//! runtime failure (exit 1); `main` prints either as one line.

use std::fmt;
use std::io::{IsTerminal, Write};

use clap::{ArgGroup, Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use wallet_transfer::bench::{self, DirectConfig};
use wallet_transfer::lock::{LOCK_RETRIES_MAX, LOCK_TTL_MS_MAX, LockConfig};
use wallet_transfer::seed;
use wallet_transfer::store::redact_url;
use wallet_transfer::{EngineConfig, WalletService};

const EXAMPLES: &str = "\
Examples:
  wallet seed --users 100
      create user_1..user_100 with random balances (existing wallets are kept)
  wallet seed --users 1000 --reset
      delete all wallet data in the Redis database first, then seed
  wallet bench --direct
      50000 transfers from 8 threads among 10000 fresh wallets, then a table of figures
  wallet bench --direct --hot --transfers 5000
      every transfer on one pair of wallets: the contended case
  wallet --redis-url redis://127.0.0.1:6399 bench --direct --json
      the same figures as one JSON object on stdout
  REDIS_URL=redis://:secret@db:6379/0 wallet seed --users 10

Logging goes to stderr; RUST_LOG (e.g. RUST_LOG=debug) overrides the default level, info.";

/// Wallet transfers in Redis: operator commands for the transfer engine.
#[derive(Debug, Parser)]
#[command(
    name = "wallet",
    version,
    about = "Wallet transfers in Redis: seed data, benchmark the transfer engine.",
    long_about = "Wallet transfers in Redis, exactly once per request.\n\n\
                  Operator commands for the transfer engine: seed demo data and benchmark it.\n\
                  Every option can also be set through the environment variable shown with it.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands; they may come before or after the subcommand.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Redis to use, as a URL: redis://[user:password@]host:port[/db], rediss:// for TLS
    /// (the password is never logged)
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,

    /// Kafka bootstrap servers, comma-separated host:port (used by the Kafka commands)
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        value_name = "HOST:PORT,...",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,

    /// How long a wallet lock lives if its holder never releases it, in milliseconds
    /// (1 to 600000)
    #[arg(
        long,
        env = "LOCK_TTL_MS",
        value_name = "MS",
        default_value_t = LockConfig::default().ttl_ms,
        value_parser = clap::value_parser!(u64).range(1..=LOCK_TTL_MS_MAX),
        global = true,
        help_heading = "Lock"
    )]
    pub lock_ttl_ms: u64,

    /// Wait before the first retry of a taken lock, in milliseconds; doubles on each further
    /// retry, plus random jitter of up to this much (at most --lock-retry-delay-ms-max)
    #[arg(
        long,
        env = "LOCK_RETRY_DELAY_MS",
        value_name = "MS",
        default_value_t = LockConfig::default().retry_delay_ms_base,
        value_parser = clap::value_parser!(u64).range(0..=LOCK_TTL_MS_MAX),
        global = true,
        help_heading = "Lock"
    )]
    pub lock_retry_delay_ms: u64,

    /// Cap on one lock retry wait before jitter, in milliseconds
    #[arg(
        long,
        env = "LOCK_RETRY_DELAY_MS_MAX",
        value_name = "MS",
        default_value_t = LockConfig::default().retry_delay_ms_max,
        value_parser = clap::value_parser!(u64).range(0..=LOCK_TTL_MS_MAX),
        global = true,
        help_heading = "Lock"
    )]
    pub lock_retry_delay_ms_max: u64,

    /// Retries of a taken lock after the first attempt before the transfer gives up with a
    /// transient lock timeout (0 to 1000; 0 = one attempt only)
    #[arg(
        long,
        env = "LOCK_RETRIES",
        value_name = "N",
        default_value_t = LockConfig::default().retries_max,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(LOCK_RETRIES_MAX)),
        global = true,
        help_heading = "Lock"
    )]
    pub lock_retries: u32,
}

impl GlobalOpts {
    /// The engine settings from the lock flags, checked; the error names the flag.
    pub fn engine_config(&self) -> Result<EngineConfig, Failure> {
        if self.lock_retry_delay_ms > self.lock_retry_delay_ms_max {
            return Err(Failure::usage(format!(
                "--lock-retry-delay-ms ({}) must not exceed --lock-retry-delay-ms-max ({})",
                self.lock_retry_delay_ms, self.lock_retry_delay_ms_max
            )));
        }
        let config = EngineConfig {
            lock: LockConfig {
                ttl_ms: self.lock_ttl_ms,
                retry_delay_ms_base: self.lock_retry_delay_ms,
                retry_delay_ms_max: self.lock_retry_delay_ms_max,
                retries_max: self.lock_retries,
            },
            ..EngineConfig::default()
        };
        // The flag ranges above mirror these rules; this catches any the flags do not.
        config
            .validate()
            .map_err(|e| Failure::usage(format!("lock settings: {e}")))?;
        Ok(config)
    }

    /// A service over a pool of `pool_size` connections to --redis-url.
    pub fn connect(&self, pool_size: u32) -> Result<WalletService, Failure> {
        let config = self.engine_config()?;
        log::debug!(
            "redis {} (pool {pool_size}), kafka {}, {:?}",
            redact_url(&self.redis_url),
            self.brokers,
            config
        );
        Ok(WalletService::connect(&self.redis_url, pool_size, config)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create demo users user_1..user_N with random USD balances (100.00 to 10000.00)
    #[command(
        after_help = "Existing wallets are never changed: seeding twice creates nothing \
                            the second time.\nExample: wallet seed --users 100 --reset"
    )]
    Seed(SeedArgs),
    /// Benchmark the transfer engine on wallets the run creates for itself
    #[command(
        after_help = "The run creates its own wallets (bench_<6 hex>_<i>, 1000000.00 \
                            each), so it never touches other data, and checks at the end that \
                            the sum of their balances did not change (exit 1 if it did).\n\
                            Example: wallet bench --direct --threads 8 --transfers 50000"
    )]
    Bench(BenchArgs),
    /// Run the Kafka worker: consume transfer requests, move the money, publish results
    #[command(
        after_help = "Stops cleanly on SIGINT/SIGTERM: in-flight transfers finish, results are \
                            flushed and offsets committed; a second signal exits at once.\n\
                            Metrics: curl http://127.0.0.1:9898/metrics\n\
                            Example: wallet worker --threads 8 --group wallet-transfer-worker"
    )]
    Worker(wallet_transfer::worker::command::WorkerArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Number of users to create, user_1..user_N (1 to 1000000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(seed::SEED_USERS_MAX)))]
    pub users: u32,

    /// First delete EVERY key of the wallet data model in this Redis database (users,
    /// wallets, histories, transfer records, locks); never while workers are running
    #[arg(long)]
    pub reset: bool,

    /// Seed for the random opening balances, for a reproducible data set [default: random]
    #[arg(long, value_name = "SEED")]
    pub rng_seed: Option<u64>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["direct"])))]
pub struct BenchArgs {
    /// Mode: call the transfer engine in-process from --threads threads (no Kafka)
    #[arg(long)]
    pub direct: bool,

    /// Threads running transfers at once; the Redis pool gets as many connections (1 to 256)
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=bench::BENCH_THREADS_MAX as i64))]
    pub threads: u32,

    /// Transfers in total, shared among the threads (1 to 10000000)
    #[arg(long, value_name = "N", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=bench::BENCH_TRANSFERS_MAX))]
    pub transfers: u64,

    /// Wallets the run creates and picks uniform random distinct pairs from (2 to 1000000)
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(
              i64::from(bench::BENCH_WALLETS_MIN)..=i64::from(bench::BENCH_WALLETS_MAX)))]
    pub wallets: u32,

    /// Put every transfer on one pair of wallets (first -> second): maximum contention
    #[arg(long)]
    pub hot: bool,

    /// Retries of a request after a transient error (lock timeout, lost lock, WATCH conflicts,
    /// Redis or pool error), same request and idempotency key (0 to 100)
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(bench::BENCH_TRANSIENT_RETRIES_MAX)))]
    pub transient_retries: u32,

    /// Delete the run's wallets, users, histories and transfer records afterwards
    #[arg(long)]
    pub cleanup: bool,

    /// Print the figures as one JSON object on stdout instead of a table (no progress bar)
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Seed(args) => seed(&cli.global, args),
        Command::Bench(args) => bench(&cli.global, args),
        Command::Worker(args) => worker(&cli.global, args),
    }
}

fn worker(
    global: &GlobalOpts,
    args: wallet_transfer::worker::command::WorkerArgs,
) -> Result<(), Failure> {
    let engine = global.engine_config()?;
    wallet_transfer::worker::command::run(&args, &global.redis_url, &global.brokers, engine)
        .map_err(Failure::runtime)
}

fn seed(global: &GlobalOpts, args: SeedArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    if args.reset {
        log::warn!(
            "--reset: deleting every wallet, user, transfer record and lock in {}",
            redact_url(&global.redis_url)
        );
    }
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(u64::from(args.users)), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} users")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let report =
        seed::seed_with_progress(&service, args.users, args.reset, args.rng_seed, |done| {
            bar.set_position(u64::from(done))
        });
    bar.finish_and_clear();
    print_out(&format!("{}\n", report?))
}

fn bench(global: &GlobalOpts, args: BenchArgs) -> Result<(), Failure> {
    debug_assert!(args.direct, "the mode group is required and has one member");
    let config = DirectConfig {
        threads: args.threads as usize,
        transfers: args.transfers,
        wallets: args.wallets,
        hot: args.hot,
        transient_retries: args.transient_retries,
        progress: !args.json && std::io::stderr().is_terminal(),
        cleanup: args.cleanup,
    };
    config.validate().map_err(Failure::usage)?;
    let service = global.connect(args.threads)?;
    let report = bench::run_direct(&service, &config)?;
    if args.json {
        print_out(&format!("{}\n", report.to_json()))?;
    } else {
        print_out(&format!("{}\n", report.to_table()))?;
    }
    report.check().map_err(Failure::runtime)
}

/// Writes to stdout; a closed pipe (`wallet ... | head`) ends quietly instead of panicking.
fn print_out(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::runtime(format!("writing to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// Bad input on the command line: exit code 2, as for clap's own usage errors.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 2,
        }
    }

    /// The command could not do its work: exit code 1.
    pub fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Failure {
    /// One line, whatever the underlying message holds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty());
        if let Some(first) = lines.next() {
            f.write_str(first)?;
        }
        for line in lines {
            write!(f, "; {line}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::runtime(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wallet").chain(args.iter().copied()))
    }

    #[test]
    fn lock_flags_build_the_engine_config() {
        let cli = parse(&[
            "seed",
            "--users",
            "5",
            "--lock-ttl-ms",
            "5000",
            "--lock-retries",
            "3",
        ])
        .unwrap();
        let config = cli.global.engine_config().unwrap();
        assert_eq!(config.lock.ttl_ms, 5000);
        assert_eq!(config.lock.retries_max, 3);
        assert_eq!(config.lock.retry_delay_ms_base, 100);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["seed", "--users", "0"]).unwrap_err().to_string();
        assert!(e.contains("--users"), "{e}");
        let e = parse(&["bench", "--direct", "--threads", "257"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--threads"), "{e}");
        let e = parse(&["bench", "--direct", "--wallets", "1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--wallets"), "{e}");
        let e = parse(&["--lock-ttl-ms", "0", "seed", "--users", "1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lock-ttl-ms"), "{e}");
        let cli = parse(&["seed", "--users", "1", "--lock-retry-delay-ms", "3000"]).unwrap();
        let e = cli.global.engine_config().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--lock-retry-delay-ms-max"), "{e}");
    }

    #[test]
    fn bench_needs_a_mode() {
        assert!(parse(&["bench"]).is_err());
        assert!(parse(&["bench", "--direct"]).is_ok());
    }

    #[test]
    fn failures_print_on_one_line() {
        let f = Failure::runtime("first\n  second\n\nthird");
        assert_eq!(f.to_string(), "first; second; third");
        assert_eq!(f.exit_code(), 1);
    }
}
