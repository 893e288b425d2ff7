//! The transfer algorithm on one Redis, or in one hash slot of a Redis Cluster: all of it in
//! this file, with its pure parts (the decision, what a record means, the record's format) in
//! `outcome`. ARCHITECTURE.md, "The transfer", keeps the invariants it holds.
//!
//! ```text
//! 1. validate                      (done when the TransferRequest was built)
//! 2. queue in-process behind other threads wanting these wallets (module `lock`, LocalLocks)
//! 3. SET lock:{id} NX PX on the sorted wallet ids (module `lock`), with behind them  } round
//! 4. WATCH wallets, outcome, locks; HGETALL both wallets and transfer:{key}            } trip 1
//!    recorded? answer from the record (a replay), release the locks
//!    no record and too old to apply? FAILED `expired`, nothing written (module `expiry`)
//! 5. decide: same user, existence, status, currency, funds, balance limit (pure: `decide`)
//! 6. MULTI HSET balance+version x2, RPUSH x2, HSET outcome, DEL locks EXEC       round trip 2
//!    (pure builder: `transaction`; a FAILED decision writes only the outcome and the DEL)
//!    nil reply: a watched key changed -> back to 4 (now also reading the lock tokens),
//!    bounded by `watch_retries_max`, locks still held
//! 7. release: done by the EXEC itself; on every other path the lock guard releases
//! ```
//!
//! An uncontended transfer costs two Redis round trips and 14 commands: the lock `SET`s with
//! the WATCH and the reads pipelined behind them (used only if every lock was taken; a failed
//! attempt clears its WATCH before the retry), and the transaction. An outcome ttl adds a
//! PEXPIRE of the record inside the transaction, a history trim that is due a script per wallet
//! (`retention`). The version is written with the balance (read under WATCH, plus one), so no
//! HINCRBY is needed. On a Redis Cluster the key's claim (`key_claim`) comes first, one more
//! round trip and command, and a transfer whose wallets are in different slots runs the
//! cross-slot steps of `cluster_transfer` instead (the dispatch: `WalletService::transfer_from`).
//!
//! The lock makes contention cheap; WATCH makes the write correct even when a lock expired
//! under a stalled holder. The locks are WATCHed, so a lock that expired and changed hands
//! makes EXEC fail instead of letting a stale write through, and the `DEL` inside the
//! transaction can only delete our own locks. Their tokens are checked: on the first read by
//! the `SET NX` replies themselves, which come from the same pipeline just before the WATCH
//! (Redis runs a client's pipelined commands one after another, so the lock cannot change hands
//! between our SET and our WATCH); after an aborted EXEC by reading them again (MGET) with the
//! new WATCH.
//!
//! A recorded outcome is answered as the original for a redelivery of the message that made it
//! (same origin) and marked duplicate for any other message with the key; a different request
//! with the key (another fingerprint) is `idempotency_conflict` and leaves the record alone.
//! Business failures (`insufficient_funds`, `same_user`, `wallet_not_found`, `wallet_inactive`,
//! `currency_mismatch`, `balance_limit`) are recorded as FAILED outcomes, so a replay gets the
//! same answer; `expired` is answered, not recorded. With `wait_replicas`, the transaction is
//! followed by a WAIT, and an answer from a record first makes sure the replicas have it
//! (`WalletService::wait_replicas_before_answer`; the rules: `cluster_transfer`, "Durability").
//!
//! Owns the one-slot algorithm and the dispatch between it and the cross-slot steps
//! (`cluster_transfer`), which a Redis Cluster runs when the two wallets' slots differ. Does
//! not own what an outcome means, the decision or the record's format (`outcome`, pure), and
//! does not know about Kafka; the worker turns outcomes into result messages.

use std::collections::HashMap;
use std::time::Instant;

