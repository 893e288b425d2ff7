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
//! This file owns the [`Worker`] (start, shutdown, report) and the state its threads share. The
//! consumer thread is `worker::consumer`, the pool, producer and retry timer `worker::pool`.
//! Owns none of the transfer logic (`engine::transfer`) nor the offset arithmetic
//! (`worker::offsets`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::ThreadedProducer;

use crate::engine::service::WalletService;
use crate::engine::setting::SettingError;
use crate::worker::commit::Committer;
use crate::worker::config::{
    CHANNEL_JOBS_PER_THREAD, COMMIT_SHARE_DIVISOR, DLQ_MESSAGE_BYTES_LIMIT, FETCH_WAIT_MS,
    REQUESTS_RETENTION_MS_DEFAULT, REQUESTS_SEGMENT_MS_DEFAULT, RESULT_LINGER_MS,
    STATS_INTERVAL_MS, WAIT_STEP_MS, WARN_INTERVAL_MS, WorkerConfig,
};
use crate::worker::consumer::{self, ConsumerCtx, Exit};
use crate::worker::kafka::{self, TopicSpec};
use crate::worker::keyed::{KeyGate, Keyed};
use crate::worker::metrics::Metrics;
use crate::worker::offsets::OffsetTracker;
use crate::worker::outcome_ttl::{self, LiveTtl, Recheck, TopicRetention};
use crate::worker::pool::{self, DeliveryContext, PoolThread};
use crate::worker::retry::RetryQueue;
use crate::worker::sweep;
use crate::worker::warnings::Warnings;

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

/// One consumed message and where it is on its way through the worker.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The message's timestamp (ms since the epoch), when it has one.
    pub timestamp_ms: Option<i64>,
    /// The assignment generation it was consumed in (see [`Generations`]).
    pub generation: u64,
    /// Holds its key in the gate until its transfer is answered.
    pub holds_key: bool,
    /// Transient transfer errors so far, for the backoff.
    pub transient_failures: u32,
    /// Failed deliveries of its answer so far, for the backoff.
    pub publish_failures: u32,
    /// Tries of its transfer that panicked so far (a bug); at `PANICS_PER_JOB_LIMIT` it is
    /// dead-lettered.
    pub panics: u32,
    /// When it first failed, while it is retrying.
    pub retrying_since: Option<Instant>,
    /// Set when its answer went to the dead-letter topic.
    pub dead_lettered: bool,
    /// When its answer was handed to the producer, for the ack stage.
    pub handed_at: Option<Instant>,
}

impl Job {
    pub fn new(partition: i32, offset: i64, key: Option<Vec<u8>>, payload: Vec<u8>) -> Job {
        Job {
            partition,
            offset,
            key,
            payload,
            timestamp_ms: None,
            generation: 0,
            holds_key: false,
            transient_failures: 0,
            publish_failures: 0,
            panics: 0,
            retrying_since: None,
            dead_lettered: false,
            handed_at: None,
        }
    }

    /// Failures of every cause so far (transfer errors, failed deliveries, panics): the
    /// attempt number of its backoff.
    pub fn failures(&self) -> u32 {
        self.transient_failures
            .saturating_add(self.publish_failures)
            .saturating_add(self.panics)
    }

    /// Memory it holds, for the bound on what the worker holds (payload, key, bookkeeping).
    pub fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + 64
    }
}

impl Keyed for Job {
    fn partition(&self) -> i32 {
        self.partition
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn size(&self) -> usize {
        Job::size(self)
    }
}

/// Messages polled and not yet dispatched, in offset order per partition, with their size.
#[derive(Default)]
pub(crate) struct Backlog {
    pub jobs: VecDeque<Job>,
    pub bytes: usize,
}

impl Backlog {
    pub fn push(&mut self, job: Job) {
        self.bytes += job.size();
        self.jobs.push_back(job);
    }

