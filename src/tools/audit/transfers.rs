//! The checks of what moved money between wallets: the cut (the transfers checked: the
//! snapshots' entries and the outcomes that claim them), where each entry of a COMPLETED or
//! PENDING outcome stands (trimmed, maybe trimmed, trimmed since, in the window), the entries
//! no COMPLETED outcome claims (a FAILED outcome's, without an outcome, expired), deposits
//! applied twice and idempotency keys reused; and what to read again before a finding counts.
//!
//! Owns these checks, as an `impl Auditor`. Pure: no I/O. Does not judge one slot (`slots`),
//! parse wallets (`wallet`), or total the currencies and settle (`settle`).

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::message::{Status, fingerprint};
use crate::engine::money::Amount;
use crate::engine::store::keys;
use crate::engine::transfer::TransferOutcome;
use crate::engine::wallet::HistoryKind;
use crate::tools::audit::auditor::{Auditor, Findings, OutcomeState};
use crate::tools::audit::input::Plan;
use crate::tools::audit::report::{Violation, ViolationKind};
use crate::tools::audit::slots::{Expected, Name, Seen, Slot, check_slots, places, rank, unique};
use crate::tools::audit::wallet::{Entry, Mover, entry_key, stream_ms};

/// Outcomes that claim one group of entries: (idempotency key, outcome).
type Claimants<'a> = Vec<(&'a str, &'a TransferOutcome)>;

