//! Prometheus metrics for the worker, and the blocking HTTP endpoint that serves them with the
//! health checks.
//!
//! Owns the metric names (all prefixed `wallet_`, written once in [`names`], used by the
//! exporter and by `wallet top`), their labels ([`labels`]) and histogram buckets, a private
//! [`prometheus::Registry`] (nothing goes into the process-global one, so tests and embedding
//! programs can hold several), the text exposition, a [`MetricsSummary`] for one-line progress
//! logs, and a tiny_http thread answering `GET /metrics`, `/healthz` and `/readyz`. Does not
//! decide what is counted when: the worker calls `record_*`/`set_*` at the right moments; this
//! module never reads Kafka or Redis and does not log progress itself. Readiness comes from the
//! [`Health`] every `Metrics` carries ([`Metrics::health`]); its gauges are refreshed by each
//! `/metrics` and `/readyz` request ([`Metrics::check_readiness`]).
//!
//! Every `record_*`/`set_*` is a few atomic operations and takes no lock held across calls, so
//! pool threads call them on the hot path. Durations arrive in microseconds (`_us`, as measured
//! by the engine) and are exported in seconds, as Prometheus expects.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use prometheus::core::{Collector, Metric as _};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::message::{FailureReason, Status};
use crate::engine::transfer::TransferOutcome;
use crate::worker::health::{Check, Health, Readiness};

pub use crate::worker::metric_names::{labels, names};

/// Bucket upper bounds of `wallet_transfer_latency_seconds`: 0.5 ms to 10 s.
const TRANSFER_LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Bucket upper bounds of `wallet_lock_wait_seconds`: 0.1 ms (free at once) to 30 s (retries
/// with backoff running out).
const LOCK_WAIT_BUCKETS_S: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket upper bounds of `wallet_stage_seconds`: 0.1 ms to 30 s.
const STAGE_BUCKETS_S: [f64; 16] = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];
/// Longest `cause` label accepted by [`Metrics::record_retry`]. Causes are a small fixed set of
/// names chosen by the caller (`lock_timeout`, `redis`, `kafka`, ...), never error messages:
/// every distinct value is a time series forever.
pub const RETRY_CAUSE_LEN_LIMIT: usize = 32;

/// The `cause` values of `wallet_retries_total` created at zero, so that rates and alerts see
/// them before the first retry (an alert on `increase` misses a series' first appearance).
/// Other causes still count; they appear with their first retry.
pub const RETRY_CAUSES: [&str; 8] = [
    "lock_timeout",
    "lock_stuck",
    "lock_lost",
    "watch_conflicts",
    "redis",
    "redis_pool",
    "kafka_consume",
    "kafka_produce",
];

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";

/// The worker's metrics. Cloning is cheap and every clone records into the same registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    transfer: TransferMetrics,
    pipeline: PipelineMetrics,
    anomalies: AnomalyMetrics,
    readiness: ReadinessMetrics,
    recovery: RecoverMetrics,
    health: Health,
}

/// What the recovery sweep (on a Redis Cluster) did.
#[derive(Debug)]
struct RecoverMetrics {
    runs: IntCounterVec,
    finished: IntCounter,
    unfinished: IntCounter,
}

/// What the transfers themselves did: outcomes, latencies, locks, stages.
#[derive(Debug)]
struct TransferMetrics {
    transfers: IntCounterVec,
    duplicates: IntCounter,
    transfer_latency: Histogram,
    lock_wait: Histogram,
    lock_attempts: IntCounter,
    lock_timeouts: IntCounter,
    watch_conflicts: IntCounter,
    locks_without_ttl: IntCounter,
    stage_latency: HistogramVec,
}

/// What the Kafka pipeline did: dead letters, retries, offsets, lag, what it holds.
#[derive(Debug)]
struct PipelineMetrics {
    dlq: IntCounter,
    in_flight_jobs: IntGauge,
    retries: IntCounterVec,
    committed_offset: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    results_published: IntCounter,
    ledger_published: IntCounter,
    produce_queue_full: IntCounter,
    backlog_bytes: IntGauge,
    consumer_paused: IntGauge,
    parked_jobs: IntGauge,
    retrying_jobs: IntGauge,
    retry_oldest_age: Gauge,
}

/// What should not happen but is survived: a fetch that went back, a transfer that panicked.
#[derive(Debug)]
struct AnomalyMetrics {
    redeliveries_skipped: IntCounter,
    thread_panics: IntCounter,
}

/// Whether the worker is ready, and which check fails.
#[derive(Debug)]
struct ReadinessMetrics {
    ready: IntGauge,
    watermark_stalled: GaugeVec,
    ready_check: IntGaugeVec,
    assigned_partitions: IntGauge,
    group_joining: IntGauge,
}

/// The stages of one message's way through the worker, for `wallet_stage_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// From the request message's timestamp to a pool thread taking it up.
    QueueWait,
    /// The transfer call (Redis), retries of one attempt included.
    Transfer,
    /// From handing the answer to the producer to the brokers' acknowledgement.
    Ack,
}

impl Stage {
    /// Every stage, in the order a message goes through them.
    pub const ALL: [Stage; 3] = [Stage::QueueWait, Stage::Transfer, Stage::Ack];

