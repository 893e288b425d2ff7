//! Transfers on a Redis Cluster. Every transfer first claims its idempotency key
//! (`key_claim`, one round trip, so a key names one request on every topology). A transfer
//! whose wallets share a hash slot then runs the one-slot algorithm of `transfer` on the
//! slot's primary, with the cluster key names (`WalletService::transfer_one_slot`); one whose
//! wallets are in different slots runs as idempotent steps under both wallets' locks, each
//! `SET NX PX` with a token on its wallet's shard, in sorted key order, all or none per attempt
//! (`cluster_lock`). ARCHITECTURE.md, "Redis Cluster", keeps the invariants and the map of the
//! other cluster modules; the steps are described here.
//!
//! ```text
//! claim     the key's shard:  SET claim:k "c1 ..." NX GET PX (+ WAIT)              1 round trip
//!           another request's claim -> idempotency_conflict, no lock taken (key_claim)
//! lock+1    sender's shard:   SET lock:{s} NX PX; WATCH wallet:{s} transfer:{s}:k lock:{s};
//!                             HGETALL wallet, outcome                            1 round trip
//!           receiver's shard: SET lock:{r} NX PX; WATCH wallet:{r} credit:{r}:s:k lock:{r};
//!                             HGETALL wallet, GET marker                         1 round trip
//!           (in sorted key order; each shard's WATCH and reads ride behind its SET)
//!           recorded COMPLETED/FAILED -> answer it; PENDING -> finish it (3, 4), then answer;
//!           no record and too old to apply (`expiry`) -> FAILED `expired`, nothing written;
//!           decide (pure `decide`); a business failure -> MULTI HSET outcome FAILED
//!           (+ PEXPIRE), DEL lock:{s} EXEC, and the receiver's lock released
//! 2 debit   sender's shard:   MULTI balance+version, RPUSH, trim when due,
//!                             HSET outcome s=PENDING (+ x = this run's token) EXEC
//!                                                                                1 round trip
//! 3 credit  receiver's shard: unless credit:{r}:s:k holds this x: MULTI balance+version,
//!                             RPUSH, trim when due, SET credit:{r}:s:k "x tb tv" EXEC
//!                                                                                1 round trip
//! 4 done    sender's shard:   one script: our lock and our PENDING (its x)? then
//!                             s=COMPLETED, tb, tv, HDEL x, PEXPIRE (outcome ttl), DEL lock:{s}
//!                                                                                1 round trip
//! unlock    receiver's shard: one script: our lock? then DEL lock:{r} credit:{r}:s:k
//!                                                                                1 round trip
//! ```
//!
//! Uncontended, a cross-slot transfer costs 7 round trips (the claim's, then six) and 28
//! commands run: 21 sent (the claim's SET, the lock round trips' 8, the 5 of each MULTI/EXEC of
//! steps 2 and 3, the two scripts' EVALs) and 7 more inside the two scripts. A same-slot one
//! costs 3 round trips and 15 commands (the claim, then the one-slot transaction's 2 and 14);
//! on one Redis there is no claim: 2 and 14. These are with records kept for ever and no trim
//! due: an outcome ttl adds a PEXPIRE, a due trim a script per wallet trimmed, `wait_replicas`
//! a WAIT per write. `tests/it/cluster_transfer.rs` measures them with Redis's own command
//! counts (`same_slot_transfers_stay_one_transaction`).
//!
//! Each step is idempotent. Steps 2 and 3 by what they WATCH: the wallet, the outcome record
//! or the marker, and the lock, whose token is checked on every read after the first (the
//! first needs no check: the `SET NX` reply just before it in the same pipeline says the lock
//! is ours), so a holder whose lock expired cannot write. Step 3 also by the marker, step 4 by
//! its script's checks. A nil EXEC (a watched key changed: a deposit, a lock that expired)
//! reads again, the lock tokens included (both shards after step 2 or a FAILED record, the
//! receiver's after step 3), bounded by `watch_retries_max`. An error that says the slot map
//! may be stale (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, EXECABORT for a queued command redirected,
//! READONLY, MASTERDOWN, an I/O error: `cluster::map_may_be_stale`; or a cluster error that may
//! pass) refreshes the slot map and runs the whole call again from the top, the claim included,
//! after a short backoff, at most [`REDIRECT_RETRIES_LIMIT`] times; then the error is returned,
//! transient. Running from the top finishes what a first run left: every step is idempotent by
//! what it WATCHes, the PENDING record and the marker. ASK is not followed (`cluster`, what is
//! not done yet): a transfer on a migrating slot retries until the migration ends.
//!
//! # The credit marker
//!
//! The marker `credit:{r}:s:k` is named after the whole transfer, sender and key, as the
//! outcome record `transfer:{s}:k` is, so another sender's transfer with the same key to the
//! same receiver never reads, overwrites or deletes it, and even a claim lost at a failover
//! (`wait_replicas` 0) cannot credit twice. It holds the PENDING record's `x` (the token of the
//! run that debited), so a marker left by an older transfer with the same key never passes for
//! this one's credit. It lives only while the outcome may be PENDING: it is deleted under the
//! receiver's lock, with it, after step 4. A crash between step 4 and that unlock leaves it
//! behind, harmless: the outcome is COMPLETED and nobody credits again (the audit lists it as a
//! leftover, not a violation).
//!
//! # PENDING
//!
//! `Status::Pending` exists only in records of cross-slot transfers, between steps 2 and 4:
//! never answered (a replay finishes it first, then answers from the record), never on the
//! wire, never expiring (a PENDING record has no ttl; step 4 gives the COMPLETED record the
//! outcome ttl). While PENDING, the record's `tb`/`tv` are what the credit was expected to
//! make; the COMPLETED record has the real ones. Older readers cannot meet it (they know no
//! cluster key names) and would read it as a corrupt record, never as a completed one. A
//! request with another fingerprint that finds it is an `idempotency_conflict`, and the PENDING
//! stays for its own request or the recovery.
//!
//! A receiver that changed after the decision (frozen or closed since, or moved by deposits so
//! that the credit passes `BALANCE_LIMIT`; possible while the receiver's lock was expired, or
//! for a deposit, which takes no lock) does not stop a PENDING transfer: it is finished as
//! decided, since the decision was taken under both locks and the sender's money has left, and
//! the run logs a warning naming the rule it finished past (arithmetic stays exact: the limit
//! is at most half of `i64`). A receiver deleted since leaves the transfer PENDING, in flight
//! for the audit, with an error that is not transient ("restore the wallet, then run
//! recover"; the worker dead-letters the request with it); once restored, `recover` finishes
//! it (`tests/it/cluster_transfer.rs`,
//! `a_pending_transfer_is_finished_as_decided_after_the_receiver_changed`).
//!
//! # Recovery
//!
//! What a crash leaves PENDING is finished by the next delivery of its request, or by
//! `recovery` ([`WalletService::recover`]), which runs these same steps in a mode that never
//! starts a transfer (`finish_pending`).
//!
//! # Durability
//!
//! `EngineConfig::wait_replicas: Some(n)` sends `WAIT n 1000` on the connection that wrote,
//! after the key's claim, after the one-slot transaction and after steps 2, 3 and 4 (and a
//! FAILED record). Fewer acknowledgements is `TransferError::ReplicasBehind`, transient: the
//! write stays on the primary, and a retry answers from the record or finishes the PENDING.
//! (`wallet` WAITs the same way after a deposit and new wallets, with
//! `WalletError::ReplicasBehind`: a deposit has no key, so its error says to read the history
//! before depositing again.) The marker is deleted only after step 4 was
//! acknowledged: a failover that lost the completion but kept the marker's deletion would
//! credit twice. With `None` a failover can lose acknowledged writes, and across shards that is
//! worse than on one Redis: a lost step 4 whose marker deletion survived would be credited
//! again by the recovery, a lost debit whose credit survived creates money.
//!
//! With `wait_replicas`, nothing is answered or built on that the replicas may not have. A
//! replay answered from a record WAITs too (`wait_replicas_before_answer`): WAIT covers only
//! the connection's own writes, so it first writes once on the record's shard (PEXPIRE of its
//! own lock) and waits for that; replication is in order, so the record is on the replicas when
//! it returns. Without it the retry after a failed WAIT would answer what no replica has. The
//! same wait runs before a run acts on what an earlier run wrote, whose own WAIT may have
//! failed: a PENDING record found by a replay or the recovery is made to reach the sender's
//! replicas before the credit (else a failover that drops the debit and the record lets the
//! next delivery debit and credit again), and a marker that says the credit was done is made
//! to reach the receiver's replicas before step 4 (else COMPLETED is answered on a credit a
//! failover loses). A primary cut off from its replicas keeps serving until it is failed over,
//! and what only it held is gone then; these waits are what keeps its writes from being
//! answered (`tests/it/cluster_transfer.rs`,
//! `a_credit_found_done_is_not_answered_before_the_receivers_replica_has_it`,
//! `a_pending_record_is_not_finished_before_the_senders_replica_has_it`).
//!
//! Owns the cross-slot steps, the PENDING record's extra field and the marker, the finishing
//! of one PENDING record (`finish_pending`) and the redirect retries of cluster transfers.
//! Does not own the recovery's scan (`recovery`). Does not own
//! the key's claim (`key_claim`), the business decision or the outcome encoding (`outcome`),
//! the history entry and trim (`wallet`, `retention`), or the shard locks (`cluster_lock`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::backoff::Backoff;
use crate::engine::cluster::{self, ClusterPools, keys};
use crate::engine::cluster_lock::{self, ShardLocks};
use crate::engine::key_claim;
use crate::engine::keyspace::KeySpace;
use crate::engine::message::{FailureReason, Status, TransferRequest, now_ms};
use crate::engine::money::{Amount, BALANCE_LIMIT};
use crate::engine::outcome::{
    Origin, TransferError, TransferOutcome, TransferStats, answer_from_record, decide, new_outcome,
    outcome_fields, parse_outcome,
};
use crate::engine::retention;
use crate::engine::service::{Failpoint, WalletService};
use crate::engine::store::PooledConn;
use crate::engine::wallet::{
    HistoryKind, Mover, Wallet, WalletStatus, add_history_in, parse_wallet,
};

