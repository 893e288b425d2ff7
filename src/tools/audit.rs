//! The ledger audit's checks: what [`crate::tools::ops::audit`] read, turned into violations.
//!
//! Owns the ledger invariants and how they are checked, without I/O:
//!
//! - per wallet: it parses; no negative balance; balance = opening_balance + signed sum of its
//!   history; version = number of history entries;
//! - per transfer (history entries counted per idempotency key, kind and wallet, never kept in
//!   a map that overwrites): every COMPLETED outcome has exactly one debit on its sender and
//!   one credit on its receiver, of its amount, in wallets of its currency; a FAILED outcome has
//!   no entries; no transfer entry exists without an outcome. Entries written before the
//!   idempotency key was recorded match the outcome by its transfer_id instead;
//! - per deposit: its id appears once;
//! - per currency: the total of balances = openings + deposits.
//!
//! Owns, too, how a live ledger is judged ([`Auditor::settle`]). The full scan reads every
//! outcome record, then each wallet whole (hash and history at one moment), so the wallets are
//! read at different moments while transfers run. Those snapshots are the *cut*: each wallet
//! is checked and summed as read, and the transfers checked are those with an entry in a
//! snapshot or an outcome in the scan. A transfer that finished during the scan can look half
//! done; such a finding (a missing entry, an entry without an outcome) counts only once the
//! part that could be late was read after the part that proves it: a history after the
//! outcome that names it, an outcome after the entries that need it (an outcome and its
//! entries are written in one transaction, and histories only grow). Until then the audit
//! asks for that part again ([`Plan`]): the history after the snapshot's last entry, or the
//! outcome record; later entries count only for transfers of the cut, and the totals take them
//! as money in flight. Bounded by [`SETTLE_PASSES_LIMIT`] and the re-read limits.
//!
//! Does not read Redis: `ops::audit` does the reads and hands them over as a [`Snapshot`] (the
//! full scan) or a [`Reread`] (one MULTI/EXEC per pass). Does not change data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::engine::message::Status;
use crate::engine::money::Amount;
use crate::engine::store::keys;
use crate::engine::transfer::{TransferOutcome, parse_outcome};
use crate::engine::wallet::{HistoryKind, Wallet, parse_history_fields, parse_wallet};

/// Most violations listed one by one; after that they are only counted.
pub const VIOLATIONS_LISTED_MAX: usize = 1_000;
/// Most re-read passes after the full scan; what is still unconfirmed after them is reported.
pub const SETTLE_PASSES_LIMIT: u32 = 8;
/// Most wallet histories read again in one pass (the rest wait for the next pass).
pub const REREAD_WALLETS_LIMIT: usize = 500;
/// Most outcome records read again in one pass (the rest wait for the next pass).
pub const REREAD_OUTCOMES_LIMIT: usize = 2_000;

/// A hash as HGETALL returns it.
pub type Fields = HashMap<String, String>;

/// A history stream as XRANGE returns it: (stream id, fields) per entry.
pub type RawHistory = Vec<(String, Fields)>;

/// One wallet as read: its `wallet:{id}` hash and its `wallet:{id}:history` stream, each or
/// why it could not be read (a key of the wrong type).
#[derive(Debug, Clone)]
pub struct WalletRead {
    /// HGETALL of `wallet:{id}` (empty when there is none).
    pub hash: Result<Fields, String>,
    /// XRANGE of `wallet:{id}:history`.
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
    /// Wallet histories from just after their snapshot's last stream id (`None`: from the
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
    /// The history entries after the snapshot's last one (or why they could not be read).
    pub histories: Vec<(String, Result<RawHistory, String>)>,
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
    /// balance != opening_balance + history.
    BalanceMismatch,
    /// version != number of history entries.
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
    /// Money moved into or out of a wallet of another currency.
    CurrencyMismatch,
    /// A FAILED transfer has history entries.
    FailedWithEntries,
    /// A debit or credit without an outcome record.
    EntryWithoutOutcome,
    /// A deposit id appears more than once.
    RepeatedDeposit,
    /// The total of balances != openings + deposits, in one currency.
    TotalsMismatch,
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
            ViolationKind::CurrencyMismatch => "currency_mismatch",
            ViolationKind::FailedWithEntries => "failed_with_entries",
            ViolationKind::EntryWithoutOutcome => "entry_without_outcome",
            ViolationKind::RepeatedDeposit => "repeated_deposit",
            ViolationKind::TotalsMismatch => "totals_mismatch",
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
    /// The sum of the deposits.
    #[serde(serialize_with = "as_text")]
    pub deposits: Amount,
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
    /// History entries read over all wallets.
    pub history_entries: u64,
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
    /// Every violation found; at most [`VIOLATIONS_LISTED_MAX`] are listed.
    pub violations_total: u64,
    /// The violations listed, each naming its keys; empty when the ledger is sound.
    pub violations: Vec<Violation>,
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
    epoch: u64,
    state: OutcomeState,
}

