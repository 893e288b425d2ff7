//! The ledger audit's checks: what [`crate::tools::ops::audit`] read, turned into violations.
//!
//! Owns the ledger invariants and how they are checked, without I/O. A wallet's history may be
//! trimmed (`crate::engine::retention`): Redis keeps its last entries (the *window*) and the
//! wallet's checkpoint (`hc` entries trimmed, `hb` their signed sum, `hd` their deposits).
//! Moves before the window are checked only through the checkpoint, and the report says so
//! (its horizon):
//!
//! - per wallet: it parses; no negative balance; balance = opening_balance + `hb` + signed sum
//!   of the window; version = `hc` + entries in the window;
//! - per transfer (history entries counted per idempotency key, kind and wallet, never kept in
//!   a map that overwrites): every COMPLETED outcome has exactly one debit on its sender and
//!   one credit on its receiver, of its amount, in wallets of its currency; an entry whose
//!   number (the version the outcome recorded, `fv`/`tv`) is at most the wallet's `hc` was
//!   trimmed and is counted before the window; one after it is in the window once, at that
//!   number (`misplaced_entry` otherwise). An outcome without versions (older records) may
//!   lack an entry only when the wallet was trimmed and the outcome is older than the window's
//!   first entry. A FAILED outcome has no entries; no transfer entry exists without an outcome
//!   (unless [`AuditSettings::outcome_ttl_ms`] says the outcome expired: then it is counted).
//!   Entries written before the idempotency key was recorded match the outcome by its
//!   transfer_id instead;
//! - per deposit: its id appears once in the windows;
//! - per currency: the total of balances = openings + deposits (the checkpoints' `hd` and the
//!   windows' deposits). This is what catches a balance and its `hb` edited together.
//!
//! Owns, too, how a live ledger is judged ([`Auditor::settle`]). The full scan reads every
//! outcome record, then each wallet whole (hash and history at one moment), so the wallets are
//! read at different moments while transfers run. Those snapshots are the *cut*: each wallet
//! is checked and summed as read, and the transfers checked are those with an entry in a
//! snapshot (in its window or its checkpoint) or an outcome in the scan. A transfer that
//! finished during the scan can look half done; such a finding (a missing entry, an entry
//! without an outcome) counts only once the part that could be late was read after the part
//! that proves it: a history after the outcome that names it, an outcome after the entries
//! that need it (an outcome and its entries are written in one transaction, and versions only
//! grow). Until then the audit asks for that part again ([`Plan`]): the wallet's hash and its
//! history after the snapshot's last entry, or the outcome record; later entries count only
//! for transfers of the cut, and the totals take them as money in flight (from the outcome
//! when the entry was trimmed before the re-read). A transfer whose entries all came after
//! their wallets' snapshots is not in the cut. When a snapshot's window starts after the
//! audit began, a transfer made during the scan may sit in its checkpoint unseen: the caller
//! then scans the outcomes again ([`Auditor::needs_outcome_rescan`]). Bounded by
//! [`SETTLE_PASSES_LIMIT`] and the re-read limits.
//!
//! On a Redis Cluster ([`Auditor::across_shards`]) outcome records are keyed `{sender}:key`,
//! a PENDING outcome (a cross-slot transfer between debit and completion) needs its debit once
//! and its credit at most once, its credit still to do counts as in flight, and credit
//! markers whose transfer is not PENDING are reported as leftovers, not violations.
//!
//! Does not read Redis: `ops::audit` does the reads and hands them over as a [`Snapshot`] (the
//! full scan) or a [`Reread`] (one MULTI/EXEC per pass). Does not change data. Does not check
//! the trimmed entries themselves (they are gone from Redis; the ledger topic keeps them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::engine::message::{Status, fingerprint};
use crate::engine::money::Amount;
use crate::engine::store::keys;
use crate::engine::transfer::{TransferOutcome, parse_outcome};
use crate::engine::wallet::{HistoryKind, Wallet, parse_wallet};

/// How far behind Redis's clock an entry's time may be: a log line carries the time of the
/// worker that wrote it (a stream entry carried Redis's), so the check whether a window starts
/// after the scan's start leans that far towards a rescan (which only costs a read).
pub const ENTRY_CLOCK_ALLOWANCE_MS: u64 = 60_000;
/// Most violations listed one by one; after that they are only counted.
pub const VIOLATIONS_LISTED_MAX: usize = 1_000;
/// Most leftover credit markers listed by key; after that they are only counted.
pub const LEFTOVER_MARKERS_LISTED_MAX: usize = 100;
/// Most re-read passes after the full scan; what is still unconfirmed after them is reported.
pub const SETTLE_PASSES_LIMIT: u32 = 8;
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
    fn bounded(mut self) -> Plan {
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
    fn wallet(kind: ViolationKind, id: &str, detail: String) -> Violation {
        Violation {
            kind,
            idempotency_key: None,
            transfer_id: None,
            wallets: vec![id.to_string()],
            detail,
        }
    }

    fn ledger(kind: ViolationKind, detail: String) -> Violation {
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
    /// The outcome ttl the audit was told of ([`AuditSettings::outcome_ttl_ms`]).
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

/// How a history entry names what moved the money.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Mover {
    /// Its idempotency key (a deposit's id).
    Key(String),
    /// Its transfer id: an entry written before the idempotency key was recorded.
    Legacy(String),
}

/// One readable history entry.
#[derive(Debug, Clone)]
struct Entry {
    stream_id: String,
    mover: Mover,
    transfer_id: String,
    kind: HistoryKind,
    amount: Amount,
    /// Its number in the wallet (the version it made), when known.
    number: Option<u64>,
}

/// One wallet: its snapshot from the full scan (checked on its own and summed), and the
/// entries read after it.
#[derive(Debug, Default)]
struct WalletView {
    /// Read by the full scan; false for a wallet first read by a re-read.
    scanned: bool,
    /// When the snapshot was read (0: never).
    epoch: u64,
    /// `None` when the hash is missing or corrupt.
    wallet: Option<Wallet>,
    /// The snapshot's (checkpoint entries `hc`, version) when its hash and history were both
    /// read: entries `hc + 1 ..= version` are its window.
    window: Option<(u64, u64)>,
    /// The stream id time (ms) of the snapshot's first retained entry.
    first_ms: Option<u64>,
    entries: Vec<Entry>,
    /// Entries in the snapshot's stream, readable or not.
    stream_len: u64,
    /// The snapshot's last stream id.
    last_id: Option<String>,
    /// The history could not be read: it is not read again.
    broken: bool,
    problems: Vec<Violation>,
    /// Entries after the snapshot, from the latest re-read, and when that was (0: never).
    late: Vec<Entry>,
    late_epoch: u64,
    /// Entries trimmed (`hc`) as the latest re-read found them.
    late_trimmed: Option<u64>,
}

impl WalletView {
    /// When the history was last read.
    fn history_epoch(&self) -> u64 {
        self.epoch.max(self.late_epoch)
    }
}

#[derive(Debug)]
enum OutcomeState {
    Absent,
    Corrupt(String),
    Read(Box<TransferOutcome>),
}

#[derive(Debug)]
struct OutcomeView {
    /// When it was last read.
    epoch: u64,
    /// When it was first read as it is: it existed then.
    first_epoch: u64,
    state: OutcomeState,
}

/// Sums of one currency, in minor units (wide enough never to overflow).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    balance: i128,
    opening: i128,
    deposits: i128,
    trimmed_deposits: i128,
    in_flight: i128,
}

/// What one check of everything read found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Every violation found, confirmed or not.
    pub violations: Vec<Violation>,
    /// What to read again to confirm or clear the findings not yet confirmed.
    pub plan: Plan,
    /// Violations among `violations` that are not confirmed.
    pub unconfirmed: u64,
    /// Debits and credits of COMPLETED outcomes found before their wallet's window.
    pub before_window: u64,
    /// Debits and credits without an outcome, older than the outcome ttl.
    pub expired: u64,
    totals: BTreeMap<&'static str, Sums>,
}

/// A debit or credit, the wallet whose history holds it, and when it was read.
#[derive(Debug, Clone, Copy)]
struct Seen<'a> {
    wallet: &'a str,
    entry: &'a Entry,
    epoch: u64,
}

/// Outcomes that claim one group of entries: (idempotency key, outcome).
type Claimants<'a> = Vec<(&'a str, &'a TransferOutcome)>;

/// The transfers checked: entries by what moved them, the outcomes claiming each group, the
/// entries among them read after their wallet's snapshot, the money of those made after the
/// snapshot and trimmed before the re-read (wallet, signed amount), and the groups claimed
/// only by transfers made after every snapshot they touch (not in the cut).
struct Cut<'a> {
    groups: BTreeMap<Mover, Vec<Seen<'a>>>,
    claims: BTreeMap<Mover, Claimants<'a>>,
    late: Vec<Seen<'a>>,
    trimmed_late: Vec<(&'a str, Amount)>,
    after: BTreeSet<Mover>,
}

/// Where a COMPLETED outcome's debit or credit stands against what was read of its wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Trimmed before the snapshot (number <= `hc`): in the checkpoint, not in the window.
    BeforeWindow,
    /// An outcome without versions, older than the window of a trimmed wallet: trimmed if
    /// missing.
    MaybeBeforeWindow,
    /// Made after the snapshot and trimmed before the re-read: money in flight, no entry.
    TrimmedSince,
    /// In the window, or made after the snapshot; its number when the outcome recorded it.
    Window(Option<u64>),
}

/// The audit's state: every wallet and outcome record as read. Fed with [`Auditor::ingest`]
/// (the full scan) and [`Auditor::ingest_reread`], checked with [`Auditor::check`], finished
/// with [`Auditor::settle`]. Does no I/O.
#[derive(Debug, Default)]
pub struct Auditor {
    wallets: BTreeMap<String, WalletView>,
    outcomes: BTreeMap<String, OutcomeView>,
    /// Counts reads, in the order they happened.
    epoch: u64,
    settings: AuditSettings,
    /// When the scan started (Redis time, ms); `None`: unknown.
    started_ms: Option<u64>,
    /// A Redis Cluster: outcomes are keyed `{sender}:key`, a re-read reads the outcomes
    /// before the histories (two moments, not one), and credit markers are known.
    across_shards: bool,
    /// Credit markers of cross-slot transfers: (receiver, sender, idempotency key) -> value.
    markers: BTreeMap<(String, String, String), String>,
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

impl Auditor {
    /// An auditor for a scan that started at `started_ms` (Redis time, ms): entries older
    /// than that were written before the outcome scan began.
    pub fn new(settings: AuditSettings, started_ms: u64) -> Auditor {
        Auditor {
            settings,
            started_ms: Some(started_ms),
            ..Auditor::default()
        }
    }

    /// An auditor for a Redis Cluster (see [`Auditor::new`]): outcome records are fed keyed
    /// `{sender}:key` (their name without `transfer:`), a [`Reread`] is taken as its outcomes
    /// read first and its histories after them (each shard reads at its own moment), and
    /// PENDING outcomes of cross-slot transfers are expected: their debit once, their credit
    /// at most once, the credit still to do counted as money in flight. The caller scans the
    /// outcomes again after the wallets (every entry's outcome exists before the entry, so
    /// the second scan finds it).
    pub fn across_shards(settings: AuditSettings, started_ms: u64) -> Auditor {
        Auditor {
            across_shards: true,
            ..Auditor::new(settings, started_ms)
        }
    }

    /// Takes in the credit markers read (`credit:{receiver}:sender:key` -> value), for the report:
    /// a marker whose transfer is not PENDING is a leftover (a crash after the completion,
    /// or a transfer between its completion and its unlock), not a violation.
    pub fn ingest_markers(&mut self, markers: Vec<CreditMarker>) {
        for m in markers {
            let transfer = (m.receiver, m.sender, m.idempotency_key);
            self.markers.insert(transfer, m.value);
        }
    }

