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

mod worker;

use wallet_transfer::engine::lock::{LOCK_RETRIES_LIMIT, LOCK_TTL_MS_LIMIT, LockConfig};
use wallet_transfer::engine::store::redact_url;
use wallet_transfer::tools::bench::{self, DirectConfig};
use wallet_transfer::tools::seed;
use wallet_transfer::{EngineConfig, SettingError, WalletService};

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
        value_parser = clap::value_parser!(u64).range(1..=LOCK_TTL_MS_LIMIT),
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
        value_parser = clap::value_parser!(u64).range(0..=LOCK_TTL_MS_LIMIT),
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
        value_parser = clap::value_parser!(u64).range(0..=LOCK_TTL_MS_LIMIT),
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
        value_parser = clap::value_parser!(u32).range(0..=i64::from(LOCK_RETRIES_LIMIT)),
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
        config.validate().map_err(flag_error)?;
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
    Worker(worker::WorkerArgs),
    /// Table of every wallet: id, owner name, balance, currency, status, version
    #[command(
        after_help = "Reads wallets:all with SSCAN and the wallets in pipelined batches; \
                            changes nothing. Balances are in major units with two decimals \
                            (\"5234.50\"), sorted by wallet id.\n\
                            Examples:\n  wallet snapshot --prefix user_1\n  wallet snapshot --json | jq '.[0]'"
    )]
    Snapshot(SnapshotArgs),
    /// Show the recorded outcome of an idempotency key (transfer:{KEY})
    #[command(
        after_help = "Exit 1 when no outcome is recorded under the key (never processed, \
                            or its record expired). Amounts in major units, processed_at in \
                            seconds since the Unix epoch.\n\
                            Example: wallet status req_tx_1 --json"
    )]
    Status(StatusArgs),
    /// Add money to an active wallet (recorded as a `deposit` history entry)
    #[command(
        after_help = "AMOUNT is in major units: digits with an optional '.' and one or two \
                            decimals, greater than 0 and at most 1000000000000.00. Prints the \
                            new balance.\n\
                            Example: wallet deposit user_1 250.00"
    )]
    Deposit(DepositArgs),
    /// List held wallet locks (lock:*) with owner token and remaining ttl; flag any without ttl
    #[command(
        after_help = "ttl is the remaining time to live in milliseconds. A lock without a \
                            ttl is never released by itself and blocks its wallet for ever: \
                            such locks are flagged and the exit code is 1 (delete one with \
                            redis-cli DEL lock:<id> once its holder is known to be gone).\n\
                            Example: wallet locks --json"
    )]
    Locks(LocksArgs),
    /// Check the ledger invariants over every wallet and outcome record
    #[command(
        after_help = "Checks: balance = opening_balance + signed sum of history; no \
                            negative balance; version = number of history entries; each \
                            COMPLETED transfer:* record has its debit and credit history \
                            entries; total of balances = openings + deposits. Reads with \
                            SCAN/SSCAN and pipelining; changes nothing. Amounts in major units.\n\
                            Exit 0 when sound, 1 with one line per violation (on stderr).\n\
                            Example: wallet audit --json"
    )]
    Audit(AuditArgs),
    /// Publish one transfer request to Kafka; with --wait, wait for its result
    #[command(
        after_help = "The request goes to --requests-topic with key FROM; the worker \
                            answers on --results-topic. AMOUNT is in major units (\"100.50\"). \
                            Without --wait the transfer id is printed once the broker has the \
                            request. With --wait the result is printed; exit 1 when it is \
                            FAILED or none arrives within --timeout-s seconds.\n\
                            Examples:\n  wallet transfer user_1 user_2 100.50 --wait\n  \
                            wallet transfer user_1 user_2 5 --currency EUR --id tx_42 \
                            --idempotency-key req_tx_42"
    )]
    Transfer(TransferArgs),
    /// Run the six race scenarios end to end through Kafka against a running worker
    #[command(
        after_help = "Each scenario creates its own wallets (ids end in a run suffix), \
                            so runs repeat on a live system and never touch seeded users. \
                            Expectations are computed from the starting balances.\n\
                            Scenarios: 1 concurrent overspend, 2 hot sender, 3 both directions, \
                            4 chain, 5 overspend race, 6 same user.\n\
                            Example: wallet produce --scenario 1"
    )]
    Produce(ProduceArgs),
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Run only scenario N (1 to 6) [default: all six]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=6))]
    pub scenario: Option<u32>,

    /// Seconds to wait for each scenario's results (1 to 3600)
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Print the reports as one JSON array instead of tables
    #[arg(long)]
    pub json: bool,

    /// Topic the requests are published to
    #[arg(long, env = "TOPIC_REQUESTS", value_name = "TOPIC",
          default_value = wallet_transfer::worker::kafka::TOPIC_REQUESTS)]
    pub requests_topic: String,

    /// Topic the worker publishes results to
    #[arg(long, env = "TOPIC_RESULTS", value_name = "TOPIC",
          default_value = wallet_transfer::worker::kafka::TOPIC_RESULTS)]
    pub results_topic: String,
}

