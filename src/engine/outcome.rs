//! What a transfer request comes to, as data: [`TransferOutcome`] and [`TransferError`], the
//! pure decision ([`decide`]: existence, status, currency, funds, balance limit), the answer
//! to a request already recorded (`answer_from_record`: the original, a duplicate, or a
//! conflict), and the outcome record's codec (`transfer:{key}` hash fields, both the long
//! format of the original system and the compact one, [`parse_outcome`]).
//!
//! Owns the meaning of a record and of an answer. Does not touch Redis: the one-slot path
//! (`transfer`), the cross-slot steps (`cluster_transfer`) and the key claim (`key_claim`)
//! read and write records and call these pure functions. A leaf of the transfer code: it
//! imports none of them.

use std::collections::HashMap;

use crate::engine::cluster::ClusterError;
use crate::engine::lock::{LockError, LockStats, NotTaken};
use crate::engine::message::{
    FailureReason, Status, TransferCompleted, TransferRequest, fingerprint, now_ms,
};
use crate::engine::money::{Amount, BALANCE_LIMIT};
use crate::engine::wallet::{Wallet, WalletError, WalletStatus};

/// What happened to a transfer request, as recorded under its idempotency key.
///
/// Not `#[non_exhaustive]`: it is data the engine returns and tests build, so adding a field
/// is a breaking change, made only in a minor release (docs/library.md, "Compatibility").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOutcome {
    /// The `transfer_id` of the request that produced the record (for a duplicate: the first
    /// request's, not this one's).
    pub transfer_id: String,
    /// The idempotency key the outcome is recorded under (`transfer:{key}`).
    pub idempotency_key: String,
    /// COMPLETED, or FAILED with a [`TransferOutcome::reason`].
    pub status: Status,
    /// Why it failed; `None` when COMPLETED.
    pub reason: Option<FailureReason>,
    /// The sender.
    pub from_user: String,
    /// The receiver.
    pub to_user: String,
    /// The amount requested (moved when COMPLETED).
    pub amount: Amount,
    /// The currency code requested.
    pub currency: String,
    /// When the outcome was decided, in milliseconds since the Unix epoch.
    pub processed_at_ms: u64,
    /// The sender's balance right after a COMPLETED transfer.
    pub from_balance_after: Option<Amount>,
    /// The receiver's balance right after a COMPLETED transfer.
    pub to_balance_after: Option<Amount>,
    /// The sender's wallet version right after a COMPLETED transfer: the number of its debit
    /// entry in the wallet's history (see [`crate::engine::retention`]). `None` in records
    /// written before versions were recorded.
    pub from_version_after: Option<u64>,
    /// The receiver's wallet version right after a COMPLETED transfer (its credit entry's
    /// number).
    pub to_version_after: Option<u64>,
    /// True when a *different* message with the same idempotency key was answered before and
    /// nothing was done now. A redelivery of the message that produced the outcome (same
    /// [`Origin`]) is answered as the original, with `duplicate` false.
    pub duplicate: bool,
    /// The message that produced the outcome, when it came through Kafka.
    pub origin: Option<Origin>,
    /// Fingerprint of the request that produced the record.
    pub request_hash: String,
    /// What this call cost (not stored).
    pub stats: TransferStats,
}

/// Cost of one `transfer` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransferStats {
    /// What taking the Redis locks cost.
    pub lock: LockStats,
    /// Time queued behind other threads of this process for the same wallets, microseconds.
    pub local_wait_us: u64,
    /// Transactions aborted by a changed watched key and retried.
    pub watch_retries: u32,
    /// Redis round trips, lock round trips included.
    pub round_trips: u32,
    /// Wall time of the call, in microseconds.
    pub elapsed_us: u64,
}

/// Where a request came from: the Kafka message (topic, partition, offset) that carried it.
///
/// Recorded with the outcome, so that a redelivery of the same message (after a crash, a revoke
/// or a failed result delivery) is told apart from a different message that reuses the
/// idempotency key: the first is answered as the original, the second as a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The topic the request was consumed from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

impl Origin {
    /// `topic:partition:offset` (Kafka topic names cannot contain `:`).
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }

    /// Parses what [`Origin::encode`] wrote.
    pub fn parse(text: &str) -> Option<Origin> {
        let mut parts = text.rsplitn(3, ':');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next().filter(|t| !t.is_empty())?;
        Some(Origin {
            topic: topic.to_string(),
            partition,
            offset,
        })
    }
}

impl TransferOutcome {
    /// The result message for this outcome. A PENDING outcome is never answered (the
    /// transfer finishes it first); debug builds assert it.
    pub fn to_message(&self) -> TransferCompleted {
        debug_assert_ne!(
            self.status,
            Status::Pending,
            "a PENDING outcome is never answered"
        );
        TransferCompleted {
            transfer_id: self.transfer_id.clone(),
            status: self.status,
            processed_at: self.processed_at_ms as f64 / 1000.0,
            from_user: self.from_user.clone(),
            to_user: self.to_user.clone(),
            amount: self.amount.to_string(),
            currency: self.currency.clone(),
            idempotency_key: self.idempotency_key.clone(),
            reason: self.reason,
            duplicate: self.duplicate,
        }
    }
}

