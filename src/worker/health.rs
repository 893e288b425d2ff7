//! Liveness and readiness of a worker, answered on the metrics port as `/healthz` and `/readyz`.
//!
//! Owns [`Health`], a small thread-safe handle that the pipeline tells about the consumer group
//! (joining, partitions assigned), about a fatal producer error and about each partition's
//! watermark, and that runs a Redis check on demand; and [`Readiness`], the verdict of one check with a reason per failing part. Does
//! not own the HTTP endpoint (`metrics::serve`) nor the Redis client behind the check (the
//! process, `command`, installs it with [`Health::set_redis_check`]).
//!
//! A worker is ready when all four hold:
//! - **group**: partitions are assigned, or a join of the consumer group is in progress (a new
//!   worker starts joining, so it is ready from the start until a join ends with nothing);
//! - **redis**: the Redis check answers (a PING with a short timeout); ready when none is set;
//! - **producer**: the result producer has not reported a fatal error (that state is final);
//! - **progress**: no partition's watermark (its commit position) has stood still for longer
//!   than the stall limit while it has jobs in flight (a job that never finishes: a lock held
//!   for ever, a job lost to a bug); the pipeline sets the limit to `max_poll_interval_ms`,
//!   the bound Kafka itself puts on a consumer that stops polling.
//!
//! Liveness (`/healthz`) is the process answering at all: it has no inputs here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::cluster::ClusterPools;

/// How a Redis check reports: `Err` carries a one-line reason without secrets.
pub type RedisCheck = dyn Fn() -> Result<(), String> + Send + Sync;

/// The consumer group as the pipeline last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// A join (or rejoin after a revoke) is in progress since then.
    Joining {
        /// When the join began.
        since: Instant,
    },
    /// The last join ended with this many partitions of the requests topic.
    Assigned {
        /// Partitions of the requests topic the worker holds.
        partitions: usize,
    },
}

/// The parts of readiness, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// The consumer group gave the worker partitions (or a join is in progress).
    Group,
    /// Redis answers PING.
    Redis,
    /// The result producer is not in a fatal state.
    Producer,
    /// No partition's watermark stands still past the stall limit while it has work.
    Progress,
}

impl Check {
    /// Every check, in the order they are reported.
    pub const ALL: [Check; 4] = [Check::Group, Check::Redis, Check::Producer, Check::Progress];

    /// The `check` label of `wallet_ready_check`, and the prefix of its reason in `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Group => "group",
            Check::Redis => "redis",
            Check::Producer => "producer",
            Check::Progress => "progress",
        }
    }
}

/// The verdict of one readiness check: a failure reason per failing part, none when ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `(check, reason)` for each part that is not ready, in [`Check::ALL`] order.
    pub failing: Vec<(Check, String)>,
    /// Partitions assigned by the last completed join (0 while the first join runs).
    pub assigned_partitions: usize,
    /// A group join is in progress.
    pub joining: bool,
}

impl Readiness {
    /// True when every check passes.
    pub fn is_ready(&self) -> bool {
        self.failing.is_empty()
    }

    /// True when `check` passes.
    pub fn passes(&self, check: Check) -> bool {
        self.failing.iter().all(|(c, _)| *c != check)
    }

    /// The `/readyz` body: `ready`, or `not ready: group: ...; redis: ...`.
    pub fn describe(&self) -> String {
        if self.is_ready() {
            return "ready".to_string();
        }
        let reasons: Vec<String> = self
            .failing
            .iter()
            .map(|(check, reason)| format!("{}: {reason}", check.as_str()))
            .collect();
        format!("not ready: {}", reasons.join("; "))
    }
}

/// The worker's readiness inputs. Cloning is cheap; every clone sees the same state.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    group: Mutex<GroupState>,
    fatal: Mutex<Option<String>>,
    redis_check: Mutex<Option<Arc<RedisCheck>>>,
    watermarks: Mutex<BTreeMap<i32, Watermark>>,
    /// How long a watermark may stand still with work in flight; `None`: no progress check.
    stall_limit: Mutex<Option<Duration>>,
}