fn produce(global: &GlobalOpts, args: ProduceArgs) -> Result<(), Failure> {
    let service = global.connect(2)?;
    let kafka = wallet_transfer::worker::kafka::KafkaConfig::new(&global.brokers);
    let runner = wallet_transfer::tools::scenarios::Runner {
        service: &service,
        kafka: &kafka,
        requests_topic: &args.requests_topic,
        results_topic: &args.results_topic,
        timeout: std::time::Duration::from_secs(args.timeout),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    let numbers: Vec<u32> = match args.scenario {
        Some(n) => vec![n],
        None => (1..=6).collect(),
    };
    let mut reports = Vec::new();
    for n in numbers {
        let report = runner.run(n)?;
        if !args.json {
            print_out(&scenario_text(&report))?;
        }
        reports.push(report);
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} {}", r.number, r.name))
        .collect();
    if args.json {
        json_out(&reports)?;
    } else {
        print_out(&format!(
            "\nsummary: {} of {} scenarios passed\n",
            reports.len() - failed.len(),
            reports.len()
        ))?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "scenarios failed: {}",
            failed.join(", ")
        )))
    }
}

fn scenario_text(r: &wallet_transfer::tools::scenarios::ScenarioReport) -> String {
    let mut balances = comfy_table::Table::new();
    balances.set_header(vec!["wallet", "before", "after"]);
    for ((id, before), (_, after)) in r.before.iter().zip(&r.after) {
        balances.add_row(vec![id.as_str(), before.as_str(), after.as_str()]);
    }
    let mut out = format!("\n== scenario {}: {}\n{balances}\n", r.number, r.name);
    for t in &r.transfers {
        let verdict = if t.status == "COMPLETED" {
            "OK    "
        } else {
            "FAILED"
        };
        out.push_str(&format!(
            "  {verdict} {} {} -> {} {}{}\n",
            t.transfer_id,
            t.from_user,
            t.to_user,
            t.amount,
            t.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!("  expected: {}\n", r.expectation));
    if r.passed {
        out.push_str("  verdict: PASS\n");
    } else {
        out.push_str(&format!("  verdict: FAIL: {}\n", r.problems.join("; ")));
    }
    out
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
#[command(group(ArgGroup::new("mode").required(true).args(["direct", "e2e"])))]
pub struct BenchArgs {
    /// Mode: call the transfer engine in-process from --threads threads (no Kafka)
    #[arg(long)]
    pub direct: bool,

    /// Mode: publish the requests (keyed by from_user) to a running worker through Kafka
    /// (--brokers), wait for their results; throughput and publish-to-result latency
    #[arg(long)]
    pub e2e: bool,

    /// Topic the worker reads requests from (--e2e only)
    #[arg(long, env = "TOPIC_REQUESTS", value_name = "TOPIC",
          default_value = wallet_transfer::worker::kafka::TOPIC_REQUESTS)]
    pub requests_topic: String,

    /// Topic the worker publishes results to (--e2e only)
    #[arg(long, env = "TOPIC_RESULTS", value_name = "TOPIC",
          default_value = wallet_transfer::worker::kafka::TOPIC_RESULTS)]
    pub results_topic: String,

    /// How long to wait for all results, from the first publish, in seconds; exit 1 after
    /// (--e2e only; 1 to 86400)
    #[arg(long, value_name = "S", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_s: u64,

    /// Publish at most this many requests per second, to measure latency without the queueing
    /// of one big burst (--e2e only; 1 to 1000000) [default: all at once]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: Option<u32>,

    /// Threads running transfers at once; the Redis pool gets as many connections (1 to 256;
    /// --direct only)
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=bench::BENCH_THREADS_LIMIT as i64))]
    pub threads: u32,

    /// Transfers in total, shared among the threads (1 to 10000000)
    #[arg(long, value_name = "N", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=bench::BENCH_TRANSFERS_LIMIT))]
    pub transfers: u64,

    /// Wallets the run creates and picks uniform random distinct pairs from (2 to 1000000)
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(
              i64::from(bench::BENCH_WALLETS_MIN)..=i64::from(bench::BENCH_WALLETS_LIMIT)))]
    pub wallets: u32,

    /// Put every transfer on one pair of wallets (first -> second): maximum contention
    #[arg(long)]
    pub hot: bool,

    /// Retries of a request after a transient error (lock timeout, lost lock, WATCH conflicts,
    /// Redis or pool error), same request and idempotency key (0 to 100; --direct only)
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(bench::BENCH_TRANSIENT_RETRIES_LIMIT)))]
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
        Command::Worker(args) => worker::run(&cli.global, args),
        Command::Snapshot(args) => snapshot(&cli.global, args),
        Command::Status(args) => status(&cli.global, args),
        Command::Deposit(args) => deposit(&cli.global, args),
        Command::Locks(args) => locks(&cli.global, args),
        Command::Audit(args) => audit(&cli.global, args),
        Command::Transfer(args) => transfer(&cli.global, args),
        Command::Produce(args) => produce(&cli.global, args),
    }
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
    debug_assert!(
        args.direct != args.e2e,
        "the mode group is required and exclusive"
    );
    let progress = !args.json && std::io::stderr().is_terminal();
    let report = if args.e2e {
        let config = bench::E2eConfig {
            kafka: wallet_transfer::worker::kafka::KafkaConfig::new(&global.brokers),
            requests_topic: args.requests_topic,
            results_topic: args.results_topic,
            transfers: args.transfers,
            wallets: args.wallets,
            hot: args.hot,
            timeout: std::time::Duration::from_secs(args.timeout_s),
            rate: args.rate,
            progress,
            cleanup: args.cleanup,
        };
        config.validate().map_err(flag_error)?;
        let service = global.connect(2)?;
        bench::run_e2e(&service, &config)?
    } else {
        let config = DirectConfig {
            threads: args.threads as usize,
            transfers: args.transfers,
            wallets: args.wallets,
            hot: args.hot,
            transient_retries: args.transient_retries,
            progress,
            cleanup: args.cleanup,
        };
        config.validate().map_err(flag_error)?;
        let service = global.connect(args.threads)?;
        bench::run_direct(&service, &config)?
    };
    if args.json {
        print_out(&format!("{}\n", report.to_json()))?;
    } else {
        print_out(&format!("{}\n", report.to_table()))?;
    }
    report.check().map_err(Failure::runtime)
}

