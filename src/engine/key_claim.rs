//! The claim of an idempotency key on a Redis Cluster: one rule for keys on every topology
//! (issue 20; ARCHITECTURE.md, "Redis Cluster", keeps the rule among its invariants).
//!
//! The rule: **an idempotency key names one request, whoever sends it.** On one Redis the
//! outcome record is `transfer:KEY`, one per key, so a key reused by another sender (or by the
//! same sender with another receiver or amount) finds the first request's record and is
//! answered `idempotency_conflict`, moving nothing. On a cluster the outcome record must live
//! in the sender's slot (`transfer:{sender}:KEY`, written in the debit's transaction), so it
//! cannot see another sender's use of the key. The claim restores the rule there: before a
//! transfer runs, `claim:KEY` (in the key's own slot) is set to the request when nobody holds
//! it, in one round trip and one command before the locks (`SET claim:KEY "c1 transfer_id from
//! to cents currency claimed_at_ms" NX GET PX ttl`, with `WAIT` pipelined behind when
//! `wait_replicas` is set). A claim by a request with another fingerprint (sender, receiver,
//! amount, currency) makes this request an `idempotency_conflict` before any lock is taken,
//! answered with the first request's record (read in one more round trip, on the conflict
//! path only), or with the first request as PENDING when its record is not written yet; a
//! claim by the same request (a retry, a replay, another message with the same body) lets it
//! through to its record, which answers it exactly as on one Redis.
//!
//! Where the two topologies still differ, and why it moves no money: one Redis lets the first
//! request to *commit* keep the key, a cluster the first to *claim* it; a request that claimed
//! and then crashed before its record keeps the key (Kafka delivers it again and it finishes).
//! A request too old to be applied (`expiry`) claims nothing, so it cannot take a key it will
//! never use. The claim lives the outcome ttl plus [`CLAIM_TTL_MARGIN_MS`] (one hour; for ever
//! when records are kept for ever), so it outlives the record it stands for. A claim lost at a
//! failover (`wait_replicas` 0) cannot make a transfer credit twice: the credit marker is named
//! after sender and key (`cluster_transfer`). The audit reports `key_reused` for one key
//! recorded for two requests.
//!
//! Owns the claim key's value, the claim round trip and the conflict it answers. Does not own
//! the key's name (`cluster::keys::claim`), the outcome record or its answer (`outcome`; read
//! and written by `transfer` and `cluster_transfer`), or the freshness rule (`expiry`).

use std::collections::HashMap;

use crate::engine::cluster::{ClusterPools, keys};
use crate::engine::expiry::{self, Freshness};
use crate::engine::message::{Status, TransferRequest, fingerprint};
use crate::engine::money::Amount;
use crate::engine::outcome::{
    TransferError, TransferOutcome, TransferStats, acked_enough, parse_outcome,
};
use crate::engine::service::{WAIT_REPLICAS_TIMEOUT_MS, WalletService};

/// How much longer a claim lives than the outcome record it stands for: the record's ttl
/// starts when the transfer completes, a little after the claim was set, and a PENDING record
/// (no ttl) may wait for the recovery a while.
pub const CLAIM_TTL_MARGIN_MS: u64 = 3_600_000;
/// Version tag of the claim's value, its first word.
const CLAIM_FORMAT: &str = "c1";

/// The request a claim stands for, as stored in `claim:KEY`: `c1 transfer_id from to cents
/// currency claimed_at_ms`, space separated (no id, key or currency holds a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claimant {
    pub transfer_id: String,
    pub from_user: String,
    pub to_user: String,
    pub amount: Amount,
    pub currency: String,
    pub claimed_at_ms: u64,
}

impl Claimant {
    /// The claimant that `request` would write now.
    pub fn of(request: &TransferRequest, now_ms: u64) -> Claimant {
        Claimant {
            transfer_id: request.transfer_id.clone(),
            from_user: request.from_user.clone(),
            to_user: request.to_user.clone(),
            amount: request.amount,
            currency: request.currency.as_str().to_string(),
            claimed_at_ms: now_ms,
        }
    }

