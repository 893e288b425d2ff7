//! `wallet audit`: checks the ledger invariants and prints a summary (or the report as JSON);
//! each violation goes to stderr as one line naming the idempotency key and the wallets, and
//! the exit code is 1.
//!
//! Owns the summary's wording and the exit code. Does not own the invariants or how they are
//! checked (`tools::ops::audit`, `tools::audit`).

use clap::Args;
use wallet_transfer::Amount;
use wallet_transfer::tools::ops::{self, AuditReport, AuditSettings};

use crate::cli::{Failure, GlobalOpts, OutcomeTtl, json_out, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Checks: each wallet: balance = opening_balance + checkpoint (hb, the sum of \
                  the entries trimmed from its history) + signed sum of its retained history, \
                  no negative balance, version = entries trimmed (hc) + retained entries. Each \
                  transfer (entries counted per idempotency key, kind and wallet): a COMPLETED \
                  transfer:* record has exactly one debit on its sender and one credit on its \
                  receiver, of its amount, in wallets of its currency, at the entry numbers it \
                  recorded, unless trimmed (then checked only through the checkpoint); a FAILED \
                  one has none; no debit or credit without a record (with --outcome-ttl-ms MS, one \
                  older than the ttl counts as outcome expired). Each deposit id appears once \
                  in the retained windows. Per currency: total of balances = openings + \
                  deposits (trimmed, hd, and retained). Safe on a live ledger: \
                  each wallet is read whole in one MULTI/EXEC, and a finding that transfers \
                  finishing during the scan could cause is read again before it counts. Reads \
                  with SCAN/SSCAN and pipelining; changes nothing. Amounts in major units.\n\
                  With --redis-cluster: every primary is scanned (wallet:{ID}, \
                  transfer:{SENDER}:KEY, credit:{RECEIVER}:SENDER:KEY); each wallet is read whole in \
                  one MULTI/EXEC on its primary, the outcome records are scanned before and \
                  again after the wallets, and a finding is re-read (outcomes first, then \
                  histories, bounded passes) as on one Redis, so it is meant to be safe while \
                  transfers run; a finding that stays unsettled after the passes is reported: \
                  run it again in a quieter moment before acting on it. A PENDING record (a \
                  cross-slot transfer between its debit and its completion) must have its \
                  debit once and its credit at most once; a credit still to do counts as in \
                  flight (balances + in flight = openings + deposits). Credit markers whose \
                  transfer is not PENDING are listed as leftovers, not violations (a crash \
                  after a completion leaves one). wallet recover finishes PENDING records.\n\
                  Exit 0 when sound, 1 with one line per violation on stderr, naming the \
                  idempotency key and the wallets (--json: in the report's violations).\n\
                  Example: wallet audit --json"
)]
pub struct AuditArgs {
    /// Print the report as one JSON object instead of a summary
    #[arg(long)]
    pub json: bool,
}

/// Audits the ledger; exit 1 if any invariant is broken.
pub fn run(global: &GlobalOpts, args: AuditArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let settings = AuditSettings {
        // The ttl the workers write records with (the global --outcome-ttl-ms, in ms); with
        // `auto` or `forever` every entry needs its outcome.
        outcome_ttl_ms: match global.outcome_ttl {
            OutcomeTtl::Ms(ms) => Some(ms),
            OutcomeTtl::Auto | OutcomeTtl::Forever => None,
        },
    };
    let report = ops::audit_with(&service, &settings)?;
    if args.json {
        json_out(&report)?;
    } else {
        print_out(&summary(&report))?;
    }
    if report.is_ok() {
        return Ok(());
    }
    for v in &report.violations {
        eprintln!("violation: {v}");
    }
    let unlisted = report.violations_total - report.violations.len() as u64;
    if unlisted > 0 {
        eprintln!("violation: ... and {unlisted} more");
    }
    let first = report
        .violations
        .first()
        .map_or_else(String::new, ToString::to_string);
    Err(Failure::runtime(format!(
        "audit found {} violation(s); first: {first}",
        report.violations_total
    )))
}