/// Why [`crate::WalletService::transfer`] gave no outcome. Business failures are not errors: they are
/// FAILED outcomes. An error is either transient, or needs an operator; ask
/// [`TransferError::is_transient`], which is the one retry rule:
///
/// ```no_run
/// # use wallet_transfer::{TransferRequest, WalletService, TransferOutcome, TransferError};
/// # fn run(service: &WalletService, request: &TransferRequest) -> Result<TransferOutcome, TransferError> {
/// let mut attempt = 0;
/// loop {
///     match service.transfer(request) {
///         Err(e) if e.is_transient() && attempt < 10 => {
///             // Same request, same idempotency key: it cannot happen twice.
///             attempt += 1;
///             std::thread::sleep(std::time::Duration::from_millis(100 << attempt.min(5)));
///         }
///         other => return other,
///     }
/// }
/// # }
/// ```
///
/// `#[non_exhaustive]`: new kinds of error may come in a minor release; they will answer
/// `is_transient` correctly, so a caller that decides by it needs no change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The locks stayed taken through every retry. Transient: try again later.
    #[error(transparent)]
    LockTimeout(LockError),
    /// A wallet's lock is held with no ttl (it never expires by itself); known from an earlier
    /// attempt, so this one failed fast. Transient: retried until an operator deletes the lock.
    #[error(
        "{0} is held with no ttl and never expires; retrying later (delete it once its holder is known to be gone: wallet locks)"
    )]
    LockStuck(String),
    /// Our lock expired and was taken by another holder before we wrote. Transient.
    #[error("lost the lock on {0} before writing (the lock ttl is too short for this load?)")]
    LockLost(String),
    /// EXEC kept failing because watched keys kept changing. Transient.
    #[error("gave up after {0} transactions aborted by concurrent changes")]
    WatchConflicts(u32),
    /// The idempotency key was used before for a different request. Not recorded, not retried.
    #[error(
        "idempotency key {key:?} was already used for a different request (recorded fingerprint {recorded}, this one {this})"
    )]
    IdempotencyConflict {
        /// The idempotency key.
        key: String,
        /// Fingerprint of the request recorded under it.
        recorded: String,
        /// Fingerprint of this request.
        this: String,
        /// The outcome recorded for the first request, untouched.
        original: Box<TransferOutcome>,
    },
    /// Stored data that cannot be read. Needs an operator; retrying will not help.
    #[error("corrupt record {key}: {detail}")]
    Corrupt {
        /// The Redis key that does not read.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Redis failed (down, paused past the I/O timeout, out of memory, ...). Transient; nothing
    /// was written, or the whole transaction was (a retry is then answered from the record).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection became free in time, or none could be opened. Transient.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A Redis Cluster's map or a node's pool could not be had (mid-failover, a node down).
    /// Transient when [`ClusterError::is_transient`] says so.
    #[error("redis cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// Fewer replicas than [`crate::EngineConfig::wait_replicas`] acknowledged a write in
    /// time. The write is on the primary: retry the request (it is answered from its record,
    /// or a PENDING one is finished), and check the replicas (`INFO replication`). Transient.
    #[error(
        "only {acked} of {wanted} replicas acknowledged the write within {timeout_ms} ms (it is on the primary; retry the request, and check the replicas' links: INFO replication)"
    )]
    ReplicasBehind {
        /// Replicas that acknowledged.
        acked: u32,
        /// Replicas asked for.
        wanted: u32,
        /// How long the WAIT blocked.
        timeout_ms: u64,
    },
    /// The call needs what this mode of the service does not have (say, a lookup by
    /// idempotency key alone on a Redis Cluster, where the record lives in the sender's
    /// slot). Not transient: the error names the call to use instead.
    #[error("{0}")]
    WrongMode(&'static str),
}

impl TransferError {
    /// True for errors that may go away by themselves: retry the same request later. Never
    /// publish a FAILED result for these.
    pub fn is_transient(&self) -> bool {
        match self {
            TransferError::LockTimeout(_)
            | TransferError::LockStuck(_)
            | TransferError::LockLost(_)
            | TransferError::WatchConflicts(_)
            | TransferError::Redis(_)
            | TransferError::Pool(_)
            | TransferError::ReplicasBehind { .. } => true,
            TransferError::Cluster(e) => e.is_transient(),
            TransferError::IdempotencyConflict { .. }
            | TransferError::Corrupt { .. }
            | TransferError::WrongMode(_) => false,
        }
    }
}