    /// The `stage` label of `wallet_stage_seconds`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue_wait",
            Stage::Transfer => "transfer",
            Stage::Ack => "ack",
        }
    }
}

/// Totals for a one-line progress log. `Display` prints
/// `processed=.. failed=.. duplicates=.. dlq=.. retries=.. lag=..`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSummary {
    /// Outcomes answered, duplicates included.
    pub processed: u64,
    /// Of those, FAILED ones.
    pub failed: u64,
    /// Of those, answered from an earlier record.
    pub duplicates: u64,
    /// Messages sent to the dead-letter topic.
    pub dlq: u64,
    /// Jobs retried after a transient error, over all causes.
    pub retries: u64,
    /// Consumer lag summed over the partitions currently reported.
    pub lag_total: i64,
}

/// Cumulative bucket counts of `wallet_stage_seconds`, one vector per [`Stage`], so that two
/// snapshots give the percentiles of what happened between them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageBuckets {
    counts: Vec<Vec<u64>>,
}

impl StageBuckets {
    /// p50 and p99 in milliseconds of each stage over what was observed since `earlier`
    /// (`None` for a stage with no observation). Bucket upper bounds, so an overestimate of at
    /// most one bucket.
    pub fn percentiles_since(&self, earlier: &StageBuckets) -> [Option<(f64, f64)>; 3] {
        std::array::from_fn(|i| {
            let now = self.counts.get(i)?;
            let before = earlier.counts.get(i);
            let window: Vec<u64> = now
                .iter()
                .enumerate()
                .map(|(b, c)| c - before.and_then(|v| v.get(b)).copied().unwrap_or(0))
                .collect();
            let p50 = bucket_quantile(&STAGE_BUCKETS_S, &window, 0.50)?;
            let p99 = bucket_quantile(&STAGE_BUCKETS_S, &window, 0.99)?;
            Some((p50 * 1000.0, p99 * 1000.0))
        })
    }
}

/// The upper bound of the first bucket whose cumulative count reaches `q` of the total
/// (`cumulative` holds one count per bound; past the last bound reports the last). Pure.
fn bucket_quantile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    let i = cumulative.iter().position(|c| *c >= rank)?;
    bounds.get(i).or(bounds.last()).copied()
}

