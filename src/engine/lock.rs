//! The distributed lock on a set of wallets: `SET lock:{id} token NX PX ttl` on every key in
//! sorted order, all or nothing, with bounded retries, exponential backoff and jitter.
//!
//! Owns lock acquisition, the RAII guard that releases on every path out (errors and panics
//! included), token-checked release and extension (Lua), the in-process queue that lets
//! threads of one process wait their turn on a wallet without hammering Redis, and the
//! stuck-lock rule (a lock held with no ttl fails fast) that both topologies acquire under
//! ([`StuckLocks`]; a cluster's locks are taken by `cluster_lock`). Does not know
//! what is done under the lock; `transfer` decides that, and may hand the release to its own
//! MULTI/EXEC (see [`LockGuard::released_by_exec`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::engine::backoff::Backoff;
use crate::engine::setting::{SettingError, setters};
use crate::engine::store::PooledConn;

/// Lock settings. Defaults are the original worker's: ttl 10 s, base delay 100 ms, 10 retries.
/// Change them with the `with_*` setters (the struct is `#[non_exhaustive]`):
/// `LockConfig::default().with_ttl_ms(5_000)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockConfig {
    /// How long a lock lives if its holder never releases it.
    pub ttl_ms: u64,
    /// Delay before the first retry; doubles with each further attempt.
    pub retry_delay_ms_base: u64,
    /// Cap on one retry delay, before jitter.
    pub retry_delay_ms_max: u64,
    /// Retries after the first attempt. `0` means one attempt only.
    pub retries_max: u32,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            ttl_ms: 10_000,
            retry_delay_ms_base: 100,
            retry_delay_ms_max: 2_000,
            retries_max: 10,
        }
    }
}

setters!(LockConfig {
    with_ttl_ms => ttl_ms: u64,
    with_retry_delay_ms_base => retry_delay_ms_base: u64,
    with_retry_delay_ms_max => retry_delay_ms_max: u64,
    with_retries_max => retries_max: u32,
});

/// Longest lock ttl any configuration may set (10 minutes); also caps a retry delay.
pub const LOCK_TTL_MS_LIMIT: u64 = 10 * 60 * 1000;
/// Most lock retries any configuration may set.
pub const LOCK_RETRIES_LIMIT: u32 = 1_000;
/// Most wallets one lock may cover (defined beside the lock keys, `keyspace`).
pub use crate::engine::keyspace::LOCK_KEYS_LIMIT;

impl LockConfig {
    /// Checks the settings against their limits; the error names the setting and the rule.
    pub fn validate(&self) -> Result<(), SettingError> {
        SettingError::check_range("lock.ttl_ms", self.ttl_ms, 1, LOCK_TTL_MS_LIMIT)?;
        SettingError::check_range("lock.retries_max", self.retries_max, 0, LOCK_RETRIES_LIMIT)?;
        SettingError::check_range(
            "lock.retry_delay_ms_max",
            self.retry_delay_ms_max,
            0,
            LOCK_TTL_MS_LIMIT,
        )?;
        if self.retry_delay_ms_base > self.retry_delay_ms_max {
            return Err(SettingError::new(
                "lock.retry_delay_ms_base",
                format!(
                    "must not exceed lock.retry_delay_ms_max ({}), got {}",
                    self.retry_delay_ms_max, self.retry_delay_ms_base
                ),
            ));
        }
        Ok(())
    }

    /// Delays between lock attempts: doubling from the base, capped, with jitter of up to the
    /// base so that threads that collided once spread out.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            first_ms: self.retry_delay_ms_base,
            max_ms: self.retry_delay_ms_max,
            jitter_ms: self.retry_delay_ms_base.max(1),
        }
    }
}

/// What one acquisition cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStats {
    /// SET NX rounds sent; 1 means the lock was free at once.
    pub attempts: u32,
    /// Time from the first attempt until the lock was held (or given up), in microseconds.
    pub wait_us: u64,
    /// Redis round trips spent, releases of partial acquisitions included.
    pub round_trips: u32,
}

