//! The transfer threads, the delivery reports of the result producer, and the retry timer.
//!
//! ```text
//! pool thread:  job -> decode -> transfer_from -> answer -> produce (job as delivery opaque)
//!               -> the next parked job of the same key, if any, on the same thread
//!               transient error -> delay queue (the job keeps its key; the thread moves on)
//!               panic -> caught, counted; delay queue, or dead letter at the third
//! delivery:     every message of the answer acknowledged -> offset finished;
//!               any failed -> (once all have reported) delay queue; permanent -> stop
//! retry timer:  due jobs from the delay queue -> redo channel -> pool
//! ```
//!
//! An answer is one message (a result or a dead letter), or three: the result of a COMPLETED
//! transfer answered as the original comes with its two ledger entries (`worker::ledger`). The
//! job's offset is finished only when all of them are acknowledged; when one fails, the whole
//! job is redone from its record once every message has reported, publishing identical copies
//! again (the ledger is written at least once; readers deduplicate by wallet and version).
//!
//! Owns turning a job into an answer (result or dead letter, and ledger entries), publishing
//! it, what happens to a job that cannot be answered yet (the backoff of its retries; a stale
//! job is never put back), and a transfer that panics. Does not poll, commit or handle rebalances
//! (`worker::consumer`) and holds no transfer logic (`engine::transfer`).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use crate::engine::backoff::Backoff;
use crate::engine::expiry::{self, Freshness};
use crate::engine::lock::LockError;
use crate::engine::message::{
    Decoded, FailureReason, RawRequest, TransferCompleted, TransferRequest, decode,
};
use crate::engine::service::WalletService;
use crate::engine::transfer::{Origin, TransferError, TransferOutcome};
use crate::worker::config::{
    DLQ_ERROR_BYTES_LIMIT, DLQ_HEADER_ERROR, DLQ_HEADER_SOURCE_OFFSET, DLQ_HEADER_SOURCE_PARTITION,
    DLQ_HEADER_SOURCE_TOPIC, DLQ_HEADER_TRUNCATED, DLQ_KEY_BYTES_LIMIT, DLQ_PAYLOAD_BYTES_LIMIT,
    PANIC_PAYLOAD_LOG_BYTES, PANICS_PER_JOB_LIMIT, RETRY_TICK_MS, TOPIC_MISSING_MS_LIMIT,
    WAIT_STEP_MS, WorkerConfig,
};
use crate::worker::ledger::{self, LedgerEntry};
use crate::worker::metrics::Stage;
use crate::worker::outcome_ttl::{self, LiveTtl};
use crate::worker::shared::{Job, NO_TTL_REPORTED_LIMIT, Shared};

/// What a job produces: a result message (with the ledger entries of a COMPLETED original)
/// or a dead letter.
pub(crate) enum Answer {
    Result(TransferCompleted, Vec<LedgerEntry>),
    DeadLetter(String),
}

/// What one attempt at a job came to.
enum Attempt {
    Answered(Answer),
    /// A transient error: try again after this many milliseconds.
    Retry(u64),
}

/// One transfer thread.
pub(crate) struct PoolThread {
    pub shared: Arc<Shared>,
    pub service: WalletService,
    pub producer: Arc<ThreadedProducer<DeliveryContext>>,
    pub jobs: Receiver<Job>,
    pub redo: Receiver<Job>,
}

