//! Checking a ledger from code: every wallet's balance against its history, every completed
//! transfer against both histories, and the total money against openings plus deposits.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example audit
//! ```
//!
//! Exits 0 when the ledger is sound, 1 when the audit found violations (each names the key),
//! 2 when it could not run. `wallet audit` is the same check from the command line.

use std::process::ExitCode;

use wallet_transfer::tools::ops;
use wallet_transfer::{EngineConfig, WalletService};

fn main() -> ExitCode {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let service = match WalletService::connect(&redis_url, 1, EngineConfig::default()) {
        Ok(service) => service,
        Err(e) => {
            eprintln!("audit: {e}");
            return ExitCode::from(2);
        }
    };
    // Reads with SCAN in batches: safe on a live system, and a Redis error is an Err, never
    // a false "clean".
    let report = match ops::audit(&service) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("audit: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "checked {} wallets, {} transfer records ({} completed), {} history entries",
        report.wallets_checked,
        report.transfers_checked,
        report.transfers_completed,
        report.history_entries,
    );
    // Money is checked per currency: the balances add up to the openings plus the deposits.
    for totals in &report.currencies {
        println!(
            "{}: balances {} = openings {} + deposits {}",
            totals.currency, totals.balance, totals.opening, totals.deposits
        );
    }
    if report.is_ok() {
        println!("ledger is sound");
        return ExitCode::SUCCESS;
    }
    // Each violation names its kind, the transfer and the wallets: `kind key=.. wallets=..: ..`.
    for violation in &report.violations {
        println!("violation: {violation}");
    }
    println!("ledger has {} violations", report.violations_total);
    ExitCode::from(1)
}
