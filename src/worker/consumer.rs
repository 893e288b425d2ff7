//! The consumer thread: polls requests into the backlog, dispatches them to the pool through
//! the key gate (skipping messages fetched again), pauses and resumes fetching by the bytes the
//! worker holds, asks for commits of the watermark, reports each partition's watermark to
//! readiness, and handles rebalances (librdkafka runs the callbacks on this thread, inside
//! `poll`).
//!
//! Owns the poll loop, the dispatch order (offset order per partition, per-key order through
//! `worker::keyed`), when commits are asked for, and what a revoke (or a rebalance error) stops,
//! waits for and commits. Does not run transfers or publish (`worker::pool`), run commits
//! (`worker::commit`) or compute positions (`worker::offsets`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;

use crate::worker::commit::Committer;
use crate::worker::config::{
    BUSY_POLL_MS, COMMIT_SHARE_DIVISOR, HELD_REPORT_INTERVAL_MS, POLL_MS, WAIT_STEP_MS,
};
use crate::worker::metrics::{Metrics, MetricsSummary, Stage, StageBuckets};
use crate::worker::offsets::Start;
use crate::worker::shared::{Job, Shared};

/// Why the consumer loop returned.
pub(crate) enum Exit {
    /// The shutdown handle was set.
    Shutdown,
    /// Joining the group has hung past any legitimate rebalance: rejoin as a new member.
    JoinStuck,
}

/// The consumer loop: poll into the backlog, dispatch to the pool, pause when full, commit.
pub(crate) fn consume(
    shared: &Shared,
    consumer: &Arc<BaseConsumer<ConsumerCtx>>,
    job_tx: &Sender<Job>,
    committer: &Committer<ConsumerCtx>,
) -> Exit {
    let config = &shared.config;
    let mut paused = false;
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    let mut summary = SummaryLog::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let join_wait_since = *shared.join_wait_since.lock();
        if join_stuck(join_wait_since, Instant::now(), config.join_stuck_ms()) {
            return Exit::JoinStuck;
        }
        let backlog_len = dispatch(shared, job_tx);
        let held_bytes = shared.held_bytes();
        let want_paused = should_pause(paused, held_bytes, config.backlog_bytes_max);
        let assignment_changed = shared.assignment_changed.swap(false, Ordering::SeqCst);
        if want_paused != paused || assignment_changed {
            set_paused(shared, consumer, want_paused, held_bytes);
            paused = want_paused;
        }
        if assignment_changed {
            seed_partition_metrics(shared, consumer);
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
        // Gauges, not decisions: a few times a second is enough (the loop turns every 1 ms
        // while jobs wait, and the oldest retry is a scan of the delay queue).
        if last_report.elapsed() >= Duration::from_millis(HELD_REPORT_INTERVAL_MS) {
            report_held(shared, held_bytes);
            last_report = Instant::now();
        }
        if last_commit.elapsed() >= Duration::from_millis(config.commit_interval_ms) {
            committer.commit_due(shared, consumer);
            last_commit = Instant::now();
        }
        if let Some(line) = summary.line_if_due(&shared.metrics, config.summary_interval_ms) {
            log::info!("{line}");
        }
    }
    Exit::Shutdown
}

/// Whether a join that began waiting at `since` has waited longer than `stuck_ms` at `now`
/// (and is taken as hung). Pure.
fn join_stuck(since: Option<Instant>, now: Instant, stuck_ms: u64) -> bool {
    since
        .is_some_and(|since| now.saturating_duration_since(since) > Duration::from_millis(stuck_ms))
}

/// When the join now waiting began: `now` when it starts waiting, kept while it waits, none
/// once it does not. Pure.
fn join_wait(waiting: bool, since: Option<Instant>, now: Instant) -> Option<Instant> {
    waiting.then(|| since.unwrap_or(now))
}

