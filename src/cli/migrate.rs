//! `wallet migrate-history`: moves the histories written in the older stream format into the
//! history lists (`tools::migrate`) and says how many moved and how many are left.
//!
//! Owns the flags and the summary. Does not own the migration (`tools::migrate`).

use clap::Args;
use wallet_transfer::tools::migrate;

use crate::cli::{Failure, GlobalOpts, json_out, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Each wallet:{ID}:history stream (the history format before the list one) is \
                  moved, in atomic batches of 1,000 entries, to the head of wallet:{ID}:log and \
                  deleted once empty, on one Redis or every primary of a cluster. Nothing needs \
                  it: histories in either format are read and trimmed; it frees the stream's \
                  preallocated node (about 4 KB per wallet under Redis's defaults). Safe any \
                  number of times and while workers run. Entries in the original long format \
                  stay in the stream (counted as left). An audit running meanwhile may report \
                  the moved entries: run it again after.\n\
                  Example: wallet migrate-history --json"
)]
pub struct MigrateArgs {
    /// Print the report as one JSON object instead of a summary
    #[arg(long)]
    pub json: bool,
}

/// Migrates every older history stream.
pub fn run(global: &GlobalOpts, args: MigrateArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let report = migrate::migrate_histories(&service)?;
    if args.json {
        return json_out(&report);
    }
    print_out(&format!("{report}\n"))
}