impl std::fmt::Display for MetricsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "processed={} failed={} duplicates={} dlq={} retries={} lag={}",
            self.processed, self.failed, self.duplicates, self.dlq, self.retries, self.lag_total
        )
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero, in a registry of its own.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let inner = Inner {
            transfer: transfer_metrics(&r),
            pipeline: pipeline_metrics(&r),
            anomalies: anomaly_metrics(&r),
            readiness: readiness_metrics(&r),
            recovery: recover_metrics(&r),
            registry: r,
            health: Health::new(),
        };
        for stage in Stage::ALL {
            inner
                .transfer
                .stage_latency
                .with_label_values(&[stage.as_str()]);
        }
        for cause in RETRY_CAUSES {
            inner.pipeline.retries.with_label_values(&[cause]);
        }
        for result in ["ok", "error"] {
            inner.recovery.runs.with_label_values(&[result]);
        }
        for check in Check::ALL {
            inner
                .readiness
                .ready_check
                .with_label_values(&[check.as_str()]);
        }
        // Create the expected outcome series at zero, so rates and alerts see them before the
        // first occurrence.
        inner
            .transfer
            .transfers
            .with_label_values(&[Status::Completed.as_str(), ""]);
        for reason in FailureReason::ALL {
            inner
                .transfer
                .transfers
                .with_label_values(&[Status::Failed.as_str(), reason.as_str()]);
        }
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Counts one answered transfer: its status and reason, whether it was a duplicate, its
    /// latency, and its lock and WATCH costs.
    pub fn record_outcome(&self, outcome: &TransferOutcome) {
        let inner = &self.inner;
        let reason = outcome.reason.map_or("", FailureReason::as_str);
        inner
            .transfer
            .transfers
            .with_label_values(&[outcome.status.as_str(), reason])
            .inc();
        if outcome.duplicate {
            inner.transfer.duplicates.inc();
        }
        let stats = &outcome.stats;
        inner
            .transfer
            .transfer_latency
            .observe(seconds(stats.elapsed_us));
        if stats.lock.attempts > 0 {
            inner
                .transfer
                .lock_wait
                .observe(seconds(stats.lock.wait_us));
            inner
                .transfer
                .lock_attempts
                .inc_by(u64::from(stats.lock.attempts));
        }
        inner
            .transfer
            .watch_conflicts
            .inc_by(u64::from(stats.watch_retries));
    }

    /// Counts a FAILED answer that the engine did not record (`invalid_request`,
    /// `idempotency_conflict`): it has no outcome, latency or lock costs to report.
    pub fn record_failure(&self, reason: FailureReason) {
        self.inner
            .transfer
            .transfers
            .with_label_values(&[Status::Failed.as_str(), reason.as_str()])
            .inc();
    }

    /// Counts a transfer that ran out of lock retries.
    pub fn record_lock_timeout(&self) {
        self.inner.transfer.lock_timeouts.inc();
    }

    /// Counts a job retried after a transient error. `cause` is a short fixed name such as
    /// `lock_timeout`, `redis` or `kafka`; see [`RETRY_CAUSE_LEN_LIMIT`].
    pub fn record_retry(&self, cause: &str) {
        debug_assert!(
            !cause.is_empty()
                && cause.len() <= RETRY_CAUSE_LEN_LIMIT
                && cause
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "retry cause {cause:?} is not a short snake_case name"
        );
        self.inner
            .pipeline
            .retries
            .with_label_values(&[cause])
            .inc();
    }

    /// Counts one run of the recovery sweep: `Ok((finished, unfinished))` are the PENDING
    /// records it finished and those it could not finish now; `Err` a run that failed (a
    /// primary down, say).
    pub fn record_recover_run(&self, result: Result<(u64, u64), ()>) {
        let recovery = &self.inner.recovery;
        match result {
            Ok((finished, unfinished)) => {
                recovery.runs.with_label_values(&["ok"]).inc();
                recovery.finished.inc_by(finished);
                recovery.unfinished.inc_by(unfinished);
            }
            Err(()) => recovery.runs.with_label_values(&["error"]).inc(),
        }
    }

    /// Counts a message sent to the dead-letter topic.
    pub fn record_dlq(&self) {
        self.inner.pipeline.dlq.inc();
    }

    /// Counts a result message delivered to the completed topic.
    pub fn record_published(&self) {
        self.inner.pipeline.results_published.inc();
    }

    /// Counts a ledger entry delivered to the ledger topic (republished copies included).
    pub fn record_ledger_published(&self) {
        self.inner.pipeline.ledger_published.inc();
    }

    /// Counts a send that found the producer's queue full and waits to try again.
    pub fn record_produce_queue_full(&self) {
        self.inner.pipeline.produce_queue_full.inc();
    }

    /// Counts a message fetched again at or below an offset already started on its partition
    /// (the fetch went back), skipped because it is in flight, finished or committed before.
    pub fn record_redelivery_skipped(&self) {
        self.inner.anomalies.redeliveries_skipped.inc();
    }

    /// Counts a transfer that panicked on a transfer thread (caught; the job is retried or
    /// dead-lettered).
    pub fn record_thread_panic(&self) {
        self.inner.anomalies.thread_panics.inc();
    }

    /// Sets the number of jobs consumed and not yet done.
    pub fn set_in_flight(&self, jobs: i64) {
        debug_assert!(jobs >= 0);
        self.inner.pipeline.in_flight_jobs.set(jobs);
    }

    /// Records the time one message spent in `stage`, in microseconds.
    pub fn record_stage(&self, stage: Stage, duration_us: u64) {
        self.inner
            .transfer
            .stage_latency
            .with_label_values(&[stage.as_str()])
            .observe(seconds(duration_us));
    }

    /// Sets what the worker holds without running it: bytes, parked jobs, retrying jobs, and
    /// the age of the oldest retry in seconds.
    pub fn set_held(&self, bytes: usize, parked: usize, retrying: usize, oldest_retry_s: f64) {
        self.inner.pipeline.backlog_bytes.set(bytes as i64);
        self.inner.pipeline.parked_jobs.set(parked as i64);
        self.inner.pipeline.retrying_jobs.set(retrying as i64);
        self.inner.pipeline.retry_oldest_age.set(oldest_retry_s);
    }

    /// Sets whether the consumer is paused at the backlog bound.
    pub fn set_consumer_paused(&self, paused: bool) {
        self.inner.pipeline.consumer_paused.set(i64::from(paused));
    }

    /// Counts a lock found held with no ttl (call once per distinct key).
    pub fn record_lock_without_ttl(&self) {
        self.inner.transfer.locks_without_ttl.inc();
    }

    /// Sets the last committed position (next offset to consume) of `partition`.
    pub fn set_committed(&self, partition: i32, offset: i64) {
        debug_assert!(offset >= 0);
        self.inner
            .pipeline
            .committed_offset
            .with_label_values(&[&partition.to_string()])
            .set(offset);
    }

    /// The committed position exported for `partition`, when there is one.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        let label = partition.to_string();
        self.inner
            .pipeline
            .committed_offset
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .find(|m| m.get_label().iter().any(|l| l.value() == label))
            .map(|m| m.get_gauge().get_value() as i64)
    }

    /// Sets how many messages `partition` is behind its high watermark.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        debug_assert!(lag >= 0);
        self.inner
            .pipeline
            .consumer_lag
            .with_label_values(&[&partition.to_string()])
            .set(lag);
    }

    /// Drops the per-partition series of a revoked partition, so a stale lag or offset does not
    /// linger on a worker that no longer owns it.
    pub fn forget_partition(&self, partition: i32) {
        let label = partition.to_string();
        // Absent series (never set) are fine: there is nothing to drop.
        let _ = self
            .inner
            .pipeline
            .committed_offset
            .remove_label_values(&[&label]);
        let _ = self
            .inner
            .pipeline
            .consumer_lag
            .remove_label_values(&[&label]);
        let _ = self
            .inner
            .readiness
            .watermark_stalled
            .remove_label_values(&[&label]);
    }

    /// The readiness inputs of this worker: the pipeline reports the group and a fatal producer
    /// error to it, the process installs the Redis check.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Checks readiness now (running the Redis check once) and sets `wallet_ready`,
    /// `wallet_ready_check{check}`, `wallet_assigned_partitions` and `wallet_group_joining` from
    /// the verdict.
    pub fn check_readiness(&self) -> Readiness {
        let inner = &self.inner;
        let readiness = inner.health.check();
        inner.readiness.ready.set(i64::from(readiness.is_ready()));
        for check in Check::ALL {
            inner
                .readiness
                .ready_check
                .with_label_values(&[check.as_str()])
                .set(i64::from(readiness.passes(check)));
        }
        inner
            .readiness
            .assigned_partitions
            .set(i64::try_from(readiness.assigned_partitions).unwrap_or(i64::MAX));
        inner
            .readiness
            .group_joining
            .set(i64::from(readiness.joining));
        let now = std::time::Instant::now();
        for (partition, watermark) in inner.health.watermarks() {
            inner
                .readiness
                .watermark_stalled
                .with_label_values(&[&partition.to_string()])
                .set(watermark.still_for(now).as_secs_f64());
        }
        readiness
    }

    /// All metrics in the Prometheus text exposition format ([`CONTENT_TYPE_TEXT`]).
    pub fn render(&self) -> String {
        let families = self.inner.registry.gather();
        let mut text = Vec::new();
        match TextEncoder::new().encode(&families, &mut text) {
            Ok(()) => String::from_utf8(text).expect("the text encoder writes UTF-8"),
            Err(e) => {
                // Only malformed families fail, and ours are fixed at construction.
                log::error!("cannot encode metrics: {e}");
                String::new()
            }
        }
    }

    /// Totals for a progress log line.
    /// The cumulative bucket counts of every stage right now.
    pub fn stage_buckets(&self) -> StageBuckets {
        let counts = Stage::ALL
            .iter()
            .map(|stage| {
                let h = self
                    .inner
                    .transfer
                    .stage_latency
                    .with_label_values(&[stage.as_str()]);
                let proto = h.metric();
                let mut counts: Vec<u64> = proto
                    .get_histogram()
                    .get_bucket()
                    .iter()
                    .map(|b| b.cumulative_count())
                    .collect();
                // Observations past the last bound count only in the total.
                counts.push(h.get_sample_count());
                counts
            })
            .collect();
        StageBuckets { counts }
    }

    /// The totals of the one-line summary log, read from the counters now.
    pub fn summary(&self) -> MetricsSummary {
        let inner = &self.inner;
        let mut summary = MetricsSummary {
            duplicates: inner.transfer.duplicates.get(),
            dlq: inner.pipeline.dlq.get(),
            ..MetricsSummary::default()
        };
        for family in inner.transfer.transfers.collect() {
            for metric in family.get_metric() {
                let count = metric.get_counter().get_value() as u64;
                summary.processed += count;
                let failed = metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == labels::STATUS && l.value() == Status::Failed.as_str());
                if failed {
                    summary.failed += count;
                }
            }
        }
        for family in inner.pipeline.retries.collect() {
            for metric in family.get_metric() {
                summary.retries += metric.get_counter().get_value() as u64;
            }
        }
        for family in inner.pipeline.consumer_lag.collect() {
            for metric in family.get_metric() {
                summary.lag_total += metric.get_gauge().get_value() as i64;
            }
        }
        debug_assert!(summary.failed <= summary.processed);
        debug_assert!(summary.duplicates <= summary.processed);
        summary
    }
}