/// Sets the gauges of what the worker holds: in flight, held bytes, parked, retrying; and tells
/// readiness each partition's watermark.
fn report_held(shared: &Shared, held_bytes: usize) {
    let (in_flight, watermarks) = {
        let tracker = shared.tracker.lock();
        let watermarks: Vec<(i32, i64, usize)> = tracker
            .positions()
            .into_iter()
            .map(|(p, position)| (p, position, tracker.in_flight(p)))
            .collect();
        (tracker.in_flight_total(), watermarks)
    };
    shared.metrics.set_in_flight(in_flight as i64);
    shared.metrics.health().set_watermarks(&watermarks);
    let parked = shared.gate.lock().parked();
    let (retrying, oldest_since) = {
        let retries = shared.retries.lock();
        (retries.len(), retries.oldest_since())
    };
    let oldest_s = oldest_since.map_or(0.0, |since| since.elapsed().as_secs_f64());
    shared
        .metrics
        .set_held(held_bytes, parked, retrying, oldest_s);
}

/// Whether the consumer should be paused, with hysteresis: pause at the bound, resume at half
/// of it (pausing and resuming cost librdkafka a refetch each, so not too often). Pure.
fn should_pause(paused: bool, held_bytes: usize, backlog_bytes_max: usize) -> bool {
    if paused {
        held_bytes > backlog_bytes_max / 2
    } else {
        held_bytes >= backlog_bytes_max
    }
}

/// One poll; a message goes to the back of the backlog, an error is counted and logged.
fn poll_into_backlog(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>, poll_ms: u64) {
    match consumer.poll(Duration::from_millis(poll_ms)) {
        Some(Ok(message)) => {
            let mut job = Job::new(
                message.partition(),
                message.offset(),
                message.key().map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            );
            job.timestamp_ms = message.timestamp().to_millis();
            job.generation = shared.generations.lock().current();
            shared.backlog.lock().push(job);
            seek_back_failpoint(
                consumer,
                message.topic(),
                message.partition(),
                message.offset(),
            );
        }
        Some(Err(e)) => {
            shared.metrics.record_retry("kafka_consume");
            shared
                .warnings
                .warn("consume", || format!("consumer: {e}; polling on"));
        }
        None => {}
    }
}

/// Test-only failure injection (feature `test-hooks`, never in a normal build): with
/// `WALLET_FAILPOINT_SEEK_BACK=AT:TO` the consumer, once it has polled offset `AT` of a
/// partition, seeks that partition back to offset `TO` (once per process), as a fetch that goes
/// back would: the messages from `TO` on come again.
fn seek_back_failpoint(
    consumer: &BaseConsumer<ConsumerCtx>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    use rdkafka::Offset;
    use std::sync::atomic::AtomicBool;
    static DONE: AtomicBool = AtomicBool::new(false);
    if !cfg!(feature = "test-hooks") {
        return;
    }
    let Ok(spec) = std::env::var("WALLET_FAILPOINT_SEEK_BACK") else {
        return;
    };
    let Some((at, to)) = spec
        .split_once(':')
        .and_then(|(at, to)| Some((at.parse::<i64>().ok()?, to.parse::<i64>().ok()?)))
    else {
        return;
    };
    if offset != at || DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let result = consumer.seek(topic, partition, Offset::Offset(to), Duration::from_secs(5));
    log::warn!(
        "failpoint: seeking partition {partition} back from offset {offset} to {to}: {result:?}"
    );
}

/// The periodic one-line summary: totals and the rate since the previous line.
struct SummaryLog {
    since: Instant,
    processed_then: u64,
    stages_then: StageBuckets,
}

impl SummaryLog {
    fn new() -> SummaryLog {
        SummaryLog {
            since: Instant::now(),
            processed_then: 0,
            stages_then: StageBuckets::default(),
        }
    }