use crate::engine::expiry::{self, Freshness};
use crate::engine::keyspace::KeySpace;
use crate::engine::lock::{self, LockError, LockGuard};
use crate::engine::message::{FailureReason, TransferRequest};
use crate::engine::money::Amount;
use crate::engine::retention;
use crate::engine::service::WalletService;
use crate::engine::store::{Conn, PooledConn};
use crate::engine::wallet::{HistoryKind, Mover, Wallet, add_history_in, parse_wallet};

pub use crate::engine::outcome::{
    Origin, TransferError, TransferOutcome, TransferStats, decide, parse_outcome,
};
pub(crate) use crate::engine::outcome::{
    acked_enough, answer_from_record, new_outcome, outcome_fields,
};

impl WalletService {
    /// Runs one transfer exactly once per idempotency key (ARCHITECTURE.md, "The transfer").
    ///
    /// `Ok` carries the outcome, COMPLETED or a recorded business FAILED, fresh or (marked
    /// `duplicate`) from an earlier delivery. `Err` is either transient (retry the same request;
    /// see [`TransferError::is_transient`]) or needs an operator.
    pub fn transfer(&self, request: &TransferRequest) -> Result<TransferOutcome, TransferError> {
        self.transfer_from(request, None)
    }

    /// Like [`WalletService::transfer`], for a request that arrived in the Kafka message
    /// `origin`. The origin is recorded with the outcome; a later call with the same origin (a
    /// redelivery) is answered as the original (`duplicate: false`), any other call with the
    /// same idempotency key as a duplicate.
    pub fn transfer_from(
        &self,
        request: &TransferRequest,
        origin: Option<&Origin>,
    ) -> Result<TransferOutcome, TransferError> {
        // A cluster claims the key, then runs this same one-slot algorithm when both wallets
        // share a slot, and its own steps when they do not (`cluster_transfer`).
        match self.topology.cluster_pools() {
            None => self.transfer_one_slot(request, origin),
            Some(pools) => crate::engine::cluster_transfer::transfer(self, pools, request, origin),
        }
    }

    /// Today's algorithm (the module doc's steps): both wallets in one Redis, or in
    /// one hash slot of a cluster (then on the slot's primary, with the cluster key names).
    pub(crate) fn transfer_one_slot(
        &self,
        request: &TransferRequest,
        origin: Option<&Origin>,
    ) -> Result<TransferOutcome, TransferError> {
        let space = self.key_space();
        let mut call = Call {
            request,
            origin,
            space,
            outcome_key: space.outcome(&request.from_user, &request.idempotency_key),
            lock_keys: space.lock_keys(&[&request.from_user, &request.to_user]),
            fingerprint: request.fingerprint(),
            stats: TransferStats::default(),
            started: Instant::now(),
        };
        // 2-4. Queue in-process behind other threads wanting these wallets, then take the
        //      Redis locks in sorted order with the WATCH and reads (the outcome record among
        //      them) in the same round trip.
        let queued = Instant::now();
        let _local = self
            .local_locks
            .lock(&[&request.from_user, &request.to_user]);
        call.stats.local_wait_us = queued.elapsed().as_micros() as u64;
        let (mut guard, first_read) = self.lock_and_read(&mut call)?;
        // 4-6. Decide on what was read under WATCH and commit, again while EXEC aborts.
        let mut first_read = Some(first_read);
        let mut watch_aborts = 0;
        loop {
            let read = match first_read.take() {
                Some(replies) => parse_watched(replies, &call),
                None => {
                    call.stats.round_trips += 1;
                    watch_and_read(guard.conn(), &call)
                }
            }
            .inspect_err(|_| guard.conn().taint())?;
            if let Some(done) = self.decide_and_exec(&mut guard, &mut call, read)? {
                call.stats.watch_retries = watch_aborts;
                call.stats.elapsed_us = call.started.elapsed().as_micros() as u64;
                return Ok(TransferOutcome {
                    stats: call.stats,
                    ..done
                });
            }
            watch_aborts += 1;
            if watch_aborts > self.config.watch_retries_max {
                return Err(TransferError::WatchConflicts(watch_aborts));
            }
        }
    }

