//! [`WorkerConfig`]: the worker's settings, their defaults (written once, here; the CLI's flags
//! take theirs from [`WorkerConfig::default`]) and their rules, plus the pipeline's fixed
//! constants.
//!
//! Owns every number the pipeline runs by. Does not read flags or the environment (`cli`).

use crate::engine::backoff::Backoff;
use crate::engine::setting::{SettingError, setters};
use crate::worker::kafka::{self, KafkaConfig};

/// Worker settings. `Default` gives the documented defaults (those of `wallet worker`'s
/// flags, docs/operations.md, "Configuration"); change them with the `with_*` setters, which keep
/// compiling when settings are added (the struct is `#[non_exhaustive]`):
///
/// ```
/// use wallet_transfer::worker::WorkerConfig;
/// use wallet_transfer::worker::kafka::KafkaConfig;
///
/// let config = WorkerConfig::default()
///     .with_kafka(KafkaConfig::new("broker-1:9092,broker-2:9092"))
///     .with_group_id("payments".to_string())
///     .with_threads(16);
/// assert_eq!(config.validate(), Ok(()));
/// ```
///
/// [`crate::worker::Worker::new`] validates them; the [`SettingError`] of
/// [`WorkerConfig::validate`] names the setting by its field name.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The brokers and extra librdkafka properties of every client the worker makes.
    pub kafka: KafkaConfig,
    /// Consumer group of the requests topic; workers in one group share its partitions.
    pub group_id: String,
    /// Where requests are consumed from (`wallet.transfer.requested`).
    pub requests_topic: String,
    /// Where results are published (`wallet.transfer.completed`, key = transfer_id).
    pub results_topic: String,
    /// Where input that cannot be answered goes (`wallet.transfer.dlq`).
    pub dlq_topic: String,
    /// Where every history entry of a COMPLETED transfer is published (`wallet.ledger`, key =
    /// wallet id; `worker::ledger`). Created with `retention.ms=-1`: it is the durable ledger.
    pub ledger_topic: String,
    /// Transfer threads (and Redis connections).
    pub threads: usize,
    /// Partitions for topics the worker creates.
    pub partitions: i32,
    /// Replication factor for topics the worker creates.
    pub replication: i32,
    /// Period of the offset commits (they also run on revoke and at shutdown).
    pub commit_interval_ms: u64,
    /// How long the group waits for a silent worker before giving its partitions to others.
    pub session_timeout_ms: u64,
    /// librdkafka's `max.poll.interval.ms`, which is also the rebalance timeout the group
    /// coordinator is given: the longest a rebalance may wait for members to rejoin.
    pub max_poll_interval_ms: u64,
    /// Time allowed for a revoke, from the moment it begins (shortened by a stop's deadline):
    /// in-flight jobs of the revoked partitions get the first three quarters of it to finish,
    /// the commit of their watermark the last quarter.
    pub revoke_timeout_ms: u64,
    /// Time allowed, on shutdown, for the producer to deliver what is queued.
    pub flush_timeout_ms: u64,
    /// Cap on the delay between retries of a job that hit a transient error.
    pub retry_delay_ms_max: u64,
    /// Bytes of messages polled but not yet handed to the pool at which the consumer pauses
    /// fetching; it resumes once the backlog is down to half of this.
    pub backlog_bytes_max: usize,
    /// Interval of the one-line summary log.
    pub summary_interval_ms: u64,
    /// Time from the first stop signal until the worker has stopped, whatever is down: what
    /// can finish finishes, what is answered and acknowledged is committed, the rest is
    /// abandoned (left uncommitted for the next owner).
    pub shutdown_timeout_ms: u64,
    /// When the engine's `outcome_ttl_ms` is not set: true (the default) derives it at start
    /// from the requests topic's `retention.ms` plus `segment.ms` plus
    /// [`WorkerConfig::outcome_ttl_margin_ms`] (records kept for ever when the topic keeps its
    /// messages for ever; refused for a topic compacted without deletion), and raises it for
    /// new records when the topic's retention grows while running; false keeps outcome records
    /// for ever (`worker::outcome_ttl`).
    pub outcome_ttl_auto: bool,
    /// How much longer than the requests topic's retention an outcome record lives: the
    /// longest consumer lag it covers. A request can be redelivered until it leaves the topic;
    /// its record must outlive that, or the money would move again. Also the lower bound of
    /// an outcome ttl set by hand.
    pub outcome_ttl_margin_ms: u64,
    /// How often a running worker with an outcome ttl reads the requests topic's
    /// `retention.ms`, `segment.ms` and `cleanup.policy` again: a derived ttl is raised for new
    /// records when they need more; a ttl set by hand that no longer covers them stops the
    /// worker. At most [`crate::worker::outcome_ttl::OUTCOME_TTL_CHECK_INTERVAL_MS_LIMIT`].
    pub outcome_ttl_check_interval_ms: u64,
    /// On a Redis Cluster, how often the worker sweeps for cross-slot transfers left PENDING
    /// (a worker that crashed between the steps) and finishes them with
    /// [`crate::WalletService::recover`]; 0 turns the sweep off. A PENDING transfer is also
    /// finished by the next delivery of its request; the sweep covers requests that never come
    /// back (their offset was committed by a worker that then lost its step). No sweep runs on
    /// one Redis, where transfers are one transaction and never PENDING.
    pub recover_interval_ms: u64,
    /// Most PENDING records one sweep finishes (at most
    /// [`crate::engine::recovery::RECOVER_LIMIT`]); a sweep that stops at the limit
    /// runs again at once.
    pub recover_batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            kafka: KafkaConfig::new(kafka::BROKERS_DEFAULT),
            group_id: "wallet-transfer-worker".to_string(),
            requests_topic: kafka::TOPIC_REQUESTS.to_string(),
            results_topic: kafka::TOPIC_RESULTS.to_string(),
            dlq_topic: kafka::TOPIC_DLQ.to_string(),
            ledger_topic: kafka::TOPIC_LEDGER.to_string(),
            threads: 8,
            partitions: 6,
            replication: 1,
            commit_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 30_000,
            revoke_timeout_ms: 15_000,
            flush_timeout_ms: 10_000,
            retry_delay_ms_max: 2_000,
            backlog_bytes_max: 32 * 1024 * 1024,
            summary_interval_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            outcome_ttl_auto: true,
            outcome_ttl_margin_ms: 24 * 3_600_000,
            outcome_ttl_check_interval_ms:
                crate::worker::outcome_ttl::OUTCOME_TTL_CHECK_INTERVAL_MS,
            recover_interval_ms: 10_000,
            recover_batch: 1_000,
        }
    }
}