    /// The summary line once `interval_ms` has passed since the last one (the next interval
    /// starts then); none before.
    fn line_if_due(&mut self, metrics: &Metrics, interval_ms: u64) -> Option<String> {
        let elapsed = self.since.elapsed();
        if elapsed < Duration::from_millis(interval_ms) {
            return None;
        }
        let s = metrics.summary();
        let stages = metrics.stage_buckets();
        let split = stage_text(&stages.percentiles_since(&self.stages_then));
        let line = summary_line(&s, s.processed - self.processed_then, elapsed, &split);
        self.processed_then = s.processed;
        self.stages_then = stages;
        self.since = Instant::now();
        Some(line)
    }
}

/// `processed 150 (25/s), failed 3, ...; p50/p99 ms {split}`: the totals, and the rate of
/// the `processed_since` outcomes over `elapsed`. Pure.
fn summary_line(
    s: &MetricsSummary,
    processed_since: u64,
    elapsed: Duration,
    split: &str,
) -> String {
    let rate = processed_since as f64 / elapsed.as_secs_f64();
    format!(
        "processed {} ({rate:.0}/s), failed {}, duplicates {}, dead letters {}, retries {}, lag {}; p50/p99 ms {split}",
        s.processed, s.failed, s.duplicates, s.dlq, s.retries, s.lag_total
    )
}

/// Moves jobs from the backlog into the channel while it has room; a job whose key has an
/// earlier job running parks in the gate instead (it takes no room). Returns the backlog's
/// length.
fn dispatch(shared: &Shared, job_tx: &Sender<Job>) -> usize {
    let mut backlog = shared.backlog.lock();
    // While answers cannot be delivered, new jobs would only add answers that cannot be
    // delivered: they wait in the backlog (which pauses fetching once full).
    if shared.delivery_failing.load(Ordering::SeqCst) {
        return backlog.jobs.len();
    }
    // Only this thread sends, so room seen here is still there at `send`.
    while !job_tx.is_full() {
        let Some(job) = backlog.pop() else {
            break;
        };
        // Started in offset order, parked or not, so the watermark never passes a parked job.
        let start = shared.tracker.lock().start(job.partition, job.offset);
        if let Start::Redelivery { started_max } = start {
            skip_redelivery(shared, &job, started_max);
            continue;
        }
        let admitted = shared.gate.lock().admit(job);
        if let Some(mut job) = admitted {
            job.holds_key = job.key.is_some();
            job_tx
                .send(job)
                .expect("pool threads outlive the consumer loop");
        }
    }
    backlog.jobs.len()
}

/// A message at or below the highest offset started on its partition came again (the fetch
/// went back): it is in flight, finished, or was committed before, so it is not run again.
fn skip_redelivery(shared: &Shared, job: &Job, started_max: i64) {
    shared.metrics.record_redelivery_skipped();
    shared.warnings.warn("fetch_went_back", || {
        format!(
            "partition {} offset {} fetched again after offset {started_max} was started (the fetch went back); skipping what was started already",
            job.partition, job.offset
        )
    });
}

/// Pauses (or resumes) every assigned partition, and exports whether the consumer is paused.
fn set_paused(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>, paused: bool, held: usize) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            shared.metrics.set_consumer_paused(paused);
            let bound = shared.config.backlog_bytes_max;
            log::debug!(
                "partitions {} ({held} bytes held, bound {bound})",
                if paused { "paused" } else { "resumed" }
            );
        }
        Err(e) => log::warn!("pause/resume: {e}"),
    }
}

/// Longest the consumer thread spends exporting a new assignment's lag and committed offset
/// (the committed offsets and every partition's watermarks, asked of the brokers together).
const ASSIGNMENT_METRICS_TIMEOUT_MS: u64 = 2_000;