    /// Step 3 and 4 in one round trip: the lock SETs with the WATCH and reads pipelined behind.
    /// A lock known to be held with no ttl fails fast (see [`lock::StuckLocks`]).
    fn lock_and_read(
        &self,
        call: &mut Call<'_>,
    ) -> Result<(LockGuard, Vec<redis::Value>), TransferError> {
        let watch = |pipe: &mut redis::Pipeline| {
            // No lock tokens on the first read: the SET NX replies just before the WATCH, in
            // the same pipeline, say the locks are ours (see the module doc).
            add_watch_and_reads(pipe, call, false);
        };
        let acquire = |config: &lock::LockConfig| {
            let conn = self.conn_for_wallet(&call.request.from_user)?;
            lock::acquire_with(conn, call.lock_keys.clone(), config, &watch).map_err(|e| match e {
                LockError::Redis(e) => TransferError::Redis(e),
                timeout => TransferError::LockTimeout(timeout),
            })
        };
        let (guard, first_read) = self.stuck_locks.acquire(
            &call.lock_keys,
            &self.config.lock,
            acquire,
            TransferError::no_ttl_locks,
        )?;
        call.stats.lock = guard.stats();
        call.stats.round_trips += call.stats.lock.round_trips;
        Ok((guard, first_read))
    }

    /// Steps 5 and 6 on one WATCHed read: the recorded answer, the decision committed in one
    /// MULTI/EXEC, or `None` when EXEC aborted because a watched key changed.
    fn decide_and_exec(
        &self,
        guard: &mut LockGuard,
        call: &mut Call<'_>,
        read: WatchedRead,
    ) -> Result<Option<TransferOutcome>, TransferError> {
        // 5. Re-check under WATCH: another delivery may have finished in between.
        if !read.recorded.is_empty() {
            unwatch(guard.conn());
            self.wait_replicas_before_answer(guard.conn(), &call.lock_keys[0])?;
            return call.replay(&read.recorded).map(Some);
        }
        if let Some(tokens) = &read.lock_tokens
            && let Some(lost) = lost_lock(&call.lock_keys, tokens, guard.token())
        {
            unwatch(guard.conn());
            return Err(TransferError::LockLost(lost.to_string()));
        }
        let versions = (
            read.from.as_ref().map_or(0, |w| w.version),
            read.to.as_ref().map_or(0, |w| w.version),
        );
        // No record: a request older than the records live is not applied (expiry.rs).
        if let Some(expired) = self.expired_answer(call.request, versions, call.origin) {
            unwatch(guard.conn());
            return Ok(Some(expired));
        }
        let decision = decide(call.request, read.from.as_ref(), read.to.as_ref());
        let outcome = new_outcome(
            call.request,
            &decision,
            versions,
            &call.fingerprint,
            call.origin,
        );
        let trims = Trims::due(&read, decision.is_ok(), self.config.history_max_entries);
        if let Some(hook) = &self.before_exec {
            hook(&call.request.idempotency_key);
        }
        // 6. One transaction: balances, versions, history, outcome, lock release.
        let pipe = transaction(
            call,
            &decision,
            versions,
            &outcome,
            self.config.outcome_ttl_ms,
            &trims,
        );
        call.stats.round_trips += 1;
        let exec: Option<Vec<i64>> = pipe
            .query(&mut guard.conn().redis)
            .inspect_err(|_| guard.conn().taint())?;
        let Some(replies) = exec else {
            return Ok(None);
        };
        guard.released_by_exec();
        self.wait_replicas(guard.conn())?;
        let (deleted, trimmed) = replies.split_last().expect("the DEL reply comes last");
        for (wallet, reply) in trims.wallets(call.request).zip(trimmed) {
            retention::report_trim(wallet, *reply);
        }
        // Our locks were WATCHed with our token, so the DEL can only find them ours; one that
        // merely expired inside the transaction is the only way to delete fewer.
        debug_assert_eq!(*deleted as usize, call.lock_keys.len());
        Ok(Some(outcome))
    }