impl TransferError {
    /// A short stable snake_case name of the kind of error, for metrics labels and counts.
    pub fn kind(&self) -> &'static str {
        match self {
            TransferError::LockTimeout(_) => "lock_timeout",
            TransferError::LockStuck(_) => "lock_stuck",
            TransferError::LockLost(_) => "lock_lost",
            TransferError::WatchConflicts(_) => "watch_conflicts",
            TransferError::IdempotencyConflict { .. } => "idempotency_conflict",
            TransferError::Corrupt { .. } => "corrupt",
            TransferError::Redis(_) => "redis",
            TransferError::Pool(_) => "redis_pool",
            TransferError::Cluster(_) => "redis_cluster",
            TransferError::WrongMode(_) => "wrong_mode",
            TransferError::ReplicasBehind { .. } => "replicas_behind",
        }
    }
}

impl TransferError {
    /// The keys a lock timeout found held with no ttl; `None` for any other error (the
    /// `no_ttl_of` of [`StuckLocks::acquire`](crate::engine::lock::StuckLocks::acquire)).
    pub(crate) fn no_ttl_locks(&self) -> Option<&[String]> {
        match self {
            TransferError::LockTimeout(LockError::Timeout { no_ttl, .. }) => Some(no_ttl),
            _ => None,
        }
    }
}

impl From<NotTaken<TransferError>> for TransferError {
    fn from(not_taken: NotTaken<TransferError>) -> Self {
        match not_taken {
            NotTaken::Stuck(key) => TransferError::LockStuck(key),
            NotTaken::Failed(e) => e,
        }
    }
}

impl From<WalletError> for TransferError {
    fn from(e: WalletError) -> Self {
        match e {
            WalletError::Redis(e) => TransferError::Redis(e),
            WalletError::Pool(e) => TransferError::Pool(e),
            WalletError::Cluster(e) => TransferError::Cluster(e),
            WalletError::Corrupt { key, detail } => TransferError::Corrupt { key, detail },
            other => TransferError::Corrupt {
                key: String::new(),
                detail: other.to_string(),
            },
        }
    }
}

/// The business decision for a request against the wallets as read: the new balances, or why
/// the transfer fails. Pure, so it is tested without Redis.
pub fn decide(
    request: &TransferRequest,
    from: Option<&Wallet>,
    to: Option<&Wallet>,
) -> Result<(Amount, Amount), FailureReason> {
    if request.from_user == request.to_user {
        return Err(FailureReason::SameUser);
    }
    let (Some(from), Some(to)) = (from, to) else {
        return Err(FailureReason::WalletNotFound);
    };
    if from.status != WalletStatus::Active || to.status != WalletStatus::Active {
        return Err(FailureReason::WalletInactive);
    }
    if from.currency != request.currency || to.currency != request.currency {
        return Err(FailureReason::CurrencyMismatch);
    }
    if from.balance < request.amount {
        return Err(FailureReason::InsufficientFunds);
    }
    let from_after = from
        .balance
        .checked_sub(request.amount)
        .map_err(|_| FailureReason::InsufficientFunds)?;
    let to_after = to
        .balance
        .checked_add(request.amount)
        .ok()
        .filter(|after| *after <= BALANCE_LIMIT)
        .ok_or(FailureReason::BalanceLimit)?;
    debug_assert!(!from_after.is_negative());
    Ok((from_after, to_after))
}

/// [`TransferError::ReplicasBehind`] when a WAIT saw fewer than `wanted` replicas acknowledge
/// (`acked`) within the timeout. Pure.
pub(crate) fn acked_enough(acked: u32, wanted: u32) -> Result<(), TransferError> {
    match acked < wanted {
        true => Err(TransferError::ReplicasBehind {
            acked,
            wanted,
            timeout_ms: crate::engine::service::WAIT_REPLICAS_TIMEOUT_MS,
        }),
        false => Ok(()),
    }
}

/// The answer to a request whose outcome `original` was recorded before (COMPLETED or
/// FAILED, never PENDING): the original answer for a redelivery of the message that
/// produced it, the same answer marked duplicate for any other message, or a conflict when
/// the key was used for a different request (`fingerprint` is this request's). A record
/// without a fingerprint (written before fingerprints were recorded) cannot conflict.
pub(crate) fn answer_from_record(
    original: TransferOutcome,
    fingerprint: &str,
    origin: Option<&Origin>,
    stats: TransferStats,
) -> Result<TransferOutcome, TransferError> {
    debug_assert_ne!(original.status, Status::Pending, "finished before answered");
    if !original.request_hash.is_empty() && original.request_hash != fingerprint {
        return Err(TransferError::IdempotencyConflict {
            key: original.idempotency_key.clone(),
            recorded: original.request_hash.clone(),
            this: fingerprint.to_string(),
            original: Box::new(original),
        });
    }
    let redelivery = origin.is_some() && original.origin.as_ref() == origin;
    Ok(TransferOutcome {
        duplicate: !redelivery,
        stats,
        ..original
    })
}

