//! The Kafka pipeline: one consumer thread, a bounded channel, a fixed pool of transfer
//! threads, a delay queue for retries, an idempotent producer for results and dead letters, and
//! safe offset commits.
//!
//! ```text
//! consumer thread: poll -> backlog -> tracker.start -> key gate -> bounded channel -> pool
//!                  (a job whose key (sender) has an earlier job running parks in the gate)
//! pool thread:     decode -> WalletService::transfer_from -> produce result (or dead letter),
//!                  the job rides along as delivery opaque; then the next parked job of its key
//!                  transient error: the job waits in the delay queue, holding its key, no thread
//! retry timer:     due jobs from the delay queue back to the pool
//!                  (a COMPLETED original also publishes its two ledger entries, key = wallet)
//! producer thread: all of a job's messages acknowledged -> tracker.finish;
//!                  one failed -> delay queue (redone from the record); permanent -> stop
//! consumer thread: every commit interval, on revoke and on shutdown: the committer thread
//!                  commits (synchronously, in the order asked) the contiguous watermark of
//!                  each partition (never past an unfinished one, never backwards)
//! ```
//!
//! A message counts as done only once its result (or dead letter) and its ledger entries are
//! acknowledged by the brokers, so a crash at any point leaves its offset uncommitted and it is delivered again;
//! the engine answers the redelivery from its record (ARCHITECTURE.md, "Offsets"). Requests
//! with the same key run one at a time in offset order (`worker::keyed`). What the worker holds
//! without running it (backlog, parked, retrying) is bounded in bytes: at the bound the consumer
//! pauses its partitions and keeps polling (heartbeats and rebalances go on), and resumes at
//! half.
//!
//! A stop has one deadline for everything, `shutdown_timeout_ms` from the first signal, shared
//! out so that no step can starve the last (`stop_phases`): the threads are joined in the first
//! half of the time left, the producer is flushed in the third quarter, and the final commit
//! (`worker::commit`) has the last quarter; what is not done by then stays uncommitted, to be
//! delivered again.
//!
//! This file owns the [`Worker`] (start, shutdown, report): it creates the state the threads
//! share and starts the threads. Does not define that state (`worker::shared`, a leaf the
//! threads use), nor run the threads: the consumer thread is `worker::consumer`, the pool,
//! producer and retry timer `worker::pool`, the committer `worker::commit`, the recovery sweep
//! `worker::sweep`. Owns none of the transfer logic (`engine::transfer`) nor the offset
//! arithmetic (`worker::offsets`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::ThreadedProducer;

use crate::engine::service::WalletService;
use crate::engine::setting::SettingError;
use crate::worker::commit::Committer;
use crate::worker::config::{
    CHANNEL_JOBS_PER_THREAD, COMMIT_SHARE_DIVISOR, DLQ_MESSAGE_BYTES_LIMIT, FETCH_WAIT_MS,
    REQUESTS_RETENTION_MS_DEFAULT, REQUESTS_SEGMENT_MS_DEFAULT, RESULT_LINGER_MS,
    STATS_INTERVAL_MS, WAIT_STEP_MS, WorkerConfig,
};
use crate::worker::consumer::{self, ConsumerCtx, Exit};
use crate::worker::kafka::{self, TopicSpec};
use crate::worker::metrics::Metrics;
use crate::worker::outcome_ttl::{self, Recheck, TopicRetention};
use crate::worker::pool::{self, DeliveryContext, PoolThread};
use crate::worker::shared::{Job, Shared};
use crate::worker::sweep;

/// Why the worker did not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A setting broke its rule; the error names it.
    #[error("invalid worker setting: {0}")]
    Config(#[from] SettingError),
    /// A Kafka client could not be made or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topics could not be created or checked.
    #[error("creating topics: {0}")]
    Admin(#[from] kafka::AdminError),
    /// A worker thread panicked outside a transfer (a bug; a transfer that panics is caught,
    /// retried and dead-lettered at its third panic); its job stays uncommitted and is redone.
    #[error("a transfer thread panicked")]
    ThreadPanicked,
    /// A permanent error (the broker refuses our messages for good, a fatal idempotent
    /// producer error): the worker stopped, committing nothing past the unanswered message.
    #[error("stopped on a permanent error: {0}")]
    Fatal(String),
}

/// What a run did, returned when the worker stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Requests answered, COMPLETED or FAILED, duplicates included (the
    /// `wallet_transfers_total` count of this run).
    pub processed: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Offsets committed at the end, per partition.
    pub committed: Vec<(i32, i64)>,
}