/// A partition's watermark as the pipeline last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The commit position (next offset to consume).
    pub position: i64,
    /// Jobs in flight on the partition.
    pub in_flight: usize,
    /// Since when the position has stood still with jobs in flight (when it last moved, or
    /// when work last appeared on an idle partition).
    pub still_since: Instant,
}

impl Watermark {
    /// The watermark after a report of `position` and `in_flight` at `now`, given the one
    /// before (`None` for a partition not reported before). Pure.
    pub fn next(before: Option<Watermark>, position: i64, in_flight: usize, now: Instant) -> Self {
        let still_since = match before {
            Some(b) if b.position == position && b.in_flight > 0 && in_flight > 0 => b.still_since,
            _ => now,
        };
        Watermark {
            position,
            in_flight,
            still_since,
        }
    }

    /// How long it has stood still with work at `now`, when that is longer than `limit`. Pure.
    pub fn stalled(&self, now: Instant, limit: Duration) -> Option<Duration> {
        let still = now.saturating_duration_since(self.still_since);
        (self.in_flight > 0 && still > limit).then_some(still)
    }

    /// How long it has stood still with work at `now` (0 without work). Pure.
    pub fn still_for(&self, now: Instant) -> Duration {
        if self.in_flight == 0 {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.still_since)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("group", &*self.inner.group.lock())
            .field("fatal", &*self.inner.fatal.lock())
            .field("redis_check", &self.inner.redis_check.lock().is_some())
            .field("watermarks", &*self.inner.watermarks.lock())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A worker that has just started: joining its group, no fatal error, no Redis check.
    pub fn new() -> Health {
        Health {
            inner: Arc::new(Inner {
                group: Mutex::new(GroupState::Joining {
                    since: Instant::now(),
                }),
                fatal: Mutex::new(None),
                redis_check: Mutex::new(None),
                watermarks: Mutex::new(BTreeMap::new()),
                stall_limit: Mutex::new(None),
            }),
        }
    }

    /// A join of the consumer group started (subscribe, or a revoke before a rebalance).
    /// Keeps the start of a join already in progress.
    pub fn set_joining(&self) {
        let mut group = self.inner.group.lock();
        if !matches!(*group, GroupState::Joining { .. }) {
            *group = GroupState::Joining {
                since: Instant::now(),
            };
        }
    }

    /// A join ended with `partitions` partitions assigned to this worker (0: not ready).
    pub fn set_assigned(&self, partitions: usize) {
        *self.inner.group.lock() = GroupState::Assigned { partitions };
    }

    /// The result producer reported a fatal error: not ready for good. The first reason stays.
    pub fn set_fatal(&self, reason: impl Into<String>) {
        self.inner.fatal.lock().get_or_insert_with(|| reason.into());
    }

    /// Installs the Redis check run on every readiness check; it must return within about a
    /// second (a PING with a short timeout).
    pub fn set_redis_check(&self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        *self.inner.redis_check.lock() = Some(Arc::new(check));
    }

    /// Sets how long a partition's watermark may stand still while it has jobs in flight
    /// before readiness fails (the progress check runs only once this is set).
    pub fn set_stall_limit(&self, limit: Duration) {
        *self.inner.stall_limit.lock() = Some(limit);
    }

    /// The partitions' watermarks now, `(partition, position, jobs in flight)`; a partition
    /// not in the list is no longer held and is forgotten.
    pub fn set_watermarks(&self, partitions: &[(i32, i64, usize)]) {
        let now = Instant::now();
        let mut watermarks = self.inner.watermarks.lock();
        let next: BTreeMap<i32, Watermark> = partitions
            .iter()
            .map(|&(p, position, in_flight)| {
                let before = watermarks.get(&p).copied();
                (p, Watermark::next(before, position, in_flight, now))
            })
            .collect();
        *watermarks = next;
    }

    /// The watermarks last reported, by partition.
    pub fn watermarks(&self) -> BTreeMap<i32, Watermark> {
        self.inner.watermarks.lock().clone()
    }

    /// Why progress is not ready: every partition stalled past the limit. Pure but for the
    /// clock.
    fn progress_failure(&self) -> Option<String> {
        let limit = (*self.inner.stall_limit.lock())?;
        let now = Instant::now();
        let stalled: Vec<String> = self
            .inner
            .watermarks
            .lock()
            .iter()
            .filter_map(|(p, w)| {
                w.stalled(now, limit).map(|still| {
                    format!(
                        "partition {p} has not committed past offset {} for {} s with {} jobs in flight",
                        w.position,
                        still.as_secs(),
                        w.in_flight
                    )
                })
            })
            .collect();
        (!stalled.is_empty()).then(|| {
            format!(
                "{} (longer than {} s: a lock held for ever, a job retrying, a lost job; see the log)",
                stalled.join(", "),
                limit.as_secs()
            )
        })
    }

    /// The group state last reported by the pipeline.
    pub fn group(&self) -> GroupState {
        *self.inner.group.lock()
    }

    /// The fatal producer error, once there is one.
    pub fn fatal(&self) -> Option<String> {
        self.inner.fatal.lock().clone()
    }

    /// Checks readiness now: the reported state, and the Redis check run once (no lock is held
    /// while it runs).
    pub fn check(&self) -> Readiness {
        let group = self.group();
        let mut failing = Vec::new();
        if let Some(reason) = group_failure(group) {
            failing.push((Check::Group, reason));
        }
        let redis_check = self.inner.redis_check.lock().clone();
        if let Some(Err(reason)) = redis_check.map(|check| check()) {
            failing.push((Check::Redis, reason));
        }
        if let Some(reason) = self.fatal() {
            failing.push((Check::Producer, format!("fatal error: {reason}")));
        }
        if let Some(reason) = self.progress_failure() {
            failing.push((Check::Progress, reason));
        }
        let (assigned_partitions, joining) = match group {
            GroupState::Assigned { partitions } => (partitions, false),
            GroupState::Joining { .. } => (0, true),
        };
        Readiness {
            failing,
            assigned_partitions,
            joining,
        }
    }
}

/// Why the group state is not ready, if it is not. Pure.
fn group_failure(group: GroupState) -> Option<String> {
    match group {
        GroupState::Assigned { partitions: 0 } => Some(
            "no partitions assigned (more workers than partitions, or the group coordinator \
             left this member out)"
                .to_string(),
        ),
        GroupState::Assigned { .. } | GroupState::Joining { .. } => None,
    }
}

/// Longest a Redis readiness check waits to connect, and then for the PING's answer.
pub const REDIS_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// A Redis check for [`Health::set_redis_check`]: PING over a connection of its own (not one of
/// the transfer pool's), kept between checks and opened again after an error, each step bounded
/// by [`REDIS_CHECK_TIMEOUT`]. Errors never contain the URL (it may hold a password).
pub fn redis_ping_check(
    redis_url: &str,
) -> Result<impl Fn() -> Result<(), String> + Send + Sync + 'static, String> {
    let client = redis::Client::open(redis_url).map_err(|e| format!("bad Redis URL: {e}"))?;
    Ok(redis_ping_check_on(client))
}

