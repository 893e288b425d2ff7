//! What the audit reports: [`AuditReport`] (the counts, the horizon, the totals per currency
//! in [`CurrencyTotals`], the violations), and each [`Violation`] by its [`ViolationKind`],
//! shown as one line that names its keys.
//!
//! Owns the report's shape, its JSON (serde), the one-line form of a violation and the listing
//! limits. A leaf: pure, it imports nothing from the rest of the audit. Does not decide what
//! is a violation (`wallet`, `slots`, `transfers`, `settle`).

use std::fmt;

use serde::Serialize;

use crate::engine::money::Amount;

/// Most violations listed one by one; after that they are only counted.
pub const VIOLATIONS_LISTED_MAX: usize = 1_000;
/// Most leftover credit markers listed by key; after that they are only counted.
pub const LEFTOVER_MARKERS_LISTED_MAX: usize = 100;

/// What is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Listed in `wallets:all` (or holding history) without a `wallet:{id}` hash.
    WalletMissing,
    /// The wallet hash does not parse.
    WalletCorrupt,
    /// The history is not a stream, or an entry does not parse.
    HistoryUnreadable,
    /// A balance below zero.
    NegativeBalance,
    /// balance != opening_balance + checkpoint (`hb`) + retained history.
    BalanceMismatch,
    /// version != entries trimmed (`hc`) + retained history entries.
    VersionMismatch,
    /// A `transfer:*` record does not parse.
    OutcomeCorrupt,
    /// A COMPLETED transfer lacks its debit or credit.
    MissingEntry,
    /// A COMPLETED transfer's debit or credit appears more than once: it was applied again.
    RepeatedEntry,
    /// A debit or credit of a COMPLETED transfer in a wallet (or of a kind) it does not name.
    UnexpectedEntry,
    /// A COMPLETED transfer's debit or credit is of another amount than the outcome's.
    AmountMismatch,
    /// A COMPLETED transfer's debit or credit is not the entry number (wallet version) its
    /// outcome recorded (`fv`, `tv`).
    MisplacedEntry,
    /// Money moved into or out of a wallet of another currency.
    CurrencyMismatch,
    /// A FAILED transfer has history entries.
    FailedWithEntries,
    /// A debit or credit without an outcome record.
    EntryWithoutOutcome,
    /// A deposit id appears more than once.
    RepeatedDeposit,
    /// The total of balances != openings + deposits (trimmed `hd` + retained), in one
    /// currency.
    TotalsMismatch,
    /// One idempotency key recorded for two different requests (on a Redis Cluster, records
    /// of two senders): the key rule of `engine::key_claim` was broken.
    KeyReused,
}

impl ViolationKind {
    /// The snake_case name, as printed and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::WalletMissing => "wallet_missing",
            ViolationKind::WalletCorrupt => "wallet_corrupt",
            ViolationKind::HistoryUnreadable => "history_unreadable",
            ViolationKind::NegativeBalance => "negative_balance",
            ViolationKind::BalanceMismatch => "balance_mismatch",
            ViolationKind::VersionMismatch => "version_mismatch",
            ViolationKind::OutcomeCorrupt => "outcome_corrupt",
            ViolationKind::MissingEntry => "missing_entry",
            ViolationKind::RepeatedEntry => "repeated_entry",
            ViolationKind::UnexpectedEntry => "unexpected_entry",
            ViolationKind::AmountMismatch => "amount_mismatch",
            ViolationKind::MisplacedEntry => "misplaced_entry",
            ViolationKind::CurrencyMismatch => "currency_mismatch",
            ViolationKind::FailedWithEntries => "failed_with_entries",
            ViolationKind::EntryWithoutOutcome => "entry_without_outcome",
            ViolationKind::RepeatedDeposit => "repeated_deposit",
            ViolationKind::TotalsMismatch => "totals_mismatch",
            ViolationKind::KeyReused => "key_reused",
        }
    }
}

/// One broken invariant, naming the transfer (idempotency key, transfer id) and the wallets it
/// concerns. Shown as one line: `kind key=K transfer_id=T wallets=A,B: detail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What is broken.
    pub kind: ViolationKind,
    /// The transfer's idempotency key (a deposit's id), when the violation is about one.
    pub idempotency_key: Option<String>,
    /// The transfer's id, when the violation is about one.
    pub transfer_id: Option<String>,
    /// The wallets involved: sender first for a transfer.
    pub wallets: Vec<String>,
    /// What was found, in words.
    pub detail: String,
}

impl Violation {
    pub(super) fn wallet(kind: ViolationKind, id: &str, detail: String) -> Violation {
        Violation {
            kind,
            idempotency_key: None,
            transfer_id: None,
            wallets: vec![id.to_string()],
            detail,
        }
    }