/// The worker. Build it, keep its [`Worker::shutdown_handle`], then [`Worker::run`] it:
///
/// ```no_run
/// use std::sync::atomic::Ordering;
/// use wallet_transfer::worker::Metrics;
/// use wallet_transfer::worker::{Worker, WorkerConfig};
/// use wallet_transfer::{EngineConfig, WalletService};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = WorkerConfig::default().with_threads(4);
/// let service = WalletService::connect("redis://127.0.0.1:6379", 4, EngineConfig::default())?;
/// let worker = Worker::new(config, service, Metrics::new())?;
/// let stop = worker.shutdown_handle();
/// let running = std::thread::spawn(move || worker.run());
/// // ... later, from anywhere (a signal handler, an admin endpoint):
/// stop.store(true, Ordering::SeqCst);
/// let report = running.join().expect("worker thread")?;
/// println!("{} answered", report.processed);
/// # Ok(())
/// # }
/// ```
///
/// See `examples/worker.rs` for a whole program.
pub struct Worker {
    shared: Arc<Shared>,
    service: WalletService,
}

impl Worker {
    /// A worker over `service` with `config` (validated here), counting into `metrics`
    /// (serve them with [`crate::worker::serve`], or not). Connects to nothing yet:
    /// [`Worker::run`] creates the topics, subscribes and starts the threads.
    pub fn new(
        config: WorkerConfig,
        service: WalletService,
        metrics: Metrics,
    ) -> Result<Worker, WorkerError> {
        config.validate()?;
        Ok(Worker {
            shared: Shared::new(config, metrics),
            service,
        })
    }

    /// Set it to true to stop: polling stops, in-flight jobs finish, the producer is flushed,
    /// offsets are committed, and [`Worker::run`] returns.
    pub fn shutdown_handle(&self) -> Arc<AtomicBool> {
        self.shared.shutdown.clone()
    }

    /// Runs until the shutdown handle is set (or a permanent error stops it). Blocking.
    pub fn run(mut self) -> Result<WorkerReport, WorkerError> {
        self.ensure_topics()?;
        let ttl_watch = self.settle_outcome_ttl()?;
        let config = &self.shared.config;
        let (redo_tx, redo_rx) = crossbeam_channel::unbounded::<Job>();
        let producer = Arc::new(self.result_producer()?);
        // A watermark that stands still with work for as long as Kafka lets a consumer go
        // without polling is reported as a stall (readiness, `wallet_watermark_stalled_seconds`).
        self.shared
            .metrics
            .health()
            .set_stall_limit(Duration::from_millis(config.max_poll_interval_ms));
        let committer = Committer::start(self.shared.clone());
        let mut consumer = self.subscribe(&committer)?;
        self.watch_for_stop();
        log::info!(
            "worker up: group {} consuming {} with {} transfer threads; results to {}, ledger entries to {}, dead letters to {}",
            config.group_id,
            config.requests_topic,
            config.threads,
            config.results_topic,
            config.ledger_topic,
            config.dlq_topic
        );
        let timer = pool::spawn_retry_timer(self.shared.clone(), redo_tx);
        let (job_tx, threads) = self.spawn_pool(&producer, redo_rx);
        let sweeper = sweep::spawn(self.shared.clone(), self.service.clone());
        let ttl_watch = ttl_watch.map(|watch| spawn_ttl_watch(self.shared.clone(), watch));
        while let Exit::JoinStuck = consumer::consume(&self.shared, &consumer, &job_tx, &committer)
        {
            log::warn!(
                "joining group {} has not completed within {} ms (the rebalance timeout plus the session timeout); rejoining as a new member",
                config.group_id,
                config.join_stuck_ms()
            );
            // Join with the new member before the old one leaves: a coordinator that left the
            // old join hanging (tansu) completes it once another member arrives.
            let fresh = self.subscribe(&committer)?;
            let stale = std::mem::replace(&mut consumer, fresh);
            // Closing the stale member talks to the coordinator: not on this thread.
            std::thread::spawn(move || drop(stale));
        }
        // Shutdown, all of it within the stop deadline: no new jobs; the pool finishes what it
        // can, the producer delivers what it can, the watermark of what was acknowledged is
        // committed; whatever is left stays uncommitted for the partitions' next owner. Each
        // step has its share of the time left, so a thread that never returns cannot leave the
        // final commit without time.
        let deadline = self.shared.begin_stop();
        let (join_by, flush_by) = stop_phases(Instant::now(), deadline);
        log::info!(
            "shutting down: finishing in-flight jobs (at most {} ms)",
            join_by
                .saturating_duration_since(Instant::now())
                .as_millis()
        );
        drop(job_tx);
        let all: Vec<_> = threads
            .into_iter()
            .chain(std::iter::once(timer))
            .chain(sweeper)
            .chain(ttl_watch)
            .collect();
        let (panicked, running) = join_until(all, join_by);
        if running > 0 {
            log::warn!(
                "{running} threads still busy at their share of the stop deadline (a Redis or broker call that does not return); leaving them"
            );
        }
        self.finish(producer, consumer, &committer, flush_by, panicked)
    }

