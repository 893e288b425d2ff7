//! The state the worker's threads share: [`Shared`] (the locks, flags, counters and handles of
//! one worker, with the lock order), the [`Job`] that travels between the threads, the
//! [`Backlog`] of polled messages and the assignment [`Generations`].
//!
//! A leaf below the threads (issue 21): the consumer thread (`worker::consumer`), the pool,
//! producer and retry timer (`worker::pool`), the committer (`worker::commit`) and the recovery
//! sweep (`worker::sweep`) use it, and `worker::pipeline` creates it and starts them; it uses
//! none of them, so the dependencies point one way.
//!
//! Owns these types and their bookkeeping: a job's size and failures, the backlog's bytes,
//! which jobs are stale, the stop clock, the first permanent error. Does not run a thread,
//! dispatch, retry or commit (the modules above), nor compute offsets (`worker::offsets`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::engine::setting::SettingError;
use crate::worker::config::{WARN_INTERVAL_MS, WorkerConfig};
use crate::worker::keyed::{KeyGate, Keyed};
use crate::worker::metrics::Metrics;
use crate::worker::offsets::OffsetTracker;
use crate::worker::outcome_ttl::LiveTtl;
use crate::worker::retry::RetryQueue;
use crate::worker::warnings::Warnings;

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

/// State shared by the consumer thread, its rebalance callbacks, the pool, the retry timer, the
/// producer, the committer and the recovery sweep.
///
/// Lock order: locks are never nested except backlog -> tracker and backlog -> gate (dispatch)
/// and tracker -> generations (a revoke waiting for its running jobs). The locks inside
/// `metrics` and `warnings` are taken last and take none of these.
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
    /// requests topic): [`Worker::run`](crate::worker::Worker::run) returns it as it would at start.
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
    /// [`Worker::run`](crate::worker::Worker::run).
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

    /// Whether the worker is stopping: a stop was asked for (a signal, a fatal error) or the
    /// stop's deadline has passed. Work that could go on (a sweep's next batch) ends here.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst) || self.past_deadline()
    }

    /// Bytes held without running: backlog, parked behind a key, waiting to retry.
    pub fn held_bytes(&self) -> usize {
        let backlog = self.backlog.lock().bytes;
        let parked = self.gate.lock().parked_bytes();
        let retrying = self.retries.lock().bytes();
        backlog + parked + retrying
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

    use crate::worker::shared::test_job as job;

    #[test]
    fn a_worker_is_stopping_once_asked_to_or_once_past_its_deadline() {
        let running = Shared::new(WorkerConfig::default(), Metrics::new());
        assert!(!running.stopping());
        let asked = Shared::new(WorkerConfig::default(), Metrics::new());
        asked.shutdown.store(true, Ordering::SeqCst);
        assert!(!asked.past_deadline(), "asked, its deadline still ahead");
        assert!(asked.stopping(), "asked to stop");
        let config = WorkerConfig {
            shutdown_timeout_ms: 0,
            ..WorkerConfig::default()
        };
        let late = Shared::new(config, Metrics::new());
        late.begin_stop();
        assert!(!late.shutdown.load(Ordering::SeqCst));
        assert!(late.stopping(), "past the deadline without the flag");
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
        assert_eq!(backlog.drop_partitions(&HashSet::from([9])), 0, "none of 9");
        assert_eq!(backlog.bytes, (10 + 1 + 64) + (50 + 1 + 64));
        let order: Vec<(i32, i64)> = std::iter::from_fn(|| backlog.pop())
            .map(|j| (j.partition, j.offset))
            .collect();
        assert_eq!(order, vec![(0, 11), (2, 7)]);
        assert_eq!(backlog.bytes, 0);
    }

    /// The gate orders a job by what the job says of itself: the partition and key it holds,
    /// the generation that holds it, and the bytes it parks.
    #[test]
    fn the_key_gate_orders_jobs_by_their_partition_key_and_generation_and_counts_their_size() {
        let of = |partition, offset, key: &[u8], generation| {
            let mut job = Job::new(partition, offset, Some(key.to_vec()), vec![b'x'; 10]);
            job.generation = generation;
            job
        };
        let mut gate = KeyGate::default();
        let first = gate.admit(of(0, 1, b"k", 3)).expect("its key was free");
        assert!(gate.admit(of(0, 2, b"k", 3)).is_none(), "behind offset 1");
        assert_eq!(gate.parked_bytes(), 10 + 1 + 64);
        assert!(gate.admit(of(0, 3, b"other", 3)).is_some(), "another key");
        assert!(gate.admit(of(1, 4, b"k", 3)).is_some(), "another partition");
        let stale = of(0, 1, b"k", 2);
        assert!(
            gate.release(&stale).is_none(),
            "an older generation frees nothing"
        );
        let next = gate.release(&first).expect("offset 2 takes the key");
        assert_eq!(next.offset, 2);
        assert_eq!(gate.parked_bytes(), 0);
    }

    #[test]
    fn the_held_bytes_are_the_backlog_the_parked_jobs_and_the_retrying_ones() {
        let shared = Shared::new(WorkerConfig::default(), Metrics::new());
        shared.backlog.lock().push(job(0, 1, 100));
        let mut gate = shared.gate.lock();
        assert!(gate.admit(job(0, 2, 10)).is_some());
        assert!(gate.admit(job(0, 3, 1_000)).is_none());
        drop(gate);
        let now = Instant::now();
        shared.retries.lock().push(now, 1, now, 7, job(1, 1, 1));
        assert_eq!(shared.held_bytes(), (100 + 65) + (1_000 + 65) + 7);
    }

    #[test]
    fn a_stop_deadline_is_set_once_a_timeout_ahead_and_the_time_left_counts_down_to_it() {
        let config = WorkerConfig {
            shutdown_timeout_ms: 60_000,
            ..WorkerConfig::default()
        };
        let shared = Shared::new(config, Metrics::new());
        assert_eq!(shared.stop_deadline(), None);
        assert_eq!(
            shared.time_left(),
            Duration::from_secs(60),
            "the whole timeout"
        );
        let before = Instant::now();
        let deadline = shared.begin_stop();
        assert!(
            deadline >= before + Duration::from_secs(60),
            "a timeout ahead"
        );
        assert_eq!(shared.stop_deadline(), Some(deadline));
        assert_eq!(shared.begin_stop(), deadline, "set once");
        let left = shared.time_left();
        assert!(
            left <= Duration::from_secs(60) && left > Duration::ZERO,
            "{left:?}"
        );
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
