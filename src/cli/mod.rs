//! The `wallet` command line: what the tool is, the options every subcommand shares, and the
//! dispatch to one file per subcommand (`seed.rs`, `bench.rs`, `worker.rs`, `snapshot.rs`,
//! `status.rs`, `deposit.rs`, `locks.rs`, `audit.rs`, `transfer.rs`, `produce.rs`, `top.rs`,
//! `history.rs`, `recover.rs`).
//!
//! Owns [`Cli`], [`GlobalOpts`] (Redis, Kafka and lock flags), the [`Command`] list, the
//! [`Failure`] type and its exit codes, the stdout helpers ([`print_out`], [`json_out`],
//! [`new_table`]) and the mapping from library setting names to flags ([`flag_error`]). Does
//! not own any subcommand's flags, help text or work: each file holds its `Args` struct (with
//! its `after_help`) and `pub fn run(global: &GlobalOpts, args: Args) -> Result<(), Failure>`.
//!
//! Adding a subcommand is one file, one variant of [`Command`] and one line in [`run`]. Input
//! errors (bad flag values) come back as [`Failure::usage`] (exit 2), everything else as a
//! runtime failure (exit 1); `main` prints either as one line.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod audit;
mod bench;
mod deposit;
mod history;
mod locks;
mod migrate;
mod produce;
mod recover;
mod seed;
mod snapshot;
mod status;
mod top;
mod transfer;
mod worker;

use wallet_transfer::engine::lock::{LOCK_RETRIES_LIMIT, LOCK_TTL_MS_LIMIT, LockConfig};
use wallet_transfer::engine::retention::HISTORY_MAX_ENTRIES_LIMIT;
use wallet_transfer::engine::service::WAIT_REPLICAS_LIMIT;
use wallet_transfer::engine::store::{RedisTls, redact_url};
use wallet_transfer::tools::bench::DirectConfig;
use wallet_transfer::worker::kafka;
use wallet_transfer::{EngineConfig, SettingError, WalletService};

const ABOUT: &str = "Wallet transfers in Redis: run the Kafka worker, send transfers and race \
                     scenarios, inspect wallets, outcomes and locks, audit, deposit, seed and \
                     benchmark.";

