//! What the audit is handed: the caller's [`AuditSettings`], the full scan's parts
//! ([`Snapshot`]: wallets as [`WalletRead`]s, outcome records as [`Fields`]), what to read
//! again ([`Plan`], bounded by the re-read limits) and what that read ([`Reread`]), and the
//! credit markers of a cluster ([`CreditMarker`]).
//!
//! Owns the shapes of the reads `ops::audit` hands over. A leaf: no I/O, nothing from the rest
//! of the audit. Does not read Redis (`ops`) or interpret what was read (`wallet`,
//! `auditor`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// Most wallet histories read again in one pass (the rest wait for the next pass).
pub const REREAD_WALLETS_LIMIT: usize = 500;
/// Most outcome records read again in one pass (the rest wait for the next pass).
pub const REREAD_OUTCOMES_LIMIT: usize = 2_000;

/// How the audit judges what the engine may have let go: the caller's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditSettings {
    /// The `outcome_ttl_ms` the engine writes outcome records with. A debit or credit older
    /// than this (by its stream id, against the audit's start) whose outcome is gone counts
    /// as "outcome expired", not as a violation. `None` (the default): every entry needs its
    /// outcome.
    pub outcome_ttl_ms: Option<u64>,
}

/// A hash as HGETALL returns it.
pub type Fields = HashMap<String, String>;

/// A history as read: (entry id, fields) per entry, the older stream's then the log's
/// ([`crate::engine::wallet::combine_history`]).
pub type RawHistory = crate::engine::wallet::RawHistory;

/// One wallet as read: its `wallet:{id}` hash and its history (`wallet:{id}:history`, the
/// older stream, then `wallet:{id}:log`), each or why it could not be read (a key of the
/// wrong type).
#[derive(Debug, Clone)]
pub struct WalletRead {
    /// HGETALL of `wallet:{id}` (empty when there is none).
    pub hash: Result<Fields, String>,
    /// XRANGE of `wallet:{id}:history` then LRANGE of `wallet:{id}:log`, as one history.
    pub history: Result<RawHistory, String>,
}

/// Part of the full scan, fed in the order it was read: each wallet whole at one moment (its
/// own snapshot), outcome records in batches.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The wallets come from `wallets:all` (so a missing one is a violation).
    pub listed: bool,
    /// (wallet id, what was read of it).
    pub wallets: Vec<(String, WalletRead)>,
    /// (idempotency key, HGETALL of `transfer:{key}`; empty when there is none).
    pub outcomes: Vec<(String, Fields)>,
}

/// What to read again, in one atomic read, to confirm or clear findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Wallet histories from just after their snapshot's last entry id (`None`: from the
    /// start).
    pub histories: BTreeMap<String, Option<String>>,
    /// Wallets the scan did not read (created during it): hash and whole history.
    pub wallets: BTreeSet<String>,
    /// Outcome records, by idempotency key.
    pub outcomes: BTreeSet<String>,
}

impl Plan {
    /// True when there is nothing to read again.
    pub fn is_empty(&self) -> bool {
        self.histories.is_empty() && self.wallets.is_empty() && self.outcomes.is_empty()
    }

    /// At most [`REREAD_WALLETS_LIMIT`] wallets and [`REREAD_OUTCOMES_LIMIT`] outcomes.
    pub(super) fn bounded(mut self) -> Plan {
        while self.histories.len() + self.wallets.len() > REREAD_WALLETS_LIMIT {
            if self.wallets.pop_last().is_none() {
                self.histories.pop_last();
            }
        }
        while self.outcomes.len() > REREAD_OUTCOMES_LIMIT {
            self.outcomes.pop_last();
        }
        self
    }
}

/// What a [`Plan`] read, all at one moment.
#[derive(Debug, Clone, Default)]
pub struct Reread {
    /// Per wallet planned in [`Plan::histories`]: its hash (for the checkpoint and version
    /// now) and the history entries after the snapshot's last one, each or why it could not
    /// be read.
    pub histories: Vec<(String, WalletRead)>,
    /// The wallets the scan did not read, whole.
    pub wallets: Vec<(String, WalletRead)>,
    /// (idempotency key, HGETALL of `transfer:{key}`).
    pub outcomes: Vec<(String, Fields)>,
}

/// A credit marker as read from a cluster (`credit:{receiver}:sender:key`, see
/// `engine::cluster::keys::credit_marker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditMarker {
    /// The wallet credited.
    pub receiver: String,
    /// The sender of the transfer the credit belongs to.
    pub sender: String,
    /// The transfer's idempotency key.
    pub idempotency_key: String,
    /// The marker's value: the run token, the receiver's balance and version after.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_at_most_the_re_read_limits_per_pass() {
        let mut plan = Plan::default();
        for i in 0..REREAD_WALLETS_LIMIT {
            plan.histories.insert(format!("h{i:04}"), None);
            plan.wallets.insert(format!("w{i:04}"));
        }
        plan.outcomes = (0..REREAD_OUTCOMES_LIMIT + 5)
            .map(|i| format!("k{i:05}"))
            .collect();
        let plan = plan.bounded();
        assert_eq!(plan.histories.len(), REREAD_WALLETS_LIMIT);
        assert!(plan.wallets.is_empty());
        assert_eq!(plan.outcomes.len(), REREAD_OUTCOMES_LIMIT);
    }
}