/// The counts and totals (one line per currency), one per line.
fn summary(report: &AuditReport) -> String {
    let mut out = format!(
        "wallets checked: {}\ntransfers checked: {} ({} completed)\nhistory entries: {}\n\
         horizon: {}\n",
        report.wallets_checked,
        report.transfers_checked,
        report.transfers_completed,
        report.history_entries,
        report.horizon,
    );
    if let Some(ttl) = report.outcome_ttl_ms {
        out.push_str(&format!(
            "outcome ttl: {ttl} ms; entries whose outcome expired (not violations): {}\n",
            report.outcomes_expired
        ));
    }
    for c in &report.currencies {
        let in_flight = if c.in_flight == Amount::ZERO {
            String::new()
        } else {
            format!("; in flight during the audit {}", c.in_flight)
        };
        let trimmed = if c.trimmed_deposits == Amount::ZERO {
            String::new()
        } else {
            format!(", {} of them trimmed", c.trimmed_deposits)
        };
        out.push_str(&format!(
            "total balance {}: {} (openings {} + deposits {}{trimmed}{in_flight})\n",
            c.currency, c.balance, c.opening, c.deposits
        ));
    }
    if report.pending_transfers > 0 {
        out.push_str(&format!(
            "PENDING transfers (cross-slot, credit counted in flight until done; wallet \
             recover finishes them): {}\n",
            report.pending_transfers
        ));
    }
    if report.leftover_markers > 0 {
        out.push_str(&format!(
            "leftover credit markers (not violations): {} ({})\n",
            report.leftover_markers,
            report.leftover_marker_keys.join(", ")
        ));
    }
    if report.outcome_scans > 1 {
        out.push_str(&format!(
            "outcome scans: {} (again after the wallets: a window moved during the audit, or a \
             Redis Cluster)\n",
            report.outcome_scans
        ));
    }
    if report.settle_passes > 0 {
        out.push_str(&format!(
            "re-read passes: {} (unsettled: {})\n",
            report.settle_passes, report.unsettled
        ));
    }
    out.push_str(&format!("violations: {}\n", report.violations_total));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_transfer::tools::ops::CurrencyTotals;

    #[test]
    fn summary_lists_counts_and_totals_per_currency() {
        let totals = |currency: &str, balance, opening, deposits| CurrencyTotals {
            currency: currency.into(),
            balance: Amount::from_minor(balance),
            opening: Amount::from_minor(opening),
            deposits: Amount::from_minor(deposits),
            trimmed_deposits: Amount::ZERO,
            in_flight: Amount::ZERO,
        };
        let mut report = AuditReport {
            wallets_checked: 3,
            transfers_checked: 5,
            transfers_completed: 4,
            history_entries: 11,
            horizon: "every history is whole".into(),
            currencies: vec![
                totals("EUR", 100, 100, 0),
                totals("USD", 30_000, 25_000, 5_000),
            ],
            violations_total: 1,
            ..AuditReport::default()
        };
        assert_eq!(
            summary(&report),
            "wallets checked: 3\ntransfers checked: 5 (4 completed)\nhistory entries: 11\n\
             horizon: every history is whole\n\
             total balance EUR: 1.00 (openings 1.00 + deposits 0.00)\n\
             total balance USD: 300.00 (openings 250.00 + deposits 50.00)\nviolations: 1\n"
        );
        report.settle_passes = 2;
        report.outcome_ttl_ms = Some(60_000);
        report.outcomes_expired = 4;
        report.currencies[1].trimmed_deposits = Amount::from_minor(1_000);
        report.currencies[1].in_flight = Amount::from_minor(-250);
        let text = summary(&report);
        assert!(
            text.contains("re-read passes: 2 (unsettled: 0)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "(openings 250.00 + deposits 50.00, 10.00 of them trimmed; in flight during the \
                 audit -2.50)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "outcome ttl: 60000 ms; entries whose outcome expired (not violations): 4\n"
            ),
            "{text}"
        );
    }
}
