//! The Kafka pipeline: one consumer thread, a bounded channel, a fixed pool of transfer
//! threads, an idempotent producer for results and dead letters, and safe offset commits.
//!
//! ```text
//! consumer thread: poll -> backlog -> (tracker.start) -> bounded channel -> pool thread
//! pool thread:     decode -> WalletService::transfer (transient errors: back off, retry)
//!                  -> produce result (or dead letter), the job rides along as delivery opaque
//! producer thread: delivery acknowledged -> tracker.finish(partition, offset)
//! consumer thread: every commit interval, on revoke and on shutdown: commit (synchronously)
//!                  the contiguous watermark of each partition (never past an unfinished one)
//! ```
//!
//! A message counts as done only once its result (or dead letter) is acknowledged by the
//! brokers, so a crash at any point leaves its offset uncommitted and it is delivered again;
//! the engine's idempotency turns the replay into the recorded answer. The backlog is bounded in
//! bytes: when it is full the consumer pauses its partitions and keeps polling (heartbeats and
//! rebalances go on), and resumes at half. A group join that hangs past any legitimate
//! rebalance is retried with a fresh member. Owns none of the transfer logic (`transfer`) nor the offset arithmetic
//! (`worker::offsets`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::backoff::Backoff;
use crate::engine::message::{Decoded, FailureReason, TransferCompleted, decode};
use crate::engine::service::WalletService;
use crate::engine::setting::SettingError;
use crate::engine::transfer::{TransferError, TransferOutcome};
use crate::worker::config::{
    BUSY_POLL_MS, CHANNEL_JOBS_PER_THREAD, DLQ_HEADERS_BYTES_LIMIT, DLQ_PAYLOAD_BYTES_LIMIT,
    FETCH_WAIT_MS, POLL_MS, PRODUCE_RETRY_DELAY_MS_BASE, RESULT_LINGER_MS, RETRY_DELAY_MS_BASE,
    STATS_INTERVAL_MS, WAIT_STEP_MS, WorkerConfig,
};
use crate::worker::kafka;
use crate::worker::metrics::Metrics;
use crate::worker::offsets::OffsetTracker;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker setting: {0}")]
    Config(#[from] SettingError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topics: {0}")]
    Admin(#[from] kafka::AdminError),
    #[error("a transfer thread panicked")]
    ThreadPanicked,
}

/// What a run did, returned when the worker stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub processed: u64,
    pub dead_lettered: u64,
    /// Offsets committed at the end, per partition.
    pub committed: Vec<(i32, i64)>,
}

/// One consumed message.
#[derive(Debug, Clone)]
struct Job {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Set when its answer went to the dead-letter topic.
    dead_lettered: bool,
}

impl Job {
    /// Memory it holds, for the backlog bound (payload, key, bookkeeping).
    fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + 64
    }
}

/// State shared by the consumer thread, its rebalance callbacks, the pool and the producer.
struct Shared {
    config: WorkerConfig,
    tracker: Mutex<OffsetTracker>,
    backlog: Mutex<Backlog>,
    assignment_changed: AtomicBool,
    /// Since when librdkafka's statistics have shown the group join waiting for an answer.
    join_wait_since: Mutex<Option<Instant>>,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
}