/// Registers the transfer metrics in `r`.
fn transfer_metrics(r: &Registry) -> TransferMetrics {
    TransferMetrics {
        transfers: counter_vec(
            r,
            names::TRANSFERS_TOTAL,
            "Transfer outcomes answered, duplicates included, by status and failure reason (\"\" for none).",
            &[labels::STATUS, labels::REASON],
        ),
        duplicates: counter(
            r,
            names::DUPLICATES_TOTAL,
            "Transfer requests answered from an earlier record, with no new effect.",
        ),
        transfer_latency: histogram(
            r,
            names::TRANSFER_LATENCY_SECONDS,
            "Wall time of one transfer call, duplicates included.",
            &TRANSFER_LATENCY_BUCKETS_S,
        ),
        lock_wait: histogram(
            r,
            names::LOCK_WAIT_SECONDS,
            "Time from the first lock attempt until the wallet locks were held, for transfers that took locks.",
            &LOCK_WAIT_BUCKETS_S,
        ),
        lock_attempts: counter(
            r,
            names::LOCK_ATTEMPTS_TOTAL,
            "SET NX rounds sent to take wallet locks.",
        ),
        lock_timeouts: counter(
            r,
            names::LOCK_TIMEOUTS_TOTAL,
            "Transfers that gave up waiting for wallet locks (transient; retried).",
        ),
        watch_conflicts: counter(
            r,
            names::WATCH_CONFLICTS_TOTAL,
            "Transactions aborted because a watched key changed, and retried.",
        ),
        locks_without_ttl: counter(
            r,
            names::LOCKS_WITHOUT_TTL_TOTAL,
            "Distinct wallet locks found held with no ttl (never released by themselves; see wallet locks).",
        ),
        stage_latency: histogram_vec(
            r,
            names::STAGE_SECONDS,
            "Time a message spends in each stage of the worker: queue_wait (request timestamp to a pool thread), transfer (Redis), ack (result handed to the producer until acknowledged).",
            &[labels::STAGE],
            &STAGE_BUCKETS_S,
        ),
    }
}