    /// Starts the stop clock as soon as the shutdown handle is set (a signal), not when the
    /// consumer thread gets to notice.
    fn watch_for_stop(&self) {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("stop-watch".into())
            .spawn(move || {
                while !shared.shutdown.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(WAIT_STEP_MS));
                }
                shared.begin_stop();
            })
            .expect("spawn stop watch");
    }

    /// Creates the topics that are missing; the requests topic with its retention and a
    /// one-day segment (`outcome_ttl`), the dead-letter topic with a message size that
    /// fits the largest dead letter, the ledger topic kept for ever (`retention.ms=-1`: it is
    /// the durable ledger; Redis keeps only each wallet's last entries).
    fn ensure_topics(&self) -> Result<(), WorkerError> {
        let config = &self.shared.config;
        let dlq_bytes = DLQ_MESSAGE_BYTES_LIMIT.to_string();
        let requests_retention = REQUESTS_RETENTION_MS_DEFAULT.to_string();
        let requests_segment = REQUESTS_SEGMENT_MS_DEFAULT.to_string();
        kafka::ensure_topics(
            &config.kafka,
            &[
                TopicSpec::new(&config.requests_topic)
                    .with("retention.ms", &requests_retention)
                    .with("segment.ms", &requests_segment),
                TopicSpec::new(&config.results_topic),
                TopicSpec::new(&config.dlq_topic).with("max.message.bytes", &dlq_bytes),
                TopicSpec::new(&config.ledger_topic).with("retention.ms", "-1"),
            ],
            config.partitions,
            config.replication,
        )?;
        Ok(())
    }

    /// Settles how long outcome records live, from the requests topic's `retention.ms`,
    /// `segment.ms` and `cleanup.policy` (read from the brokers; the rule is
    /// `worker::outcome_ttl`): an engine ttl set by hand must cover them plus the margin
    /// (refused otherwise: a request redelivered after its record expired would move the money
    /// again); with none set and `outcome_ttl_auto`, the ttl becomes exactly that (records are
    /// kept for ever when the topic keeps its messages for ever; a compacted topic is refused).
    /// Returns what the ttl watch follows while running, when records expire.
    fn settle_outcome_ttl(&mut self) -> Result<Option<TtlWatch>, WorkerError> {
        let config = &self.shared.config;
        let set = self.service.config().outcome_ttl_ms;
        if set.is_none() && !config.outcome_ttl_auto {
            log::info!("outcome records are kept for ever (outcome ttl: forever)");
            return Ok(None);
        }
        let topic = &config.requests_topic;
        let retention = kafka::topic_retention(&config.kafka, topic).map_err(|e| {
            SettingError::new(
                "outcome_ttl_ms",
                format!(
                    "cannot be checked against the retention of {topic}: {e}; without that check a redelivery after the record expired would move the money again (set the ttl to forever to run without it)"
                ),
            )
        })?;
        let margin_ms = config.outcome_ttl_margin_ms;
        if let Some(ttl_ms) = set {
            outcome_ttl::check_set_ttl(ttl_ms, &retention, margin_ms, topic)?;
            self.shared.outcome_ttl.start(set);
            return Ok(Some(TtlWatch {
                by_hand: true,
                seen: retention,
            }));
        }
        let Some(ttl_ms) = outcome_ttl::derive(&retention, margin_ms, topic)? else {
            kept_for_ever(&retention, topic);
            return Ok(None);
        };
        self.service.config.outcome_ttl_ms = Some(ttl_ms);
        self.shared.outcome_ttl.start(Some(ttl_ms));
        // The records now expire: the user needs PEXPIRE too.
        self.service
            .check_permissions()
            .map_err(|e| WorkerError::Fatal(e.to_string()))?;
        log::info!(
            "outcome records expire after {ttl_ms} ms: the retention of {topic} ({:?} ms) plus a whole segment ({} ms) plus the margin ({margin_ms} ms)",
            retention.retention_ms,
            retention.segment_ms_counted()
        );
        Ok(Some(TtlWatch {
            by_hand: false,
            seen: retention,
        }))
    }

    /// The idempotent producer of results and dead letters.
    fn result_producer(&self) -> Result<ThreadedProducer<DeliveryContext>, WorkerError> {
        let producer = self
            .shared
            .config
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", RESULT_LINGER_MS.to_string())
            .create_with_context(DeliveryContext {
                shared: self.shared.clone(),
            })?;
        Ok(producer)
    }

    /// Starts the transfer threads; returns the sender of the channel they drain.
    fn spawn_pool(
        &self,
        producer: &Arc<ThreadedProducer<DeliveryContext>>,
        redo: Receiver<Job>,
    ) -> (Sender<Job>, Vec<std::thread::JoinHandle<()>>) {
        let threads = self.shared.config.threads;
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(threads * CHANNEL_JOBS_PER_THREAD);
        let pool = (0..threads)
            .map(|i| {
                let ctx = PoolThread {
                    shared: self.shared.clone(),
                    service: self.service.clone(),
                    producer: producer.clone(),
                    jobs: job_rx.clone(),
                    redo: redo.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("transfer-{i}"))
                    .spawn(move || ctx.run())
                    .expect("spawn transfer thread")
            })
            .collect();
        (job_tx, pool)
    }

    /// A consumer in the group, subscribed to the requests topic, committing through
    /// `committer`.
    fn subscribe(
        &self,
        committer: &Committer<ConsumerCtx>,
    ) -> Result<Arc<BaseConsumer<ConsumerCtx>>, WorkerError> {
        let config = &self.shared.config;
        *self.shared.join_wait_since.lock() = None;
        self.shared.metrics.health().set_joining();
        let mut consumer_config = config.kafka.client_config();
        if !config.kafka.has_property("fetch.wait.max.ms") {
            // A broker that does not answer a waiting fetch as soon as data arrives (tansu)
            // would otherwise add up to librdkafka's default 500 ms to every request.
            consumer_config.set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string());
        }
        let consumer: BaseConsumer<ConsumerCtx> = consumer_config
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                "max.poll.interval.ms",
                config.max_poll_interval_ms.to_string(),
            )
            .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string())
            .create_with_context(ConsumerCtx {
                shared: self.shared.clone(),
                committer: committer.clone(),
                consumer: std::sync::OnceLock::new(),
            })?;
        let consumer = Arc::new(consumer);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        consumer.subscribe(&[&config.requests_topic])?;
        Ok(consumer)
    }

    /// After the pool has stopped (or its share of the time is over): flush the producer until
    /// `flush_by` and commit the final watermark in the time left; report what was left.
    fn finish(
        &self,
        producer: Arc<ThreadedProducer<DeliveryContext>>,
        consumer: Arc<BaseConsumer<ConsumerCtx>>,
        committer: &Committer<ConsumerCtx>,
        flush_by: Instant,
        panicked: bool,
    ) -> Result<WorkerReport, WorkerError> {
        use rdkafka::producer::Producer;
        let flush = Duration::from_millis(self.shared.config.flush_timeout_ms)
            .min(flush_by.saturating_duration_since(Instant::now()));
        if let Err(e) = producer.flush(flush) {
            log::warn!("producer flush: {e}; undelivered results stay uncommitted and are redone");
        }
        let positions = self.shared.tracker.lock().positions();
        let deadline = Instant::now() + self.shared.time_left();
        let committed = if pool::failpoint("final-commit-skipped") {
            None
        } else {
            committer.commit_by(&consumer, positions, deadline)
        };
        let committed = committed.unwrap_or_else(|| {
            log::warn!("the final commit did not finish by the stop deadline; uncommitted messages are redelivered and answered from their records");
            Vec::new()
        });
        if committed.is_empty() && !self.shared.tracker.lock().positions().is_empty() {
            log::warn!(
                "nothing was committed at the end; uncommitted messages are redelivered and answered from their records"
            );
        }
        // Closing the consumer and the producer talks to the brokers: wait for it only as long
        // as the deadline allows (so that what it logs comes before the final line when it can).
        let (closed_tx, closed_rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::spawn(move || {
            drop((producer, consumer));
            let _ = closed_tx.send(());
        });
        let _ = closed_rx.recv_timeout(self.shared.time_left());
        let summary = self.shared.metrics.summary();
        let report = WorkerReport {
            processed: summary.processed,
            dead_lettered: summary.dlq,
            committed,
        };
        let (abandoned, uncommitted) = {
            let tracker = self.shared.tracker.lock();
            let uncommitted: Vec<(i32, i64)> = tracker
                .positions()
                .into_iter()
                .filter(|(p, _)| tracker.in_flight(*p) > 0)
                .collect();
            (tracker.in_flight_total(), uncommitted)
        };
        log::info!(
            "stopped: {} processed, {} dead-lettered, committed {:?}; {abandoned} jobs abandoned, uncommitted from (partition, offset) {uncommitted:?} for the next owner",
            report.processed,
            report.dead_lettered,
            report.committed
        );
        if let Some(e) = self.shared.fatal_setting.lock().take() {
            return Err(WorkerError::Config(e));
        }
        if let Some(reason) = self.shared.fatal.lock().clone() {
            return Err(WorkerError::Fatal(reason));
        }
        if panicked {
            return Err(WorkerError::ThreadPanicked);
        }
        Ok(report)
    }
}