/// Why the locks were not taken. Both are transient: the transfer maps them to
/// [`crate::TransferError::LockTimeout`] and [`crate::TransferError::Redis`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another holder kept some key through every retry.
    #[error(
        "could not lock {keys:?} after {} attempts over {} ms ({})",
        stats.attempts, stats.wait_us / 1000,
        if no_ttl.is_empty() {
            "another holder kept them; raise the lock retries or check for a stalled worker".to_string()
        } else {
            format!("{no_ttl:?} held with no ttl, never released by itself: delete it once its holder is known to be gone")
        }
    )]
    Timeout {
        /// Every key asked for, sorted.
        keys: Vec<String>,
        /// What the attempts cost.
        stats: LockStats,
        /// Keys found held with no ttl at the last attempt: they never expire by themselves and
        /// need an operator (`wallet locks`).
        no_ttl: Vec<String>,
    },
    /// Redis failed; keys taken so far were given back (or expire by their ttl).
    #[error("redis error while locking: {0}")]
    Redis(#[from] redis::RedisError),
}

const RELEASE_LUA: &str = r#"
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"#;

const EXTEND_LUA: &str = r#"
local extended = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    extended = extended + 1
  end
end
return extended
"#;

/// The sorted, de-duplicated lock keys for a set of wallet ids.
pub fn lock_keys(wallet_ids: &[&str]) -> Vec<String> {
    crate::engine::keyspace::KeySpace::Standalone.lock_keys(wallet_ids)
}

/// Takes every key in `keys` (already sorted, see [`lock_keys`]) or none, retrying with backoff.
///
/// The guard owns the connection for as long as the locks are held, so the work done under
/// the lock uses it and the release on drop always has a connection to run on. On error the
/// connection goes back to the pool, or is discarded when a Redis error left it in doubt.
pub fn acquire(
    conn: PooledConn,
    keys: Vec<String>,
    config: &LockConfig,
) -> Result<LockGuard, LockError> {
    acquire_with(conn, keys, config, &|_| {}).map(|(guard, _)| guard)
}

/// Like [`acquire`], with more commands pipelined behind the `SET`s of every attempt (`then`
/// adds them); returns their replies from the attempt that took the locks. This saves a round
/// trip when the caller's next step is a read it wants right after locking (the transfer's
/// WATCH and reads). Commands `then` adds must be safe to repeat and must not need the locks;
/// a WATCH they leave behind is cleared (UNWATCH) before every retry and on a timeout.
pub fn acquire_with(
    mut conn: PooledConn,
    keys: Vec<String>,
    config: &LockConfig,
    then: &dyn Fn(&mut redis::Pipeline),
) -> Result<(LockGuard, Vec<redis::Value>), LockError> {
    debug_assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys sorted and unique"
    );
    let token = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let backoff = config.backoff();
    let mut stats = LockStats::default();
    loop {
        stats.attempts += 1;
        let pipe = attempt_pipeline(&keys, &token, config.ttl_ms, stats.attempts > 1, then);
        stats.round_trips += 1;
        let replies: Vec<redis::Value> = match pipe.query(&mut conn.redis) {
            Ok(r) => r,
            Err(e) => {
                // Some SETs may have landed before the error: give them back, and keep the
                // connection out of the pool, its state is unknown.
                let _ = release_keys(&mut conn, &keys, &token);
                conn.taint();
                return Err(LockError::Redis(e));
            }
        };
        let (taken, after) = split_attempt_replies(&keys, replies);
        if taken.len() == keys.len() {
            stats.wait_us = started.elapsed().as_micros() as u64;
            let guard = LockGuard {
                conn: Some(conn),
                keys,
                token,
                stats,
                held: true,
            };
            return Ok((guard, after));
        }
        if !taken.is_empty() {
            stats.round_trips += 1;
            if let Err(e) = release_keys(&mut conn, &taken, &token) {
                conn.taint();
                return Err(LockError::Redis(e));
            }
        }
        let retry = stats.attempts - 1;
        if retry >= config.retries_max {
            stats.wait_us = started.elapsed().as_micros() as u64;
            return Err(give_up(&mut conn, keys, &taken, stats));
        }
        std::thread::sleep(Duration::from_millis(backoff.delay_ms(retry)));
    }
}