/// Exports `wallet_committed_offset` and `wallet_consumer_lag` for every assigned partition
/// right after an assignment, before any traffic or commit: the committed offset (the low
/// watermark where the group has none: where it starts reading) and the high watermark minus
/// it. So an idle worker, or one stuck from its start, shows its lag, and an alert on it can
/// fire. Bounded by [`ASSIGNMENT_METRICS_TIMEOUT_MS`] in all (the consumer thread must get
/// back to polling); a broker that does not answer in time leaves the partitions not yet done
/// to the statistics callback.
fn seed_partition_metrics(shared: &Shared, consumer: &BaseConsumer<ConsumerCtx>) {
    let deadline = Instant::now() + Duration::from_millis(ASSIGNMENT_METRICS_TIMEOUT_MS);
    let left = || deadline.saturating_duration_since(Instant::now());
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let committed = match consumer.committed_offsets(assignment.clone(), left()) {
        Ok(tpl) => tpl,
        Err(e) => {
            log::debug!("committed offsets for the lag metrics: {e}");
            return;
        }
    };
    for e in committed.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        if left().is_zero() {
            log::debug!("lag metrics: out of time at partition {partition}");
            return;
        }
        let (low, high) = match consumer.fetch_watermarks(topic, partition, left()) {
            Ok(marks) => marks,
            Err(err) => {
                log::debug!("watermarks of partition {partition} for the lag metrics: {err}");
                continue;
            }
        };
        let (position, lag) = seeded_position_and_lag(e.offset(), low, high);
        shared.metrics.set_committed(partition, position);
        shared.metrics.set_lag(partition, lag);
    }
}

/// A new assignment's committed position and lag: the group's committed offset (or, where it
/// has none, the low watermark, where it starts reading) and the high watermark's distance
/// past it, never negative. Pure.
fn seeded_position_and_lag(committed: rdkafka::Offset, low: i64, high: i64) -> (i64, i64) {
    let position = match committed {
        rdkafka::Offset::Offset(o) if o >= 0 => o,
        _ => low.max(0),
    };
    (position, (high - position).max(0))
}

/// Whether librdkafka's group join state (`cgrp.join_state` in its statistics) is the wait for
/// the coordinator to answer a join, the wait that can hang; its other states (`init`,
/// `wait-metadata`, `wait-sync`, the assignment calls, `steady`) move on by themselves. Pure.
fn waiting_to_join(join_state: Option<&str>) -> bool {
    join_state == Some("wait-join")
}

/// A partition's lag from librdkafka's statistics: its own `consumer_lag` when it knows it;
/// with nothing committed yet (it has no lag then), the high watermark against where the
/// group starts, as exported at the assignment (`committed`); none for the internal partition
/// (-1) or when neither is known. Pure.
fn statistics_lag(
    partition: i32,
    consumer_lag: i64,
    hi_offset: i64,
    committed: Option<i64>,
) -> Option<i64> {
    if partition < 0 {
        return None;
    }
    if consumer_lag >= 0 {
        return Some(consumer_lag);
    }
    match (hi_offset >= 0, committed) {
        (true, Some(start)) => Some((hi_offset - start).max(0)),
        _ => None,
    }
}

