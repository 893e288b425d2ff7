//! The ledger topic's messages (`wallet.ledger`, key = wallet id): one per history entry a
//! transfer made, so that Kafka keeps every entry after Redis has trimmed it
//! (`engine::retention`).
//!
//! ```text
//! {"wallet_id":"user_1","version":12,"kind":"debit","amount":"100.50","balance_after":"899.50",
//!  "currency":"USD","transfer_id":"tx_1","idempotency_key":"req_tx_1","at":1764170000123}
//! ```
//!
//! A COMPLETED transfer makes two entries: a debit on its sender (version `fv`, balance
//! `from_balance_after`) and a credit on its receiver (`tv`, `to_balance_after`); `at` is the
//! outcome's `processed_at` in ms. An entry's identity is (wallet_id, version): entry number
//! `n` of a wallet is the one that made its version `n`. Everything in it comes from the
//! recorded outcome, so every publication of the same entry is byte-identical. FAILED outcomes
//! and duplicates (another message with the same idempotency key) publish none, and neither
//! does a deposit (`wallet deposit` writes Redis only).
//!
//! Delivery is at least once, not exactly once: the worker publishes the entries of every
//! COMPLETED outcome it answers as the original (a new transfer, or a redelivery of the same
//! message answered from its record, since the first publication may have died unacknowledged
//! with a crashed worker). A redelivery after a crash therefore republishes identical copies.
//! Readers deduplicate by (wallet_id, version); two copies that differ are a bug, never a choice.
//! The request's offset is committed only once its result and both entries are acknowledged
//! (`worker::pool`). `wallet history` reads the entries Redis has trimmed from this topic.
//!
//! Owns the entry format (its schema is `asyncapi.yaml`'s `LedgerEntry`), which outcomes get
//! entries, and the parser. Does not publish (`worker::pool`), read the topic
//! (`tools::results`) or own the Redis history format (`engine::wallet`).

use serde::{Deserialize, Serialize};

use crate::engine::message::Status;
use crate::engine::money::Amount;
use crate::engine::transfer::TransferOutcome;
use crate::engine::wallet::HistoryKind;

/// Largest ledger message the parser reads: an entry is a few hundred bytes.
pub const LEDGER_ENTRY_BYTES_LIMIT: usize = 4 * 1024;

/// One entry of the ledger topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The wallet it belongs to (the message key).
    pub wallet_id: String,
    /// The wallet's version this entry made (its 1-based number since the wallet's creation).
    pub version: u64,
    /// [`HistoryKind::Debit`] or [`HistoryKind::Credit`]; deposits are not in the ledger.
    pub kind: HistoryKind,
    /// The amount moved, positive.
    pub amount: Amount,
    /// The wallet's balance right after this entry.
    pub balance_after: Amount,
    /// The currency code.
    pub currency: String,
    /// The transfer that made it.
    pub transfer_id: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// When the transfer was decided, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The wire form, field order fixed (so equal entries are equal bytes).
#[derive(Serialize, Deserialize)]
struct Wire {
    wallet_id: String,
    version: u64,
    kind: String,
    amount: String,
    balance_after: String,
    currency: String,
    transfer_id: String,
    idempotency_key: String,
    at: u64,
}

impl LedgerEntry {
    /// The message key: the wallet id.
    pub fn key(&self) -> &[u8] {
        self.wallet_id.as_bytes()
    }

    /// The message payload (JSON, fields in the documented order).
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            wallet_id: self.wallet_id.clone(),
            version: self.version,
            kind: self.kind.as_str().to_string(),
            amount: self.amount.to_string(),
            balance_after: self.balance_after.to_string(),
            currency: self.currency.clone(),
            transfer_id: self.transfer_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            at: self.at_ms,
        };
        serde_json::to_vec(&wire).expect("a ledger entry serialises")
    }

    /// Parses a ledger message; the error says which field is wrong.
    pub fn parse(payload: &[u8]) -> Result<LedgerEntry, String> {
        if payload.len() > LEDGER_ENTRY_BYTES_LIMIT {
            return Err(format!(
                "{} bytes, over the {LEDGER_ENTRY_BYTES_LIMIT} of a ledger entry",
                payload.len()
            ));
        }
        let wire: Wire = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let kind = match wire.kind.as_str() {
            "debit" => HistoryKind::Debit,
            "credit" => HistoryKind::Credit,
            other => return Err(format!("kind {other:?} is not debit or credit")),
        };
        let amount = Amount::parse(&wire.amount).map_err(|e| format!("amount: {e}"))?;
        if amount.minor() <= 0 {
            return Err(format!("amount {} is not positive", wire.amount));
        }
        let balance_after =
            Amount::parse(&wire.balance_after).map_err(|e| format!("balance_after: {e}"))?;
        for (name, value) in [
            ("wallet_id", &wire.wallet_id),
            ("currency", &wire.currency),
            ("transfer_id", &wire.transfer_id),
            ("idempotency_key", &wire.idempotency_key),
        ] {
            if value.is_empty() {
                return Err(format!("{name} is empty"));
            }
        }
        if wire.version == 0 {
            return Err("version 0: entries are numbered from 1".to_string());
        }
        Ok(LedgerEntry {
            wallet_id: wire.wallet_id,
            version: wire.version,
            kind,
            amount,
            balance_after,
            currency: wire.currency,
            transfer_id: wire.transfer_id,
            idempotency_key: wire.idempotency_key,
            at_ms: wire.at,
        })
    }
}