/// Times one cluster transfer runs again from the top after an error that says the slot map
/// may be stale (a redirect, a moving slot, a node failing over: see the module doc), each
/// after refreshing the slot map; then the error is returned, transient, for the caller to
/// retry later.
pub const REDIRECT_RETRIES_LIMIT: u32 = 5;
/// The PENDING record's field with the token of the run that debited (the marker holds it).
const PENDING_TOKEN_FIELD: &str = "x";
/// Delays between runs after a redirect.
const REDIRECT_BACKOFF: Backoff = Backoff {
    first_ms: 20,
    max_ms: 1_000,
    jitter_ms: 20,
};

/// Step 4: `KEYS[1]` the outcome, `KEYS[2]` the sender's lock; `ARGV` token, `x`, tb, tv,
/// ttl in ms (0: none). -1 when the lock is not ours (nothing written), 0 when the record is
/// not this PENDING any more (the lock deleted), 1 when it became COMPLETED.
const COMPLETE_LUA: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
local record = redis.call('HMGET', KEYS[1], 's', 'x')
if record[1] ~= 'PENDING' or record[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 's', 'COMPLETED', 'tb', ARGV[3], 'tv', ARGV[4])
redis.call('HDEL', KEYS[1], 'x')
if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"#;

/// Whether a run answers a request or only finishes what a record left PENDING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A request: a fresh transfer, or the answer from its record (finished first).
    Request,
    /// The recovery: finishes a PENDING record, never starts a transfer.
    Recover,
}