const LONG_ABOUT: &str = "\
Wallet transfers in Redis, exactly once per request: the operator tool of the transfer engine
and of its Kafka worker.

  run       worker (consume transfer requests from Kafka, move the money, publish results)
  send      transfer (one request), produce (the six race scenarios end to end)
  inspect   snapshot (every wallet), status (the outcome of an idempotency key),
            history (a wallet's entries, from Redis and the ledger topic),
            locks (held wallet locks), audit (the ledger invariants)
  watch     top (live view of running workers from their /metrics)
  change    deposit (add money to a wallet), seed (create demo users),
            recover (finish cross-slot transfers a crash left PENDING on a Redis Cluster),
            migrate-history (move histories of the older stream format into lists)
  measure   bench (throughput and latency, in-process or through Kafka)

Every option can also be set through the environment variable shown with it.";

/// The top-level help's examples; the bench line states the library's defaults.
fn examples() -> String {
    let direct = DirectConfig::default();
    format!(
        "\
Examples:
  wallet seed --users 100
      create user_1..user_100 with random balances (existing wallets are kept)
  wallet seed --users 1000 --reset
      delete all wallet data in the Redis database first, then seed
  wallet worker --threads 8
      consume transfer requests from Kafka and answer them until SIGINT/SIGTERM
  wallet transfer user_1 user_2 100.50 --wait
      publish one transfer request, wait for the worker's result and print it
  wallet audit
      check the ledger invariants; exit 1 with one line per violation if any is broken
  wallet bench --direct
      {} transfers from {} threads among {} fresh wallets, then a table of figures
  wallet bench --direct --hot --transfers 5000
      every transfer on one pair of wallets: the contended case
  wallet --redis-url redis://127.0.0.1:6399 bench --direct --json
      the same figures as one JSON object on stdout
  REDIS_URL=redis://:secret@db:6379/0 wallet seed --users 10

Logging goes to stderr; RUST_LOG (e.g. RUST_LOG=debug) overrides the default level, info.",
        direct.transfers, direct.threads, direct.wallets
    )
}

/// Wallet transfers in Redis: operator commands for the transfer engine.
#[derive(Debug, Parser)]
#[command(
    name = "wallet",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = examples()
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

    /// Redis Cluster seed nodes, comma-separated host:port, instead of a single Redis: the
    /// commands then find every primary from them (--redis-url still gives the scheme, user
    /// and password: redis://user:pass@ignored, rediss:// for TLS)
    #[arg(
        long,
        env = "REDIS_CLUSTER",
        value_name = "HOST:PORT,...",
        value_parser = parse_cluster_seeds,
        global = true
    )]
    pub redis_cluster: Option<ClusterSeeds>,

    /// CA certificate (PEM) to trust for a rediss:// URL instead of the system's roots: for a
    /// Redis whose certificate a private CA signed
    #[arg(
        long,
        env = "REDIS_CA_FILE",
        value_name = "PEM",
        global = true,
        help_heading = "Redis TLS"
    )]
    pub redis_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for a Redis that asks for one (mutual TLS); with
    /// --redis-client-key
    #[arg(
        long,
        env = "REDIS_CLIENT_CERT",
        value_name = "PEM",
        global = true,
        help_heading = "Redis TLS"
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// Private key (PEM) of --redis-client-cert
    #[arg(
        long,
        env = "REDIS_CLIENT_KEY",
        value_name = "PEM",
        global = true,
        help_heading = "Redis TLS"
    )]
    pub redis_client_key: Option<PathBuf>,

    /// Kafka bootstrap servers, comma-separated host:port (used by the Kafka commands)
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        value_name = "HOST:PORT,...",
        default_value = kafka::BROKERS_DEFAULT,
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

    /// Most history entries each wallet keeps in Redis (1 to 1000000000), or `all`; older ones
    /// are trimmed into the wallet's checkpoint, which keeps the audit exact. The worker
    /// publishes every entry to the ledger topic, where `wallet history` finds the trimmed ones
    #[arg(
        long,
        env = "HISTORY_MAX_ENTRIES",
        value_name = "N|all",
        default_value_t = HistoryMaxEntries(EngineConfig::default().history_max_entries),
        value_parser = parse_history_max_entries,
        global = true,
        help_heading = "Retention"
    )]
    pub history_max_entries: HistoryMaxEntries,

    /// How long an outcome record (the answer kept under an idempotency key) lives, in
    /// milliseconds; `auto`: the worker takes the requests topic's retention.ms plus its
    /// segment.ms plus --outcome-ttl-margin-ms (for ever when the topic keeps its messages for
    /// ever; refused for a topic with cleanup.policy compact: set `forever`), and raises it
    /// for new records when the retention grows; other commands keep records for ever;
    /// `forever`: never expire. A redelivery or retry after a record expired would move the
    /// money again, so the worker refuses a ttl shorter than the topic's retention plus
    /// segment.ms plus the margin, at start and while running. `wallet audit` takes it as the age past which a
    /// history entry's outcome may have expired (give it the ttl the worker logged at start)
    #[arg(
        long = "outcome-ttl-ms",
        env = "OUTCOME_TTL_MS",
        value_name = "MS|auto|forever",
        default_value = "auto",
        value_parser = parse_outcome_ttl,
        global = true,
        help_heading = "Retention"
    )]
    pub outcome_ttl: OutcomeTtl,

    /// Replicas that must acknowledge each write step (Redis WAIT) before a transfer goes on
    /// or is answered, 0 to 16. With 0 (the default) a primary that fails before its replica
    /// has a step loses it although it was answered: on one Redis the transfer is undone
    /// after it was reported done; on a Redis Cluster a cross-slot transfer can then be
    /// credited twice, or its credit survive a lost debit (money created). Set 1 (or more)
    /// with a replica per primary; a WAIT that times out is retried, never answered
    #[arg(
        long,
        env = "WAIT_REPLICAS",
        value_name = "N",
        default_value_t = EngineConfig::default().wait_replicas.unwrap_or(0),
        value_parser = clap::value_parser!(u32).range(0..=i64::from(WAIT_REPLICAS_LIMIT)),
        global = true,
        help_heading = "Durability"
    )]
    pub wait_replicas: u32,
}

/// `--outcome-ttl-ms`: how long outcome records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeTtl {
    /// Derived by the worker from the requests topic; for ever elsewhere.
    Auto,
    /// Never expire.
    Forever,
    /// Expire after this many milliseconds.
    Ms(u64),
}