    pub fn pop(&mut self) -> Option<Job> {
        let job = self.jobs.pop_front()?;
        self.bytes -= job.size();
        Some(job)
    }

    /// Drops the jobs of `partitions`; returns how many.
    pub fn drop_partitions(&mut self, partitions: &HashSet<i32>) -> usize {
        let before = self.jobs.len();
        self.jobs.retain(|job| !partitions.contains(&job.partition));
        self.bytes = self.jobs.iter().map(Job::size).sum();
        before - self.jobs.len()
    }
}

/// Assignment generations: a revoke starts a new one, and a job consumed before its
/// partition's latest revoke is stale: it is abandoned wherever it is met (channel, delay
/// queue, gate, a failed delivery), staying uncommitted for the partition's next owner.
///
/// A revoke waits until its partitions' in-flight offsets are finished or abandoned, so only
/// jobs of the assignment it takes away may count as its abandoned ones: a job of an older
/// assignment (consumed before the revoke before it, whose offsets the tracker has forgotten)
/// met late is abandoned without being counted, or it would end the wait while a job of the
/// current assignment still runs.
#[derive(Debug, Default)]
pub(crate) struct Generations {
    current: u64,
    revoked_at: HashMap<i32, u64>,
    /// The revoke before the latest one, per partition: jobs consumed from it on are those of
    /// the assignment the latest revoke takes away.
    revoked_before: HashMap<i32, u64>,
    /// Abandoned jobs of the assignment each partition's latest revoke takes away.
    abandoned: HashMap<i32, usize>,
}

impl Generations {
    pub fn current(&self) -> u64 {
        self.current
    }

    pub fn is_stale(&self, job: &Job) -> bool {
        self.revoked_at
            .get(&job.partition)
            .is_some_and(|revoked| *revoked > job.generation)
    }

    /// Starts a new generation in which `partitions` are revoked.
    pub fn revoke(&mut self, partitions: &HashSet<i32>) {
        self.current += 1;
        for p in partitions {
            let before = self.revoked_at.insert(*p, self.current).unwrap_or(0);
            self.revoked_before.insert(*p, before);
            self.abandoned.insert(*p, 0);
        }
    }

    /// Notes that the stale `job` was dropped; counted for its partition's latest revoke only
    /// when it belongs to the assignment that revoke takes away.
    pub fn abandon(&mut self, job: &Job) {
        let since = self
            .revoked_before
            .get(&job.partition)
            .copied()
            .unwrap_or(0);
        if job.generation >= since {
            *self.abandoned.entry(job.partition).or_default() += 1;
        }
    }

    /// Abandoned jobs of the assignment `partition`'s latest revoke takes away.
    pub fn abandoned(&self, partition: i32) -> usize {
        self.abandoned.get(&partition).copied().unwrap_or(0)
    }