    /// The claim key's value. Pure.
    pub fn encode(&self) -> String {
        format!(
            "{CLAIM_FORMAT} {} {} {} {} {} {}",
            self.transfer_id,
            self.from_user,
            self.to_user,
            self.amount.minor(),
            self.currency,
            self.claimed_at_ms
        )
    }

    /// Reads a claim key's value; `None` when it is not one. Pure.
    pub fn parse(value: &str) -> Option<Claimant> {
        let parts: Vec<&str> = value.split(' ').collect();
        let [CLAIM_FORMAT, id, from, to, cents, currency, at] = parts[..] else {
            return None;
        };
        Some(Claimant {
            transfer_id: id.to_string(),
            from_user: from.to_string(),
            to_user: to.to_string(),
            amount: Amount::from_minor(cents.parse().ok()?),
            currency: currency.to_string(),
            claimed_at_ms: at.parse().ok()?,
        })
    }

    /// The fingerprint of the claiming request: equal to a request's exactly when both ask
    /// for the same move. Pure.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.from_user, &self.to_user, self.amount, &self.currency)
    }

    /// The first request as an outcome that is not recorded yet (PENDING), for a conflict
    /// found before the first request wrote its record.
    fn unrecorded_outcome(&self, key: &str) -> TransferOutcome {
        TransferOutcome {
            transfer_id: self.transfer_id.clone(),
            idempotency_key: key.to_string(),
            status: Status::Pending,
            reason: None,
            from_user: self.from_user.clone(),
            to_user: self.to_user.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
            processed_at_ms: self.claimed_at_ms,
            from_balance_after: None,
            to_balance_after: None,
            from_version_after: None,
            to_version_after: None,
            duplicate: false,
            origin: None,
            request_hash: self.fingerprint(),
            stats: TransferStats::default(),
        }
    }
}

/// The claim's ttl for an outcome ttl; `None` (no ttl) when records are kept for ever. Pure.
pub fn claim_ttl_ms(outcome_ttl_ms: Option<u64>) -> Option<u64> {
    outcome_ttl_ms.map(|ttl| ttl.saturating_add(CLAIM_TTL_MARGIN_MS))
}

/// Claims `request`'s idempotency key (module doc): `Ok` when the key is this request's (now
/// or from before) or the request is too old to claim anything, an
/// [`TransferError::IdempotencyConflict`] when another request holds it. One round trip to
/// the key's shard; a redirect or a WAIT that fell short is a transient error.
pub(crate) fn claim(
    svc: &WalletService,
    pools: &ClusterPools,
    request: &TransferRequest,
) -> Result<(), TransferError> {
    let ttl_ms = svc.config.outcome_ttl_ms;
    let now_ms = expiry::now_ms();
    if expiry::freshness(request.requested_at_ms, now_ms, ttl_ms) != Freshness::Fresh {
        return Ok(());
    }
    let key = keys::claim(&request.idempotency_key);
    let mut conn = pools.conn_for_key(&key)?;
    let mut pipe = redis::pipe();
    let set = pipe
        .cmd("SET")
        .arg(&key)
        .arg(Claimant::of(request, now_ms).encode())
        .arg("NX")
        .arg("GET");
    if let Some(ttl) = claim_ttl_ms(ttl_ms) {
        set.arg("PX").arg(ttl);
    }
    let wanted = svc.config.wait_replicas;
    if let Some(n) = wanted {
        pipe.cmd("WAIT").arg(n).arg(WAIT_REPLICAS_TIMEOUT_MS);
    }
    let (held, acked): (Option<String>, Option<u32>) = match wanted {
        Some(_) => pipe.query(&mut conn.redis),
        None => pipe
            .query::<(Option<String>,)>(&mut conn.redis)
            .map(|(held,)| (held, None)),
    }
    .inspect_err(|_| conn.taint())?;
    if let (Some(n), Some(acked)) = (wanted, acked) {
        acked_enough(acked, n)?;
    }
    let Some(held) = held else {
        return Ok(());
    };
    let claimant = Claimant::parse(&held).ok_or_else(|| TransferError::Corrupt {
        key: key.clone(),
        detail: format!("not a claim: {held:?}"),
    })?;
    if claimant.fingerprint() == request.fingerprint() {
        return Ok(());
    }
    Err(conflict(pools, request, &claimant))
}