// --- operator commands: snapshot, status, deposit, locks, audit, transfer (logic in `ops`) ---

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Only wallets whose id starts with this text
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// Print a JSON array of rows on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The idempotency key of the request (its transfer_id unless one was given)
    #[arg(value_name = "KEY")]
    pub key: String,

    /// Print the outcome as one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DepositArgs {
    /// The user whose wallet receives the money
    #[arg(value_name = "USER")]
    pub user: String,

    /// Amount in major units, e.g. 250 or 250.50 (greater than 0, at most two decimals)
    #[arg(value_name = "AMOUNT", allow_hyphen_values = true)]
    pub amount: String,
}

#[derive(Debug, Args)]
pub struct LocksArgs {
    /// Print a JSON array of locks instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print the report as one JSON object instead of a summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The user who pays
    #[arg(value_name = "FROM")]
    pub from: String,

    /// The user who is paid
    #[arg(value_name = "TO")]
    pub to: String,

    /// Amount in major units, e.g. 100 or 100.50 (greater than 0, at most two decimals)
    #[arg(value_name = "AMOUNT", allow_hyphen_values = true)]
    pub amount: String,

    /// Currency of the transfer: USD, EUR or GBP; must be both wallets' currency
    #[arg(long, value_name = "C", default_value = "USD")]
    pub currency: String,