pub(crate) fn new_outcome(
    request: &TransferRequest,
    decision: &Result<(Amount, Amount), FailureReason>,
    versions: (u64, u64),
    fingerprint: &str,
    origin: Option<&Origin>,
) -> TransferOutcome {
    let (status, reason, from_after, to_after) = match decision {
        Ok((f, t)) => (Status::Completed, None, Some(*f), Some(*t)),
        Err(reason) => (Status::Failed, Some(*reason), None, None),
    };
    let completed = decision.is_ok();
    TransferOutcome {
        transfer_id: request.transfer_id.clone(),
        idempotency_key: request.idempotency_key.clone(),
        status,
        reason,
        from_user: request.from_user.clone(),
        to_user: request.to_user.clone(),
        amount: request.amount,
        currency: request.currency.as_str().to_string(),
        processed_at_ms: now_ms(),
        from_balance_after: from_after,
        to_balance_after: to_after,
        from_version_after: completed.then_some(versions.0 + 1),
        to_version_after: completed.then_some(versions.1 + 1),
        duplicate: false,
        origin: origin.cloned(),
        request_hash: fingerprint.to_string(),
        stats: TransferStats::default(),
    }
}

/// The `transfer:{key}` hash fields for an outcome, in the compact format (ARCHITECTURE.md,
/// "Redis data model"): short names, amounts and times as integers (listpack stores them in a
/// few bytes), empty fields left out. What the record can recompute is not stored: the
/// idempotency key (the key's name), the transfer id when it is the idempotency key, and the
/// request fingerprint (from `f`, `t`, `a`, `c`).
pub(crate) fn outcome_fields(o: &TransferOutcome) -> Vec<(&'static str, String)> {
    let mut fields = Vec::with_capacity(11);
    if o.transfer_id != o.idempotency_key {
        fields.push(("id", o.transfer_id.clone()));
    }
    fields.push(("s", o.status.as_str().to_string()));
    if let Some(reason) = o.reason {
        fields.push(("r", reason.as_str().to_string()));
    }
    fields.extend([
        ("f", o.from_user.clone()),
        ("t", o.to_user.clone()),
        ("a", o.amount.minor().to_string()),
        ("c", o.currency.clone()),
        ("p", o.processed_at_ms.to_string()),
    ]);
    for (name, after) in [("fb", o.from_balance_after), ("tb", o.to_balance_after)] {
        if let Some(after) = after {
            fields.push((name, after.minor().to_string()));
        }
    }
    for (name, version) in [("fv", o.from_version_after), ("tv", o.to_version_after)] {
        if let Some(version) = version {
            fields.push((name, version.to_string()));
        }
    }
    // The fingerprint is not stored when it is the one of the recorded fields (always, for an
    // outcome the transfer made); `parse_outcome` recomputes it.
    if o.request_hash != fingerprint(&o.from_user, &o.to_user, o.amount, &o.currency) {
        fields.push(("h", o.request_hash.clone()));
    }
    if let Some(origin) = &o.origin {
        fields.push(("g", origin.encode()));
    }
    fields
}

/// The field names of one format of the outcome record.
struct OutcomeNames {
    transfer_id: &'static str,
    status: &'static str,
    reason: &'static str,
    from_user: &'static str,
    to_user: &'static str,
    amount: &'static str,
    currency: &'static str,
    processed_at: &'static str,
    from_balance_after: &'static str,
    to_balance_after: &'static str,
    request_hash: &'static str,
    origin: &'static str,
}

/// The compact format: amounts in cents, `processed_at` in milliseconds.
const COMPACT: OutcomeNames = OutcomeNames {
    transfer_id: "id",
    status: "s",
    reason: "r",
    from_user: "f",
    to_user: "t",
    amount: "a",
    currency: "c",
    processed_at: "p",
    from_balance_after: "fb",
    to_balance_after: "tb",
    request_hash: "h",
    origin: "g",
};

/// The original (long) format: amounts as decimal text, `processed_at` in seconds.
const LONG: OutcomeNames = OutcomeNames {
    transfer_id: "transfer_id",
    status: "status",
    reason: "reason",
    from_user: "from_user",
    to_user: "to_user",
    amount: "amount",
    currency: "currency",
    processed_at: "processed_at",
    from_balance_after: "from_balance_after",
    to_balance_after: "to_balance_after",
    request_hash: "request_hash",
    origin: "origin",
};

/// An amount of an outcome record: cents in the compact format, decimal text in the long one.
fn outcome_amount(compact: bool, text: &str) -> Result<Amount, String> {
    if compact {
        text.parse::<i64>()
            .map(Amount::from_minor)
            .map_err(|e| e.to_string())
    } else {
        Amount::parse(text).map_err(|e| e.to_string())
    }
}

/// `processed_at` of an outcome record, in ms: ms in the compact format, seconds with three
/// decimals in the long one.
fn outcome_time_ms(compact: bool, text: &str) -> Result<u64, String> {
    if compact {
        text.parse::<u64>().map_err(|e| e.to_string())
    } else {
        text.parse::<f64>()
            .map(|s| (s * 1000.0).round() as u64)
            .map_err(|e| e.to_string())
    }
}