/// Registers the pipeline metrics in `r`.
fn pipeline_metrics(r: &Registry) -> PipelineMetrics {
    PipelineMetrics {
        dlq: counter(
            r,
            names::DLQ_TOTAL,
            "Messages sent to the dead-letter topic.",
        ),
        in_flight_jobs: gauge(r, names::IN_FLIGHT_JOBS, "Jobs consumed and not yet done."),
        retries: counter_vec(
            r,
            names::RETRIES_TOTAL,
            "Jobs retried after a transient error, by cause.",
            &[labels::CAUSE],
        ),
        committed_offset: gauge_vec(
            r,
            names::COMMITTED_OFFSET,
            "Last offset committed, by partition (the next offset to consume).",
            &[labels::PARTITION],
        ),
        consumer_lag: gauge_vec(
            r,
            names::CONSUMER_LAG,
            "Messages behind the partition's high watermark, by partition.",
            &[labels::PARTITION],
        ),
        results_published: counter(
            r,
            names::RESULTS_PUBLISHED_TOTAL,
            "Result messages delivered to the completed topic.",
        ),
        ledger_published: counter(
            r,
            names::LEDGER_ENTRIES_PUBLISHED_TOTAL,
            "Ledger entries delivered to the ledger topic, copies republished after a redelivery included.",
        ),
        produce_queue_full: counter(
            r,
            names::PRODUCE_QUEUE_FULL_TOTAL,
            "Sends that found the producer's queue full and waited (backpressure from slow brokers; not counted as retries).",
        ),
        backlog_bytes: gauge(
            r,
            names::BACKLOG_BYTES,
            "Bytes of requests consumed and held by the worker but not running: the backlog, jobs parked behind their key, and jobs waiting to retry. The consumer pauses at the backlog bound.",
        ),
        consumer_paused: gauge(
            r,
            names::CONSUMER_PAUSED,
            "1 while the consumer is paused because the bytes held reached the backlog bound; it resumes below half of it.",
        ),
        parked_jobs: gauge(
            r,
            names::PARKED_JOBS,
            "Jobs waiting for an earlier job of the same key (sender) to finish (per-key order).",
        ),
        retrying_jobs: gauge(
            r,
            names::RETRYING_JOBS,
            "Jobs waiting in the delay queue to be tried again after a transient error or a failed result delivery.",
        ),
        retry_oldest_age: float_gauge(
            r,
            names::RETRY_OLDEST_AGE_SECONDS,
            "How long the longest-retrying waiting job has been failing; 0 when none waits.",
        ),
    }
}

/// Registers the metrics of what should not happen but is survived in `r`.
fn anomaly_metrics(r: &Registry) -> AnomalyMetrics {
    AnomalyMetrics {
        redeliveries_skipped: counter(
            r,
            names::REDELIVERIES_SKIPPED_TOTAL,
            "Messages fetched again at or below an offset already started on their partition (the fetch went back: a seek or an offset reset), skipped: each is in flight, answered, or was committed before.",
        ),
        thread_panics: counter(
            r,
            names::THREAD_PANICS_TOTAL,
            "Transfers that panicked on a transfer thread (a bug): caught and logged with the request; the job is retried, and dead-lettered after its third panic.",
        ),
    }
}

/// Registers the recovery sweep's metrics in `r`.
fn recover_metrics(r: &Registry) -> RecoverMetrics {
    RecoverMetrics {
        runs: counter_vec(
            r,
            names::RECOVER_RUNS_TOTAL,
            "Runs of the recovery sweep of cross-slot transfers left PENDING (Redis Cluster only), by result (ok, error).",
            &[labels::RESULT],
        ),
        finished: counter(
            r,
            names::RECOVER_FINISHED_TOTAL,
            "PENDING cross-slot transfers the recovery sweep finished (credit unless done, then COMPLETED).",
        ),
        unfinished: counter(
            r,
            names::RECOVER_UNFINISHED_TOTAL,
            "PENDING cross-slot transfers a sweep could not finish then (locks busy, a node down); the next sweep or delivery tries again.",
        ),
    }
}

/// Registers the readiness metrics in `r`.
fn readiness_metrics(r: &Registry) -> ReadinessMetrics {
    ReadinessMetrics {
        ready: gauge(
            r,
            names::READY,
            "1 when the worker is ready (/readyz answers 200): partitions assigned or a join in progress, Redis answering PING, the result producer not fatal; checked at each scrape.",
        ),
        ready_check: gauge_vec(
            r,
            names::READY_CHECK,
            "1 when this part of readiness passes (check = group, redis, producer, progress), 0 when it fails; checked at each scrape.",
            &[labels::CHECK],
        ),
        watermark_stalled: float_gauge_vec(
            r,
            names::WATERMARK_STALLED_SECONDS,
            "How long the partition's commit position has stood still while it has jobs in flight, by partition; 0 when it moves or has no work. Past the stall limit (max_poll_interval_ms) the progress check of readiness fails.",
            &[labels::PARTITION],
        ),
        assigned_partitions: gauge(
            r,
            names::ASSIGNED_PARTITIONS,
            "Partitions of the requests topic assigned to this worker by the last completed group join.",
        ),
        group_joining: gauge(
            r,
            names::GROUP_JOINING,
            "1 while a consumer group join (or rejoin after a revoke) is in progress, 0 once partitions are assigned.",
        ),
    }
}

fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> C {
    // Names, labels and buckets are constants of this module: an error here is a bug in it.
    let collector = collector.expect("metric definition is valid");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique in the registry");
    collector
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help))
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets_s: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets_s.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets_s: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets_s.to_vec());
    register(registry, Histogram::with_opts(opts))
}

fn seconds(duration_us: u64) -> f64 {
    duration_us as f64 / 1_000_000.0
}

/// The running `/metrics` endpoint. Dropping it stops the server thread and closes the socket.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// The address actually bound (the real port when `serve` was given port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("metrics server thread panicked");
        }
    }
}

/// Serves `metrics` on `addr` (e.g. `0.0.0.0:9100`, or `127.0.0.1:0` for any free port) from a
/// background thread: `GET /metrics` answers the text format, `/healthz` 200 while the process
/// runs, `/readyz` 200 when ready and 503 with the reasons otherwise; anything else 404.
pub fn serve(addr: &str, metrics: Metrics) -> Result<MetricsServer, io::Error> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| io::Error::other(format!("cannot serve metrics on {addr}: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other(format!("metrics address {addr} is not an IP socket")))?;
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn({
            let server = Arc::clone(&server);
            let stopping = Arc::clone(&stopping);
            move || serve_loop(&server, &stopping, &metrics)
        })?;
    log::info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    Ok(MetricsServer {
        server,
        addr: bound,
        stopping,
        thread: Some(thread),
    })
}

fn serve_loop(server: &tiny_http::Server, stopping: &AtomicBool, metrics: &Metrics) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                // An accept error; do not spin on a persistent one.
                log::warn!("metrics server: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or_default();
        let get = *request.method() == tiny_http::Method::Get;
        let (status, content_type, body) = answer(get, path, metrics);
        let content_type = tiny_http::Header::from_bytes("Content-Type", content_type)
            .expect("constant header is valid");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(content_type);
        if let Err(e) = request.respond(response) {
            log::debug!("metrics server: response not delivered: {e}");
        }
    }
}