/// The worker. Build it, keep its [`Worker::shutdown_handle`], then [`Worker::run`] it.
pub struct Worker {
    shared: Arc<Shared>,
    service: WalletService,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        service: WalletService,
        metrics: Metrics,
    ) -> Result<Worker, WorkerError> {
        config.validate()?;
        Ok(Worker {
            shared: Arc::new(Shared {
                config,
                tracker: Mutex::new(OffsetTracker::new()),
                backlog: Mutex::new(Backlog::default()),
                assignment_changed: AtomicBool::new(false),
                join_wait_since: Mutex::new(None),
                metrics,
                shutdown: Arc::new(AtomicBool::new(false)),
            }),
            service,
        })
    }

    /// Set it to true to stop: polling stops, in-flight jobs finish, the producer is flushed,
    /// offsets are committed, and [`Worker::run`] returns.
    pub fn shutdown_handle(&self) -> Arc<AtomicBool> {
        self.shared.shutdown.clone()
    }

    /// Runs until the shutdown handle is set. Blocking.
    pub fn run(self) -> Result<WorkerReport, WorkerError> {
        let config = &self.shared.config;
        kafka::ensure_topics(
            &config.kafka,
            &[
                &config.requests_topic,
                &config.results_topic,
                &config.dlq_topic,
            ],
            config.partitions,
            config.replication,
        )?;
        let (redo_tx, redo_rx) = crossbeam_channel::unbounded::<Job>();
        let producer = Arc::new(self.result_producer(redo_tx)?);
        let mut consumer = self.subscribe()?;
        log::info!(
            "worker up: group {} consuming {} with {} transfer threads; results to {}, dead letters to {}",
            config.group_id,
            config.requests_topic,
            config.threads,
            config.results_topic,
            config.dlq_topic
        );
        let (job_tx, pool) = self.spawn_pool(&producer, redo_rx);
        while let Exit::JoinStuck = consume(&self.shared, &consumer, &job_tx) {
            log::warn!(
                "joining group {} has not completed within {} ms (the rebalance timeout plus the session timeout); rejoining as a new member",
                config.group_id,
                config.join_stuck_ms()
            );
            // Join with the new member before the old one leaves: a coordinator that left the
            // old join hanging (tansu) completes it once another member arrives.
            let fresh = self.subscribe()?;
            drop(std::mem::replace(&mut consumer, fresh));
        }
        // Shutdown: no new jobs; the pool drains what it has, the producer delivers it all,
        // then the final watermark is committed.
        log::info!("shutting down: finishing in-flight jobs");
        drop(job_tx);
        // Join every thread (no short-circuit): each one's in-flight job must finish.
        let panicked = pool
            .into_iter()
            .map(|thread| thread.join().is_err())
            .fold(false, |any, this| any | this);
        self.finish(&producer, &consumer, panicked)
    }

    /// The idempotent producer of results and dead letters; failed deliveries go to `redo`.
    fn result_producer(
        &self,
        redo: Sender<Job>,
    ) -> Result<ThreadedProducer<DeliveryContext>, WorkerError> {
        let producer = self
            .shared
            .config
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", RESULT_LINGER_MS.to_string())
            .set(
                "message.max.bytes",
                (DLQ_PAYLOAD_BYTES_LIMIT + DLQ_HEADERS_BYTES_LIMIT).to_string(),
            )
            .create_with_context(DeliveryContext {
                shared: self.shared.clone(),
                redo,
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

    /// After the pool has stopped: flush the producer, commit the final watermark, report.
    fn finish(
        &self,
        producer: &ThreadedProducer<DeliveryContext>,
        consumer: &BaseConsumer<ConsumerCtx>,
        panicked: bool,
    ) -> Result<WorkerReport, WorkerError> {
        let flush_ms = self.shared.config.flush_timeout_ms;
        if let Err(e) = producer.flush(Duration::from_millis(flush_ms)) {
            log::warn!("producer flush: {e}; undelivered results stay uncommitted and are redone");
        }
        let committed = commit_all(&self.shared, consumer);
        if committed.is_empty() && !self.shared.tracker.lock().positions().is_empty() {
            log::warn!(
                "the final commit failed; uncommitted messages are redelivered and answered from their records"
            );
        }
        let summary = self.shared.metrics.summary();
        let report = WorkerReport {
            processed: summary.processed,
            dead_lettered: summary.dlq,
            committed,
        };
        log::info!(
            "stopped: {} processed, {} dead-lettered, committed {:?}",
            report.processed,
            report.dead_lettered,
            report.committed
        );
        if panicked {
            return Err(WorkerError::ThreadPanicked);
        }
        Ok(report)
    }

    /// A consumer in the group, subscribed to the requests topic.
    fn subscribe(&self) -> Result<BaseConsumer<ConsumerCtx>, WorkerError> {
        let config = &self.shared.config;
        *self.shared.join_wait_since.lock() = None;
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
            })?;
        consumer.subscribe(&[&config.requests_topic])?;
        Ok(consumer)
    }
}