    /// The FAILED `expired` answer (not recorded, nothing written) to a request for which no
    /// outcome is recorded and that is too old to be applied, or stamped too far ahead
    /// (ARCHITECTURE.md, "Retention"; `expiry.rs`); `None` when it may be applied.
    pub(crate) fn expired_answer(
        &self,
        request: &TransferRequest,
        versions: (u64, u64),
        origin: Option<&Origin>,
    ) -> Option<TransferOutcome> {
        let ttl_ms = self.config.outcome_ttl_ms;
        match expiry::freshness(request.requested_at_ms, expiry::now_ms(), ttl_ms) {
            Freshness::Fresh => None,
            stale => {
                log::warn!(
                    "transfer {} ({} -> {}, key {:?}): not applied, {stale:?} under an outcome ttl of {ttl_ms:?} ms and no outcome recorded; answered FAILED expired",
                    request.transfer_id,
                    request.from_user,
                    request.to_user,
                    request.idempotency_key
                );
                let decision = Err(FailureReason::Expired);
                let fp = request.fingerprint();
                Some(new_outcome(request, &decision, versions, &fp, origin))
            }
        }
    }

    /// Before answering from a record when [`crate::EngineConfig::wait_replicas`] is set: the
    /// write that made the record may not have reached the replicas (its own WAIT failed and
    /// this is the retry), and WAIT covers only a connection's own writes. So write once on the
    /// record's shard (PEXPIRE of our own lock, `lock_key`, to the lock ttl: harmless, we hold
    /// it) and WAIT for that: replication is in order, so everything the primary did before is
    /// on the replicas too when it returns.
    pub(crate) fn wait_replicas_before_answer(
        &self,
        conn: &mut Conn,
        lock_key: &str,
    ) -> Result<(), TransferError> {
        if self.config.wait_replicas.is_none() {
            return Ok(());
        }
        redis::cmd("PEXPIRE")
            .arg(lock_key)
            .arg(self.config.lock.ttl_ms)
            .query::<i64>(&mut conn.redis)
            .inspect_err(|_| conn.taint())?;
        self.wait_replicas(conn)
    }

    /// `WAIT n timeout` on the connection that just wrote, when
    /// [`crate::EngineConfig::wait_replicas`] asks for `n` replicas; an error when fewer
    /// acknowledged in time.
    pub(crate) fn wait_replicas(&self, conn: &mut Conn) -> Result<(), TransferError> {
        let Some(wanted) = self.config.wait_replicas else {
            return Ok(());
        };
        let acked = crate::engine::service::wait_acked(conn, wanted)?;
        acked_enough(acked, wanted)
    }

    /// A connection to the Redis that holds `wallet_id`'s keys: the pool's on one Redis, its
    /// slot's primary on a cluster.
    pub(crate) fn conn_for_wallet(&self, wallet_id: &str) -> Result<PooledConn, TransferError> {
        self.topology
            .conn_for_key(&self.key_space().wallet(wallet_id))
    }