fn parse_outcome_ttl(text: &str) -> Result<OutcomeTtl, String> {
    match text {
        "auto" => Ok(OutcomeTtl::Auto),
        "forever" => Ok(OutcomeTtl::Forever),
        _ => match text.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(OutcomeTtl::Ms(ms)),
            _ => Err(format!(
                "must be a positive number of milliseconds, `auto` (the requests topic's retention plus the margin) or `forever`, got {text:?}"
            )),
        },
    }
}

/// `--redis-cluster`: the seed nodes, at least one, at most [`CLUSTER_SEEDS_LIMIT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSeeds(pub Vec<String>);

/// Most seed nodes `--redis-cluster` takes.
pub const CLUSTER_SEEDS_LIMIT: usize = 64;

fn parse_cluster_seeds(text: &str) -> Result<ClusterSeeds, String> {
    let seeds: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if seeds.is_empty() || seeds.len() > CLUSTER_SEEDS_LIMIT {
        return Err(format!(
            "must list 1 to {CLUSTER_SEEDS_LIMIT} nodes as host:port,host:port, got {text:?}"
        ));
    }
    if let Some(bad) = seeds.iter().find(|s| {
        s.rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    }) {
        return Err(format!(
            "{bad:?} is not host:port (a node of the cluster, e.g. 10.0.0.5:7000)"
        ));
    }
    Ok(ClusterSeeds(seeds))
}

/// `--history-max-entries`: a bound, or `all` (no bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryMaxEntries(pub Option<u64>);

/// As the flag takes it: the bound, or `all` (clap shows the default this way).
impl fmt::Display for HistoryMaxEntries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("all"),
        }
    }
}

fn parse_history_max_entries(text: &str) -> Result<HistoryMaxEntries, String> {
    if text == "all" {
        return Ok(HistoryMaxEntries(None));
    }
    match text.parse::<u64>() {
        Ok(n) if (1..=HISTORY_MAX_ENTRIES_LIMIT).contains(&n) => Ok(HistoryMaxEntries(Some(n))),
        _ => Err(format!(
            "must be a whole number from 1 to {HISTORY_MAX_ENTRIES_LIMIT}, or `all` to keep every entry, got {text:?}"
        )),
    }
}

impl GlobalOpts {
    /// The engine settings from the lock and Redis TLS flags, checked; the error names the
    /// flag.
    pub fn engine_config(&self) -> Result<EngineConfig, Failure> {
        let config = EngineConfig::default()
            .with_lock(
                LockConfig::default()
                    .with_ttl_ms(self.lock_ttl_ms)
                    .with_retry_delay_ms_base(self.lock_retry_delay_ms)
                    .with_retry_delay_ms_max(self.lock_retry_delay_ms_max)
                    .with_retries_max(self.lock_retries),
            )
            .with_history_max_entries(self.history_max_entries.0)
            .with_wait_replicas((self.wait_replicas > 0).then_some(self.wait_replicas))
            .with_outcome_ttl_ms(match self.outcome_ttl {
                OutcomeTtl::Ms(ms) => Some(ms),
                OutcomeTtl::Auto | OutcomeTtl::Forever => None,
            })
            .with_redis_tls(
                RedisTls::default()
                    .with_ca_file(self.redis_ca_file.clone())
                    .with_client_cert_file(self.redis_client_cert.clone())
                    .with_client_key_file(self.redis_client_key.clone()),
            );
        // The flag ranges check each value alone; the library's rules also relate them (the
        // first retry delay must not exceed the cap).
        config.validate().map_err(flag_error)?;
        Ok(config)
    }

    /// A service over a pool of `pool_size` connections to --redis-url, or, with
    /// --redis-cluster, a pool of that size per primary.
    pub fn connect(&self, pool_size: u32) -> Result<WalletService, Failure> {
        let config = self.engine_config()?;
        log::debug!(
            "redis {} (pool {pool_size}), cluster {:?}, kafka {}, {:?}",
            redact_url(&self.redis_url),
            self.redis_cluster,
            self.brokers,
            config
        );
        if let Some(seeds) = &self.redis_cluster {
            return Ok(WalletService::connect_cluster(
                &seeds.0,
                &self.redis_url,
                pool_size,
                config,
            )?);
        }
        Ok(WalletService::connect(&self.redis_url, pool_size, config)?)
    }
}

