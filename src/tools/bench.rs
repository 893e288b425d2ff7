//! Load generator for the transfer engine, and the report it prints.
//!
//! A run creates its own wallets under a unique prefix (`bench_<6 hex>_<i>`), moves money
//! between them and checks afterwards that the sum of their balances did not change. The
//! [`BenchReport`] is mode-neutral: the direct mode ([`run_direct`]) calls
//! [`WalletService::transfer`] from a pool of threads and fills in every figure, including
//! what the run left in Redis ([`Retained`]: outcome records, history kept and trimmed,
//! `used_memory` before and after); the end-to-end mode ([`run_e2e`]) publishes requests to
//! a running worker through Kafka, waits for their results and fills in the figures it can
//! see (throughput, publish-to-result latency, outcomes), leaving the engine figures
//! (`engine`) empty.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comfy_table::{CellAlignment, Table};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use rand::RngExt;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};

use crate::engine::cluster::{self, ClusterError, ClusterPools, SLOT_COUNT};
use crate::engine::cluster_transfer::REDIRECT_RETRIES_LIMIT;
use crate::engine::message::{FailureReason, FieldError, Status, TransferRequest};
use crate::engine::money::{Amount, Currency};
use crate::engine::retention::CHECKPOINT_ENTRIES_FIELD;
use crate::engine::service::WalletService;
use crate::engine::setting::{SettingError, setters};
use crate::engine::store::{self, Conn, PooledConn, keys};
use crate::engine::transfer::TransferOutcome;
use crate::engine::wallet::{NewWallet, WalletError};
use crate::tools::latency::{self, StageSplit, StageSummary, WallClock};
use crate::tools::results::{ReadError, ReadMessage, Start, TopicReader};
use crate::worker::kafka::{self, KafkaConfig};

/// Most threads of a direct run.
pub const BENCH_THREADS_LIMIT: usize = 256;
/// Most transfers of one run.
pub const BENCH_TRANSFERS_LIMIT: u64 = 10_000_000;
/// Fewest wallets of a run (one pair).
pub const BENCH_WALLETS_MIN: u32 = 2;
/// Most wallets of a run.
pub const BENCH_WALLETS_LIMIT: u32 = 1_000_000;
/// Retries of one request after a transient error, at most.
pub const BENCH_TRANSIENT_RETRIES_LIMIT: u32 = 100;
/// Opening balance of every bench wallet: 1_000_000.00, so insufficient funds stays rare.
pub const BENCH_OPENING_CENTS: i64 = 100_000_000;
/// Largest amount one bench transfer moves, in cents (100.00). The smallest is 0.01.
pub const BENCH_AMOUNT_CENTS_MAX: i64 = 10_000;
/// Wallets created or read per batch.
const BATCH: usize = 1_000;
/// Warnings logged per run about retried or failed requests; the rest are only counted.
const WARNINGS_MAX: u32 = 5;
/// Longest latency the histogram records exactly (one hour, in microseconds); longer ones
/// are recorded as this.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Settings of a direct run. `Default` plus the `with_*` setters (the struct is
/// `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectConfig {
    /// Threads calling `transfer`; the pool should hold as many connections.
    pub threads: usize,
    /// Transfers in total, shared out among the threads.
    pub transfers: u64,
    /// Wallets created for the run.
    pub wallets: u32,
    /// Every transfer goes from the first wallet to the second: one hot pair.
    pub hot: bool,
    /// Which pairs the transfers are drawn from (see [`Pairs`]).
    pub pairs: Pairs,
    /// Retries of one request after a transient error (same request, same idempotency key).
    pub transient_retries: u32,
    /// Draws a progress bar on stderr (indicatif hides it when stderr is not a terminal).
    pub progress: bool,
    /// Deletes the run's wallets, users, histories and outcome records afterwards.
    pub cleanup: bool,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig {
            threads: 8,
            transfers: 50_000,
            wallets: 10_000,
            hot: false,
            pairs: Pairs::Random,
            transient_retries: 5,
            progress: false,
            cleanup: false,
        }
    }
}

setters!(DirectConfig {
    with_threads => threads: usize,
    with_transfers => transfers: u64,
    with_wallets => wallets: u32,
    with_hot => hot: bool,
    with_pairs => pairs: Pairs,
    with_transient_retries => transient_retries: u32,
    with_progress => progress: bool,
    with_cleanup => cleanup: bool,
});

impl DirectConfig {
    /// Checks the settings against their limits; the error names the setting and the rule.
    pub fn validate(&self) -> Result<(), SettingError> {
        SettingError::check_range("threads", self.threads, 1, BENCH_THREADS_LIMIT)?;
        SettingError::check_range("transfers", self.transfers, 1, BENCH_TRANSFERS_LIMIT)?;
        SettingError::check_range(
            "wallets",
            self.wallets,
            BENCH_WALLETS_MIN,
            BENCH_WALLETS_LIMIT,
        )?;
        SettingError::check_range(
            "transient_retries",
            self.transient_retries,
            0,
            BENCH_TRANSIENT_RETRIES_LIMIT,
        )
    }
}

/// Which sender/receiver pairs a direct run draws its transfers from. On a Redis Cluster the
/// engine takes the one-transaction path when both wallets hash to one slot and the
/// cross-slot steps otherwise (ARCHITECTURE.md, "Redis Cluster"); `SameSlot` and `CrossSlot`
/// measure the two paths apart. On one Redis every transfer is one transaction whatever the
/// pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pairs {
    /// Uniform random distinct pairs among ids `<run>_<i>`: two random ids share a slot with
    /// probability 1/16384, so on a cluster nearly every transfer is cross-slot, whatever
    /// the number of primaries.
    #[default]
    Random,
    /// Pairs of ids that hash to the same slot, found without hash tags: candidate ids
    /// `<run>_<i>` are bucketed by slot and two candidates of one slot make a pair
    /// (see [`same_slot_ids`]). Transfers go either way within a random pair.
    SameSlot,
    /// Uniform random distinct pairs whose ids hash to different slots (a pair drawn in one
    /// slot is drawn again).
    CrossSlot,
}

impl Pairs {
    /// `random`, `same-slot` or `cross-slot`, as the `--pairs` flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pairs::Random => "random",
            Pairs::SameSlot => "same-slot",
            Pairs::CrossSlot => "cross-slot",
        }
    }

    /// How the mode row of the report names the pairs.
    fn describe(self) -> &'static str {
        match self {
            Pairs::Random => "uniform random pairs",
            Pairs::SameSlot => "same-slot pairs",
            Pairs::CrossSlot => "cross-slot pairs",
        }
    }
}

/// Why a bench run could not finish (a money check that fails is not an error: see
/// [`BenchReport::balance`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A setting broke its rule.
    #[error("invalid bench setting: {0}")]
    Config(#[from] SettingError),
    /// Preparing the run failed (creating wallets, a worker that does not answer, ...).
    #[error("bench setup: {0}")]
    Setup(String),
    /// A wallet operation failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis Cluster's map or a primary's pool failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// No pooled connection in time.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// Publishing requests or reading results failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Not every result arrived in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Latency percentiles of a run, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub samples: u64,
    /// Their mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram_us(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What the engine reported about its own work (`TransferOutcome::stats`), summed over the
/// fresh (non-duplicate) outcomes. Only a mode that calls the engine in-process has these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineFigures {
    /// Outcomes produced by this run (not answered from an earlier record).
    pub fresh: u64,
    /// Fresh outcomes whose Redis lock was free at the first SET NX.
    pub lock_first_try: u64,
    /// Sum of the Redis lock waits, in microseconds.
    pub lock_wait_us: u64,
    /// Transactions aborted by a changed watched key and retried, in total.
    pub watch_retries: u64,
    /// Redis round trips, in total.
    pub round_trips: u64,
}

impl EngineFigures {
    /// Counts a fresh outcome's costs; a duplicate cost nothing and is skipped.
    pub fn add_outcome(&mut self, o: &TransferOutcome) {
        if o.duplicate {
            return;
        }
        self.fresh += 1;
        if o.stats.lock.attempts == 1 {
            self.lock_first_try += 1;
        }
        self.lock_wait_us += o.stats.lock.wait_us;
        self.watch_retries += u64::from(o.stats.watch_retries);
        self.round_trips += u64::from(o.stats.round_trips);
    }

    /// Adds another thread's figures.
    pub fn merge(&mut self, other: &EngineFigures) {
        self.fresh += other.fresh;
        self.lock_first_try += other.lock_first_try;
        self.lock_wait_us += other.lock_wait_us;
        self.watch_retries += other.watch_retries;
        self.round_trips += other.round_trips;
    }

    /// Share of fresh outcomes that got their lock on the first try, 0 to 1.
    pub fn lock_first_try_rate(&self) -> f64 {
        ratio(self.lock_first_try, self.fresh)
    }

    /// Mean lock wait of a fresh outcome, in milliseconds.
    pub fn lock_wait_mean_ms(&self) -> f64 {
        ratio(self.lock_wait_us, self.fresh) / 1000.0
    }

    /// Mean Redis round trips of a fresh outcome.
    pub fn round_trips_mean(&self) -> f64 {
        ratio(self.round_trips, self.fresh)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The sum of the run's wallet balances before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceCheck {
    /// Wallets of the run.
    pub wallets: u32,
    /// The sum of their balances before the run.
    pub before: Amount,
    /// The sum after (must equal `before`: transfers move money, never make it).
    pub after: Amount,
    /// Wallets whose balance ended below zero (must be 0).
    pub negative: u32,
}

impl BalanceCheck {
    /// True when the sum is unchanged and no balance went negative.
    pub fn ok(&self) -> bool {
        self.before == self.after && self.negative == 0
    }
}

/// Figures of one bench run, printed as a table or as one JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// `direct` (in-process engine calls) or `e2e` (through Kafka and a running worker).
    pub mode: &'static str,
    /// The wallet prefix of this run, `bench_<6 hex>` (direct) or `e2e_<6 hex>`.
    pub run: String,
    /// Threads calling the engine (direct), or the worker's (e2e: not known, 0).
    pub threads: usize,
    /// Wallets of the run.
    pub wallets: u32,
    /// Every transfer went between one hot pair.
    pub hot: bool,
    /// Which pairs the transfers were drawn from (e2e: always random).
    pub pairs: Pairs,
    /// Requests per second the e2e publisher was held to; `None`: all at once (or direct).
    pub publish_rate: Option<u32>,
    /// Requests finished (answered or given up).
    pub transfers: u64,
    /// Wall time of the transfer phase, without setup and verification.
    pub elapsed: Duration,
    /// Per request, from the first call until its final answer, bench retries included.
    pub latency: LatencySummary,
    /// The engine's own costs (direct mode).
    pub engine: Option<EngineFigures>,
    /// Answers by `STATUS` or `STATUS:reason`; answers taken from an earlier record (after a
    /// transient error whose write had landed) get a ` (duplicate)` suffix.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that ended in an error, by kind (see [`TransferError::kind`](crate::TransferError::kind)).
    pub errors: BTreeMap<String, u64>,
    /// Transient errors that the bench retried, by kind.
    pub transient_retries: BTreeMap<String, u64>,
    /// The money check over the run's wallets.
    pub balance: Option<BalanceCheck>,
    /// Keys deleted after the run, when cleanup was asked for.
    pub cleaned_keys: Option<u64>,
    /// What Redis itself counted over the transfer phase (direct mode).
    pub redis: Option<RedisCost>,
    /// What the run left in Redis (direct mode), summed over every primary on a cluster.
    pub retained: Option<Retained>,
    /// On a Redis Cluster (direct mode): each primary's costs and each transfer path's.
    pub cluster: Option<ClusterFigures>,
    /// Where the requests spent their time, from the messages' timestamps (e2e mode).
    pub stages: Option<StageSummary>,
    /// The broker's own latency for a plain message with the same client settings (e2e mode).
    pub broker_floor: Option<LatencySummary>,
}

