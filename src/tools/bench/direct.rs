//! `wallet bench --direct`: [`run_direct`] calls [`WalletService::transfer`] from a pool of
//! threads, retrying transient errors, and fills in every figure of the report: latency, the
//! engine's own costs, what Redis counted (per primary and per transfer path on a cluster) and
//! what the run left in Redis.
//!
//! Owns the direct run's settings ([`DirectConfig`] and the `BENCH_*` limits), its threads and
//! the progress bar. Does not own the report (`report`), the Redis counters and reads
//! (`cost`), the wallets (`setup`, `workload`), or the end-to-end mode (`e2e`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::cluster;
use crate::engine::message::TransferRequest;
use crate::engine::money::Amount;
use crate::engine::service::WalletService;
use crate::engine::setting::{SettingError, setters};
use crate::tools::bench::cost::{
    count_history, count_outcome_records, node_costs, node_counters, sample_wallet_bytes,
};
use crate::tools::bench::error::BenchError;
use crate::tools::bench::figures::{ClusterFigures, LatencySummary, RedisCost, Retained};
use crate::tools::bench::report::{BenchReport, Tally, count, outcome_name};
use crate::tools::bench::setup::BENCH_OPENING_CENTS;
use crate::tools::bench::workload::{Pairs, Run};

/// Most threads of a direct run.
pub const BENCH_THREADS_LIMIT: usize = 256;
/// Most transfers of one run.
pub const BENCH_TRANSFERS_LIMIT: u64 = 10_000_000;
/// Fewest wallets of a run (one pair).
pub const BENCH_WALLETS_MIN: u32 = 2;
/// Most wallets of a run.
pub const BENCH_WALLETS_LIMIT: u32 = 1_000_000;
/// Retries of one request after a transient error, at most.
pub const BENCH_TRANSIENT_RETRIES_LIMIT: u32 = 100;

/// Warnings logged per run about retried or failed requests; the rest are only counted.
const WARNINGS_MAX: u32 = 5;

/// Settings of a direct run. `Default` plus the `with_*` setters (the struct is
/// `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectConfig {
    /// Threads calling `transfer`; the pool should hold as many connections.
    pub threads: usize,
    /// Transfers in total, shared out among the threads.
    pub transfers: u64,
    /// Wallets created for the run.
    pub wallets: u32,
    /// Every transfer goes from the first wallet to the second: one hot pair.
    pub hot: bool,
    /// Which pairs the transfers are drawn from (see [`Pairs`]).
    pub pairs: Pairs,
    /// Retries of one request after a transient error (same request, same idempotency key).
    pub transient_retries: u32,
    /// Draws a progress bar on stderr (indicatif hides it when stderr is not a terminal).
    pub progress: bool,
    /// Deletes the run's wallets, users, histories and outcome records afterwards.
    pub cleanup: bool,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig {
            threads: 8,
            transfers: 50_000,
            wallets: 10_000,
            hot: false,
            pairs: Pairs::Random,
            transient_retries: 5,
            progress: false,
            cleanup: false,
        }
    }
}

setters!(DirectConfig {
    with_threads => threads: usize,
    with_transfers => transfers: u64,
    with_wallets => wallets: u32,
    with_hot => hot: bool,
    with_pairs => pairs: Pairs,
    with_transient_retries => transient_retries: u32,
    with_progress => progress: bool,
    with_cleanup => cleanup: bool,
});

impl DirectConfig {
    /// Checks the settings against their limits; the error names the setting and the rule.
    pub fn validate(&self) -> Result<(), SettingError> {
        SettingError::check_range("threads", self.threads, 1, BENCH_THREADS_LIMIT)?;
        SettingError::check_range("transfers", self.transfers, 1, BENCH_TRANSFERS_LIMIT)?;
        SettingError::check_range(
            "wallets",
            self.wallets,
            BENCH_WALLETS_MIN,
            BENCH_WALLETS_LIMIT,
        )?;
        SettingError::check_range(
            "transient_retries",
            self.transient_retries,
            0,
            BENCH_TRANSIENT_RETRIES_LIMIT,
        )
    }
}

/// Runs `config.transfers` transfers through `service` from `config.threads` threads among
/// wallets it creates, then checks the balance sum. The service's pool should hold at least
/// `config.threads` connections.
pub fn run_direct(
    service: &WalletService,
    config: &DirectConfig,
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let run = Run::create(service, "bench", config.wallets, config.pairs)?;
    log::info!(
        "{}: {} wallets of {} each ready in {:.2}s; running {} transfers on {} threads",
        run.name,
        run.ids.len(),
        Amount::from_minor(BENCH_OPENING_CENTS),
        run.created_at.elapsed().as_secs_f64(),
        config.transfers,
        config.threads
    );
    let bar = progress_bar(config.transfers, config.progress);
    let before = node_counters(service)?;
    let started = Instant::now();
    let total = run_threads(service, config, &run, &bar);
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let nodes = node_costs(&before, &node_counters(service)?);
    let memory_before: i64 = before.iter().map(|(_, c)| c.used_memory).sum();
    let memory_delta: i64 = nodes.iter().map(|n| n.used_memory_delta_bytes).sum();
    let redis = RedisCost {
        commands: nodes.iter().map(|n| n.commands).sum(),
        used_memory_delta_bytes: memory_delta,
    };
    let retained = Retained {
        used_memory_before: memory_before,
        used_memory_after: memory_before + memory_delta,
        ..read_retained(service, &run, config.transfers, config.progress)?
    };
    let cluster = service.cluster().map(|_| ClusterFigures {
        primaries: nodes,
        same_slot: total.paths[0],
        cross_slot: total.paths[1],
    });
    let end = run.end(service, config.cleanup)?;
    Ok(BenchReport {
        mode: "direct",
        run: end.name,
        publish_rate: None,
        threads: config.threads,
        wallets: config.wallets,
        hot: config.hot,
        pairs: config.pairs,
        transfers: total.finished,
        elapsed,
        latency: LatencySummary::from_histogram_us(&total.latency_us),
        engine: Some(total.engine),
        outcomes: total.outcomes,
        errors: total.errors,
        transient_retries: total.retries,
        balance: Some(end.balance),
        cleaned_keys: end.cleaned_keys,
        redis: Some(redis),
        retained: Some(retained),
        cluster,
        stages: None,
        broker_floor: None,
    })
}