/// Why the consumer loop returned.
enum Exit {
    /// The shutdown handle was set.
    Shutdown,
    /// Joining the group has hung past any legitimate rebalance: rejoin as a new member.
    JoinStuck,
}

/// The consumer loop: poll into the backlog, dispatch to the pool, pause when full, commit.
fn consume(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>, job_tx: &Sender<Job>) -> Exit {
    let config = &shared.config;
    let mut paused = false;
    let mut last_commit = Instant::now();
    // After a failed commit, the next one covers every partition, not only those that moved.
    let mut commit_ok = true;
    let mut summary = SummaryLog::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        if shared
            .join_wait_since
            .lock()
            .is_some_and(|since| since.elapsed() > Duration::from_millis(config.join_stuck_ms()))
        {
            return Exit::JoinStuck;
        }
        let (backlog_len, backlog_bytes) = dispatch(shared, job_tx);
        let want_paused = should_pause(paused, backlog_bytes, config.backlog_bytes_max);
        if want_paused != paused || shared.assignment_changed.swap(false, Ordering::SeqCst) {
            set_paused(consumer, want_paused);
            paused = want_paused;
        }
        // With jobs waiting for room in the channel, come back at once to hand them over:
        // the pool, not Kafka, sets the pace then (a full poll timeout here would cap the
        // pipeline at one channel's worth of jobs per poll).
        let poll_ms = if backlog_len > 0 {
            BUSY_POLL_MS
        } else {
            POLL_MS
        };
        poll_into_backlog(shared, consumer, poll_ms);
        shared
            .metrics
            .set_in_flight(shared.tracker.lock().in_flight_total() as i64);
        if last_commit.elapsed() >= Duration::from_millis(config.commit_interval_ms) {
            commit_ok = commit_due(shared, consumer, !commit_ok);
            last_commit = Instant::now();
        }
        summary.log_if_due(&shared.metrics, config.summary_interval_ms);
    }
    Exit::Shutdown
}

/// Whether the consumer should be paused, with hysteresis: pause at the bound, resume at half
/// of it (pausing and resuming cost librdkafka a refetch each, so not too often). Pure.
fn should_pause(paused: bool, backlog_bytes: usize, backlog_bytes_max: usize) -> bool {
    if paused {
        backlog_bytes > backlog_bytes_max / 2
    } else {
        backlog_bytes >= backlog_bytes_max
    }
}

/// One poll; a message goes to the back of the backlog, an error is counted and logged.
fn poll_into_backlog(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>, poll_ms: u64) {
    match consumer.poll(Duration::from_millis(poll_ms)) {
        Some(Ok(message)) => shared.backlog.lock().push(Job {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            dead_lettered: false,
        }),
        Some(Err(e)) => {
            shared.metrics.record_retry("kafka_consume");
            log::warn!("consumer: {e}; polling on");
        }
        None => {}
    }
}

/// The periodic one-line summary: totals and the rate since the previous line.
struct SummaryLog {
    since: Instant,
    processed_then: u64,
}

impl SummaryLog {
    fn new() -> SummaryLog {
        SummaryLog {
            since: Instant::now(),
            processed_then: 0,
        }
    }

    fn log_if_due(&mut self, metrics: &Metrics, interval_ms: u64) {
        if self.since.elapsed() < Duration::from_millis(interval_ms) {
            return;
        }
        let s = metrics.summary();
        let rate = (s.processed - self.processed_then) as f64 / self.since.elapsed().as_secs_f64();
        log::info!(
            "processed {} ({rate:.0}/s), failed {}, duplicates {}, dead letters {}, retries {}, lag {}",
            s.processed,
            s.failed,
            s.duplicates,
            s.dlq,
            s.retries,
            s.lag_total
        );
        self.processed_then = s.processed;
        self.since = Instant::now();
    }
}

