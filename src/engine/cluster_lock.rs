//! The wallet locks of a cross-slot transfer on a Redis Cluster: one `lock:{id}` per wallet,
//! each on the primary of its wallet's slot, taken in sorted key order with `SET NX PX` and
//! a token, all or none per attempt, with the bounded retries and backoff of [`LockConfig`].
//!
//! Owns acquisition, the per-shard connection each lock was taken on (the steps on that
//! wallet's shard run on it, under the WATCH its acquisition pipelined), and token-checked
//! release, also on drop. Does not: know what is done under the locks (`cluster_transfer`),
//! lock wallets of one slot (they use `lock`, one connection, as on one Redis), or refresh
//! the slot map (a MOVED reply comes back as a Redis error; the caller refreshes).

use std::time::{Duration, Instant};

use crate::engine::cluster::{ClusterPools, keys};
use crate::engine::lock::{LockConfig, LockError, LockStats};
use crate::engine::outcome::TransferError;
use crate::engine::store::PooledConn;

/// Deletes `KEYS[1]` (the lock) and then every further key, only while the lock holds
/// `ARGV[1]`; returns 1 when it did, 0 when the lock was not ours (nothing deleted).
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"#;

/// One wallet's lock, with the connection to its shard.
pub(crate) struct ShardLock {
    wallet: String,
    key: String,
    token: String,
    conn: Option<PooledConn>,
    held: bool,
}

impl ShardLock {
    /// The connection to this wallet's shard.
    pub(crate) fn conn(&mut self) -> &mut PooledConn {
        self.conn.as_mut().expect("connection present until drop")
    }

    /// Releases now, if still ours, and deletes `also` (keys of the same slot) with it, in
    /// one round trip; `unwatch` first clears a WATCH the connection may still have. A lock
    /// that was no longer ours (its ttl ran out) is left to its holder, and `also` with it.
    pub(crate) fn release_with(&mut self, also: &[&str], unwatch: bool) -> redis::RedisResult<()> {
        self.held = false;
        let mut pipe = redis::pipe();
        if unwatch {
            pipe.cmd("UNWATCH").ignore();
        }
        pipe.cmd("EVAL")
            .arg(RELEASE_LUA)
            .arg(1 + also.len())
            .arg(&self.key)
            .arg(also)
            .arg(&self.token);
        let key = self.key.clone();
        let conn = self.conn();
        pipe.query(&mut conn.redis).inspect_err(|e| {
            log::warn!("releasing {key} failed ({e}); it expires by its ttl");
            conn.taint();
        })
    }
}

impl Drop for ShardLock {
    fn drop(&mut self) {
        if self.held {
            let _ = self.release_with(&[], true);
        }
    }
}

/// The locks of a cross-slot transfer, in sorted key order.
pub(crate) struct ShardLocks {
    token: String,
    locks: Vec<ShardLock>,
    stats: LockStats,
}

impl ShardLocks {
    /// The lock of `wallet` (one of those locked).
    pub(crate) fn of(&mut self, wallet: &str) -> &mut ShardLock {
        self.locks
            .iter_mut()
            .find(|l| l.wallet == wallet)
            .expect("a wallet that was locked")
    }

    /// The connection to `wallet`'s shard.
    pub(crate) fn conn(&mut self, wallet: &str) -> &mut PooledConn {
        self.of(wallet).conn()
    }

    /// The token every lock holds.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The key of `wallet`'s lock.
    pub(crate) fn key(&self, wallet: &str) -> String {
        keys::lock(wallet)
    }

    /// What taking the locks cost.
    pub(crate) fn stats(&self) -> LockStats {
        self.stats
    }

    /// Records that a step's own transaction or script deleted `wallet`'s lock (token
    /// checked there); drop releases nothing for it.
    pub(crate) fn released_by_step(&mut self, wallet: &str) {
        self.of(wallet).held = false;
    }

    /// Leaves every lock to expire by its ttl and throws the connections away, as a crash
    /// would (the failpoints of the tests).
    pub(crate) fn abandon(&mut self) {
        for lock in &mut self.locks {
            lock.held = false;
            lock.conn().taint();
        }
    }
}