/// The ledger entries to publish with the answer to `outcome`: the debit and the credit of a
/// COMPLETED outcome answered as the original, nothing for a FAILED one or a duplicate (another
/// message with the same idempotency key; the original published them). An error when a
/// COMPLETED record lacks its versions or balances (written before versions were recorded):
/// its entries cannot be numbered. Pure.
pub fn entries_for(outcome: &TransferOutcome) -> Result<Vec<LedgerEntry>, String> {
    if outcome.status != Status::Completed || outcome.duplicate {
        return Ok(Vec::new());
    }
    let (Some(fv), Some(tv), Some(fb), Some(tb)) = (
        outcome.from_version_after,
        outcome.to_version_after,
        outcome.from_balance_after,
        outcome.to_balance_after,
    ) else {
        return Err(format!(
            "the record of transfer {} (idempotency key {}) has no wallet versions or balances (written before versions were recorded)",
            outcome.transfer_id, outcome.idempotency_key
        ));
    };
    let entry = |wallet: &str, version, kind, balance_after| LedgerEntry {
        wallet_id: wallet.to_string(),
        version,
        kind,
        amount: outcome.amount,
        balance_after,
        currency: outcome.currency.clone(),
        transfer_id: outcome.transfer_id.clone(),
        idempotency_key: outcome.idempotency_key.clone(),
        at_ms: outcome.processed_at_ms,
    };
    Ok(vec![
        entry(&outcome.from_user, fv, HistoryKind::Debit, fb),
        entry(&outcome.to_user, tv, HistoryKind::Credit, tb),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::message::FailureReason;

    fn completed() -> TransferOutcome {
        TransferOutcome {
            transfer_id: "tx_1".into(),
            idempotency_key: "req_tx_1".into(),
            status: Status::Completed,
            reason: None,
            from_user: "user_1".into(),
            to_user: "user_2".into(),
            amount: Amount::from_minor(10_050),
            currency: "USD".into(),
            processed_at_ms: 1_764_170_000_123,
            from_balance_after: Some(Amount::from_minor(89_950)),
            to_balance_after: Some(Amount::from_minor(20_050)),
            from_version_after: Some(12),
            to_version_after: Some(3),
            duplicate: false,
            origin: None,
            request_hash: String::new(),
            stats: Default::default(),
        }
    }

    #[test]
    fn a_completed_original_makes_a_debit_and_a_credit_in_the_documented_format() {
        let entries = entries_for(&completed()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            String::from_utf8(entries[0].to_json()).unwrap(),
            r#"{"wallet_id":"user_1","version":12,"kind":"debit","amount":"100.50","balance_after":"899.50","currency":"USD","transfer_id":"tx_1","idempotency_key":"req_tx_1","at":1764170000123}"#
        );
        assert_eq!(entries[0].key(), b"user_1");
        let credit = &entries[1];
        assert_eq!(
            (credit.wallet_id.as_str(), credit.version, credit.kind),
            ("user_2", 3, HistoryKind::Credit)
        );
        assert_eq!(credit.balance_after, Amount::from_minor(20_050));
        for e in &entries {
            assert_eq!(&LedgerEntry::parse(&e.to_json()).unwrap(), e, "round trip");
        }
    }

    #[test]
    fn failures_and_duplicates_make_no_entries_and_a_record_without_versions_is_an_error() {
        let failed = TransferOutcome {
            status: Status::Failed,
            reason: Some(FailureReason::InsufficientFunds),
            from_balance_after: None,
            to_balance_after: None,
            from_version_after: None,
            to_version_after: None,
            ..completed()
        };
        assert_eq!(entries_for(&failed), Ok(Vec::new()));
        let duplicate = TransferOutcome {
            duplicate: true,
            ..completed()
        };
        assert_eq!(entries_for(&duplicate), Ok(Vec::new()));
        let old = TransferOutcome {
            from_version_after: None,
            ..completed()
        };
        assert!(
            entries_for(&old)
                .unwrap_err()
                .contains("no wallet versions")
        );
    }

    #[test]
    fn the_parser_names_what_is_wrong() {
        let good = String::from_utf8(entries_for(&completed()).unwrap()[0].to_json()).unwrap();
        let cases = [
            (good.replace("\"debit\"", "\"deposit\""), "kind"),
            (good.replace("\"100.50\"", "\"0.00\""), "not positive"),
            (good.replace("\"899.50\"", "\"8.999\""), "balance_after"),
            (good.replace("\"version\":12", "\"version\":0"), "version 0"),
            (good.replace("\"USD\"", "\"\""), "currency is empty"),
            (good.replace("\"at\":", "\"when\":"), "missing field `at`"),
        ];
        for (text, want) in cases {
            let e = LedgerEntry::parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let big = vec![b' '; LEDGER_ENTRY_BYTES_LIMIT + 1];
        assert!(LedgerEntry::parse(&big).unwrap_err().contains("over the"));
        // The limit itself is allowed: that many bytes are read (here, as JSON, which fails).
        let at_limit = vec![b' '; LEDGER_ENTRY_BYTES_LIMIT];
        let e = LedgerEntry::parse(&at_limit).unwrap_err();
        assert!(!e.contains("over the"), "{e}");
    }
}