impl PoolThread {
    pub fn run(mut self) {
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
            self.work(job);
        }
    }

    /// Works `first`, then, while its key has parked jobs, each next one in offset order.
    fn work(&mut self, first: Job) {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if self.shared.past_deadline() {
                // Stopping, and out of time: the job stays uncommitted for the next owner.
                return;
            }
            if self.shared.generations.lock().abandon_if_stale(&job) {
                // Its partition was revoked: the next owner redoes it.
                continue;
            }
            if let Some(waited_us) = queue_wait_us(&job, crate::engine::message::now_ms()) {
                self.shared
                    .metrics
                    .record_stage(Stage::QueueWait, waited_us);
            }
            let mut job = job;
            // A panic in a transfer (a bug) costs this job a try, not the thread: the thread
            // would take the job's key and its partition's watermark down with it.
            let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| self.attempt(&mut job)))
                .unwrap_or_else(|panic| self.panicked(&mut job, panic.as_ref()));
            match attempt {
                Attempt::Answered(answer) => {
                    if job.holds_key {
                        // Answered: the key passes to its next job. A redo of this answer (a
                        // failed delivery) must not release the key again.
                        job.holds_key = false;
                        next = self.shared.gate.lock().release(&job).map(|mut n| {
                            n.holds_key = true;
                            n
                        });
                    }
                    self.publish(answer, job);
                }
                Attempt::Retry(delay_ms) => schedule_retry(&self.shared, job, delay_ms),
            }
        }
    }

    /// A try at `job` panicked: logged with the job, counted, and retried after the backoff,
    /// or dead-lettered once it has panicked `PANICS_PER_JOB_LIMIT` times (its key passes on
    /// and its offset is committed; an outcome the transfer recorded stays in Redis).
    fn panicked(&self, job: &mut Job, panic: &(dyn std::any::Any + Send)) -> Attempt {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        job.panics += 1;
        self.shared.metrics.record_thread_panic();
        let payload =
            String::from_utf8_lossy(&job.payload[..job.payload.len().min(PANIC_PAYLOAD_LOG_BYTES)]);
        log::error!(
            "a transfer panicked ({} of {PANICS_PER_JOB_LIMIT}) on partition {} offset {}, request {payload}: {what}",
            job.panics,
            job.partition,
            job.offset
        );
        if job.panics >= PANICS_PER_JOB_LIMIT {
            return Attempt::Answered(Answer::DeadLetter(format!(
                "the transfer panicked {} times: {what}",
                job.panics
            )));
        }
        Attempt::Retry(retry_delay_ms(&self.shared.config, job))
    }

    /// New records get the outcome ttl in force (the ttl watch raises it while running).
    fn follow_ttl(&mut self) {
        if let Some(ttl_ms) = self.shared.outcome_ttl.record_ms() {
            self.service.config.outcome_ttl_ms = Some(ttl_ms);
        }
    }

    /// One try at answering a job; a transient error counts one more failure on it.
    fn attempt(&mut self, job: &mut Job) -> Attempt {
        let request = match decode(&job.payload) {
            Err(poison) => return Attempt::Answered(Answer::DeadLetter(poison.to_string())),
            Ok(Decoded::Invalid { echo, error }) => {
                log::info!("transfer {}: invalid request: {error}", echo.transfer_id);
                self.shared
                    .metrics
                    .record_failure(FailureReason::InvalidRequest);
                return Attempt::Answered(Answer::Result(echo, Vec::new()));
            }
            Ok(Decoded::Request(request)) => request,
        };
        panic_failpoint(&request.transfer_id);
        self.follow_ttl();
        let request = match dated(request, job.timestamp_ms, &self.shared.outcome_ttl) {
            Ok(request) => request,
            Err(poison) => return Attempt::Answered(Answer::DeadLetter(poison)),
        };
        let origin = Origin {
            topic: self.shared.config.requests_topic.clone(),
            partition: job.partition,
            offset: job.offset,
        };
        let started = Instant::now();
        let result = self.service.transfer_from(&request, Some(&origin));
        self.shared
            .metrics
            .record_stage(Stage::Transfer, started.elapsed().as_micros() as u64);
        match result {
            Ok(outcome) => {
                self.shared.metrics.record_outcome(&outcome);
                let entries = self.ledger_entries(&outcome);
                let result = answer_for(&request.transfer_id, &outcome);
                Attempt::Answered(Answer::Result(result, entries))
            }
            Err(TransferError::IdempotencyConflict { key, .. }) => {
                log::warn!(
                    "transfer {}: idempotency key {key:?} was used before for a different request",
                    request.transfer_id
                );
                self.shared
                    .metrics
                    .record_failure(FailureReason::IdempotencyConflict);
                Attempt::Answered(Answer::Result(conflict_answer(&request), Vec::new()))
            }
            Err(e) if e.is_transient() => {
                self.note_transient(&e);
                job.transient_failures += 1;
                let delay_ms = retry_delay_ms(&self.shared.config, job);
                self.shared.warnings.warn(e.kind(), || {
                    format!(
                        "transfer {}: {e}; retry {} in {delay_ms} ms",
                        request.transfer_id,
                        job.failures()
                    )
                });
                Attempt::Retry(delay_ms)
            }
            Err(e) => {
                log::error!(
                    "transfer {}: {e}; sent to the dead-letter topic",
                    request.transfer_id
                );
                Attempt::Answered(Answer::DeadLetter(e.to_string()))
            }
        }
    }

    /// The ledger entries to publish with the answer to `outcome` (`ledger::entries_for`). A
    /// COMPLETED record without versions (written before they were recorded) has none that can
    /// be numbered: its result is published alone and the gap is logged, never filled with
    /// guesses.
    fn ledger_entries(&self, outcome: &TransferOutcome) -> Vec<LedgerEntry> {
        ledger::entries_for(outcome).unwrap_or_else(|e| {
            self.shared.warnings.warn("ledger_unnumbered", || {
                format!("{e}: its ledger entries are not published; wallet history shows the versions missing")
            });
            Vec::new()
        })
    }

    /// Counts a transient error by cause; a lock held with no ttl is logged and counted once.
    fn note_transient(&self, e: &TransferError) {
        self.shared.metrics.record_retry(e.kind());
        let TransferError::LockTimeout(LockError::Timeout { no_ttl, .. }) = e else {
            return;
        };
        self.shared.metrics.record_lock_timeout();
        let mut reported = self.shared.no_ttl_reported.lock();
        for key in no_ttl {
            if first_report(&mut reported, key, NO_TTL_REPORTED_LIMIT) {
                log::error!(
                    "{key} is held with no ttl and never expires: transfers of that wallet wait until an operator deletes it (wallet locks; redis-cli DEL {key})"
                );
                self.shared.metrics.record_lock_without_ttl();
            }
        }
    }

    /// Hands the answer's messages (`messages`: the result or dead letter, then any ledger
    /// entries) to the producer, each with a [`Part`] of one shared [`Delivery`] as delivery
    /// opaque; the delivery reports finish the offset once all are acknowledged, or queue the
    /// job to be redone. A message the producer refuses for good stops the worker; one still
    /// unsent at shutdown leaves the job uncommitted.
    fn publish(&self, answer: Answer, mut job: Job) {
        if failpoint("results-unacked") {
            return;
        }
        job.dead_lettered = matches!(answer, Answer::DeadLetter(_));
        if let Answer::DeadLetter(error) = &answer {
            self.shared.warnings.warn("dead_letter", || {
                format!(
                    "dead letter: partition {} offset {}: {error}",
                    job.partition, job.offset
                )
            });
            self.shared.metrics.record_dlq();
        }
        if let Answer::Result(result, _) = &answer {
            producer_fatal_failpoint(&self.producer, &result.transfer_id);
        }
        let config = &self.shared.config;
        let out = messages(config, &answer, &job);
        let first = if job.dead_lettered {
            PartKind::DeadLetter
        } else {
            PartKind::Result
        };
        job.handed_at = Some(Instant::now());
        let delivery = Arc::new(Delivery::new(job, out.len()));
        for (i, message) in out.iter().enumerate() {
            let kind = if i == 0 { first } else { PartKind::Ledger };
            if kind == PartKind::Ledger && failpoint("ledger-unacked") {
                continue;
            }
            let part = Box::new(Part {
                delivery: delivery.clone(),
                kind,
            });
            if !self.send(message, part) {
                return;
            }
        }
    }

    /// Hands one message to the producer, retrying while its queue is full, until shutdown.
    /// False when the producer refused it for good (the worker stops) or it was abandoned at
    /// shutdown: the job then never finishes and stays uncommitted.
    fn send(&self, out: &Outgoing<'_>, part: Box<Part>) -> bool {
        let mut opaque = part;
        let mut retries = SendRetries::default();
        loop {
            let mut record = BaseRecord::with_opaque_to(out.topic, opaque)
                .key(&out.key)
                .payload(&out.payload);
            if let Some(h) = &out.headers {
                record = record.headers(h.clone());
            }
            let Err((e, record)) = self.producer.send(record) else {
                return true;
            };
            opaque = record.delivery_opaque;
            let (partition, offset) = (opaque.delivery.partition, opaque.delivery.offset);
            if is_permanent(&e) {
                self.shared.fail(format!(
                    "the producer refuses the answer to partition {partition} offset {offset} for {}: {e}",
                    out.topic
                ));
                return false;
            }
            let (attempt, delay_ms) = retries.next(&self.shared.config.produce_backoff());
            if matches!(
                e,
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
            ) {
                self.shared.metrics.record_produce_queue_full();
            } else {
                self.shared.warnings.warn("produce", || {
                    format!("producing to {}: {e}; retry {attempt}", out.topic)
                });
                self.shared.metrics.record_retry("kafka_produce");
            }
            if !sleep_unless_shutdown(&self.shared, delay_ms) {
                // The engine has recorded the outcome; the redelivered message will be
                // answered from it by whoever owns the partition next.
                log::warn!(
                    "abandoning the answer to partition {partition} offset {offset} at shutdown; it stays uncommitted"
                );
                return false;
            }
        }
    }
}