/// [`redis_ping_check`] over a client already built, e.g. with TLS files by
/// `engine::store::client`.
pub fn redis_ping_check_on(
    client: redis::Client,
) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    let conn: Mutex<Option<redis::Connection>> = Mutex::new(None);
    move || {
        let mut conn = conn.lock();
        let result = ping(&client, &mut conn);
        if result.is_err() {
            // Whatever state it is in, do not reuse it.
            *conn = None;
        }
        result
    }
}

/// The Redis check on a Redis Cluster: a PING to every primary of the known slot map, each on
/// a connection of that primary's pool (I/O timeouts of the engine's pools). A primary that
/// does not answer fails the check, naming it, and the slot map is read again, so that a
/// replica promoted in its place is pinged by the next check.
pub fn cluster_ping_check(
    pools: Arc<ClusterPools>,
) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    move || {
        let primaries = pools.primaries();
        if primaries.is_empty() {
            let _ = pools.refresh();
            return Err("the slot map names no primary (the cluster is down?)".to_string());
        }
        let failing: Vec<String> = primaries
            .iter()
            .filter_map(|addr| ping_primary(&pools, addr).err())
            .collect();
        if failing.is_empty() {
            return Ok(());
        }
        // A failed primary's slots move to its replica: read the map again for the next check.
        let _ = pools.refresh();
        Err(format!(
            "{} of {} primaries do not answer PING: {}",
            failing.len(),
            primaries.len(),
            failing.join("; ")
        ))
    }
}