/// How a stop shares the time left until its `deadline`: the threads are joined until the
/// first returned instant (half of it), the producer is flushed until the second (a quarter),
/// and the final commit has the last quarter. Pure.
pub(crate) fn stop_phases(now: Instant, deadline: Instant) -> (Instant, Instant) {
    let left = deadline.saturating_duration_since(now);
    let share = left / COMMIT_SHARE_DIVISOR;
    (now + left - 2 * share, now + left - share)
}

/// Joins the threads that finish by `deadline`; the others are left running (detached).
/// Returns whether a joined one panicked, and how many were left.
fn join_until(threads: Vec<JoinHandle<()>>, deadline: Instant) -> (bool, usize) {
    let mut pending = threads;
    let mut panicked = false;
    loop {
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| t.is_finished());
        panicked |= done.into_iter().any(|t| t.join().is_err());
        pending = rest;
        if pending.is_empty() || Instant::now() >= deadline {
            return (panicked, pending.len());
        }
        std::thread::sleep(Duration::from_millis(WAIT_STEP_MS));
    }
}

/// What the ttl watch follows: whether the ttl was set by hand (checked, never changed) or
/// derived (raised when the topic needs more), and the topic's configs as last read.
struct TtlWatch {
    by_hand: bool,
    seen: TopicRetention,
}

