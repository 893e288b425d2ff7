//! `wallet audit`: checks the ledger invariants and prints a summary (or the report as JSON);
//! each violation goes to stderr and the exit code is 1.
//!
//! Owns the summary's wording and the exit code. Does not own the invariants or how they are
//! checked (`tools::ops::audit`).

use clap::Args;
use wallet_transfer::tools::ops::{self, AuditReport};

use crate::cli::{Failure, GlobalOpts, json_out, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Checks: balance = opening_balance + signed sum of history; no negative \
                  balance; version = number of history entries; each COMPLETED transfer:* \
                  record has its debit and credit history entries; total of balances = \
                  openings + deposits. Reads with SCAN/SSCAN and pipelining; changes nothing. \
                  Amounts in major units.\n\
                  Exit 0 when sound, 1 with one line per violation (on stderr).\n\
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
    let report = ops::audit(&service)?;
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
    Err(Failure::runtime(format!(
        "audit found {} violation(s); first: {}",
        report.violations.len(),
        report.violations[0]
    )))
}

/// The counts and totals, one per line.
fn summary(report: &AuditReport) -> String {
    format!(
        "wallets checked: {}\ntransfers checked: {} ({} completed)\nhistory entries: {}\n\
         total balance: {} (openings {} + deposits {})\nviolations: {}\n",
        report.wallets_checked,
        report.transfers_checked,
        report.transfers_completed,
        report.history_entries,
        report.total_balance,
        report.total_opening,
        report.total_deposits,
        report.violations.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_transfer::Amount;

    #[test]
    fn summary_lists_counts_and_totals() {
        // A report is built field by field: it is #[non_exhaustive] outside the library.
        let mut report = AuditReport::default();
        report.wallets_checked = 3;
        report.transfers_checked = 5;
        report.transfers_completed = 4;
        report.history_entries = 11;
        report.total_balance = Amount::from_minor(30_000);
        report.total_opening = Amount::from_minor(25_000);
        report.total_deposits = Amount::from_minor(5_000);
        report.violations = vec!["wallet:x negative".into()];
        assert_eq!(
            summary(&report),
            "wallets checked: 3\ntransfers checked: 5 (4 completed)\nhistory entries: 11\n\
             total balance: 300.00 (openings 250.00 + deposits 50.00)\nviolations: 1\n"
        );
    }
}
