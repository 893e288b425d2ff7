//! `wallet recover`: finishes the cross-slot transfers a crash left PENDING on a Redis Cluster
//! (`WalletService::recover`) and says what it finished, what was already final and what
//! failed (exit 1 then, with what to do). On one Redis there is nothing to recover.
//!
//! Owns the flags, the summary's wording and the exit code. Does not own finding or finishing
//! the records (`engine::cluster_transfer`), nor the worker's periodic sweep.

use clap::Args;
use serde::Serialize;
use wallet_transfer::engine::recovery::{RECOVER_LIMIT, RecoverReport};

use crate::cli::{Failure, GlobalOpts, json_out, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Scans every primary for outcome records (transfer:{SENDER}:KEY) that are \
                  PENDING, i.e. a cross-slot transfer stopped between its debit and its \
                  completion, and finishes each under both wallets' locks: the credit unless \
                  its marker (credit:{RECEIVER}:SENDER:KEY) says it was done, then COMPLETED. Safe any \
                  number of times and while workers run: a record finished by someone else in \
                  between counts as already final. A record whose locks are busy (a transfer \
                  still running, or a crashed one whose locks have not expired yet) counts as \
                  failed: run it again after the lock ttl (--lock-ttl-ms).\n\
                  On a single Redis (no --redis-cluster) a transfer is one transaction and never \
                  PENDING: it says so and exits 0.\n\
                  Exit 0 when nothing failed, 1 otherwise (--json: the report's errors).\n\
                  Example: wallet recover --redis-cluster 10.0.0.1:7000 --limit 1000 --json"
)]
pub struct RecoverArgs {
    /// Most PENDING records finished by one run (1 to 100000); run again for the rest
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=RECOVER_LIMIT as i64))]
    pub limit: u32,

    /// Print the report as one JSON object instead of a summary
    #[arg(long)]
    pub json: bool,
}

/// The report as printed with --json.
#[derive(Debug, Serialize)]
struct RecoverJson<'a> {
    cluster: bool,
    primaries_scanned: usize,
    records_scanned: u64,
    pending_found: u64,
    finished: u64,
    already_final: u64,
    failed: u64,
    errors: &'a [String],
    limit_reached: bool,
}

/// Finishes PENDING transfers; exit 1 if any could not be finished.
pub fn run(global: &GlobalOpts, args: RecoverArgs) -> Result<(), Failure> {
    let cluster = global.redis_cluster.is_some();
    // A cross-slot recovery holds a connection to each wallet's primary.
    let service = global.connect(2)?;
    let report = service.recover(args.limit as usize)?;
    if args.json {
        json_out(&json(cluster, &report))?;
    } else {
        print_out(&summary(cluster, &report))?;
    }
    for e in &report.errors {
        eprintln!("failed: {e}");
    }
    match report.failed {
        0 => Ok(()),
        n => Err(Failure::runtime(format!(
            "{n} PENDING transfer(s) could not be finished now (first: {}); run `wallet recover` \
             again once their locks expire (--lock-ttl-ms), or check that every primary is up",
            report.errors.first().map_or("-", String::as_str)
        ))),
    }
}

fn json(cluster: bool, r: &RecoverReport) -> RecoverJson<'_> {
    RecoverJson {
        cluster,
        primaries_scanned: r.primaries_scanned,
        records_scanned: r.records_scanned,
        pending_found: r.pending_found,
        finished: r.finished,
        already_final: r.already_final,
        failed: r.failed,
        errors: &r.errors,
        limit_reached: r.limit_reached,
    }
}

/// What the run found and did, one fact a line.
fn summary(cluster: bool, r: &RecoverReport) -> String {
    if !cluster {
        return "single Redis: nothing to recover (a transfer is one transaction there, never \
                PENDING)\n"
            .to_string();
    }
    let mut out = format!(
        "primaries scanned: {}\noutcome records scanned: {}\nPENDING found: {}\nfinished now: \
         {}\nalready final (finished by someone else): {}\nfailed: {}\n",
        r.primaries_scanned,
        r.records_scanned,
        r.pending_found,
        r.finished,
        r.already_final,
        r.failed
    );
    if r.limit_reached {
        out.push_str("limit reached: more PENDING records remain, run again\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn the_limit_is_bounded_and_has_a_default() {
        let Command::Recover(args) = parse(&["recover"]).unwrap().command else {
            panic!("not recover");
        };
        assert_eq!((args.limit, args.json), (10_000, false));
        assert!(parse(&["recover", "--limit", "0"]).is_err());
        let over = (RECOVER_LIMIT + 1).to_string();
        assert!(parse(&["recover", "--limit", &over]).is_err());
    }

    #[test]
    fn the_summary_says_what_was_finished_and_a_single_redis_has_nothing() {
        let mut r = RecoverReport::default();
        r.primaries_scanned = 3;
        r.records_scanned = 10;
        r.pending_found = 2;
        r.finished = 1;
        r.already_final = 1;
        let text = summary(true, &r);
        assert!(
            text.contains("PENDING found: 2\nfinished now: 1\n"),
            "{text}"
        );
        assert!(!text.contains("limit reached"), "{text}");
        assert!(summary(false, &r).starts_with("single Redis: nothing to recover"));
        let value = serde_json::to_value(json(true, &r)).unwrap();
        assert_eq!(value["finished"], 1);
        assert_eq!(value["cluster"], true);
    }
}
