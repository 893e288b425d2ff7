//! The recovery sweep: on a Redis Cluster, a thread that finishes cross-slot transfers left
//! PENDING between their steps (a worker that crashed there) every
//! [`WorkerConfig::recover_interval_ms`](crate::worker::WorkerConfig::recover_interval_ms).
//!
//! Every `recover_interval_ms` (10 s by default; 0 turns it off, with a warning) it runs
//! `recover(recover_batch)`, logs what it found, and counts the run in `wallet_recover_*`; a run
//! that stopped at its limit and finished something runs again at once; a failed run (a
//! primary that stopped answering, failed over say) reads the slot map again, so the next run
//! scans the primaries of a fresh map. On one Redis there is no sweep: nothing is ever PENDING
//! there. The thread is joined with the pool at shutdown.
//!
//! Owns when the sweep runs, how it is logged and counted. Does not own the recovery itself
//! ([`WalletService::recover`]: safe any number of times, concurrently with transfers and
//! with other workers' sweeps, each record finished once by its step markers;
//! `engine::cluster_transfer`, "Recovery").

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::recovery::RecoverReport;
use crate::engine::service::WalletService;
use crate::worker::pool::sleep_unless_shutdown;
use crate::worker::shared::Shared;

/// Starts the sweep; `None` on one Redis (nothing is ever PENDING there) or when the interval
/// is 0 (off).
pub(crate) fn spawn(shared: Arc<Shared>, service: WalletService) -> Option<JoinHandle<()>> {
    let interval_ms = shared.config.recover_interval_ms;
    // One Redis: transfers are one transaction there, never PENDING.
    service.cluster()?;
    if interval_ms == 0 {
        log::warn!(
            "recovery sweep off (--recover-interval-ms 0): a cross-slot transfer left PENDING by a crash is finished only when its request is delivered again, or by wallet recover"
        );
        return None;
    }
    log::info!(
        "recovery sweep every {interval_ms} ms, at most {} PENDING transfers a run",
        shared.config.recover_batch
    );
    let thread = std::thread::Builder::new()
        .name("recover-sweep".into())
        .spawn(move || sweep(&shared, &service))
        .expect("spawn the recovery sweep thread");
    Some(thread)
}

/// Runs a sweep every interval until shutdown; one that stopped at its limit and finished
/// something runs again at once.
fn sweep(shared: &Shared, service: &WalletService) {
    let interval_ms = shared.config.recover_interval_ms;
    let mut again_now = false;
    while again_now || sleep_unless_shutdown(shared, interval_ms) {
        again_now = false;
        match service.recover(shared.config.recover_batch) {
            Ok(report) => {
                shared
                    .metrics
                    .record_recover_run(Ok((report.finished, report.failed)));
                log_report(shared, &report);
                again_now = run_again_at_once(&report, shared.stopping());
            }
            Err(e) => {
                shared.metrics.record_recover_run(Err(()));
                // A primary that stopped answering (failed over, say): the next sweep scans
                // the primaries of a fresh map.
                if let Some(pools) = service.cluster() {
                    let _ = pools.refresh();
                }
                shared.warnings.warn("recover_sweep", || {
                    format!(
                        "recovery sweep failed: {e}; the next sweep tries again in {interval_ms} ms"
                    )
                });
            }
        }
    }
}

/// Whether the next sweep runs at once rather than after the interval: this one stopped at
/// its batch limit (more may be PENDING) and finished something (it is not stuck on busy
/// locks), and the worker is not stopping. Pure.
fn run_again_at_once(report: &RecoverReport, stopping: bool) -> bool {
    report.limit_reached && report.finished > 0 && !stopping
}

/// The warning for PENDING records a sweep could not finish; `None` when it finished all it
/// found. Pure.
fn unfinished_warning(report: &RecoverReport) -> Option<String> {
    (report.failed > 0).then(|| {
        format!(
            "recovery sweep could not finish {} PENDING transfers (retried by the next sweep): {}",
            report.failed,
            report.errors.join("; ")
        )
    })
}

fn log_report(shared: &Shared, report: &RecoverReport) {
    if report.pending_found == 0 {
        log::debug!(
            "recovery sweep: {} outcome records on {} primaries, none PENDING",
            report.records_scanned,
            report.primaries_scanned
        );
        return;
    }
    log::info!(
        "recovery sweep: {} PENDING found, {} finished, {} already finished by a delivery, {} not finishable now{}",
        report.pending_found,
        report.finished,
        report.already_final,
        report.failed,
        if report.limit_reached {
            " (stopped at --recover-batch)"
        } else {
            ""
        }
    );
    if let Some(warning) = unfinished_warning(report) {
        shared.warnings.warn("recover_unfinished", || warning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(limit_reached: bool, finished: u64, failed: u64) -> RecoverReport {
        RecoverReport {
            limit_reached,
            finished,
            failed,
            errors: vec!["transfer:{a}:k: lock busy".into(); failed.min(1) as usize],
            ..RecoverReport::default()
        }
    }

    #[test]
    fn a_sweep_runs_again_at_once_only_after_a_full_batch_that_finished_something() {
        assert!(run_again_at_once(&report(true, 1, 0), false));
        assert!(!run_again_at_once(&report(true, 1, 0), true), "stopping");
        assert!(!run_again_at_once(&report(false, 5, 0), false), "all found");
        assert!(
            !run_again_at_once(&report(true, 0, 3), false),
            "stuck on busy locks"
        );
    }

    #[test]
    fn only_a_sweep_that_left_records_pending_warns_and_names_them() {
        assert_eq!(unfinished_warning(&report(false, 4, 0)), None);
        let warning = unfinished_warning(&report(false, 0, 1)).expect("a warning");
        assert!(warning.contains("could not finish 1 PENDING"), "{warning}");
        assert!(warning.contains("lock busy"), "{warning}");
    }
}
