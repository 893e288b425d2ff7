//! The whole check and how a live ledger is settled: [`Auditor::check`] runs every check over
//! what was read, [`Auditor::settle`] reads again what the findings ask for (at most
//! [`SETTLE_PASSES_LIMIT`] passes) and [`Auditor::report`] makes the [`AuditReport`]: the
//! totals per currency with the money in flight, the leftover credit markers, the horizon.
//!
//! Owns the settle loop and the per-currency invariant (balances + in flight = openings +
//! deposits). Does no I/O itself (the caller's `reread` reads). Does not own the per-wallet
//! or per-transfer checks (`wallet`, `transfers`, `slots`).

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::message::Status;
use crate::engine::wallet::HistoryKind;
use crate::tools::audit::auditor::{Auditor, Findings, OutcomeState, Sums};
use crate::tools::audit::input::{Plan, Reread};
use crate::tools::audit::report::{
    AuditReport, CurrencyTotals, LEFTOVER_MARKERS_LISTED_MAX, VIOLATIONS_LISTED_MAX, Violation,
    ViolationKind, amount,
};
use crate::tools::audit::transfers::Cut;

/// Most re-read passes after the full scan; what is still unconfirmed after them is reported.
pub const SETTLE_PASSES_LIMIT: u32 = 8;

impl Auditor {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::money::Amount;
    use crate::tools::audit::fixtures::*;
    use std::cell::RefCell;