/// Out of retries: clears the WATCH, finds which of the keys we did not take are held with no
/// ttl, and builds the timeout.
fn give_up(
    conn: &mut PooledConn,
    keys: Vec<String>,
    taken: &[String],
    mut stats: LockStats,
) -> LockError {
    stats.round_trips += 1;
    let held: Vec<String> = keys
        .iter()
        .filter(|k| !taken.contains(k))
        .cloned()
        .collect();
    match unwatch_and_find_no_ttl(conn, &held) {
        Ok(no_ttl) => LockError::Timeout {
            keys,
            stats,
            no_ttl,
        },
        Err(e) => {
            conn.taint();
            LockError::Redis(e)
        }
    }
}

/// Clears the attempt's WATCH and reads the ttl of `held` (keys another holder has) in one
/// round trip; returns those without a ttl (PTTL -1).
fn unwatch_and_find_no_ttl(
    conn: &mut PooledConn,
    held: &[String],
) -> redis::RedisResult<Vec<String>> {
    let mut pipe = redis::pipe();
    pipe.cmd("UNWATCH").ignore();
    for key in held {
        pipe.cmd("PTTL").arg(key);
    }
    let ttls: Vec<i64> = pipe.query(&mut conn.redis)?;
    Ok(held
        .iter()
        .zip(ttls)
        .filter(|(_, ttl)| *ttl == -1)
        .map(|(k, _)| k.clone())
        .collect())
}

/// One attempt's pipeline: (UNWATCH what an earlier attempt's `then` left,) a `SET NX PX` per
/// key, then the caller's commands. Pure.
fn attempt_pipeline(
    keys: &[String],
    token: &str,
    ttl_ms: u64,
    retry: bool,
    then: &dyn Fn(&mut redis::Pipeline),
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    if retry {
        pipe.cmd("UNWATCH").ignore();
    }
    for key in keys {
        pipe.cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
    }
    then(&mut pipe);
    pipe
}

/// Splits an attempt's replies into the keys whose `SET` took and the replies of the caller's
/// commands behind them. Pure.
fn split_attempt_replies(
    keys: &[String],
    mut replies: Vec<redis::Value>,
) -> (Vec<String>, Vec<redis::Value>) {
    assert!(replies.len() >= keys.len(), "one reply per SET");
    let after = replies.split_off(keys.len());
    let taken = keys
        .iter()
        .zip(&replies)
        .filter(|(_, r)| !matches!(r, redis::Value::Nil))
        .map(|(k, _)| k.clone())
        .collect();
    (taken, after)
}

fn release_keys(conn: &mut PooledConn, keys: &[String], token: &str) -> redis::RedisResult<u32> {
    redis::Script::new(RELEASE_LUA)
        .key(keys)
        .arg(token)
        .invoke(&mut conn.redis)
}

/// Locks held on a set of wallets. Dropping the guard releases them (token-checked).
pub struct LockGuard {
    conn: Option<PooledConn>,
    keys: Vec<String>,
    token: String,
    stats: LockStats,
    held: bool,
}

impl LockGuard {
    /// The connection the locks were taken on; use it for the work under the lock.
    pub fn conn(&mut self) -> &mut PooledConn {
        self.conn.as_mut().expect("connection present until drop")
    }

    /// The lock keys held, sorted.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The unique owner token stored in every lock key.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What taking the locks cost.
    pub fn stats(&self) -> LockStats {
        self.stats
    }