// One setter per field: embedders cannot set a field that has none (the struct is
// #[non_exhaustive]), so a new field gets its line here.
setters!(WorkerConfig {
    with_kafka => kafka: KafkaConfig,
    with_group_id => group_id: String,
    with_requests_topic => requests_topic: String,
    with_results_topic => results_topic: String,
    with_dlq_topic => dlq_topic: String,
    with_ledger_topic => ledger_topic: String,
    with_threads => threads: usize,
    with_partitions => partitions: i32,
    with_replication => replication: i32,
    with_commit_interval_ms => commit_interval_ms: u64,
    with_session_timeout_ms => session_timeout_ms: u64,
    with_max_poll_interval_ms => max_poll_interval_ms: u64,
    with_revoke_timeout_ms => revoke_timeout_ms: u64,
    with_flush_timeout_ms => flush_timeout_ms: u64,
    with_retry_delay_ms_max => retry_delay_ms_max: u64,
    with_backlog_bytes_max => backlog_bytes_max: usize,
    with_summary_interval_ms => summary_interval_ms: u64,
    with_shutdown_timeout_ms => shutdown_timeout_ms: u64,
    with_outcome_ttl_auto => outcome_ttl_auto: bool,
    with_outcome_ttl_margin_ms => outcome_ttl_margin_ms: u64,
    with_outcome_ttl_check_interval_ms => outcome_ttl_check_interval_ms: u64,
    with_recover_interval_ms => recover_interval_ms: u64,
    with_recover_batch => recover_batch: usize,
});