/// Reads what the run left in Redis: its outcome records (`transfers` requests) and its
/// wallets' histories and checkpoints, with a progress bar when `progress`. Memory figures
/// are left at 0 for the caller.
fn read_retained(
    service: &WalletService,
    run: &Run,
    transfers: u64,
    progress: bool,
) -> Result<Retained, BenchError> {
    let bar = progress_bar(transfers + run.ids.len() as u64, progress);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} keys read for the retained figures",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let (outcome_records, outcome_records_with_ttl) =
        count_outcome_records(service, &run.name, &bar)?;
    let (history_entries, history_trimmed) = count_history(service, &run.ids, &bar)?;
    let wallet_bytes = sample_wallet_bytes(service, &run.ids)?;
    bar.finish_and_clear();
    Ok(Retained {
        outcome_records,
        outcome_records_with_ttl,
        history_entries,
        history_trimmed,
        wallet_bytes,
        ..Retained::default()
    })
}

/// Runs [`worker`] on `config.threads` threads until every transfer is handed out; their
/// tallies merged.
fn run_threads(
    service: &WalletService,
    config: &DirectConfig,
    run: &Run,
    bar: &ProgressBar,
) -> Tally {
    let next = AtomicU64::new(0);
    let warned = AtomicU32::new(0);
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|_| scope.spawn(|| worker(service, config, run, &next, &warned, bar)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut total = Tally::new();
    for t in tallies {
        total.merge(t);
    }
    total
}

pub(super) fn progress_bar(len: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} transfers, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One bench thread: takes transfer numbers from `next` until all are handed out.
fn worker(
    service: &WalletService,
    config: &DirectConfig,
    run: &Run,
    next: &AtomicU64,
    warned: &AtomicU32,
    bar: &ProgressBar,
) -> Tally {
    let warn = |text: String| {
        let n = warned.fetch_add(1, Ordering::Relaxed);
        if n < WARNINGS_MAX {
            bar.suspend(|| log::warn!("{text}"));
        } else if n == WARNINGS_MAX {
            bar.suspend(|| log::warn!("further retries and errors are only counted"));
        }
    };
    let mut tally = Tally::new();
    let mut rng = rand::rng();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= config.transfers {
            return tally;
        }
        match run.request(&mut rng, n, config.hot) {
            Ok(request) => transfer(
                service,
                &request,
                config.transient_retries,
                &mut tally,
                &warn,
            ),
            Err(e) => {
                // Cannot happen with the run's ids; count it rather than panic.
                bar.suspend(|| log::error!("bench request {n} is invalid: {e}"));
                count(&mut tally.errors, "invalid_request");
            }
        }
        tally.finished += 1;
        bar.inc(1);
    }
}

/// One request, retried up to `retries` times after a transient error (same request, same
/// idempotency key); its latency, outcome or error, and retries go into `tally`.
fn transfer(
    service: &WalletService,
    request: &TransferRequest,
    retries: u32,
    tally: &mut Tally,
    warn: &impl Fn(String),
) {
    let started = Instant::now();
    let mut retry = 0;
    let result = loop {
        match service.transfer(request) {
            Err(e) if e.is_transient() && retry < retries => {
                count(&mut tally.retries, e.kind());
                warn(format!("retrying {}: {e}", request.transfer_id));
                std::thread::sleep(Duration::from_millis(10 << retry.min(6)));
                retry += 1;
            }
            other => break other,
        }
    };
    tally.latency(started.elapsed());
    let slot = cluster::keys::wallet_slot;
    let path = &mut tally.paths[usize::from(slot(&request.from_user) != slot(&request.to_user))];
    path.transfers += 1;
    match result {
        Ok(outcome) => {
            tally.engine.add_outcome(&outcome);
            path.engine.add_outcome(&outcome);
            count(&mut tally.outcomes, outcome_name(&outcome));
        }
        Err(e) => {
            count(&mut tally.errors, e.kind());
            warn(format!("{} failed: {e}", request.transfer_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits_name_the_setting() {
        assert!(DirectConfig::default().validate().is_ok());
        for (bad, word) in [
            (
                DirectConfig {
                    threads: 0,
                    ..Default::default()
                },
                "threads",
            ),
            (
                DirectConfig {
                    threads: 257,
                    ..Default::default()
                },
                "threads",
            ),
            (
                DirectConfig {
                    transfers: 0,
                    ..Default::default()
                },
                "transfers",
            ),
            (
                DirectConfig {
                    transfers: 10_000_001,
                    ..Default::default()
                },
                "transfers",
            ),
            (
                DirectConfig {
                    wallets: 1,
                    ..Default::default()
                },
                "wallets",
            ),
            (
                DirectConfig {
                    wallets: 1_000_001,
                    ..Default::default()
                },
                "wallets",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().setting, word, "{bad:?}");
        }
    }
}