/// `{"p50": .., "p99": ..}` of a summary, in ms.
fn p50_p99(l: &LatencySummary) -> Value {
    json!({"p50": l.p50_ms, "p99": l.p99_ms})
}

/// Redis's own figures over a run, from `INFO commandstats` and `INFO memory` before and after:
/// every command any client sent (the bench is meant to be the only one), and the memory it
/// kept.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RedisCost {
    /// Commands Redis ran (INFO excluded).
    pub commands: u64,
    /// Change of `used_memory`.
    pub used_memory_delta_bytes: i64,
}

impl RedisCost {
    /// Commands and bytes kept per transfer.
    pub fn per_transfer(&self, transfers: u64) -> (f64, f64) {
        let n = transfers.max(1) as f64;
        (
            self.commands as f64 / n,
            self.used_memory_delta_bytes as f64 / n,
        )
    }
}

/// One transfer path's share of a run on a Redis Cluster: its requests and what the engine
/// reported about them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathFigures {
    /// Requests whose wallets took this path (by their slots), answered or not.
    pub transfers: u64,
    /// The engine's figures over the fresh outcomes of these requests.
    pub engine: EngineFigures,
}

/// One primary's costs over the transfer phase of a run, from its `INFO commandstats`,
/// `INFO cpu` and `INFO memory` before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCost {
    /// The primary, `host:port`.
    pub addr: String,
    /// Commands it ran (INFO excluded; commands inside scripts and transactions included).
    pub commands: u64,
    /// Microseconds it spent inside those commands (`usec=` of `INFO commandstats`).
    pub command_usec: u64,
    /// CPU it used, system plus user, in microseconds (`used_cpu_sys` + `used_cpu_user`):
    /// the commands and everything around them (reading, parsing, replying).
    pub cpu_us: u64,
    /// Change of its `used_memory`.
    pub used_memory_delta_bytes: i64,
}

/// What a direct run on a Redis Cluster measured per primary and per transfer path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    /// Every primary of the map at the start of the run, sorted by address.
    pub primaries: Vec<NodeCost>,
    /// Transfers whose wallets share a slot: one transaction on the slot's primary.
    pub same_slot: PathFigures,
    /// Transfers whose wallets are in different slots: the cross-slot steps.
    pub cross_slot: PathFigures,
}

impl ClusterFigures {
    /// (commands, command µs, cpu µs) summed over the primaries, per transfer of a run of
    /// `transfers`.
    pub fn per_transfer(&self, transfers: u64) -> (f64, f64, f64) {
        let n = transfers.max(1) as f64;
        let sum = |f: fn(&NodeCost) -> u64| self.primaries.iter().map(f).sum::<u64>() as f64 / n;
        (
            sum(|p| p.commands),
            sum(|p| p.command_usec),
            sum(|p| p.cpu_us),
        )
    }

    /// Whether the engine ran in this process (a direct run), so the paths have engine
    /// figures; an e2e run's engine is the worker's.
    fn engine_ran(&self) -> bool {
        self.same_slot.engine.fresh + self.cross_slot.engine.fresh > 0
    }

    /// The path every one of `transfers` requests took, when they all took one: then Redis's
    /// own counts per transfer are that path's.
    pub fn only_path(&self, transfers: u64) -> Option<&'static str> {
        if transfers == 0 {
            None
        } else if self.same_slot.transfers == transfers {
            Some("same-slot")
        } else if self.cross_slot.transfers == transfers {
            Some("cross-slot")
        } else {
            None
        }
    }

    fn to_json(&self, transfers: u64) -> Value {
        let (commands, usec, cpu) = self.per_transfer(transfers);
        let only = self.only_path(transfers);
        let engine = self.engine_ran();
        let path = |name: &str, p: &PathFigures| {
            json!({
                "transfers": p.transfers,
                "fresh_outcomes": p.engine.fresh,
                "round_trips_per_transfer": engine.then(|| p.engine.round_trips_mean()),
                "watch_retries_total": p.engine.watch_retries,
                "commands_per_transfer": (only == Some(name)).then_some(commands),
                "cpu_us_per_transfer": (only == Some(name)).then_some(cpu),
            })
        };
        let primaries: Vec<Value> = self
            .primaries
            .iter()
            .map(|p| {
                json!({
                    "addr": p.addr,
                    "commands": p.commands,
                    "command_usec": p.command_usec,
                    "cpu_us": p.cpu_us,
                    "used_memory_delta_bytes": p.used_memory_delta_bytes,
                })
            })
            .collect();
        json!({
            "primaries": primaries,
            "commands_per_transfer": commands,
            "command_usec_per_transfer": usec,
            "cpu_us_per_transfer": cpu,
            "paths": {
                "same_slot": path("same-slot", &self.same_slot),
                "cross_slot": path("cross-slot", &self.cross_slot),
            },
        })
    }

    fn rows(&self, transfers: u64) -> Vec<(String, String)> {
        let (commands, usec, cpu) = self.per_transfer(transfers);
        let mut rows = vec![("cluster primaries".into(), self.primaries.len().to_string())];
        for (name, p) in [
            ("same-slot", &self.same_slot),
            ("cross-slot", &self.cross_slot),
        ] {
            // An e2e run has no engine figures (the engine runs in the worker).
            let mut parts = Vec::new();
            if self.engine_ran() {
                parts.push(format!(
                    "{:.2} round trips each",
                    p.engine.round_trips_mean()
                ));
            }
            if self.only_path(transfers) == Some(name) {
                parts.push(format!("{commands:.2} redis commands"));
            }
            let mut text = p.transfers.to_string();
            if !parts.is_empty() {
                text.push_str(&format!(" ({})", parts.join(", ")));
            }
            rows.push((format!("{name} transfers"), text));
        }
        rows.push(("redis cpu us/transfer".into(), format!("{cpu:.1}")));
        rows.push(("redis command us/transfer".into(), format!("{usec:.1}")));
        for p in &self.primaries {
            let n = transfers.max(1) as f64;
            rows.push((
                format!("primary {}", p.addr),
                format!(
                    "{} commands, {:.1} cpu us/transfer",
                    p.commands,
                    p.cpu_us as f64 / n
                ),
            ));
        }
        rows
    }
}

/// What the run left in Redis, read after its transfer phase: the outcome records of its
/// requests (and how many of them expire), the history entries its wallets keep, the entries
/// trimmed into their checkpoints, and `used_memory` before and after (direct mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Outcome records of the run's requests that exist (`transfer:{id}`).
    pub outcome_records: u64,
    /// Those of them with a ttl (`EngineConfig::outcome_ttl_ms`).
    pub outcome_records_with_ttl: u64,
    /// History entries kept in Redis: the sum of the history lengths over the run's wallets.
    pub history_entries: u64,
    /// What one wallet of the run with history holds in Redis after it: the mean `MEMORY
    /// USAGE` (exact, `SAMPLES 0`) of its hash and history keys, over those with history among
    /// up to [`WALLET_BYTES_SAMPLE`] of the run's wallets.
    pub wallet_bytes: u64,
    /// History entries trimmed into checkpoints: the sum of `hc` over the run's wallets.
    pub history_trimmed: u64,
    /// `used_memory` before the transfer phase, in bytes.
    pub used_memory_before: i64,
    /// `used_memory` after it, in bytes.
    pub used_memory_after: i64,
}

impl Retained {
    /// The figures as JSON, with the bytes kept per transfer of a run of `transfers`.
    fn to_json(self, transfers: u64) -> Value {
        let delta = self.used_memory_after - self.used_memory_before;
        json!({
            "outcome_records": self.outcome_records,
            "outcome_records_with_ttl": self.outcome_records_with_ttl,
            "history_entries": self.history_entries,
            "history_trimmed": self.history_trimmed,
            "wallet_bytes": self.wallet_bytes,
            "used_memory_before": self.used_memory_before,
            "used_memory_after": self.used_memory_after,
            "bytes_per_transfer": delta as f64 / transfers.max(1) as f64,
        })
    }

    fn rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "outcome records kept".into(),
                format!(
                    "{} ({} with ttl)",
                    self.outcome_records, self.outcome_records_with_ttl
                ),
            ),
            (
                "history entries kept".into(),
                self.history_entries.to_string(),
            ),
            (
                "history entries trimmed".into(),
                self.history_trimmed.to_string(),
            ),
            (
                "bytes per wallet with history".into(),
                self.wallet_bytes.to_string(),
            ),
            (
                "redis used_memory before".into(),
                self.used_memory_before.to_string(),
            ),
            (
                "redis used_memory after".into(),
                self.used_memory_after.to_string(),
            ),
        ]
    }
}

/// Counts the outcome records among `keys` and those with a ttl, by PTTL (-2: no key, -1: no
/// ttl), pipelined in batches; `bar` advances per key. Returns (records, with ttl).
fn count_outcome_records(
    service: &WalletService,
    keys: impl Iterator<Item = String>,
    bar: &ProgressBar,
) -> Result<(u64, u64), BenchError> {
    let mut conn = service.pool().get()?;
    let (mut records, mut with_ttl) = (0, 0);
    let mut batch = Vec::with_capacity(BATCH);
    let mut keys = keys.peekable();
    while keys.peek().is_some() {
        batch.clear();
        batch.extend(keys.by_ref().take(BATCH));
        let (found, ttl) = count_ttls(&mut conn, &batch)?;
        records += found;
        with_ttl += ttl;
        bar.inc(batch.len() as u64);
    }
    Ok((records, with_ttl))
}

/// PTTL of `keys` in one pipeline: (how many exist, how many of them have a ttl).
fn count_ttls(conn: &mut Conn, keys: &[String]) -> Result<(u64, u64), BenchError> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("PTTL").arg(key);
    }
    let ttls: Vec<i64> = pipe.query(&mut conn.redis)?;
    let existing = ttls.iter().filter(|&&t| t != -2).count() as u64;
    let with_ttl = ttls.iter().filter(|&&t| t >= 0).count() as u64;
    Ok((existing, with_ttl))
}

/// Sums the history lengths of `ids` (XLEN of an older stream plus LLEN of the log) and their
/// checkpoints' `hc`, pipelined in batches;
/// `bar` advances per wallet. Returns (entries kept, entries trimmed).
fn count_history(
    service: &WalletService,
    ids: &[String],
    bar: &ProgressBar,
) -> Result<(u64, u64), BenchError> {
    let space = service.key_space();
    let (mut kept, mut trimmed) = (0, 0);
    for (mut conn, ids) in by_node(service, ids)? {
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.xlen(space.history(id))
                    .llen(space.log(id))
                    .hget(space.wallet(id), CHECKPOINT_ENTRIES_FIELD);
            }
            // XLEN, LLEN then HGET per wallet; a missing history or checkpoint counts 0.
            let replies: Vec<Option<u64>> = pipe.query(&mut conn.redis)?;
            for three in replies.chunks(3) {
                kept += three[0].unwrap_or(0) + three.get(1).copied().flatten().unwrap_or(0);
                trimmed += three.get(2).copied().flatten().unwrap_or(0);
            }
            bar.inc(chunk.len() as u64);
        }
    }
    Ok((kept, trimmed))
}