    /// Transfer id [default: tx_<32 hex>, random]
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// Idempotency key: a request repeated with the same key has one effect [default: the id]
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,

    /// Wait for the worker's result and print it (exit 1 if FAILED or none arrives in time)
    #[arg(long)]
    pub wait: bool,

    /// Seconds to wait for the broker's delivery report and, with --wait, for the result
    /// (1 to 3600)
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,

    /// Topic the request is published to
    #[arg(long, env = "TOPIC_REQUESTS", value_name = "TOPIC",
          default_value = wallet_transfer::worker::kafka::TOPIC_REQUESTS)]
    pub requests_topic: String,

    /// Topic the worker publishes results to (read with --wait)
    #[arg(long, env = "TOPIC_RESULTS", value_name = "TOPIC",
          default_value = wallet_transfer::worker::kafka::TOPIC_RESULTS)]
    pub results_topic: String,

    /// Extra librdkafka property, key=value (repeatable), e.g. -X security.protocol=SASL_SSL
    #[arg(long = "kafka-property", short = 'X', value_name = "KEY=VALUE",
          value_parser = wallet_transfer::worker::kafka::parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

fn json_out(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::runtime(format!("encoding JSON: {e}")))?;
    print_out(&format!("{text}\n"))
}

fn new_table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::ASCII_FULL_CONDENSED)
        .set_header(header.iter().copied());
    table
}

fn snapshot(global: &GlobalOpts, args: SnapshotArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let rows = wallet_transfer::tools::ops::snapshot(&service, args.prefix.as_deref())?;
    if args.json {
        return json_out(&rows);
    }
    let mut table = new_table(&["id", "name", "balance", "currency", "status", "version"]);
    for r in &rows {
        table.add_row(vec![
            comfy_table::Cell::new(&r.id),
            comfy_table::Cell::new(&r.name),
            comfy_table::Cell::new(&r.balance).set_alignment(comfy_table::CellAlignment::Right),
            comfy_table::Cell::new(&r.currency),
            comfy_table::Cell::new(&r.status),
            comfy_table::Cell::new(&r.version).set_alignment(comfy_table::CellAlignment::Right),
        ]);
    }
    print_out(&format!("{table}\n{} wallets\n", rows.len()))
}

fn status(global: &GlobalOpts, args: StatusArgs) -> Result<(), Failure> {
    wallet_transfer::engine::message::check_key("KEY", &args.key)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let service = global.connect(1)?;
    let Some(outcome) = service.transfer_outcome(&args.key)? else {
        return Err(Failure::runtime(format!(
            "no outcome recorded under idempotency key {:?} (never processed, or its record \
             expired)",
            args.key
        )));
    };
    let opt = |a: Option<wallet_transfer::Amount>| a.map(|a| a.to_string());
    let message = outcome.to_message();
    if args.json {
        let value = serde_json::json!({
            "idempotency_key": outcome.idempotency_key,
            "transfer_id": outcome.transfer_id,
            "status": outcome.status.as_str(),
            "reason": outcome.reason.map(|r| r.as_str()),
            "from_user": outcome.from_user,
            "to_user": outcome.to_user,
            "amount": outcome.amount.to_string(),
            "currency": outcome.currency,
            "processed_at": message.processed_at,
            "from_balance_after": opt(outcome.from_balance_after),
            "to_balance_after": opt(outcome.to_balance_after),
        });
        return json_out(&value);
    }
    let mut table = new_table(&["field", "value"]);
    for (field, value) in [
        ("idempotency_key", outcome.idempotency_key.clone()),
        ("transfer_id", outcome.transfer_id.clone()),
        ("status", outcome.status.as_str().to_string()),
        (
            "reason",
            outcome
                .reason
                .map(|r| r.as_str())
                .unwrap_or("-")
                .to_string(),
        ),
        ("from_user", outcome.from_user.clone()),
        ("to_user", outcome.to_user.clone()),
        ("amount", outcome.amount.to_string()),
        ("currency", outcome.currency.clone()),
        ("processed_at", format!("{:.3}", message.processed_at)),
        (
            "from_balance_after",
            opt(outcome.from_balance_after).unwrap_or_else(|| "-".into()),
        ),
        (
            "to_balance_after",
            opt(outcome.to_balance_after).unwrap_or_else(|| "-".into()),
        ),
    ] {
        table.add_row(vec![field.to_string(), value]);
    }
    print_out(&format!("{table}\n"))
}