/// Moves jobs from the backlog into the channel while it has room. Returns the backlog's
/// length and size in bytes.
fn dispatch(shared: &Shared, job_tx: &Sender<Job>) -> (usize, usize) {
    let mut backlog = shared.backlog.lock();
    // Only this thread sends, so room seen here is still there at `send`.
    while !job_tx.is_full() {
        let Some(job) = backlog.pop() else {
            break;
        };
        shared.tracker.lock().start(job.partition, job.offset);
        job_tx
            .send(job)
            .expect("pool threads outlive the consumer loop");
    }
    (backlog.jobs.len(), backlog.bytes)
}

/// Messages polled and not yet dispatched, in offset order per partition, with their size.
#[derive(Default)]
struct Backlog {
    jobs: VecDeque<Job>,
    bytes: usize,
}

impl Backlog {
    fn push(&mut self, job: Job) {
        self.bytes += job.size();
        self.jobs.push_back(job);
    }

    fn pop(&mut self) -> Option<Job> {
        let job = self.jobs.pop_front()?;
        self.bytes -= job.size();
        Some(job)
    }

    /// Drops the jobs of `partitions`; returns how many.
    fn drop_partitions(&mut self, partitions: &HashSet<i32>) -> usize {
        let before = self.jobs.len();
        self.jobs.retain(|job| !partitions.contains(&job.partition));
        self.bytes = self.jobs.iter().map(Job::size).sum();
        before - self.jobs.len()
    }
}

fn set_paused(consumer: &BaseConsumer<ConsumerCtx>, paused: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => log::debug!("partitions {}", if paused { "paused" } else { "resumed" }),
        Err(e) => log::warn!("pause/resume: {e}"),
    }
}

/// Commits the partitions whose watermark moved, or, after a failed commit, every partition.
/// Returns whether the commit succeeded.
fn commit_due(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>, all: bool) -> bool {
    let positions = if all {
        shared.tracker.lock().positions()
    } else {
        shared.tracker.lock().commits_due()
    };
    commit(shared, consumer, &positions)
}

/// Commits the watermark of every tracked partition. Returns the positions committed (none
/// when the commit failed).
fn commit_all(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>) -> Vec<(i32, i64)> {
    let positions = shared.tracker.lock().positions();
    if commit(shared, consumer, &positions) {
        positions
    } else {
        Vec::new()
    }
}

/// Commits `positions` synchronously (one round trip to the group coordinator, bounded by
/// librdkafka's request timeouts), so success is known here and only confirmed positions
/// reach the metrics.
fn commit(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>, positions: &[(i32, i64)]) -> bool {
    if positions.is_empty() {
        return true;
    }
    let topic = &shared.config.requests_topic;
    let mut tpl = TopicPartitionList::new();
    for &(partition, position) in positions {
        tpl.add_partition_offset(topic, partition, Offset::Offset(position))
            .expect("valid offset");
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            for &(partition, position) in positions {
                shared.metrics.set_committed(partition, position);
            }
            log::debug!("committed {positions:?}");
            true
        }
        Err(e) => {
            log::warn!("commit {positions:?}: {e}; the next commit retries them");
            false
        }
    }
}