    /// Whether a wallet's window (as its snapshot shows it) starts at or after the scan's
    /// start: then entries trimmed from it may be of transfers made during the scan, whose
    /// outcomes the outcome scan may have missed. The caller then scans the outcomes again
    /// ([`Auditor::ingest`]), so every transfer with money in a snapshot has its outcome read.
    pub fn needs_outcome_rescan(&self) -> bool {
        self.wallets.values().any(|v| match v.window {
            Some((trimmed, _)) if trimmed > 0 => match (v.first_ms, self.started_ms) {
                (Some(first), Some(start)) => {
                    first.saturating_add(ENTRY_CLOCK_ALLOWANCE_MS) >= start
                }
                _ => true,
            },
            _ => false,
        })
    }

    /// Takes in the next part of the full scan, read after every part before it.
    pub fn ingest(&mut self, snapshot: Snapshot) {
        self.epoch += 1;
        for (id, read) in snapshot.wallets {
            let view = wallet_view(&id, read, snapshot.listed, self.epoch);
            self.wallets.insert(id, view);
        }
        self.ingest_outcomes(snapshot.outcomes);
    }

    /// Takes in what a [`Plan`] read, at one moment after everything before.
    pub fn ingest_reread(&mut self, mut reread: Reread) {
        if self.across_shards {
            // The outcomes were read before the histories: an earlier moment.
            self.epoch += 1;
            self.ingest_outcomes(std::mem::take(&mut reread.outcomes));
        }
        self.epoch += 1;
        for (id, read) in reread.histories {
            let Some(view) = self.wallets.get_mut(&id) else {
                continue;
            };
            let (now, late) = parse_late(&id, read);
            view.late = late;
            view.late_trimmed = now.map(|w| w.checkpoint.entries);
            view.late_epoch = self.epoch;
        }
        for (id, read) in reread.wallets {
            if self.wallets.get(&id).is_some_and(|v| v.scanned) {
                continue;
            }
            let (wallet, late) = parse_late(&id, read);
            let view = WalletView {
                late_trimmed: wallet.as_ref().map(|w| w.checkpoint.entries),
                wallet,
                late,
                late_epoch: self.epoch,
                ..WalletView::default()
            };
            self.wallets.insert(id, view);
        }
        self.ingest_outcomes(reread.outcomes);
    }

    fn ingest_outcomes(&mut self, outcomes: Vec<(String, Fields)>) {
        for (key, fields) in outcomes {
            let state = if fields.is_empty() {
                OutcomeState::Absent
            } else {
                match parse_outcome(&keys::outcome(&key), &fields) {
                    Ok(o) => OutcomeState::Read(Box::new(o)),
                    Err(e) => OutcomeState::Corrupt(e.to_string()),
                }
            };
            let epoch = self.epoch;
            match self.outcomes.get_mut(&key) {
                // A record once read stays as read: it existed then (a later read may find
                // it expired, or the same).
                Some(old) if matches!(old.state, OutcomeState::Read(_)) => old.epoch = epoch,
                _ => {
                    let first_epoch = epoch;
                    let view = OutcomeView {
                        epoch,
                        first_epoch,
                        state,
                    };
                    self.outcomes.insert(key, view);
                }
            }
        }
    }

    /// Checks everything read so far.
    pub fn check(&self) -> Findings {
        let cut = self.cut();
        let mut out = Findings {
            totals: self.totals(&cut),
            ..Findings::default()
        };
        self.pending_in_flight(&cut, &mut out.totals);
        for view in self.wallets.values() {
            out.violations.extend(view.problems.iter().cloned());
        }
        for (key, view) in &self.outcomes {
            if let OutcomeState::Corrupt(e) = &view.state {
                out.violations.push(Violation {
                    idempotency_key: Some(key.clone()),
                    ..Violation::ledger(ViolationKind::OutcomeCorrupt, e.clone())
                });
            }
        }
        out.violations.extend(totals_violations(&out.totals));
        out.violations.extend(self.deposit_violations());
        out.violations.extend(self.key_reuse_violations());
        self.check_transfers(&cut, &mut out);
        out
    }

    /// Checks, then reads again what [`Findings::plan`] asks for (with `reread`, one atomic
    /// read per pass) until no finding waits for a read or [`SETTLE_PASSES_LIMIT`] passes are
    /// done. The report lists what the last check found.
    pub fn settle<E>(
        mut self,
        mut reread: impl FnMut(&Plan) -> Result<Reread, E>,
    ) -> Result<AuditReport, E> {
        let mut findings = self.check();
        let mut passes = 0;
        while !findings.plan.is_empty() && passes < SETTLE_PASSES_LIMIT {
            let plan = std::mem::take(&mut findings.plan).bounded();
            self.ingest_reread(reread(&plan)?);
            passes += 1;
            findings = self.check();
        }
        Ok(self.report(findings, passes))
    }

    /// The report of `findings`, with at most [`VIOLATIONS_LISTED_MAX`] violations listed.
    pub fn report(&self, findings: Findings, settle_passes: u32) -> AuditReport {
        let totals = &findings.totals;
        let currencies: Vec<CurrencyTotals> = totals
            .iter()
            .map(|(currency, s)| CurrencyTotals {
                currency: currency.to_string(),
                balance: amount(s.balance),
                opening: amount(s.opening),
                deposits: amount(s.deposits),
                trimmed_deposits: amount(s.trimmed_deposits),
                in_flight: amount(s.in_flight),
            })
            .collect();
        let sum = |f: fn(&Sums) -> i128| amount(totals.values().map(f).sum());
        let outcomes = self.outcomes.values().filter_map(|o| match &o.state {
            OutcomeState::Absent => None,
            OutcomeState::Corrupt(_) => Some(false),
            OutcomeState::Read(o) => Some(o.status == Status::Completed),
        });
        let (checked, completed) =
            outcomes.fold((0, 0), |(n, c), done| (n + 1, c + u64::from(done)));
        let scanned = || self.wallets.values().filter(|v| v.scanned);
        let trimmed = || scanned().filter_map(|v| v.window).map(|(hc, _)| hc);
        let (with_checkpoint, entries_trimmed) =
            (trimmed().filter(|n| *n > 0).count() as u64, trimmed().sum());
        let mut violations = findings.violations;
        let violations_total = violations.len() as u64;
        violations.truncate(VIOLATIONS_LISTED_MAX);
        let (mut leftover_marker_keys, pending_transfers) = self.leftover_markers();
        let leftover_markers = leftover_marker_keys.len() as u64;
        leftover_marker_keys.truncate(LEFTOVER_MARKERS_LISTED_MAX);
        AuditReport {
            pending_transfers,
            leftover_markers,
            leftover_marker_keys,
            wallets_checked: scanned().count() as u64,
            transfers_checked: checked,
            transfers_completed: completed,
            history_entries: scanned().map(|v| v.stream_len).sum(),
            horizon: horizon(with_checkpoint, entries_trimmed, findings.before_window),
            wallets_with_checkpoint: with_checkpoint,
            entries_trimmed,
            entries_before_window: findings.before_window,
            outcome_ttl_ms: self.settings.outcome_ttl_ms,
            outcomes_expired: findings.expired,
            outcome_scans: 1,
            total_balance: sum(|s| s.balance),
            total_opening: sum(|s| s.opening),
            total_deposits: sum(|s| s.deposits),
            currencies,
            settle_passes,
            unsettled: findings.unconfirmed,
            violations_total,
            violations,
        }
    }