    use crate::tools::audit::input::{AuditSettings, CreditMarker, Fields, Plan, Snapshot};

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
    fn on_a_cluster_violations_name_the_keys_as_the_cluster_spells_them() {
        let mut a = Auditor::across_shards(AuditSettings::default(), 1_000);
        let history = vec![
            deposit(1, "d1", "10.00"),
            deposit(2, "d1", "10.00"),
            ("3-0".to_string(), fields(&[("kind", "deposit")])),
        ];
        add_wallet(&mut a, "a", wallet("-10.00", "-21.00", 4), history);
        let lines = checked(&a);
        for (kind, key) in [
            ("negative_balance", "wallet:{a}: negative balance"),
            ("version_mismatch", "wallet:{a}: version 4"),
            (
                "history_unreadable",
                "wallet:{a}:history 3-0: unreadable entry",
            ),
            (
                "repeated_deposit",
                "deposit 10.00 in wallet:{a}:history 1-1",
            ),
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(kind) && l.contains(key)),
                "{kind} naming {key}: {lines:#?}"
            );
        }
    }

    /// On a cluster: k1 (a pays b 10.00) is PENDING, debited, its credit not done; k2 (a
    /// pays b 1.00) COMPLETED. Both left a credit marker.
    fn pending_with_markers() -> Auditor {
        let mut a = Auditor::across_shards(AuditSettings::default(), 1_000);
        add_outcomes(
            &mut a,
            &[
                ("{a}:k1", outcome("k1", "PENDING", "a", "b", "10.00")),
                ("{a}:k2", outcome("k2", "COMPLETED", "a", "b", "1.00")),
            ],
        );
        let debits = vec![
            entry(1, "k1", "debit", "10.00"),
            entry(2, "k2", "debit", "1.00"),
        ];
        add_wallet(&mut a, "a", wallet("89.00", "100.00", 2), debits);
        let credit = vec![entry(3, "k2", "credit", "1.00")];
        add_wallet(&mut a, "b", wallet("1.00", "0.00", 1), credit);
        let marker = |key: &str| CreditMarker {
            receiver: "b".into(),
            sender: "a".into(),
            idempotency_key: key.into(),
            value: "token:0:0".into(),
        };
        a.ingest_markers(vec![marker("k1"), marker("k2")]);
        a
    }

    #[test]
    fn a_credit_marker_whose_transfer_is_not_pending_is_a_leftover_and_pending_ones_are_counted() {
        let r = settle_quiet(pending_with_markers());
        assert!(r.is_ok(), "{:?}", lines(&r));
        assert_eq!(r.leftover_marker_keys, ["credit:{b}:a:k2"]);
        assert_eq!((r.leftover_markers, r.pending_transfers), (1, 1));
        assert_eq!(r.currencies[0].in_flight.to_string(), "10.00");
    }

    #[test]
    fn a_pending_credit_found_in_a_wallet_it_does_not_name_is_still_in_flight() {
        // k1's credit went to c: finishing k1 would credit b as well, money from nowhere.
        let mut a = Auditor::default();
        add_outcomes(
            &mut a,
            &[("k1", outcome("k1", "PENDING", "a", "b", "10.00"))],
        );
        let debit = vec![entry(1, "k1", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), debit);
        add_wallet(&mut a, "b", wallet("0.00", "0.00", 0), Vec::new());
        let credit = vec![entry(2, "k1", "credit", "10.00")];
        add_wallet(&mut a, "c", wallet("10.00", "0.00", 1), credit);
        let l = lines(&settle_quiet(a));
        assert!(
            l.contains(
                &"totals_mismatch: USD: total balance 100.00 + in flight 10.00 != openings \
                  100.00 + deposits 0.00"
                    .to_string()
            ),
            "{l:?}"
        );
    }

    #[test]
    fn missing_wallets_and_unreadable_histories_are_reported_not_summed() {
        let mut a = Auditor::default();
        add_wallet(&mut a, "ghost", Fields::new(), Vec::new());
        add_wallet(&mut a, "bad", fields(&[("balance", "x")]), Vec::new());
        let noise = unreadable_history(wallet("1.00", "1.00", 4));
        add_at_once(&mut a, vec![("noise", noise)], &[]);
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
            outcomes: each_outcome(plan, &t2),
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

    /// Live: t2 (a pays b 10.00, making a's version 1 and b's 2) ran after the outcome scan
    /// and b's snapshot (one deposit), before a's.
    fn received_after_its_snapshot() -> Auditor {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        add_wallet(
            &mut a,
            "b",
            wallet("5.00", "0.00", 1),
            vec![deposit(1, "d1", "5.00")],
        );
        let history = vec![entry(2, "t2", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), history);
        a
    }

    #[test]
    fn a_wallet_is_read_again_from_just_after_its_snapshot_and_its_late_entries_are_numbered_on() {
        let plans = RefCell::new(Vec::<Plan>::new());
        let r = settle_with(received_after_its_snapshot(), |plan| {
            plans.borrow_mut().push(plan.clone());
            // b's entry 2 a deposit, 3 t2's credit.
            let t2 = versioned("t2", "a", "b", "10.00", 1, 3);
            let late = vec![deposit(3, "d2", "1.00"), entry(4, "t2", "credit", "10.00")];
            Reread {
                outcomes: each_outcome(plan, &t2),
                histories: plan
                    .histories
                    .keys()
                    .map(|id| (id.clone(), read(wallet("16.00", "0.00", 3), late.clone())))
                    .collect(),
                ..Reread::default()
            }
        });
        assert!(r.is_ok(), "{:?}", lines(&r));
        let plans = plans.into_inner();
        let histories: Vec<_> = plans.iter().map(|p| p.histories.clone()).collect();
        // The outcome first; then b's history after its snapshot's last entry (1-1), whose
        // late credit is b's entry 3, the version t2's outcome says it made.
        let after_snapshot = BTreeMap::from([("b".to_string(), Some("1-1".to_string()))]);
        assert_eq!(histories, [BTreeMap::new(), after_snapshot]);
        assert_eq!(r.settle_passes, 2);
    }

    #[test]
    fn a_history_that_cannot_be_read_is_not_planned_for_a_re_read() {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        let b = unreadable_history(wallet("10.00", "0.00", 1));
        add_at_once(&mut a, vec![("b", b)], &[]);
        let history = vec![entry(2, "t2", "debit", "10.00")];
        add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), history);
        let planned = RefCell::new(Vec::new());
        let r = settle_with(a, |plan| {
            planned.borrow_mut().extend(plan.histories.keys().cloned());
            let t2 = outcome("t2", "COMPLETED", "a", "b", "10.00");
            Reread {
                outcomes: each_outcome(plan, &t2),
                ..Reread::default()
            }
        });
        assert_eq!(planned.into_inner(), Vec::<String>::new());
        let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
        assert!(
            kinds.contains(&ViolationKind::HistoryUnreadable),
            "{:?}",
            lines(&r)
        );
    }

    #[test]
    fn a_wallet_not_listed_is_missing_only_when_it_has_a_history() {
        let mut a = Auditor::default();
        a.ingest(Snapshot {
            listed: false,
            wallets: vec![
                (
                    "gone".into(),
                    read(Fields::new(), vec![deposit(1, "d1", "1.00")]),
                ),
                ("never".into(), read(Fields::new(), Vec::new())),
            ],
            outcomes: Vec::new(),
        });
        let missing: Vec<String> = checked(&a)
            .into_iter()
            .filter(|l| l.starts_with("wallet_missing"))
            .collect();
        assert_eq!(
            missing,
            [
                "wallet_missing wallets=gone: wallet:gone does not exist (listed in wallets:all: \
                 false, history entries: 1)"
            ]
        );
    }

    #[test]
    fn a_checkpoint_of_no_entries_with_money_in_it_is_shown_in_the_mismatch() {
        let mut a = Auditor::default();
        add_outcomes(&mut a, &[]);
        let hash = trimmed("7.00", "0.00", 1, 0, 500, 0);
        add_wallet(&mut a, "a", hash, vec![deposit(1, "d1", "1.00")]);
        let l = checked(&a);
        assert!(
            l.contains(
                &"balance_mismatch wallets=a: wallet:a: balance 7.00 != opening 0.00 + \
                  checkpoint 5.00 (0 trimmed) + history 1.00"
                    .to_string()
            ),
            "{l:?}"
        );
    }
}