/// The subcommands. Each variant's doc comment is its one-line summary in `wallet --help`;
/// the rest of its help (`after_help`) sits beside its `Args` struct in its own file.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create demo users user_1..user_N with random USD balances (100.00 to 10000.00)
    Seed(seed::SeedArgs),
    /// Benchmark the transfer engine on wallets the run creates for itself
    Bench(bench::BenchArgs),
    /// Run the Kafka worker: consume transfer requests, move the money, publish results
    Worker(worker::WorkerArgs),
    /// Table of every wallet: id, owner name, balance, currency, status, version
    Snapshot(snapshot::SnapshotArgs),
    /// Show the recorded outcome of an idempotency key (transfer:{KEY})
    Status(status::StatusArgs),
    /// Add money to an active wallet (recorded as a `deposit` history entry)
    Deposit(deposit::DepositArgs),
    /// List held wallet locks (lock:*) with owner token and remaining ttl; flag any without ttl
    Locks(locks::LocksArgs),
    /// Check the ledger invariants over every wallet and outcome record
    Audit(audit::AuditArgs),
    /// Publish one transfer request to Kafka; with --wait, wait for its result
    Transfer(transfer::TransferArgs),
    /// Run the six race scenarios end to end through Kafka against a running worker
    Produce(produce::ProduceArgs),
    /// Live view of running workers from their /metrics: transfers/s, latency, lag, retries
    Top(top::TopArgs),
    /// A wallet's history entries, oldest first: recent ones from Redis, trimmed ones from the
    /// ledger topic
    History(history::HistoryArgs),
    /// Finish the cross-slot transfers a crash left PENDING on a Redis Cluster
    Recover(recover::RecoverArgs),
    /// Move wallet histories of the older stream format into history lists (frees ~4 KB each)
    MigrateHistory(migrate::MigrateArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let global = &cli.global;
    match cli.command {
        Command::Seed(args) => seed::run(global, args),
        Command::Bench(args) => bench::run(global, args),
        Command::Worker(args) => worker::run(global, args),
        Command::Snapshot(args) => snapshot::run(global, args),
        Command::Status(args) => status::run(global, args),
        Command::Deposit(args) => deposit::run(global, args),
        Command::Locks(args) => locks::run(global, args),
        Command::Audit(args) => audit::run(global, args),
        Command::Transfer(args) => transfer::run(global, args),
        Command::Produce(args) => produce::run(global, args),
        Command::Top(args) => top::run(global, args),
        Command::History(args) => history::run(global, args),
        Command::Recover(args) => recover::run(global, args),
        Command::MigrateHistory(args) => migrate::run(global, args),
    }
}

// --- library settings as flags ---

/// How the command line sets each setting that a config type's `validate` can name
/// (`LockConfig`, `EngineConfig`, `WorkerConfig`, `DirectConfig`, `E2eConfig`): its flag, or
/// `None` for a setting no flag sets (the command line always passes the library's default, so
/// an error about one is a bug in the defaults, not a user mistake).
pub const SETTING_FLAGS: [(&str, Option<&str>); 35] = [
    ("lock.ttl_ms", Some("--lock-ttl-ms")),
    ("lock.retry_delay_ms_base", Some("--lock-retry-delay-ms")),
    ("lock.retry_delay_ms_max", Some("--lock-retry-delay-ms-max")),
    ("lock.retries_max", Some("--lock-retries")),
    ("watch_retries_max", None),
    ("outcome_ttl_ms", Some("--outcome-ttl-ms")),
    ("outcome_ttl_margin_ms", Some("--outcome-ttl-margin-ms")),
    (
        "outcome_ttl_check_interval_ms",
        Some("--outcome-ttl-check-interval-ms"),
    ),
    ("history_max_entries", Some("--history-max-entries")),
    ("wait_replicas", Some("--wait-replicas")),
    ("redis_tls.client_cert_file", Some("--redis-client-cert")),
    ("redis_tls.client_key_file", Some("--redis-client-key")),
    ("threads", Some("--threads")),
    ("group_id", Some("--group")),
    ("requests_topic", Some("--requests-topic")),
    ("results_topic", Some("--results-topic")),
    ("dlq_topic", Some("--dlq-topic")),
    ("ledger_topic", Some("--ledger-topic")),
    ("partitions", Some("--partitions")),
    ("replication", Some("--replication")),
    ("commit_interval_ms", Some("--commit-interval-ms")),
    ("session_timeout_ms", Some("--session-timeout-ms")),
    ("max_poll_interval_ms", Some("--max-poll-interval-ms")),
    ("retry_delay_ms_max", Some("--retry-delay-ms-max")),
    ("backlog_bytes_max", None),
    ("revoke_timeout_ms", None),
    ("flush_timeout_ms", None),
    ("summary_interval_ms", None),
    ("shutdown_timeout_ms", Some("--shutdown-timeout-ms")),
    ("recover_interval_ms", Some("--recover-interval-ms")),
    ("recover_batch", Some("--recover-batch")),
    ("transfers", Some("--transfers")),
    ("wallets", Some("--wallets")),
    ("transient_retries", Some("--transient-retries")),
    ("timeout_s", Some("--timeout-s")),
];