fn ping_primary(pools: &ClusterPools, addr: &str) -> Result<(), String> {
    let mut conn = pools
        .conn_for_addr(addr)
        .map_err(|e| format!("{addr}: {e}"))?;
    let reply: Result<String, _> = redis::cmd("PING").query(&mut conn.redis);
    match reply {
        Ok(pong) if pong == "PONG" => Ok(()),
        Ok(other) => Err(format!("{addr}: PING answered {other:?}")),
        Err(e) => {
            conn.taint();
            Err(format!("{addr}: PING failed: {e}"))
        }
    }
}

fn ping(client: &redis::Client, conn: &mut Option<redis::Connection>) -> Result<(), String> {
    if conn.is_none() {
        let opened = client
            .get_connection_with_timeout(REDIS_CHECK_TIMEOUT)
            .map_err(|e| format!("cannot connect: {e}"))?;
        opened
            .set_read_timeout(Some(REDIS_CHECK_TIMEOUT))
            .and_then(|()| opened.set_write_timeout(Some(REDIS_CHECK_TIMEOUT)))
            .map_err(|e| format!("cannot set timeouts: {e}"))?;
        *conn = Some(opened);
    }
    let open = conn.as_mut().expect("opened above");
    let reply: String = redis::cmd("PING")
        .query(open)
        .map_err(|e| format!("PING failed: {e}"))?;
    if reply == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {reply:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks that fail, in `Check::ALL` order.
    fn failing(readiness: &Readiness) -> Vec<Check> {
        readiness.failing.iter().map(|(c, _)| *c).collect()
    }
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_new_worker_is_joining_and_ready() {
        let health = Health::new();
        assert!(matches!(health.group(), GroupState::Joining { .. }));
        let readiness = health.check();
        assert!(readiness.is_ready(), "{readiness:?}");
        assert_eq!(readiness.describe(), "ready");
        assert_eq!(readiness.assigned_partitions, 0);
        assert!(readiness.joining);
    }

    #[test]
    fn an_empty_assignment_is_not_ready_and_a_new_join_is() {
        let health = Health::new();
        health.set_assigned(3);
        let readiness = health.check();
        assert!(readiness.is_ready());
        assert_eq!(readiness.assigned_partitions, 3);
        assert!(!readiness.joining);

        health.set_assigned(0);
        let readiness = health.check();
        assert!(!readiness.passes(Check::Group));
        assert!(readiness.passes(Check::Redis));
        assert!(
            readiness
                .describe()
                .starts_with("not ready: group: no partitions assigned"),
            "{}",
            readiness.describe()
        );

        health.set_joining();
        assert!(health.check().is_ready());
    }

    #[test]
    fn a_join_in_progress_keeps_its_start() {
        let health = Health::new();
        let GroupState::Joining { since } = health.group() else {
            panic!("joining")
        };
        std::thread::sleep(Duration::from_millis(5));
        health.set_joining();
        assert_eq!(health.group(), GroupState::Joining { since });
    }

    #[test]
    fn the_redis_check_runs_on_every_check() {
        let health = Health::new();
        let up = Arc::new(AtomicBool::new(true));
        health.set_redis_check({
            let up = up.clone();
            move || {
                if up.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("PING: connection refused".to_string())
                }
            }
        });
        assert!(health.check().is_ready());
        up.store(false, Ordering::SeqCst);
        let readiness = health.check();
        assert_eq!(
            readiness.describe(),
            "not ready: redis: PING: connection refused"
        );
        up.store(true, Ordering::SeqCst);
        assert!(health.check().is_ready());
    }

    #[test]
    fn a_fatal_producer_error_is_final_and_keeps_the_first_reason() {
        let health = Health::new();
        health.set_fatal("the result producer hit a fatal error: fenced");
        health.set_fatal("a later one");
        health.set_assigned(0);
        let readiness = health.check();
        assert_eq!(
            failing(&readiness),
            vec![Check::Group, Check::Producer],
            "reported in Check::ALL order"
        );
        assert!(
            readiness
                .describe()
                .ends_with("producer: fatal error: the result producer hit a fatal error: fenced"),
            "{}",
            readiness.describe()
        );
        health.set_assigned(2);
        assert!(!health.check().is_ready(), "fatal is final");
    }

    #[test]
    fn the_redis_ping_check_reports_an_unreachable_server_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let check = redis_ping_check(&format!("redis://:hunter2@127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let error = check().unwrap_err();
        assert!(error.starts_with("cannot connect"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert!(started.elapsed() < REDIS_CHECK_TIMEOUT * 4);
        assert!(redis_ping_check("nonsense://x").is_err());
    }

    #[test]
    fn a_watermark_standing_still_with_work_past_the_limit_is_a_stall() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let w = Watermark::next(None, 10, 2, t0);
        // Still at 10 with work: the clock keeps running from t0.
        let w = Watermark::next(Some(w), 10, 1, t0 + s(20));
        assert_eq!(w.still_since, t0);
        assert_eq!(w.stalled(t0 + s(31), s(30)), Some(s(31)));
        assert_eq!(w.stalled(t0 + s(30), s(30)), None, "not past the limit yet");
        // It moves: the clock starts again.
        let moved = Watermark::next(Some(w), 11, 1, t0 + s(40));
        assert_eq!(moved.stalled(t0 + s(60), s(30)), None);
        // Idle: never a stall, however long; work arriving starts the clock.
        let idle = Watermark::next(Some(moved), 11, 0, t0 + s(41));
        assert_eq!(idle.stalled(t0 + s(500), s(30)), None);
        assert_eq!(idle.still_for(t0 + s(500)), Duration::ZERO);
        let busy = Watermark::next(Some(idle), 11, 3, t0 + s(600));
        assert_eq!(busy.still_since, t0 + s(600));
    }

    #[test]
    fn a_stalled_partition_fails_the_progress_check_and_a_forgotten_one_does_not() {
        let health = Health::new();
        health.set_watermarks(&[(0, 5, 1), (1, 9, 0)]);
        assert!(health.check().is_ready(), "no limit set: no progress check");
        health.set_stall_limit(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let readiness = health.check();
        assert_eq!(failing(&readiness), vec![Check::Progress]);
        let text = readiness.describe();
        assert!(
            text.starts_with(
                "not ready: progress: partition 0 has not committed past offset 5 for"
            ),
            "{text}"
        );
        assert!(!text.contains("partition 1"), "idle: {text}");
        health.set_watermarks(&[(1, 9, 0)]);
        assert!(health.check().is_ready(), "partition 0 was revoked");
    }

    #[test]
    fn clones_share_the_state() {
        let health = Health::new();
        health.clone().set_assigned(0);
        assert!(!health.check().is_ready());
    }
}