/// The failed tries of one send: each counts, and the wait before the next doubles.
#[derive(Debug, Default)]
struct SendRetries {
    attempt: u32,
}

impl SendRetries {
    /// Counts one more failed try; its number (1 for the first) and the wait before the next
    /// (`backoff` at that number).
    fn next(&mut self, backoff: &Backoff) -> (u32, u64) {
        self.attempt += 1;
        (self.attempt, backoff.delay_ms(self.attempt))
    }
}

/// Test-only failure injection (feature `test-hooks`, never in a normal build): with
/// `WALLET_FAILPOINT=results-unacked` the worker hands no answer to the producer, as if every
/// delivery were lost before its acknowledgement; offsets then never pass those messages.
/// With `ledger-unacked` the results go out but the ledger entries never do, so no offset of a
/// COMPLETED transfer may be committed. With `final-commit-skipped` the stop skips its final
/// commit, as if the coordinator had not answered by the deadline (`worker::pipeline`), so the
/// revoke that closing the consumer runs must commit instead.
///
/// One body for both builds (`cfg!`, not two `#[cfg]` twins): the code the tests run is the
/// code a normal build compiles, where the constant `false` removes the rest.
pub(crate) fn failpoint(name: &str) -> bool {
    cfg!(feature = "test-hooks") && std::env::var("WALLET_FAILPOINT").is_ok_and(|v| v == name)
}

/// Test-only (feature `test-hooks`): with `WALLET_FAILPOINT_DELIVERY_FAILS=ID` the first
/// acknowledged delivery of the result of request `ID` is reported to the worker as failed (a
/// transient error, as librdkafka reports a message timed out), once per process: the job
/// must be redone and its result published again. It fails a delivery the test broker has
/// taken, so the broker is never upset (tansu 0.6 is, by real timed-out deliveries).
fn delivery_failpoint(payload: Option<&[u8]>) -> bool {
    use std::sync::atomic::AtomicBool;
    static FIRED: AtomicBool = AtomicBool::new(false);
    if !cfg!(feature = "test-hooks") {
        return false;
    }
    let Ok(id) = std::env::var("WALLET_FAILPOINT_DELIVERY_FAILS") else {
        return false;
    };
    let ours = payload
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .is_some_and(|v| v["transfer_id"] == id.as_str());
    ours && !FIRED.swap(true, Ordering::SeqCst)
}

/// Test-only (feature `test-hooks`): with `WALLET_FAILPOINT_PRODUCER_FATAL=ID`, just before
/// the result of request `ID` is handed over, the producer is put in a fatal state
/// (librdkafka's `rd_kafka_test_fatal_error`, as when an idempotent producer finds its sequence
/// lost by the broker): the worker must stop and commit nothing past that request.
fn producer_fatal_failpoint(producer: &ThreadedProducer<DeliveryContext>, transfer_id: &str) {
    if !cfg!(feature = "test-hooks")
        || std::env::var("WALLET_FAILPOINT_PRODUCER_FATAL").map_or(true, |v| v != transfer_id)
    {
        return;
    }
    // SAFETY: the pointer is `producer`'s live client, borrowed for the call; the function
    // only records the error on the client and raises it on the client's own threads.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            rdkafka::producer::Producer::client(producer).native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            c"failpoint: the result producer is fatal".as_ptr(),
        )
    };
    log::warn!("failpoint: the result producer put in a fatal state ({code:?})");
}

/// Test-only (feature `test-hooks`): with `WALLET_FAILPOINT_PANIC=ID` the transfer of request
/// `ID` panics, as a bug in the engine would.
fn panic_failpoint(transfer_id: &str) {
    if cfg!(feature = "test-hooks")
        && std::env::var("WALLET_FAILPOINT_PANIC").is_ok_and(|v| v == transfer_id)
    {
        panic!("failpoint: the transfer of {transfer_id} panics");
    }
}

/// The delay before the next try of `job`, whose latest failure is already counted on it:
/// `retry_backoff` at attempt `failures - 1`, so it doubles with every failure of any transient
/// cause (a transfer error or a failed delivery), up to `retry_delay_ms_max`, plus jitter.
pub(crate) fn retry_delay_ms(config: &WorkerConfig, job: &Job) -> u64 {
    config
        .retry_backoff()
        .delay_ms(job.failures().saturating_sub(1))
}

/// Queues `job` to be tried again in `delay_ms`; at shutdown, or when its partition was
/// revoked since it was consumed (a stale job, [`crate::worker::shared::Generations`]), it is
/// abandoned instead (it stays uncommitted and is answered by the next owner). Every path that
/// puts a job back (a transient error, a failed delivery) comes through here.
pub(crate) fn schedule_retry(shared: &Shared, mut job: Job, delay_ms: u64) {
    if shared.shutdown.load(Ordering::SeqCst) {
        log::info!(
            "abandoning partition {} offset {} at shutdown; it stays uncommitted",
            job.partition,
            job.offset
        );
        return;
    }
    if shared.generations.lock().abandon_if_stale(&job) {
        // Consumed before its partition's latest revoke: the next owner redoes it.
        log::debug!(
            "partition {} offset {} was revoked while it failed; not retried",
            job.partition,
            job.offset
        );
        return;
    }
    let now = Instant::now();
    let since = *job.retrying_since.get_or_insert(now);
    let (partition, size) = (job.partition, job.size());
    shared.retries.lock().push(
        now + Duration::from_millis(delay_ms),
        partition,
        since,
        size,
        job,
    );
    shared.retry_wake.notify_one();
}