/// Most wallets `sample_wallet_bytes` measures.
pub const WALLET_BYTES_SAMPLE: usize = 100;

/// The mean `MEMORY USAGE ... SAMPLES 0` of the hash, the log and the older stream of the
/// wallets with history among up to [`WALLET_BYTES_SAMPLE`] of `ids`, spread evenly; 0 when
/// none has history.
fn sample_wallet_bytes(service: &WalletService, ids: &[String]) -> Result<u64, BenchError> {
    let step = ids.len().div_ceil(WALLET_BYTES_SAMPLE).max(1);
    let sample: Vec<String> = ids.iter().step_by(step).cloned().collect();
    let space = service.key_space();
    let (mut total, mut with_history) = (0, 0);
    for (mut conn, ids) in by_node(service, &sample)? {
        let mut pipe = redis::pipe();
        for id in &ids {
            for key in [space.wallet(id), space.log(id), space.history(id)] {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
        }
        // Per wallet: its hash, its log, its stream; nil for a key that does not exist.
        let bytes: Vec<Option<u64>> = pipe.query(&mut conn.redis)?;
        for three in bytes.chunks(3) {
            if three[1..].iter().any(Option::is_some) {
                total += three.iter().flatten().sum::<u64>();
                with_history += 1;
            }
        }
    }
    Ok(total / u64::max(with_history, 1))
}

/// Counts the outcome records of run `run` on every primary of a cluster and those with a
/// ttl: `SCAN MATCH transfer:{<run>_*}:<run>_t*` (the sender is in the key, and the bench
/// does not record who sent what), then PTTL of each batch, pipelined. `bar` advances per
/// record. Returns (records, with ttl).
fn count_outcome_records_cluster(
    pools: &ClusterPools,
    run: &str,
    bar: &ProgressBar,
) -> Result<(u64, u64), BenchError> {
    let pattern = format!("transfer:{{{run}_*}}:{run}_t*");
    let (mut records, mut with_ttl) = (0, 0);
    for addr in pools.primaries() {
        let mut conn = pools.conn_for_addr(&addr)?;
        store::scan_each(&mut conn, None, &pattern, Some("hash"), |conn, batch| {
            let (found, ttl) = count_ttls(conn, &batch)?;
            records += found;
            with_ttl += ttl;
            bar.inc(batch.len() as u64);
            Ok::<_, BenchError>(())
        })?;
    }
    Ok((records, with_ttl))
}

/// `ids` grouped by the Redis that holds their keys, each group with a connection to it:
/// one group on one Redis; one per primary (of the known map) on a cluster.
fn by_node<'a>(
    service: &WalletService,
    ids: &'a [String],
) -> Result<Vec<(PooledConn, Vec<&'a str>)>, BenchError> {
    let Some(pools) = service.cluster() else {
        let all = ids.iter().map(String::as_str).collect();
        return Ok(vec![(service.pool().get()?, all)]);
    };
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for id in ids {
        let slot = cluster::keys::wallet_slot(id);
        let addr = pools
            .primary_for_slot(slot)
            .ok_or(ClusterError::SlotUncovered(slot))?;
        groups.entry(addr).or_default().push(id);
    }
    groups
        .into_iter()
        .map(|(addr, ids)| Ok((pools.conn_for_addr(&addr)?, ids)))
        .collect()
}

/// One Redis's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    commands: u64,
    command_usec: u64,
    used_memory: i64,
    cpu_us: u64,
}

/// The counters of `INFO commandstats memory cpu`. Pure.
fn parse_counters(info: &str) -> Counters {
    let cpu_s = |field: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Counters {
        commands: parse_command_calls(info),
        command_usec: sum_cmdstat_field(info, "usec="),
        used_memory: parse_used_memory(info),
        cpu_us: ((cpu_s("used_cpu_sys:") + cpu_s("used_cpu_user:")) * 1e6).round() as u64,
    }
}

/// Every Redis the service talks to, `(address, counters)`: one Redis (named `redis`), or
/// every primary of a cluster's map, sorted. One INFO call each.
fn node_counters(service: &WalletService) -> Result<Vec<(String, Counters)>, BenchError> {
    let read = |conn: &mut PooledConn| -> Result<Counters, BenchError> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .arg("memory")
            .arg("cpu")
            .query(&mut conn.redis)?;
        Ok(parse_counters(&info))
    };
    match service.cluster() {
        None => Ok(vec![("redis".into(), read(&mut service.pool().get()?)?)]),
        Some(pools) => pools
            .primaries()
            .into_iter()
            .map(|addr| {
                let counters = read(&mut pools.conn_for_addr(&addr)?)?;
                Ok((addr, counters))
            })
            .collect(),
    }
}

/// Each node's costs between `before` and `after` (matched by address; a node missing
/// after, say failed over, counts nothing).
fn node_costs(before: &[(String, Counters)], after: &[(String, Counters)]) -> Vec<NodeCost> {
    before
        .iter()
        .map(|(addr, b)| {
            let a = after
                .iter()
                .find(|(x, _)| x == addr)
                .map_or(*b, |(_, a)| *a);
            NodeCost {
                addr: addr.clone(),
                commands: a.commands.saturating_sub(b.commands),
                command_usec: a.command_usec.saturating_sub(b.command_usec),
                cpu_us: a.cpu_us.saturating_sub(b.cpu_us),
                used_memory_delta_bytes: a.used_memory - b.used_memory,
            }
        })
        .collect()
}

/// Sums the number after `field` (`calls=`, `usec=`) over the `cmdstat_*` lines of `INFO
/// commandstats`, leaving out INFO itself. Pure.
fn sum_cmdstat_field(info: &str, field: &str) -> u64 {
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split(field)
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Sums `calls=` over the `cmdstat_*` lines of `INFO commandstats`, leaving out INFO itself:
/// the commands Redis has run. Pure.
pub fn parse_command_calls(info: &str) -> u64 {
    sum_cmdstat_field(info, "calls=")
}

/// `used_memory:` of `INFO memory`. Pure.
fn parse_used_memory(info: &str) -> i64 {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
        .unwrap_or(0)
}

impl BenchReport {
    /// Requests finished per second of the transfer phase.
    pub fn transfers_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.transfers as f64 / s
        } else {
            0.0
        }
    }

    /// Fails when the run broke an invariant: the balance sum changed or went negative.
    pub fn check(&self) -> Result<(), String> {
        match &self.balance {
            Some(b) if !b.ok() => Err(format!(
                "balance check failed for {} wallets of {}: sum before {}, after {}, {} negative",
                b.wallets, self.run, b.before, b.after, b.negative
            )),
            _ => Ok(()),
        }
    }

    /// The figures as one JSON object. A run on one Redis with random pairs has neither
    /// `pairs` nor `cluster`, as before they existed.
    pub fn to_json(&self) -> Value {
        let mut value = self.base_json();
        if let Value::Object(map) = &mut value {
            if self.pairs != Pairs::Random || self.cluster.is_some() {
                map.insert("pairs".into(), self.pairs.as_str().into());
            }
            if let Some(c) = &self.cluster {
                map.insert("cluster".into(), c.to_json(self.transfers));
            }
        }
        value
    }

    fn base_json(&self) -> Value {
        let engine = self.engine.map(|e| {
            json!({
                "fresh_outcomes": e.fresh,
                "lock_first_try_rate": e.lock_first_try_rate(),
                "lock_wait_mean_ms": e.lock_wait_mean_ms(),
                "watch_retries_total": e.watch_retries,
                "round_trips_per_transfer": e.round_trips_mean(),
            })
        });
        let redis = self.redis.map(|r| {
            let (commands, bytes) = r.per_transfer(self.transfers);
            json!({
                "commands": r.commands,
                "commands_per_transfer": commands,
                "used_memory_delta_bytes": r.used_memory_delta_bytes,
                "bytes_per_transfer": bytes,
            })
        });
        let balance = self.balance.map(|b| {
            json!({
                "wallets": b.wallets,
                "sum_before": b.before.to_string(),
                "sum_after": b.after.to_string(),
                "negative_wallets": b.negative,
                "ok": b.ok(),
            })
        });
        json!({
            "mode": self.mode,
            "run": self.run,
            "threads": self.threads,
            "wallets": self.wallets,
            "hot": self.hot,
            "publish_rate": self.publish_rate,
            "transfers": self.transfers,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "transfers_per_s": self.transfers_per_s(),
            "latency_ms": {
                "mean": self.latency.mean_ms,
                "p50": self.latency.p50_ms,
                "p90": self.latency.p90_ms,
                "p99": self.latency.p99_ms,
                "max": self.latency.max_ms,
            },
            "engine": engine,
            "redis": redis,
            "retained": self.retained.map(|r| r.to_json(self.transfers)),
            "stages_ms": self.stages.map(|st| json!({
                "to_worker": p50_p99(&st.to_worker),
                "in_worker": p50_p99(&st.in_worker),
                "result_back": p50_p99(&st.result_back),
            })),
            "broker_floor_ms": self.broker_floor.as_ref().map(p50_p99),
            "worker_adds_p50_ms": self.broker_floor.map(|f| self.latency.p50_ms - f.p50_ms),
            "outcomes": self.outcomes,
            "errors": self.errors,
            "transient_retries": self.transient_retries,
            "balance": balance,
            "cleaned_keys": self.cleaned_keys,
        })
    }

    /// The figures as a two-column table.
    pub fn to_table(&self) -> Table {
        let mut t = Table::new();
        t.load_style(comfy_table::presets::ASCII_FULL_CONDENSED);
        t.set_header(vec!["figure", "value"]);
        for (name, value) in self.rows() {
            t.add_row(vec![name, value]);
        }
        if let Some(col) = t.column_mut(1) {
            col.set_cell_alignment(CellAlignment::Right);
        }
        t
    }

    /// The rows of [`BenchReport::to_table`], in order: (figure, value).
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = self.run_rows();
        rows.extend(self.latency_rows());
        rows.extend(self.split_rows());
        rows.extend(self.engine.iter().flat_map(engine_rows));
        if let Some(r) = self.redis {
            let (commands, bytes) = r.per_transfer(self.transfers);
            rows.push(("redis commands/transfer".into(), format!("{commands:.2}")));
            rows.push(("redis bytes kept/transfer".into(), format!("{bytes:.0}")));
        }
        if let Some(c) = &self.cluster {
            rows.extend(c.rows(self.transfers));
        }
        rows.extend(self.retained.iter().flat_map(Retained::rows));
        rows.extend(self.count_rows());
        rows.extend(self.balance.iter().flat_map(balance_rows));
        if let Some(n) = self.cleaned_keys {
            rows.push(("keys cleaned up".into(), n.to_string()));
        }
        rows
    }

    fn run_rows(&self) -> Vec<(String, String)> {
        let pairs = if self.hot {
            "one hot pair"
        } else {
            self.pairs.describe()
        };
        let mut rows = vec![
            ("mode".into(), format!("{}, {pairs}", self.mode)),
            ("run prefix".into(), self.run.clone()),
        ];
        if self.engine.is_some() {
            rows.push(("threads".into(), self.threads.to_string()));
        }
        rows.push(("wallets".into(), self.wallets.to_string()));
        if let Some(rate) = self.publish_rate {
            rows.push(("publish rate /s".into(), rate.to_string()));
        }
        rows.push(("transfers".into(), self.transfers.to_string()));
        rows
    }

    /// The legs and the broker floor as "p50 / p99 ms" rows (e2e mode).
    fn split_rows(&self) -> Vec<(String, String)> {
        let show = |l: &LatencySummary| format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms);
        let mut rows = Vec::new();
        if let Some(st) = &self.stages {
            rows.push(("to worker p50/p99 ms".into(), show(&st.to_worker)));
            rows.push(("in worker p50/p99 ms".into(), show(&st.in_worker)));
            rows.push(("result back p50/p99 ms".into(), show(&st.result_back)));
        }
        if let Some(floor) = &self.broker_floor {
            rows.push(("broker floor p50/p99 ms".into(), show(floor)));
            let adds = self.latency.p50_ms - floor.p50_ms;
            rows.push(("worker adds p50 ms".into(), format!("{adds:.1}")));
        }
        rows
    }

    fn latency_rows(&self) -> Vec<(String, String)> {
        let l = &self.latency;
        [
            ("elapsed s", self.elapsed.as_secs_f64()),
            ("transfers/s", self.transfers_per_s()),
            ("latency mean ms", l.mean_ms),
            ("latency p50 ms", l.p50_ms),
            ("latency p90 ms", l.p90_ms),
            ("latency p99 ms", l.p99_ms),
            ("latency max ms", l.max_ms),
        ]
        .into_iter()
        .map(|(name, v)| {
            let text = if name == "transfers/s" {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            };
            (name.to_string(), text)
        })
        .collect()
    }

    /// Outcomes, errors and retries by name; errors and retries show a 0 when there were none.
    fn count_rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = Vec::new();
        let counts = |rows: &mut Vec<_>, prefix: &str, map: &BTreeMap<String, u64>| {
            rows.extend(
                map.iter()
                    .map(|(k, n)| (format!("{prefix} {k}"), n.to_string())),
            );
        };
        counts(&mut rows, "outcome", &self.outcomes);
        if self.errors.is_empty() {
            rows.push(("errors".into(), "0".into()));
        }
        counts(&mut rows, "error", &self.errors);
        if self.transient_retries.is_empty() {
            rows.push(("transient retries".into(), "0".into()));
        }
        counts(&mut rows, "retried", &self.transient_retries);
        rows
    }
}