    pub(super) fn ledger(kind: ViolationKind, detail: String) -> Violation {
        Violation {
            kind,
            idempotency_key: None,
            transfer_id: None,
            wallets: Vec::new(),
            detail,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(key) = &self.idempotency_key {
            write!(f, " key={key}")?;
        }
        if let Some(id) = &self.transfer_id
            && self.idempotency_key.as_ref() != Some(id)
        {
            write!(f, " transfer_id={id}")?;
        }
        if !self.wallets.is_empty() {
            write!(f, " wallets={}", self.wallets.join(","))?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The totals of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrencyTotals {
    /// The currency code.
    pub currency: String,
    /// The sum of the balances in it.
    #[serde(serialize_with = "as_text")]
    pub balance: Amount,
    /// The sum of the opening balances.
    #[serde(serialize_with = "as_text")]
    pub opening: Amount,
    /// The sum of the deposits: trimmed ones (`trimmed_deposits`) and retained ones.
    #[serde(serialize_with = "as_text")]
    pub deposits: Amount,
    /// The deposits trimmed from the histories: the sum of the checkpoints' `hd`.
    #[serde(serialize_with = "as_text")]
    pub trimmed_deposits: Amount,
    /// Transfer entries written during the scan after a wallet's snapshot, for transfers the
    /// snapshots show in part: balance + in_flight = opening + deposits.
    #[serde(serialize_with = "as_text")]
    pub in_flight: Amount,
}

/// What `audit` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Wallets checked.
    pub wallets_checked: u64,
    /// Outcome records (`transfer:*`) read.
    pub transfers_checked: u64,
    /// Of those, COMPLETED ones.
    pub transfers_completed: u64,
    /// History entries read over all wallets (the retained windows).
    pub history_entries: u64,
    /// The horizon, in words: what was checked entry by entry and what only through the
    /// checkpoints.
    pub horizon: String,
    /// Wallets whose history was trimmed (a checkpoint with `hc` > 0).
    pub wallets_with_checkpoint: u64,
    /// Entries trimmed over all wallets: the sum of `hc`.
    pub entries_trimmed: u64,
    /// Debits and credits of COMPLETED outcomes that lie before their wallet's window: checked
    /// only through the checkpoint (their amounts are in `hb`, their count in `hc`).
    pub entries_before_window: u64,
    /// The outcome ttl the audit was told of
    /// ([`AuditSettings::outcome_ttl_ms`](crate::tools::audit::AuditSettings::outcome_ttl_ms)).
    pub outcome_ttl_ms: Option<u64>,
    /// Debits and credits without an outcome, older than the outcome ttl: their outcome
    /// expired. Not violations.
    pub outcomes_expired: u64,
    /// Times the outcome records were scanned: 2 when a wallet's window had moved past the
    /// audit's start, so a transfer made during the scan may hide in a checkpoint.
    pub outcome_scans: u32,
    /// Sums over every currency: meaningful only when all wallets hold one currency. The
    /// invariant is checked per currency, in `currencies`.
    #[serde(serialize_with = "as_text")]
    pub total_balance: Amount,
    /// The sum of every opening balance, over every currency.
    #[serde(serialize_with = "as_text")]
    pub total_opening: Amount,
    /// The sum of every deposit, over every currency.
    #[serde(serialize_with = "as_text")]
    pub total_deposits: Amount,
    /// The totals per currency, by currency code.
    pub currencies: Vec<CurrencyTotals>,
    /// Times histories and outcomes were read again to confirm or clear a finding (0 on a
    /// quiet, sound ledger).
    pub settle_passes: u32,
    /// Findings still unconfirmed when the passes ran out (reported among the violations).
    pub unsettled: u64,
    /// PENDING outcomes read (Redis Cluster only: cross-slot transfers between their debit
    /// and their completion); their credits still to do count as in flight.
    #[serde(skip_serializing_if = "is_zero")]
    pub pending_transfers: u64,
    /// Credit markers (`credit:{receiver}:sender:key`) whose transfer is not PENDING: left by a
    /// crash after the completion, or read between a completion and its unlock. Harmless,
    /// not violations (`wallet recover` does not need them).
    #[serde(skip_serializing_if = "is_zero")]
    pub leftover_markers: u64,
    /// The first [`LEFTOVER_MARKERS_LISTED_MAX`] of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftover_marker_keys: Vec<String>,
    /// Every violation found; at most [`VIOLATIONS_LISTED_MAX`] are listed.
    pub violations_total: u64,
    /// The violations listed, each naming its keys; empty when the ledger is sound.
    pub violations: Vec<Violation>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn as_text<S: serde::Serializer>(a: &Amount, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_string())
}

impl AuditReport {
    /// True when the ledger is sound: no violation.
    pub fn is_ok(&self) -> bool {
        self.violations_total == 0
    }
}

/// A sum as an [`Amount`], clamped to its range (sums of valid balances never reach it).
pub(super) fn amount(minor: i128) -> Amount {
    Amount::from_minor(minor.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}