    /// Abandons `job` if it is stale; true when it was.
    pub fn abandon_if_stale(&mut self, job: &Job) -> bool {
        let stale = self.is_stale(job);
        if stale {
            self.abandon(job);
        }
        stale
    }
}

/// State shared by the consumer thread, its rebalance callbacks, the pool, the retry timer and
/// the producer. Locks are never nested except backlog -> tracker and backlog -> gate.
pub(crate) struct Shared {
    pub config: WorkerConfig,
    pub tracker: Mutex<OffsetTracker>,
    pub backlog: Mutex<Backlog>,
    pub gate: Mutex<KeyGate<Job>>,
    pub retries: Mutex<RetryQueue<Job>>,
    /// Wakes the retry timer when a job is queued.
    pub retry_wake: Condvar,
    pub generations: Mutex<Generations>,
    pub assignment_changed: AtomicBool,
    /// Since when librdkafka's statistics have shown the group join waiting for an answer.
    pub join_wait_since: Mutex<Option<Instant>>,
    pub metrics: Metrics,
    pub shutdown: Arc<AtomicBool>,
    /// The permanent error that stopped the worker, if any.
    pub fatal: Mutex<Option<String>>,
    /// Lock keys already reported as held without a ttl (logged and counted once each).
    pub no_ttl_reported: Mutex<HashSet<String>>,
    /// When the worker must have stopped: set once, at the first sign of a stop.
    pub stop_deadline: Mutex<Option<Instant>>,
    /// Set while result deliveries fail (the brokers are away): no new jobs are dispatched.
    pub delivery_failing: AtomicBool,
    /// Since when deliveries have failed because their topic does not exist (none acknowledged
    /// since); see `TOPIC_MISSING_MS_LIMIT`.
    pub topic_missing_since: Mutex<Option<Instant>>,
    /// Warnings that could repeat once per message during an outage.
    pub warnings: Warnings,
    /// The outcome ttls the transfer threads use: set at start, raised by the ttl watch.
    pub outcome_ttl: LiveTtl,
    /// The setting that stopped the worker while running (a ttl that no longer covers the
    /// requests topic): [`Worker::run`] returns it as it would at start.
    pub fatal_setting: Mutex<Option<SettingError>>,
}

/// Most lock keys remembered as reported without a ttl; past it they are logged again.
pub(crate) const NO_TTL_REPORTED_LIMIT: usize = 10_000;

impl Shared {
    /// The state of a worker that has not started: no partitions, no jobs, no stop.
    pub fn new(config: WorkerConfig, metrics: Metrics) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            tracker: Mutex::new(OffsetTracker::new()),
            backlog: Mutex::new(Backlog::default()),
            gate: Mutex::new(KeyGate::default()),
            retries: Mutex::new(RetryQueue::default()),
            retry_wake: Condvar::new(),
            generations: Mutex::new(Generations::default()),
            assignment_changed: AtomicBool::new(false),
            join_wait_since: Mutex::new(None),
            metrics,
            shutdown: Arc::new(AtomicBool::new(false)),
            fatal: Mutex::new(None),
            no_ttl_reported: Mutex::new(HashSet::new()),
            stop_deadline: Mutex::new(None),
            delivery_failing: AtomicBool::new(false),
            topic_missing_since: Mutex::new(None),
            warnings: Warnings::new(WARN_INTERVAL_MS),
            outcome_ttl: LiveTtl::default(),
            fatal_setting: Mutex::new(None),
        })
    }

    /// Stops the worker on a permanent error: the first reason is kept and reported by
    /// [`Worker::run`].
    pub fn fail(&self, reason: String) {
        self.begin_stop();
        log::error!(
            "{reason}; stopping the worker (nothing past the unanswered message is committed)"
        );
        self.metrics.health().set_fatal(reason.clone());
        self.fatal.lock().get_or_insert(reason);
        self.shutdown.store(true, Ordering::SeqCst);
    }

    /// Starts the shutdown clock (once): the worker must have stopped by
    /// `shutdown_timeout_ms` from now.
    pub fn begin_stop(&self) -> Instant {
        let timeout = Duration::from_millis(self.config.shutdown_timeout_ms);
        *self
            .stop_deadline
            .lock()
            .get_or_insert_with(|| Instant::now() + timeout)
    }

    /// The stop deadline, once a stop has begun.
    pub fn stop_deadline(&self) -> Option<Instant> {
        *self.stop_deadline.lock()
    }

    /// Time left until the stop deadline (the full timeout when no stop has begun).
    pub fn time_left(&self) -> Duration {
        match *self.stop_deadline.lock() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(self.config.shutdown_timeout_ms),
        }
    }

    /// Whether a stop has begun and its deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.stop_deadline
            .lock()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Bytes held without running: backlog, parked behind a key, waiting to retry.
    pub fn held_bytes(&self) -> usize {
        let backlog = self.backlog.lock().bytes;
        let parked = self.gate.lock().parked_bytes();
        let retrying = self.retries.lock().bytes();
        backlog + parked + retrying
    }
}