/// Takes the lock of every wallet of `wallets` (distinct ids), each on its shard, in sorted
/// key order, all or none per attempt; retries with backoff as `config` says. Behind each
/// `SET NX PX`, in the same round trip, `then(wallet, pipe)` adds that shard's WATCH and
/// reads; their replies come back per lock, in key order, from the attempt that took every
/// lock. Each retry starts with UNWATCH, so a WATCH an earlier attempt left is cleared.
pub(crate) fn acquire(
    pools: &ClusterPools,
    wallets: &[&str],
    config: &LockConfig,
    then: &dyn Fn(&str, &mut redis::Pipeline),
) -> Result<(ShardLocks, Vec<Vec<redis::Value>>), TransferError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut locks = Vec::with_capacity(wallets.len());
    for wallet in wallets {
        let key = keys::lock(wallet);
        let conn = pools.conn_for_key(&key)?;
        locks.push(ShardLock {
            wallet: wallet.to_string(),
            key,
            token: token.clone(),
            conn: Some(conn),
            held: false,
        });
    }
    locks.sort_by(|a, b| a.key.cmp(&b.key));
    let mut held = ShardLocks {
        token,
        locks,
        stats: LockStats::default(),
    };
    let (started, backoff) = (Instant::now(), config.backoff());
    loop {
        held.stats.attempts += 1;
        let replies = attempt(&mut held, config.ttl_ms, then)?;
        if let Some(replies) = replies {
            held.stats.wait_us = started.elapsed().as_micros() as u64;
            return Ok((held, replies));
        }
        let retry = held.stats.attempts - 1;
        if retry >= config.retries_max {
            held.stats.wait_us = started.elapsed().as_micros() as u64;
            return Err(give_up(&mut held));
        }
        std::thread::sleep(Duration::from_millis(backoff.delay_ms(retry)));
    }
}

/// One attempt: SET NX on each lock in order, stopping at the first one taken by another
/// holder (and giving back those this attempt took). The replies behind each SET when every
/// lock was taken, `None` when one was not.
fn attempt(
    held: &mut ShardLocks,
    ttl_ms: u64,
    then: &dyn Fn(&str, &mut redis::Pipeline),
) -> Result<Option<Vec<Vec<redis::Value>>>, TransferError> {
    let mut all = Vec::with_capacity(held.locks.len());
    for i in 0..held.locks.len() {
        let lock = &mut held.locks[i];
        let mut pipe = redis::pipe();
        if held.stats.attempts > 1 {
            pipe.cmd("UNWATCH").ignore();
        }
        pipe.cmd("SET")
            .arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        then(&lock.wallet, &mut pipe);
        held.stats.round_trips += 1;
        let mut replies: Vec<redis::Value> = pipe
            .query(&mut lock.conn().redis)
            .inspect_err(|_| lock.conn().taint())?;
        assert!(!replies.is_empty(), "one reply per SET");
        if replies.remove(0) == redis::Value::Nil {
            for taken in held.locks[..i].iter_mut().filter(|l| l.held) {
                held.stats.round_trips += 1;
                taken.release_with(&[], true)?;
            }
            return Ok(None);
        }
        lock.held = true;
        all.push(replies);
    }
    Ok(Some(all))
}

/// Out of retries: clears the WATCHes, finds which locks another holder keeps with no ttl,
/// and builds the timeout.
fn give_up(held: &mut ShardLocks) -> TransferError {
    let mut no_ttl = Vec::new();
    for lock in &mut held.locks {
        held.stats.round_trips += 1;
        let mut pipe = redis::pipe();
        pipe.cmd("UNWATCH").ignore().cmd("PTTL").arg(&lock.key);
        match pipe.query::<(i64,)>(&mut lock.conn().redis) {
            Ok((-1,)) => no_ttl.push(lock.key.clone()),
            Ok(_) => {}
            Err(e) => {
                lock.conn().taint();
                return TransferError::Redis(e);
            }
        }
    }
    TransferError::LockTimeout(LockError::Timeout {
        keys: held.locks.iter().map(|l| l.key.clone()).collect(),
        stats: held.stats,
        no_ttl,
    })
}