fn deposit(global: &GlobalOpts, args: DepositArgs) -> Result<(), Failure> {
    wallet_transfer::engine::message::check_user_id("USER", &args.user)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let amount = wallet_transfer::Amount::parse_transfer_amount(&args.amount)
        .map_err(|e| Failure::usage(format!("AMOUNT: {e}")))?;
    let service = global.connect(1)?;
    match service.deposit(&args.user, amount) {
        Ok(balance) => print_out(&format!(
            "deposited {amount} to {}; balance now {balance}\n",
            args.user
        )),
        Err(wallet_transfer::engine::wallet::WalletError::NotFound(id)) => Err(Failure::runtime(
            format!("user {id:?} has no wallet (see wallet snapshot)"),
        )),
        Err(e) => Err(Failure::runtime(format!("deposit to {}: {e}", args.user))),
    }
}

fn locks(global: &GlobalOpts, args: LocksArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let locks = wallet_transfer::tools::ops::locks(&service)?;
    let problems: Vec<&str> = locks
        .iter()
        .filter(|l| l.is_problem())
        .map(|l| l.key.as_str())
        .collect();
    if args.json {
        json_out(&locks)?;
    } else {
        let mut table = new_table(&["key", "owner", "ttl ms", "problem"]);
        for l in &locks {
            table.add_row(vec![
                l.key.clone(),
                l.owner.clone().unwrap_or_else(|| "-".into()),
                l.ttl_ms.map_or_else(|| "none".into(), |t| t.to_string()),
                if l.is_problem() {
                    "NO TTL: never expires".into()
                } else {
                    String::new()
                },
            ]);
        }
        print_out(&format!("{table}\n{} locks held\n", locks.len()))?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "{} lock(s) without a ttl, never released by themselves: {}",
            problems.len(),
            problems.join(", ")
        )))
    }
}

fn audit(global: &GlobalOpts, args: AuditArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let report = wallet_transfer::tools::ops::audit(&service)?;
    if args.json {
        json_out(&report)?;
    } else {
        print_out(&format!(
            "wallets checked: {}\ntransfers checked: {} ({} completed)\nhistory entries: {}\n\
             total balance: {} (openings {} + deposits {})\nviolations: {}\n",
            report.wallets_checked,
            report.transfers_checked,
            report.transfers_completed,
            report.history_entries,
            report.total_balance,
            report.total_opening,
            report.total_deposits,
            report.violations.len()
        ))?;
    }
    if report.is_ok() {
        return Ok(());
    }
    for v in &report.violations {
        eprintln!("violation: {v}");
    }
    Err(Failure::runtime(format!(
        "audit found {} violation(s); first: {}",
        report.violations.len(),
        report.violations[0]
    )))
}