    /// The outcome recorded under `idempotency_key`, if any, on one Redis.
    ///
    /// On a Redis Cluster it is [`TransferError::WrongMode`]: the record lives in the
    /// sender's hash slot (`transfer:{sender}:key`, so the debit and the record commit in one
    /// transaction), and the key alone does not say where that is; call
    /// [`WalletService::transfer_outcome_of`].
    pub fn transfer_outcome(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<TransferOutcome>, TransferError> {
        if self.key_space().outcome_needs_sender() {
            return Err(TransferError::WrongMode(
                "transfer_outcome(key) cannot find a record on a Redis Cluster, where it lives in the sender's slot: call transfer_outcome_of(sender, key)",
            ));
        }
        self.transfer_outcome_of("", idempotency_key)
    }

    /// The outcome recorded for the request of `sender` with `idempotency_key`, if any, in
    /// either mode. On a Redis Cluster the record lives in the sender's slot
    /// (`transfer:{sender}:key`), so the sender is needed to find it; on one Redis it is
    /// `transfer:key` and the sender is not used.
    ///
    /// Unlike [`WalletService::transfer`], this reads the record as it is: a cross-slot
    /// transfer that stopped halfway reads as [`crate::Status::Pending`] (the next delivery of the
    /// request, or [`WalletService::recover`], finishes it).
    pub fn transfer_outcome_of(
        &self,
        sender: &str,
        idempotency_key: &str,
    ) -> Result<Option<TransferOutcome>, TransferError> {
        let key = self.key_space().outcome(sender, idempotency_key);
        let mut conn: PooledConn = self.topology.conn_for_key::<TransferError>(&key)?;
        let fields: HashMap<String, String> =
            redis::cmd("HGETALL").arg(&key).query(&mut conn.redis)?;
        if fields.is_empty() {
            return Ok(None);
        }
        parse_outcome(&key, &fields).map(Some)
    }
}

/// One `transfer` call: the request, the keys it touches and what it has cost so far.
struct Call<'a> {
    request: &'a TransferRequest,
    origin: Option<&'a Origin>,
    /// The key names: standalone, or cluster (one slot).
    space: KeySpace,
    outcome_key: String,
    /// Sorted and unique (see [`lock::lock_keys`]).
    lock_keys: Vec<String>,
    fingerprint: String,
    stats: TransferStats,
    started: Instant,
}

impl Call<'_> {
    /// Answers from a recorded outcome: the original answer for a redelivery of the message
    /// that produced it, the same answer marked duplicate for any other message, or a conflict
    /// when the key was used for a different request. A record without a fingerprint (written
    /// before fingerprints were recorded) cannot conflict.
    fn replay(
        &mut self,
        recorded: &HashMap<String, String>,
    ) -> Result<TransferOutcome, TransferError> {
        let original = parse_outcome(&self.outcome_key, recorded)?;
        self.stats.elapsed_us = self.started.elapsed().as_micros() as u64;
        answer_from_record(original, &self.fingerprint, self.origin, self.stats)
    }
}

/// The first lock key whose token is not ours (expired, or taken by another holder). Pure.
fn lost_lock<'k>(
    lock_keys: &'k [String],
    tokens: &[Option<String>],
    ours: &str,
) -> Option<&'k str> {
    assert_eq!(lock_keys.len(), tokens.len(), "one token read per lock key");
    lock_keys
        .iter()
        .zip(tokens)
        .find(|(_, t)| t.as_deref() != Some(ours))
        .map(|(k, _)| k.as_str())
}

/// Which wallets' histories the transaction trims (see [`crate::engine::retention`]).
struct Trims {
    /// The most entries a wallet keeps, when they are bounded.
    max_entries: u64,
    from: bool,
    to: bool,
}

impl Trims {
    /// The trims due after this transfer (none unless it completes), from the versions and
    /// checkpoints read under WATCH. Pure.
    fn due(read: &WatchedRead, completes: bool, history_max_entries: Option<u64>) -> Trims {
        let max_entries = history_max_entries.unwrap_or(u64::MAX);
        let due = |w: &Option<Wallet>| {
            completes
                && history_max_entries.is_some()
                && w.as_ref()
                    .is_some_and(|w| retention::trim_due(w.version + 1, &w.checkpoint, max_entries))
        };
        Trims {
            max_entries,
            from: due(&read.from),
            to: due(&read.to),
        }
    }

    /// The wallets trimmed, in the order of their replies.
    fn wallets<'r>(&self, request: &'r TransferRequest) -> impl Iterator<Item = &'r str> {
        [(self.from, &request.from_user), (self.to, &request.to_user)]
            .into_iter()
            .filter(|(due, _)| *due)
            .map(|(_, id)| id.as_str())
    }
}