/// A transfer on a Redis Cluster: one slot or cross-slot, run again from the top after a
/// redirect (see the module doc).
pub(crate) fn transfer(
    svc: &WalletService,
    pools: &Arc<ClusterPools>,
    request: &TransferRequest,
    origin: Option<&Origin>,
) -> Result<TransferOutcome, TransferError> {
    let one_slot = keys::wallet_slot(&request.from_user) == keys::wallet_slot(&request.to_user);
    with_redirects(pools, || {
        // One key, one request, on every topology: a key another request holds is a
        // conflict before any lock is taken (`key_claim`).
        key_claim::claim(svc, pools, request)?;
        let answer = match one_slot {
            true => svc.transfer_one_slot(request, origin),
            false => Cross::new(svc, pools, request, origin, Mode::Request)
                .run()
                .map(|answer| answer.expect("a request always gets an answer")),
        };
        answer.map(|mut outcome| {
            outcome.stats.round_trips += 1;
            outcome
        })
    })
}

/// Runs `f` again after a redirect (refreshing the map first), at most
/// [`REDIRECT_RETRIES_LIMIT`] times.
fn with_redirects<T>(
    pools: &ClusterPools,
    mut f: impl FnMut() -> Result<T, TransferError>,
) -> Result<T, TransferError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if redirected(&e) && attempt < REDIRECT_RETRIES_LIMIT => {
                if let Err(refresh) = pools.refresh() {
                    log::debug!("slot map refresh after {e} failed: {refresh}");
                }
                std::thread::sleep(Duration::from_millis(REDIRECT_BACKOFF.delay_ms(attempt)));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True for errors that say the slot map may be stale ([`cluster::map_may_be_stale`], or a
/// cluster error that may pass). Pure.
fn redirected(e: &TransferError) -> bool {
    match e {
        TransferError::Redis(e) => cluster::map_may_be_stale(e),
        TransferError::Cluster(e) => e.is_transient(),
        _ => false,
    }
}

/// Step 1's reads, on both shards, under WATCH.
struct CrossRead {
    from: Option<Wallet>,
    to: Option<Wallet>,
    recorded: HashMap<String, String>,
    /// The credit marker's value, when there is one.
    marker: Option<String>,
    /// The lock tokens (sender, receiver), read again after a nil EXEC; `None` on the first
    /// read, which the SET NX replies just before it vouch for.
    tokens: Option<(Option<String>, Option<String>)>,
}

/// What one pass over a read ended in.
enum Pass {
    /// The answer (`None`: the recovery had nothing to finish); boxed, as it is large and
    /// the other variant empty.
    Done(Option<Box<TransferOutcome>>),
    /// A watched key changed before EXEC: read again.
    Aborted,
}

/// One cross-slot run: the request, its keys and what it has cost.
struct Cross<'a> {
    svc: &'a WalletService,
    pools: &'a ClusterPools,
    request: &'a TransferRequest,
    origin: Option<&'a Origin>,
    mode: Mode,
    outcome_key: String,
    marker_key: String,
    fingerprint: String,
    stats: TransferStats,
    started: Instant,
    /// Set when this run finished a PENDING record it found (the recovery counts them).
    finished_pending: bool,
}

impl<'a> Cross<'a> {
    fn new(
        svc: &'a WalletService,
        pools: &'a ClusterPools,
        request: &'a TransferRequest,
        origin: Option<&'a Origin>,
        mode: Mode,
    ) -> Cross<'a> {
        Cross {
            svc,
            pools,
            request,
            origin,
            mode,
            outcome_key: keys::outcome(&request.from_user, &request.idempotency_key),
            marker_key: keys::credit_marker(
                &request.to_user,
                &request.from_user,
                &request.idempotency_key,
            ),
            fingerprint: request.fingerprint(),
            stats: TransferStats::default(),
            started: Instant::now(),
            finished_pending: false,
        }
    }

    fn from(&self) -> &'a str {
        &self.request.from_user
    }

    fn to(&self) -> &'a str {
        &self.request.to_user
    }

    /// Locks, reads, and passes over the read until one ends (bounded).
    fn run(&mut self) -> Result<Option<TransferOutcome>, TransferError> {
        let _local = self.svc.local_locks.lock(&[self.from(), self.to()]);
        let (mut locks, mut read) = self.lock_and_read()?;
        let mut aborts = 0;
        loop {
            if let Pass::Done(answer) = self.pass(&mut locks, read)? {
                return Ok(answer.map(|a| *a));
            }
            aborts += 1;
            self.stats.watch_retries = aborts;
            if aborts > self.svc.config.watch_retries_max {
                return Err(TransferError::WatchConflicts(aborts));
            }
            read = self.reread(&mut locks)?;
        }
    }

    /// Both locks, each with its shard's WATCH and reads in the same round trip. A lock
    /// known to be held with no ttl fails fast (see `lock::StuckLocks`).
    fn lock_and_read(&mut self) -> Result<(ShardLocks, CrossRead), TransferError> {
        let lock_keys = KeySpace::Cluster.lock_keys(&[self.from(), self.to()]);
        let then = |wallet: &str, pipe: &mut redis::Pipeline| {
            if wallet == self.from() {
                self.add_sender_reads(pipe, false);
            } else {
                self.add_receiver_reads(pipe, false);
            }
        };
        let wallets = [self.from(), self.to()];
        let (locks, replies) = self.svc.stuck_locks.acquire(
            &lock_keys,
            &self.svc.config.lock,
            |config| cluster_lock::acquire(self.pools, &wallets, config, &then),
            TransferError::no_ttl_locks,
        )?;
        self.stats.lock = locks.stats();
        self.stats.round_trips += locks.stats().round_trips;
        let sender_first = keys::lock(self.from()) < keys::lock(self.to());
        let [first, second]: [Vec<redis::Value>; 2] =
            replies.try_into().expect("one reply list per lock");
        let (sender, receiver) = if sender_first {
            (first, second)
        } else {
            (second, first)
        };
        let read = self.parse_read(sender, receiver)?;
        Ok((locks, read))
    }

    /// The sender's shard: WATCH its wallet, the outcome and its lock, then read the wallet
    /// and the outcome (and the lock's token when asked).
    fn add_sender_reads(&self, pipe: &mut redis::Pipeline, with_token: bool) {
        let wallet = keys::wallet(self.from());
        let lock = keys::lock(self.from());
        pipe.cmd("WATCH")
            .arg(&wallet)
            .arg(&self.outcome_key)
            .arg(&lock)
            .ignore()
            .hgetall(&wallet)
            .hgetall(&self.outcome_key);
        if with_token {
            pipe.get(&lock);
        }
    }

    /// The receiver's shard: WATCH its wallet, the credit marker and its lock, then read the
    /// wallet and the marker (and the lock's token when asked).
    fn add_receiver_reads(&self, pipe: &mut redis::Pipeline, with_token: bool) {
        let wallet = keys::wallet(self.to());
        let lock = keys::lock(self.to());
        pipe.cmd("WATCH")
            .arg(&wallet)
            .arg(&self.marker_key)
            .arg(&lock)
            .ignore()
            .hgetall(&wallet)
            .get(&self.marker_key);
        if with_token {
            pipe.get(&lock);
        }
    }

    /// Step 1's replies of both shards (each with the lock token at the end, or not).
    fn parse_read(
        &self,
        sender: Vec<redis::Value>,
        receiver: Vec<redis::Value>,
    ) -> Result<CrossRead, TransferError> {
        type Hash = HashMap<String, String>;
        let corrupt = |e: redis::ParsingError| TransferError::Corrupt {
            key: format!(
                "{} / {}",
                keys::wallet(self.from()),
                keys::wallet(self.to())
            ),
            detail: format!("unexpected reply to the watched read: {e}"),
        };
        let with_tokens = sender.len() == 3;
        let values = redis::Value::Array(sender.into_iter().chain(receiver).collect());
        let (from, recorded, from_token, to, marker, to_token): (
            Hash,
            Hash,
            Option<String>,
            Hash,
            Option<String>,
            Option<String>,
        ) = if with_tokens {
            redis::from_redis_value(values).map_err(corrupt)?
        } else {
            let (from, recorded, to, marker): (Hash, Hash, Hash, Option<String>) =
                redis::from_redis_value(values).map_err(corrupt)?;
            (from, recorded, None, to, marker, None)
        };
        Ok(CrossRead {
            from: parse_wallet(KeySpace::Cluster, self.from(), &from)?,
            to: parse_wallet(KeySpace::Cluster, self.to(), &to)?,
            recorded,
            marker,
            tokens: with_tokens.then_some((from_token, to_token)),
        })
    }

    /// Step 1 again on both shards, lock tokens included, after a nil EXEC.
    fn reread(&mut self, locks: &mut ShardLocks) -> Result<CrossRead, TransferError> {
        let mut sender = redis::pipe();
        self.add_sender_reads(&mut sender, true);
        let mut receiver = redis::pipe();
        self.add_receiver_reads(&mut receiver, true);
        self.stats.round_trips += 2;
        let sender: Vec<redis::Value> = query(locks.conn(self.from()), &sender)?;
        let receiver: Vec<redis::Value> = query(locks.conn(self.to()), &receiver)?;
        self.parse_read(sender, receiver)
    }

    /// One pass over a read: the recorded answer, a PENDING finished, a FAILED recorded, or
    /// a fresh debit and its completion.
    fn pass(&mut self, locks: &mut ShardLocks, read: CrossRead) -> Result<Pass, TransferError> {
        if let Some((from_token, to_token)) = &read.tokens {
            for (wallet, token) in [(self.from(), from_token), (self.to(), to_token)] {
                if token.as_deref() != Some(locks.token()) {
                    return Err(TransferError::LockLost(locks.key(wallet)));
                }
            }
        }
        if !read.recorded.is_empty() {
            let answer = self.pass_recorded(locks, read)?;
            return Ok(Pass::Done(answer.map(Box::new)));
        }
        if self.mode == Mode::Recover {
            return Ok(Pass::Done(None));
        }
        let versions = (
            read.from.as_ref().map_or(0, |w| w.version),
            read.to.as_ref().map_or(0, |w| w.version),
        );
        // No record: a request older than the records live is not applied (expiry.rs); the
        // locks are released on drop.
        if let Some(expired) = self.svc.expired_answer(self.request, versions, self.origin) {
            return Ok(Pass::Done(Some(Box::new(TransferOutcome {
                stats: self.stats,
                ..expired
            }))));
        }
        let after = match decide(self.request, read.from.as_ref(), read.to.as_ref()) {
            Ok(after) => after,
            Err(reason) => return self.record_failed(locks, reason, versions),
        };
        let Some(pending) = self.debit(locks, &read, after, versions)? else {
            return Ok(Pass::Aborted);
        };
        self.failpoint(locks, Failpoint::AfterDebit)?;
        let x = locks.token().to_string();
        let done = self.finish(locks, pending, x, read, false)?;
        self.stats.elapsed_us = self.started.elapsed().as_micros() as u64;
        Ok(Pass::Done(Some(Box::new(TransferOutcome {
            stats: self.stats,
            ..done
        }))))
    }

    /// A recorded outcome: answered as it is when final, finished first when PENDING (not
    /// for a different request with the same key: that is a conflict, and the PENDING stays
    /// for its own request or the recovery).
    fn pass_recorded(
        &mut self,
        locks: &mut ShardLocks,
        read: CrossRead,
    ) -> Result<Option<TransferOutcome>, TransferError> {
        let record = parse_outcome(&self.outcome_key, &read.recorded)?;
        let record = if record.status == Status::Pending {
            let theirs = !record.request_hash.is_empty() && record.request_hash != self.fingerprint;
            if theirs && self.mode == Mode::Request {
                return Err(TransferError::IdempotencyConflict {
                    key: record.idempotency_key.clone(),
                    recorded: record.request_hash.clone(),
                    this: self.fingerprint.clone(),
                    original: Box::new(record),
                });
            }
            let x = read
                .recorded
                .get(PENDING_TOKEN_FIELD)
                .cloned()
                .ok_or_else(|| TransferError::Corrupt {
                    key: self.outcome_key.clone(),
                    detail: format!("a PENDING record without its {PENDING_TOKEN_FIELD} field"),
                })?;
            // The debit and the PENDING record were written by an earlier run, whose WAIT may
            // have failed (a primary cut off from its replica keeps serving for a while):
            // finishing on a record no replica has would credit a transfer whose debit a
            // failover drops, and the next delivery would debit and credit it again.
            let lock_key = locks.key(self.from());
            self.svc
                .wait_replicas_before_answer(locks.conn(self.from()), &lock_key)?;
            self.finished_pending = true;
            self.finish(locks, record, x, read, true)?
        } else {
            // Its last write may have missed the replicas (this may be the retry after a
            // failed WAIT): make sure they have it before answering.
            let lock_key = locks.key(self.from());
            self.svc
                .wait_replicas_before_answer(locks.conn(self.from()), &lock_key)?;
            record
        };
        self.stats.elapsed_us = self.started.elapsed().as_micros() as u64;
        match self.mode {
            Mode::Recover => Ok(Some(record)),
            Mode::Request => {
                answer_from_record(record, &self.fingerprint, self.origin, self.stats).map(Some)
            }
        }
    }

    /// A business failure: the FAILED outcome on the sender's shard, with the sender's lock
    /// deleted in the same transaction (the receiver's is released on drop).
    fn record_failed(
        &mut self,
        locks: &mut ShardLocks,
        reason: FailureReason,
        versions: (u64, u64),
    ) -> Result<Pass, TransferError> {
        let decision = Err(reason);
        let fp = &self.fingerprint;
        let outcome = new_outcome(self.request, &decision, versions, fp, self.origin);
        let mut pipe = redis::pipe();
        pipe.atomic();
        add_outcome(&mut pipe, &self.outcome_key, &outcome, None);
        if let Some(ttl_ms) = self.svc.config.outcome_ttl_ms {
            pipe.pexpire(&self.outcome_key, ttl_ms as i64).ignore();
        }
        pipe.del(keys::lock(self.from())).ignore();
        self.before_exec();
        self.stats.round_trips += 1;
        let exec: Option<Vec<redis::Value>> = query(locks.conn(self.from()), &pipe)?;
        if exec.is_none() {
            return Ok(Pass::Aborted);
        }
        locks.released_by_step(self.from());
        self.svc.wait_replicas(locks.conn(self.from()))?;
        self.stats.elapsed_us = self.started.elapsed().as_micros() as u64;
        Ok(Pass::Done(Some(Box::new(TransferOutcome {
            stats: self.stats,
            ..outcome
        }))))
    }

    /// Step 2 on the sender's shard: the debit, its history entry (and trim when due) and
    /// the PENDING record with this run's token in `x`. `None` when EXEC aborted.
    fn debit(
        &mut self,
        locks: &mut ShardLocks,
        read: &CrossRead,
        after: (Amount, Amount),
        versions: (u64, u64),
    ) -> Result<Option<TransferOutcome>, TransferError> {
        let fp = &self.fingerprint;
        let mut pending = new_outcome(self.request, &Ok(after), versions, fp, self.origin);
        pending.status = Status::Pending;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let sender = read.from.as_ref().expect("decided: the sender exists");
        let trim = self.add_move(&mut pipe, sender, HistoryKind::Debit, after.0);
        add_outcome(&mut pipe, &self.outcome_key, &pending, Some(locks.token()));
        self.before_exec();
        self.stats.round_trips += 1;
        let exec: Option<Vec<i64>> = query(locks.conn(self.from()), &pipe)?;
        let Some(replies) = exec else {
            return Ok(None);
        };
        if trim {
            retention::report_trim(self.from(), replies.first().copied().unwrap_or(0));
        }
        self.svc.wait_replicas(locks.conn(self.from()))?;
        Ok(Some(pending))
    }

    /// Adds one wallet's side of a move to a MULTI: balance and version (one HSET), the
    /// history entry and, when due, the trim. Returns whether a trim was added (its reply is
    /// the transaction's first counted one).
    fn add_move(
        &self,
        pipe: &mut redis::Pipeline,
        wallet: &Wallet,
        kind: HistoryKind,
        after: Amount,
    ) -> bool {
        let id = match kind {
            HistoryKind::Debit => self.from(),
            _ => self.to(),
        };
        pipe.cmd("HSET")
            .arg(keys::wallet(id))
            .arg("balance")
            .arg(after.to_string())
            .arg("version")
            .arg(wallet.version + 1)
            .ignore();
        let mover = Mover {
            transfer_id: &self.request.transfer_id,
            idempotency_key: &self.request.idempotency_key,
        };
        let amount = self.request.amount;
        let at_ms = now_ms();
        add_history_in(KeySpace::Cluster, pipe, id, &mover, kind, amount, at_ms);
        pipe.ignore();
        let max = self.svc.config.history_max_entries;
        let due = max.filter(|m| retention::trim_due(wallet.version + 1, &wallet.checkpoint, *m));
        if let Some(max_entries) = due {
            retention::add_trim_in(KeySpace::Cluster, pipe, id, max_entries);
        }
        due.is_some()
    }

    /// Steps 3 and 4 for the PENDING `pending` whose run token is `x`, from `read` (the
    /// receiver's WATCH still on; the sender's too when `sender_watching`, i.e. unless step 2
    /// just ran): the credit unless its marker says it was done, then the record COMPLETED
    /// and both locks released (the marker with the receiver's).
    fn finish(
        &mut self,
        locks: &mut ShardLocks,
        pending: TransferOutcome,
        x: String,
        read: CrossRead,
        sender_watching: bool,
    ) -> Result<TransferOutcome, TransferError> {
        let credit = self.credit(locks, &x, read.to, read.marker)?;
        let ((to_after, to_version), receiver_watching) = credit;
        self.failpoint(locks, Failpoint::AfterCredit)?;
        self.before_exec();
        let mut pipe = redis::pipe();
        if sender_watching {
            pipe.cmd("UNWATCH").ignore();
        }
        pipe.cmd("EVAL")
            .arg(COMPLETE_LUA)
            .arg(2)
            .arg(&self.outcome_key)
            .arg(keys::lock(self.from()))
            .arg(locks.token())
            .arg(&x)
            .arg(to_after.minor())
            .arg(to_version)
            .arg(self.svc.config.outcome_ttl_ms.unwrap_or(0));
        self.stats.round_trips += 2;
        let (completed,): (i64,) = query(locks.conn(self.from()), &pipe)?;
        if completed < 0 {
            return Err(TransferError::LockLost(locks.key(self.from())));
        }
        locks.released_by_step(self.from());
        if completed == 0 {
            // Only when our lock expired and another run completed it: read it again.
            return Err(TransferError::LockLost(locks.key(self.from())));
        }
        // The marker goes only once COMPLETED is as durable as asked: a failover that lost
        // the completion but kept the marker's deletion would credit twice.
        self.svc.wait_replicas(locks.conn(self.from()))?;
        let marker = self.marker_key.as_str();
        let _ = locks
            .of(self.to())
            .release_with(&[marker], receiver_watching);
        Ok(TransferOutcome {
            status: Status::Completed,
            to_balance_after: Some(to_after),
            to_version_after: Some(to_version),
            ..pending
        })
    }

    /// Step 3 on the receiver's shard, under the WATCH of the last read: the credit, its
    /// history entry (and trim when due) and the marker `x tb tv`; skipped when the marker
    /// already holds this `x`. A nil EXEC (the receiver changed: a deposit) counts in
    /// `watch_retries` and reads the receiver's side again, at most `watch_retries_max` times;
    /// then `WatchConflicts` with the record still PENDING, for a retry or `recover` to finish.
    /// Returns the receiver's balance and version after the credit, and whether the
    /// connection still WATCHes (the credit was skipped, so no EXEC cleared it).
    fn credit(
        &mut self,
        locks: &mut ShardLocks,
        x: &str,
        mut to: Option<Wallet>,
        mut marker: Option<String>,
    ) -> Result<((Amount, u64), bool), TransferError> {
        let mut aborts = 0;
        loop {
            if let Some(done) = marker.as_deref().and_then(|m| parse_marker(m, x)) {
                // The credit was applied by an earlier run, whose own WAIT may have failed
                // (this may be its retry, or the sweep): make sure the replicas have it before
                // step 4 builds an answer on it, or a failover could lose a credit that was
                // answered COMPLETED.
                let lock_key = locks.key(self.to());
                self.svc
                    .wait_replicas_before_answer(locks.conn(self.to()), &lock_key)?;
                return Ok((done, true));
            }
            let receiver = to.as_ref().ok_or_else(|| self.receiver_gone())?;
            let after = receiver
                .balance
                .checked_add(self.request.amount)
                .map_err(|e| TransferError::Corrupt {
                    key: keys::wallet(self.to()),
                    detail: format!("the PENDING credit does not fit the balance: {e}"),
                })?;
            self.warn_if_receiver_changed(receiver, after);
            let version = receiver.version + 1;
            let mut pipe = redis::pipe();
            pipe.atomic();
            let trim = self.add_move(&mut pipe, receiver, HistoryKind::Credit, after);
            let value = format!("{x} {} {version}", after.minor());
            pipe.set(&self.marker_key, value).ignore();
            self.before_exec();
            self.stats.round_trips += 1;
            let exec: Option<Vec<i64>> = query(locks.conn(self.to()), &pipe)?;
            if let Some(replies) = exec {
                if trim {
                    retention::report_trim(self.to(), replies.first().copied().unwrap_or(0));
                }
                self.svc.wait_replicas(locks.conn(self.to()))?;
                return Ok(((after, version), false));
            }
            aborts += 1;
            self.stats.watch_retries += 1;
            if aborts > self.svc.config.watch_retries_max {
                return Err(TransferError::WatchConflicts(aborts));
            }
            (to, marker) = self.reread_receiver(locks)?;
        }
    }

    /// The receiver's side of step 1 again, its lock token checked.
    fn reread_receiver(
        &mut self,
        locks: &mut ShardLocks,
    ) -> Result<(Option<Wallet>, Option<String>), TransferError> {
        let mut pipe = redis::pipe();
        self.add_receiver_reads(&mut pipe, true);
        self.stats.round_trips += 1;
        let (to, marker, token): (HashMap<String, String>, Option<String>, Option<String>) =
            query(locks.conn(self.to()), &pipe)?;
        if token.as_deref() != Some(locks.token()) {
            return Err(TransferError::LockLost(locks.key(self.to())));
        }
        Ok((parse_wallet(KeySpace::Cluster, self.to(), &to)?, marker))
    }

    /// The rule for a receiver that changed after the decision (the module doc, "PENDING"):
    /// the credit is made as decided, since the decision was taken under both locks and the
    /// sender's money has left, and the run says so, naming the rule it finished past (see
    /// [`receiver_change`]).
    fn warn_if_receiver_changed(&self, receiver: &Wallet, after: Amount) {
        if let Some(change) = receiver_change(receiver.status, after) {
            log::warn!(
                "transfer {} ({} -> {}, {}): finishing its credit as decided although the receiver changed since the decision: {change}; a decided cross-slot transfer is never left half done",
                self.outcome_key,
                self.from(),
                self.to(),
                self.request.amount,
            );
        }
    }

    fn receiver_gone(&self) -> TransferError {
        TransferError::Corrupt {
            key: keys::wallet(self.to()),
            detail: format!(
                "the receiver's wallet is gone while {} still waits for its credit of {} (PENDING): restore the wallet, then run recover",
                self.outcome_key, self.request.amount
            ),
        }
    }

    fn before_exec(&self) {
        if let Some(hook) = &self.svc.before_exec {
            hook(&self.request.idempotency_key);
        }
    }

    /// Stops here, as a crash would, when the tests set this failpoint: the locks are left
    /// to expire by their ttl and the connections are thrown away.
    fn failpoint(&self, locks: &mut ShardLocks, here: Failpoint) -> Result<(), TransferError> {
        if self.svc.failpoint != Some(here) {
            return Ok(());
        }
        locks.abandon();
        // A client-side error (not I/O: that would count as a node failing over and run the
        // transfer again at once); transient, like the crash it stands for.
        Err(TransferError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "failpoint",
            format!(
                "{here:?}: the transfer stopped as a crash would (test hook); its locks expire by their ttl"
            ),
        ))))
    }
}