    /// Per currency: balances, openings and deposits (the checkpoints' `hd` and the retained
    /// ones) of the snapshots that parse, and as money in flight the cut's entries made after
    /// their wallet's snapshot (read late, or trimmed since).
    fn totals(&self, cut: &Cut<'_>) -> BTreeMap<&'static str, Sums> {
        let mut out: BTreeMap<&'static str, Sums> = BTreeMap::new();
        for view in self.wallets.values().filter(|v| v.scanned) {
            let Some(w) = &view.wallet else { continue };
            let sums = out.entry(w.currency.as_str()).or_default();
            sums.balance += i128::from(w.balance.minor());
            sums.opening += i128::from(w.opening_balance.minor());
            let trimmed = i128::from(w.checkpoint.deposits.minor());
            sums.trimmed_deposits += trimmed;
            sums.deposits += trimmed
                + view
                    .entries
                    .iter()
                    .filter(|e| e.kind == HistoryKind::Deposit)
                    .map(|e| i128::from(e.amount.minor()))
                    .sum::<i128>();
        }
        let late = cut
            .late
            .iter()
            .map(|s| (s.wallet, s.entry.kind.signed(s.entry.amount)));
        for (wallet, signed) in late.chain(cut.trimmed_late.iter().copied()) {
            let Some(w) = self.wallets.get(wallet).and_then(|v| v.wallet.as_ref()) else {
                continue;
            };
            out.entry(w.currency.as_str()).or_default().in_flight += i128::from(signed.minor());
        }
        out
    }

    /// The credits PENDING outcomes of the cut still have to do, as money in flight (in the
    /// sender's currency): a PENDING whose receiver shows no credit for it (in its snapshot or
    /// read after it) has its amount between the two wallets.
    fn pending_in_flight(&self, cut: &Cut<'_>, totals: &mut BTreeMap<&'static str, Sums>) {
        for (mover, claimants) in &cut.claims {
            if cut.after.contains(mover) {
                continue;
            }
            for (_, o) in claimants
                .iter()
                .filter(|(_, o)| o.status == Status::Pending)
            {
                let seen = cut.groups.get(mover).map_or(&[][..], Vec::as_slice);
                let credited = seen
                    .iter()
                    .any(|s| s.entry.kind == HistoryKind::Credit && s.wallet == o.to_user);
                let sender = self
                    .wallets
                    .get(&o.from_user)
                    .and_then(|v| v.wallet.as_ref());
                if let (false, Some(w)) = (credited, sender) {
                    let sums = totals.entry(w.currency.as_str()).or_default();
                    sums.in_flight += i128::from(o.amount.minor());
                }
            }
        }
    }

    /// Markers whose transfer is not PENDING (`credit:{receiver}:sender:key`), sorted; and the
    /// number of PENDING outcomes read.
    fn leftover_markers(&self) -> (Vec<String>, u64) {
        let pending: BTreeSet<(&str, &str, &str)> = self
            .outcomes
            .values()
            .filter_map(|v| match &v.state {
                OutcomeState::Read(o) if o.status == Status::Pending => Some((
                    o.to_user.as_str(),
                    o.from_user.as_str(),
                    o.idempotency_key.as_str(),
                )),
                _ => None,
            })
            .collect();
        let leftovers = self
            .markers
            .keys()
            .filter(|(r, s, k)| !pending.contains(&(r.as_str(), s.as_str(), k.as_str())))
            .map(|(r, s, k)| crate::engine::cluster::keys::credit_marker(r, s, k))
            .collect();
        (leftovers, pending.len() as u64)
    }

    /// A deposit id that appears more than once in the snapshots.
    /// Idempotency keys recorded for more than one request (different fingerprints): one Redis
    /// cannot hold two (one `transfer:KEY`), a cluster can (`transfer:{sender}:KEY`) when its
    /// claim failed.
    fn key_reuse_violations(&self) -> Vec<Violation> {
        let mut by_key: BTreeMap<&str, Vec<&TransferOutcome>> = BTreeMap::new();
        for view in self.outcomes.values() {
            if let OutcomeState::Read(o) = &view.state {
                by_key.entry(&o.idempotency_key).or_default().push(o);
            }
        }
        by_key
            .into_iter()
            .filter(|(_, records)| {
                let hashes: BTreeSet<String> = records
                    .iter()
                    .map(|o| fingerprint(&o.from_user, &o.to_user, o.amount, &o.currency))
                    .collect();
                hashes.len() > 1
            })
            .map(|(key, records)| Violation {
                kind: ViolationKind::KeyReused,
                idempotency_key: Some(key.to_string()),
                transfer_id: Some(records[0].transfer_id.clone()),
                wallets: unique(records.iter().map(|o| o.from_user.as_str())),
                detail: format!(
                    "{} requests recorded under one key: {}",
                    records.len(),
                    records
                        .iter()
                        .map(|o| format!(
                            "{} {} -> {} {}",
                            o.transfer_id, o.from_user, o.to_user, o.amount
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect()
    }

    fn deposit_violations(&self) -> Vec<Violation> {
        let mut seen: BTreeMap<&Mover, Vec<Seen<'_>>> = BTreeMap::new();
        for (id, view) in &self.wallets {
            for entry in view
                .entries
                .iter()
                .filter(|e| e.kind == HistoryKind::Deposit)
            {
                let (wallet, epoch) = (id.as_str(), view.epoch);
                seen.entry(&entry.mover).or_default().push(Seen {
                    wallet,
                    entry,
                    epoch,
                });
            }
        }
        seen.into_iter()
            .filter(|(_, s)| s.len() > 1)
            .map(|(mover, s)| Violation {
                kind: ViolationKind::RepeatedDeposit,
                idempotency_key: Some(s[0].entry.transfer_id.clone())
                    .filter(|_| matches!(mover, Mover::Key(_))),
                transfer_id: Some(s[0].entry.transfer_id.clone()),
                wallets: unique(s.iter().map(|x| x.wallet)),
                detail: format!("deposit applied {} times: {}", s.len(), places(&s)),
            })
            .collect()
    }

    /// The transfers of the cut: the debits and credits of the snapshots, grouped by what moved
    /// them, the outcomes claiming each group, and the later entries of those groups (and of
    /// transfers whose money a snapshot holds only in its checkpoint).
    fn cut(&self) -> Cut<'_> {
        let mut groups: BTreeMap<Mover, Vec<Seen<'_>>> = BTreeMap::new();
        let transfers = |v: &'_ [Entry]| -> Vec<usize> {
            (0..v.len())
                .filter(|i| v[*i].kind != HistoryKind::Deposit)
                .collect()
        };
        for (id, view) in &self.wallets {
            for i in transfers(&view.entries) {
                let (wallet, entry, epoch) = (id.as_str(), &view.entries[i], view.epoch);
                groups.entry(entry.mover.clone()).or_default().push(Seen {
                    wallet,
                    entry,
                    epoch,
                });
            }
        }
        let claims = self.claims(&groups);
        let after = self.after_the_cut(&groups, &claims);
        let in_cut =
            |m: &Mover| groups.contains_key(m) || (claims.contains_key(m) && !after.contains(m));
        let mut late = Vec::new();
        for (id, view) in &self.wallets {
            for i in transfers(&view.late) {
                let (wallet, entry, epoch) = (id.as_str(), &view.late[i], view.late_epoch);
                if in_cut(&entry.mover) {
                    late.push(Seen {
                        wallet,
                        entry,
                        epoch,
                    });
                }
            }
        }
        let trimmed_late = self.trimmed_late(claims.iter().filter(|(m, _)| in_cut(m)));
        for s in &late {
            groups.entry(s.entry.mover.clone()).or_default().push(*s);
        }
        Cut {
            groups,
            claims,
            late,
            trimmed_late,
            after,
        }
    }

    /// The groups without entries in the snapshots whose COMPLETED outcomes were all made
    /// after the snapshots of both their wallets: not in the cut.
    fn after_the_cut(
        &self,
        groups: &BTreeMap<Mover, Vec<Seen<'_>>>,
        claims: &BTreeMap<Mover, Claimants<'_>>,
    ) -> BTreeSet<Mover> {
        let scan_end = self
            .wallets
            .values()
            .filter(|v| v.scanned)
            .map(|v| v.epoch)
            .max();
        claims
            .iter()
            .filter(|(mover, _)| !groups.contains_key(*mover))
            .filter(|(_, claimants)| {
                claimants.iter().all(|(key, o)| {
                    let first = self.outcomes.get(*key).map_or(0, |v| v.first_epoch);
                    self.after_snapshots(o, first, scan_end.unwrap_or(0))
                })
            })
            .map(|(mover, _)| mover.clone())
            .collect()
    }

    /// Whether COMPLETED `o`, first read at `first_epoch`, was made after the snapshots of
    /// both its wallets: each of its entries has a number beyond its snapshot's version, and
    /// each snapshot was read before the outcome (a snapshot read after it had to hold the
    /// entry). A wallet the scan did not read counts when the outcome was first read after
    /// the whole scan (`scan_end`).
    fn after_snapshots(&self, o: &TransferOutcome, first_epoch: u64, scan_end: u64) -> bool {
        let sides = [
            (o.from_user.as_str(), o.from_version_after),
            (o.to_user.as_str(), o.to_version_after),
        ];
        o.status == Status::Completed
            && sides.iter().all(|(wallet, number)| {
                let Some(n) = number else { return false };
                match self.wallets.get(*wallet) {
                    Some(v) if v.scanned => {
                        v.epoch < first_epoch && v.window.is_some_and(|(_, version)| *n > version)
                    }
                    _ => first_epoch > scan_end,
                }
            })
    }

    /// The money of the cut's entries made after their wallet's snapshot and trimmed before
    /// the re-read: (wallet, signed amount), from their outcome.
    fn trimmed_late<'a: 'b, 'b>(
        &'a self,
        claims: impl Iterator<Item = (&'b Mover, &'b Claimants<'a>)>,
    ) -> Vec<(&'a str, Amount)> {
        let mut out = Vec::new();
        for (_, claimants) in claims {
            for &(_, o) in claimants
                .iter()
                .filter(|(_, o)| o.status == Status::Completed)
            {
                for (wallet, number, kind) in sides(o) {
                    if self.place(wallet, number, o.processed_at_ms) == Place::TrimmedSince {
                        out.push((wallet, kind.signed(o.amount)));
                    }
                }
            }
        }
        out
    }

    /// Where `wallet`'s entry number `number` of an outcome decided at `processed_at_ms`
    /// stands against the wallet's snapshot and latest re-read.
    fn place(&self, wallet: &str, number: Option<u64>, processed_at_ms: u64) -> Place {
        let Some(view) = self.wallets.get(wallet) else {
            return Place::Window(number);
        };
        let Some(n) = number else {
            // No version recorded: older than the window when decided before its first entry.
            return match view.window {
                Some((trimmed, _))
                    if trimmed > 0 && view.first_ms.is_none_or(|first| processed_at_ms < first) =>
                {
                    Place::MaybeBeforeWindow
                }
                _ => Place::Window(None),
            };
        };
        match view.window {
            Some((trimmed, _)) if n <= trimmed => return Place::BeforeWindow,
            Some((_, version)) if n <= version => return Place::Window(Some(n)),
            _ => {}
        }
        if view.late_trimmed.is_some_and(|trimmed| n <= trimmed) {
            Place::TrimmedSince
        } else {
            Place::Window(Some(n))
        }
    }

    /// What `completed` expect of each (kind, wallet) slot, by where each entry stands.
    fn expected<'a>(
        &self,
        completed: &[(&'a str, &'a TransferOutcome)],
    ) -> BTreeMap<Slot<'a>, Expected> {
        let mut out: BTreeMap<Slot<'a>, Expected> = BTreeMap::new();
        for (_, o) in completed {
            for (wallet, number, kind) in sides(o) {
                let e = out.entry((rank(kind), wallet)).or_default();
                if o.status == Status::Pending && kind == HistoryKind::Credit {
                    e.pending.push(o.amount); // done or not: at most once
                    continue;
                }
                match self.place(wallet, number, o.processed_at_ms) {
                    Place::BeforeWindow => e.before += 1,
                    Place::MaybeBeforeWindow => e.optional.push(o.amount),
                    Place::TrimmedSince => e.since += 1,
                    Place::Window(n) => e.required.push((o.amount, n)),
                }
            }
        }
        out
    }

    /// The outcomes that claim each group: by idempotency key, or, when no entry carries the
    /// key but entries without a key carry the outcome's transfer id, by transfer id.
    fn claims<'a>(
        &'a self,
        groups: &BTreeMap<Mover, Vec<Seen<'a>>>,
    ) -> BTreeMap<Mover, Claimants<'a>> {
        let mut out: BTreeMap<Mover, Claimants<'a>> = BTreeMap::new();
        for (key, view) in &self.outcomes {
            let OutcomeState::Read(o) = &view.state else {
                continue;
            };
            let by_key = Mover::Key(mover_key(key).to_string());
            let legacy = Mover::Legacy(o.transfer_id.clone());
            let mover = if !groups.contains_key(&by_key) && groups.contains_key(&legacy) {
                legacy
            } else {
                by_key
            };
            out.entry(mover)
                .or_default()
                .push((key.as_str(), o.as_ref()));
        }
        out
    }

    /// Every group of entries against the outcomes that claim it.
    fn check_transfers(&self, cut: &Cut<'_>, out: &mut Findings) {
        let movers: BTreeSet<&Mover> = cut.groups.keys().chain(cut.claims.keys()).collect();
        let corrupt: BTreeSet<&str> = self
            .outcomes
            .iter()
            .filter(|(_, v)| matches!(v.state, OutcomeState::Corrupt(_)))
            .map(|(id, _)| mover_key(id))
            .collect();
        for mover in movers {
            if let Mover::Key(key) = mover
                && corrupt.contains(key.as_str())
            {
                continue; // reported as corrupt
            }
            if cut.after.contains(mover) {
                continue; // made after the snapshots: the next audit checks it
            }
            let seen = cut.groups.get(mover).map_or(&[][..], Vec::as_slice);
            let claimants = cut.claims.get(mover).map_or(&[][..], Vec::as_slice);
            let name = Name::of(mover, seen, claimants);
            // PENDING (cross-slot, between debit and completion) moves money too.
            let completed: Claimants<'_> = claimants
                .iter()
                .copied()
                .filter(|(_, o)| matches!(o.status, Status::Completed | Status::Pending))
                .collect();
            if completed.is_empty() {
                self.check_unclaimed(mover, seen, claimants, &name, out);
            } else {
                self.check_completed(&completed, seen, &name, out);
            }
        }
    }