fn engine_rows(e: &EngineFigures) -> Vec<(String, String)> {
    let first_try = format!(
        "{:.2}% ({} of {})",
        e.lock_first_try_rate() * 100.0,
        e.lock_first_try,
        e.fresh
    );
    vec![
        ("lock first try".into(), first_try),
        (
            "lock wait mean ms".into(),
            format!("{:.3}", e.lock_wait_mean_ms()),
        ),
        ("WATCH retries total".into(), e.watch_retries.to_string()),
        (
            "round trips/transfer".into(),
            format!("{:.2}", e.round_trips_mean()),
        ),
    ]
}

fn balance_rows(b: &BalanceCheck) -> Vec<(String, String)> {
    let verdict = if b.ok() { "OK" } else { "FAILED" };
    vec![
        ("balance sum before".into(), b.before.to_string()),
        ("balance sum after".into(), b.after.to_string()),
        (
            "balance check".into(),
            format!("{verdict} ({} negative)", b.negative),
        ),
    ]
}

/// The key an answer is counted under in [`BenchReport::outcomes`].
pub fn outcome_name(o: &TransferOutcome) -> String {
    answer_name(o.status, o.reason, o.duplicate)
}

/// `STATUS`, `STATUS:reason`, with ` (duplicate)` for an answer taken from an earlier record.
fn answer_name(status: Status, reason: Option<FailureReason>, duplicate: bool) -> String {
    let mut name = status.as_str().to_string();
    if let Some(reason) = reason {
        name.push(':');
        name.push_str(reason.as_str());
    }
    if duplicate {
        name.push_str(" (duplicate)");
    }
    name
}

/// What one thread (or the e2e results reader) saw.
struct Tally {
    latency_us: Histogram<u64>,
    engine: EngineFigures,
    /// By path: same-slot, cross-slot (by the wallets' slots; one Redis too).
    paths: [PathFigures; 2],
    outcomes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    retries: BTreeMap<String, u64>,
    finished: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            engine: EngineFigures::default(),
            paths: [PathFigures::default(); 2],
            outcomes: BTreeMap::new(),
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            finished: 0,
        }
    }

    /// Records one request's latency, capped at [`LATENCY_US_MAX`], at least 1 µs.
    fn latency(&mut self, took: Duration) {
        let us = took.as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
        self.latency_us.saturating_record(us.max(1));
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.engine.merge(&other.engine);
        for (mine, theirs) in self.paths.iter_mut().zip(other.paths) {
            mine.transfers += theirs.transfers;
            mine.engine.merge(&theirs.engine);
        }
        for (target, source) in [
            (&mut self.outcomes, other.outcomes),
            (&mut self.errors, other.errors),
            (&mut self.retries, other.retries),
        ] {
            for (k, n) in source {
                *target.entry(k).or_default() += n;
            }
        }
        self.finished += other.finished;
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// The wallets of one run, created fresh under a unique prefix, and their balance sum before.
struct Run {
    /// The prefix, `{mode}_<6 hex>`.
    name: String,
    ids: Vec<String>,
    pairs: Pairs,
    before: BalanceSum,
    created_at: Instant,
}

/// What a run ends with: the balance check, and the keys deleted when cleanup was asked for.
struct RunEnd {
    name: String,
    balance: BalanceCheck,
    cleaned_keys: Option<u64>,
}

impl Run {
    /// Creates `wallets` wallets `{mode}_<6 hex>_<i>` (which `i`: see [`run_ids`]); fails if
    /// any of them already existed.
    fn create(
        service: &WalletService,
        mode: &str,
        wallets: u32,
        pairs: Pairs,
    ) -> Result<Run, BenchError> {
        let name = format!("{mode}_{:06x}", rand::rng().random_range(0..0x100_0000u32));
        let ids = run_ids(&name, wallets, pairs);
        let created_at = Instant::now();
        log::info!("{name}: creating {} wallets", ids.len());
        let created = create_bench_wallets(service, &ids)?;
        if created != ids.len() {
            return Err(BenchError::Setup(format!(
                "{} of {} wallets with prefix {name} already existed; run again for a fresh prefix",
                ids.len() - created,
                ids.len()
            )));
        }
        let before = sum_balances(service, &ids)?;
        Ok(Run {
            name,
            ids,
            pairs,
            before,
            created_at,
        })
    }

    /// The transfer ids of this run are `{name}_t{n}`.
    fn transfer_prefix(&self) -> String {
        format!("{}_t", self.name)
    }

    /// Request `n` of this run: the hot pair or a random distinct pair, a random amount.
    fn request(
        &self,
        rng: &mut impl rand::Rng,
        n: u64,
        hot: bool,
    ) -> Result<TransferRequest, FieldError> {
        let (from, to) = pick_pair(rng, &self.ids, hot, self.pairs);
        let amount = Amount::from_minor(rng.random_range(1..=BENCH_AMOUNT_CENTS_MAX));
        TransferRequest::new(
            &format!("{}{n}", self.transfer_prefix()),
            &self.ids[from],
            &self.ids[to],
            &amount.to_string(),
            Currency::USD,
        )
    }

    /// Sums the balances again and deletes the run's keys when `cleanup` is set.
    fn end(self, service: &WalletService, cleanup: bool) -> Result<RunEnd, BenchError> {
        let after = sum_balances(service, &self.ids)?;
        let balance = BalanceCheck {
            wallets: self.ids.len() as u32,
            before: self.before.sum,
            after: after.sum,
            negative: after.negative,
        };
        let cleaned_keys = if cleanup {
            Some(self::cleanup(service, &self.name, &self.ids)?)
        } else {
            None
        };
        Ok(RunEnd {
            name: self.name,
            balance,
            cleaned_keys,
        })
    }
}

/// Runs `config.transfers` transfers through `service` from `config.threads` threads among
/// wallets it creates, then checks the balance sum. The service's pool should hold at least
/// `config.threads` connections.
pub fn run_direct(
    service: &WalletService,
    config: &DirectConfig,
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let run = Run::create(service, "bench", config.wallets, config.pairs)?;
    log::info!(
        "{}: {} wallets of {} each ready in {:.2}s; running {} transfers on {} threads",
        run.name,
        run.ids.len(),
        Amount::from_minor(BENCH_OPENING_CENTS),
        run.created_at.elapsed().as_secs_f64(),
        config.transfers,
        config.threads
    );
    let bar = progress_bar(config.transfers, config.progress);
    let before = node_counters(service)?;
    let started = Instant::now();
    let total = run_threads(service, config, &run, &bar);
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let nodes = node_costs(&before, &node_counters(service)?);
    let memory_before: i64 = before.iter().map(|(_, c)| c.used_memory).sum();
    let memory_delta: i64 = nodes.iter().map(|n| n.used_memory_delta_bytes).sum();
    let redis = RedisCost {
        commands: nodes.iter().map(|n| n.commands).sum(),
        used_memory_delta_bytes: memory_delta,
    };
    let retained = Retained {
        used_memory_before: memory_before,
        used_memory_after: memory_before + memory_delta,
        ..read_retained(service, &run, config.transfers, config.progress)?
    };
    let cluster = service.cluster().map(|_| ClusterFigures {
        primaries: nodes,
        same_slot: total.paths[0],
        cross_slot: total.paths[1],
    });
    let end = run.end(service, config.cleanup)?;
    Ok(BenchReport {
        mode: "direct",
        run: end.name,
        publish_rate: None,
        threads: config.threads,
        wallets: config.wallets,
        hot: config.hot,
        pairs: config.pairs,
        transfers: total.finished,
        elapsed,
        latency: LatencySummary::from_histogram_us(&total.latency_us),
        engine: Some(total.engine),
        outcomes: total.outcomes,
        errors: total.errors,
        transient_retries: total.retries,
        balance: Some(end.balance),
        cleaned_keys: end.cleaned_keys,
        redis: Some(redis),
        retained: Some(retained),
        cluster,
        stages: None,
        broker_floor: None,
    })
}

/// Reads what the run left in Redis: its outcome records (`transfers` requests) and its
/// wallets' histories and checkpoints, with a progress bar when `progress`. Memory figures
/// are left at 0 for the caller.
fn read_retained(
    service: &WalletService,
    run: &Run,
    transfers: u64,
    progress: bool,
) -> Result<Retained, BenchError> {
    let bar = progress_bar(transfers + run.ids.len() as u64, progress);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} keys read for the retained figures",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let prefix = run.transfer_prefix();
    let (outcome_records, outcome_records_with_ttl) = match service.cluster() {
        None => {
            let outcome_keys = (0..transfers).map(|n| keys::outcome(&format!("{prefix}{n}")));
            count_outcome_records(service, outcome_keys, &bar)?
        }
        Some(pools) => count_outcome_records_cluster(pools, &run.name, &bar)?,
    };
    let (history_entries, history_trimmed) = count_history(service, &run.ids, &bar)?;
    let wallet_bytes = sample_wallet_bytes(service, &run.ids)?;
    bar.finish_and_clear();
    Ok(Retained {
        outcome_records,
        outcome_records_with_ttl,
        history_entries,
        history_trimmed,
        wallet_bytes,
        ..Retained::default()
    })
}