    /// Releases now, and reports how many keys were still ours.
    pub fn release(mut self) -> redis::RedisResult<u32> {
        self.held = false;
        let keys = std::mem::take(&mut self.keys);
        let token = self.token.clone();
        release_keys(self.conn(), &keys, &token)
    }

    /// Pushes the expiry of every key out to `ttl_ms` from now, if every key is still ours.
    /// Returns false when some key was lost (expired or taken by another holder).
    pub fn extend(&mut self, ttl_ms: u64) -> redis::RedisResult<bool> {
        assert!(ttl_ms > 0 && ttl_ms <= LOCK_TTL_MS_LIMIT);
        let keys = self.keys.clone();
        let token = self.token.clone();
        let extended: usize = redis::Script::new(EXTEND_LUA)
            .key(&keys)
            .arg(&token)
            .arg(ttl_ms)
            .invoke(&mut self.conn().redis)?;
        Ok(extended == keys.len())
    }

    /// Records that a successful MULTI/EXEC deleted the locks (the transaction WATCHed them and
    /// checked the token, so the delete was ours). Drop then releases nothing.
    pub fn released_by_exec(&mut self) {
        self.held = false;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        let token = self.token.clone();
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = release_keys(conn, &keys, &token)
        {
            log::warn!("releasing locks {keys:?} failed ({e}); they expire by ttl");
            conn.taint();
        }
    }
}

/// How long a lock found held with no ttl makes transfers on its wallet fail fast before one
/// of them probes it again.
pub const STUCK_RECHECK_MS: u64 = 1_000;
/// Most lock keys remembered as stuck; past it, further stuck keys are not remembered (their
/// transfers take the normal, slower path).
pub const STUCK_KEYS_LIMIT: usize = 10_000;

/// Locks found held with no ttl, remembered per process: transfers on those wallets fail fast
/// (a transient error, so the caller retries later without holding a thread) instead of each
/// spending its lock retries, and one transfer per [`STUCK_RECHECK_MS`] probes with a single
/// attempt. Such a lock never expires by itself; an operator deletes it.
#[derive(Debug, Default)]
pub struct StuckLocks {
    /// Key -> when it may be probed next.
    keys: Mutex<HashMap<String, Instant>>,
}

/// Whether a lock acquisition may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// None of the keys is known stuck.
    Normal,
    /// A known stuck key is due for a recheck: try once, without retries.
    Probe,
    /// This key is known stuck and not due yet: fail fast.
    Refused(String),
}

impl StuckLocks {
    /// Whether an acquisition of `keys` may go ahead, fail fast, or probe a stuck key once.
    pub fn admit(&self, keys: &[String]) -> Admission {
        let mut stuck = self.keys.lock();
        if stuck.is_empty() {
            return Admission::Normal;
        }
        let now = Instant::now();
        if let Some(key) = keys
            .iter()
            .find(|k| stuck.get(*k).is_some_and(|next| *next > now))
        {
            return Admission::Refused(key.clone());
        }
        let mut probe = false;
        for key in keys {
            if let Some(next) = stuck.get_mut(key) {
                *next = now + Duration::from_millis(STUCK_RECHECK_MS);
                probe = true;
            }
        }
        if probe {
            Admission::Probe
        } else {
            Admission::Normal
        }
    }

    /// Remembers `keys` as held with no ttl.
    pub fn record(&self, keys: &[String]) {
        let mut stuck = self.keys.lock();
        let next = Instant::now() + Duration::from_millis(STUCK_RECHECK_MS);
        for key in keys {
            if stuck.len() < STUCK_KEYS_LIMIT || stuck.contains_key(key) {
                stuck.insert(key.clone(), next);
            }
        }
    }

    /// Forgets `keys`: they were just taken, so they are free again.
    pub fn clear(&self, keys: &[String]) {
        let mut stuck = self.keys.lock();
        for key in keys {
            stuck.remove(key);
        }
    }

