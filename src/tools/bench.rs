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

use crate::engine::message::{FailureReason, FieldError, Status, TransferRequest};
use crate::engine::money::{Amount, Currency};
use crate::engine::retention::CHECKPOINT_ENTRIES_FIELD;
use crate::engine::service::WalletService;
use crate::engine::setting::{SettingError, setters};
use crate::engine::store::keys;
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
    /// What the run left in Redis (direct mode).
    pub retained: Option<Retained>,
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

/// What the run left in Redis, read after its transfer phase: the outcome records of its
/// requests (and how many of them expire), the history entries its wallets keep, the entries
/// trimmed into their checkpoints, and `used_memory` before and after (direct mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Outcome records of the run's requests that exist (`transfer:{id}`).
    pub outcome_records: u64,
    /// Those of them with a ttl (`EngineConfig::outcome_ttl_ms`).
    pub outcome_records_with_ttl: u64,
    /// History entries kept in Redis: the sum of XLEN over the run's wallets.
    pub history_entries: u64,
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
        let mut pipe = redis::pipe();
        for key in &batch {
            pipe.cmd("PTTL").arg(key);
        }
        let ttls: Vec<i64> = pipe.query(&mut conn.redis)?;
        records += ttls.iter().filter(|&&t| t != -2).count() as u64;
        with_ttl += ttls.iter().filter(|&&t| t >= 0).count() as u64;
        bar.inc(batch.len() as u64);
    }
    Ok((records, with_ttl))
}

/// Sums XLEN of the histories of `ids` and their checkpoints' `hc`, pipelined in batches;
/// `bar` advances per wallet. Returns (entries kept, entries trimmed).
fn count_history(
    service: &WalletService,
    ids: &[String],
    bar: &ProgressBar,
) -> Result<(u64, u64), BenchError> {
    let mut conn = service.pool().get()?;
    let (mut kept, mut trimmed) = (0, 0);
    for chunk in ids.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.xlen(keys::history(id))
                .hget(keys::wallet(id), CHECKPOINT_ENTRIES_FIELD);
        }
        // XLEN then HGET per wallet; a missing history or checkpoint counts 0.
        let replies: Vec<Option<u64>> = pipe.query(&mut conn.redis)?;
        for pair in replies.chunks(2) {
            kept += pair[0].unwrap_or(0);
            trimmed += pair.get(1).copied().flatten().unwrap_or(0);
        }
        bar.inc(chunk.len() as u64);
    }
    Ok((kept, trimmed))
}

/// Redis's command count (INFO itself excluded) and used memory right now.
fn redis_counters(service: &WalletService) -> Result<(u64, i64), BenchError> {
    let mut conn = service.pool().get()?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn.redis)?;
    let memory: String = redis::cmd("INFO").arg("memory").query(&mut conn.redis)?;
    Ok((parse_command_calls(&stats), parse_used_memory(&memory)))
}