/// The transfers checked: entries by what moved them, the outcomes claiming each group, the
/// entries among them read after their wallet's snapshot, the money of those made after the
/// snapshot and trimmed before the re-read (wallet, signed amount), and the groups claimed
/// only by transfers made after every snapshot they touch (not in the cut).
pub(super) struct Cut<'a> {
    pub(super) groups: BTreeMap<Mover, Vec<Seen<'a>>>,
    pub(super) claims: BTreeMap<Mover, Claimants<'a>>,
    pub(super) late: Vec<Seen<'a>>,
    pub(super) trimmed_late: Vec<(&'a str, Amount)>,
    pub(super) after: BTreeSet<Mover>,
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

impl Auditor {
    /// A deposit id that appears more than once in the snapshots.
    /// Idempotency keys recorded for more than one request (different fingerprints): one Redis
    /// cannot hold two (one `transfer:KEY`), a cluster can (`transfer:{sender}:KEY`) when its
    /// claim failed.
    pub(super) fn key_reuse_violations(&self) -> Vec<Violation> {
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

    pub(super) fn deposit_violations(&self) -> Vec<Violation> {
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
                detail: format!(
                    "deposit applied {} times: {}",
                    s.len(),
                    places(self.space(), &s)
                ),
            })
            .collect()
    }

    /// The transfers of the cut: the debits and credits of the snapshots, grouped by what moved
    /// them, the outcomes claiming each group, and the later entries of those groups (and of
    /// transfers whose money a snapshot holds only in its checkpoint).
    pub(super) fn cut(&self) -> Cut<'_> {
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
            // No version recorded: maybe older than the window when decided before its first
            // entry or in the same millisecond (a tie cannot be ordered: the outcome's time and
            // its entries' are two readings of the clock).
            return match view.window {
                Some((trimmed, _))
                    if trimmed > 0
                        && view.first_ms.is_none_or(|first| processed_at_ms <= first) =>
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
    pub(super) fn check_transfers(&self, cut: &Cut<'_>, out: &mut Findings) {
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
            let name = Name::of(self.space(), mover, seen, claimants);
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
                    entry_key(self.space(), s.wallet, &s.entry.stream_id),
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
            let detail = format!(
                "a FAILED transfer has history entries: {}",
                places(self.space(), seen)
            );
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
            let detail = format!("no {outcome} for {}", places(self.space(), seen));
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
                places(self.space(), seen)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::audit::fixtures::*;
    use crate::tools::audit::input::{AuditSettings, Fields, Reread};

    #[test]
    fn on_a_cluster_one_key_recorded_for_two_requests_is_a_reused_key() {
        let mut a = Auditor::across_shards(AuditSettings::default(), 1_000);
        let request = |sender: &str, id: &str| {
            let mut o = outcome("k", "FAILED", sender, "b", "1.00");
            o.insert("transfer_id".into(), id.into());
            o
        };
        add_outcomes(
            &mut a,
            &[("{a}:k", request("a", "t1")), ("{c}:k", request("c", "t2"))],
        );
        let reused: Vec<String> = checked(&a)
            .into_iter()
            .filter(|l| l.starts_with("key_reused"))
            .collect();
        assert_eq!(reused.len(), 1, "{reused:?}");
        assert!(
            reused[0].contains("2 requests recorded under one key"),
            "{reused:?}"
        );
    }

    #[test]
    fn on_a_cluster_an_entry_without_outcome_reads_again_the_record_of_its_debited_wallet() {
        // k's debit in a and credit in b, read after the outcome scan found no record.
        let mut a = Auditor::across_shards(AuditSettings::default(), 1_000);
        add_outcomes(&mut a, &[]);
        let debit = vec![entry(1, "k", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit);
        let credit = vec![entry(2, "k", "credit", "10.00")];
        add_wallet(&mut a, "b", wallet("10.00", "0.00", 1), credit);
        let found = a.check();
        assert_eq!(found.plan.outcomes, BTreeSet::from(["{a}:k".to_string()]));
        let l = lines(&a.report(found, 0));
        assert!(
            l.iter().any(|l| l.starts_with("entry_without_outcome")
                && l.contains("no transfer:{SENDER}:k for")),
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

    /// A PENDING cross-slot transfer has debited its sender; its credit may be done (once)
    /// or not yet, and a second credit is a double effect.
    #[test]
    fn a_pending_transfers_credit_is_done_once_or_not_yet_and_never_twice() {
        for credits in 0..3u32 {
            let mut a = Auditor::default();
            add_outcomes(
                &mut a,
                &[("t1", outcome("t1", "PENDING", "a", "b", "10.00"))],
            );
            let debit = vec![entry(1, "t1", "debit", "10.00")];
            add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit);
            let credited: Vec<_> = (0..credits)
                .map(|i| entry(2 + i, "t1", "credit", "10.00"))
                .collect();
            let balance = format!("{}.00", 10 * credits);
            add_wallet(
                &mut a,
                "b",
                wallet(&balance, "0.00", u64::from(credits)),
                credited,
            );
            let found = checked(&a);
            match credits {
                0 | 1 => assert_eq!(found, Vec::<String>::new(), "{credits} credit(s)"),
                _ => assert_eq!(
                    found,
                    [
                        "totals_mismatch: USD: total balance 110.00 != openings 100.00 + deposits 0.00",
                        "repeated_entry key=t1 wallets=a,b: credit applied 2 times, expected 1: \
                         credit 10.00 in wallet:b:history 1-2, credit 10.00 in wallet:b:history 1-3",
                    ]
                ),
            }
        }
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
        // a's window starts at 2000 ms; t_old (decided by then) is trimmed on both sides.
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
        // Decided before the windows, or in the millisecond their first entries were written.
        for decided in ["1.000", "2.000"] {
            let r = ledger(decided);
            assert!(r.is_ok(), "{decided}: {:?}", lines(&r));
            assert_eq!(r.entries_before_window, 2);
        }
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
                    outcomes: each_outcome(plan, &Fields::new()),
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

    #[test]
    fn an_entry_written_just_at_the_outcome_ttl_is_not_expired() {
        // Scan at 100 000 ms, ttl 10 000 ms: a record written at 90 000 ms still lived.
        let mut a = Auditor::new(
            AuditSettings {
                outcome_ttl_ms: Some(10_000),
            },
            100_000,
        );
        add_outcomes(&mut a, &[]);
        let debit = vec![timed(90_000, 1, "edge", "debit", "1.00")];
        add_wallet(&mut a, "a", wallet("99.00", "100.00", 1), debit);
        let credit = vec![timed(90_000, 2, "edge", "credit", "1.00")];
        add_wallet(&mut a, "b", wallet("1.00", "0.00", 1), credit);
        let r = a.report(a.check(), 0);
        assert_eq!(r.outcomes_expired, 0);
        let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            [ViolationKind::EntryWithoutOutcome],
            "{:?}",
            lines(&r)
        );
    }

    #[test]
    fn entries_without_an_outcome_between_two_currencies_are_a_currency_mismatch() {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        let debit = vec![entry(1, "k", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet_in("USD", "90.00", "100.00", 1), debit);
        let credit = vec![entry(2, "k", "credit", "10.00")];
        add_wallet(&mut a, "e", wallet_in("EUR", "10.00", "0.00", 1), credit);
        let found = checked(&a);
        assert!(
            found
                .iter()
                .any(|l| l.contains("money moved between currencies {\"EUR\", \"USD\"}")),
            "{found:?}"
        );
    }

    #[test]
    fn a_transfer_with_one_side_trimmed_counts_that_side_before_the_window() {
        // a: t1's debit (entry 1) trimmed, t2's (2) kept; b keeps both credits.
        let mut a = Auditor::default();
        let outcomes = [
            ("t1", versioned("t1", "a", "b", "10.00", 1, 1)),
            ("t2", versioned("t2", "a", "b", "5.00", 2, 2)),
        ];
        add_outcomes(&mut a, &outcomes);
        let a_hash = trimmed("85.00", "100.00", 2, 1, -1000, 0);
        add_wallet(&mut a, "a", a_hash, vec![entry(2, "t2", "debit", "5.00")]);
        let credits = vec![
            entry(3, "t1", "credit", "10.00"),
            entry(4, "t2", "credit", "5.00"),
        ];
        add_wallet(&mut a, "b", wallet("15.00", "0.00", 2), credits);
        let r = settle_quiet(a);
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!(r.entries_before_window, 1, "t1's debit");
    }

    /// t (a pays b 10.00, b's entry `tv`) with b's snapshot at version 1 holding t's credit,
    /// then b read again with `hc` 2: its first two entries trimmed since.
    fn trimmed_after_the_snapshot(tv: u64) -> Vec<String> {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[("t", versioned("t", "a", "b", "10.00", 1, tv))]);
        let debit = vec![entry(1, "t", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit);
        let credit = vec![entry(2, "t", "credit", "10.00")];
        add_wallet(&mut a, "b", wallet("10.00", "0.00", 1), credit);
        let b_now = trimmed("20.00", "0.00", 2, 2, 2000, 0);
        a.ingest_reread(Reread {
            histories: vec![("b".into(), read(b_now, Vec::new()))],
            ..Reread::default()
        });
        lines(&a.report(a.check(), 0))
            .into_iter()
            .filter(|l| !l.starts_with("totals_mismatch"))
            .collect()
    }

    #[test]
    fn an_entry_is_judged_by_the_snapshot_that_holds_it_and_one_trimmed_since_by_the_re_read() {
        // t's credit is b's entry 1, in the snapshot: trimmed later changes nothing.
        assert_eq!(trimmed_after_the_snapshot(1), Vec::<String>::new());
        // t's credit is b's entry 2, made after the snapshot and trimmed since: the credit
        // in the snapshot is a second one.
        let found = trimmed_after_the_snapshot(2);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "repeated_entry key=t wallets=a,b: credit applied 2 times, expected 1"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn a_wallet_the_scan_did_not_read_is_read_again_whole() {
        // "new" was first read by a re-read, before t (a pays new) was: it is read again as
        // a wallet (hash and history), not as a history after a snapshot it never had.
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        let debit = vec![entry(1, "t", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit);
        a.ingest_reread(Reread {
            wallets: vec![("new".into(), read(Fields::new(), Vec::new()))],
            ..Reread::default()
        });
        a.ingest_reread(Reread {
            outcomes: vec![("t".into(), versioned("t", "a", "new", "10.00", 1, 1))],
            ..Reread::default()
        });
        let plan = a.check().plan;
        assert_eq!(
            (plan.wallets, plan.histories),
            (BTreeSet::from(["new".to_string()]), BTreeMap::new())
        );
    }

    #[test]
    fn an_outcome_read_with_a_snapshot_or_within_its_version_is_judged_now() {
        let t = || versioned("t", "a", "b", "10.00", 1, 1);
        // Read at the same moment as both snapshots, which lack its entries.
        let mut a = Auditor::default();
        let wallets = vec![
            ("a", read(wallet("100.00", "100.00", 0), Vec::new())),
            ("b", read(wallet("0.00", "0.00", 0), Vec::new())),
        ];
        add_at_once(&mut a, wallets, &[("t", t())]);
        let found = a.check();
        assert_eq!((found.violations.len(), found.unconfirmed), (2, 0));
        // Read after snapshots whose version is the one t made: entry 1 is another.
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        let deposits = |n| vec![deposit(n, &format!("d{n}"), "1.00")];
        add_wallet(&mut a, "a", wallet("101.00", "100.00", 1), deposits(1));
        add_wallet(&mut a, "b", wallet("1.00", "0.00", 1), deposits(2));
        add_outcomes(&mut a, &[("t", t())]);
        assert_eq!(a.check().violations.len(), 2);
    }

    #[test]
    fn a_wallet_the_scan_did_not_read_waits_for_the_next_audit_only_when_its_outcome_came_after_the_scan()
     {
        let t = || versioned("t", "a", "new", "10.00", 1, 1);
        let scanned = || {
            let mut a = Auditor::default();
            add_outcomes(&mut a, &[]);
            add_wallet(&mut a, "a", wallet("100.00", "100.00", 0), Vec::new());
            a
        };
        // First read by a re-read after the scan, with the wallet it created.
        let mut a = scanned();
        let credit = vec![entry(1, "t", "credit", "10.00")];
        a.ingest_reread(Reread {
            outcomes: vec![("t".into(), t())],
            wallets: vec![("new".into(), read(wallet("10.00", "0.00", 1), credit))],
            ..Reread::default()
        });
        let found = a.check();
        assert_eq!((found.violations.len(), found.unconfirmed), (0, 0));
        // Read with the scan's last wallet: it may be older than the wallet, so a's debit
        // must be looked for.
        let mut a = scanned();
        let c = read(wallet("0.00", "0.00", 0), Vec::new());
        add_at_once(&mut a, vec![("c", c)], &[("t", t())]);
        let found = a.check();
        assert_eq!(
            found.plan.histories,
            BTreeMap::from([("a".to_string(), None)])
        );
    }

    #[test]
    fn an_absent_outcome_read_with_its_entries_is_not_read_again() {
        let mut a = Auditor::default();
        let debit = vec![entry(1, "k", "debit", "10.00")];
        let credit = vec![entry(2, "k", "credit", "10.00")];
        let wallets = vec![
            ("a", read(wallet("90.00", "100.00", 1), debit)),
            ("b", read(wallet("10.00", "0.00", 1), credit)),
        ];
        add_at_once(&mut a, wallets, &[("k", Fields::new())]);
        let found = a.check();
        assert!(found.plan.is_empty(), "{:?}", found.plan);
        assert_eq!((found.violations.len(), found.unconfirmed), (1, 0));
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