/// Rebalance and statistics callbacks, run on the consumer thread inside `poll`.
struct ConsumerCtx {
    shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, statistics: Statistics) {
        let waiting = statistics
            .cgrp
            .as_ref()
            .is_some_and(|g| g.join_state == "wait-join");
        {
            let mut since = self.shared.join_wait_since.lock();
            match (waiting, *since) {
                (true, None) => *since = Some(Instant::now()),
                (false, Some(_)) => *since = None,
                _ => {}
            }
        }
        let Some(topic) = statistics.topics.get(&self.shared.config.requests_topic) else {
            return;
        };
        for (partition, p) in &topic.partitions {
            if *partition >= 0 && p.consumer_lag >= 0 {
                self.shared.metrics.set_lag(*partition, p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    /// On revoke: stop dispatching the revoked partitions, let their in-flight jobs finish
    /// (bounded), commit their watermark, then let them go.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let shared = &self.shared;
        let revoked: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let dropped = { shared.backlog.lock().drop_partitions(&revoked) };
        let deadline = Instant::now() + Duration::from_millis(shared.config.revoke_timeout_ms);
        let busy = || {
            let tracker = shared.tracker.lock();
            revoked.iter().any(|p| !tracker.is_idle(*p))
        };
        while busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(WAIT_STEP_MS));
        }
        if busy() {
            log::warn!(
                "revoke: jobs of {revoked:?} still running after {} ms; their offsets stay uncommitted",
                shared.config.revoke_timeout_ms
            );
        }
        let positions: Vec<(i32, i64)> = {
            let tracker = shared.tracker.lock();
            revoked
                .iter()
                .filter_map(|p| tracker.commit_position(*p).map(|o| (*p, o)))
                .collect()
        };
        let commit_state = if shared.shutdown.load(Ordering::SeqCst) {
            // Leaving at shutdown: `commit_all` has just committed these positions.
            "left to the shutdown commit"
        } else if commit(shared, consumer, &positions) {
            "committed"
        } else {
            "not committed (the next owner redoes them; idempotency answers)"
        };
        let mut tracker = shared.tracker.lock();
        for p in &revoked {
            tracker.forget(*p);
            shared.metrics.forget_partition(*p);
        }
        log::info!(
            "partitions {revoked:?} revoked: positions {positions:?} {commit_state}; {dropped} undispatched messages left to the next owner"
        );
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            log::info!("partitions {partitions:?} assigned");
            self.shared.assignment_changed.store(true, Ordering::SeqCst);
        }
    }
}

/// Delivery reports, run on the producer's polling thread.
struct DeliveryContext {
    shared: Arc<Shared>,
    redo: Sender<Job>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Job>;

    fn delivery(&self, result: &DeliveryResult<'_>, job: Box<Job>) {
        match result {
            Ok(_) => {
                if !job.dead_lettered {
                    self.shared.metrics.record_published();
                }
                if let Err(e) = self.shared.tracker.lock().finish(job.partition, job.offset) {
                    log::debug!("{e}");
                }
            }
            Err((e, _)) => {
                log::warn!(
                    "publishing the answer to partition {} offset {} failed: {e}; redoing the job",
                    job.partition,
                    job.offset
                );
                self.shared.metrics.record_retry("kafka_produce");
                // The pool redoes it: the engine answers from the record, nothing moves twice.
                let _ = self.redo.send(*job);
            }
        }
    }
}

/// What a job produces: a result message or a dead letter.
enum Answer {
    Result(TransferCompleted),
    DeadLetter(String),
}

/// One transfer thread.
struct PoolThread {
    shared: Arc<Shared>,
    service: WalletService,
    producer: Arc<ThreadedProducer<DeliveryContext>>,
    jobs: Receiver<Job>,
    redo: Receiver<Job>,
}