    /// Takes `keys` by `acquire` under the rule above, the one both topologies follow:
    /// refused while one is known stuck and not due; a due probe is one attempt (`config`
    /// without retries), `Stuck` if its timeout still finds a key with no ttl and clearing
    /// the record otherwise; every timeout remembers the ttl-less keys it found. `no_ttl_of`
    /// gives those keys from a lock timeout, `None` from any other error.
    pub(crate) fn acquire<T, E>(
        &self,
        keys: &[String],
        config: &LockConfig,
        acquire: impl FnOnce(&LockConfig) -> Result<T, E>,
        no_ttl_of: impl Fn(&E) -> Option<&[String]>,
    ) -> Result<T, NotTaken<E>> {
        let probe = match self.admit(keys) {
            Admission::Refused(key) => return Err(NotTaken::Stuck(key)),
            Admission::Probe => true,
            Admission::Normal => false,
        };
        let mut config = config.clone();
        if probe {
            config.retries_max = 0;
        }
        let e = match acquire(&config) {
            Ok(taken) => {
                if probe {
                    self.clear(keys);
                }
                return Ok(taken);
            }
            Err(e) => e,
        };
        if let Some(no_ttl) = no_ttl_of(&e) {
            if probe {
                match no_ttl.first() {
                    Some(key) => return Err(NotTaken::Stuck(key.clone())),
                    None => self.clear(keys),
                }
            }
            self.record(no_ttl);
        }
        Err(NotTaken::Failed(e))
    }
}

/// Why [`StuckLocks::acquire`] did not take the locks.
#[derive(Debug)]
pub(crate) enum NotTaken<E> {
    /// This key is held with no ttl: fail fast (`lock_stuck`).
    Stuck(String),
    /// The acquisition's own error.
    Failed(E),
}

/// Number of in-process lock stripes. Wallet ids hash onto stripes; two wallets sharing a
/// stripe only costs a little concurrency, never correctness.
pub const LOCAL_STRIPES: usize = 4096;

