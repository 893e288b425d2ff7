//! The name of every metric the worker exports, and of their labels: written once, here, and
//! used by the exporter (`metrics`), by `wallet top`, and by the tests that check the alert
//! rules and the dashboard query only names the worker exports.
//!
//! Owns the names. Does not own the metrics themselves, their help text or their types
//! (`metrics`).

/// The name of every metric family the worker exports, the one place each is written: the
/// registry registers these, and `wallet top` queries them. The alert rules and the dashboard
/// (`monitoring/`) must use the same strings; `tests/it/docs.rs` checks that they query only
/// exported names.
pub mod names {
    /// Counter: outcomes answered, duplicates included, by `status` and `reason`.
    pub const TRANSFERS_TOTAL: &str = "wallet_transfers_total";
    /// Counter: requests answered from an earlier record.
    pub const DUPLICATES_TOTAL: &str = "wallet_duplicates_total";
    /// Histogram: wall time of one transfer call.
    pub const TRANSFER_LATENCY_SECONDS: &str = "wallet_transfer_latency_seconds";
    /// Histogram: time until the wallet locks were held.
    pub const LOCK_WAIT_SECONDS: &str = "wallet_lock_wait_seconds";
    /// Counter: SET NX rounds sent to take wallet locks.
    pub const LOCK_ATTEMPTS_TOTAL: &str = "wallet_lock_attempts_total";
    /// Counter: transfers that gave up waiting for wallet locks.
    pub const LOCK_TIMEOUTS_TOTAL: &str = "wallet_lock_timeouts_total";
    /// Counter: transactions aborted by a watched key, and retried.
    pub const WATCH_CONFLICTS_TOTAL: &str = "wallet_watch_conflicts_total";
    /// Counter: distinct wallet locks found held with no ttl.
    pub const LOCKS_WITHOUT_TTL_TOTAL: &str = "wallet_locks_without_ttl_total";
    /// Histogram: time in each stage of the worker, by `stage`.
    pub const STAGE_SECONDS: &str = "wallet_stage_seconds";
    /// Counter: messages sent to the dead-letter topic.
    pub const DLQ_TOTAL: &str = "wallet_dlq_total";
    /// Gauge: jobs consumed and not yet done.
    pub const IN_FLIGHT_JOBS: &str = "wallet_in_flight_jobs";
    /// Counter: jobs retried after a transient error, by `cause`.
    pub const RETRIES_TOTAL: &str = "wallet_retries_total";
    /// Gauge: last offset committed, by `partition`.
    pub const COMMITTED_OFFSET: &str = "wallet_committed_offset";
    /// Gauge: messages behind the high watermark, by `partition`.
    pub const CONSUMER_LAG: &str = "wallet_consumer_lag";
    /// Counter: result messages delivered.
    pub const RESULTS_PUBLISHED_TOTAL: &str = "wallet_results_published_total";
    /// Counter: ledger entries delivered.
    pub const LEDGER_ENTRIES_PUBLISHED_TOTAL: &str = "wallet_ledger_entries_published_total";
    /// Counter: answers that waited because the producer's queue was full (backpressure from
    /// slow brokers, not a retry).
    pub const PRODUCE_QUEUE_FULL_TOTAL: &str = "wallet_produce_queue_full_total";
    /// Gauge: bytes held and not running (backlog, parked, retrying).
    pub const BACKLOG_BYTES: &str = "wallet_backlog_bytes";
    /// Gauge: 1 while the consumer is paused at the backlog bound.
    pub const CONSUMER_PAUSED: &str = "wallet_consumer_paused";
    /// Gauge: jobs waiting behind an earlier job of their key.
    pub const PARKED_JOBS: &str = "wallet_parked_jobs";
    /// Gauge: jobs waiting in the delay queue.
    pub const RETRYING_JOBS: &str = "wallet_retrying_jobs";
    /// Gauge: how long the longest-retrying waiting job has been failing.
    pub const RETRY_OLDEST_AGE_SECONDS: &str = "wallet_retry_oldest_age_seconds";
    /// Counter: messages fetched again and skipped.
    pub const REDELIVERIES_SKIPPED_TOTAL: &str = "wallet_redeliveries_skipped_total";
    /// Counter: transfers that panicked on a transfer thread.
    pub const THREAD_PANICS_TOTAL: &str = "wallet_thread_panics_total";
    /// Counter: runs of the recovery sweep, by `result`.
    pub const RECOVER_RUNS_TOTAL: &str = "wallet_recover_runs_total";
    /// Counter: PENDING cross-slot transfers the sweep finished.
    pub const RECOVER_FINISHED_TOTAL: &str = "wallet_recover_finished_total";
    /// Counter: PENDING cross-slot transfers a sweep could not finish.
    pub const RECOVER_UNFINISHED_TOTAL: &str = "wallet_recover_unfinished_total";
    /// Gauge: 1 when the worker is ready (`/readyz` answers 200).
    pub const READY: &str = "wallet_ready";
    /// Gauge: 1 when this part of readiness passes, by `check`.
    pub const READY_CHECK: &str = "wallet_ready_check";
    /// Gauge: how long the commit position has stood still with work, by `partition`.
    pub const WATERMARK_STALLED_SECONDS: &str = "wallet_watermark_stalled_seconds";
    /// Gauge: partitions assigned by the last completed group join.
    pub const ASSIGNED_PARTITIONS: &str = "wallet_assigned_partitions";
    /// Gauge: 1 while a consumer group join is in progress.
    pub const GROUP_JOINING: &str = "wallet_group_joining";