/// Step 6 as one MULTI/EXEC pipeline: for a COMPLETED decision each wallet's balance and
/// version (one HSET: the version read under WATCH, plus one), its history entry and, when
/// due, the trim of its history; always the outcome record (one HSET, with its ttl if any)
/// and the DEL of our locks. Replies: each trim's count, then the DEL's. Pure: builds, does
/// not send.
fn transaction(
    call: &Call<'_>,
    decision: &Result<(Amount, Amount), FailureReason>,
    versions: (u64, u64),
    outcome: &TransferOutcome,
    outcome_ttl_ms: Option<u64>,
    trims: &Trims,
) -> redis::Pipeline {
    let request = call.request;
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Ok((from_after, to_after)) = decision {
        for (id, kind, after, version, trim) in [
            (
                &request.from_user,
                HistoryKind::Debit,
                *from_after,
                versions.0,
                trims.from,
            ),
            (
                &request.to_user,
                HistoryKind::Credit,
                *to_after,
                versions.1,
                trims.to,
            ),
        ] {
            pipe.cmd("HSET")
                .arg(call.space.wallet(id))
                .arg("balance")
                .arg(after.to_string())
                .arg("version")
                .arg(version + 1)
                .ignore();
            let mover = Mover {
                transfer_id: &request.transfer_id,
                idempotency_key: &request.idempotency_key,
            };
            add_history_in(
                call.space,
                &mut pipe,
                id,
                &mover,
                kind,
                request.amount,
                outcome.processed_at_ms,
            );
            pipe.ignore();
            if trim {
                retention::add_trim_in(call.space, &mut pipe, id, trims.max_entries);
            }
        }
    }
    let record = pipe.cmd("HSET").arg(&call.outcome_key);
    for (field, value) in outcome_fields(outcome) {
        record.arg(field).arg(value);
    }
    record.ignore();
    if let Some(ttl_ms) = outcome_ttl_ms {
        pipe.pexpire(&call.outcome_key, ttl_ms as i64).ignore();
    }
    pipe.del(&call.lock_keys);
    pipe
}

/// What step 4 read under WATCH.
struct WatchedRead {
    from: Option<Wallet>,
    to: Option<Wallet>,
    recorded: HashMap<String, String>,
    /// Read on retries only; `None` on the first read, taken right behind our own SETs.
    lock_tokens: Option<Vec<Option<String>>>,
}

/// Adds step 4 to a pipeline: WATCH the wallets, the outcome key and the lock keys, then read
/// them. Four replies follow (the WATCH reply is ignored); [`parse_watched`] reads them.
fn add_watch_and_reads(pipe: &mut redis::Pipeline, call: &Call<'_>, with_tokens: bool) {
    let (request, outcome_key, lock_keys) = (call.request, &call.outcome_key, &call.lock_keys);
    let from_key = call.space.wallet(&request.from_user);
    let to_key = call.space.wallet(&request.to_user);
    pipe.cmd("WATCH")
        .arg(&from_key)
        .arg(&to_key)
        .arg(outcome_key)
        .arg(lock_keys)
        .ignore()
        .hgetall(&from_key)
        .hgetall(&to_key)
        .hgetall(outcome_key);
    if with_tokens {
        pipe.cmd("MGET").arg(lock_keys);
    }
}

fn parse_watched(
    mut replies: Vec<redis::Value>,
    call: &Call<'_>,
) -> Result<WatchedRead, TransferError> {
    type Hash = HashMap<String, String>;
    let (request, space) = (call.request, call.space);
    let corrupt = |e: redis::ParsingError| TransferError::Corrupt {
        key: format!(
            "{} / {}",
            space.wallet(&request.from_user),
            space.wallet(&request.to_user)
        ),
        detail: format!("unexpected reply to the watched read: {e}"),
    };
    let lock_tokens: Option<Vec<Option<String>>> = match replies.len() {
        3 => None,
        4 => Some(redis::from_redis_value(replies.pop().expect("four replies")).map_err(corrupt)?),
        n => unreachable!("the watched read has 3 or 4 replies, got {n}"),
    };
    let (from, to, recorded): (Hash, Hash, Hash) =
        redis::from_redis_value(redis::Value::Array(replies)).map_err(corrupt)?;
    Ok(WatchedRead {
        from: parse_wallet(space, &request.from_user, &from)?,
        to: parse_wallet(space, &request.to_user, &to)?,
        recorded,
        lock_tokens,
    })
}