/// Rebalance and statistics callbacks, run on the consumer thread inside `poll` (and on the
/// thread that drops the consumer, whose close revokes what it holds).
pub(crate) struct ConsumerCtx {
    pub shared: Arc<Shared>,
    pub committer: Committer<ConsumerCtx>,
    /// The consumer this context belongs to, set once it exists, so that a revoke can hand
    /// its commit to the committer thread.
    pub consumer: OnceLock<Weak<BaseConsumer<ConsumerCtx>>>,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, statistics: Statistics) {
        let waiting = waiting_to_join(statistics.cgrp.as_ref().map(|g| g.join_state.as_str()));
        {
            let mut since = self.shared.join_wait_since.lock();
            if waiting {
                self.shared.metrics.health().set_joining();
            }
            *since = join_wait(waiting, *since, Instant::now());
        }
        let Some(topic) = statistics.topics.get(&self.shared.config.requests_topic) else {
            return;
        };
        for (partition, p) in &topic.partitions {
            let committed = self.shared.metrics.committed(*partition);
            if let Some(lag) = statistics_lag(*partition, p.consumer_lag, p.hi_offset, committed) {
                self.shared.metrics.set_lag(*partition, lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    /// On revoke, and on a rebalance error (librdkafka then drops the whole assignment): stop
    /// dispatching the partitions, stop their parked jobs and retries, let their running jobs
    /// finish (bounded), commit their watermark, then let them go.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = || {
            let mut partitions: Vec<i32> = consumer
                .assignment()
                .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            partitions.extend(
                self.shared
                    .tracker
                    .lock()
                    .positions()
                    .iter()
                    .map(|(p, _)| *p),
            );
            partitions
        };
        if let Some(revoked) = revoked_by(rebalance, assigned) {
            self.revoke(consumer, &revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.metrics.health().set_assigned(tpl.count());
            self.shared.delivery_failing.store(false, Ordering::SeqCst);
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            log::info!("partitions {partitions:?} assigned");
            self.shared.assignment_changed.store(true, Ordering::SeqCst);
        }
    }
}

/// The partitions a rebalance takes away: those revoked, or on a rebalance error every
/// partition held (`assigned`: the assignment and what the tracker still holds), which
/// librdkafka unassigns; `None` for an assignment. Pure.
fn revoked_by(
    rebalance: &Rebalance<'_>,
    assigned: impl FnOnce() -> Vec<i32>,
) -> Option<HashSet<i32>> {
    match rebalance {
        Rebalance::Assign(_) => None,
        Rebalance::Revoke(tpl) => Some(tpl.elements().iter().map(|e| e.partition()).collect()),
        Rebalance::Error(e) => {
            let held: HashSet<i32> = assigned().into_iter().collect();
            log::warn!("rebalance error: {e}; librdkafka drops the assignment: revoking {held:?}");
            Some(held)
        }
    }
}

impl ConsumerCtx {
    /// Revokes `revoked`: stops their jobs that are not running, waits (bounded) for the
    /// running ones, commits their watermark (stop or no stop), and forgets them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, revoked: &HashSet<i32>) {
        let shared = &self.shared;
        let began = Instant::now();
        shared.metrics.health().set_joining();
        let (undispatched, stopped) = stop_partitions(shared, revoked);
        let running: usize = {
            let tracker = shared.tracker.lock();
            revoked.iter().map(|p| tracker.in_flight(*p)).sum()
        };
        log::info!(
            "partitions {revoked:?} being revoked: waiting for their {running} started jobs"
        );
        let settled = wait_for_running(shared, revoked, began);
        let positions: Vec<(i32, i64)> = {
            let tracker = shared.tracker.lock();
            revoked
                .iter()
                .filter_map(|p| tracker.commit_position(*p).map(|o| (*p, o)))
                .collect()
        };
        let commit_by = revoke_deadlines(
            began,
            shared.config.revoke_timeout(),
            shared.stop_deadline(),
        )
        .1;
        let commit_state = match self.commit_revoked(consumer, positions.clone(), commit_by) {
            Some(_) => "committed",
            None => "not committed (the next owner redoes them; idempotency answers)",
        };
        let mut tracker = shared.tracker.lock();
        for p in revoked {
            tracker.forget(*p);
            shared.metrics.forget_partition(*p);
        }
        log::info!(
            "partitions {revoked:?} revoked: positions {positions:?} {commit_state}; {undispatched} undispatched and {stopped} parked or retrying messages left to the next owner{}",
            if settled {
                ""
            } else {
                "; some jobs were still running"
            }
        );
    }

    /// Commits a revoke's positions, after every commit asked for before it, by `deadline`.
    /// While the consumer is being dropped (its close revokes) the commit runs on this thread.
    fn commit_revoked(
        &self,
        consumer: &BaseConsumer<Self>,
        positions: Vec<(i32, i64)>,
        deadline: Instant,
    ) -> Option<Vec<(i32, i64)>> {
        match self.consumer.get().and_then(Weak::upgrade) {
            Some(consumer) => self.committer.commit_by(&consumer, positions, deadline),
            None => self
                .committer
                .commit_now(&self.shared, consumer, &positions),
        }
    }
}

/// When a revoke that began at `began` stops waiting for its running jobs, and when its commit
/// must be done: `revoke_timeout` after it began, or the stop deadline if that comes first; the
/// last `1/COMMIT_SHARE_DIVISOR` of that time is the commit's. Pure.
pub(crate) fn revoke_deadlines(
    began: Instant,
    revoke_timeout: Duration,
    stop_deadline: Option<Instant>,
) -> (Instant, Instant) {
    let end = stop_deadline.map_or(began + revoke_timeout, |stop| {
        (began + revoke_timeout).min(stop)
    });
    let share = end.saturating_duration_since(began) / COMMIT_SHARE_DIVISOR;
    (end - share, end)
}

/// `queue_wait 3/9, transfer 1/2, ack 2/5` (p50/p99 in ms per stage; `-` when none). Pure.
fn stage_text(percentiles: &[Option<(f64, f64)>; 3]) -> String {
    Stage::ALL
        .iter()
        .zip(percentiles)
        .map(|(stage, p)| match p {
            Some((p50, p99)) => format!("{} {p50}/{p99}", stage.as_str()),
            None => format!("{} -", stage.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops the revoked partitions' jobs that are not running: undispatched ones leave the backlog,
/// parked ones the gate, retrying ones the delay queue; the latter two count as abandoned.
/// Returns (undispatched, parked or retrying).
fn stop_partitions(shared: &Shared, revoked: &HashSet<i32>) -> (usize, usize) {
    shared.generations.lock().revoke(revoked);
    let undispatched = shared.backlog.lock().drop_partitions(revoked);
    let parked = shared.gate.lock().drop_partitions(revoked);
    let retrying = shared.retries.lock().drop_partitions(revoked);
    let mut generations = shared.generations.lock();
    for job in parked.iter().chain(&retrying) {
        generations.abandon(job);
    }
    (undispatched, parked.len() + retrying.len())
}

/// Waits until every started job of `revoked` is finished or abandoned, at most until the
/// revoke's wait ends ([`revoke_deadlines`], looked at again each step: a stop that begins
/// meanwhile shortens it). Returns false when the time ran out.
fn wait_for_running(shared: &Shared, revoked: &HashSet<i32>, began: Instant) -> bool {
    let busy = || {
        let tracker = shared.tracker.lock();
        let generations = shared.generations.lock();
        revoked
            .iter()
            .any(|p| tracker.in_flight(*p) > generations.abandoned(*p))
    };
    while busy() {
        let (wait_until, _) = revoke_deadlines(
            began,
            shared.config.revoke_timeout(),
            shared.stop_deadline(),
        );
        if Instant::now() >= wait_until {
            log::warn!(
                "revoke: jobs of {revoked:?} still running after {} ms; their offsets stay uncommitted",
                began.elapsed().as_millis()
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(WAIT_STEP_MS));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_pauses_at_the_bound_and_resumes_at_half() {
        let max = 1_000;
        assert!(!should_pause(false, 999, max));
        assert!(should_pause(false, 1_000, max));
        assert!(should_pause(true, 501, max), "stays paused above half");
        assert!(!should_pause(true, 500, max), "resumes at half");
    }

    #[test]
    fn a_revoke_waits_three_quarters_of_its_timeout_and_commits_in_the_last() {
        let began = Instant::now();
        let s = Duration::from_secs;
        // No stop: the whole revoke timeout (15 s), not the shutdown timeout (10 s).
        let (wait, commit) = revoke_deadlines(began, s(15), None);
        assert_eq!(wait - began, Duration::from_millis(11_250));
        assert_eq!(commit - began, s(15));
        // A stop due in 4 s shortens both; the commit keeps its quarter.
        let (wait, commit) = revoke_deadlines(began, s(15), Some(began + s(4)));
        assert_eq!((wait - began, commit - began), (s(3), s(4)));
        // A stop due after the revoke timeout changes nothing.
        assert_eq!(
            revoke_deadlines(began, s(15), Some(began + s(60))),
            revoke_deadlines(began, s(15), None)
        );
    }

    #[test]
    fn a_join_is_hung_only_once_it_has_waited_longer_than_its_limit() {
        let now = Instant::now();
        let ago = |ms| now - Duration::from_millis(ms);
        assert!(!join_stuck(None, now, 0), "no join waiting");
        assert!(!join_stuck(Some(ago(1_000)), now, 1_000), "at the limit");
        assert!(join_stuck(Some(ago(1_001)), now, 1_000));
        assert!(!join_stuck(Some(ago(10)), now, 1_000));
    }

    #[test]
    fn a_join_waits_from_when_it_started_waiting_until_it_stops() {
        let now = Instant::now();
        let began = now - Duration::from_secs(5);
        assert_eq!(join_wait(true, None, now), Some(now), "starts now");
        assert_eq!(
            join_wait(true, Some(began), now),
            Some(began),
            "still waiting"
        );
        assert_eq!(join_wait(false, Some(began), now), None, "joined");
        assert_eq!(join_wait(false, None, now), None);
    }

    #[test]
    fn the_summary_line_gives_the_totals_and_the_rate_over_its_interval() {
        let s = MetricsSummary {
            processed: 150,
            failed: 3,
            duplicates: 2,
            dlq: 1,
            retries: 4,
            lag_total: 7,
        };
        assert_eq!(
            summary_line(&s, 50, Duration::from_secs(2), "queue_wait -"),
            "processed 150 (25/s), failed 3, duplicates 2, dead letters 1, retries 4, lag 7; p50/p99 ms queue_wait -"
        );
    }

    #[test]
    fn a_summary_is_due_once_per_interval_and_counts_what_was_processed_since_the_last() {
        use crate::Status;
        use crate::engine::outcome::TransferStats;
        use crate::worker::metrics::tests::outcome;
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.record_outcome(&outcome(
                Status::Completed,
                None,
                false,
                TransferStats::default(),
            ));
        }
        let mut summary = SummaryLog::new();
        summary.processed_then = 1;
        summary.since = Instant::now() - Duration::from_secs(2);
        let line = summary.line_if_due(&metrics, 1_000).expect("due");
        assert!(line.starts_with("processed 3 (1/s)"), "{line}");
        assert_eq!(summary.line_if_due(&metrics, 1_000), None, "not due again");
    }

    #[test]
    fn a_new_assignment_starts_at_the_committed_offset_or_else_the_low_watermark() {
        use rdkafka::Offset;
        assert_eq!(seeded_position_and_lag(Offset::Offset(7), 2, 10), (7, 3));
        assert_eq!(seeded_position_and_lag(Offset::Offset(0), 2, 10), (0, 10));
        assert_eq!(
            seeded_position_and_lag(Offset::Invalid, 2, 10),
            (2, 8),
            "none yet"
        );
        let raw_negative = seeded_position_and_lag(Offset::Offset(-5), 2, 10);
        assert_eq!(raw_negative, (2, 8), "a negative offset is no position");
        assert_eq!(
            seeded_position_and_lag(Offset::Invalid, -1, 0),
            (0, 0),
            "empty"
        );
        assert_eq!(
            seeded_position_and_lag(Offset::Offset(12), 2, 10),
            (12, 0),
            "never < 0"
        );
    }

    #[test]
    fn the_lag_is_librdkafkas_once_it_knows_it_and_the_watermark_past_the_start_before() {
        assert_eq!(
            statistics_lag(0, 4, 100, Some(90)),
            Some(4),
            "librdkafka's own"
        );
        assert_eq!(statistics_lag(0, 0, 100, Some(90)), Some(0));
        assert_eq!(
            statistics_lag(1, -1, 100, Some(90)),
            Some(10),
            "nothing committed yet"
        );
        assert_eq!(
            statistics_lag(1, -1, 80, Some(90)),
            Some(0),
            "never negative"
        );
        assert_eq!(
            statistics_lag(1, -1, 0, Some(0)),
            Some(0),
            "an empty partition"
        );
        assert_eq!(
            statistics_lag(1, -1, -1, Some(90)),
            None,
            "no watermark yet"
        );
        assert_eq!(statistics_lag(1, -1, 100, None), None, "no start exported");
        assert_eq!(
            statistics_lag(-1, 4, 100, Some(90)),
            None,
            "the internal partition"
        );
    }

    #[test]
    fn only_the_wait_for_the_coordinators_join_answer_counts_as_joining() {
        assert!(waiting_to_join(Some("wait-join")));
        for other in ["init", "wait-metadata", "wait-sync", "steady"] {
            assert!(!waiting_to_join(Some(other)), "{other}");
        }
        assert!(!waiting_to_join(None), "no group in the statistics");
    }

    #[test]
    fn a_revoke_stops_the_revoked_partitions_backlog_parked_and_retrying_jobs_only() {
        use crate::worker::config::WorkerConfig;
        use crate::worker::shared::test_job as job;
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        {
            let mut backlog = shared.backlog.lock();
            for (p, o) in [(0, 5), (0, 6), (1, 9)] {
                backlog.push(job(p, o, 10));
            }
        }
        let mut gate = shared.gate.lock();
        assert!(gate.admit(job(0, 1, 10)).is_some(), "running");
        assert!(gate.admit(job(0, 2, 10)).is_none(), "parked behind it");
        drop(gate);
        let now = Instant::now();
        shared.retries.lock().push(now, 0, now, 75, job(0, 3, 10));
        shared.retries.lock().push(now, 1, now, 75, job(1, 4, 10));
        assert_eq!(stop_partitions(&shared, &HashSet::from([0])), (2, 2));
        assert_eq!(shared.backlog.lock().jobs.len(), 1, "partition 1's stays");
        assert_eq!(shared.retries.lock().len(), 1, "partition 1's stays");
        assert_eq!(
            shared.generations.lock().abandoned(0),
            2,
            "parked and retrying"
        );
    }

    #[test]
    fn a_revoke_waits_for_started_jobs_until_they_finish_or_are_abandoned_or_time_runs_out() {
        use crate::worker::config::WorkerConfig;
        use crate::worker::shared::test_job as job;
        let config = WorkerConfig {
            revoke_timeout_ms: 40,
            ..WorkerConfig::default()
        };
        let shared = Shared::new(config, Metrics::new());
        let revoked = HashSet::from([0]);
        assert!(
            wait_for_running(&shared, &revoked, Instant::now()),
            "none started"
        );
        let started = shared.tracker.lock().start(0, 7);
        assert!(matches!(started, Start::Started));
        let began = Instant::now();
        assert!(!wait_for_running(&shared, &revoked, began), "still running");
        assert!(
            began.elapsed() >= Duration::from_millis(30),
            "three quarters of 40 ms"
        );
        shared.generations.lock().abandon(&job(0, 7, 1));
        assert!(
            wait_for_running(&shared, &revoked, Instant::now()),
            "abandoned"
        );
        assert!(
            wait_for_running(&shared, &HashSet::from([1]), Instant::now()),
            "another partition's job is not waited for"
        );
    }

    #[test]
    fn a_rebalance_error_revokes_everything_held() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let error = Rebalance::Error(KafkaError::Rebalance(RDKafkaErrorCode::Fail));
        assert_eq!(
            revoked_by(&error, || vec![2, 0, 2]),
            Some(HashSet::from([0, 2]))
        );
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition("t", 1);
        assert_eq!(
            revoked_by(&Rebalance::Revoke(&tpl), || vec![0, 1, 2]),
            Some(HashSet::from([1])),
            "a revoke names its partitions"
        );
        assert_eq!(revoked_by(&Rebalance::Assign(&tpl), Vec::new), None);
    }

    #[test]
    fn the_summary_names_each_stage() {
        let text = stage_text(&[Some((2.0, 5.0)), None, Some((1.0, 10.0))]);
        assert_eq!(text, "queue_wait 2/5, transfer -, ack 1/10");
    }
}