/// What changed in a receiver since the decision that a credit made as decided goes past: a
/// status other than active (frozen or closed since), or a balance after the credit past
/// `BALANCE_LIMIT` (deposits in between; arithmetic stays exact, as the limit is at most half
/// of `i64`). `None` when neither. Pure.
fn receiver_change(status: WalletStatus, after: Amount) -> Option<String> {
    let inactive = status != WalletStatus::Active;
    let past_limit = after > BALANCE_LIMIT;
    (inactive || past_limit).then(|| {
        format!(
            "status {}, balance after {after} (limit {BALANCE_LIMIT})",
            status.as_str()
        )
    })
}

/// Adds the outcome record to a MULTI: one HSET of its fields (and `x` for a PENDING one).
fn add_outcome(pipe: &mut redis::Pipeline, key: &str, outcome: &TransferOutcome, x: Option<&str>) {
    let record = pipe.cmd("HSET").arg(key);
    for (field, value) in outcome_fields(outcome) {
        record.arg(field).arg(value);
    }
    if let Some(x) = x {
        record.arg(PENDING_TOKEN_FIELD).arg(x);
    }
    record.ignore();
}

/// Runs a pipeline on a shard's connection; an error leaves the connection's state unknown,
/// so it is thrown away.
fn query<T: redis::FromRedisValue>(
    conn: &mut PooledConn,
    pipe: &redis::Pipeline,
) -> Result<T, TransferError> {
    pipe.query(&mut conn.redis).map_err(|e| {
        conn.taint();
        TransferError::Redis(e)
    })
}