/// Upper bound on `outcome_ttl_margin_ms`: 30 days.
pub const OUTCOME_TTL_MARGIN_MS_LIMIT: u64 = 30 * 24 * 3_600_000;
/// `retention.ms` of the requests topic when the worker creates it (Kafka's default, 7 days):
/// set explicitly, so that the outcome ttl derived from it is what the topic really keeps.
pub const REQUESTS_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3_600_000;
/// `segment.ms` of the requests topic when the worker creates it: 1 day (Kafka's default is 7).
/// Kafka deletes whole segments, so a message stays up to retention plus this, and so must its
/// outcome record: set explicitly and short, it keeps the derived ttl at 9 days, not 15.
pub const REQUESTS_SEGMENT_MS_DEFAULT: u64 = 24 * 3_600_000;

/// Upper bound on `threads`.
pub const THREADS_LIMIT: usize = 256;
/// Lower bound on `backlog_bytes_max`: one largest request.
pub const BACKLOG_BYTES_MIN: usize = crate::engine::message::PAYLOAD_BYTES_LIMIT;
/// Upper bound on `backlog_bytes_max`: 1 GiB.
pub const BACKLOG_BYTES_LIMIT: usize = 1024 * 1024 * 1024;
/// The dead-letter header that says why the request cannot be answered (asyncapi.yaml,
/// `DeadLetterHeaders`; cut to [`DLQ_ERROR_BYTES_LIMIT`]).
pub const DLQ_HEADER_ERROR: &str = "error";
/// The dead-letter header naming the topic the request came from.
pub const DLQ_HEADER_SOURCE_TOPIC: &str = "source_topic";
/// The dead-letter header with the request's partition, in decimal.
pub const DLQ_HEADER_SOURCE_PARTITION: &str = "source_partition";
/// The dead-letter header with the request's offset, in decimal.
pub const DLQ_HEADER_SOURCE_OFFSET: &str = "source_offset";
/// The dead-letter header present only when the payload was cut to
/// [`DLQ_PAYLOAD_BYTES_LIMIT`]: the request's full length in bytes, in decimal.
pub const DLQ_HEADER_TRUNCATED: &str = "truncated";
#[doc(hidden)]
/// Largest dead-letter payload: the decode cap, so every request the worker could have read is
/// forwarded whole; a bigger poison payload is cut to this size and marked with the header
/// `truncated` (its full length).
pub const DLQ_PAYLOAD_BYTES_LIMIT: usize = crate::engine::message::PAYLOAD_BYTES_LIMIT;
#[doc(hidden)]
/// Longest `error` header of a dead letter; a longer error text is cut.
pub const DLQ_ERROR_BYTES_LIMIT: usize = 4 * 1024;
#[doc(hidden)]
/// Longest dead-letter key (the request's key, cut).
pub const DLQ_KEY_BYTES_LIMIT: usize = 1024;
#[doc(hidden)]
/// Room for a dead letter's key, headers and record framing above its payload.
pub const DLQ_HEADERS_BYTES_LIMIT: usize = 16 * 1024;
#[doc(hidden)]
/// The dead-letter topic's `max.message.bytes` when the worker creates it: the largest dead
/// letter fits.
pub const DLQ_MESSAGE_BYTES_LIMIT: usize = DLQ_PAYLOAD_BYTES_LIMIT + DLQ_HEADERS_BYTES_LIMIT;
/// librdkafka's default `message.max.bytes`, which the result producer keeps.
pub const PRODUCER_MESSAGE_BYTES_DEFAULT: usize = 1_000_000;
#[doc(hidden)]
/// How often one kind of warning is logged at most; repeats in between are counted and the
/// count is logged with the next one.
pub const WARN_INTERVAL_MS: u64 = 10_000;
#[doc(hidden)]
/// Longest wait of the retry timer between looks at the delay queue.
pub const RETRY_TICK_MS: u64 = 50;
#[doc(hidden)]
/// Upper bound on every interval and timeout setting (one hour).
pub const INTERVAL_MS_LIMIT: u64 = 60 * 60 * 1000;
#[doc(hidden)]
/// Base delay of a job's transient retries; doubles per retry up to `retry_delay_ms_max`.
pub const RETRY_DELAY_MS_BASE: u64 = 50;
#[doc(hidden)]
/// Jitter of a job's retry delays: a random 0..=this many ms is added to each, so jobs that
/// failed together (Redis away) do not all come back in the same instant.
pub const RETRY_JITTER_MS: u64 = RETRY_DELAY_MS_BASE;
#[doc(hidden)]
/// Base delay of a refused produce call; doubles per retry up to `retry_delay_ms_max`.
pub const PRODUCE_RETRY_DELAY_MS_BASE: u64 = 5;
#[doc(hidden)]
/// Tries of one job whose transfer panicked (a bug) before it is dead-lettered.
pub const PANICS_PER_JOB_LIMIT: u32 = 3;
#[doc(hidden)]
/// Bytes of a request logged with a panic of its transfer.
pub const PANIC_PAYLOAD_LOG_BYTES: usize = 512;
#[doc(hidden)]
/// How long the deliveries of answers may fail because their topic does not exist (with none
/// acknowledged meanwhile) before the worker takes the topic as deleted and stops on a
/// permanent error; a topic created a little late is waited for.
pub const TOPIC_MISSING_MS_LIMIT: u64 = 60_000;
#[doc(hidden)]
/// Poll timeout of the consumer loop: the longest a shutdown or commit waits for it.
pub const POLL_MS: u64 = 100;
#[doc(hidden)]
/// Longest time the broker may hold a fetch that found no data (overridable with `-X
/// fetch.wait.max.ms=N`). The latency-for-load knob: a broker that does not answer a waiting
/// fetch as soon as data arrives (tansu) adds up to this to every request; Apache Kafka answers
/// at once, so there it only sets how often an idle consumer asks (200 fetches/s at 5 ms).
pub const FETCH_WAIT_MS: u64 = 2;
#[doc(hidden)]
/// Interval of librdkafka's statistics (lag per partition, group join state).
pub const STATS_INTERVAL_MS: u64 = 5_000;
#[doc(hidden)]
/// How often the consumer loop refreshes the gauges of what the worker holds (in flight, held
/// bytes, parked, retrying, oldest retry).
pub const HELD_REPORT_INTERVAL_MS: u64 = 100;
#[doc(hidden)]
/// Poll timeout while the backlog holds jobs the channel had no room for.
pub const BUSY_POLL_MS: u64 = 1;
#[doc(hidden)]
/// How long the result producer gathers messages into one request (librdkafka `linger.ms`):
/// the other latency-for-load knob. 5 ms (librdkafka's own default) batches well at thousands
/// per second and adds at most 5 ms to a result.
pub const RESULT_LINGER_MS: u64 = 1;
#[doc(hidden)]
/// Jobs the channel to the pool holds per transfer thread.
pub const CHANNEL_JOBS_PER_THREAD: usize = 2;
#[doc(hidden)]
/// Step of the waits that watch the shutdown flag or a revoke's in-flight jobs.
pub const WAIT_STEP_MS: u64 = 10;
#[doc(hidden)]
/// The share of a bounded revoke or stop kept for its commit: the last `1/COMMIT_SHARE_DIVISOR`
/// of the time. A revoke waits for its running jobs for the first three quarters of
/// `revoke_timeout_ms` and commits in the last; a stop joins its threads in the first half of
/// the time left, flushes the producer in the third quarter and commits in the last.
pub const COMMIT_SHARE_DIVISOR: u32 = 4;