/// Step 4 on its own, for a retry after EXEC found a watched key changed.
fn watch_and_read(conn: &mut Conn, call: &Call<'_>) -> Result<WatchedRead, TransferError> {
    let mut pipe = redis::pipe();
    add_watch_and_reads(&mut pipe, call, true);
    let replies: Vec<redis::Value> = pipe.query(&mut conn.redis)?;
    parse_watched(replies, call)
}

fn unwatch(conn: &mut Conn) {
    if redis::cmd("UNWATCH").query::<()>(&mut conn.redis).is_err() {
        conn.taint();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::money::Currency;

    fn req(from: &str, to: &str, amount: &str) -> TransferRequest {
        TransferRequest::new("t1", from, to, amount, Currency::USD).unwrap()
    }

    #[test]
    fn a_lock_is_lost_when_its_token_is_missing_or_another() {
        let keys = vec!["lock:a".to_string(), "lock:b".to_string()];
        let ours = Some("t1".to_string());
        assert_eq!(lost_lock(&keys, &[ours.clone(), ours.clone()], "t1"), None);
        assert_eq!(
            lost_lock(&keys, &[ours.clone(), None], "t1"),
            Some("lock:b")
        );
        assert_eq!(
            lost_lock(&keys, &[Some("t2".into()), ours], "t1"),
            Some("lock:a")
        );
    }

    fn call(request: &TransferRequest) -> Call<'_> {
        Call {
            request,
            origin: None,
            space: KeySpace::Standalone,
            outcome_key: crate::engine::store::keys::outcome(&request.idempotency_key),
            lock_keys: lock::lock_keys(&[&request.from_user, &request.to_user]),
            fingerprint: request.fingerprint(),
            stats: TransferStats::default(),
            started: Instant::now(),
        }
    }

    fn commands(pipe: &redis::Pipeline) -> Vec<String> {
        pipe.cmd_iter()
            .map(|c| {
                let packed = String::from_utf8_lossy(&c.get_packed_command()).into_owned();
                packed.split("\r\n").nth(2).unwrap_or_default().to_string()
            })
            .collect()
    }

    #[test]
    fn the_transaction_moves_money_only_when_completed_and_always_records_and_unlocks() {
        let r = req("a", "b", "1.00");
        let c = call(&r);
        let ok = Ok((Amount::from_minor(0), Amount::from_minor(100)));
        let none = Trims {
            max_entries: 10,
            from: false,
            to: false,
        };
        let outcome = new_outcome(&r, &ok, (4, 9), "f", None);
        let done = transaction(&c, &ok, (4, 9), &outcome, None, &none);
        assert_eq!(
            commands(&done),
            ["HSET", "RPUSH", "HSET", "RPUSH", "HSET", "DEL"]
        );
        let receiver = Trims { to: true, ..none };
        let trimmed = transaction(&c, &ok, (4, 9), &outcome, None, &receiver);
        assert_eq!(
            commands(&trimmed),
            ["HSET", "RPUSH", "HSET", "RPUSH", "EVAL", "HSET", "DEL"]
        );
        assert_eq!(receiver.wallets(&r).collect::<Vec<_>>(), ["b"]);
        let packed = String::from_utf8_lossy(&done.get_packed_pipeline()).into_owned();
        assert!(
            packed.contains("version\r\n$1\r\n5\r\n"),
            "the sender's version goes 4 -> 5"
        );
        assert!(
            packed.contains("version\r\n$2\r\n10\r\n"),
            "the receiver's 9 -> 10"
        );
        let failed = Err(FailureReason::InsufficientFunds);
        let outcome = new_outcome(&r, &failed, (0, 0), "f", None);
        let ttl = transaction(&c, &failed, (4, 9), &outcome, Some(5_000), &none);
        assert_eq!(commands(&ttl), ["HSET", "PEXPIRE", "DEL"]);
        assert_eq!(commands(&ttl), ["HSET", "PEXPIRE", "DEL"]);
    }
}