/// The receiver's balance and version after the credit, from a marker `x tb tv` that holds
/// this run's `x`; `None` for another transfer's marker (or one that does not read). Pure.
fn parse_marker(marker: &str, x: &str) -> Option<(Amount, u64)> {
    let mut parts = marker.split(' ');
    if parts.next()? != x {
        return None;
    }
    let balance = parts.next()?.parse::<i64>().ok()?;
    let version = parts.next()?.parse::<u64>().ok()?;
    Some((Amount::from_minor(balance), version))
}

/// Finishes the PENDING record `key` (true), or finds it final already (false): its request
/// rebuilt from the record, the cross-slot steps run in the mode that never starts a
/// transfer (the locks, the credit unless the marker holds the record's `x`, then
/// COMPLETED), again from the top after a redirect.
pub(crate) fn finish_pending(
    svc: &WalletService,
    pools: &ClusterPools,
    key: &str,
) -> Result<bool, TransferError> {
    with_redirects(pools, || {
        let mut conn = pools.conn_for_key(key)?;
        let fields: HashMap<String, String> =
            redis::cmd("HGETALL").arg(key).query(&mut conn.redis)?;
        drop(conn);
        if fields.is_empty() {
            return Ok(false);
        }
        let record = parse_outcome(key, &fields)?;
        if record.status != Status::Pending {
            return Ok(false);
        }
        let request = request_of(key, &record)?;
        let mut run = Cross::new(svc, pools, &request, None, Mode::Recover);
        run.run()?;
        Ok(run.finished_pending)
    })
}