/// Runs [`worker`] on `config.threads` threads until every transfer is handed out; their
/// tallies merged.
fn run_threads(
    service: &WalletService,
    config: &DirectConfig,
    run: &Run,
    bar: &ProgressBar,
) -> Tally {
    let next = AtomicU64::new(0);
    let warned = AtomicU32::new(0);
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|_| scope.spawn(|| worker(service, config, run, &next, &warned, bar)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut total = Tally::new();
    for t in tallies {
        total.merge(t);
    }
    total
}

/// Settings of an end-to-end run through Kafka and a running worker. `Default` plus the
/// `with_*` setters (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct E2eConfig {
    /// Brokers and extra librdkafka properties.
    pub kafka: KafkaConfig,
    /// Where the worker reads requests.
    pub requests_topic: String,
    /// Where the worker publishes results.
    pub results_topic: String,
    /// Requests published, and results waited for.
    pub transfers: u64,
    /// Wallets created for the run.
    pub wallets: u32,
    /// Every transfer goes from the first wallet to the second: one hot pair.
    pub hot: bool,
    /// How long to wait for all results, counted from the first publish.
    pub timeout: Duration,
    /// Requests per second to publish at; `None` publishes all at once.
    pub rate: Option<u32>,
    /// Draws a progress bar on stderr.
    pub progress: bool,
    /// Deletes the run's wallets, users, histories and outcome records afterwards.
    pub cleanup: bool,
}

impl Default for E2eConfig {
    fn default() -> Self {
        E2eConfig {
            kafka: KafkaConfig::new("127.0.0.1:9092"),
            requests_topic: kafka::TOPIC_REQUESTS.to_string(),
            results_topic: kafka::TOPIC_RESULTS.to_string(),
            transfers: 10_000,
            wallets: 10_000,
            hot: false,
            timeout: Duration::from_secs(300),
            rate: None,
            progress: false,
            cleanup: false,
        }
    }
}

setters!(E2eConfig {
    with_kafka => kafka: KafkaConfig,
    with_requests_topic => requests_topic: String,
    with_results_topic => results_topic: String,
    with_transfers => transfers: u64,
    with_wallets => wallets: u32,
    with_hot => hot: bool,
    with_timeout => timeout: Duration,
    with_rate => rate: Option<u32>,
    with_progress => progress: bool,
    with_cleanup => cleanup: bool,
});

impl E2eConfig {
    /// Checks the settings against their limits; the error names the setting and the rule.
    pub fn validate(&self) -> Result<(), SettingError> {
        DirectConfig {
            threads: 1,
            transfers: self.transfers,
            wallets: self.wallets,
            ..DirectConfig::default()
        }
        .validate()?;
        for (setting, topic) in [
            ("requests_topic", &self.requests_topic),
            ("results_topic", &self.results_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(SettingError::new(setting, "must not be empty"));
            }
        }
        if self.requests_topic == self.results_topic {
            return Err(SettingError::new(
                "results_topic",
                format!(
                    "must differ from requests_topic, both are {:?}",
                    self.requests_topic
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(SettingError::new("timeout_s", "must be at least 1 s"));
        }
        Ok(())
    }
}

/// Counts the messages the broker refused for good (after librdkafka's own retries).
#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().get_or_insert_with(|| e.to_string());
        }
    }
}

/// The error for a topic the run needs but the brokers do not have.
fn missing_topic(config: &E2eConfig, topic: &str) -> BenchError {
    BenchError::Setup(format!(
        "topic {topic} does not exist at {} (start the worker first: it creates its topics; or \
         check --requests-topic / --results-topic)",
        config.kafka.brokers
    ))
}

/// A reader of the results topic that sees only what is published after it was opened (see
/// [`Start::End`]), answering fetches promptly: it is the run's stopwatch. Checks first that
/// the requests topic exists too.
fn results_reader(config: &E2eConfig) -> Result<TopicReader, BenchError> {
    let requests = &config.requests_topic;
    let partitions = kafka::partition_count(&config.kafka, requests)
        .map_err(|e| BenchError::Kafka(format!("metadata of topic {requests}: {e}")))?;
    if partitions == 0 {
        return Err(missing_topic(config, requests));
    }
    TopicReader::open_prompt(&config.kafka, &config.results_topic, Start::End).map_err(
        |e| match e {
            ReadError::NoSuchTopic { topic, .. } => missing_topic(config, &topic),
            ReadError::Kafka { what, source } => BenchError::Kafka(format!("{what}: {source}")),
            other @ ReadError::Timeout { .. } => BenchError::Kafka(other.to_string()),
        },
    )
}

/// Nanoseconds since `origin`, plus one so that 0 means "not sent yet".
fn stamp(origin: Instant) -> u64 {
    (origin.elapsed().as_nanos().min(u128::from(u64::MAX - 1)) as u64) + 1
}