/// An in-process queue per wallet: threads of one process that want the same wallet wait here
/// (parked, woken in turn) before they touch the Redis lock, instead of sleeping in retries.
pub struct LocalLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for LocalLocks {
    fn default() -> Self {
        LocalLocks {
            stripes: (0..LOCAL_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl LocalLocks {
    /// Locks the stripes of `wallet_ids` in ascending stripe order (no deadlock between
    /// threads); the guards release on drop.
    pub fn lock(&self, wallet_ids: &[&str]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = wallet_ids.iter().map(|id| stripe_of(id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|s| self.stripes[s].lock())
            .collect()
    }
}

fn stripe_of(id: &str) -> usize {
    // FNV-1a: cheap and stable.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % LOCAL_STRIPES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_and_unique() {
        assert_eq!(lock_keys(&["b", "a", "b"]), vec!["lock:a", "lock:b"]);
        assert_eq!(lock_keys(&["x", "x"]), vec!["lock:x"]);
    }

    #[test]
    fn backoff_doubles_from_the_base_and_caps_at_the_max() {
        let b = LockConfig::default().backoff();
        assert_eq!(b.base_delay_ms(0), 100);
        assert_eq!(b.base_delay_ms(1), 200);
        assert_eq!(b.base_delay_ms(4), 1600);
        assert_eq!(b.base_delay_ms(5), 2000);
        assert_eq!(b.base_delay_ms(200), 2000);
        assert_eq!(b.jitter_ms, 100);
    }

    #[test]
    fn config_limits_name_the_setting() {
        let bad = LockConfig {
            ttl_ms: 0,
            ..LockConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "lock.ttl_ms");
        let bad = LockConfig {
            retry_delay_ms_base: 5000,
            ..LockConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().setting,
            "lock.retry_delay_ms_base"
        );
        assert!(LockConfig::default().validate().is_ok());
    }

    #[test]
    fn a_ttl_of_ten_minutes_is_the_most_and_the_base_delay_may_equal_the_cap() {
        let at = |ttl_ms| LockConfig::default().with_ttl_ms(ttl_ms).validate();
        assert!(at(600_000).is_ok());
        assert_eq!(at(600_001).unwrap_err().setting, "lock.ttl_ms");
        let even = LockConfig::default()
            .with_retry_delay_ms_base(500)
            .with_retry_delay_ms_max(500);
        assert!(even.validate().is_ok(), "base == max is one flat delay");
    }

    #[test]
    fn an_attempts_replies_split_into_the_keys_taken_and_the_callers_replies() {
        use redis::Value;
        let keys = lock_keys(&["a", "b", "c"]);
        let ok = || Value::Okay;
        let replies = vec![ok(), Value::Nil, ok(), Value::Int(7), Value::Nil];
        let (taken, after) = split_attempt_replies(&keys, replies);
        assert_eq!(taken, vec!["lock:a".to_string(), "lock:c".to_string()]);
        assert_eq!(
            after,
            vec![Value::Int(7), Value::Nil],
            "the caller's, Nil included"
        );
    }

    #[test]
    fn no_more_than_the_limit_of_stuck_keys_are_remembered_but_known_ones_are_renewed() {
        let stuck = StuckLocks::default();
        let keys: Vec<String> = (0..=STUCK_KEYS_LIMIT)
            .map(|i| format!("lock:{i}"))
            .collect();
        stuck.record(&keys);
        assert_eq!(stuck.keys.lock().len(), STUCK_KEYS_LIMIT);
        let last = &keys[STUCK_KEYS_LIMIT];
        assert!(!stuck.keys.lock().contains_key(last), "past the limit");
        stuck.record(&keys[..1]);
        assert_eq!(
            stuck.keys.lock().len(),
            STUCK_KEYS_LIMIT,
            "a known key is renewed"
        );
    }

    #[test]
    fn a_wallets_stripe_is_held_until_its_guards_drop() {
        let locks = LocalLocks::default();
        let stripe = |id| &locks.stripes[stripe_of(id)];
        let guards = locks.lock(&["a", "b"]);
        assert_eq!(guards.len(), 2);
        assert!(stripe("a").is_locked() && stripe("b").is_locked());
        drop(guards);
        assert!(!stripe("a").is_locked() && !stripe("b").is_locked());
    }

    /// The stripe is FNV-1a (64-bit) of the id, modulo the stripe count: the published test
    /// vectors of FNV-1a are 0xaf63dc4c8601ec8c for "a" and 0x85944171f73967e8 for "foobar".
    #[test]
    fn a_wallets_stripe_is_its_fnv_1a_hash_modulo_the_stripes() {
        let stripes = LOCAL_STRIPES as u64;
        assert_eq!(stripe_of("a") as u64, 0xaf63_dc4c_8601_ec8c % stripes);
        assert_eq!(stripe_of("foobar") as u64, 0x8594_4171_f739_67e8 % stripes);
    }

    #[test]
    fn a_stuck_lock_refuses_until_its_recheck_then_admits_one_probe() {
        let stuck = StuckLocks::default();
        let keys = lock_keys(&["a", "b"]);
        assert_eq!(stuck.admit(&keys), Admission::Normal);
        stuck.record(&["lock:b".to_string()]);
        assert_eq!(stuck.admit(&keys), Admission::Refused("lock:b".into()));
        assert_eq!(stuck.admit(&lock_keys(&["a", "c"])), Admission::Normal);
        // Due for a recheck: one probe, and the next caller is refused again.
        stuck
            .keys
            .lock()
            .insert("lock:b".into(), Instant::now() - Duration::from_millis(1));
        assert_eq!(stuck.admit(&keys), Admission::Probe);
        assert_eq!(stuck.admit(&keys), Admission::Refused("lock:b".into()));
        stuck.clear(&keys);
        assert_eq!(stuck.admit(&keys), Admission::Normal);
    }

    /// An error of the fake acquisitions below: `Some(no_ttl)` a lock timeout that found
    /// those keys with no ttl, `None` any other error.
    type Fake = Option<Vec<String>>;

    fn run(
        stuck: &StuckLocks,
        keys: &[String],
        result: Result<(), Fake>,
    ) -> (Result<(), NotTaken<Fake>>, Option<u32>) {
        let mut retries_max = None;
        let got = stuck.acquire(
            keys,
            &LockConfig::default().with_retries_max(7),
            |config| {
                retries_max = Some(config.retries_max);
                result
            },
            |e: &Fake| e.as_deref(),
        );
        (got, retries_max)
    }

    fn make_due(stuck: &StuckLocks, key: &str) {
        let due = Instant::now() - Duration::from_millis(1);
        stuck.keys.lock().insert(key.into(), due);
    }

    #[test]
    fn an_acquisition_remembers_the_keys_its_timeout_found_without_ttl_and_then_fails_fast() {
        let stuck = StuckLocks::default();
        let keys = lock_keys(&["a", "b"]);
        let (got, retries) = run(&stuck, &keys, Ok(()));
        assert!(got.is_ok());
        assert_eq!(retries, Some(7), "the configured retries");
        let found = vec!["lock:b".to_string()];
        let (got, _) = run(&stuck, &keys, Err(Some(found.clone())));
        assert!(matches!(got, Err(NotTaken::Failed(Some(k))) if k == found));
        let (got, retries) = run(&stuck, &keys, Ok(()));
        assert!(matches!(got, Err(NotTaken::Stuck(k)) if k == "lock:b"));
        assert_eq!(retries, None, "refused without an attempt");
        assert_eq!(stuck.admit(&lock_keys(&["a"])), Admission::Normal);
        // Another error, or a timeout that found every ttl, remembers nothing.
        let fresh = StuckLocks::default();
        let _ = run(&fresh, &keys, Err(None));
        let _ = run(&fresh, &keys, Err(Some(vec![])));
        assert!(fresh.keys.lock().is_empty());
    }

    #[test]
    fn a_probe_is_one_attempt_that_clears_the_record_unless_a_key_still_has_no_ttl() {
        let keys = lock_keys(&["a", "b"]);
        for (result, cleared) in [
            (Ok(()), true),
            (Err(Some(vec![])), true),
            (Err(Some(vec!["lock:b".to_string()])), false),
            (Err(None), false),
        ] {
            let stuck = StuckLocks::default();
            make_due(&stuck, "lock:b");
            let (got, retries) = run(&stuck, &keys, result.clone());
            assert_eq!(retries, Some(0), "{result:?}: one attempt");
            match (&result, got) {
                (Ok(()), Ok(())) => {}
                (Err(Some(found)), Err(NotTaken::Stuck(k))) if !found.is_empty() => {
                    assert_eq!(k, found[0]);
                }
                (Err(e), Err(NotTaken::Failed(got))) if e.as_ref().is_none_or(Vec::is_empty) => {
                    assert_eq!(&got, e);
                }
                (_, got) => panic!("{result:?}: {got:?}"),
            }
            let admitted = stuck.admit(&keys);
            let want = if cleared {
                Admission::Normal
            } else {
                Admission::Refused("lock:b".into())
            };
            assert_eq!(admitted, want, "{result:?}");
        }
    }

    #[test]
    fn local_locks_exclude_and_do_not_deadlock() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicI64, Ordering};
        let locks = Arc::new(LocalLocks::default());
        let inside = Arc::new(AtomicI64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let locks = locks.clone();
                let inside = inside.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let ids = if t % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
                        let _g = locks.lock(&ids);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