/// Starts the retry timer: it moves due jobs from the delay queue to the pool's redo channel,
/// until shutdown, when the jobs still waiting are abandoned (uncommitted).
pub(crate) fn spawn_retry_timer(
    shared: Arc<Shared>,
    redo: Sender<Job>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("retry-timer".into())
        .spawn(move || retry_timer(&shared, &redo))
        .expect("spawn retry timer")
}

fn retry_timer(shared: &Shared, redo: &Sender<Job>) {
    let tick = Duration::from_millis(RETRY_TICK_MS);
    loop {
        let mut retries = shared.retries.lock();
        if shared.shutdown.load(Ordering::SeqCst) {
            if !retries.is_empty() {
                let left = retries.drain().len();
                log::info!("abandoning {left} retrying jobs at shutdown; they stay uncommitted");
            }
            return;
        }
        if retries.is_empty() {
            // Nothing waits on a failed delivery any more (delivered, or its partition gone).
            shared.delivery_failing.store(false, Ordering::SeqCst);
        }
        let now = Instant::now();
        let due = retries.pop_due(now);
        if due.is_empty() {
            let wait = retries
                .next_due()
                .map_or(tick, |d| d.saturating_duration_since(now).min(tick));
            shared.retry_wake.wait_for(&mut retries, wait);
            continue;
        }
        drop(retries);
        for (job, _) in due {
            if redo.send(job).is_err() {
                return;
            }
        }
    }
}

/// Sleeps `ms` in short steps; false when shutdown was asked meanwhile.
pub(crate) fn sleep_unless_shutdown(shared: &Shared, ms: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < deadline {
        if shared.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(WAIT_STEP_MS).min(deadline - Instant::now()));
    }
    !shared.shutdown.load(Ordering::SeqCst)
}

/// One job's answer on its way to the brokers: the job, and how many of its messages have not
/// reported yet. Shared by the [`Part`]s riding as delivery opaques.
pub(crate) struct Delivery {
    partition: i32,
    offset: i64,
    handed_at: Option<Instant>,
    /// Taken by the last report.
    job: Mutex<Option<Job>>,
    /// Messages whose delivery report has not come yet.
    pending: AtomicUsize,
    /// The first failed delivery among them.
    failure: Mutex<Option<String>>,
}

impl Delivery {
    fn new(job: Job, messages: usize) -> Delivery {
        assert!(messages > 0, "an answer has at least one message");
        Delivery {
            partition: job.partition,
            offset: job.offset,
            handed_at: job.handed_at,
            job: Mutex::new(Some(job)),
            pending: AtomicUsize::new(messages),
            failure: Mutex::new(None),
        }
    }

    /// Notes a failed delivery (the first one is kept).
    fn fail(&self, why: String) {
        self.failure.lock().get_or_insert(why);
    }

    /// Counts one report; the last one gets the job back, with the first failure if any.
    fn reported(&self) -> Option<(Job, Option<String>)> {
        if self.pending.fetch_sub(1, Ordering::SeqCst) != 1 {
            return None;
        }
        let job = self.job.lock().take()?;
        Some((job, self.failure.lock().take()))
    }
}

/// Which message of an answer a delivery report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartKind {
    Result,
    DeadLetter,
    Ledger,
}

impl PartKind {
    /// How a failure names the message: "the answer to" / "a ledger entry of" partition P
    /// offset O. Pure.
    fn described(self) -> &'static str {
        match self {
            PartKind::Ledger => "a ledger entry of",
            PartKind::Result | PartKind::DeadLetter => "the answer to",
        }
    }
}

/// The delivery opaque of one message: its answer's [`Delivery`] and what it is.
pub(crate) struct Part {
    delivery: Arc<Delivery>,
    kind: PartKind,
}

/// Delivery reports and client errors of the result producer, run on its polling thread.
pub(crate) struct DeliveryContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {
    /// A client error: a `__FATAL` code stops the worker, anything else is warned about.
    /// rdkafka 0.39 reads errors as events, which give a fatal error's underlying code
    /// (`OutOfOrderSequenceNumber`, say) and not `__FATAL`, so the stop on a fatal producer
    /// comes from the next send or delivery report, which fail with `Fatal` ([`is_permanent`];
    /// `lifecycle::a_fatal_result_producer_stops_the_worker_and_commits_nothing_past_it`).
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.shared
                .fail(format!("the result producer hit a fatal error: {reason}"));
        } else {
            self.shared.warnings.warn("producer_error", || {
                format!("result producer: {error}: {reason}")
            });
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Part>;

    fn delivery(&self, result: &DeliveryResult<'_>, part: Box<Part>) {
        let Part { delivery, kind } = *part;
        let report = match result {
            Ok(m) => Ok(rdkafka::Message::payload(m)),
            Err((e, _)) => Err(e),
        };
        self.report(&delivery, kind, report);
        if let Some((job, failure)) = delivery.reported() {
            self.settle(job, failure);
        }
    }
}

impl DeliveryContext {
    /// One message's delivery report (`Ok` with its payload, or the error): acknowledged; or
    /// refused for good (the worker stops); or failed, so the job is redone once every message
    /// of its answer has reported.
    fn report(
        &self,
        delivery: &Delivery,
        kind: PartKind,
        report: Result<Option<&[u8]>, &KafkaError>,
    ) {
        let what = kind.described();
        match report {
            Ok(payload) if kind == PartKind::Result && delivery_failpoint(payload) => {
                self.shared.delivery_failing.store(true, Ordering::SeqCst);
                delivery.fail(format!(
                    "publishing {what} it failed: failpoint: reported failed after it was delivered"
                ));
            }
            Ok(_) => self.acknowledged(delivery, kind),
            Err(e) if is_permanent(e) => {
                delivery.fail(e.to_string());
                self.shared.fail(format!(
                    "the brokers refuse {what} partition {} offset {} for good: {e}",
                    delivery.partition, delivery.offset
                ));
            }
            Err(e) => {
                self.shared.delivery_failing.store(true, Ordering::SeqCst);
                delivery.fail(format!("publishing {what} it failed: {e}"));
                if is_topic_missing(e) {
                    let reason = format!(
                        "{what} partition {} offset {} cannot be delivered: {e}",
                        delivery.partition, delivery.offset
                    );
                    self.topic_missing(&reason, Instant::now());
                }
            }
        }
    }