impl PoolThread {
    fn run(self) {
        loop {
            let job = crossbeam_channel::select! {
                recv(self.jobs) -> job => match job {
                    Ok(job) => job,
                    Err(_) => return,
                },
                recv(self.redo) -> job => match job {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let Some(answer) = self.answer(&job) else {
                log::info!(
                    "abandoning partition {} offset {} at shutdown; it stays uncommitted",
                    job.partition,
                    job.offset
                );
                continue;
            };
            self.publish(answer, job);
        }
    }

    /// The answer to one message; `None` when shutdown interrupted transient retries.
    fn answer(&self, job: &Job) -> Option<Answer> {
        let request = match decode(&job.payload) {
            Err(poison) => return Some(Answer::DeadLetter(poison.to_string())),
            Ok(Decoded::Invalid { echo, error }) => {
                log::info!("transfer {}: invalid request: {error}", echo.transfer_id);
                self.shared
                    .metrics
                    .record_failure(FailureReason::InvalidRequest);
                return Some(Answer::Result(echo));
            }
            Ok(Decoded::Request(request)) => request,
        };
        let mut retry: u32 = 0;
        loop {
            match self.service.transfer(&request) {
                Ok(outcome) => {
                    self.shared.metrics.record_outcome(&outcome);
                    return Some(Answer::Result(answer_for(&request.transfer_id, &outcome)));
                }
                Err(TransferError::IdempotencyConflict { key, .. }) => {
                    log::warn!(
                        "transfer {}: idempotency key {key:?} was used before for a different request",
                        request.transfer_id
                    );
                    let mut echo = crate::engine::message::RawRequest {
                        transfer_id: request.transfer_id.clone(),
                        from_user: Some(request.from_user.clone()),
                        to_user: Some(request.to_user.clone()),
                        amount: Some(request.amount.to_string()),
                        currency: Some(request.currency.to_string()),
                        idempotency_key: Some(request.idempotency_key.clone()),
                    }
                    .echo_failed();
                    echo.reason = Some(FailureReason::IdempotencyConflict);
                    self.shared
                        .metrics
                        .record_failure(FailureReason::IdempotencyConflict);
                    return Some(Answer::Result(echo));
                }
                Err(e) if e.is_transient() => {
                    if matches!(e, TransferError::LockTimeout(_)) {
                        self.shared.metrics.record_lock_timeout();
                    }
                    self.shared.metrics.record_retry(retry_cause(&e));
                    let delay_ms = Backoff {
                        first_ms: RETRY_DELAY_MS_BASE,
                        max_ms: self.shared.config.retry_delay_ms_max,
                        jitter_ms: 0,
                    }
                    .base_delay_ms(retry);
                    log::warn!(
                        "transfer {}: {e}; retry {} in {delay_ms} ms",
                        request.transfer_id,
                        retry + 1
                    );
                    if !self.sleep_unless_shutdown(delay_ms) {
                        return None;
                    }
                    retry = retry.saturating_add(1);
                }
                Err(e) => {
                    log::error!(
                        "transfer {}: {e}; sent to the dead-letter topic",
                        request.transfer_id
                    );
                    return Some(Answer::DeadLetter(e.to_string()));
                }
            }
        }
    }

    /// Sleeps `ms` in short steps; false when shutdown was asked meanwhile.
    fn sleep_unless_shutdown(&self, ms: u64) -> bool {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < deadline {
            if self.shared.shutdown.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(WAIT_STEP_MS).min(deadline - Instant::now()));
        }
        !self.shared.shutdown.load(Ordering::SeqCst)
    }

    /// Hands the answer to the producer with the job as delivery opaque; the delivery report
    /// marks the offset done (or redoes the job). Retries while the producer refuses it, until
    /// shutdown.
    fn publish(&self, answer: Answer, mut job: Job) {
        job.dead_lettered = matches!(answer, Answer::DeadLetter(_));
        if let Answer::DeadLetter(error) = &answer {
            log::warn!(
                "dead letter: partition {} offset {}: {error}",
                job.partition,
                job.offset
            );
            self.shared.metrics.record_dlq();
        }
        let out = outgoing(&self.shared.config, &answer, &job);
        let mut opaque = Box::new(job);
        let mut attempt: u32 = 0;
        loop {
            let mut record = BaseRecord::with_opaque_to(out.topic, opaque)
                .key(&out.key)
                .payload(&out.payload);
            if let Some(h) = &out.headers {
                record = record.headers(h.clone());
            }
            let Err((e, record)) = self.producer.send(record) else {
                return;
            };
            opaque = record.delivery_opaque;
            attempt += 1;
            if !matches!(
                e,
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
            ) {
                log::warn!("producing to {}: {e}; retry {attempt}", out.topic);
                self.shared.metrics.record_retry("kafka_produce");
            }
            let delay_ms = Backoff {
                first_ms: PRODUCE_RETRY_DELAY_MS_BASE,
                max_ms: self.shared.config.retry_delay_ms_max,
                jitter_ms: 0,
            }
            .base_delay_ms(attempt);
            if !self.sleep_unless_shutdown(delay_ms) {
                // The engine has recorded the outcome; the redelivered message will be
                // answered from it by whoever owns the partition next.
                log::warn!(
                    "abandoning the answer to partition {} offset {} at shutdown; it stays uncommitted",
                    opaque.partition,
                    opaque.offset
                );
                return;
            }
        }
    }
}

/// A message ready for the producer.
struct Outgoing<'a> {
    topic: &'a str,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// Where and what to publish for `answer` to `job`: a result keyed by transfer id, or a dead
/// letter keyed as its request with the error, its source and any truncation in headers.
/// Pure.
fn outgoing<'a>(config: &'a WorkerConfig, answer: &Answer, job: &Job) -> Outgoing<'a> {
    match answer {
        Answer::Result(result) => Outgoing {
            topic: &config.results_topic,
            key: result.transfer_id.clone().into_bytes(),
            payload: serde_json::to_vec(result).expect("result serialises"),
            headers: None,
        },
        Answer::DeadLetter(error) => {
            let truncated = job.payload.len() > DLQ_PAYLOAD_BYTES_LIMIT;
            let partition = job.partition.to_string();
            let offset = job.offset.to_string();
            let full_len = job.payload.len().to_string();
            let mut headers = OwnedHeaders::new();
            for (key, value) in [
                ("error", error.as_str()),
                ("source_topic", config.requests_topic.as_str()),
                ("source_partition", &partition),
                ("source_offset", &offset),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            if truncated {
                headers = headers.insert(Header {
                    key: "truncated",
                    value: Some(&full_len),
                });
            }
            Outgoing {
                topic: &config.dlq_topic,
                key: job.key.clone().unwrap_or_default(),
                payload: job.payload[..job.payload.len().min(DLQ_PAYLOAD_BYTES_LIMIT)].to_vec(),
                headers: Some(headers),
            }
        }
    }
}