/// Sums of one currency, in minor units (wide enough never to overflow).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    balance: i128,
    opening: i128,
    deposits: i128,
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

/// The transfers checked: entries by what moved them, the outcomes claiming each group, and
/// the entries among them read after their wallet's snapshot.
struct Cut<'a> {
    groups: BTreeMap<Mover, Vec<Seen<'a>>>,
    claims: BTreeMap<Mover, Claimants<'a>>,
    late: Vec<Seen<'a>>,
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
}

impl Auditor {
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
    pub fn ingest_reread(&mut self, reread: Reread) {
        self.epoch += 1;
        for (id, history) in reread.histories {
            let Some(view) = self.wallets.get_mut(&id) else {
                continue;
            };
            view.late = history.map_or_else(|_| Vec::new(), |h| parse_late(&h));
            view.late_epoch = self.epoch;
        }
        for (id, read) in reread.wallets {
            if self.wallets.get(&id).is_some_and(|v| v.scanned) {
                continue;
            }
            let view = WalletView {
                wallet: read
                    .hash
                    .ok()
                    .and_then(|f| parse_wallet(&id, &f).ok().flatten()),
                late: read.history.map_or_else(|_| Vec::new(), |h| parse_late(&h)),
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
            self.outcomes.insert(key, OutcomeView { epoch, state });
        }
    }

    /// Checks everything read so far.
    pub fn check(&self) -> Findings {
        let cut = self.cut();
        let mut out = Findings {
            totals: self.totals(&cut.late),
            ..Findings::default()
        };
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
        let mut violations = findings.violations;
        let violations_total = violations.len() as u64;
        violations.truncate(VIOLATIONS_LISTED_MAX);
        AuditReport {
            wallets_checked: scanned().count() as u64,
            transfers_checked: checked,
            transfers_completed: completed,
            history_entries: scanned().map(|v| v.stream_len).sum(),
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

    /// Per currency: balances, openings and deposits of the snapshots that parse, and the
    /// `late` entries as money in flight.
    fn totals(&self, late: &[Seen<'_>]) -> BTreeMap<&'static str, Sums> {
        let mut out: BTreeMap<&'static str, Sums> = BTreeMap::new();
        for view in self.wallets.values().filter(|v| v.scanned) {
            let Some(w) = &view.wallet else { continue };
            let sums = out.entry(w.currency.as_str()).or_default();
            sums.balance += i128::from(w.balance.minor());
            sums.opening += i128::from(w.opening_balance.minor());
            sums.deposits += view
                .entries
                .iter()
                .filter(|e| e.kind == HistoryKind::Deposit)
                .map(|e| i128::from(e.amount.minor()))
                .sum::<i128>();
        }
        for s in late {
            let Some(w) = self.wallets.get(s.wallet).and_then(|v| v.wallet.as_ref()) else {
                continue;
            };
            let signed = s.entry.kind.signed(s.entry.amount);
            out.entry(w.currency.as_str()).or_default().in_flight += i128::from(signed.minor());
        }
        out
    }

    /// A deposit id that appears more than once in the snapshots.
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
    /// them, the outcomes claiming each group, and the later entries of those groups.
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
        let mut late = Vec::new();
        for (id, view) in &self.wallets {
            for i in transfers(&view.late) {
                let (wallet, entry, epoch) = (id.as_str(), &view.late[i], view.late_epoch);
                if groups.contains_key(&entry.mover) || claims.contains_key(&entry.mover) {
                    late.push(Seen {
                        wallet,
                        entry,
                        epoch,
                    });
                }
            }
        }
        for s in &late {
            groups.entry(s.entry.mover.clone()).or_default().push(*s);
        }
        Cut {
            groups,
            claims,
            late,
        }
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
            let by_key = Mover::Key(key.clone());
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
        for mover in movers {
            if let Mover::Key(key) = mover
                && let Some(OutcomeView {
                    state: OutcomeState::Corrupt(_),
                    ..
                }) = self.outcomes.get(key)
            {
                continue; // reported as corrupt
            }
            let seen = cut.groups.get(mover).map_or(&[][..], Vec::as_slice);
            let claimants = cut.claims.get(mover).map_or(&[][..], Vec::as_slice);
            let name = Name::of(mover, seen, claimants);
            let completed: Claimants<'_> = claimants
                .iter()
                .copied()
                .filter(|(_, o)| o.status == Status::Completed)
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
            .map(|o| o.epoch)
            .max()
            .unwrap_or(0);
        for (violation, short) in check_slots(completed, seen, name) {
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
                    keys::history(s.wallet),
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
        } else {
            let outcome = match mover {
                Mover::Key(key) => keys::outcome(key),
                Mover::Legacy(id) => format!("outcome with transfer_id {id}"),
            };
            let detail = format!("no {outcome} for {}", places(seen));
            out.violations
                .push(name.violation(ViolationKind::EntryWithoutOutcome, detail));
            let entries_epoch = seen.iter().map(|s| s.epoch).max().unwrap_or(0);
            if let Mover::Key(key) = mover
                && self.outcomes.get(key).map_or(0, |o| o.epoch) < entries_epoch
            {
                out.plan.outcomes.insert(key.clone());
                out.unconfirmed += 1;
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

/// Expected against seen debits and credits of a group claimed by COMPLETED `completed`:
/// per (kind, wallet), as many entries as outcomes, of their amounts. Each violation comes
/// with the wallet that lacks an entry, when that is what it is.
fn check_slots<'a>(
    completed: &[(&'a str, &'a TransferOutcome)],
    seen: &[Seen<'a>],
    name: &Name,
) -> Vec<(Violation, Option<&'a str>)> {
    type Slot<'a> = (u8, &'a str);
    let rank = |kind: HistoryKind| u8::from(kind != HistoryKind::Debit);
    let mut expected: BTreeMap<Slot<'a>, Vec<Amount>> = BTreeMap::new();
    for (_, o) in completed {
        expected
            .entry((0, &o.from_user))
            .or_default()
            .push(o.amount);
        expected.entry((1, &o.to_user)).or_default().push(o.amount);
    }
    let mut observed: BTreeMap<Slot<'a>, Vec<Seen<'a>>> = BTreeMap::new();
    for s in seen {
        observed
            .entry((rank(s.entry.kind), s.wallet))
            .or_default()
            .push(*s);
    }
    let slots: BTreeSet<Slot<'a>> = expected.keys().chain(observed.keys()).copied().collect();
    let mut out = Vec::new();
    for slot in slots {
        let mut want = expected.get(&slot).cloned().unwrap_or_default();
        let got = observed.get(&slot).map_or(&[][..], Vec::as_slice);
        let mut amounts: Vec<Amount> = got.iter().map(|s| s.entry.amount).collect();
        want.sort();
        amounts.sort();
        let (kind, history) = (
            ["debit", "credit"][usize::from(slot.0)],
            keys::history(slot.1),
        );
        let (what, detail) = if got.len() < want.len() {
            let detail = format!(
                "{} {kind}(s) in {history}, the outcome says {}",
                got.len(),
                list(&want)
            );
            (ViolationKind::MissingEntry, detail)
        } else if got.len() > want.len() && want.is_empty() {
            let detail = format!("the outcome moves no money through this: {}", places(got));
            (ViolationKind::UnexpectedEntry, detail)
        } else if got.len() > want.len() {
            let times = got.len();
            let detail = format!(
                "{kind} applied {times} times, expected {}: {}",
                want.len(),
                places(got)
            );
            (ViolationKind::RepeatedEntry, detail)
        } else if amounts != want {
            let detail = format!(
                "{kind} in {history} is {}, the outcome says {}",
                list(&amounts),
                list(&want)
            );
            (ViolationKind::AmountMismatch, detail)
        } else {
            continue;
        };
        let short = (what == ViolationKind::MissingEntry).then_some(slot.1);
        out.push((name.violation(what, detail), short));
    }
    out
}

/// Parses one wallet read and finds what is wrong with the wallet on its own.
fn wallet_view(id: &str, read: WalletRead, listed: bool, epoch: u64) -> WalletView {
    let mut problems = Vec::new();
    let (entries, stream_len, last_id) = match read.history {
        Ok(history) => {
            let entries = parse_entries(id, &history, &mut problems);
            let last_id = history.last().map(|(stream_id, _)| stream_id.clone());
            (entries, Some(history.len() as u64), last_id)
        }
        Err(e) => {
            let detail = format!("{}: not a readable stream: {e}", keys::history(id));
            let kind = ViolationKind::HistoryUnreadable;
            problems.push(Violation::wallet(kind, id, detail));
            (Vec::new(), None, None)
        }
    };
    let key = keys::wallet(id);
    let parsed = read
        .hash
        .map_err(|e| format!("{key}: {e}"))
        .and_then(|f| parse_wallet(id, &f).map_err(|e| e.to_string()));
    let wallet = match parsed {
        Ok(Some(w)) => Some(w),
        Ok(None) => {
            if listed || stream_len > Some(0) {
                let entries = stream_len.unwrap_or(0);
                let detail = format!(
                    "{key} does not exist (listed in wallets:all: {listed}, history entries: \
                     {entries})"
                );
                problems.push(Violation::wallet(ViolationKind::WalletMissing, id, detail));
            }
            None
        }
        Err(e) => {
            problems.push(Violation::wallet(ViolationKind::WalletCorrupt, id, e));
            None
        }
    };
    if let Some(w) = &wallet {
        problems.extend(balance_violations(id, w, &entries, stream_len));
    }
    WalletView {
        scanned: true,
        epoch,
        wallet,
        last_id,
        entries,
        stream_len: stream_len.unwrap_or(0),
        broken: stream_len.is_none(),
        problems,
        ..WalletView::default()
    }
}

/// The readable entries of one history; each unreadable one is a violation.
fn parse_entries(id: &str, history: &RawHistory, problems: &mut Vec<Violation>) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(history.len());
    for (stream_id, fields) in history {
        match parse_entry(stream_id, fields) {
            Some(e) => entries.push(e),
            None => {
                let detail = format!(
                    "{} {stream_id}: unreadable entry {fields:?}",
                    keys::history(id)
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

/// The readable entries read after a snapshot (an unreadable one was never in the cut).
fn parse_late(history: &RawHistory) -> Vec<Entry> {
    history
        .iter()
        .filter_map(|(stream_id, fields)| parse_entry(stream_id, fields))
        .collect()
}

/// One history stream entry, in either format ([`parse_history_fields`]): transfer id, kind,
/// amount, and the idempotency key when recorded. The long format needs only `transfer_id`,
/// `kind` and `amount` here (the original system's entries may lack the rest).
fn parse_entry(stream_id: &str, f: &Fields) -> Option<Entry> {
    let (transfer_id, key, kind, amount) = if f.contains_key("d") {
        let e = parse_history_fields(stream_id, f).ok()?;
        (e.transfer_id, e.idempotency_key, e.kind, e.amount)
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
    })
}

/// The per-wallet invariants: no negative balance; when the history was read (`stream_len`),
/// version = number of entries, and when every entry was readable, balance = opening +
/// history.
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
    if readable && i128::from(w.opening_balance.minor()) + net != i128::from(w.balance.minor()) {
        let detail = format!(
            "{key}: balance {} != opening {} + history {}",
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
    if w.version != stream_len {
        let detail = format!(
            "{key}: version {} != {stream_len} history entries",
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
                keys::history(s.wallet),
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
            "history_unreadable wallets=noise: wallet:noise:history: not a readable stream: \
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
            "missing_entry key=t1 wallets=a,b: 0 credit(s) in wallet:b:history, the outcome \
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
                histories: vec![("b".into(), Ok(Vec::new()))],
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
            let late = match (id.as_str(), after) {
                ("a", None) => vec![
                    entry(1, "t2", "debit", "10.00"),
                    entry(3, "t3", "credit", "1.00"),
                ],
                ("b", Some(last)) if last == "1-2" => vec![entry(4, "t3", "debit", "1.00")],
                other => panic!("unexpected history read {other:?}"),
            };
            (id.clone(), Ok(late))
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
}