    /// A delivery failed at `now` because its topic does not exist. A topic that is still
    /// missing `TOPIC_MISSING_MS_LIMIT` after the first such failure (with no delivery
    /// acknowledged since) was deleted, not created late: no retry can deliver there, so the
    /// worker stops on a permanent error. True when it did.
    fn topic_missing(&self, reason: &str, now: Instant) -> bool {
        let since = *self.shared.topic_missing_since.lock().get_or_insert(now);
        let missing = now.saturating_duration_since(since);
        if missing < Duration::from_millis(TOPIC_MISSING_MS_LIMIT) {
            return false;
        }
        self.shared.fail(format!(
            "{reason}; its topic has been missing for {} s (deleted?): create it again, then restart the worker",
            missing.as_secs()
        ));
        true
    }

    /// One message of an answer reached the brokers.
    fn acknowledged(&self, delivery: &Delivery, kind: PartKind) {
        self.shared.delivery_failing.store(false, Ordering::SeqCst);
        *self.shared.topic_missing_since.lock() = None;
        match kind {
            PartKind::Result => self.shared.metrics.record_published(),
            PartKind::Ledger => self.shared.metrics.record_ledger_published(),
            PartKind::DeadLetter => {}
        }
        if kind != PartKind::Ledger
            && let Some(handed) = delivery.handed_at
        {
            let us = handed.elapsed().as_micros() as u64;
            self.shared.metrics.record_stage(Stage::Ack, us);
        }
    }

    /// Every message of the job's answer has reported: its offset is finished when all were
    /// acknowledged; otherwise the job is redone from its record after a backoff (the engine
    /// answers it, nothing moves twice; the messages are published again, identical).
    fn settle(&self, mut job: Job, failure: Option<String>) {
        let Some(failure) = failure else {
            if let Err(e) = self.shared.tracker.lock().finish(job.partition, job.offset) {
                log::debug!("{e}");
            }
            return;
        };
        job.publish_failures += 1;
        let delay_ms = retry_delay_ms(&self.shared.config, &job);
        self.shared.warnings.warn("delivery", || {
            format!(
                "partition {} offset {}: {failure}; retry {} in {delay_ms} ms (no new jobs until deliveries succeed)",
                job.partition,
                job.offset,
                job.failures()
            )
        });
        self.shared.metrics.record_retry("kafka_produce");
        schedule_retry(&self.shared, job, delay_ms);
    }
}

/// Errors that no retry can cure: the message is too large for the topic, we are not allowed
/// to write, or the idempotent producer is in a fatal state. Pure.
pub(crate) fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::UnsupportedForMessageFormat
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// Delivery errors that say the topic does not exist (deleted, or not created yet). Pure.
pub(crate) fn is_topic_missing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopicId
        )
    )
}

/// A message ready for the producer.
pub(crate) struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
}

/// Where and what to publish for `answer` to `job`: a result keyed by transfer id, or a dead
/// letter keyed as its request with the error, its source and any truncation in headers. A
/// dead letter's payload is cut to `DLQ_PAYLOAD_BYTES_LIMIT` and its error to
/// `DLQ_ERROR_BYTES_LIMIT`, so it always fits the dead-letter topic. Pure.
pub(crate) fn outgoing<'a>(config: &'a WorkerConfig, answer: &Answer, job: &Job) -> Outgoing<'a> {
    match answer {
        Answer::Result(result, _) => Outgoing {
            topic: &config.results_topic,
            key: result.transfer_id.clone().into_bytes(),
            payload: serde_json::to_vec(result).expect("result serialises"),
            headers: None,
        },
        Answer::DeadLetter(error) => {
            let partition = job.partition.to_string();
            let offset = job.offset.to_string();
            let full_len = job.payload.len().to_string();
            let mut headers = OwnedHeaders::new();
            for (key, value) in [
                (
                    DLQ_HEADER_ERROR,
                    truncate_utf8(error, DLQ_ERROR_BYTES_LIMIT),
                ),
                (DLQ_HEADER_SOURCE_TOPIC, config.requests_topic.as_str()),
                (DLQ_HEADER_SOURCE_PARTITION, &partition),
                (DLQ_HEADER_SOURCE_OFFSET, &offset),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            if job.payload.len() > DLQ_PAYLOAD_BYTES_LIMIT {
                headers = headers.insert(Header {
                    key: DLQ_HEADER_TRUNCATED,
                    value: Some(&full_len),
                });
            }
            Outgoing {
                topic: &config.dlq_topic,
                key: job.key.as_deref().map_or(Vec::new(), |k| {
                    k[..k.len().min(DLQ_KEY_BYTES_LIMIT)].to_vec()
                }),
                payload: job.payload[..job.payload.len().min(DLQ_PAYLOAD_BYTES_LIMIT)].to_vec(),
                headers: Some(headers),
            }
        }
    }
}