/// The worker. Build it, keep its [`Worker::shutdown_handle`], then [`Worker::run`] it:
///
/// ```no_run
/// use std::sync::atomic::Ordering;
/// use wallet_transfer::worker::metrics::Metrics;
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
    /// (serve them with [`crate::worker::metrics::serve`], or not). Connects to nothing yet:
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
        committer: &Committer,
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
        committer: &Committer,
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
        let committed = committer
            .commit_by(&consumer, positions, deadline)
            .unwrap_or_else(|| {
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

/// A job for unit tests: key `k`, a payload of `payload_len` bytes.
#[cfg(test)]
pub(crate) fn test_job(partition: i32, offset: i64, payload_len: usize) -> Job {
    Job::new(
        partition,
        offset,
        Some(b"k".to_vec()),
        vec![b'x'; payload_len],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::worker::pipeline::test_job as job;

    #[test]
    fn the_backlog_counts_its_bytes_through_push_pop_and_revoke() {
        let mut backlog = Backlog::default();
        for (p, o, n) in [(0, 10, 100), (1, 5, 1_000), (0, 11, 10), (2, 7, 50)] {
            backlog.push(job(p, o, n));
        }
        let sizes: usize = [100, 1_000, 10, 50].iter().map(|n| n + 1 + 64).sum();
        assert_eq!(backlog.bytes, sizes);
        let first = backlog.pop().unwrap();
        assert_eq!((first.partition, first.offset), (0, 10));
        assert_eq!(backlog.bytes, sizes - (100 + 1 + 64));
        assert_eq!(backlog.drop_partitions(&HashSet::from([1])), 1);
        assert_eq!(backlog.bytes, (10 + 1 + 64) + (50 + 1 + 64));
        let order: Vec<(i32, i64)> = std::iter::from_fn(|| backlog.pop())
            .map(|j| (j.partition, j.offset))
            .collect();
        assert_eq!(order, vec![(0, 11), (2, 7)]);
        assert_eq!(backlog.bytes, 0);
    }

    #[test]
    fn a_job_consumed_before_its_partition_was_revoked_is_stale() {
        let mut g = Generations::default();
        let mut old = job(0, 1, 1);
        old.generation = g.current();
        g.revoke(&HashSet::from([0]));
        assert!(g.is_stale(&old));
        let mut other = job(1, 1, 1);
        other.generation = 0;
        assert!(!g.is_stale(&other), "partition 1 was not revoked");
        let mut fresh = job(0, 2, 1);
        fresh.generation = g.current();
        assert!(!g.is_stale(&fresh), "consumed after the revoke");
        g.abandon(&old);
        g.abandon(&old);
        assert_eq!(g.abandoned(0), 2);
        g.revoke(&HashSet::from([0]));
        assert_eq!(g.abandoned(0), 0, "a new revoke counts afresh");
    }

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

    /// ABA: a job of the first assignment of partition 0, met after the partition came back and
    /// was revoked again, must not count for the second revoke, or its wait would end while
    /// the second assignment's job still runs.
    #[test]
    fn a_job_of_an_older_assignment_never_counts_for_a_later_revoke() {
        let mut g = Generations::default();
        let mut first = job(0, 10, 1);
        first.generation = g.current();
        g.revoke(&HashSet::from([0]));
        // Partition 0 comes back; a job of the second assignment starts.
        let mut second = job(0, 10, 1);
        second.generation = g.current();
        g.revoke(&HashSet::from([0]));
        assert!(g.is_stale(&first) && g.is_stale(&second));
        // The first assignment's job is met late (a failed delivery, a retry coming due).
        assert!(g.abandon_if_stale(&first));
        assert_eq!(g.abandoned(0), 0, "not one of the second revoke's jobs");
        assert!(g.abandon_if_stale(&second));
        assert_eq!(g.abandoned(0), 1);
        let mut third = job(0, 11, 1);
        third.generation = g.current();
        assert!(!g.abandon_if_stale(&third), "consumed after the revoke");
    }
}