/// Status, content type and body for a request to `path` (`get`: the method is GET).
fn answer(get: bool, path: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (get, path) {
        (true, "/metrics") => {
            metrics.check_readiness();
            (200, CONTENT_TYPE_TEXT, metrics.render())
        }
        (true, "/healthz") => (200, PLAIN, "ok\n".to_string()),
        (true, "/readyz") => {
            let readiness = metrics.check_readiness();
            let status = if readiness.is_ready() { 200 } else { 503 };
            (status, PLAIN, format!("{}\n", readiness.describe()))
        }
        _ => (
            404,
            PLAIN,
            "not found (try /metrics, /healthz, /readyz)\n".to_string(),
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::engine::lock::LockStats;
    use crate::engine::money::Amount;
    use crate::engine::transfer::TransferStats;

    /// One sample line of the text format, parsed back: name, labels and value.
    #[derive(Debug)]
    pub(crate) struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A deliberately independent reader of the exposition format: it splits the text the way a
    /// scraper does rather than rebuilding the expected lines.
    pub(crate) fn parse(text: &str) -> Vec<Sample> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("sample value is a number");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels are closed");
                    let mut labels = BTreeMap::new();
                    for pair in body.split(',').filter(|pair| !pair.is_empty()) {
                        let (key, quoted) = pair.split_once('=').expect("label has a value");
                        let value = quoted
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("label value is quoted");
                        labels.insert(key.to_string(), value.to_string());
                    }
                    (name.to_string(), labels)
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        samples
    }

    pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted);
        let sample = found.next()?;
        assert!(found.next().is_none(), "{name} {labels:?} appears twice");
        Some(sample.value)
    }

    pub(crate) fn outcome(
        status: Status,
        reason: Option<FailureReason>,
        duplicate: bool,
        stats: TransferStats,
    ) -> TransferOutcome {
        TransferOutcome {
            transfer_id: "tx_1".into(),
            idempotency_key: "tx_1".into(),
            status,
            reason,
            from_user: "alice".into(),
            to_user: "bob".into(),
            amount: Amount::parse("1.00").unwrap(),
            currency: "USD".into(),
            processed_at_ms: 1_764_170_000_123,
            from_balance_after: None,
            to_balance_after: None,
            from_version_after: None,
            to_version_after: None,
            duplicate,
            origin: None,
            request_hash: String::new(),
            stats,
        }
    }

    fn stats(
        elapsed_us: u64,
        lock_attempts: u32,
        lock_wait_us: u64,
        watch_retries: u32,
    ) -> TransferStats {
        TransferStats {
            lock: LockStats {
                attempts: lock_attempts,
                wait_us: lock_wait_us,
                round_trips: lock_attempts,
            },
            watch_retries,
            round_trips: 4,
            elapsed_us,
            local_wait_us: 0,
        }
    }

    fn recorded() -> Metrics {
        let metrics = Metrics::new();
        metrics.record_outcome(&outcome(
            Status::Completed,
            None,
            false,
            stats(1_500, 1, 200, 0),
        ));
        metrics.record_outcome(&outcome(
            Status::Completed,
            None,
            false,
            stats(3_000, 3, 250_000, 2),
        ));
        // A duplicate takes no locks.
        metrics.record_outcome(&outcome(Status::Completed, None, true, stats(400, 0, 0, 0)));
        metrics.record_outcome(&outcome(
            Status::Failed,
            Some(FailureReason::InsufficientFunds),
            false,
            stats(2_000, 1, 100, 1),
        ));
        metrics.record_lock_timeout();
        metrics.record_retry("lock_timeout");
        metrics.record_retry("redis");
        metrics.record_retry("redis");
        metrics.record_dlq();
        metrics.record_published();
        metrics.record_published();
        metrics.set_in_flight(5);
        metrics.set_committed(0, 42);
        metrics.set_committed(3, 7);
        metrics.set_lag(0, 10);
        metrics.set_lag(3, 4);
        metrics
    }

    #[test]
    fn render_exposes_what_was_recorded() {
        let samples = parse(&recorded().render());
        let get = |name: &str, labels: &[(&str, &str)]| {
            value(&samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        };

        let completed = [("status", "COMPLETED"), ("reason", "")];
        assert_eq!(get("wallet_transfers_total", &completed), 3.0);
        let insufficient = [("status", "FAILED"), ("reason", "insufficient_funds")];
        assert_eq!(get("wallet_transfers_total", &insufficient), 1.0);
        let same_user = [("status", "FAILED"), ("reason", "same_user")];
        assert_eq!(
            get("wallet_transfers_total", &same_user),
            0.0,
            "pre-created at zero"
        );
        assert_eq!(get("wallet_duplicates_total", &[]), 1.0);

        assert_eq!(get("wallet_transfer_latency_seconds_count", &[]), 4.0);
        let latency_sum = get("wallet_transfer_latency_seconds_sum", &[]);
        assert!((latency_sum - 0.0069).abs() < 1e-9, "sum {latency_sum}");
        // 400 us and 1.5 ms fall at or below 2 ms; so does the 2 ms one; 3 ms does not.
        let le_2ms = [("le", "0.002")];
        assert_eq!(get("wallet_transfer_latency_seconds_bucket", &le_2ms), 3.0);

        assert_eq!(
            get("wallet_lock_wait_seconds_count", &[]),
            3.0,
            "duplicate took no lock"
        );
        assert_eq!(get("wallet_lock_attempts_total", &[]), 5.0);
        assert_eq!(get("wallet_lock_timeouts_total", &[]), 1.0);
        assert_eq!(get("wallet_watch_conflicts_total", &[]), 3.0);
        assert_eq!(get("wallet_dlq_total", &[]), 1.0);
        assert_eq!(get("wallet_in_flight_jobs", &[]), 5.0);
        assert_eq!(get("wallet_retries_total", &[("cause", "redis")]), 2.0);
        assert_eq!(
            get("wallet_retries_total", &[("cause", "lock_timeout")]),
            1.0
        );
        assert_eq!(get("wallet_committed_offset", &[("partition", "0")]), 42.0);
        assert_eq!(get("wallet_committed_offset", &[("partition", "3")]), 7.0);
        assert_eq!(get("wallet_consumer_lag", &[("partition", "3")]), 4.0);
        assert_eq!(get("wallet_results_published_total", &[]), 2.0);

        assert!(
            samples.iter().all(|s| s.name.starts_with("wallet_")),
            "every metric is prefixed"
        );
    }

    /// `names` is the whole list: every family the registry renders is one of its constants,
    /// and every constant is rendered (a family missing here would be a name `wallet top`, the
    /// alert rules or the dashboard could query in vain).
    #[test]
    fn the_registry_exports_exactly_the_named_families() {
        let m = Metrics::new();
        // Per-partition families render only once a partition has a series.
        m.set_committed(0, 0);
        m.set_lag(0, 0);
        m.health().set_watermarks(&[(0, 0, 1)]);
        m.check_readiness();
        let rendered: std::collections::BTreeSet<String> = m
            .render()
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let named: std::collections::BTreeSet<String> =
            names::ALL.iter().map(|n| n.to_string()).collect();
        assert_eq!(names::ALL.len(), named.len(), "a name is listed twice");
        assert_eq!(rendered, named);
    }

    #[test]
    fn summary_totals_the_counters() {
        let metrics = recorded();
        let summary = metrics.summary();
        assert_eq!(
            summary,
            MetricsSummary {
                processed: 4,
                failed: 1,
                duplicates: 1,
                dlq: 1,
                retries: 3,
                lag_total: 14,
            }
        );
        assert_eq!(
            summary.to_string(),
            "processed=4 failed=1 duplicates=1 dlq=1 retries=3 lag=14"
        );
        assert_eq!(Metrics::new().summary(), MetricsSummary::default());
    }

    #[test]
    fn clones_share_one_registry_and_instances_are_separate() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone.record_dlq();
        assert_eq!(metrics.summary().dlq, 1);
        assert_eq!(Metrics::new().summary().dlq, 0, "no global registry");
    }

    #[test]
    fn forget_partition_drops_its_series() {
        let metrics = recorded();
        metrics.forget_partition(0);
        metrics.forget_partition(99); // never set: nothing to drop
        let samples = parse(&metrics.render());
        assert_eq!(
            value(&samples, "wallet_consumer_lag", &[("partition", "0")]),
            None
        );
        assert_eq!(
            value(&samples, "wallet_committed_offset", &[("partition", "0")]),
            None
        );
        assert_eq!(
            value(&samples, "wallet_consumer_lag", &[("partition", "3")]),
            Some(4.0)
        );
        assert_eq!(metrics.summary().lag_total, 4);
    }

    /// Sends a bare HTTP/1.0 request and returns the status code, the head and the body.
    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .expect("a complete response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        (status, head.to_string(), body.to_string())
    }

    #[test]
    fn serves_metrics_over_http() {
        let metrics = Metrics::new();
        metrics.record_dlq();
        let server = serve("127.0.0.1:0", metrics.clone()).unwrap();
        let addr = server.addr();
        assert_ne!(addr.port(), 0);

        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(value(&parse(&body), "wallet_dlq_total", &[]), Some(1.0));

        // Reads the live values, not a copy taken at start.
        metrics.record_dlq();
        let (_, _, body) = get(addr, "/metrics?x=1");
        assert_eq!(value(&parse(&body), "wallet_dlq_total", &[]), Some(2.0));

        let (status, _, _) = get(addr, "/nope");
        assert_eq!(status, 404);

        drop(server);
        // The listener is closed: the connection is refused, reset, or closed unanswered.
        let after = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            Ok(response)
        });
        if let Ok(response) = after {
            assert!(response.is_empty(), "answered after drop: {response}");
        }
    }

    #[test]
    fn serves_liveness_and_readiness_with_reasons() {
        let metrics = Metrics::new();
        let redis_up = Arc::new(AtomicBool::new(true));
        metrics.health().set_redis_check({
            let up = redis_up.clone();
            move || {
                if up.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("PING failed: connection refused".into())
                }
            }
        });
        let server = serve("127.0.0.1:0", metrics.clone()).unwrap();
        let addr = server.addr();

        assert_eq!(get(addr, "/healthz").0, 200);
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (200, "ready\n"));

        redis_up.store(false, Ordering::SeqCst);
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!(status, 503);
        assert_eq!(body, "not ready: redis: PING failed: connection refused\n");
        assert_eq!(get(addr, "/healthz").0, 200, "alive while not ready");
        let samples = parse(&get(addr, "/metrics").2);
        assert_eq!(value(&samples, "wallet_ready", &[]), Some(0.0));
        assert_eq!(value(&samples, "wallet_group_joining", &[]), Some(1.0));
        let check = |name| value(&samples, "wallet_ready_check", &[("check", name)]);
        assert_eq!(check("redis"), Some(0.0));
        assert_eq!(check("group"), Some(1.0));
        assert_eq!(check("producer"), Some(1.0));

        redis_up.store(true, Ordering::SeqCst);
        metrics.health().set_assigned(4);
        assert_eq!(get(addr, "/readyz").0, 200);
        let samples = parse(&get(addr, "/metrics").2);
        assert_eq!(value(&samples, "wallet_ready", &[]), Some(1.0));
        assert_eq!(
            value(&samples, "wallet_assigned_partitions", &[]),
            Some(4.0)
        );
        assert_eq!(value(&samples, "wallet_group_joining", &[]), Some(0.0));

        metrics.health().set_fatal("fenced");
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!(status, 503);
        assert_eq!(body, "not ready: producer: fatal error: fenced\n");
    }

    #[test]
    fn known_retry_causes_start_at_zero() {
        let samples = parse(&Metrics::new().render());
        for cause in RETRY_CAUSES {
            assert_eq!(
                value(&samples, "wallet_retries_total", &[("cause", cause)]),
                Some(0.0),
                "{cause}"
            );
        }
    }

    #[test]
    fn serve_reports_an_address_in_use() {
        let first = serve("127.0.0.1:0", Metrics::new()).unwrap();
        let taken = first.addr().to_string();
        assert!(serve(&taken, Metrics::new()).is_err());
    }

    #[test]
    fn stage_percentiles_come_from_the_buckets_of_the_window() {
        let m = Metrics::new();
        let start = m.stage_buckets();
        for _ in 0..99 {
            m.record_stage(Stage::Transfer, 800); // 0.8 ms: the 1 ms bucket
        }
        m.record_stage(Stage::Transfer, 40_000); // 40 ms: the 50 ms bucket
        let [queue, transfer, ack] = m.stage_buckets().percentiles_since(&start);
        assert_eq!(queue, None);
        assert_eq!(ack, None);
        let (p50, p99) = transfer.expect("transfer observed");
        assert!((p50 - 1.0).abs() < 1e-9, "p50 {p50}");
        assert!(
            (p99 - 1.0).abs() < 1e-9,
            "p99 {p99}: 99 of 100 are in the 1 ms bucket"
        );
        let later = m.stage_buckets();
        m.record_stage(Stage::Transfer, 40_000);
        let [_, transfer, _] = m.stage_buckets().percentiles_since(&later);
        assert_eq!(transfer, Some((50.0, 50.0)), "only the window counts");
    }
}