const _: () = assert!(
    BUSY_POLL_MS < POLL_MS,
    "a busy poll must be shorter than an idle one"
);
const _: () = assert!(BACKLOG_BYTES_MIN <= BACKLOG_BYTES_LIMIT);
const _: () = assert!(
    DLQ_ERROR_BYTES_LIMIT + DLQ_KEY_BYTES_LIMIT + 1024 <= DLQ_HEADERS_BYTES_LIMIT,
    "a dead letter's error, key and source headers fit its headers room"
);
const _: () = assert!(
    DLQ_MESSAGE_BYTES_LIMIT < PRODUCER_MESSAGE_BYTES_DEFAULT,
    "the result producer can send the largest dead letter"
);
const _: () = assert!(RETRY_DELAY_MS_BASE > 0 && PRODUCE_RETRY_DELAY_MS_BASE > 0);
const _: () = assert!(WAIT_STEP_MS < POLL_MS);

impl WorkerConfig {
    /// Delays between tries of a job that hit a transient error or whose answer was not
    /// delivered: from `RETRY_DELAY_MS_BASE`, doubling per failure, capped at
    /// `retry_delay_ms_max`, plus up to `RETRY_JITTER_MS` of jitter.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff {
            first_ms: RETRY_DELAY_MS_BASE,
            max_ms: self.retry_delay_ms_max,
            jitter_ms: RETRY_JITTER_MS,
        }
    }

    /// Delays between attempts to hand an answer to a producer that refused it (queue full):
    /// from `PRODUCE_RETRY_DELAY_MS_BASE`, doubling, capped at `retry_delay_ms_max`, plus up
    /// to `PRODUCE_RETRY_DELAY_MS_BASE` of jitter.
    pub fn produce_backoff(&self) -> Backoff {
        Backoff {
            first_ms: PRODUCE_RETRY_DELAY_MS_BASE,
            max_ms: self.retry_delay_ms_max,
            jitter_ms: PRODUCE_RETRY_DELAY_MS_BASE,
        }
    }

    /// `revoke_timeout_ms` as a duration.
    pub fn revoke_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.revoke_timeout_ms)
    }

    /// How long joining the group may wait before it is taken as hung: any legitimate join
    /// completes within the rebalance timeout, and a lost member is dropped after its session.
    pub fn join_stuck_ms(&self) -> u64 {
        self.max_poll_interval_ms + self.session_timeout_ms
    }

    /// Checks every setting against its rule; the error names the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        SettingError::check_range("threads", self.threads, 1, THREADS_LIMIT)?;
        SettingError::check_range(
            "backlog_bytes_max",
            self.backlog_bytes_max,
            BACKLOG_BYTES_MIN,
            BACKLOG_BYTES_LIMIT,
        )?;
        SettingError::check_range("partitions", self.partitions, 1, i32::MAX)?;
        SettingError::check_range("replication", self.replication, 1, i32::MAX)?;
        for (setting, ms) in [
            ("commit_interval_ms", self.commit_interval_ms),
            ("session_timeout_ms", self.session_timeout_ms),
            ("max_poll_interval_ms", self.max_poll_interval_ms),
            ("revoke_timeout_ms", self.revoke_timeout_ms),
            ("flush_timeout_ms", self.flush_timeout_ms),
            ("retry_delay_ms_max", self.retry_delay_ms_max),
            ("summary_interval_ms", self.summary_interval_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
        ] {
            SettingError::check_range(setting, ms, 1, INTERVAL_MS_LIMIT)?;
        }
        SettingError::check_range(
            "outcome_ttl_margin_ms",
            self.outcome_ttl_margin_ms,
            0,
            OUTCOME_TTL_MARGIN_MS_LIMIT,
        )?;
        SettingError::check_range(
            "outcome_ttl_check_interval_ms",
            self.outcome_ttl_check_interval_ms,
            1,
            crate::worker::outcome_ttl::OUTCOME_TTL_CHECK_INTERVAL_MS_LIMIT,
        )?;
        SettingError::check_range(
            "recover_interval_ms",
            self.recover_interval_ms,
            0,
            INTERVAL_MS_LIMIT,
        )?;
        SettingError::check_range(
            "recover_batch",
            self.recover_batch,
            1,
            crate::engine::recovery::RECOVER_LIMIT,
        )?;
        if self.max_poll_interval_ms < self.session_timeout_ms
            || self.max_poll_interval_ms <= self.revoke_timeout_ms
        {
            return Err(SettingError::new(
                "max_poll_interval_ms",
                format!(
                    "must be at least session_timeout_ms ({}) and above revoke_timeout_ms ({}), got {}",
                    self.session_timeout_ms, self.revoke_timeout_ms, self.max_poll_interval_ms
                ),
            ));
        }
        self.validate_names()
    }

    /// The rules of the topic and group names: none empty, the ledger topic its own.
    fn validate_names(&self) -> Result<(), SettingError> {
        for (setting, topic) in [
            ("requests_topic", &self.requests_topic),
            ("results_topic", &self.results_topic),
            ("dlq_topic", &self.dlq_topic),
            ("ledger_topic", &self.ledger_topic),
            ("group_id", &self.group_id),
        ] {
            if topic.is_empty() {
                return Err(SettingError::new(setting, "must not be empty"));
            }
        }
        for (setting, topic) in [
            ("requests_topic", &self.requests_topic),
            ("results_topic", &self.results_topic),
            ("dlq_topic", &self.dlq_topic),
        ] {
            if *topic == self.ledger_topic {
                return Err(SettingError::new(
                    "ledger_topic",
                    format!(
                        "must differ from {setting} (both are {topic:?}): the ledger topic holds only ledger entries"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_their_base_up_to_the_configured_cap() {
        let c = WorkerConfig::default().with_retry_delay_ms_max(300);
        let retry: Vec<u64> = (0..4).map(|a| c.retry_backoff().base_delay_ms(a)).collect();
        assert_eq!(retry, [50, 100, 200, 300]);
        assert_eq!(
            c.produce_backoff().base_delay_ms(0),
            PRODUCE_RETRY_DELAY_MS_BASE
        );
        assert_eq!(c.produce_backoff().base_delay_ms(20), 300);
    }

    #[test]
    fn the_defaults_pass_their_own_rules() {
        assert_eq!(WorkerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn each_broken_rule_names_its_setting() {
        let cases: [(&str, WorkerConfig); 6] = [
            (
                "ledger_topic",
                WorkerConfig {
                    ledger_topic: kafka::TOPIC_RESULTS.to_string(),
                    ..WorkerConfig::default()
                },
            ),
            (
                "threads",
                WorkerConfig {
                    threads: 0,
                    ..WorkerConfig::default()
                },
            ),
            (
                "backlog_bytes_max",
                WorkerConfig {
                    backlog_bytes_max: 10,
                    ..WorkerConfig::default()
                },
            ),
            (
                "partitions",
                WorkerConfig {
                    partitions: 0,
                    ..WorkerConfig::default()
                },
            ),
            (
                "commit_interval_ms",
                WorkerConfig {
                    commit_interval_ms: 0,
                    ..WorkerConfig::default()
                },
            ),
            (
                "max_poll_interval_ms",
                WorkerConfig {
                    max_poll_interval_ms: 5_000,
                    ..WorkerConfig::default()
                },
            ),
        ];
        for (setting, config) in cases {
            assert_eq!(config.validate().unwrap_err().setting, setting);
        }
    }
}