/// Sums `calls=` over the `cmdstat_*` lines of `INFO commandstats`, leaving out INFO itself:
/// the commands Redis has run. Pure.
pub fn parse_command_calls(info: &str) -> u64 {
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
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

    /// The figures as one JSON object.
    pub fn to_json(&self) -> Value {
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
            "uniform random pairs"
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
    /// Creates `wallets` wallets `{mode}_<6 hex>_<i>`; fails if any of them already existed.
    fn create(service: &WalletService, mode: &str, wallets: u32) -> Result<Run, BenchError> {
        let name = format!("{mode}_{:06x}", rand::rng().random_range(0..0x100_0000u32));
        let ids: Vec<String> = (0..wallets).map(|i| format!("{name}_{i}")).collect();
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
        let (from, to) = pick_pair(rng, self.ids.len(), hot);
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
    let run = Run::create(service, "bench", config.wallets)?;
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
    let (commands_before, memory_before) = redis_counters(service)?;
    let started = Instant::now();
    let total = run_threads(service, config, &run, &bar);
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let (commands_after, memory_after) = redis_counters(service)?;
    let redis = RedisCost {
        commands: commands_after.saturating_sub(commands_before),
        used_memory_delta_bytes: memory_after - memory_before,
    };
    let retained = Retained {
        used_memory_before: memory_before,
        used_memory_after: memory_after,
        ..read_retained(service, &run, config.transfers, config.progress)?
    };
    let end = run.end(service, config.cleanup)?;
    Ok(BenchReport {
        mode: "direct",
        run: end.name,
        publish_rate: None,
        threads: config.threads,
        wallets: config.wallets,
        hot: config.hot,
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
    let outcome_keys = (0..transfers).map(|n| keys::outcome(&format!("{prefix}{n}")));
    let (outcome_records, outcome_records_with_ttl) =
        count_outcome_records(service, outcome_keys, &bar)?;
    let (history_entries, history_trimmed) = count_history(service, &run.ids, &bar)?;
    bar.finish_and_clear();
    Ok(Retained {
        outcome_records,
        outcome_records_with_ttl,
        history_entries,
        history_trimmed,
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
    let run = Run::create(service, "e2e", config.wallets)?;
    // Requests are built up front so that publishing measures Kafka, not request building.
    let mut rng = rand::rng();
    let requests: Vec<TransferRequest> = (0..config.transfers)
        .map(|n| {
            run.request(&mut rng, n, config.hot)
                .map_err(|e| BenchError::Setup(format!("bench request {n} is invalid: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let reader = results_reader(config)?;
    let producer: ThreadedProducer<DeliveryCounter> = config
        .kafka
        .client_config()
        .set("linger.ms", BENCH_LINGER_MS)
        .set("enable.idempotence", "true")
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| BenchError::Kafka(format!("producer: {e}")))?;
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
    let read = publish_and_read(&producer, &reader, config, &run, &requests)?;
    let end = run.end(service, config.cleanup)?;
    let total = read.tally;
    Ok(BenchReport {
        mode: "e2e",
        run: end.name,
        threads: 0,
        wallets: config.wallets,
        hot: config.hot,
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
        stages: Some(read.stages.summary()),
        broker_floor: Some(floor),
    })
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
    match result {
        Ok(outcome) => {
            tally.engine.add_outcome(&outcome);
            count(&mut tally.outcomes, outcome_name(&outcome));
        }
        Err(e) => {
            count(&mut tally.errors, e.kind());
            warn(format!("{} failed: {e}", request.transfer_id));
        }
    }
}

/// The wallet indexes of one transfer: the hot pair, or a uniform random distinct pair.
fn pick_pair(rng: &mut impl rand::Rng, wallets: usize, hot: bool) -> (usize, usize) {
    if hot {
        return (0, 1);
    }
    let from = rng.random_range(0..wallets);
    let to = rng.random_range(0..wallets - 1);
    (from, if to >= from { to + 1 } else { to })
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
/// balance is an error.
fn sum_balances(service: &WalletService, ids: &[String]) -> Result<BalanceSum, BenchError> {
    let mut conn = service.pool().get()?;
    let mut sum = Amount::ZERO;
    let mut negative = 0;
    for chunk in ids.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.hget(keys::wallet(id), "balance");
        }
        let balances: Vec<Option<String>> = pipe.query(&mut conn.redis)?;
        for (id, text) in chunk.iter().zip(balances) {
            let text = text.ok_or_else(|| {
                BenchError::Setup(format!(
                    "wallet {id} has no balance (deleted during the run?)"
                ))
            })?;
            let balance = Amount::parse(&text)
                .map_err(|e| BenchError::Setup(format!("wallet {id} balance {text:?}: {e}")))?;
            if balance.is_negative() {
                negative += 1;
            }
            sum = sum
                .checked_add(balance)
                .map_err(|_| BenchError::Setup("balance sum overflows".into()))?;
        }
    }
    Ok(BalanceSum { sum, negative })
}

/// Deletes the run's keys: wallets with their histories, users, outcome records, and the ids
/// in `users:all` / `wallets:all`. Returns how many keys were deleted.
fn cleanup(service: &WalletService, run: &str, ids: &[String]) -> Result<u64, BenchError> {
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
                used_memory_before: 1_000_000,
                used_memory_after: 1_040_000,
            }),
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
}
