//! Recovery: finishing the cross-slot transfers a crash left PENDING on a Redis Cluster.
//!
//! [`WalletService::recover`]`(limit)` scans every primary (`SCAN MATCH transfer:{*}:* TYPE
//! hash`, each batch's `s` read in one pipeline) and finishes each PENDING record (at most
//! `limit`, itself at most [`RECOVER_LIMIT`]) by rebuilding its request from the record and
//! running the cross-slot call in a mode that never starts a transfer: the locks, step 3 unless
//! the marker holds its `x`, step 4. It is safe any number of times, from any number of
//! processes, concurrently with transfers: a record finished in between is counted as
//! `already_final`; a record whose locks are busy is counted `failed` with its error, for the
//! next run. The next delivery of the request finishes a PENDING the same way. The worker runs
//! it every `recover_interval_ms` (`worker::sweep`); `wallet recover` runs it by hand.
//!
//! Failpoints (feature `test-hooks`): `WalletService::set_failpoint(Some(Failpoint::AfterDebit
//! | AfterCredit))` stops a cross-slot transfer right after step 2 or step 3 with a transient
//! error and leaves its locks to expire by their ttl, with the connections thrown away, as a
//! crash would. `tests/it/cluster_transfer.rs` crashes transfers there and finishes them by a
//! replay and by `recover`.
//!
//! Owns the scan for PENDING records and the report of a recovery run. Does not own the
//! steps that finish one record (`cluster_transfer::finish_pending`, the same code a
//! redelivered request runs).

use crate::engine::cluster_transfer::finish_pending;
use crate::engine::keyspace::KeySpace;
use crate::engine::message::Status;
use crate::engine::outcome::TransferError;
use crate::engine::service::WalletService;
use crate::engine::store::PooledConn;

/// Most PENDING outcomes one [`WalletService::recover`] call finishes.
pub const RECOVER_LIMIT: usize = 100_000;
/// Errors listed in a [`RecoverReport`] (the rest are counted).
pub const RECOVER_ERRORS_LISTED_LIMIT: usize = 20;
/// Keys asked for per SCAN step of the recovery.
const RECOVER_SCAN_COUNT: usize = 1_000;

/// What one [`WalletService::recover`] call found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoverReport {
    /// Primaries whose keys were scanned.
    pub primaries_scanned: usize,
    /// Outcome records looked at.
    pub records_scanned: u64,
    /// Records found PENDING.
    pub pending_found: u64,
    /// PENDING records this call finished (credit unless done, then COMPLETED).
    pub finished: u64,
    /// PENDING records finished by someone else (a transfer, another recovery) before this
    /// call held their locks.
    pub already_final: u64,
    /// PENDING records that could not be finished now (locks busy, a node down): run again.
    pub failed: u64,
    /// The first [`RECOVER_ERRORS_LISTED_LIMIT`] failures, `key: error`.
    pub errors: Vec<String>,
    /// True when the scan stopped at the limit: run again for the rest.
    pub limit_reached: bool,
}

impl WalletService {
    /// Finishes cross-slot transfers that stopped halfway (the module doc):
    /// scans every primary for outcome records, and for each PENDING one (at most `limit`,
    /// itself at most [`RECOVER_LIMIT`]) takes both wallets' locks and runs the steps still to
    /// do: the credit unless its marker says it was done, then COMPLETED. Safe to run any
    /// number of times, from any number of processes, while transfers run: a record finished
    /// in between is counted in [`RecoverReport::already_final`] and left alone.
    ///
    /// On one Redis nothing is ever PENDING: the report is empty. A failure to reach a
    /// primary is an error; a PENDING record that cannot be finished now (its locks busy) is
    /// counted in [`RecoverReport::failed`] with its error: run again later.
    pub fn recover(&self, limit: usize) -> Result<RecoverReport, TransferError> {
        let Some(pools) = self.topology.cluster_pools() else {
            return Ok(RecoverReport::default());
        };
        let limit = limit.min(RECOVER_LIMIT);
        let mut report = RecoverReport::default();
        let mut pending = Vec::new();
        for primary in pools.primaries() {
            let mut conn = pools.conn_for_addr(&primary)?;
            report.primaries_scanned += 1;
            scan_pending(&mut conn, limit, &mut pending, &mut report)?;
        }
        report.pending_found = pending.len() as u64;
        for key in pending {
            report.count(&key, finish_pending(self, pools, &key));
        }
        debug_assert_eq!(
            report.pending_found,
            report.finished + report.already_final + report.failed
        );
        Ok(report)
    }
}

impl RecoverReport {
    /// Counts how the finish of the PENDING record `key` went: finished now (`Ok(true)`),
    /// found final already (`Ok(false)`), or failed, its error listed while fewer than
    /// [`RECOVER_ERRORS_LISTED_LIMIT`] are. Pure.
    fn count(&mut self, key: &str, finish: Result<bool, TransferError>) {
        match finish {
            Ok(true) => self.finished += 1,
            Ok(false) => self.already_final += 1,
            Err(e) => {
                self.failed += 1;
                if self.errors.len() < RECOVER_ERRORS_LISTED_LIMIT {
                    self.errors.push(format!("{key}: {e}"));
                }
            }
        }
    }
}

/// Walks one primary's keys with `SCAN MATCH transfer:{*}:* TYPE hash` and collects the
/// PENDING records (their `s` read in one pipelined round trip per batch) into `pending`,
/// until it holds `limit`.
fn scan_pending(
    conn: &mut PooledConn,
    limit: usize,
    pending: &mut Vec<String>,
    report: &mut RecoverReport,
) -> Result<(), TransferError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(KeySpace::Cluster.outcome_pattern())
            .arg("COUNT")
            .arg(RECOVER_SCAN_COUNT)
            .arg("TYPE")
            .arg("hash")
            .query(&mut conn.redis)?;
        let mut pipe = redis::pipe();
        for key in &batch {
            pipe.hget(key, "s");
        }
        let states: Vec<Option<String>> = match batch.is_empty() {
            true => Vec::new(),
            false => pipe.query(&mut conn.redis)?,
        };
        report.records_scanned += batch.len() as u64;
        for (key, state) in batch.into_iter().zip(states) {
            if state.as_deref() == Some(Status::Pending.as_str()) && !pending.contains(&key) {
                if pending.len() >= limit {
                    report.limit_reached = true;
                    return Ok(());
                }
                pending.push(key);
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_finish_counts_once_by_how_it_went_and_errors_are_listed_up_to_the_limit() {
        let mut report = RecoverReport::default();
        report.count("a", Ok(true));
        report.count("b", Ok(false));
        report.count("c", Ok(false));
        for i in 0..=RECOVER_ERRORS_LISTED_LIMIT {
            report.count(&format!("e{i}"), Err(TransferError::WrongMode("busy")));
        }
        let failed = RECOVER_ERRORS_LISTED_LIMIT as u64 + 1;
        assert_eq!(
            (report.finished, report.already_final, report.failed),
            (1, 2, failed)
        );
        assert_eq!(report.errors.len(), RECOVER_ERRORS_LISTED_LIMIT);
        assert!(report.errors[0].starts_with("e0: "), "{:?}", report.errors);
    }
}