    /// A group claimed by COMPLETED outcomes: its debits and credits, and their currencies. A
    /// missing entry counts once its wallet's history was read after the outcome; until then
    /// the history is planned for a re-read.
    fn check_completed(
        &self,
        completed: &[(&str, &TransferOutcome)],
        seen: &[Seen<'_>],
        name: &Name,
        out: &mut Findings,
    ) {
        let outcome_epoch = completed
            .iter()
            .filter_map(|(key, _)| self.outcomes.get(*key))
            .map(|o| o.first_epoch)
            .max()
            .unwrap_or(0);
        let expected = self.expected(completed);
        for (violation, short) in check_slots(expected, seen, name, &mut out.before_window) {
            if let Some(wallet) = short
                && !self.history_read_since(wallet, outcome_epoch)
            {
                self.plan_history(wallet, &mut out.plan);
                out.unconfirmed += 1;
            }
            out.violations.push(violation);
        }
        let currency = completed[0].1.currency.as_str();
        for s in seen {
            let Some(w) = self.wallets.get(s.wallet).and_then(|v| v.wallet.as_ref()) else {
                continue;
            };
            if w.currency.as_str() != currency {
                let detail = format!(
                    "{} of {} in {} (a {} wallet) for a {currency} transfer",
                    s.entry.kind.as_str(),
                    s.entry.amount,
                    entry_key(s.wallet, &s.entry.stream_id),
                    w.currency.as_str()
                );
                out.violations
                    .push(name.violation(ViolationKind::CurrencyMismatch, detail));
            }
        }
    }

    /// Entries that no COMPLETED outcome claims: a FAILED outcome's, or without an outcome. An
    /// entry without an outcome counts once the outcome was found missing after the entry was
    /// read; until then the outcome is planned for a re-read.
    fn check_unclaimed(
        &self,
        mover: &Mover,
        seen: &[Seen<'_>],
        claimants: &[(&str, &TransferOutcome)],
        name: &Name,
        out: &mut Findings,
    ) {
        if seen.is_empty() {
            return;
        }
        if !claimants.is_empty() {
            let detail = format!("a FAILED transfer has history entries: {}", places(seen));
            out.violations
                .push(name.violation(ViolationKind::FailedWithEntries, detail));
        } else if self.outcome_expired(seen) {
            out.expired += seen.len() as u64;
        } else {
            let outcome = match mover {
                Mover::Key(key) if self.across_shards => format!("transfer:{{SENDER}}:{key}"),
                Mover::Key(key) => keys::outcome(key),
                Mover::Legacy(id) => format!("outcome with transfer_id {id}"),
            };
            let detail = format!("no {outcome} for {}", places(seen));
            out.violations
                .push(name.violation(ViolationKind::EntryWithoutOutcome, detail));
            let entries_epoch = seen.iter().map(|s| s.epoch).max().unwrap_or(0);
            if let Mover::Key(key) = mover {
                let stale = self
                    .outcome_ids(key, seen)
                    .into_iter()
                    .filter(|id| self.outcomes.get(id).map_or(0, |o| o.epoch) < entries_epoch);
                let stale: Vec<String> = stale.collect();
                if !stale.is_empty() {
                    out.plan.outcomes.extend(stale);
                    out.unconfirmed += 1;
                }
            }
        }
        let currencies: BTreeSet<&str> = seen
            .iter()
            .filter_map(|s| self.wallets.get(s.wallet)?.wallet.as_ref())
            .map(|w| w.currency.as_str())
            .collect();
        if currencies.len() > 1 {
            let detail = format!(
                "money moved between currencies {currencies:?}: {}",
                places(seen)
            );
            out.violations
                .push(name.violation(ViolationKind::CurrencyMismatch, detail));
        }
    }

    /// The outcome records that could claim entries moved by `key`: `transfer:{key}` on one
    /// Redis; on a cluster the record of each debited wallet (`{sender}:key`). A group of
    /// credits alone names no sender: it is not read again, the caller's second outcome scan
    /// (after every wallet) read every record that existed when the credit did.
    fn outcome_ids(&self, key: &str, seen: &[Seen<'_>]) -> Vec<String> {
        if !self.across_shards {
            return vec![key.to_string()];
        }
        let debited = seen.iter().filter(|s| s.entry.kind == HistoryKind::Debit);
        unique(debited.map(|s| s.wallet))
            .into_iter()
            .map(|w| format!("{{{w}}}:{key}"))
            .collect()
    }

    /// Whether every entry of `seen` is older than the outcome ttl allows its outcome to live
    /// (by its stream id, against the scan's start).
    fn outcome_expired(&self, seen: &[Seen<'_>]) -> bool {
        let (Some(ttl), Some(start)) = (self.settings.outcome_ttl_ms, self.started_ms) else {
            return false;
        };
        let cutoff = start.saturating_sub(ttl);
        seen.iter()
            .all(|s| stream_ms(&s.entry.stream_id).is_some_and(|ms| ms < cutoff))
    }

    /// Whether `wallet`'s history was read at or after `epoch` (or cannot be read at all).
    fn history_read_since(&self, wallet: &str, epoch: u64) -> bool {
        self.wallets
            .get(wallet)
            .is_some_and(|v| v.broken || v.history_epoch() >= epoch)
    }

    /// Plans a re-read of `wallet`'s history after its snapshot (the whole wallet when the scan
    /// did not read it).
    fn plan_history(&self, wallet: &str, plan: &mut Plan) {
        match self.wallets.get(wallet) {
            Some(v) if v.scanned => {
                plan.histories.insert(wallet.to_string(), v.last_id.clone());
            }
            _ => {
                plan.wallets.insert(wallet.to_string());
            }
        }
    }
}

/// How violations about one group name it.
#[derive(Debug)]
struct Name {
    key: Option<String>,
    transfer_id: Option<String>,
    wallets: Vec<String>,
}

impl Name {
    fn of(mover: &Mover, seen: &[Seen<'_>], claimants: &[(&str, &TransferOutcome)]) -> Name {
        let (key, transfer_id) = match mover {
            Mover::Key(key) => {
                let id = claimants.first().map(|(_, o)| o.transfer_id.clone());
                let id = id.or_else(|| seen.first().map(|s| s.entry.transfer_id.clone()));
                (Some(key.clone()), id)
            }
            Mover::Legacy(id) => {
                let key = match claimants {
                    [(key, _)] => Some(key.to_string()),
                    _ => None,
                };
                (key, Some(id.clone()))
            }
        };
        let named = claimants
            .iter()
            .flat_map(|(_, o)| [o.from_user.as_str(), o.to_user.as_str()]);
        let debits = seen.iter().filter(|s| s.entry.kind == HistoryKind::Debit);
        let credits = seen.iter().filter(|s| s.entry.kind != HistoryKind::Debit);
        let wallets = unique(named.chain(debits.chain(credits).map(|s| s.wallet)));
        Name {
            key,
            transfer_id,
            wallets,
        }
    }

    fn violation(&self, kind: ViolationKind, detail: String) -> Violation {
        Violation {
            kind,
            idempotency_key: self.key.clone(),
            transfer_id: self.transfer_id.clone(),
            wallets: self.wallets.clone(),
            detail,
        }
    }
}

/// A debit (0) or credit (1) slot in a wallet.
type Slot<'a> = (u8, &'a str);

/// The idempotency key of an outcome as the auditor holds it: `key` on one Redis,
/// `{sender}:key` on a cluster (keys cannot hold braces, so a leading tag is a sender).
fn mover_key(outcome_id: &str) -> &str {
    match outcome_id
        .strip_prefix('{')
        .and_then(|tagged| tagged.split_once("}:"))
    {
        Some((_sender, key)) => key,
        None => outcome_id,
    }
}

fn rank(kind: HistoryKind) -> u8 {
    u8::from(kind != HistoryKind::Debit)
}

/// The debit and credit of an outcome: (wallet, entry number, kind).
fn sides(o: &TransferOutcome) -> [(&str, Option<u64>, HistoryKind); 2] {
    [
        (
            o.from_user.as_str(),
            o.from_version_after,
            HistoryKind::Debit,
        ),
        (o.to_user.as_str(), o.to_version_after, HistoryKind::Credit),
    ]
}

/// What a group's COMPLETED outcomes expect of one slot.
#[derive(Debug, Default)]
struct Expected {
    /// Entries to see: amount, and entry number when the outcome recorded it.
    required: Vec<(Amount, Option<u64>)>,
    /// Entries of outcomes without versions, older than the window: trimmed if not seen.
    optional: Vec<Amount>,
    /// Entries trimmed before the snapshot (in its checkpoint).
    before: usize,
    /// Entries made after the snapshot and trimmed before the re-read.
    since: usize,
    /// Credits of PENDING outcomes: each may be done (once) or not yet.
    pending: Vec<Amount>,
}

/// Expected against seen debits and credits of a group claimed by COMPLETED outcomes: per
/// (kind, wallet), as many entries as outcomes expect in the window, of their amounts, at
/// their numbers. Each violation comes with the wallet that lacks an entry, when that is what
/// it is; `before_window` counts the entries accepted as trimmed.
fn check_slots<'a>(
    mut expected: BTreeMap<Slot<'a>, Expected>,
    seen: &[Seen<'a>],
    name: &Name,
    before_window: &mut u64,
) -> Vec<(Violation, Option<&'a str>)> {
    let mut observed: BTreeMap<Slot<'a>, Vec<Seen<'a>>> = BTreeMap::new();
    for s in seen {
        observed
            .entry((rank(s.entry.kind), s.wallet))
            .or_default()
            .push(*s);
    }
    for slot in observed.keys() {
        expected.entry(*slot).or_default();
    }
    let mut out = Vec::new();
    for (slot, want) in &expected {
        let got = observed.get(slot).map_or(&[][..], Vec::as_slice);
        match judge_slot(*slot, want, got, name) {
            Ok(trimmed) => *before_window += trimmed,
            Err(found) => out.push(found),
        }
    }
    out
}

/// One slot: the entries seen against those expected. `Ok` with the number of entries
/// accepted as trimmed before the window, or the violation (with the wallet when an entry is
/// missing).
fn judge_slot<'a>(
    slot: Slot<'a>,
    want: &Expected,
    got: &[Seen<'a>],
    name: &Name,
) -> Result<u64, (Violation, Option<&'a str>)> {
    let (kind, wallet) = (["debit", "credit"][usize::from(slot.0)], slot.1);
    let history = keys::log(wallet);
    let (need, most) = (
        want.required.len(),
        want.required.len() + want.optional.len() + want.pending.len(),
    );
    let trimmed = want.before + want.since;
    let note = match trimmed {
        0 => String::new(),
        n => format!(
            " (and {n} trimmed into the checkpoint of {})",
            keys::wallet(wallet)
        ),
    };
    let required: Vec<Amount> = sorted(want.required.iter().map(|r| r.0));
    let amounts: Vec<Amount> = sorted(got.iter().map(|s| s.entry.amount));
    let (what, detail) = if got.len() < need {
        let detail = format!(
            "{} {kind}(s) in {history}, the outcome says {}{note}",
            got.len(),
            list(&required)
        );
        (ViolationKind::MissingEntry, detail)
    } else if got.len() > most && most + trimmed == 0 {
        let detail = format!("the outcome moves no money through this: {}", places(got));
        (ViolationKind::UnexpectedEntry, detail)
    } else if got.len() > most {
        let (times, expected) = (got.len() + trimmed, most + trimmed);
        let detail = format!(
            "{kind} applied {times} times, expected {expected}: {}{note}",
            places(got)
        );
        (ViolationKind::RepeatedEntry, detail)
    } else if !amounts_fit(
        &amounts,
        &required,
        &[&want.optional[..], &want.pending].concat(),
    ) {
        let all = sorted(
            required
                .iter()
                .chain(&want.optional)
                .chain(&want.pending)
                .copied(),
        );
        let history = got
            .first()
            .map_or(history, |s| entry_key(wallet, &s.entry.stream_id));
        let detail = format!(
            "{kind} in {history} is {}, the outcome says {}",
            list(&amounts),
            list(&all)
        );
        (ViolationKind::AmountMismatch, detail)
    } else if let Some(detail) = misplaced(kind, wallet, want, got) {
        (ViolationKind::MisplacedEntry, detail)
    } else {
        let absent = (most - got.len()).saturating_sub(want.pending.len());
        return Ok((want.before + absent) as u64);
    };
    let short = (what == ViolationKind::MissingEntry).then_some(wallet);
    Err((name.violation(what, detail), short))
}

/// Whether the amounts seen are those required, or (when some may have been trimmed) each is
/// one of those expected.
fn amounts_fit(amounts: &[Amount], required: &[Amount], optional: &[Amount]) -> bool {
    if optional.is_empty() {
        return amounts == required;
    }
    let mut pool: Vec<Amount> = required.iter().chain(optional).copied().collect();
    amounts
        .iter()
        .all(|a| match pool.iter().position(|p| p == a) {
            Some(i) => {
                pool.swap_remove(i);
                true
            }
            None => false,
        })
}

/// The one entry of a slot that one outcome expects, when it is not the entry number the
/// outcome recorded.
fn misplaced(kind: &str, wallet: &str, want: &Expected, got: &[Seen<'_>]) -> Option<String> {
    let ([(_, Some(n))], [seen], []) = (&want.required[..], got, &want.optional[..]) else {
        return None;
    };
    let m = seen.entry.number?;
    (m != *n).then(|| {
        format!(
            "{kind} {} in {} {} is entry {m} of {}, the outcome says entry {n}",
            seen.entry.amount,
            entry_key(wallet, &seen.entry.stream_id),
            seen.entry.stream_id,
            keys::wallet(wallet)
        )
    })
}

fn sorted(amounts: impl Iterator<Item = Amount>) -> Vec<Amount> {
    let mut v: Vec<Amount> = amounts.collect();
    v.sort();
    v
}

/// Parses one wallet read and finds what is wrong with the wallet on its own.
fn wallet_view(id: &str, read: WalletRead, listed: bool, epoch: u64) -> WalletView {
    let mut problems = Vec::new();
    let key = keys::wallet(id);
    let parsed = read
        .hash
        .map_err(|e| format!("{key}: {e}"))
        .and_then(|f| parse_wallet(id, &f).map_err(|e| e.to_string()));
    let (wallet, corrupt) = match parsed {
        Ok(w) => (w, None),
        Err(e) => (
            None,
            Some(Violation::wallet(ViolationKind::WalletCorrupt, id, e)),
        ),
    };
    let first = wallet.as_ref().map(|w| w.checkpoint.entries + 1);
    let (entries, stream_len, last_id, first_ms) = match &read.history {
        Ok(history) => {
            let entries = parse_entries(id, history, first, &mut problems);
            let last_id = history.last().map(|(stream_id, _)| stream_id.clone());
            let first_ms = history
                .first()
                .and_then(|(stream_id, _)| stream_ms(stream_id));
            (entries, Some(history.len() as u64), last_id, first_ms)
        }
        Err(e) => {
            let detail = format!(
                "{} or {}: not a readable history: {e}",
                keys::history(id),
                keys::log(id)
            );
            let kind = ViolationKind::HistoryUnreadable;
            problems.push(Violation::wallet(kind, id, detail));
            (Vec::new(), None, None, None)
        }
    };
    if wallet.is_none() && corrupt.is_none() && (listed || stream_len > Some(0)) {
        let entries = stream_len.unwrap_or(0);
        let detail = format!(
            "{key} does not exist (listed in wallets:all: {listed}, history entries: {entries})"
        );
        problems.push(Violation::wallet(ViolationKind::WalletMissing, id, detail));
    }
    problems.extend(corrupt);
    if let Some(w) = &wallet {
        problems.extend(balance_violations(id, w, &entries, stream_len));
    }
    let window = wallet
        .as_ref()
        .filter(|_| stream_len.is_some())
        .map(|w| (w.checkpoint.entries, w.version));
    WalletView {
        scanned: true,
        epoch,
        wallet,
        window,
        first_ms,
        last_id,
        entries,
        stream_len: stream_len.unwrap_or(0),
        broken: stream_len.is_none(),
        problems,
        ..WalletView::default()
    }
}

/// The readable entries of one history, numbered from `first` when known; each unreadable
/// one is a violation.
fn parse_entries(
    id: &str,
    history: &RawHistory,
    first: Option<u64>,
    problems: &mut Vec<Violation>,
) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(history.len());
    for (i, (stream_id, fields)) in history.iter().enumerate() {
        let number = first.map(|f| f + i as u64);
        match parse_entry(stream_id, fields, number) {
            Some(e) => entries.push(e),
            None => {
                let detail = format!(
                    "{} {stream_id}: unreadable entry {fields:?}",
                    entry_key(id, stream_id)
                );
                problems.push(Violation::wallet(
                    ViolationKind::HistoryUnreadable,
                    id,
                    detail,
                ));
            }
        }
    }
    entries
}

/// A re-read wallet: its hash as it is now, and the readable entries read (an unreadable one
/// was never in the cut), numbered back from the version (the last entry made it).
fn parse_late(id: &str, read: WalletRead) -> (Option<Wallet>, Vec<Entry>) {
    let wallet = read
        .hash
        .ok()
        .and_then(|f| parse_wallet(id, &f).ok().flatten());
    let Ok(history) = read.history else {
        return (wallet, Vec::new());
    };
    let first = wallet
        .as_ref()
        .and_then(|w| (w.version + 1).checked_sub(history.len() as u64));
    let entries = history
        .iter()
        .enumerate()
        .filter_map(|(i, (stream_id, fields))| {
            parse_entry(stream_id, fields, first.map(|f| f + i as u64))
        })
        .collect();
    (wallet, entries)
}

/// The key an entry of `wallet`'s history is in, by its id: `wallet:{id}:log` for a log line
/// (`<ms>-v<n>`), `wallet:{id}:history` for an entry of the older stream.
fn entry_key(wallet: &str, entry_id: &str) -> String {
    if entry_id.contains("-v") {
        keys::log(wallet)
    } else {
        keys::history(wallet)
    }
}

/// The time (ms) of an entry id, `ms-seq` (a stream entry) or `ms-vN` (a log line).
fn stream_ms(stream_id: &str) -> Option<u64> {
    stream_id.split('-').next()?.parse().ok()
}

/// One history entry, in either format ([`crate::engine::wallet::parse_history_fields`]): transfer id, kind,
/// amount, and the idempotency key when recorded. The long format needs only `transfer_id`,
/// `kind` and `amount` here (the original system's entries may lack the rest).
fn parse_entry(stream_id: &str, f: &Fields, number: Option<u64>) -> Option<Entry> {
    let (transfer_id, key, kind, amount) = if let Some(code) = f.get("d") {
        // The compact fields (a stream entry, or a log line, whose balance the audit needs not).
        let kind = HistoryKind::from_code(code)?;
        let amount = Amount::from_minor(f.get("a")?.parse().ok()?);
        let transfer_id = f.get("t")?.clone();
        let key = f.get("k").filter(|k| !k.is_empty()).unwrap_or(&transfer_id);
        (transfer_id.clone(), Some(key.clone()), kind, amount)
    } else {
        let kind = match f.get("kind")?.as_str() {
            "debit" => HistoryKind::Debit,
            "credit" => HistoryKind::Credit,
            "deposit" => HistoryKind::Deposit,
            _ => return None,
        };
        let amount = Amount::parse(f.get("amount")?).ok()?;
        let key = f.get("idempotency_key").filter(|k| !k.is_empty()).cloned();
        (f.get("transfer_id")?.clone(), key, kind, amount)
    };
    let mover = match key {
        Some(key) => Mover::Key(key),
        None => Mover::Legacy(transfer_id.clone()),
    };
    Some(Entry {
        stream_id: stream_id.to_string(),
        mover,
        transfer_id,
        kind,
        amount,
        number,
    })
}

/// The per-wallet invariants: no negative balance; when the history was read (`stream_len`),
/// version = entries trimmed (`hc`) + retained entries, and when every retained entry was
/// readable, balance = opening + checkpoint (`hb`) + retained history.
fn balance_violations(
    id: &str,
    w: &Wallet,
    entries: &[Entry],
    stream_len: Option<u64>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let key = keys::wallet(id);
    if w.balance.is_negative() {
        let detail = format!("{key}: negative balance {}", w.balance);
        out.push(Violation::wallet(
            ViolationKind::NegativeBalance,
            id,
            detail,
        ));
    }
    let Some(stream_len) = stream_len else {
        return out;
    };
    let net: i128 = entries
        .iter()
        .map(|e| i128::from(e.kind.signed(e.amount).minor()))
        .sum();
    let readable = entries.len() as u64 == stream_len;
    let (cp, trimmed) = (&w.checkpoint, i128::from(w.checkpoint.net.minor()));
    let opening = i128::from(w.opening_balance.minor());
    if readable && opening + trimmed + net != i128::from(w.balance.minor()) {
        let checkpoint = match cp.entries {
            0 if cp.net == Amount::ZERO => String::new(),
            n => format!(" + checkpoint {} ({n} trimmed)", cp.net),
        };
        let detail = format!(
            "{key}: balance {} != opening {}{checkpoint} + history {}",
            w.balance,
            w.opening_balance,
            amount(net)
        );
        out.push(Violation::wallet(
            ViolationKind::BalanceMismatch,
            id,
            detail,
        ));
    }
    if u128::from(w.version) != u128::from(cp.entries) + u128::from(stream_len) {
        let trimmed = match cp.entries {
            0 => String::new(),
            n => format!("{n} trimmed + "),
        };
        let detail = format!(
            "{key}: version {} != {trimmed}{stream_len} history entries",
            w.version
        );
        out.push(Violation::wallet(
            ViolationKind::VersionMismatch,
            id,
            detail,
        ));
    }
    out
}

/// Per currency: the total of balances (with the money in flight) = openings + deposits.
fn totals_violations(totals: &BTreeMap<&'static str, Sums>) -> Vec<Violation> {
    totals
        .iter()
        .filter(|(_, s)| s.balance + s.in_flight != s.opening + s.deposits)
        .map(|(currency, s)| {
            let in_flight = match s.in_flight {
                0 => String::new(),
                n => format!(" + in flight {}", amount(n)),
            };
            let detail = format!(
                "{currency}: total balance {}{in_flight} != openings {} + deposits {}",
                amount(s.balance),
                amount(s.opening),
                amount(s.deposits)
            );
            Violation::ledger(ViolationKind::TotalsMismatch, detail)
        })
        .collect()
}

/// The report's horizon in words.
fn horizon(wallets: u64, trimmed: u64, before_window: u64) -> String {
    if wallets == 0 {
        return "every history is whole: every move was checked entry by entry".to_string();
    }
    format!(
        "{wallets} wallet(s) have a checkpoint, {trimmed} entries trimmed in all: moves before \
         each window ({before_window} debits and credits of recorded transfers among them) were \
         checked only through the checkpoints (hc entries, hb sum, hd deposits), not entry by \
         entry"
    )
}

/// A sum as an [`Amount`], clamped to its range (sums of valid balances never reach it).
fn amount(minor: i128) -> Amount {
    Amount::from_minor(minor.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// `a, b` without repeats, in first-seen order.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

/// Amounts as `10.00` or `[10.00, 10.00]`.
fn list(amounts: &[Amount]) -> String {
    match amounts {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(Amount::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Where entries are: `debit 10.00 in wallet:a:history 1-0, ...`.
fn places(seen: &[Seen<'_>]) -> String {
    seen.iter()
        .map(|s| {
            let e = s.entry;
            format!(
                "{} {} in {} {}",
                e.kind.as_str(),
                e.amount,
                entry_key(s.wallet, &e.stream_id),
                e.stream_id
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn wallet_in(currency: &str, balance: &str, opening: &str, version: u64) -> Fields {
        let version = version.to_string();
        fields(&[
            ("balance", balance),
            ("opening_balance", opening),
            ("currency", currency),
            ("status", "active"),
            ("version", &version),
        ])
    }

    fn wallet(balance: &str, opening: &str, version: u64) -> Fields {
        wallet_in("USD", balance, opening, version)
    }

    /// A history entry as the engine writes it (key = transfer id); `n` makes the stream id.
    fn entry(n: u32, id: &str, kind: &str, amount: &str) -> (String, Fields) {
        let e = fields(&[
            ("transfer_id", id),
            ("idempotency_key", id),
            ("kind", kind),
            ("amount", amount),
            ("balance_after", "0.00"),
            ("at", "1"),
        ]);
        (format!("1-{n}"), e)
    }

    fn deposit(n: u32, id: &str, amount: &str) -> (String, Fields) {
        entry(n, id, "deposit", amount)
    }

    /// An entry written before the idempotency key was recorded.
    fn legacy(n: u32, id: &str, kind: &str, amount: &str) -> (String, Fields) {
        let (stream_id, mut e) = entry(n, id, kind, amount);
        e.remove("idempotency_key");
        (stream_id, e)
    }

    fn outcome(id: &str, status: &str, from: &str, to: &str, amount: &str) -> Fields {
        fields(&[
            ("transfer_id", id),
            ("idempotency_key", id),
            ("status", status),
            ("from_user", from),
            ("to_user", to),
            ("amount", amount),
            ("currency", "USD"),
            ("processed_at", "1700000000.000"),
        ])
    }

    fn read(hash: Fields, history: RawHistory) -> WalletRead {
        WalletRead {
            hash: Ok(hash),
            history: Ok(history),
        }
    }

    /// One wallet of `wallets:all`, read whole by the scan after everything added before.
    fn add_wallet(a: &mut Auditor, id: &str, hash: Fields, history: RawHistory) {
        a.ingest(Snapshot {
            listed: true,
            wallets: vec![(id.to_string(), read(hash, history))],
            outcomes: Vec::new(),
        });
    }

    /// Outcome records read by the scan (which reads them before the wallets).
    fn add_outcomes(a: &mut Auditor, outcomes: &[(&str, Fields)]) {
        a.ingest(Snapshot {
            outcomes: outcomes
                .iter()
                .map(|(k, f)| (k.to_string(), f.clone()))
                .collect(),
            ..Snapshot::default()
        });
    }

    /// t1: a pays b 10.00; d1: b gets a deposit of 5.00; t2 failed.
    fn sound() -> Auditor {
        let mut a = Auditor::default();
        add_outcomes(
            &mut a,
            &[
                ("t1", outcome("t1", "COMPLETED", "a", "b", "10.00")),
                ("t2", outcome("t2", "FAILED", "a", "b", "999.00")),
                ("gone", Fields::new()),
            ],
        );
        let a_history = vec![entry(1, "t1", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), a_history);
        let b_history = vec![entry(2, "t1", "credit", "10.00"), deposit(3, "d1", "5.00")];
        add_wallet(&mut a, "b", wallet("15.00", "0.00", 2), b_history);
        a
    }

    fn lines(report: &AuditReport) -> Vec<String> {
        report.violations.iter().map(ToString::to_string).collect()
    }

    fn checked(a: &Auditor) -> Vec<String> {
        lines(&a.report(a.check(), 0))
    }

    /// Settles, answering each plan with `answer`.
    fn settle_with(a: Auditor, answer: impl Fn(&Plan) -> Reread) -> AuditReport {
        a.settle(|plan| Ok::<_, ()>(answer(plan))).unwrap()
    }

    /// Settles on a ledger that needs no re-read.
    fn settle_quiet(a: Auditor) -> AuditReport {
        a.settle(|plan| Err(format!("no re-read expected: {plan:?}")))
            .unwrap()
    }

    #[test]
    fn a_sound_ledger_has_no_violations_and_is_counted() {
        let r = settle_quiet(sound());
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!((r.wallets_checked, r.history_entries), (2, 3));
        assert_eq!((r.transfers_checked, r.transfers_completed), (2, 1));
        assert_eq!(r.total_balance.to_string(), "105.00");
        assert_eq!(r.total_opening.to_string(), "100.00");
        assert_eq!(r.total_deposits.to_string(), "5.00");
        assert_eq!(r.currencies.len(), 1);
        assert_eq!(r.currencies[0].currency, "USD");
        assert_eq!(r.currencies[0].in_flight, Amount::ZERO);
        assert_eq!((r.settle_passes, r.unsettled), (0, 0));
    }

    /// A history entry in the compact format the engine writes now.
    fn compact(n: u32, id: &str, kind: &str, cents: &str) -> (String, Fields) {
        let e = fields(&[("t", id), ("k", ""), ("d", kind), ("a", cents), ("b", "0")]);
        (format!("1-{n}"), e)
    }

    #[test]
    fn compact_records_and_long_ones_audit_alike() {
        let mut a = Auditor::default();
        let t1 = fields(&[
            ("s", "COMPLETED"),
            ("f", "a"),
            ("t", "b"),
            ("a", "1000"),
            ("c", "USD"),
            ("p", "1700000000000"),
        ]);
        add_outcomes(
            &mut a,
            &[
                ("t1", t1),
                ("t2", outcome("t2", "COMPLETED", "a", "b", "1.00")),
            ],
        );
        let a_history = vec![
            compact(1, "t1", "d", "1000"),
            entry(2, "t2", "debit", "1.00"),
        ];
        add_wallet(&mut a, "a", wallet("89.00", "100.00", 2), a_history);
        let b_history = vec![
            entry(3, "t2", "credit", "1.00"),
            compact(4, "t1", "c", "1000"),
            compact(5, "d1", "p", "500"),
        ];
        add_wallet(&mut a, "b", wallet("16.00", "0.00", 3), b_history);
        let r = settle_quiet(a);
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!((r.transfers_checked, r.transfers_completed), (2, 2));
        assert_eq!(r.total_deposits.to_string(), "5.00");
    }

    #[test]
    fn a_balance_the_history_does_not_explain_is_named_with_the_totals() {
        let mut a = Auditor::default();
        let history = vec![deposit(1, "d1", "10.00")];
        add_wallet(&mut a, "a", wallet("1000.00", "100.00", 1), history);
        assert_eq!(
            checked(&a),
            [
                "balance_mismatch wallets=a: wallet:a: balance 1000.00 != opening 100.00 + \
                 history 10.00",
                "totals_mismatch: USD: total balance 1000.00 != openings 100.00 + deposits 10.00",
            ]
        );
    }

    #[test]
    fn a_negative_balance_and_a_version_off_the_history_are_violations() {
        let mut a = Auditor::default();
        let history = vec![deposit(1, "d1", "10.00"), deposit(2, "d2", "1.00")];
        add_wallet(&mut a, "a", wallet("-10.00", "-21.00", 3), history);
        assert_eq!(
            checked(&a),
            [
                "negative_balance wallets=a: wallet:a: negative balance -10.00",
                "version_mismatch wallets=a: wallet:a: version 3 != 2 history entries",
            ]
        );
    }

    #[test]
    fn missing_wallets_and_unreadable_histories_are_reported_not_summed() {
        let mut a = Auditor::default();
        add_wallet(&mut a, "ghost", Fields::new(), Vec::new());
        add_wallet(&mut a, "bad", fields(&[("balance", "x")]), Vec::new());
        a.ingest(Snapshot {
            listed: true,
            wallets: vec![(
                "noise".into(),
                WalletRead {
                    hash: Ok(wallet("1.00", "1.00", 4)),
                    history: Err("WRONGTYPE".into()),
                },
            )],
            outcomes: Vec::new(),
        });
        let garbled = vec![("1-0".to_string(), fields(&[("kind", "gift")]))];
        add_wallet(&mut a, "odd", wallet("7.00", "1.00", 1), garbled);
        let r = a.report(a.check(), 0);
        assert_eq!(r.wallets_checked, 4);
        assert_eq!(
            r.total_balance.to_string(),
            "8.00",
            "the wallets that parse"
        );
        let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
        use ViolationKind::*;
        let want = [
            WalletCorrupt,
            WalletMissing,
            HistoryUnreadable,
            HistoryUnreadable,
            TotalsMismatch,
        ];
        assert_eq!(kinds, want, "{:?}", lines(&r));
        let l = lines(&r);
        assert!(
            l[1].starts_with("wallet_missing wallets=ghost: wallet:ghost does not exist"),
            "{l:?}"
        );
        assert_eq!(
            l[2],
            "history_unreadable wallets=noise: wallet:noise:history or wallet:noise:log: not a \
             readable history: \
             WRONGTYPE"
        );
        assert!(
            l[3].starts_with(
                "history_unreadable wallets=odd: wallet:odd:history 1-0: unreadable entry"
            ),
            "{l:?}"
        );
    }

    #[test]
    fn a_transfer_applied_twice_by_hand_is_named_by_its_key_and_wallets() {
        // Everything consistent but the double effect: balances, versions, totals add up.
        let mut a = Auditor::default();
        let t1 = outcome("t1", "COMPLETED", "a", "b", "10.00");
        add_outcomes(&mut a, &[("t1", t1)]);
        let debits = vec![
            entry(1, "t1", "debit", "10.00"),
            entry(3, "t1", "debit", "10.00"),
        ];
        add_wallet(&mut a, "a", wallet("80.00", "100.00", 2), debits);
        let credits = vec![
            entry(2, "t1", "credit", "10.00"),
            entry(4, "t1", "credit", "10.00"),
        ];
        add_wallet(&mut a, "b", wallet("20.00", "0.00", 2), credits);
        let r = settle_quiet(a);
        assert_eq!(
            lines(&r),
            [
                "repeated_entry key=t1 wallets=a,b: debit applied 2 times, expected 1: debit \
                 10.00 in wallet:a:history 1-1, debit 10.00 in wallet:a:history 1-3",
                "repeated_entry key=t1 wallets=a,b: credit applied 2 times, expected 1: credit \
                 10.00 in wallet:b:history 1-2, credit 10.00 in wallet:b:history 1-4",
            ]
        );
        let v = &r.violations[0];
        assert_eq!(v.kind, ViolationKind::RepeatedEntry);
        assert_eq!(v.idempotency_key.as_deref(), Some("t1"));
        assert_eq!(v.wallets, ["a", "b"]);
    }

    #[test]
    fn entries_are_counted_per_key_so_one_transfer_id_under_two_keys_is_two_transfers() {
        let with_id = |(stream_id, mut f): (String, Fields)| {
            f.insert("transfer_id".into(), "t1".into());
            (stream_id, f)
        };
        let mut a = Auditor::default();
        let mut o = outcome("t1", "COMPLETED", "a", "b", "10.00");
        o.insert("idempotency_key".into(), "k1".into());
        add_outcomes(&mut a, &[("k1", o.clone())]);
        let debits = [(1, "k1"), (2, "k2")].map(|(n, k)| with_id(entry(n, k, "debit", "10.00")));
        add_wallet(&mut a, "a", wallet("80.00", "100.00", 2), debits.to_vec());
        let credits = [(3, "k1"), (4, "k2")].map(|(n, k)| with_id(entry(n, k, "credit", "10.00")));
        add_wallet(&mut a, "b", wallet("20.00", "0.00", 2), credits.to_vec());
        assert_eq!(
            checked(&a),
            [
                "entry_without_outcome key=k2 transfer_id=t1 wallets=a,b: no transfer:k2 for \
              debit 10.00 in wallet:a:history 1-2, credit 10.00 in wallet:b:history 1-4"
            ]
        );
        o.insert("idempotency_key".into(), "k2".into());
        add_outcomes(&mut a, &[("k2", o)]);
        assert_eq!(checked(&a), Vec::<String>::new());
    }

    #[test]
    fn a_missing_credit_is_reported_once_read_after_its_outcome() {
        // The scan read the outcome first, so b's history already had to hold the credit.
        let t1 = || outcome("t1", "COMPLETED", "a", "b", "10.00");
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[("t1", t1())]);
        let debit = || vec![entry(1, "t1", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit());
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        let want = [
            "totals_mismatch: USD: total balance 90.00 != openings 100.00 + deposits 0.00",
            "missing_entry key=t1 wallets=a,b: 0 credit(s) in wallet:b:log, the outcome \
             says 10.00",
        ];
        let r = settle_quiet(a);
        assert_eq!(lines(&r), want);
        assert_eq!((r.settle_passes, r.unsettled), (0, 0));
        // Read in the other order, b's history is read again before the finding counts.
        let mut a = Auditor::default();
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit());
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        add_outcomes(&mut a, &[("t1", t1())]);
        let r = settle_with(a, |plan| {
            let want = BTreeMap::from([("b".to_string(), None)]);
            assert_eq!(plan.histories, want, "{plan:?}");
            Reread {
                histories: vec![("b".into(), read(wallet("0.00", "0.00", 0), Vec::new()))],
                ..Reread::default()
            }
        });
        assert_eq!(lines(&r), want);
        assert_eq!((r.settle_passes, r.unsettled), (1, 0));
    }

    #[test]
    fn a_move_into_a_wallet_of_another_currency_is_named_and_totals_are_per_currency() {
        let mut a = Auditor::default();
        add_outcomes(
            &mut a,
            &[("fx", outcome("fx", "COMPLETED", "u", "e", "10.00"))],
        );
        let history = vec![entry(1, "fx", "debit", "10.00")];
        add_wallet(&mut a, "u", wallet("90.00", "100.00", 1), history);
        let history = vec![entry(2, "fx", "credit", "10.00")];
        add_wallet(&mut a, "e", wallet_in("EUR", "10.00", "0.00", 1), history);
        let r = settle_quiet(a);
        assert_eq!(
            r.total_balance, r.total_opening,
            "summed over currencies it passes"
        );
        assert_eq!(
            lines(&r),
            [
                "totals_mismatch: EUR: total balance 10.00 != openings 0.00 + deposits 0.00",
                "totals_mismatch: USD: total balance 90.00 != openings 100.00 + deposits 0.00",
                "currency_mismatch key=fx wallets=u,e: credit of 10.00 in wallet:e:history (a \
                 EUR wallet) for a USD transfer",
            ]
        );
        assert_eq!(r.currencies[0].currency, "EUR");
        assert_eq!(r.currencies[0].balance.to_string(), "10.00");
    }

    #[test]
    fn a_failed_transfer_with_entries_and_entries_without_an_outcome_are_violations() {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[("t2", outcome("t2", "FAILED", "a", "b", "1.00"))]);
        let history = vec![
            entry(1, "t2", "debit", "1.00"),
            entry(2, "t9", "debit", "2.00"),
        ];
        add_wallet(&mut a, "a", wallet("97.00", "100.00", 2), history);
        let history = vec![
            entry(3, "t2", "credit", "1.00"),
            entry(4, "t9", "credit", "2.00"),
        ];
        add_wallet(&mut a, "b", wallet("3.00", "0.00", 2), history);
        // t9's outcome was not in the scan: it may have been written after; read it again.
        let r = settle_with(a, |plan| {
            assert_eq!(plan.outcomes, BTreeSet::from(["t9".to_string()]));
            assert!(plan.histories.is_empty() && plan.wallets.is_empty());
            Reread {
                outcomes: vec![("t9".into(), Fields::new())],
                ..Reread::default()
            }
        });
        assert_eq!((r.settle_passes, r.unsettled), (1, 0));
        assert_eq!(
            lines(&r),
            [
                "failed_with_entries key=t2 wallets=a,b: a FAILED transfer has history entries: \
                 debit 1.00 in wallet:a:history 1-1, credit 1.00 in wallet:b:history 1-3",
                "entry_without_outcome key=t9 wallets=a,b: no transfer:t9 for debit 2.00 in \
                 wallet:a:history 1-2, credit 2.00 in wallet:b:history 1-4",
            ]
        );
    }

    #[test]
    fn wrong_amounts_and_entries_in_wallets_the_outcome_does_not_name_are_violations() {
        let mut a = Auditor::default();
        add_outcomes(
            &mut a,
            &[("t1", outcome("t1", "COMPLETED", "a", "b", "10.00"))],
        );
        let history = vec![entry(1, "t1", "debit", "9.00")];
        add_wallet(&mut a, "a", wallet("91.00", "100.00", 1), history);
        let history = vec![entry(2, "t1", "credit", "9.00")];
        add_wallet(&mut a, "c", wallet("9.00", "0.00", 1), history);
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        let kinds: Vec<ViolationKind> = a.check().violations.iter().map(|v| v.kind).collect();
        use ViolationKind::*;
        assert_eq!(kinds, [AmountMismatch, MissingEntry, UnexpectedEntry]);
        assert_eq!(
            checked(&a)[0],
            "amount_mismatch key=t1 wallets=a,b,c: debit in wallet:a:history is 9.00, the \
             outcome says 10.00"
        );
    }

    #[test]
    fn older_entries_without_a_key_match_their_outcome_by_transfer_id() {
        let mut a = Auditor::default();
        let mut o = outcome("t1", "COMPLETED", "a", "b", "10.00");
        o.insert("idempotency_key".into(), "req_t1".into());
        add_outcomes(&mut a, &[("req_t1", o.clone())]);
        let history = vec![legacy(1, "t1", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), history);
        let history = vec![legacy(2, "t1", "credit", "10.00")];
        add_wallet(&mut a, "b", wallet("10.00", "0.00", 1), history);
        assert_eq!(checked(&a), Vec::<String>::new());
        // Applied again by hand, the old way: named by the outcome's key and the transfer id.
        let history = vec![
            legacy(1, "t1", "debit", "10.00"),
            legacy(3, "t1", "debit", "10.00"),
        ];
        add_wallet(&mut a, "a", wallet("80.00", "100.00", 2), history);
        let l = checked(&a);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(
            l[1],
            "repeated_entry key=req_t1 transfer_id=t1 wallets=a,b: debit applied 2 times, \
             expected 1: debit 10.00 in wallet:a:history 1-1, debit 10.00 in wallet:a:history \
             1-3"
        );
        // Two outcomes with one transfer id: each claims one debit and one credit.
        o.insert("idempotency_key".into(), "req_t1_again".into());
        add_outcomes(&mut a, &[("req_t1_again", o)]);
        let history = vec![
            legacy(2, "t1", "credit", "10.00"),
            legacy(4, "t1", "credit", "10.00"),
        ];
        add_wallet(&mut a, "b", wallet("20.00", "0.00", 2), history);
        assert_eq!(checked(&a), Vec::<String>::new());
    }

    #[test]
    fn a_deposit_id_seen_twice_is_a_repeated_deposit() {
        let mut a = Auditor::default();
        let history = vec![deposit(1, "dep_1", "5.00"), deposit(2, "dep_1", "5.00")];
        add_wallet(&mut a, "a", wallet("10.00", "0.00", 2), history);
        assert_eq!(
            checked(&a),
            [
                "repeated_deposit key=dep_1 wallets=a: deposit applied 2 times: deposit 5.00 in \
              wallet:a:history 1-1, deposit 5.00 in wallet:a:history 1-2"
            ]
        );
    }

    #[test]
    fn a_corrupt_outcome_is_reported_once() {
        let mut a = sound();
        add_outcomes(&mut a, &[("junk", fields(&[("status", "MAYBE")]))]);
        let v = a.check().violations;
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, ViolationKind::OutcomeCorrupt);
        assert_eq!(v[0].idempotency_key.as_deref(), Some("junk"));
    }

    /// Live: t2 (a pays b 10.00) ran during the wallet scan, after the outcome scan and a's
    /// snapshot, before b's.
    fn straddled() -> Auditor {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        add_wallet(&mut a, "a", wallet("100.00", "100.00", 0), Vec::new());
        let history = vec![entry(2, "t2", "credit", "10.00")];
        add_wallet(&mut a, "b", wallet("10.00", "0.00", 1), history);
        a
    }

    /// Answers as the ledger is after t2 and t3 (b pays a 1.00, after the scan).
    fn after_t2(plan: &Plan) -> Reread {
        let histories = plan.histories.iter().map(|(id, after)| {
            let (hash, late) = match (id.as_str(), after) {
                ("a", None) => (
                    wallet("91.00", "100.00", 2),
                    vec![
                        entry(1, "t2", "debit", "10.00"),
                        entry(3, "t3", "credit", "1.00"),
                    ],
                ),
                ("b", Some(last)) if last == "1-2" => (
                    wallet("9.00", "0.00", 2),
                    vec![entry(4, "t3", "debit", "1.00")],
                ),
                other => panic!("unexpected history read {other:?}"),
            };
            (id.clone(), read(hash, late))
        });
        let t2 = outcome("t2", "COMPLETED", "a", "b", "10.00");
        Reread {
            histories: histories.collect(),
            wallets: Vec::new(),
            outcomes: plan
                .outcomes
                .iter()
                .map(|k| (k.clone(), t2.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_transfer_that_finished_during_the_scan_is_read_again_not_reported() {
        let first = straddled().check();
        assert_eq!(
            (first.violations.len(), first.unconfirmed),
            (2, 1),
            "the totals and the entry without outcome: {:?}",
            first.violations
        );
        let r = settle_with(straddled(), after_t2);
        assert!(r.is_ok(), "{:?}", lines(&r));
        // The outcome, then a's history after its snapshot; t3 is not in the cut.
        assert_eq!((r.settle_passes, r.unsettled, r.wallets_checked), (2, 0, 2));
        assert_eq!(r.currencies[0].in_flight.to_string(), "-10.00");
        assert_eq!(r.total_balance.to_string(), "110.00");
    }

    #[test]
    fn a_transfer_after_the_outcome_scan_only_needs_its_outcome() {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        let history = vec![entry(1, "t2", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), history);
        let history = vec![entry(2, "t2", "credit", "10.00")];
        add_wallet(&mut a, "b", wallet("10.00", "0.00", 1), history);
        let r = settle_with(a, after_t2);
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!(
            (r.settle_passes, r.currencies[0].in_flight),
            (1, Amount::ZERO)
        );
    }

    #[test]
    fn a_wallet_created_during_the_scan_is_read_when_an_outcome_names_it() {
        let t2 = || outcome("t2", "COMPLETED", "a", "new", "10.00");
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[("t2", t2())]);
        let history = vec![entry(1, "t2", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), history);
        let r = settle_with(a, |plan| {
            assert_eq!(plan.wallets, BTreeSet::from(["new".to_string()]));
            let history = vec![entry(2, "t2", "credit", "10.00")];
            Reread {
                wallets: vec![("new".into(), read(wallet("10.00", "0.00", 1), history))],
                ..Reread::default()
            }
        });
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!((r.wallets_checked, r.settle_passes), (1, 1));
        // Wallets that do not exist, read again, confirm the finding and are not counted.
        let mut a = Auditor::default();
        add_outcomes(
            &mut a,
            &[("t3", outcome("t3", "COMPLETED", "x", "y", "1.00"))],
        );
        let r = settle_with(a, |plan| Reread {
            wallets: plan
                .wallets
                .iter()
                .map(|id| (id.clone(), read(Fields::new(), Vec::new())))
                .collect(),
            ..Reread::default()
        });
        assert_eq!((r.settle_passes, r.unsettled, r.wallets_checked), (1, 0, 0));
        assert_eq!(r.violations.len(), 2, "{:?}", lines(&r));
    }

    #[test]
    fn re_reads_stop_after_the_pass_limit_and_report_what_is_unsettled() {
        // The re-read never answers for b's history, so the finding never counts.
        let mut a = Auditor::default();
        add_wallet(
            &mut a,
            "a",
            wallet("90.00", "100.00", 1),
            vec![entry(1, "t1", "debit", "10.00")],
        );
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        add_outcomes(
            &mut a,
            &[("t1", outcome("t1", "COMPLETED", "a", "b", "10.00"))],
        );
        let calls = std::cell::Cell::new(0);
        let r = settle_with(a, |_| {
            calls.set(calls.get() + 1);
            Reread::default()
        });
        assert_eq!(calls.get(), SETTLE_PASSES_LIMIT);
        assert_eq!((r.settle_passes, r.unsettled), (SETTLE_PASSES_LIMIT, 1));
        assert!(
            lines(&r)
                .iter()
                .any(|l| l.starts_with("missing_entry key=t1 wallets=a,b: 0 credit(s)")),
            "{:?}",
            lines(&r)
        );
        // A re-read error is the audit's error.
        assert_eq!(straddled().settle(|_| Err("down")).unwrap_err(), "down");
    }

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

    #[test]
    fn violations_past_the_limit_are_only_counted() {
        let mut a = Auditor::default();
        for i in 0..VIOLATIONS_LISTED_MAX + 3 {
            add_wallet(&mut a, &format!("w{i}"), Fields::new(), Vec::new());
        }
        let r = a.report(a.check(), 0);
        assert_eq!(r.violations.len(), VIOLATIONS_LISTED_MAX);
        assert_eq!(r.violations_total, VIOLATIONS_LISTED_MAX as u64 + 3);
        assert!(!r.is_ok());
    }

    // ---- retention: checkpoints (hc, hb, hd) and the versions outcomes record (fv, tv) ----

    /// A wallet hash with a checkpoint: `hc` entries trimmed, summing to `hb` cents, `hd` of
    /// them deposits.
    fn trimmed(balance: &str, opening: &str, version: u64, hc: u64, hb: i64, hd: i64) -> Fields {
        let mut f = wallet(balance, opening, version);
        f.insert("hc".into(), hc.to_string());
        f.insert("hb".into(), hb.to_string());
        f.insert("hd".into(), hd.to_string());
        f
    }

    /// A COMPLETED outcome that made version `fv` of its sender and `tv` of its receiver.
    fn versioned(id: &str, from: &str, to: &str, amount: &str, fv: u64, tv: u64) -> Fields {
        let mut o = outcome(id, "COMPLETED", from, to, amount);
        o.insert("fv".into(), fv.to_string());
        o.insert("tv".into(), tv.to_string());
        o
    }

    /// An entry whose stream id says it was written at `ms`.
    fn timed(ms: u64, n: u32, id: &str, kind: &str, amount: &str) -> (String, Fields) {
        let (_, f) = entry(n, id, kind, amount);
        (format!("{ms}-{n}"), f)
    }

    /// a (opening 100.00): d1 deposit 3.00 (1), t1 debit 10.00 (2), t2 debit 5.00 (3), t3 debit
    /// 1.00 (4); its first two trimmed. b (opening 0): t1 (1), t2 (2), t3 (3) credits; its
    /// first trimmed. The hashes are given, the outcomes read first.
    fn trimmed_ledger(a_hash: Fields, b_hash: Fields, outcomes: &[(&str, Fields)]) -> Auditor {
        let mut a = Auditor::default();
        add_outcomes(&mut a, outcomes);
        let a_history = vec![
            entry(3, "t2", "debit", "5.00"),
            entry(4, "t3", "debit", "1.00"),
        ];
        add_wallet(&mut a, "a", a_hash, a_history);
        let b_history = vec![
            entry(2, "t2", "credit", "5.00"),
            entry(3, "t3", "credit", "1.00"),
        ];
        add_wallet(&mut a, "b", b_hash, b_history);
        a
    }

    fn trimmed_outcomes() -> Vec<(&'static str, Fields)> {
        vec![
            ("t1", versioned("t1", "a", "b", "10.00", 2, 1)),
            ("t2", versioned("t2", "a", "b", "5.00", 3, 2)),
            ("t3", versioned("t3", "a", "b", "1.00", 4, 3)),
        ]
    }

    fn sound_a() -> Fields {
        trimmed("87.00", "100.00", 4, 2, -700, 300)
    }

    fn sound_b() -> Fields {
        trimmed("16.00", "0.00", 3, 1, 1000, 0)
    }

    #[test]
    fn a_trimmed_ledger_audits_clean_and_counts_the_moves_before_the_window() {
        let r = settle_quiet(trimmed_ledger(sound_a(), sound_b(), &trimmed_outcomes()));
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!((r.wallets_with_checkpoint, r.entries_trimmed), (2, 3));
        assert_eq!(r.entries_before_window, 2, "t1's debit and credit");
        assert_eq!(r.history_entries, 4);
        let usd = &r.currencies[0];
        assert_eq!(
            (usd.deposits.to_string(), usd.trimmed_deposits.to_string()),
            ("3.00".into(), "3.00".into())
        );
        assert!(
            r.horizon
                .starts_with("2 wallet(s) have a checkpoint, 3 entries trimmed"),
            "{}",
            r.horizon
        );
        assert!(
            r.horizon.contains("only through the checkpoints"),
            "{}",
            r.horizon
        );
        assert_eq!(settle_quiet(sound()).horizon, horizon(0, 0, 0));
    }

    #[test]
    fn a_doctored_checkpoint_is_named_and_money_created_with_its_balance_breaks_the_totals() {
        // hb changed by hand: the wallet no longer adds up.
        let doctored = trimmed("87.00", "100.00", 4, 2, -600, 300);
        let r = settle_quiet(trimmed_ledger(doctored, sound_b(), &trimmed_outcomes()));
        assert_eq!(
            lines(&r),
            [
                "balance_mismatch wallets=a: wallet:a: balance 87.00 != opening 100.00 + checkpoint \
              -6.00 (2 trimmed) + history -6.00"
            ]
        );
        // hb and the balance changed together: the wallet adds up, the currency does not.
        let created = trimmed("88.00", "100.00", 4, 2, -600, 300);
        let r = settle_quiet(trimmed_ledger(created, sound_b(), &trimmed_outcomes()));
        assert_eq!(
            lines(&r),
            ["totals_mismatch: USD: total balance 104.00 != openings 100.00 + deposits 3.00"]
        );
        // hc changed: the version rule.
        let moved = trimmed("87.00", "100.00", 4, 3, -700, 300);
        let r = settle_quiet(trimmed_ledger(moved, sound_b(), &trimmed_outcomes()));
        let l = lines(&r);
        assert!(
            l.contains(
                &"version_mismatch wallets=a: wallet:a: version 4 != 3 trimmed + 2 history \
                         entries"
                    .to_string()
            ),
            "{l:?}"
        );
    }

    #[test]
    fn an_entry_after_the_checkpoint_must_be_in_the_window_once_at_its_number() {
        // t3's debit is missing from a's window (balance and version moved to match).
        let mut a = Auditor::default();
        add_outcomes(&mut a, &trimmed_outcomes());
        let history = vec![entry(3, "t2", "debit", "5.00")];
        add_wallet(
            &mut a,
            "a",
            trimmed("88.00", "100.00", 3, 2, -700, 300),
            history,
        );
        let history = vec![
            entry(2, "t2", "credit", "5.00"),
            entry(3, "t3", "credit", "1.00"),
        ];
        add_wallet(&mut a, "b", sound_b(), history);
        let l = lines(&settle_quiet(a));
        assert!(
            l.contains(
                &"missing_entry key=t3 wallets=a,b: 0 debit(s) in wallet:a:log, the \
                         outcome says 1.00"
                    .to_string()
            ),
            "{l:?}"
        );
        // t2 and t3 recorded the other way round: each entry is not the one its outcome made.
        let mut swapped = trimmed_outcomes();
        swapped[1].1.insert("fv".into(), "4".into());
        swapped[2].1.insert("fv".into(), "3".into());
        let r = settle_quiet(trimmed_ledger(sound_a(), sound_b(), &swapped));
        assert_eq!(
            lines(&r),
            [
                "misplaced_entry key=t2 wallets=a,b: debit 5.00 in wallet:a:history 1-3 is entry 3 \
                 of wallet:a, the outcome says entry 4",
                "misplaced_entry key=t3 wallets=a,b: debit 1.00 in wallet:a:history 1-4 is entry 4 \
                 of wallet:a, the outcome says entry 3",
            ]
        );
    }

    #[test]
    fn a_trimmed_entry_applied_again_inside_the_window_is_a_repeated_entry() {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &trimmed_outcomes());
        let history = vec![
            entry(3, "t2", "debit", "5.00"),
            entry(4, "t3", "debit", "1.00"),
            entry(5, "t1", "debit", "10.00"),
        ];
        add_wallet(
            &mut a,
            "a",
            trimmed("77.00", "100.00", 5, 2, -700, 300),
            history,
        );
        add_wallet(
            &mut a,
            "b",
            sound_b(),
            vec![
                entry(2, "t2", "credit", "5.00"),
                entry(3, "t3", "credit", "1.00"),
            ],
        );
        let l = lines(&settle_quiet(a));
        assert!(
            l.contains(
                &"repeated_entry key=t1 wallets=a,b: debit applied 2 times, expected 1: \
                         debit 10.00 in wallet:a:history 1-5 (and 1 trimmed into the checkpoint of \
                         wallet:a)"
                    .to_string()
            ),
            "{l:?}"
        );
    }

    #[test]
    fn an_outcome_without_versions_may_lack_only_entries_older_than_the_window() {
        // a's window starts at 2000 ms; t_old (decided at 1000 ms) is trimmed on both sides.
        let ledger = |processed_at: &str| {
            let mut a = Auditor::default();
            let mut old = outcome("t_old", "COMPLETED", "a", "b", "10.00");
            old.insert("processed_at".into(), processed_at.into());
            add_outcomes(&mut a, &[("t_old", old)]);
            let history = vec![timed(2000, 1, "d1", "deposit", "1.00")];
            add_wallet(
                &mut a,
                "a",
                trimmed("91.00", "100.00", 2, 1, -1000, 0),
                history,
            );
            let history = vec![timed(2000, 2, "d2", "deposit", "1.00")];
            add_wallet(
                &mut a,
                "b",
                trimmed("11.00", "0.00", 2, 1, 1000, 0),
                history,
            );
            settle_quiet(a)
        };
        let r = ledger("1.000");
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!(r.entries_before_window, 2);
        // Decided after the windows started: its entries had to be in them.
        let r = ledger("3.000");
        let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            [ViolationKind::MissingEntry, ViolationKind::MissingEntry]
        );
    }

    #[test]
    fn entries_older_than_the_outcome_ttl_without_an_outcome_count_as_expired() {
        let ledger = |settings: AuditSettings| {
            let mut a = Auditor::new(settings, 100_000);
            add_outcomes(&mut a, &[]);
            let history = vec![
                timed(1_000, 1, "old", "debit", "1.00"),
                timed(95_000, 2, "new", "debit", "1.00"),
            ];
            add_wallet(&mut a, "a", wallet("98.00", "100.00", 2), history);
            let history = vec![
                timed(1_000, 1, "old", "credit", "1.00"),
                timed(95_000, 2, "new", "credit", "1.00"),
            ];
            add_wallet(&mut a, "b", wallet("2.00", "0.00", 2), history);
            a.settle(|plan| {
                Ok::<_, ()>(Reread {
                    outcomes: plan
                        .outcomes
                        .iter()
                        .map(|k| (k.clone(), Fields::new()))
                        .collect(),
                    ..Reread::default()
                })
            })
            .unwrap()
        };
        let strict = ledger(AuditSettings::default());
        let kinds: Vec<ViolationKind> = strict.violations.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, [ViolationKind::EntryWithoutOutcome; 2]);
        let ttl = AuditSettings {
            outcome_ttl_ms: Some(10_000),
        };
        let r = ledger(ttl);
        assert_eq!((r.outcomes_expired, r.outcome_ttl_ms), (2, Some(10_000)));
        assert_eq!(
            lines(&r),
            [
                "entry_without_outcome key=new wallets=a,b: no transfer:new for debit 1.00 in \
              wallet:a:history 95000-2, credit 1.00 in wallet:b:history 95000-2"
            ]
        );
    }

    /// Live, with trims: t (a pays b 10.00, versions 1 and 6) ran after the outcome scan,
    /// between a's snapshot and b's; by b's snapshot b's window (3 deposits at 1600 ms) had
    /// moved past t's credit, into the checkpoint. The scan started at 1000 ms.
    fn hidden_in_a_checkpoint() -> Auditor {
        let mut a = Auditor::new(AuditSettings::default(), 1_000);
        add_outcomes(&mut a, &[]);
        add_wallet(&mut a, "a", wallet("100.00", "100.00", 0), Vec::new());
        let history = (7..=9).map(|n| timed(1_600, n, &format!("d{n}"), "deposit", "1.00"));
        add_wallet(
            &mut a,
            "b",
            trimmed("18.00", "0.00", 9, 6, 1500, 500),
            history.collect(),
        );
        a
    }

    #[test]
    fn a_transfer_hidden_in_a_checkpoint_during_the_scan_is_found_by_the_outcome_rescan() {
        let before = hidden_in_a_checkpoint();
        let l = checked(&before);
        assert_eq!(
            l,
            ["totals_mismatch: USD: total balance 118.00 != openings 100.00 + deposits 8.00"],
            "without its outcome, t's credit is money from nowhere"
        );
        assert!(before.needs_outcome_rescan());
        // Rescanned, t's outcome says its debit is a's entry 1: read after a's snapshot.
        let t = || versioned("t", "a", "b", "10.00", 1, 6);
        for (a_now, a_history, passes) in [
            // the debit is there,
            (
                wallet("90.00", "100.00", 1),
                vec![timed(1_500, 1, "t", "debit", "10.00")],
                1,
            ),
            // or already trimmed (two deposits later): its money in flight from the outcome.
            (
                trimmed("92.00", "100.00", 3, 2, -900, 100),
                vec![timed(1_700, 3, "d3", "deposit", "1.00")],
                1,
            ),
        ] {
            let mut a = hidden_in_a_checkpoint();
            add_outcomes(&mut a, &[("t", t())]);
            let r = settle_with(a, |plan| {
                assert_eq!(plan.histories, BTreeMap::from([("a".to_string(), None)]));
                Reread {
                    histories: vec![("a".into(), read(a_now.clone(), a_history.clone()))],
                    ..Reread::default()
                }
            });
            assert!(r.is_ok(), "{:?}", lines(&r));
            assert_eq!((r.settle_passes, r.entries_before_window), (passes, 1));
            assert_eq!(r.currencies[0].in_flight.to_string(), "-10.00");
        }
    }

    #[test]
    fn an_outcome_made_after_the_snapshots_of_both_its_wallets_is_left_to_the_next_audit() {
        let mut a = Auditor::new(AuditSettings::default(), 1_000);
        add_outcomes(&mut a, &[]);
        add_wallet(&mut a, "a", wallet("100.00", "100.00", 0), Vec::new());
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        assert!(!a.needs_outcome_rescan(), "no checkpoint");
        add_outcomes(&mut a, &[("t", versioned("t", "a", "b", "10.00", 1, 1))]);
        let r = settle_quiet(a);
        assert!(r.is_ok(), "{:?}", lines(&r));
        // Read before the snapshots, the same outcome lacks its entries.
        let mut a = Auditor::new(AuditSettings::default(), 1_000);
        add_outcomes(&mut a, &[("t", versioned("t", "a", "b", "10.00", 1, 1))]);
        add_wallet(&mut a, "a", wallet("100.00", "100.00", 0), Vec::new());
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        assert_eq!(settle_quiet(a).violations.len(), 2);
    }
}