/// The request a PENDING record was made for, rebuilt from it (the recovery has no other).
fn request_of(key: &str, record: &TransferOutcome) -> Result<TransferRequest, TransferError> {
    let corrupt = |detail: String| TransferError::Corrupt {
        key: key.to_string(),
        detail,
    };
    let currency = record
        .currency
        .parse()
        .map_err(|e| corrupt(format!("currency: {e}")))?;
    let request = TransferRequest::new(
        &record.transfer_id,
        &record.from_user,
        &record.to_user,
        &record.amount.to_string(),
        currency,
    )
    .and_then(|r| r.with_idempotency_key(&record.idempotency_key))
    .map_err(|e| corrupt(format!("the recorded request does not validate: {e}")))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cluster::ClusterError;

    #[test]
    fn a_receiver_changed_since_the_decision_is_one_no_longer_active_or_past_the_limit() {
        let limit = BALANCE_LIMIT;
        let below = Amount::from_minor(limit.minor() - 1);
        assert_eq!(receiver_change(WalletStatus::Active, below), None);
        assert_eq!(
            receiver_change(WalletStatus::Active, limit),
            None,
            "at the limit"
        );
        let past = Amount::from_minor(limit.minor() + 1);
        assert_eq!(
            receiver_change(WalletStatus::Active, past),
            Some(format!(
                "status active, balance after {past} (limit {limit})"
            ))
        );
        for status in [WalletStatus::Frozen, WalletStatus::Closed] {
            let change = receiver_change(status, below).expect("no longer active");
            assert!(
                change.starts_with(&format!("status {}, ", status.as_str())),
                "{change}"
            );
        }
    }

    #[test]
    fn a_marker_counts_only_for_its_own_run() {
        assert_eq!(
            parse_marker("abc 1250 7", "abc"),
            Some((Amount::from_minor(1250), 7))
        );
        assert_eq!(parse_marker("abc 1250 7", "abd"), None);
        assert_eq!(parse_marker("abc x 7", "abc"), None);
        assert_eq!(parse_marker("", "abc"), None);
    }

    /// The error a server's reply `wire` (RESP) gives.
    fn server(wire: &[u8]) -> TransferError {
        let e = redis::parse_redis_value(wire).unwrap().extract_error();
        TransferError::Redis(e.unwrap_err())
    }

    fn moved() -> TransferError {
        server(b"-MOVED 3999 127.0.0.1:6381\r\n")
    }

    #[test]
    fn a_redirect_runs_the_transfer_again_at_most_the_limit_of_times() {
        // Nothing listens on port 1: each refresh fails, is logged, and the run goes on.
        let pools = ClusterPools::unconnected("127.0.0.1:1");
        let mut runs = 0;
        let always: Result<(), _> = with_redirects(&pools, || {
            runs += 1;
            Err(moved())
        });
        assert!(
            redirected(&always.unwrap_err()),
            "the last redirect, returned"
        );
        assert_eq!(runs, 1 + REDIRECT_RETRIES_LIMIT);
        let mut runs = 0;
        let once = with_redirects(&pools, || {
            runs += 1;
            if runs == 1 { Err(moved()) } else { Ok(runs) }
        });
        assert_eq!(once.unwrap(), 2);
        let mut runs = 0;
        let other: Result<(), _> = with_redirects(&pools, || {
            runs += 1;
            Err(TransferError::WatchConflicts(3))
        });
        assert!(other.is_err());
        assert_eq!(runs, 1, "only a redirect runs again");
    }

    #[test]
    fn redirects_and_a_moving_slot_are_retried_other_errors_are_not() {
        assert!(redirected(&moved()));
        assert!(redirected(&server(b"-ASK 3999 127.0.0.1:6381\r\n")));
        assert!(redirected(&server(b"-TRYAGAIN Multiple keys request\r\n")));
        assert!(redirected(&server(b"-CLUSTERDOWN The cluster is down\r\n")));
        assert!(!redirected(&server(b"-ERR unknown command\r\n")));
        assert!(!redirected(&TransferError::WatchConflicts(3)));
        // A cluster error that may pass (a slot no node serves, mid-failover) and one that
        // will not (a configuration error).
        assert!(redirected(&TransferError::Cluster(
            ClusterError::SlotUncovered(7)
        )));
        assert!(!redirected(&TransferError::Cluster(ClusterError::NoSeeds)));
    }
}