/// Derived records kept for ever: the topic keeps its messages for ever, or does not report
/// its retention (then no ttl can be derived; the safe side: a record that outlives its
/// request costs memory, one that dies before it could let the money move again).
fn kept_for_ever(retention: &TopicRetention, topic: &str) {
    match retention.retention_ms {
        Some(ms) => log::info!(
            "outcome records are kept for ever: {topic} keeps its messages for ever (retention.ms {ms})"
        ),
        None => log::warn!(
            "outcome records are kept for ever: the brokers do not report the retention.ms of {topic}, so no ttl can be derived from it (set retention.ms on the topic, or --outcome-ttl-ms); Redis memory grows with every request"
        ),
    }
}

/// The ttl watch: reads the requests topic's configs every `outcome_ttl_check_interval_ms`
/// until a stop begins, and acts on them ([`recheck_ttl`]).
fn spawn_ttl_watch(shared: Arc<Shared>, mut watch: TtlWatch) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("ttl-watch".into())
        .spawn(move || {
            let interval = Duration::from_millis(shared.config.outcome_ttl_check_interval_ms);
            while sleep_unless_stopping(&shared, interval) {
                recheck_ttl(&shared, &mut watch);
            }
        })
        .expect("spawn ttl watch")
}

/// Sleeps for `interval` in short steps; false as soon as a stop has begun.
fn sleep_unless_stopping(shared: &Shared, interval: Duration) -> bool {
    let until = Instant::now() + interval;
    loop {
        if shared.shutdown.load(Ordering::SeqCst) || shared.stop_deadline().is_some() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(WAIT_STEP_MS)));
    }
}

