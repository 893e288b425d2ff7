//! `wallet snapshot`: prints every wallet (id, owner name, balance, currency, status, version)
//! as a table or a JSON array; changes nothing.
//!
//! Owns the flags and the table's columns. Does not own reading the wallets or how a missing
//! or corrupt one is shown (`tools::ops::snapshot`).

use clap::Args;
use comfy_table::{Cell, CellAlignment, Table};
use wallet_transfer::tools::ops::{self, SnapshotRow};

use crate::cli::{Failure, GlobalOpts, json_out, new_table, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Reads wallets:all with SSCAN and the wallets in pipelined batches; changes \
                  nothing. Balances are in major units with two decimals (\"5234.50\"), sorted \
                  by wallet id.\n\
                  Examples:\n  wallet snapshot --prefix user_1\n  wallet snapshot --json | jq '.[0]'"
)]
pub struct SnapshotArgs {
    /// Only wallets whose id starts with this text
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// Print a JSON array of rows on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Prints the wallets.
pub fn run(global: &GlobalOpts, args: SnapshotArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let rows = ops::snapshot(&service, args.prefix.as_deref())?;
    if args.json {
        return json_out(&rows);
    }
    print_out(&format!("{}\n{} wallets\n", rows_table(&rows), rows.len()))
}

/// One line per wallet, numbers aligned right.
fn rows_table(rows: &[SnapshotRow]) -> Table {
    let mut table = new_table(&["id", "name", "balance", "currency", "status", "version"]);
    for r in rows {
        table.add_row(vec![
            Cell::new(&r.id),
            Cell::new(&r.name),
            Cell::new(&r.balance).set_alignment(CellAlignment::Right),
            Cell::new(&r.currency),
            Cell::new(&r.status),
            Cell::new(&r.version).set_alignment(CellAlignment::Right),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_one_line_per_wallet_with_numbers_on_the_right() {
        let row = |id: &str, balance: &str| SnapshotRow {
            id: id.to_string(),
            name: "Ann".to_string(),
            balance: balance.to_string(),
            currency: "USD".to_string(),
            status: "active".to_string(),
            version: "3".to_string(),
        };
        let text = rows_table(&[row("user_1", "5.00"), row("user_2", "1234.50")]).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("id") && lines[1].contains("version"),
            "{text}"
        );
        let first = lines.iter().find(|l| l.contains("user_1")).unwrap();
        assert!(first.contains("    5.00 |"), "{text}");
        assert!(text.contains("1234.50"), "{text}");
    }
}