fn setting_flag(setting: &str) -> Option<Option<&'static str>> {
    SETTING_FLAGS
        .iter()
        .find(|(s, _)| *s == setting)
        .map(|(_, flag)| *flag)
}

/// The flag name for a library setting; a setting no flag sets is called "built-in setting
/// NAME", and one missing from [`SETTING_FLAGS`] keeps its own name.
pub fn flag_for(setting: &str) -> String {
    match setting_flag(setting) {
        Some(Some(flag)) => flag.to_string(),
        Some(None) => format!("built-in setting {setting}"),
        None => setting.to_string(),
    }
}

/// A broken setting as a usage error that names the flag: "--lock-ttl-ms must be ...". The
/// rule's own mentions of other settings are spelled as flags too (whole names only, so
/// `retry_delay_ms_max` inside `lock.retry_delay_ms_max` is left alone).
pub fn flag_error(e: SettingError) -> Failure {
    Failure::usage(format!("{} {}", flag_for(e.setting), spell_flags(&e.rule)))
}

/// `text` with every whole setting name of [`SETTING_FLAGS`] replaced by its flag, or by
/// "the built-in NAME" when no flag sets it.
fn spell_flags(text: &str) -> String {
    // '-' too, so that a flag already in the text ("--threads") is one word, left alone.
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_name_char) {
        out.push_str(&rest[..start]);
        let word_len = rest[start..]
            .find(|c: char| !is_name_char(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        // A sentence's full stop is not part of the name.
        let name = word.trim_end_matches('.');
        match setting_flag(name) {
            Some(Some(flag)) => out.push_str(flag),
            Some(None) => out.push_str(&format!("the built-in {name}")),
            None => out.push_str(name),
        }
        out.push_str(&word[name.len()..]);
        rest = &rest[start + word_len..];
    }
    out.push_str(rest);
    out
}

// --- output ---

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

/// Writes `value` to stdout as pretty JSON and a newline.
fn json_out(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::runtime(format!("encoding JSON: {e}")))?;
    print_out(&format!("{text}\n"))
}

/// A table in the style every command prints.
fn new_table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::ASCII_FULL_CONDENSED)
        .set_header(header.iter().copied());
    table
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

/// Parses a command line as `wallet` would (for the tests of every subcommand).
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("wallet").chain(args.iter().copied()))
}

/// Options as `wallet` gets them with no flags and no environment (for the tests).
#[cfg(test)]
fn test_global() -> GlobalOpts {
    Cli::try_parse_from(["wallet", "locks"])
        .expect("`wallet locks` parses")
        .global
}

/// The summary and the after_help of one subcommand (for the tests).
#[cfg(test)]
fn subcommand_help(subcommand: &str) -> (String, String) {
    use clap::CommandFactory;
    let cli = Cli::command();
    let command = cli
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("no subcommand {subcommand}"));
    let text = |t: Option<&clap::builder::StyledStr>| t.map(|t| t.to_string()).unwrap_or_default();
    (text(command.get_about()), text(command.get_after_help()))
}