/// One look at the requests topic while running: a change is logged; a derived ttl that must
/// grow is raised for new records (requests stay judged against the ttl the run started
/// with: records written before still expire after it); a ttl that no longer covers the
/// topic and may not grow stops the worker. A failed read keeps the ttl in force.
fn recheck_ttl(shared: &Shared, watch: &mut TtlWatch) {
    let config = &shared.config;
    let topic = &config.requests_topic;
    let retention = match kafka::topic_retention(&config.kafka, topic) {
        Ok(retention) => retention,
        Err(e) => {
            log::warn!(
                "outcome ttl: cannot read the configs of {topic} again ({e}); keeping the ttl in force"
            );
            return;
        }
    };
    if retention != watch.seen {
        log::info!("{topic} changed: {:?} -> {retention:?}", watch.seen);
        watch.seen = retention;
    }
    let Some(ttl_ms) = shared.outcome_ttl.record_ms() else {
        return;
    };
    let margin_ms = config.outcome_ttl_margin_ms;
    match outcome_ttl::recheck(ttl_ms, watch.by_hand, &retention, margin_ms, topic) {
        Recheck::Keep => {}
        Recheck::Raise { to_ms, why } => {
            let before = shared.outcome_ttl.raise(to_ms);
            log::info!(
                "outcome ttl raised from {before} ms to {to_ms} ms for new records: {topic} now needs {why}; requests are still judged against the {:?} ms this run started with (records written before still expire after it)",
                shared.outcome_ttl.judge_ms()
            );
        }
        Recheck::Stop(e) => {
            shared.fail(format!("invalid worker setting: {e}"));
            shared.fatal_setting.lock().get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_keeps_a_quarter_of_the_time_left_for_the_final_commit() {
        let now = Instant::now();
        let (join_by, flush_by) = stop_phases(now, now + Duration::from_secs(10));
        assert_eq!(join_by - now, Duration::from_secs(5));
        assert_eq!(flush_by - now, Duration::from_millis(7_500));
        // Later in the stop (a revoke took time), the shares are of what is left.
        let (join_by, flush_by) = stop_phases(now, now + Duration::from_secs(2));
        assert_eq!(
            (join_by - now, flush_by - now),
            (Duration::from_secs(1), Duration::from_millis(1_500))
        );
        // Past the deadline: nothing is left for anyone.
        assert_eq!(
            stop_phases(now + Duration::from_secs(1), now),
            (now + Duration::from_secs(1), now + Duration::from_secs(1))
        );
    }
}
