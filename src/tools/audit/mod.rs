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
//!   lack an entry only when the wallet was trimmed and the outcome is not younger than the
//!   window's first entry (a tie in milliseconds cannot be ordered). A FAILED outcome has no
//!   entries; no transfer entry exists without an outcome (unless
//!   [`AuditSettings::outcome_ttl_ms`] says the outcome expired: then it is counted).
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
//!
//! One file per concern, the dependencies pointing one way (leaves first): `report` (the
//! report and the violations) and `input` (what the reads hand over) are leaves; `wallet`
//! (the per-wallet checks) and `slots` (one transfer's entries against its outcomes, slot by
//! slot) are pure functions over them; `auditor` holds the state and takes the reads in;
//! `transfers` (per transfer, deposit and key) and `settle` (the whole check, the re-read
//! loop, the report) are the checks, each an `impl Auditor`. This file holds only the modules
//! and the public paths (`tools::audit::X`); nothing in the folder imports from it.

mod auditor;
#[cfg(test)]
mod fixtures;
mod input;
mod report;
mod settle;
mod slots;
mod transfers;
mod wallet;

pub use input::AuditSettings;
pub use report::{AuditReport, CurrencyTotals, VIOLATIONS_LISTED_MAX, Violation, ViolationKind};

// The auditor's machinery: what `tools::ops` feeds it and the limits of its passes. Public for
// the repository's tests, which drive it with reads of their own; not part of the API.
#[doc(hidden)]
pub use auditor::{Auditor, ENTRY_CLOCK_ALLOWANCE_MS, Findings};
#[doc(hidden)]
pub use input::{
    CreditMarker, Fields, Plan, REREAD_OUTCOMES_LIMIT, REREAD_WALLETS_LIMIT, RawHistory, Reread,
    Snapshot, WalletRead,
};
#[doc(hidden)]
pub use report::LEFTOVER_MARKERS_LISTED_MAX;
#[doc(hidden)]
pub use settle::SETTLE_PASSES_LIMIT;
