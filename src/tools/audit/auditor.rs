//! The [`Auditor`]'s state: every wallet and outcome record as read, each with when it was
//! read (its epoch), and the credit markers of a cluster; fed with [`Auditor::ingest`] (the
//! full scan), [`Auditor::ingest_reread`] and [`Auditor::ingest_markers`]. Also whether the
//! outcomes must be scanned again ([`Auditor::needs_outcome_rescan`]) and what one check
//! found ([`Findings`]).
//!
//! Owns the order of the reads (epochs) and what a record once read stays. Does no I/O. Does
//! not check anything itself: the checks are `transfers` (per transfer, deposit and key) and
//! `settle` (the whole check, the re-read loop, the report), each an `impl Auditor` of its
//! own.

use std::collections::BTreeMap;

use crate::engine::keyspace::KeySpace;
use crate::engine::store::keys;
use crate::engine::transfer::{TransferOutcome, parse_outcome};
use crate::tools::audit::input::{AuditSettings, CreditMarker, Fields, Plan, Reread, Snapshot};
use crate::tools::audit::report::Violation;
use crate::tools::audit::wallet::{WalletView, parse_late, wallet_view};

/// How far behind Redis's clock an entry's time may be: a log line carries the time of the
/// worker that wrote it (a stream entry carried Redis's), so the check whether a window starts
/// after the scan's start leans that far towards a rescan (which only costs a read).
pub const ENTRY_CLOCK_ALLOWANCE_MS: u64 = 60_000;

#[derive(Debug)]
pub(super) enum OutcomeState {
    Absent,
    Corrupt(String),
    Read(Box<TransferOutcome>),
}

#[derive(Debug)]
pub(super) struct OutcomeView {
    /// When it was last read.
    pub(super) epoch: u64,
    /// When it was first read as it is: it existed then.
    pub(super) first_epoch: u64,
    pub(super) state: OutcomeState,
}

/// Sums of one currency, in minor units (wide enough never to overflow).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sums {
    pub(super) balance: i128,
    pub(super) opening: i128,
    pub(super) deposits: i128,
    pub(super) trimmed_deposits: i128,
    pub(super) in_flight: i128,
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
    pub(super) totals: BTreeMap<&'static str, Sums>,
}

/// The audit's state: every wallet and outcome record as read. Fed with [`Auditor::ingest`]
/// (the full scan) and [`Auditor::ingest_reread`], checked with [`Auditor::check`], finished
/// with [`Auditor::settle`]. Does no I/O.
#[derive(Debug, Default)]
pub struct Auditor {
    pub(super) wallets: BTreeMap<String, WalletView>,
    pub(super) outcomes: BTreeMap<String, OutcomeView>,
    /// Counts reads, in the order they happened.
    pub(super) epoch: u64,
    pub(super) settings: AuditSettings,
    /// When the scan started (Redis time, ms); `None`: unknown.
    pub(super) started_ms: Option<u64>,
    /// A Redis Cluster: outcomes are keyed `{sender}:key`, a re-read reads the outcomes
    /// before the histories (two moments, not one), and credit markers are known.
    pub(super) across_shards: bool,
    /// Credit markers of cross-slot transfers: (receiver, sender, idempotency key) -> value.
    pub(super) markers: BTreeMap<(String, String, String), String>,
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

    /// How this audit spells keys in what it reports: a cluster's hash-tagged names, or one
    /// Redis's.
    pub(super) fn space(&self) -> KeySpace {
        match self.across_shards {
            true => KeySpace::Cluster,
            false => KeySpace::Standalone,
        }
    }

    /// Takes in the next part of the full scan, read after every part before it.
    pub fn ingest(&mut self, snapshot: Snapshot) {
        self.epoch += 1;
        for (id, read) in snapshot.wallets {
            let view = wallet_view(self.space(), &id, read, snapshot.listed, self.epoch);
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
        let space = self.space();
        for (id, read) in reread.histories {
            let Some(view) = self.wallets.get_mut(&id) else {
                continue;
            };
            let (now, late) = parse_late(space, &id, read);
            view.late = late;
            view.late_trimmed = now.map(|w| w.checkpoint.entries);
            view.late_epoch = self.epoch;
        }
        for (id, read) in reread.wallets {
            if self.wallets.get(&id).is_some_and(|v| v.scanned) {
                continue;
            }
            let (wallet, late) = parse_late(space, &id, read);
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
}