fn transfer(global: &GlobalOpts, args: TransferArgs) -> Result<(), Failure> {
    let currency: wallet_transfer::Currency = args
        .currency
        .to_ascii_uppercase()
        .parse()
        .map_err(|e| Failure::usage(format!("--currency: {e}")))?;
    wallet_transfer::Amount::parse_transfer_amount(&args.amount)
        .map_err(|e| Failure::usage(format!("AMOUNT: {e}")))?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("tx_{}", uuid::Uuid::new_v4().simple()));
    let name_arg = |field: &str| match field {
        "transfer_id" => "--id",
        "from_user" => "FROM",
        "to_user" => "TO",
        "amount" => "AMOUNT",
        "currency" => "--currency",
        "idempotency_key" => "--idempotency-key",
        _ => "argument",
    };
    let usage = |e: wallet_transfer::engine::message::FieldError| {
        Failure::usage(format!("{}: {}", name_arg(e.field), e.rule))
    };
    let mut request =
        wallet_transfer::TransferRequest::new(&id, &args.from, &args.to, &args.amount, currency)
            .map_err(usage)?;
    if let Some(key) = &args.idempotency_key {
        request = request.with_idempotency_key(key).map_err(usage)?;
    }
    let kafka = wallet_transfer::worker::kafka::KafkaConfig {
        brokers: global.brokers.clone(),
        properties: args.kafka_properties.clone(),
    };
    let timeout = std::time::Duration::from_secs(args.timeout_s);
    let started = std::time::Instant::now();
    let watcher = if args.wait {
        Some(wallet_transfer::tools::ops::ResultWatcher::start(
            &kafka,
            &args.results_topic,
        )?)
    } else {
        None
    };
    let delivered = wallet_transfer::tools::ops::publish_request(
        &kafka,
        &args.requests_topic,
        &request,
        timeout,
    )?;
    log::info!(
        "published transfer {} to {} partition {} offset {}",
        request.transfer_id,
        args.requests_topic,
        delivered.partition,
        delivered.offset
    );
    let Some(watcher) = watcher else {
        return print_out(&format!("{}\n", request.transfer_id));
    };
    let left = timeout.saturating_sub(started.elapsed());
    let Some(result) = watcher.wait_for(&request.transfer_id, left)? else {
        return Err(Failure::runtime(format!(
            "no result for transfer {} on {} within {} s (is a worker running on {}?)",
            request.transfer_id, args.results_topic, args.timeout_s, args.requests_topic
        )));
    };
    let reason = result.reason.map(|r| r.as_str()).unwrap_or("-");
    print_out(&format!(
        "transfer_id: {}\nstatus: {}\nreason: {reason}\nduplicate: {}\n",
        result.transfer_id,
        result.status.as_str(),
        result.duplicate
    ))?;
    if result.status == wallet_transfer::Status::Failed {
        return Err(Failure::runtime(format!(
            "transfer {} FAILED: {reason}",
            result.transfer_id
        )));
    }
    Ok(())
}

/// The flag that sets each library setting, for errors a user can act on.
const SETTING_FLAGS: [(&str, &str); 17] = [
    ("lock.ttl_ms", "--lock-ttl-ms"),
    ("lock.retry_delay_ms_base", "--lock-retry-delay-ms"),
    ("lock.retry_delay_ms_max", "--lock-retry-delay-ms-max"),
    ("lock.retries_max", "--lock-retries"),
    ("threads", "--threads"),
    ("group_id", "--group"),
    ("requests_topic", "--requests-topic"),
    ("results_topic", "--results-topic"),
    ("dlq_topic", "--dlq-topic"),
    ("partitions", "--partitions"),
    ("replication", "--replication"),
    ("commit_interval_ms", "--commit-interval-ms"),
    ("session_timeout_ms", "--session-timeout-ms"),
    ("max_poll_interval_ms", "--max-poll-interval-ms"),
    ("retry_delay_ms_max", "--retry-delay-ms-max"),
    ("transfers", "--transfers"),
    ("wallets", "--wallets"),
];

/// The flag name for a library setting; settings no flag sets keep their own name.
pub fn flag_for(setting: &str) -> String {
    SETTING_FLAGS
        .iter()
        .find(|(s, _)| *s == setting)
        .map(|(_, flag)| (*flag).to_string())
        .unwrap_or_else(|| setting.to_string())
}

/// A broken setting as a usage error that names the flag: "--lock-ttl-ms must be ...". The
/// rule's own mentions of other settings are spelled as flags too.
pub fn flag_error(e: SettingError) -> Failure {
    let mut rule = e.rule.clone();
    for (setting, flag) in SETTING_FLAGS {
        if setting.contains('.') || setting.contains('_') {
            rule = rule.replace(setting, flag);
        }
    }
    Failure::usage(format!("{} {rule}", flag_for(e.setting)))
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