/// Every message of the answer to `job`: the answer itself ([`outgoing`]), then the ledger
/// entries of a COMPLETED original, each keyed by its wallet id, to the ledger topic. Pure.
pub(crate) fn messages<'a>(
    config: &'a WorkerConfig,
    answer: &Answer,
    job: &Job,
) -> Vec<Outgoing<'a>> {
    let mut out = vec![outgoing(config, answer, job)];
    if let Answer::Result(_, entries) = answer {
        out.extend(entries.iter().map(|entry| Outgoing {
            topic: &config.ledger_topic,
            key: entry.key().to_vec(),
            payload: entry.to_json(),
            headers: None,
        }));
    }
    out
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, bytes: usize) -> &str {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The result message for `outcome`, answering the request's own transfer id.
fn answer_for(transfer_id: &str, outcome: &TransferOutcome) -> TransferCompleted {
    let mut message = outcome.to_message();
    message.transfer_id = transfer_id.to_string();
    message
}

/// The request with its message's timestamp as its time (`engine::expiry`), or the
/// dead-letter error of a message stamped further ahead of this machine's clock than the
/// allowance: its producer's clock is wrong, and it would outlive its outcome record. After a
/// raise of the ttl (`worker::outcome_ttl`) the time given is earlier by the raise, so that the
/// engine, which judges with the raised ttl, judges as if with the ttl the run started with.
fn dated(
    request: TransferRequest,
    timestamp_ms: Option<i64>,
    ttl: &LiveTtl,
) -> Result<TransferRequest, String> {
    let Some(at_ms) = timestamp_ms.and_then(|t| u64::try_from(t).ok()) else {
        return Ok(request);
    };
    let (record_ms, judge_ms) = (ttl.record_ms(), ttl.judge_ms());
    match expiry::freshness(Some(at_ms), expiry::now_ms(), judge_ms) {
        Freshness::Ahead { ahead_ms } => Err(format!(
            "message timestamp {at_ms} is {ahead_ms} ms ahead of this worker's clock, more than the {} ms allowed under an outcome ttl of {} ms: a request from the future could be delivered again after its outcome record expired; fix the producer's clock and publish it again",
            judge_ms.map_or(0, expiry::clock_allowance_ms),
            judge_ms.unwrap_or(0)
        )),
        _ => {
            Ok(request.with_requested_at_ms(outcome_ttl::judged_at_ms(at_ms, record_ms, judge_ms)))
        }
    }
}

/// The FAILED `idempotency_conflict` answer to a request whose key was used for another.
fn conflict_answer(request: &TransferRequest) -> TransferCompleted {
    let mut echo = RawRequest {
        transfer_id: request.transfer_id.clone(),
        from_user: Some(request.from_user.clone()),
        to_user: Some(request.to_user.clone()),
        amount: Some(request.amount.to_string()),
        currency: Some(request.currency.to_string()),
        idempotency_key: Some(request.idempotency_key.clone()),
    }
    .echo_failed();
    echo.reason = Some(FailureReason::IdempotencyConflict);
    echo
}

/// The time `job` waited from its publication to its first try, in µs: `None` for a retry
/// (its wait is the backoff, not the queue) or a message without a timestamp.
fn queue_wait_us(job: &Job, now_ms: u64) -> Option<u64> {
    if job.failures() != 0 {
        return None;
    }
    let published_ms = job.timestamp_ms?.max(0) as u64;
    Some(now_ms.saturating_sub(published_ms).saturating_mul(1_000))
}

/// Whether `key` is reported now: the first time it is seen, while fewer than `limit` keys have
/// been (the set of reported keys is bounded; past it, no key is reported again).
fn first_report(reported: &mut HashSet<String>, key: &str, limit: usize) -> bool {
    reported.len() < limit && reported.insert(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::worker::metrics::Metrics;
    use crate::worker::shared::Shared;
    use crate::worker::shared::test_job as job;

    fn header(headers: &OwnedHeaders, key: &str) -> Option<String> {
        use rdkafka::message::Headers;
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn the_queue_wait_of_a_first_try_is_its_age_in_microseconds_and_a_retry_has_none() {
        let mut fresh = job(0, 1, 10);
        fresh.timestamp_ms = Some(1_000);
        assert_eq!(queue_wait_us(&fresh, 3_500), Some(2_500_000));
        // A clock behind the message's timestamp: no wait, not an underflow.
        assert_eq!(queue_wait_us(&fresh, 900), Some(0));
        let undated = job(0, 2, 10);
        assert_eq!(queue_wait_us(&undated, 3_500), None);
        let mut retried = job(0, 3, 10);
        retried.timestamp_ms = Some(1_000);
        retried.transient_failures = 1;
        assert_eq!(queue_wait_us(&retried, 3_500), None);
    }

    #[test]
    fn a_key_held_without_ttl_is_reported_once_and_no_more_than_the_limit_are() {
        let mut reported = HashSet::new();
        assert!(first_report(&mut reported, "lock:a", 2));
        assert!(!first_report(&mut reported, "lock:a", 2), "reported twice");
        assert!(first_report(&mut reported, "lock:b", 2));
        assert!(!first_report(&mut reported, "lock:c", 2), "past the limit");
        assert_eq!(reported.len(), 2);
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

        // At the limit exactly: whole, not marked.
        let at_limit = job(0, 1, DLQ_PAYLOAD_BYTES_LIMIT);
        let out = outgoing(&config, &answer, &at_limit);
        assert_eq!(out.payload.len(), DLQ_PAYLOAD_BYTES_LIMIT);
        assert_eq!(header(&out.headers.unwrap(), "truncated"), None);

        let big = job(0, 1, 1_048_400);
        let long_error = Answer::DeadLetter("é".repeat(DLQ_ERROR_BYTES_LIMIT));
        let out = outgoing(&config, &long_error, &big);
        assert_eq!(out.payload.len(), DLQ_PAYLOAD_BYTES_LIMIT);
        let headers = out.headers.unwrap();
        assert_eq!(header(&headers, "truncated").as_deref(), Some("1048400"));
        let error = header(&headers, "error").unwrap();
        assert!(error.len() <= DLQ_ERROR_BYTES_LIMIT && error.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_completed_original_is_published_with_its_ledger_entries_keyed_by_wallet() {
        let config = WorkerConfig::default();
        let result = RawRequest {
            transfer_id: "tx_1".into(),
            from_user: None,
            to_user: None,
            amount: None,
            currency: None,
            idempotency_key: None,
        }
        .echo_failed();
        let entry = |wallet: &str, version| LedgerEntry {
            wallet_id: wallet.into(),
            version,
            kind: crate::engine::wallet::HistoryKind::Debit,
            amount: crate::Amount::from_minor(1),
            balance_after: crate::Amount::from_minor(9),
            currency: "USD".into(),
            transfer_id: "tx_1".into(),
            idempotency_key: "tx_1".into(),
            at_ms: 1,
        };
        let answer = Answer::Result(result, vec![entry("a", 4), entry("b", 7)]);
        let out = messages(&config, &answer, &job(0, 1, 10));
        let routed: Vec<(&str, &[u8])> = out.iter().map(|o| (o.topic, &o.key[..])).collect();
        assert_eq!(
            routed,
            [
                (config.results_topic.as_str(), &b"tx_1"[..]),
                (config.ledger_topic.as_str(), b"a"),
                (config.ledger_topic.as_str(), b"b"),
            ]
        );
        assert_eq!(out[2].payload, entry("b", 7).to_json());
        let dead = messages(&config, &Answer::DeadLetter("x".into()), &job(0, 1, 10));
        assert_eq!(dead.len(), 1, "a dead letter has no ledger entries");
    }

    #[test]
    fn a_delivery_gives_the_job_back_at_its_last_report_with_the_first_failure() {
        let delivery = Delivery::new(job(2, 9, 1), 3);
        assert!(delivery.reported().is_none());
        delivery.fail("first".into());
        delivery.fail("second".into());
        assert!(delivery.reported().is_none());
        let (job, failure) = delivery.reported().expect("the last report");
        assert_eq!((job.partition, job.offset), (2, 9));
        assert_eq!(failure.as_deref(), Some("first"));
        let clean = Delivery::new(self::job(0, 1, 1), 1);
        assert!(clean.reported().expect("one message").1.is_none());
    }

    #[test]
    fn retry_delays_double_per_failure_of_any_cause_up_to_the_cap_with_jitter() {
        let config = WorkerConfig::default().with_retry_delay_ms_max(2_000);
        let jitter = crate::worker::config::RETRY_JITTER_MS;
        let mut j = job(0, 1, 1);
        let mut bases = Vec::new();
        for failure in 0..9 {
            // Transfer errors first, then failed deliveries: one schedule for both.
            if failure < 5 {
                j.transient_failures += 1;
            } else {
                j.publish_failures += 1;
            }
            let base = config.retry_backoff().base_delay_ms(failure);
            for _ in 0..50 {
                let delay = retry_delay_ms(&config, &j);
                assert!(
                    (base..=base + jitter).contains(&delay),
                    "failure {}: {delay} ms outside {base}..={}",
                    failure + 1,
                    base + jitter
                );
            }
            bases.push(base);
        }
        assert_eq!(
            bases,
            [50, 100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000],
            "doubling from the base to the cap"
        );
        // Jitter spreads jobs that failed together.
        let spread: std::collections::HashSet<u64> =
            (0..200).map(|_| retry_delay_ms(&config, &j)).collect();
        assert!(spread.len() > 1, "jitter: {spread:?}");
    }

    #[test]
    fn a_stale_job_is_never_put_back_and_counts_once_for_its_revoke() {
        use crate::worker::metrics::Metrics;
        use crate::worker::shared::Shared;
        use std::collections::HashSet;
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        let mut old = job(0, 5, 10);
        old.generation = shared.generations.lock().current();
        shared.generations.lock().revoke(&HashSet::from([0]));
        let mut fresh = job(0, 6, 10);
        fresh.generation = shared.generations.lock().current();
        // A failed delivery of the old job's answer, and a transient error of its transfer.
        let delivery = DeliveryContext {
            shared: shared.clone(),
        };
        delivery.settle(old.clone(), Some("broker away".into()));
        schedule_retry(&shared, old, 10);
        assert_eq!(
            shared.retries.lock().len(),
            0,
            "the old job is not put back"
        );
        assert_eq!(shared.generations.lock().abandoned(0), 2);
        // A job consumed after the revoke is retried as usual.
        delivery.settle(fresh, Some("broker away".into()));
        assert_eq!(shared.retries.lock().len(), 1);
        assert_eq!(shared.generations.lock().abandoned(0), 2);
    }

    #[test]
    fn a_topic_missing_past_the_bound_stops_the_worker_and_an_ack_resets_the_clock() {
        use crate::worker::metrics::Metrics;
        use crate::worker::shared::Shared;
        let missing = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(is_topic_missing(&missing));
        assert!(is_topic_missing(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
        )));
        assert!(!is_topic_missing(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        let ctx = DeliveryContext {
            shared: shared.clone(),
        };
        let t0 = Instant::now();
        let limit = Duration::from_millis(TOPIC_MISSING_MS_LIMIT);
        assert!(!ctx.topic_missing("r", t0));
        assert!(
            !ctx.topic_missing("r", t0 + limit / 2),
            "created late, maybe"
        );
        // An acknowledged delivery in between: the topic is there, the clock starts again.
        ctx.acknowledged(&Delivery::new(job(0, 1, 1), 1), PartKind::Result);
        assert!(!ctx.topic_missing("r", t0 + limit));
        assert!(shared.fatal.lock().is_none());
        assert!(
            ctx.topic_missing("r", t0 + 2 * limit),
            "missing for a whole bound"
        );
        let fatal = shared.fatal.lock().clone().expect("the worker stops");
        assert!(fatal.contains("missing for 60 s (deleted?)"), "{fatal}");
        assert!(shared.shutdown.load(Ordering::SeqCst));
    }

    /// The value of `name{labels}` in the metrics' text output, read back by the metrics
    /// module's own parser (0 when absent).
    fn rendered(shared: &Shared, name: &str, labels: &[(&str, &str)]) -> f64 {
        use crate::worker::metrics::tests::{parse, value};
        value(&parse(&shared.metrics.render()), name, labels).unwrap_or(0.0)
    }

    #[test]
    fn each_delivery_report_acknowledges_fails_or_stops_by_its_error() {
        let production = |code| KafkaError::MessageProduction(code);
        let context = || {
            let shared = Shared::new(WorkerConfig::default(), Metrics::new());
            let ctx = DeliveryContext {
                shared: shared.clone(),
            };
            (shared, ctx)
        };
        // Acknowledged: counted by kind; the ack stage times results and dead letters only.
        let (shared, ctx) = context();
        let mut handed = job(0, 1, 1);
        handed.handed_at = Some(Instant::now());
        let delivery = Delivery::new(handed, 3);
        ctx.report(&delivery, PartKind::Result, Ok(None));
        assert!(delivery.reported().is_none(), "two more to report");
        ctx.report(&delivery, PartKind::Ledger, Ok(None));
        assert!(delivery.reported().is_none(), "one more to report");
        ctx.report(&delivery, PartKind::Ledger, Ok(None));
        assert!(delivery.reported().expect("all reported").1.is_none());
        assert_eq!(
            rendered(&shared, "wallet_results_published_total", &[]),
            1.0
        );
        assert_eq!(
            rendered(&shared, "wallet_ledger_entries_published_total", &[]),
            2.0
        );
        let acks = rendered(&shared, "wallet_stage_seconds_count", &[("stage", "ack")]);
        assert_eq!(acks, 1.0);
        // A transient failure: the job is redone, new jobs wait, the worker goes on.
        let (shared, ctx) = context();
        let delivery = Delivery::new(job(0, 2, 1), 2);
        ctx.report(&delivery, PartKind::Result, Ok(None));
        assert!(delivery.reported().is_none(), "one more to report");
        let timed_out = production(RDKafkaErrorCode::MessageTimedOut);
        ctx.report(&delivery, PartKind::Ledger, Err(&timed_out));
        let failure = delivery
            .reported()
            .expect("all reported")
            .1
            .expect("failed");
        assert!(
            failure.starts_with("publishing a ledger entry of it failed"),
            "{failure}"
        );
        assert!(shared.delivery_failing.load(Ordering::SeqCst));
        assert!(shared.fatal.lock().is_none());
        // Refused for good: the worker stops, naming what was refused.
        let (shared, ctx) = context();
        let delivery = Delivery::new(job(3, 7, 1), 1);
        let too_large = production(RDKafkaErrorCode::MessageSizeTooLarge);
        ctx.report(&delivery, PartKind::Ledger, Err(&too_large));
        assert!(delivery.reported().expect("reported").1.is_some());
        let fatal = shared.fatal.lock().clone().expect("the worker stops");
        assert!(
            fatal.starts_with("the brokers refuse a ledger entry of partition 3 offset 7"),
            "{fatal}"
        );
        assert!(!shared.delivery_failing.load(Ordering::SeqCst));
        assert_eq!(PartKind::DeadLetter.described(), "the answer to");
    }

    #[test]
    fn a_failed_delivery_counts_on_its_job_and_queues_it_again_each_time() {
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        let ctx = DeliveryContext {
            shared: shared.clone(),
        };
        ctx.settle(job(0, 4, 1), Some("lost".into()));
        let mut queued = shared.retries.lock().drain();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].failures(), 1);
        ctx.settle(queued.remove(0), Some("lost again".into()));
        let again = shared.retries.lock().drain();
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].failures(),
            2,
            "each failure counts: the backoff grows"
        );
        let retries = rendered(
            &shared,
            "wallet_retries_total",
            &[("cause", "kafka_produce")],
        );
        assert_eq!(retries, 2.0);
    }

    #[test]
    fn each_failed_send_counts_and_waits_longer_before_the_next() {
        let backoff = WorkerConfig::default().produce_backoff();
        let mut retries = SendRetries::default();
        for n in 1..=4 {
            let (attempt, delay_ms) = retries.next(&backoff);
            assert_eq!(attempt, n);
            let base = backoff.base_delay_ms(n);
            assert!(
                (base..=base + crate::worker::config::PRODUCE_RETRY_DELAY_MS_BASE)
                    .contains(&delay_ms)
            );
        }
        assert!(
            backoff.base_delay_ms(4) > backoff.base_delay_ms(1),
            "it doubles"
        );
    }

    #[test]
    fn a_request_dated_past_the_clock_allowance_is_refused_and_a_fresh_one_is_judged_by_its_time() {
        let request =
            TransferRequest::new("t1", "a", "b", "1", crate::engine::money::Currency::USD).unwrap();
        let ttl = LiveTtl::default();
        ttl.start(Some(60_000));
        let now = crate::engine::message::now_ms();
        let future = now + 60_000;
        let refused = dated(request.clone(), Some(future as i64), &ttl).expect_err("ahead");
        assert!(
            refused.contains("ms ahead of this worker's clock, more than the 6000 ms allowed"),
            "{refused}"
        );
        let fresh = dated(request.clone(), Some(now as i64), &ttl).expect("fresh");
        assert_eq!(fresh.requested_at_ms, Some(now));
        let undated = dated(request, None, &ttl).expect("no timestamp");
        assert_eq!(undated.requested_at_ms, None);
    }

    #[test]
    fn a_wait_lasts_its_whole_time_unless_shutdown_is_asked() {
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        let start = Instant::now();
        assert!(sleep_unless_shutdown(&shared, 30), "not asked to stop");
        // A lower bound only: a wait is never cut short, however fast the machine.
        assert!(start.elapsed() >= Duration::from_millis(30));
        shared.shutdown.store(true, Ordering::SeqCst);
        assert!(!sleep_unless_shutdown(&shared, 30), "asked to stop");
        assert!(!sleep_unless_shutdown(&shared, 0), "asked to stop");
    }

    #[test]
    fn the_retry_timer_lets_go_of_the_jobs_still_waiting_at_shutdown() {
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        let (redo, redone) = crossbeam_channel::unbounded();
        let later = Instant::now() + Duration::from_secs(3_600);
        let waiting = job(0, 7, 10);
        let size = waiting.size();
        shared.retries.lock().push(later, 0, later, size, waiting);
        shared.shutdown.store(true, Ordering::SeqCst);
        spawn_retry_timer(shared.clone(), redo)
            .join()
            .expect("the timer ends");
        let waiting = shared.retries.lock().len();
        assert_eq!(
            (waiting, shared.held_bytes()),
            (0, 0),
            "abandoned jobs hold no memory and the retrying gauge can fall"
        );
        assert!(redone.try_recv().is_err(), "not run again after shutdown");
    }

    #[test]
    fn an_error_cut_to_its_limit_ends_on_a_character_boundary() {
        // 'é' is bytes 1..3 of "héllo".
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("héllo", 64), "héllo");
    }

    #[test]
    fn permanent_produce_errors_are_told_from_passing_ones() {
        let production = |code| KafkaError::MessageProduction(code);
        assert!(is_permanent(&production(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(is_permanent(&production(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(is_permanent(&production(RDKafkaErrorCode::Fatal)));
        assert!(!is_permanent(&production(RDKafkaErrorCode::QueueFull)));
        assert!(!is_permanent(&production(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_permanent(&production(
            RDKafkaErrorCode::NotLeaderForPartition
        )));
    }
}