/// An optional wallet version of an outcome record (`fv`, `tv`). Pure.
fn outcome_version(f: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    f.get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| format!("{name} {v:?} is not a whole number"))
        })
        .transpose()
}

/// The idempotency key in an outcome record's key: `transfer:KEY` (one Redis) or
/// `transfer:{SENDER}:KEY` (a cluster; keys cannot hold braces, so a brace is a tag). Pure.
fn idempotency_key_of(record_key: &str) -> &str {
    let rest = crate::engine::keyspace::KeySpace::Standalone.outcome_id(record_key);
    match rest
        .strip_prefix('{')
        .and_then(|tagged| tagged.split_once("}:"))
    {
        Some((_sender, key)) => key,
        None => rest,
    }
}

/// Parses a `transfer:{key}` hash as written by the transfer, in either format: the compact
/// one (field `s`) or the original long one (field `status`, also the Python system's).
pub fn parse_outcome(
    key: &str,
    f: &HashMap<String, String>,
) -> Result<TransferOutcome, TransferError> {
    let compact = f.contains_key(COMPACT.status);
    let n = if compact { &COMPACT } else { &LONG };
    let corrupt = |detail: String| TransferError::Corrupt {
        key: key.to_string(),
        detail,
    };
    let field = |name: &str| {
        f.get(name)
            .cloned()
            .ok_or_else(|| corrupt(format!("missing field {name}")))
    };
    let amount = |name: &str, text: &str| {
        outcome_amount(compact, text).map_err(|e| corrupt(format!("{name}: {e}")))
    };
    let opt_amount = |name: &str| match f.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => amount(name, text).map(Some),
    };
    let status_text = field(n.status)?;
    let status =
        Status::parse(&status_text).ok_or_else(|| corrupt(format!("status {status_text:?}")))?;
    let reason = match f.get(n.reason).map(String::as_str) {
        None | Some("") => None,
        Some(r) => Some(FailureReason::parse(r).ok_or_else(|| corrupt(format!("reason {r:?}")))?),
    };
    let processed_at_ms = outcome_time_ms(compact, &field(n.processed_at)?)
        .map_err(|e| corrupt(format!("processed_at: {e}")))?;
    let (from_user, to_user) = (field(n.from_user)?, field(n.to_user)?);
    let amount = amount(n.amount, &field(n.amount)?)?;
    let currency = field(n.currency)?;
    let request_hash = match f.get(n.request_hash) {
        Some(hash) => hash.clone(),
        None if compact => fingerprint(&from_user, &to_user, amount, &currency),
        None => String::new(),
    };
    let idempotency_key = match f.get("idempotency_key") {
        Some(k) if !compact => k.clone(),
        _ => idempotency_key_of(key).to_string(),
    };
    Ok(TransferOutcome {
        transfer_id: match f.get(n.transfer_id) {
            Some(id) => id.clone(),
            None if compact => idempotency_key.clone(),
            None => field(n.transfer_id)?,
        },
        idempotency_key,
        status,
        reason,
        from_user,
        to_user,
        amount,
        currency,
        processed_at_ms,
        from_balance_after: opt_amount(n.from_balance_after)?,
        to_balance_after: opt_amount(n.to_balance_after)?,
        from_version_after: outcome_version(f, "fv").map_err(corrupt)?,
        to_version_after: outcome_version(f, "tv").map_err(corrupt)?,
        duplicate: false,
        origin: f.get(n.origin).and_then(|o| Origin::parse(o)),
        request_hash,
        stats: TransferStats::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::money::Currency;

    fn wallet(id: &str, balance: &str, currency: Currency, status: WalletStatus) -> Wallet {
        Wallet {
            wallet_id: id.into(),
            user_id: id.into(),
            balance: Amount::parse(balance).unwrap(),
            opening_balance: Amount::parse(balance).unwrap(),
            currency,
            status,
            created_at: String::new(),
            version: 0,
            checkpoint: Default::default(),
        }
    }

    fn req(from: &str, to: &str, amount: &str) -> TransferRequest {
        TransferRequest::new("t1", from, to, amount, Currency::USD).unwrap()
    }

    #[test]
    fn decide_moves_the_exact_amount() {
        let a = wallet("a", "100.00", Currency::USD, WalletStatus::Active);
        let b = wallet("b", "5.55", Currency::USD, WalletStatus::Active);
        let (fa, tb) = decide(&req("a", "b", "40.01"), Some(&a), Some(&b)).unwrap();
        assert_eq!(fa.to_string(), "59.99");
        assert_eq!(tb.to_string(), "45.56");
        let (fa, _) = decide(&req("a", "b", "100"), Some(&a), Some(&b)).unwrap();
        assert_eq!(fa, Amount::ZERO);
    }

    #[test]
    fn decide_names_each_business_failure() {
        let a = wallet("a", "100.00", Currency::USD, WalletStatus::Active);
        let b = wallet("b", "0", Currency::USD, WalletStatus::Active);
        let frozen = wallet("b", "0", Currency::USD, WalletStatus::Frozen);
        let euro = wallet("b", "0", Currency::EUR, WalletStatus::Active);
        let r = req("a", "b", "100.01");
        assert_eq!(
            decide(&r, Some(&a), Some(&b)),
            Err(FailureReason::InsufficientFunds)
        );
        assert_eq!(
            decide(&req("a", "a", "1"), Some(&a), Some(&a)),
            Err(FailureReason::SameUser)
        );
        assert_eq!(
            decide(&req("a", "b", "1"), Some(&a), None),
            Err(FailureReason::WalletNotFound)
        );
        assert_eq!(
            decide(&req("a", "b", "1"), Some(&a), Some(&frozen)),
            Err(FailureReason::WalletInactive)
        );
        assert_eq!(
            decide(&req("a", "b", "1"), Some(&a), Some(&euro)),
            Err(FailureReason::CurrencyMismatch)
        );
    }

    #[test]
    fn outcome_record_round_trips() {
        let r = req("a", "b", "12.30");
        let o = new_outcome(
            &r,
            &Ok((Amount::from_minor(1), Amount::from_minor(2))),
            (6, 0),
            "abc",
            None,
        );
        assert_eq!(
            (o.from_version_after, o.to_version_after),
            (Some(7), Some(1))
        );
        let fields: HashMap<String, String> = outcome_fields(&o)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let back = parse_outcome("transfer:t1", &fields).unwrap();
        assert_eq!(back, o);
        let failed = new_outcome(
            &r,
            &Err(FailureReason::InsufficientFunds),
            (0, 0),
            "abc",
            None,
        );
        let fields: HashMap<String, String> = outcome_fields(&failed)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(parse_outcome("transfer:t1", &fields).unwrap(), failed);
    }

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_long_and_the_compact_outcome_formats_read_the_same() {
        let long = hash(&[
            ("transfer_id", "tx_1"),
            ("idempotency_key", "req_1"),
            ("status", "COMPLETED"),
            ("reason", ""),
            ("from_user", "a"),
            ("to_user", "b"),
            ("amount", "12.30"),
            ("currency", "USD"),
            ("processed_at", "1764170000.123"),
            ("from_balance_after", "87.70"),
            ("to_balance_after", "12.30"),
            ("request_hash", "5afc84f9b2d512c3"),
            ("origin", "wallet.transfer.requested:5:42"),
        ]);
        let compact = hash(&[
            ("id", "tx_1"),
            ("s", "COMPLETED"),
            ("f", "a"),
            ("t", "b"),
            ("a", "1230"),
            ("c", "USD"),
            ("p", "1764170000123"),
            ("fb", "8770"),
            ("tb", "1230"),
            ("h", "5afc84f9b2d512c3"),
            ("g", "wallet.transfer.requested:5:42"),
        ]);
        let old = parse_outcome("transfer:req_1", &long).unwrap();
        let new = parse_outcome("transfer:req_1", &compact).unwrap();
        assert_eq!(old, new);
        assert_eq!(new.transfer_id, "tx_1");
        assert_eq!(new.idempotency_key, "req_1");
        assert_eq!(new.amount, Amount::from_minor(1230));
        assert_eq!(new.from_balance_after, Some(Amount::from_minor(8770)));
        assert_eq!(new.processed_at_ms, 1_764_170_000_123);
        assert_eq!(new.origin.as_ref().map(|o| o.offset), Some(42));
        // What the transfer writes is the compact format, and it reads back whole.
        let written: HashMap<String, String> = outcome_fields(&new)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(written, compact);
        // A FAILED one: the reason in `r`, no balances, the transfer id from the key.
        let failed = hash(&[
            ("s", "FAILED"),
            ("r", "insufficient_funds"),
            ("f", "a"),
            ("t", "b"),
            ("a", "1230"),
            ("c", "USD"),
            ("p", "1764170000123"),
        ]);
        let failed = parse_outcome("transfer:tx_2", &failed).unwrap();
        assert_eq!(failed.transfer_id, "tx_2");
        assert_eq!(failed.reason, Some(FailureReason::InsufficientFunds));
        assert_eq!(failed.from_balance_after, None);
        assert!(parse_outcome("transfer:x", &hash(&[("s", "COMPLETED")])).is_err());
    }

    #[test]
    fn the_request_s_own_fingerprint_is_not_stored_and_is_recomputed() {
        let r = req("a", "b", "12.30");
        let o = new_outcome(
            &r,
            &Err(FailureReason::SameUser),
            (0, 0),
            &r.fingerprint(),
            None,
        );
        let fields: HashMap<String, String> = outcome_fields(&o)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert!(!fields.contains_key("h"), "{fields:?}");
        assert_eq!(parse_outcome("transfer:t1", &fields).unwrap(), o);
    }

    #[test]
    fn a_lock_timeout_recorded_by_the_original_system_still_reads() {
        let fields: HashMap<String, String> = [
            ("transfer_id", "tx_old"),
            ("status", "FAILED"),
            ("reason", "lock_timeout"),
            ("from_user", "a"),
            ("to_user", "b"),
            ("amount", "10.00"),
            ("currency", "USD"),
            ("processed_at", "1764170000.123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let old = parse_outcome("transfer:tx_old", &fields).unwrap();
        assert_eq!(old.status, Status::Failed);
        assert_eq!(old.reason, Some(FailureReason::LegacyLockTimeout));
        assert_eq!(
            old.to_message().reason,
            Some(FailureReason::LegacyLockTimeout)
        );
    }

    #[test]
    fn the_idempotency_key_is_read_from_either_record_name() {
        assert_eq!(idempotency_key_of("transfer:req_1"), "req_1");
        assert_eq!(idempotency_key_of("transfer:{user_1}:req:1"), "req:1");
        let r = req("a", "b", "1.00");
        let mut o = new_outcome(
            &r,
            &Ok((Amount::ZERO, Amount::from_minor(100))),
            (0, 0),
            &r.fingerprint(),
            None,
        );
        o.status = Status::Pending;
        let fields: HashMap<String, String> = outcome_fields(&o)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(fields["s"], "PENDING");
        let back = parse_outcome("transfer:{a}:t1", &fields).unwrap();
        assert_eq!(back, o, "a PENDING record reads back, in the sender's slot");
    }

    #[test]
    fn an_origin_round_trips_through_its_text() {
        let o = Origin {
            topic: "wallet.transfer.requested".into(),
            partition: 5,
            offset: 1_234_567,
        };
        assert_eq!(o.encode(), "wallet.transfer.requested:5:1234567");
        assert_eq!(Origin::parse(&o.encode()), Some(o));
        for bad in ["", "t:1", ":1:2", "t:x:2", "t:1:y"] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_credit_past_the_balance_limit_has_its_own_reason() {
        let a = wallet("a", "100.00", Currency::USD, WalletStatus::Active);
        let mut full = wallet("b", "0", Currency::USD, WalletStatus::Active);
        full.balance = BALANCE_LIMIT;
        assert_eq!(
            decide(&req("a", "b", "0.01"), Some(&a), Some(&full)),
            Err(FailureReason::BalanceLimit)
        );
        full.balance = BALANCE_LIMIT.checked_sub(Amount::from_minor(1)).unwrap();
        assert!(decide(&req("a", "b", "0.01"), Some(&a), Some(&full)).is_ok());
    }

    #[test]
    fn a_result_message_carries_the_processing_time_in_seconds() {
        let r = req("a", "b", "1.00");
        let mut o = new_outcome(&r, &Err(FailureReason::SameUser), (0, 0), "f", None);
        o.processed_at_ms = 1_764_170_000_123;
        let m = o.to_message();
        assert!(
            (m.processed_at - 1_764_170_000.123).abs() < 1e-6,
            "{}",
            m.processed_at
        );
        assert_eq!(m.reason, Some(FailureReason::SameUser));
    }

    #[test]
    fn every_error_kind_has_its_own_stable_name() {
        let lock_timeout = TransferError::LockTimeout(LockError::Timeout {
            keys: vec![],
            stats: LockStats::default(),
            no_ttl: vec![],
        });
        let kinds = [
            (lock_timeout, "lock_timeout"),
            (TransferError::LockStuck("lock:a".into()), "lock_stuck"),
            (TransferError::LockLost("lock:a".into()), "lock_lost"),
            (TransferError::WatchConflicts(3), "watch_conflicts"),
            (
                TransferError::Corrupt {
                    key: "k".into(),
                    detail: "d".into(),
                },
                "corrupt",
            ),
        ];
        for (e, name) in &kinds {
            assert_eq!(e.kind(), *name);
        }
    }

    #[test]
    fn an_error_is_transient_when_the_same_request_may_get_past_it_later() {
        let lock_timeout = TransferError::LockTimeout(LockError::Timeout {
            keys: vec![],
            stats: LockStats::default(),
            no_ttl: vec![],
        });
        let io = redis::RedisError::from((redis::ErrorKind::Io, "connection reset"));
        let transient = [
            lock_timeout,
            TransferError::LockStuck("lock:a".into()),
            TransferError::LockLost("lock:a".into()),
            TransferError::WatchConflicts(3),
            TransferError::Redis(io),
            TransferError::ReplicasBehind {
                acked: 0,
                wanted: 1,
                timeout_ms: 100,
            },
            TransferError::Cluster(ClusterError::SlotUncovered(7)),
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e} should be retried");
        }
        let original = TransferOutcome {
            status: Status::Completed,
            ..new_outcome(
                &req("a", "b", "1.00"),
                &Ok((Amount::ZERO, Amount::ZERO)),
                (1, 1),
                "f",
                None,
            )
        };
        let permanent = [
            TransferError::IdempotencyConflict {
                key: "k".into(),
                recorded: "f1".into(),
                this: "f2".into(),
                original: Box::new(original),
            },
            TransferError::Corrupt {
                key: "k".into(),
                detail: "d".into(),
            },
            TransferError::WrongMode("one Redis only"),
            TransferError::Cluster(ClusterError::NoSeeds),
        ];
        for e in &permanent {
            assert!(!e.is_transient(), "{e} must not be retried");
        }
    }

    #[test]
    fn a_wait_fails_only_when_fewer_replicas_than_wanted_acknowledged() {
        assert!(acked_enough(1, 1).is_ok());
        assert!(acked_enough(2, 1).is_ok(), "more than asked is enough");
        assert!(acked_enough(0, 0).is_ok());
        match acked_enough(0, 1) {
            Err(TransferError::ReplicasBehind { acked, wanted, .. }) => {
                assert_eq!((acked, wanted), (0, 1));
            }
            other => panic!("expected ReplicasBehind, got {other:?}"),
        }
        assert!(acked_enough(1, 2).is_err());
    }

    #[test]
    fn a_recorded_answer_is_the_original_for_its_own_message_a_duplicate_for_another_and_a_conflict_for_another_request()
     {
        let origin = |offset| Origin {
            topic: "requests".into(),
            partition: 0,
            offset,
        };
        let r = req("a", "b", "1.00");
        let decision = Ok((Amount::ZERO, Amount::ZERO));
        let recorded = new_outcome(&r, &decision, (1, 1), "f1", Some(&origin(7)));
        let answer = |fingerprint: &str, from: Option<&Origin>| {
            answer_from_record(
                recorded.clone(),
                fingerprint,
                from,
                TransferStats::default(),
            )
        };
        assert!(
            !answer("f1", Some(&origin(7))).unwrap().duplicate,
            "its redelivery"
        );
        // The answer carries this call's costs, not the first call's.
        let this_call = TransferStats {
            round_trips: 9,
            ..TransferStats::default()
        };
        let replay = answer_from_record(recorded.clone(), "f1", None, this_call).unwrap();
        assert_eq!(replay.stats.round_trips, 9);
        assert!(
            answer("f1", Some(&origin(8))).unwrap().duplicate,
            "another message"
        );
        assert!(
            answer("f1", None).unwrap().duplicate,
            "a call without a message"
        );
        match answer("f2", Some(&origin(7))) {
            Err(TransferError::IdempotencyConflict { recorded, this, .. }) => {
                assert_eq!((recorded.as_str(), this.as_str()), ("f1", "f2"));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // A record written before fingerprints were recorded cannot conflict.
        let old = TransferOutcome {
            request_hash: String::new(),
            ..recorded.clone()
        };
        let answer = answer_from_record(old, "f2", None, TransferStats::default());
        assert!(answer.unwrap().duplicate);
    }

    #[test]
    fn a_long_record_keeps_its_own_fields_and_a_compact_one_derives_what_it_leaves_out() {
        let long = |leave_out: &str| {
            let fields = [
                ("transfer_id", "tx_1"),
                ("idempotency_key", "req_1"),
                ("status", "COMPLETED"),
                ("from_user", "a"),
                ("to_user", "b"),
                ("amount", "12.30"),
                ("currency", "USD"),
                ("processed_at", "1764170000.123"),
            ];
            let kept: Vec<(&str, &str)> = fields
                .into_iter()
                .filter(|(k, _)| *k != leave_out)
                .collect();
            hash(&kept)
        };
        // The original system's records: no fingerprint means none (it cannot conflict), the
        // key is the record's own field, and a missing transfer id is a corrupt record.
        let old = parse_outcome("transfer:req_1", &long("")).unwrap();
        assert_eq!(
            old.request_hash, "",
            "a long record without request_hash has none"
        );
        let renamed = parse_outcome("transfer:other", &long("")).unwrap();
        assert_eq!(
            renamed.idempotency_key, "req_1",
            "the field, not the record's name"
        );
        assert!(matches!(
            parse_outcome("transfer:req_1", &long("transfer_id")),
            Err(TransferError::Corrupt { .. })
        ));
        // The compact format: the key from the record's name, whatever a stray field says.
        let mut compact = hash(&[
            ("s", "COMPLETED"),
            ("f", "a"),
            ("t", "b"),
            ("a", "1230"),
            ("c", "USD"),
            ("p", "1764170000123"),
        ]);
        compact.insert("idempotency_key".into(), "stray".into());
        let new = parse_outcome("transfer:req_1", &compact).unwrap();
        assert_eq!(new.idempotency_key, "req_1");
        assert_eq!(
            new.transfer_id, "req_1",
            "no id: the transfer id is the key"
        );
        assert_eq!(
            new.request_hash,
            fingerprint("a", "b", Amount::from_minor(1230), "USD")
        );
    }
}