/// Publishes `config.transfers` requests to the requests topic of a running worker (keyed by
/// from_user), waits for their results on the results topic, and reports throughput and
/// end-to-end latency (publish to result received). The worker must share `service`'s Redis:
/// the run creates its wallets there and checks their balance sum afterwards.
pub fn run_e2e(service: &WalletService, config: &E2eConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let run = Run::create(service, "e2e", config.wallets, Pairs::Random)?;
    // Requests are built up front so that publishing measures Kafka, not request building.
    let mut rng = rand::rng();
    let requests: Vec<TransferRequest> = (0..config.transfers)
        .map(|n| {
            run.request(&mut rng, n, config.hot)
                .map_err(|e| BenchError::Setup(format!("bench request {n} is invalid: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let reader = results_reader(config)?;
    let producer = bench_producer(config)?;
    log::info!(
        "{}: {} wallets ready in {:.2}s; publishing {} requests to {}, reading {}",
        run.name,
        run.ids.len(),
        run.created_at.elapsed().as_secs_f64(),
        config.transfers,
        config.requests_topic,
        config.results_topic
    );
    // Before the clock starts: connections, metadata and assignment warmed by one real
    // request through the worker, then the broker's own floor with the same settings.
    warm_up(&producer, &reader, config, &run)?;
    let floor_rate = config.rate.unwrap_or(FLOOR_RATE_DEFAULT);
    let floor_messages = config.transfers.min(FLOOR_MESSAGES_DEFAULT);
    let floor = latency::broker_floor(
        &config.kafka,
        &producer,
        floor_messages,
        floor_rate,
        config.timeout,
    )?;
    // On a cluster, each primary's counters around the transfer phase (the worker's work).
    let before = service
        .cluster()
        .map(|_| node_counters(service))
        .transpose()?;
    let read = publish_and_read(&producer, &reader, config, &run, &requests)?;
    refresh_map(service);
    let cluster = e2e_cluster_figures(service, before, &requests)?;
    let end = run.end(service, config.cleanup)?;
    let total = read.tally;
    Ok(BenchReport {
        mode: "e2e",
        run: end.name,
        threads: 0,
        wallets: config.wallets,
        hot: config.hot,
        pairs: Pairs::Random,
        publish_rate: config.rate,
        transfers: total.finished,
        elapsed: read.last.saturating_duration_since(read.origin),
        latency: LatencySummary::from_histogram_us(&total.latency_us),
        engine: None,
        outcomes: total.outcomes,
        errors: total.errors,
        transient_retries: total.retries,
        balance: Some(end.balance),
        cleaned_keys: end.cleaned_keys,
        redis: None,
        retained: None,
        cluster,
        stages: Some(read.stages.summary()),
        broker_floor: Some(floor),
    })
}

/// On a cluster, reads the slot map again: a primary may have failed over during the run, so
/// the counters and the balance sum go to the primaries of now (a failed node's counters
/// count nothing, see `node_costs`).
fn refresh_map(service: &WalletService) {
    if let Some(Err(e)) = service.cluster().map(|pools| pools.refresh()) {
        log::warn!("reading the slot map again after the run: {e}");
    }
}

/// The e2e run's producer: a short linger, idempotent, counting failed deliveries.
fn bench_producer(config: &E2eConfig) -> Result<ThreadedProducer<DeliveryCounter>, BenchError> {
    config
        .kafka
        .client_config()
        .set("linger.ms", BENCH_LINGER_MS)
        .set("enable.idempotence", "true")
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| BenchError::Kafka(format!("producer: {e}")))
}

/// On a Redis Cluster (`before` holds each primary's counters from the start of the
/// transfer phase): each primary's costs over that phase, which are the worker's (and
/// whatever else ran there meanwhile), and the requests split by path from their wallets'
/// slots. The engine figures stay empty: the engine runs in the worker.
fn e2e_cluster_figures(
    service: &WalletService,
    before: Option<Vec<(String, Counters)>>,
    requests: &[TransferRequest],
) -> Result<Option<ClusterFigures>, BenchError> {
    let Some(before) = before else {
        return Ok(None);
    };
    let slot = cluster::keys::wallet_slot;
    let cross = requests
        .iter()
        .filter(|r| slot(&r.from_user) != slot(&r.to_user))
        .count() as u64;
    let path = |transfers| PathFigures {
        transfers,
        ..PathFigures::default()
    };
    Ok(Some(ClusterFigures {
        primaries: node_costs(&before, &node_counters(service)?),
        same_slot: path(requests.len() as u64 - cross),
        cross_slot: path(cross),
    }))
}

/// The bench producer's `linger.ms`: short, so the publish leg is the broker's, not batching's.
const BENCH_LINGER_MS: &str = "1";

/// Messages of the broker floor measurement, at most.
const FLOOR_MESSAGES_DEFAULT: u64 = 300;
/// Publish rate of the floor measurement when the run itself has none (a burst).
const FLOOR_RATE_DEFAULT: u32 = 1_000;

/// Sends one request that is not part of the run (`<run>_warmup`, 0.01 between the run's first
/// two wallets) and waits for its result: afterwards the producer, the reader and the worker's
/// path are connected, so the run's clock measures transfers, not connection setup.
fn warm_up(
    producer: &ThreadedProducer<DeliveryCounter>,
    reader: &TopicReader,
    config: &E2eConfig,
    run: &Run,
) -> Result<(), BenchError> {
    let id = format!("{}_warmup", run.name);
    let request = TransferRequest::new(&id, &run.ids[0], &run.ids[1], "0.01", Currency::USD)
        .map_err(|e| BenchError::Setup(format!("warm-up request: {e}")))?;
    let payload = request.to_json();
    producer
        .send(
            BaseRecord::to(&config.requests_topic)
                .key(request.from_user.as_str())
                .payload(payload.as_str()),
        )
        .map_err(|(e, _)| BenchError::Kafka(format!("publishing the warm-up request: {e}")))?;
    let deadline = Instant::now() + config.timeout;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = reader.next(Duration::from_millis(100))
            && m.result().is_ok_and(|r| r.transfer_id == id)
        {
            return Ok(());
        }
    }
    Err(BenchError::Timeout(format!(
        "the warm-up request got no result on {} within {} s (is a worker running on {}?)",
        config.results_topic,
        config.timeout.as_secs(),
        config.requests_topic
    )))
}

/// Publishes `requests` on one thread while reading their results on this one, until every
/// result is in, the timeout passes, or publishing fails. Fails when a request was not
/// delivered or a result is missing.
fn publish_and_read(
    producer: &ThreadedProducer<DeliveryCounter>,
    reader: &TopicReader,
    config: &E2eConfig,
    run: &Run,
    requests: &[TransferRequest],
) -> Result<ReadResults, BenchError> {
    let origin = Instant::now();
    let sent: Vec<AtomicU64> = requests.iter().map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let bar = progress_bar(config.transfers, config.progress);
    let mut read = ReadResults::new(run.transfer_prefix(), requests.len(), origin);
    let publish = std::thread::scope(|scope| {
        let publisher =
            scope.spawn(|| publish_requests(producer, config, requests, &sent, origin, &stop));
        read_results(reader, config, &mut read, &sent, &bar, &stop);
        stop.store(true, Ordering::SeqCst);
        publisher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    bar.finish_and_clear();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer.context().first_error.lock().clone();
        return Err(BenchError::Kafka(format!(
            "{failed} of {} requests were not delivered to {}: {}",
            config.transfers,
            config.requests_topic,
            first.unwrap_or_default()
        )));
    }
    publish?;
    check_read(&read, config, &run.name)?;
    Ok(read)
}

/// Logs repeated results; fails when results are missing.
fn check_read(read: &ReadResults, config: &E2eConfig, run: &str) -> Result<(), BenchError> {
    if read.repeated > 0 {
        log::info!(
            "{run}: {} repeated results (redelivery) were not counted again",
            read.repeated
        );
    }
    if read.tally.finished < config.transfers {
        return Err(BenchError::Timeout(format!(
            "{} of {} results arrived on {} within {} s (is a worker running on {} with the \
             same Redis?)",
            read.tally.finished,
            config.transfers,
            config.results_topic,
            config.timeout.as_secs(),
            config.requests_topic
        )));
    }
    Ok(())
}

/// Sends every request, recording its send time just before handing it to librdkafka, then
/// flushes. Stops early when `stop` is set (the reader gave up).
fn publish_requests(
    producer: &ThreadedProducer<DeliveryCounter>,
    config: &E2eConfig,
    requests: &[TransferRequest],
    sent: &[AtomicU64],
    origin: Instant,
    stop: &AtomicBool,
) -> Result<(), BenchError> {
    for (i, (request, sent_at)) in requests.iter().zip(sent).enumerate() {
        if let Some(rate) = config.rate {
            // Request i leaves at origin + i / rate.
            let due = origin + Duration::from_secs_f64(i as f64 / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let payload = request.to_json();
        let mut record = Some(
            BaseRecord::to(&config.requests_topic)
                .key(request.from_user.as_str())
                .payload(payload.as_str()),
        );
        sent_at.store(stamp(origin), Ordering::SeqCst);
        while let Some(r) = record.take() {
            match producer.send(r) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    record = Some(r);
                }
                Err((e, _)) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(BenchError::Kafka(format!(
                        "publishing {} to {}: {e}",
                        request.transfer_id, config.requests_topic
                    )));
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
    let left = config.timeout.saturating_sub(origin.elapsed());
    producer
        .flush(left.max(Duration::from_secs(1)))
        .map_err(|e| {
            stop.store(true, Ordering::SeqCst);
            BenchError::Kafka(format!(
                "flushing requests to {}: {e}",
                config.requests_topic
            ))
        })
}

/// What the results reader saw.
struct ReadResults {
    /// Transfer ids of this run are this prefix and the request's number.
    prefix: String,
    tally: Tally,
    /// Which requests have had a result.
    seen: Vec<bool>,
    /// When publishing started.
    origin: Instant,
    /// When the last awaited result arrived.
    last: Instant,
    /// Results of this run seen more than once (a redelivered request answered again).
    repeated: u64,
    /// Wall-clock view of `origin`, for the legs.
    clock: WallClock,
    stages: StageSplit,
}

impl ReadResults {
    fn new(prefix: String, requests: usize, origin: Instant) -> ReadResults {
        ReadResults {
            prefix,
            tally: Tally::new(),
            seen: vec![false; requests],
            origin,
            last: origin,
            repeated: 0,
            clock: WallClock::now(),
            stages: StageSplit::default(),
        }
    }

    /// Counts one message: the first result of one of this run's requests is tallied, with its
    /// latency from `sent` (send stamps, see [`stamp`]) to when it was received. Returns whether
    /// it was; other messages and repeated results are not.
    fn record(&mut self, m: &ReadMessage, sent: &[AtomicU64]) -> bool {
        let Ok(result) = m.result() else {
            return false;
        };
        let Some(n) = result
            .transfer_id
            .strip_prefix(&self.prefix)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < self.seen.len())
        else {
            return false;
        };
        if std::mem::replace(&mut self.seen[n], true) {
            self.repeated += 1;
            return false;
        }
        let sent_at = sent[n].load(Ordering::SeqCst);
        if sent_at > 0 {
            let sent_at = self.origin + Duration::from_nanos(sent_at - 1);
            self.tally
                .latency(m.received.saturating_duration_since(sent_at));
            if let Some(produced_ms) = m.timestamp_ms {
                let processed_ms = (result.processed_at * 1000.0).round() as i64;
                let received_ms = self.clock.ms(m.received);
                let sent_ms = self.clock.ms(sent_at);
                self.stages.record(latency::legs(
                    sent_ms,
                    processed_ms,
                    produced_ms,
                    received_ms,
                ));
            }
        }
        let name = answer_name(result.status, result.reason, result.duplicate);
        count(&mut self.tally.outcomes, name);
        self.tally.finished += 1;
        self.last = m.received;
        true
    }
}

/// Reads the results topic until every request of this run has its result, the deadline
/// passes, or the publisher fails. Results of other runs are skipped.
fn read_results(
    reader: &TopicReader,
    config: &E2eConfig,
    read: &mut ReadResults,
    sent: &[AtomicU64],
    bar: &ProgressBar,
    stop: &AtomicBool,
) {
    let deadline = read.origin + config.timeout;
    while read.tally.finished < config.transfers
        && Instant::now() < deadline
        && !stop.load(Ordering::SeqCst)
    {
        match reader.next(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => bar.suspend(|| log::warn!("reading {}: {e}", config.results_topic)),
            Some(Ok(m)) if read.record(&m, sent) => bar.inc(1),
            Some(Ok(_)) => {}
        }
    }
}

fn progress_bar(len: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} transfers, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One bench thread: takes transfer numbers from `next` until all are handed out.
fn worker(
    service: &WalletService,
    config: &DirectConfig,
    run: &Run,
    next: &AtomicU64,
    warned: &AtomicU32,
    bar: &ProgressBar,
) -> Tally {
    let warn = |text: String| {
        let n = warned.fetch_add(1, Ordering::Relaxed);
        if n < WARNINGS_MAX {
            bar.suspend(|| log::warn!("{text}"));
        } else if n == WARNINGS_MAX {
            bar.suspend(|| log::warn!("further retries and errors are only counted"));
        }
    };
    let mut tally = Tally::new();
    let mut rng = rand::rng();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= config.transfers {
            return tally;
        }
        match run.request(&mut rng, n, config.hot) {
            Ok(request) => transfer(
                service,
                &request,
                config.transient_retries,
                &mut tally,
                &warn,
            ),
            Err(e) => {
                // Cannot happen with the run's ids; count it rather than panic.
                bar.suspend(|| log::error!("bench request {n} is invalid: {e}"));
                count(&mut tally.errors, "invalid_request");
            }
        }
        tally.finished += 1;
        bar.inc(1);
    }
}

/// One request, retried up to `retries` times after a transient error (same request, same
/// idempotency key); its latency, outcome or error, and retries go into `tally`.
fn transfer(
    service: &WalletService,
    request: &TransferRequest,
    retries: u32,
    tally: &mut Tally,
    warn: &impl Fn(String),
) {
    let started = Instant::now();
    let mut retry = 0;
    let result = loop {
        match service.transfer(request) {
            Err(e) if e.is_transient() && retry < retries => {
                count(&mut tally.retries, e.kind());
                warn(format!("retrying {}: {e}", request.transfer_id));
                std::thread::sleep(Duration::from_millis(10 << retry.min(6)));
                retry += 1;
            }
            other => break other,
        }
    };
    tally.latency(started.elapsed());
    let slot = cluster::keys::wallet_slot;
    let path = &mut tally.paths[usize::from(slot(&request.from_user) != slot(&request.to_user))];
    path.transfers += 1;
    match result {
        Ok(outcome) => {
            tally.engine.add_outcome(&outcome);
            path.engine.add_outcome(&outcome);
            count(&mut tally.outcomes, outcome_name(&outcome));
        }
        Err(e) => {
            count(&mut tally.errors, e.kind());
            warn(format!("{} failed: {e}", request.transfer_id));
        }
    }
}

/// Draws of a cross-slot pair before falling back to the first two wallets (which
/// [`run_ids`] puts in different slots).
const CROSS_SLOT_DRAWS_LIMIT: u32 = 1_000;

/// The wallet indexes of one transfer: the hot pair (the first two wallets), or a pair of the
/// kind `pairs` asks for among `ids` (built by [`run_ids`] for the same `pairs`).
fn pick_pair(rng: &mut impl rand::Rng, ids: &[String], hot: bool, pairs: Pairs) -> (usize, usize) {
    if hot {
        return (0, 1);
    }
    match pairs {
        Pairs::Random => uniform_pair(rng, ids.len()),
        Pairs::SameSlot => {
            let k = rng.random_range(0..ids.len() / 2);
            if rng.random_bool(0.5) {
                (2 * k, 2 * k + 1)
            } else {
                (2 * k + 1, 2 * k)
            }
        }
        Pairs::CrossSlot => {
            let slot = |i: usize| cluster::keys::wallet_slot(&ids[i]);
            (0..CROSS_SLOT_DRAWS_LIMIT)
                .map(|_| uniform_pair(rng, ids.len()))
                .find(|&(from, to)| slot(from) != slot(to))
                .unwrap_or((0, 1))
        }
    }
}

/// A uniform random pair of distinct indexes below `wallets` (at least 2).
fn uniform_pair(rng: &mut impl rand::Rng, wallets: usize) -> (usize, usize) {
    let from = rng.random_range(0..wallets);
    let to = rng.random_range(0..wallets - 1);
    (from, if to >= from { to + 1 } else { to })
}

/// The `wallets` ids of run `name` (at least 2) for `pairs`. `Random`: `<name>_<i>` for `i`
/// below `wallets`. `SameSlot`: the pairs of [`same_slot_ids`], `ids[2k]` and `ids[2k + 1]`
/// in one slot; an odd count ends with a lone wallet that no transfer draws. `CrossSlot`:
/// `<name>_<i>` in order, skipping the candidates for the second id that share the first
/// one's slot, so that the first two wallets (the hot pair, the fallback of
/// `pick_pair`) are in different slots. Pure and deterministic.
pub fn run_ids(name: &str, wallets: u32, pairs: Pairs) -> Vec<String> {
    let n = wallets as usize;
    match pairs {
        Pairs::Random => (0..n).map(|i| format!("{name}_{i}")).collect(),
        Pairs::SameSlot => {
            let (mut ids, next) = same_slot_ids(name, n / 2);
            if n % 2 == 1 {
                ids.push(format!("{name}_{next}"));
            }
            ids
        }
        Pairs::CrossSlot => {
            let slot = cluster::keys::wallet_slot(&format!("{name}_0"));
            let mut ids = Vec::with_capacity(n);
            // Candidates 0, 1, 2, ...; while only the first is taken, those in its slot are
            // skipped (1 in 16384 is; the loop ends because some candidate's slot differs).
            for id in (0u64..).map(|i| format!("{name}_{i}")) {
                if ids.len() == n {
                    break;
                }
                if ids.len() != 1 || cluster::keys::wallet_slot(&id) != slot {
                    ids.push(id);
                }
            }
            ids
        }
    }
}

/// `pairs` pairs of ids of run `name` that hash to the same slot, without hash tags: the
/// candidates `<name>_<i>`, `i` = 0, 1, 2, ..., are bucketed by slot, and a candidate whose
/// slot already holds a waiting one makes a pair with it (`ids[2k]`, `ids[2k + 1]`). At
/// most 16,384 candidates wait at once, so `2 * pairs + 16384` candidates always suffice
/// (about `sqrt(2 * 16384 * pairs)` for few pairs). Returns the ids and the first candidate
/// number not looked at. Pure and deterministic.
pub fn same_slot_ids(name: &str, pairs: usize) -> (Vec<String>, u64) {
    let mut waiting: Vec<Option<String>> = vec![None; usize::from(SLOT_COUNT)];
    let mut ids = Vec::with_capacity(pairs * 2);
    let mut next = 0u64;
    while ids.len() < pairs * 2 {
        let id = format!("{name}_{next}");
        next += 1;
        let slot = usize::from(cluster::keys::wallet_slot(&id));
        match waiting[slot].take() {
            Some(first) => ids.extend([first, id]),
            None => waiting[slot] = Some(id),
        }
    }
    (ids, next)
}

/// Creates one wallet per id with the bench opening balance; returns how many were new.
fn create_bench_wallets(service: &WalletService, ids: &[String]) -> Result<usize, BenchError> {
    let mut created = 0;
    for chunk in ids.chunks(BATCH * 10) {
        let batch: Vec<NewWallet> = chunk
            .iter()
            .map(|id| NewWallet {
                user_id: id.clone(),
                full_name: format!("Bench {id}"),
                email: format!("{id}@bench.invalid"),
                opening_balance: Amount::from_minor(BENCH_OPENING_CENTS),
                currency: Currency::USD,
            })
            .collect();
        created += service.create_wallets(&batch)?;
    }
    Ok(created)
}

struct BalanceSum {
    sum: Amount,
    negative: u32,
}

/// Sums the balances of `ids`, reading them in pipelined batches. A missing or unreadable
/// balance is an error. On a cluster, an error that says the known slot map is stale (a
/// failover or a slot migration during the run: MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY,
/// a primary that does not answer) reads the map again and sums again, at most
/// [`REDIRECT_RETRIES_LIMIT`] times.
fn sum_balances(service: &WalletService, ids: &[String]) -> Result<BalanceSum, BenchError> {
    let mut attempt = 0;
    loop {
        match sum_balances_once(service, ids) {
            Err(e) if attempt < REDIRECT_RETRIES_LIMIT && stale_map(service, &e) => {
                log::info!("summing the balances: {e}; reading the slot map again");
                if let Some(Err(refresh)) = service.cluster().map(|pools| pools.refresh()) {
                    log::info!("slot map refresh failed: {refresh}");
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

/// True when `e`, met on a cluster, may come from a stale slot map
/// ([`cluster::map_may_be_stale`]). Pure but for the mode.
fn stale_map(service: &WalletService, e: &BenchError) -> bool {
    match e {
        _ if service.cluster().is_none() => false,
        BenchError::Redis(e) => cluster::map_may_be_stale(e),
        BenchError::Cluster(e) => e.is_transient(),
        _ => false,
    }
}

fn sum_balances_once(service: &WalletService, ids: &[String]) -> Result<BalanceSum, BenchError> {
    let space = service.key_space();
    let mut sum = Amount::ZERO;
    let mut negative = 0;
    for (mut conn, ids) in by_node(service, ids)? {
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hget(space.wallet(id), "balance");
            }
            let balances: Vec<Option<String>> = pipe.query(&mut conn.redis)?;
            for (id, text) in chunk.iter().zip(balances) {
                let balance = parse_balance(id, text)?;
                if balance.is_negative() {
                    negative += 1;
                }
                sum = sum
                    .checked_add(balance)
                    .map_err(|_| BenchError::Setup("balance sum overflows".into()))?;
            }
        }
    }
    Ok(BalanceSum { sum, negative })
}

/// The balance of wallet `id` read as `text`; a missing or unreadable one is an error.
fn parse_balance(id: &str, text: Option<String>) -> Result<Amount, BenchError> {
    let text = text.ok_or_else(|| {
        BenchError::Setup(format!(
            "wallet {id} has no balance (deleted during the run?)"
        ))
    })?;
    Amount::parse(&text)
        .map_err(|e| BenchError::Setup(format!("wallet {id} balance {text:?}: {e}")))
}

/// Deletes the run's keys: wallets with their histories, users, outcome records, and the ids
/// in `users:all` / `wallets:all`. Returns how many keys were deleted.
fn cleanup(service: &WalletService, run: &str, ids: &[String]) -> Result<u64, BenchError> {
    if let Some(pools) = service.cluster() {
        return cleanup_cluster(pools, run);
    }
    let mut conn = service.pool().get()?;
    let mut deleted = 0;
    for pattern in [
        keys::wallet(&format!("{run}_*")),
        keys::user(&format!("{run}_*")),
        keys::outcome(&format!("{run}_*")),
    ] {
        deleted += crate::tools::seed::unlink_matching(&mut conn, &pattern)?;
    }
    for chunk in ids.chunks(BATCH) {
        redis::pipe()
            .srem(keys::USERS_ALL, chunk)
            .ignore()
            .srem(keys::WALLETS_ALL, chunk)
            .ignore()
            .query::<()>(&mut conn.redis)?;
    }
    Ok(deleted)
}

/// Deletes the run's keys on every primary of a cluster: wallets with their histories,
/// users, outcome records, the keys' claims, and any credit marker or lock left behind (there is no
/// `users:all`/`wallets:all` on a cluster). Each key alone, pipelined per SCAN batch (a
/// batch spans slots). Returns how many keys were deleted.
fn cleanup_cluster(pools: &ClusterPools, run: &str) -> Result<u64, BenchError> {
    let tag = format!("{{{run}_*}}");
    let patterns = [
        format!("wallet:{tag}*"),
        format!("user:{tag}"),
        format!("transfer:{tag}:*"),
        format!("credit:{tag}:*"),
        format!("lock:{tag}"),
        // The claims of the run's idempotency keys (`{run}_t...`, no hash tag).
        format!("claim:{run}_*"),
    ];
    let mut deleted = 0;
    for addr in pools.primaries() {
        let mut conn = pools.conn_for_addr(&addr)?;
        for pattern in &patterns {
            store::scan_each(&mut conn, None, pattern, None, |conn, batch| {
                let mut pipe = redis::pipe();
                for key in &batch {
                    pipe.cmd("UNLINK").arg(key);
                }
                let counts: Vec<u64> = pipe.query(&mut conn.redis)?;
                deleted += counts.iter().sum::<u64>();
                Ok::<_, BenchError>(())
            })?;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits_name_the_setting() {
        assert!(DirectConfig::default().validate().is_ok());
        for (bad, word) in [
            (
                DirectConfig {
                    threads: 0,
                    ..Default::default()
                },
                "threads",
            ),
            (
                DirectConfig {
                    threads: 257,
                    ..Default::default()
                },
                "threads",
            ),
            (
                DirectConfig {
                    transfers: 0,
                    ..Default::default()
                },
                "transfers",
            ),
            (
                DirectConfig {
                    transfers: 10_000_001,
                    ..Default::default()
                },
                "transfers",
            ),
            (
                DirectConfig {
                    wallets: 1,
                    ..Default::default()
                },
                "wallets",
            ),
            (
                DirectConfig {
                    wallets: 1_000_001,
                    ..Default::default()
                },
                "wallets",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().setting, word, "{bad:?}");
        }
    }

    #[test]
    fn latency_summary_in_ms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = LatencySummary::from_histogram_us(&h);
        assert_eq!(s.samples, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(
            LatencySummary::from_histogram_us(&Histogram::new(3).unwrap()),
            LatencySummary::default()
        );
    }

    fn report() -> BenchReport {
        BenchReport {
            mode: "direct",
            run: "bench_abcdef".into(),
            publish_rate: None,
            threads: 8,
            wallets: 10,
            hot: false,
            pairs: Pairs::Random,
            transfers: 4,
            elapsed: Duration::from_secs(2),
            latency: LatencySummary::default(),
            engine: Some(EngineFigures {
                fresh: 4,
                lock_first_try: 3,
                lock_wait_us: 8_000,
                watch_retries: 1,
                round_trips: 16,
            }),
            outcomes: BTreeMap::from([("COMPLETED".to_string(), 4)]),
            errors: BTreeMap::new(),
            transient_retries: BTreeMap::new(),
            balance: Some(BalanceCheck {
                wallets: 10,
                before: Amount::from_minor(1000),
                after: Amount::from_minor(1000),
                negative: 0,
            }),
            cleaned_keys: None,
            redis: Some(RedisCost {
                commands: 1_400,
                used_memory_delta_bytes: 40_000,
            }),
            retained: Some(Retained {
                outcome_records: 4,
                outcome_records_with_ttl: 3,
                history_entries: 6,
                history_trimmed: 2,
                wallet_bytes: 300,
                used_memory_before: 1_000_000,
                used_memory_after: 1_040_000,
            }),
            cluster: None,
            stages: None,
            broker_floor: None,
        }
    }

    #[test]
    fn report_figures() {
        let r = report();
        assert_eq!(r.transfers_per_s(), 2.0);
        let e = r.engine.unwrap();
        assert_eq!(e.lock_first_try_rate(), 0.75);
        assert_eq!(e.lock_wait_mean_ms(), 2.0);
        assert_eq!(e.round_trips_mean(), 4.0);
        assert!(r.check().is_ok());
        let j = r.to_json();
        assert_eq!(j["transfers_per_s"], 2.0);
        assert_eq!(j["engine"]["round_trips_per_transfer"], 4.0);
        assert_eq!(j["redis"]["commands_per_transfer"], 350.0);
        assert_eq!(j["retained"]["outcome_records_with_ttl"], 3);
        assert_eq!(j["retained"]["history_trimmed"], 2);
        assert_eq!(j["retained"]["wallet_bytes"], 300);
        assert_eq!(j["retained"]["used_memory_after"], 1_040_000);
        assert_eq!(j["retained"]["bytes_per_transfer"], 10_000.0);
        assert_eq!(j["outcomes"]["COMPLETED"], 4);
        assert_eq!(j["balance"]["ok"], true);
        let table = r.to_table().to_string();
        assert!(table.contains("75.00% (3 of 4)"), "{table}");
    }

    #[test]
    fn a_changed_sum_fails_the_check() {
        let mut r = report();
        r.balance.as_mut().unwrap().after = Amount::from_minor(999);
        assert!(
            r.check()
                .unwrap_err()
                .contains("sum before 10.00, after 9.99")
        );
        assert_eq!(r.to_json()["balance"]["ok"], false);
    }

    #[test]
    fn the_table_lists_every_figure_in_order() {
        let mut r = report();
        r.errors.insert("redis".into(), 2);
        r.cleaned_keys = Some(7);
        let names: Vec<String> = r.rows().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "mode",
                "run prefix",
                "threads",
                "wallets",
                "transfers",
                "elapsed s",
                "transfers/s",
                "latency mean ms",
                "latency p50 ms",
                "latency p90 ms",
                "latency p99 ms",
                "latency max ms",
                "lock first try",
                "lock wait mean ms",
                "WATCH retries total",
                "round trips/transfer",
                "redis commands/transfer",
                "redis bytes kept/transfer",
                "outcome records kept",
                "history entries kept",
                "history entries trimmed",
                "bytes per wallet with history",
                "redis used_memory before",
                "redis used_memory after",
                "outcome COMPLETED",
                "error redis",
                "transient retries",
                "balance sum before",
                "balance sum after",
                "balance check",
                "keys cleaned up",
            ]
        );
        let rows: BTreeMap<String, String> = r.rows().into_iter().collect();
        assert_eq!(rows["mode"], "direct, uniform random pairs");
        assert_eq!(rows["transfers/s"], "2");
        assert_eq!(rows["elapsed s"], "2.000");
        assert_eq!(rows["round trips/transfer"], "4.00");
        assert_eq!(rows["balance check"], "OK (0 negative)");
        assert_eq!(rows["outcome records kept"], "4 (3 with ttl)");
        assert_eq!(rows["redis used_memory after"], "1040000");
    }

    #[test]
    fn an_e2e_table_shows_the_publish_rate_and_no_engine_figures() {
        let r = BenchReport {
            mode: "e2e",
            engine: None,
            publish_rate: Some(500),
            hot: true,
            ..report()
        };
        let rows: BTreeMap<String, String> = r.rows().into_iter().collect();
        assert_eq!(rows["mode"], "e2e, one hot pair");
        assert_eq!(rows["publish rate /s"], "500");
        assert!(!rows.contains_key("threads") && !rows.contains_key("lock first try"));
    }

    fn result_message(transfer_id: &str, duplicate: bool, received: Instant) -> ReadMessage {
        let result = crate::engine::message::TransferCompleted {
            transfer_id: transfer_id.into(),
            status: Status::Failed,
            processed_at: 0.0,
            from_user: "a".into(),
            to_user: "b".into(),
            amount: "1.00".into(),
            currency: "USD".into(),
            idempotency_key: transfer_id.into(),
            reason: Some(FailureReason::InsufficientFunds),
            duplicate,
        };
        ReadMessage {
            partition: 0,
            offset: 0,
            key: None,
            payload: serde_json::to_vec(&result).unwrap(),
            headers: Default::default(),
            received,
            timestamp_ms: None,
        }
    }

    #[test]
    fn the_reader_counts_the_first_result_of_each_request_of_its_run() {
        let origin = Instant::now();
        let sent: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        // Request 1 left 2 ms after the origin, its result came 5 ms after the origin.
        sent[1].store(2_000_000 + 1, Ordering::SeqCst);
        let at = origin + Duration::from_millis(5);
        let mut read = ReadResults::new("e2e_abc_t".into(), 3, origin);
        assert!(read.record(&result_message("e2e_abc_t1", false, at), &sent));
        assert!(!read.record(&result_message("e2e_abc_t1", true, at), &sent));
        assert!(!read.record(&result_message("e2e_xyz_t2", false, at), &sent));
        assert!(!read.record(&result_message("e2e_abc_t3", false, at), &sent));
        let mut junk = result_message("e2e_abc_t0", false, at);
        junk.payload = b"not a result".to_vec();
        assert!(!read.record(&junk, &sent));
        assert!(read.record(&result_message("e2e_abc_t0", true, at), &sent));
        assert_eq!((read.tally.finished, read.repeated), (2, 1));
        assert_eq!(read.last, at);
        assert_eq!(
            read.tally.outcomes,
            BTreeMap::from([
                ("FAILED:insufficient_funds".to_string(), 1),
                ("FAILED:insufficient_funds (duplicate)".to_string(), 1),
            ])
        );
        // Only request 1 had a send stamp: one latency of 3 ms.
        let latency = LatencySummary::from_histogram_us(&read.tally.latency_us);
        assert_eq!(latency.samples, 1);
        assert!((latency.max_ms - 3.0).abs() < 0.01, "{latency:?}");
    }

    #[test]
    fn empty_engine_figures_do_not_divide_by_zero() {
        let e = EngineFigures::default();
        assert_eq!(e.lock_first_try_rate(), 0.0);
        assert_eq!(e.round_trips_mean(), 0.0);
    }

    #[test]
    fn redis_counters_come_from_info_and_leave_info_out() {
        let stats = "# Commandstats\r\ncmdstat_set:calls=4,usec=1\r\ncmdstat_info:calls=9,usec=1\r\ncmdstat_exec:calls=2,usec=3,rejected_calls=0\r\n";
        assert_eq!(parse_command_calls(stats), 6);
        assert_eq!(
            parse_used_memory("# Memory\r\nused_memory:123456\r\nused_memory_human:1M\r\n"),
            123_456
        );
        let cost = RedisCost {
            commands: 1_400,
            used_memory_delta_bytes: 40_000,
        };
        assert_eq!(cost.per_transfer(100), (14.0, 400.0));
    }

    #[test]
    fn same_slot_ids_pair_up_in_one_slot_and_cross_slot_ids_start_apart() {
        let slot = cluster::keys::wallet_slot;
        let (ids, next) = same_slot_ids("bench_abcdef", 50);
        assert_eq!(ids.len(), 100);
        assert!(next <= 2 * 50 + u64::from(SLOT_COUNT), "{next}");
        for pair in ids.chunks(2) {
            assert_eq!(slot(&pair[0]), slot(&pair[1]), "{pair:?}");
        }
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let odd = run_ids("bench_abcdef", 7, Pairs::SameSlot);
        assert_eq!(odd.len(), 7);
        assert_eq!(odd[..6], ids[..6]);
        assert_eq!(
            odd[6],
            format!("bench_abcdef_{}", same_slot_ids("bench_abcdef", 3).1)
        );
        assert_eq!(
            run_ids("r", 3, Pairs::Random),
            ["r_0", "r_1", "r_2"].map(String::from)
        );
        for name in ["a", "b", "bench_000001", "bench_ffffff"] {
            let ids = run_ids(name, 5, Pairs::CrossSlot);
            assert_eq!(ids.len(), 5);
            assert_ne!(slot(&ids[0]), slot(&ids[1]), "{ids:?}");
        }
    }

    #[test]
    fn pairs_are_drawn_as_asked() {
        let slot = cluster::keys::wallet_slot;
        let mut rng = rand::rng();
        for pairs in [Pairs::Random, Pairs::SameSlot, Pairs::CrossSlot] {
            let ids = run_ids("bench_123456", 41, pairs);
            assert_eq!(pick_pair(&mut rng, &ids, true, pairs), (0, 1));
            for _ in 0..2_000 {
                let (from, to) = pick_pair(&mut rng, &ids, false, pairs);
                assert!(from != to && from < ids.len() && to < ids.len());
                match pairs {
                    Pairs::Random => {}
                    Pairs::SameSlot => {
                        assert_eq!(from / 2, to / 2);
                        assert!(from < 40, "the lone wallet is never drawn");
                    }
                    Pairs::CrossSlot => assert_ne!(slot(&ids[from]), slot(&ids[to])),
                }
            }
        }
    }

    #[test]
    fn counters_come_from_one_info_reply() {
        let info = "# Commandstats\r\ncmdstat_set:calls=4,usec=10,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=9,usec=100,usec_per_call=11.1\r\n# Memory\r\nused_memory:2048\r\n# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.500001\r\nused_cpu_sys_children:9.0\r\n";
        let c = parse_counters(info);
        assert_eq!(
            c,
            Counters {
                commands: 4,
                command_usec: 10,
                used_memory: 2048,
                cpu_us: 1_750_001,
            }
        );
        let before = [("n1".to_string(), c), ("n2".to_string(), c)];
        let mut later = c;
        later.commands += 6;
        later.cpu_us += 300;
        later.used_memory -= 48;
        let costs = node_costs(&before, &[("n1".to_string(), later)]);
        assert_eq!(costs[0].commands, 6);
        assert_eq!(costs[0].cpu_us, 300);
        assert_eq!(costs[0].used_memory_delta_bytes, -48);
        assert_eq!(
            costs[1],
            NodeCost {
                addr: "n2".into(),
                ..NodeCost::default()
            }
        );
    }

    #[test]
    fn a_cluster_report_splits_the_paths_and_names_each_primary() {
        let path = |transfers, round_trips| PathFigures {
            transfers,
            engine: EngineFigures {
                fresh: transfers,
                round_trips,
                ..EngineFigures::default()
            },
        };
        let node = |addr: &str, commands, cpu_us| NodeCost {
            addr: addr.into(),
            commands,
            command_usec: commands,
            cpu_us,
            used_memory_delta_bytes: 0,
        };
        let mut r = BenchReport {
            pairs: Pairs::CrossSlot,
            cluster: Some(ClusterFigures {
                primaries: vec![node("h:1", 60, 400), node("h:2", 20, 400)],
                same_slot: path(0, 0),
                cross_slot: path(4, 24),
            }),
            ..report()
        };
        let j = r.to_json();
        assert_eq!(j["pairs"], "cross-slot");
        assert_eq!(j["cluster"]["cpu_us_per_transfer"], 200.0);
        assert_eq!(
            j["cluster"]["paths"]["cross_slot"]["round_trips_per_transfer"],
            6.0
        );
        assert_eq!(
            j["cluster"]["paths"]["cross_slot"]["commands_per_transfer"],
            20.0
        );
        assert_eq!(
            j["cluster"]["paths"]["same_slot"]["commands_per_transfer"],
            Value::Null
        );
        assert_eq!(j["cluster"]["primaries"][1]["addr"], "h:2");
        let rows: BTreeMap<String, String> = r.rows().into_iter().collect();
        assert_eq!(rows["mode"], "direct, cross-slot pairs");
        assert_eq!(
            rows["cross-slot transfers"],
            "4 (6.00 round trips each, 20.00 redis commands)"
        );
        assert_eq!(rows["same-slot transfers"], "0 (0.00 round trips each)");
        assert_eq!(rows["primary h:1"], "60 commands, 100.0 cpu us/transfer");
        // Mixed paths: Redis's count cannot be split, so no path gets it.
        r.cluster.as_mut().unwrap().same_slot = path(1, 2);
        r.cluster.as_mut().unwrap().cross_slot = path(3, 18);
        assert_eq!(
            r.to_json()["cluster"]["paths"]["cross_slot"]["commands_per_transfer"],
            Value::Null
        );
        // One Redis with random pairs: the JSON is what it was before pairs and clusters.
        let plain = report().to_json();
        assert!(plain.get("pairs").is_none() && plain.get("cluster").is_none());
    }
}