/// The help text of one flag of one subcommand (for the tests).
#[cfg(test)]
fn flag_help(subcommand: &str, flag: &str) -> String {
    use clap::CommandFactory;
    let cli = Cli::command();
    let command = cli
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("no subcommand {subcommand}"));
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .unwrap_or_else(|| panic!("no --{flag} in {subcommand}"));
    arg.get_help().map(|h| h.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use clap::CommandFactory;
    use wallet_transfer::tools::bench::E2eConfig;
    use wallet_transfer::worker::WorkerConfig;

    use super::*;

    const SUBCOMMANDS: [&str; 14] = [
        "seed",
        "bench",
        "worker",
        "snapshot",
        "status",
        "deposit",
        "locks",
        "audit",
        "transfer",
        "produce",
        "top",
        "history",
        "recover",
        "migrate-history",
    ];

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_seeds_are_host_port_pairs() {
        let seeds = |text: &str| parse(&["deposit", "u", "1.00", "--redis-cluster", text]);
        let ok = seeds("10.0.0.1:7000, 10.0.0.2:7001").unwrap();
        assert_eq!(
            ok.global.redis_cluster,
            Some(ClusterSeeds(vec![
                "10.0.0.1:7000".into(),
                "10.0.0.2:7001".into()
            ]))
        );
        for bad in ["", "10.0.0.1", ":7000", "h:port", "h:70000"] {
            let e = seeds(bad).unwrap_err().to_string();
            assert!(e.contains("--redis-cluster"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_retention_flags_reach_the_engine_and_a_bad_value_names_its_rule() {
        let engine = |flags: &[&str]| {
            let argv: Vec<&str> = std::iter::once("locks")
                .chain(flags.iter().copied())
                .collect();
            parse(&argv).unwrap().global.engine_config().unwrap()
        };
        assert_eq!(
            engine(&[]).outcome_ttl_ms,
            None,
            "auto: decided by the worker"
        );
        assert_eq!(
            engine(&["--outcome-ttl-ms", "5000"]).outcome_ttl_ms,
            Some(5_000)
        );
        assert_eq!(
            engine(&["--outcome-ttl-ms", "forever"]).outcome_ttl_ms,
            None
        );
        assert_eq!(engine(&[]).history_max_entries, Some(1_000));
        assert_eq!(
            engine(&["--history-max-entries", "all"]).history_max_entries,
            None
        );
        for (flag, bad) in [("--outcome-ttl-ms", "0"), ("--history-max-entries", "0")] {
            let e = parse(&["locks", flag, bad]).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("must be"), "{e}");
        }
    }

    #[test]
    fn the_tool_description_covers_every_subcommand() {
        let cli = Cli::command();
        let listed: Vec<&str> = cli
            .get_subcommands()
            .map(|c| c.get_name())
            .filter(|n| *n != "help")
            .collect();
        assert_eq!(listed, SUBCOMMANDS);
        for name in SUBCOMMANDS {
            assert!(LONG_ABOUT.contains(name), "long_about misses {name}");
            let command = cli.find_subcommand(name).unwrap();
            assert!(command.get_about().is_some(), "{name} has no summary");
            assert!(
                command.get_after_help().is_some(),
                "{name} has no after_help"
            );
        }
        for topic in [
            "worker",
            "transfer",
            "scenarios",
            "audit",
            "deposit",
            "seed",
            "bench",
        ] {
            assert!(ABOUT.contains(topic), "about misses {topic}");
        }
    }

    #[test]
    fn the_examples_state_the_library_defaults() {
        let d = DirectConfig::default();
        let line = format!(
            "{} transfers from {} threads among {} fresh wallets",
            d.transfers, d.threads, d.wallets
        );
        assert!(examples().contains(&line), "{}", examples());
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
        assert_eq!(
            config.lock.retry_delay_ms_base,
            LockConfig::default().retry_delay_ms_base
        );
        assert_eq!(
            test_global().engine_config().unwrap(),
            EngineConfig::default()
        );
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
        assert_eq!(
            e.to_string(),
            "--lock-retry-delay-ms must not exceed --lock-retry-delay-ms-max (2000), got 3000"
        );
    }

    /// A setting, the flag its error must start with (`None`: no flag sets it), and how to
    /// break it in a default config.
    type Case<C> = (&'static str, Option<&'static str>, fn(&mut C));

    const LOCK_CASES: [Case<LockConfig>; 4] = [
        ("lock.ttl_ms", Some("--lock-ttl-ms"), |c| c.ttl_ms = 0),
        ("lock.retries_max", Some("--lock-retries"), |c| {
            c.retries_max = 1_001
        }),
        (
            "lock.retry_delay_ms_max",
            Some("--lock-retry-delay-ms-max"),
            |c| c.retry_delay_ms_max = 600_001,
        ),
        (
            "lock.retry_delay_ms_base",
            Some("--lock-retry-delay-ms"),
            |c| c.retry_delay_ms_base = 5_000,
        ),
    ];

    const ENGINE_CASES: [Case<EngineConfig>; 7] = [
        ("wait_replicas", Some("--wait-replicas"), |c| {
            c.wait_replicas = Some(0)
        }),
        ("lock.ttl_ms", Some("--lock-ttl-ms"), |c| c.lock.ttl_ms = 0),
        ("history_max_entries", Some("--history-max-entries"), |c| {
            c.history_max_entries = Some(0)
        }),
        ("watch_retries_max", None, |c| c.watch_retries_max = 1_001),
        ("outcome_ttl_ms", Some("--outcome-ttl-ms"), |c| {
            c.outcome_ttl_ms = Some(0)
        }),
        (
            "redis_tls.client_key_file",
            Some("--redis-client-key"),
            |c| c.redis_tls.client_cert_file = Some("client.pem".into()),
        ),
        (
            "redis_tls.client_cert_file",
            Some("--redis-client-cert"),
            |c| c.redis_tls.client_key_file = Some("client.key".into()),
        ),
    ];

    const WORKER_CASES: [Case<WorkerConfig>; 23] = [
        ("threads", Some("--threads"), |c| c.threads = 0),
        (
            "outcome_ttl_margin_ms",
            Some("--outcome-ttl-margin-ms"),
            |c| c.outcome_ttl_margin_ms = u64::MAX,
        ),
        (
            "outcome_ttl_check_interval_ms",
            Some("--outcome-ttl-check-interval-ms"),
            |c| c.outcome_ttl_check_interval_ms = 0,
        ),
        ("backlog_bytes_max", None, |c| c.backlog_bytes_max = 1),
        ("partitions", Some("--partitions"), |c| c.partitions = 0),
        ("replication", Some("--replication"), |c| c.replication = 0),
        ("commit_interval_ms", Some("--commit-interval-ms"), |c| {
            c.commit_interval_ms = 0
        }),
        ("session_timeout_ms", Some("--session-timeout-ms"), |c| {
            c.session_timeout_ms = 0
        }),
        (
            "max_poll_interval_ms",
            Some("--max-poll-interval-ms"),
            |c| c.max_poll_interval_ms = 0,
        ),
        (
            "max_poll_interval_ms",
            Some("--max-poll-interval-ms"),
            |c| c.max_poll_interval_ms = 12_000,
        ),
        ("revoke_timeout_ms", None, |c| c.revoke_timeout_ms = 0),
        ("flush_timeout_ms", None, |c| c.flush_timeout_ms = 0),
        ("retry_delay_ms_max", Some("--retry-delay-ms-max"), |c| {
            c.retry_delay_ms_max = 0
        }),
        ("summary_interval_ms", None, |c| c.summary_interval_ms = 0),
        ("shutdown_timeout_ms", Some("--shutdown-timeout-ms"), |c| {
            c.shutdown_timeout_ms = 0
        }),
        ("requests_topic", Some("--requests-topic"), |c| {
            c.requests_topic.clear()
        }),
        ("results_topic", Some("--results-topic"), |c| {
            c.results_topic.clear()
        }),
        ("dlq_topic", Some("--dlq-topic"), |c| c.dlq_topic.clear()),
        ("ledger_topic", Some("--ledger-topic"), |c| {
            c.ledger_topic.clear()
        }),
        ("ledger_topic", Some("--ledger-topic"), |c| {
            c.ledger_topic = c.requests_topic.clone()
        }),
        ("group_id", Some("--group"), |c| c.group_id.clear()),
        ("recover_interval_ms", Some("--recover-interval-ms"), |c| {
            c.recover_interval_ms = u64::MAX
        }),
        ("recover_batch", Some("--recover-batch"), |c| {
            c.recover_batch = 0
        }),
    ];

    const DIRECT_CASES: [Case<DirectConfig>; 4] = [
        ("threads", Some("--threads"), |c| c.threads = 0),
        ("transfers", Some("--transfers"), |c| c.transfers = 0),
        ("wallets", Some("--wallets"), |c| c.wallets = 1),
        ("transient_retries", Some("--transient-retries"), |c| {
            c.transient_retries = 101
        }),
    ];

    const E2E_CASES: [Case<E2eConfig>; 6] = [
        ("transfers", Some("--transfers"), |c| c.transfers = 0),
        ("wallets", Some("--wallets"), |c| c.wallets = 0),
        ("requests_topic", Some("--requests-topic"), |c| {
            c.requests_topic = " ".into()
        }),
        ("results_topic", Some("--results-topic"), |c| {
            c.results_topic.clear()
        }),
        ("results_topic", Some("--results-topic"), |c| {
            c.results_topic = c.requests_topic.clone()
        }),
        ("timeout_s", Some("--timeout-s"), |c| {
            c.timeout = Duration::ZERO
        }),
    ];

    /// The error of each case: the case's config broken and validated.
    fn errors<C: Default>(
        cases: &[Case<C>],
        validate: fn(&C) -> Result<(), SettingError>,
    ) -> Vec<(SettingError, &'static str, Option<&'static str>)> {
        cases
            .iter()
            .map(|(setting, flag, breaks)| {
                let mut config = C::default();
                breaks(&mut config);
                let error = validate(&config).expect_err(setting);
                (error, *setting, *flag)
            })
            .collect()
    }

    /// One broken config per setting that a `validate` can name, with its expected flag.
    fn broken_settings() -> Vec<(SettingError, &'static str, Option<&'static str>)> {
        let mut all = errors(&LOCK_CASES, LockConfig::validate);
        all.extend(errors(&ENGINE_CASES, EngineConfig::validate));
        all.extend(errors(&WORKER_CASES, WorkerConfig::validate));
        all.extend(errors(&DIRECT_CASES, DirectConfig::validate));
        all.extend(errors(&E2E_CASES, E2eConfig::validate));
        all
    }

    #[test]
    fn every_setting_error_names_its_flag() {
        for (error, setting, flag) in broken_settings() {
            assert_eq!(error.setting, setting, "{error}");
            let failure = flag_error(error);
            let message = failure.to_string();
            assert_eq!(failure.exit_code(), 2, "{message}");
            match flag {
                Some(flag) => assert!(
                    message.starts_with(&format!("{flag} ")),
                    "{setting}: {message:?} should start with {flag}"
                ),
                None => assert!(
                    message.starts_with(&format!("built-in setting {setting} ")),
                    "{setting}: {message:?}"
                ),
            }
            // No setting that has a flag is left under its library name.
            let words = message.split(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)));
            for word in words.map(|w| w.trim_end_matches('.')) {
                assert!(
                    !matches!(setting_flag(word), Some(Some(_))),
                    "{word} left in {message:?}"
                );
            }
        }
    }

    #[test]
    fn the_flag_table_is_exactly_the_settings_validate_can_name() {
        let named: BTreeSet<&str> = broken_settings()
            .iter()
            .map(|(e, _, _)| e.setting)
            .collect();
        let table: BTreeSet<&str> = SETTING_FLAGS.iter().map(|(s, _)| *s).collect();
        assert_eq!(named, table);
        assert_eq!(
            table.len(),
            SETTING_FLAGS.len(),
            "a setting is listed twice"
        );
        for (error, setting, flag) in broken_settings() {
            assert_eq!(setting_flag(error.setting), Some(flag), "{setting}");
        }
    }

    #[test]
    fn settings_in_a_rule_are_spelled_as_flags_whole_names_only() {
        assert_eq!(
            spell_flags("must not exceed lock.retry_delay_ms_max (2000), got 3000"),
            "must not exceed --lock-retry-delay-ms-max (2000), got 3000"
        );
        assert_eq!(
            spell_flags(
                "must be at least session_timeout_ms (10000) and above revoke_timeout_ms \
                 (15000), got 12000"
            ),
            "must be at least --session-timeout-ms (10000) and above the built-in \
             revoke_timeout_ms (15000), got 12000"
        );
        assert_eq!(spell_flags("see threads."), "see --threads.");
        assert_eq!(spell_flags("see --threads"), "see --threads");
        assert_eq!(
            spell_flags("my_threads and threads2"),
            "my_threads and threads2"
        );
        assert_eq!(spell_flags(""), "");
        assert_eq!(flag_for("no_such_setting"), "no_such_setting");
    }

    #[test]
    fn failures_print_on_one_line() {
        let f = Failure::runtime("first\n  second\n\nthird");
        assert_eq!(f.to_string(), "first; second; third");
        assert_eq!(f.exit_code(), 1);
        assert_eq!(Failure::usage("x").exit_code(), 2);
    }
}