    /// Every name above, in registration order (a unit test checks that the registry exports
    /// exactly these).
    pub const ALL: [&str; 32] = [
        TRANSFERS_TOTAL,
        DUPLICATES_TOTAL,
        TRANSFER_LATENCY_SECONDS,
        LOCK_WAIT_SECONDS,
        LOCK_ATTEMPTS_TOTAL,
        LOCK_TIMEOUTS_TOTAL,
        WATCH_CONFLICTS_TOTAL,
        LOCKS_WITHOUT_TTL_TOTAL,
        STAGE_SECONDS,
        DLQ_TOTAL,
        IN_FLIGHT_JOBS,
        RETRIES_TOTAL,
        COMMITTED_OFFSET,
        CONSUMER_LAG,
        RESULTS_PUBLISHED_TOTAL,
        LEDGER_ENTRIES_PUBLISHED_TOTAL,
        PRODUCE_QUEUE_FULL_TOTAL,
        BACKLOG_BYTES,
        CONSUMER_PAUSED,
        PARKED_JOBS,
        RETRYING_JOBS,
        RETRY_OLDEST_AGE_SECONDS,
        REDELIVERIES_SKIPPED_TOTAL,
        THREAD_PANICS_TOTAL,
        RECOVER_RUNS_TOTAL,
        RECOVER_FINISHED_TOTAL,
        RECOVER_UNFINISHED_TOTAL,
        READY,
        READY_CHECK,
        WATERMARK_STALLED_SECONDS,
        ASSIGNED_PARTITIONS,
        GROUP_JOINING,
    ];
}

/// The label names of the metrics above, for the exporter and for readers of its output.
pub mod labels {
    /// Outcome status of `wallet_transfers_total` (`COMPLETED`, `FAILED`).
    pub const STATUS: &str = "status";
    /// Failure reason of `wallet_transfers_total` (`""` for none).
    pub const REASON: &str = "reason";
    /// Stage of `wallet_stage_seconds` ([`Stage::as_str`](crate::worker::metrics::Stage::as_str)).
    pub const STAGE: &str = "stage";
    /// Cause of `wallet_retries_total`.
    pub const CAUSE: &str = "cause";
    /// Partition of the requests topic, of the per-partition families.
    pub const PARTITION: &str = "partition";
    /// Part of readiness of `wallet_ready_check`.
    pub const CHECK: &str = "check";
    /// Result (`ok`, `error`) of `wallet_recover_runs_total`.
    pub const RESULT: &str = "result";
}