/// The result message for `outcome`, answering the request's own transfer id.
fn answer_for(transfer_id: &str, outcome: &TransferOutcome) -> TransferCompleted {
    let mut message = outcome.to_message();
    message.transfer_id = transfer_id.to_string();
    message
}

fn retry_cause(e: &TransferError) -> &'static str {
    match e {
        TransferError::LockTimeout(_) => "lock_timeout",
        TransferError::LockLost(_) => "lock_lost",
        TransferError::WatchConflicts(_) => "watch_conflicts",
        TransferError::Redis(_) => "redis",
        TransferError::Pool(_) => "redis_pool",
        TransferError::IdempotencyConflict { .. } | TransferError::Corrupt { .. } => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(partition: i32, offset: i64, payload_len: usize) -> Job {
        Job {
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: vec![b'x'; payload_len],
            dead_lettered: false,
        }
    }

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
    fn the_consumer_pauses_at_the_bound_and_resumes_at_half() {
        let max = 1_000;
        assert!(!should_pause(false, 999, max));
        assert!(should_pause(false, 1_000, max));
        assert!(should_pause(true, 501, max), "stays paused above half");
        assert!(!should_pause(true, 500, max), "resumes at half");
    }

    fn header(headers: &OwnedHeaders, key: &str) -> Option<String> {
        use rdkafka::message::Headers;
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_dead_letter_carries_its_source_and_is_truncated_only_past_the_limit() {
        let config = WorkerConfig::default();
        let answer = Answer::DeadLetter("not JSON".into());
        let small = job(3, 42, 10);
        let out = outgoing(&config, &answer, &small);
        assert_eq!(out.topic, config.dlq_topic);
        assert_eq!(out.payload, small.payload);
        assert_eq!(out.key, b"k");
        let headers = out.headers.expect("a dead letter has headers");
        assert_eq!(header(&headers, "error").as_deref(), Some("not JSON"));
        assert_eq!(header(&headers, "source_partition").as_deref(), Some("3"));
        assert_eq!(header(&headers, "source_offset").as_deref(), Some("42"));
        assert_eq!(header(&headers, "truncated"), None);

        let big = job(0, 1, DLQ_PAYLOAD_BYTES_LIMIT + 1);
        let out = outgoing(&config, &answer, &big);
        assert_eq!(out.payload.len(), DLQ_PAYLOAD_BYTES_LIMIT);
        let full = (DLQ_PAYLOAD_BYTES_LIMIT + 1).to_string();
        assert_eq!(header(&out.headers.unwrap(), "truncated"), Some(full));
    }
}