/// The conflict of `request` with the key's `claimant`: with the claimant's recorded outcome
/// when it has one (another round trip, on the conflict path only), else with the claimant as
/// a PENDING outcome (its record is not written yet). A record that cannot be read is that
/// error (transient, or `Corrupt`), not a guess.
fn conflict(pools: &ClusterPools, request: &TransferRequest, claimant: &Claimant) -> TransferError {
    let key = &request.idempotency_key;
    let record_key = keys::outcome(&claimant.from_user, key);
    let read = || -> Result<TransferOutcome, TransferError> {
        let mut conn = pools.conn_for_key(&record_key)?;
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&record_key)
            .query(&mut conn.redis)
            .inspect_err(|_| conn.taint())?;
        match fields.is_empty() {
            true => Ok(claimant.unrecorded_outcome(key)),
            false => parse_outcome(&record_key, &fields),
        }
    };
    match read() {
        Ok(original) => TransferError::IdempotencyConflict {
            key: key.clone(),
            recorded: claimant.fingerprint(),
            this: request.fingerprint(),
            original: Box::new(original),
        },
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::money::Currency;
    use proptest::prelude::*;

    #[test]
    fn a_claim_round_trips_through_its_value() {
        let request = TransferRequest::new("tx_1", "u1", "u2", "10.25", Currency::EUR).unwrap();
        let claimant = Claimant::of(&request, 1_700_000_000_000);
        assert_eq!(
            claimant.encode(),
            "c1 tx_1 u1 u2 1025 EUR 1700000000000",
            "the documented format"
        );
        assert_eq!(Claimant::parse(&claimant.encode()), Some(claimant.clone()));
        assert_eq!(claimant.fingerprint(), request.fingerprint());
        for bad in [
            "",
            "c1 tx_1 u1 u2 10.25 EUR 1",
            "c0 tx_1 u1 u2 1025 EUR 1",
            "c1 a b",
        ] {
            assert_eq!(Claimant::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn another_sender_receiver_or_amount_is_another_fingerprint() {
        let first = TransferRequest::new("k", "u1", "u2", "10", Currency::USD).unwrap();
        let claimant = Claimant::of(&first, 0);
        let same = TransferRequest::new("other_id", "u1", "u2", "10.00", Currency::USD).unwrap();
        assert_eq!(claimant.fingerprint(), same.fingerprint());
        for (from, to, amount) in [("u3", "u2", "10"), ("u1", "u3", "10"), ("u1", "u2", "11")] {
            let other = TransferRequest::new("k", from, to, amount, Currency::USD).unwrap();
            assert_ne!(
                claimant.fingerprint(),
                other.fingerprint(),
                "{from} {to} {amount}"
            );
        }
    }

    #[test]
    fn a_claim_outlives_its_record_and_is_kept_for_ever_with_it() {
        assert_eq!(claim_ttl_ms(None), None);
        assert_eq!(claim_ttl_ms(Some(1_000)), Some(1_000 + CLAIM_TTL_MARGIN_MS));
        assert_eq!(claim_ttl_ms(Some(u64::MAX)), Some(u64::MAX));
    }

    proptest! {
        #[test]
        fn any_valid_request_round_trips_through_its_claim(
            id in "[A-Za-z0-9_.:-]{1,64}",
            from in "[A-Za-z0-9_-]{1,64}",
            to in "[A-Za-z0-9_-]{1,64}",
            cents in 1i64..1_000_000_000_000,
            at in any::<u64>(),
        ) {
            let claimant = Claimant {
                transfer_id: id,
                from_user: from,
                to_user: to,
                amount: Amount::from_minor(cents),
                currency: "USD".to_string(),
                claimed_at_ms: at,
            };
            prop_assert_eq!(Claimant::parse(&claimant.encode()), Some(claimant));
        }
    }
}
