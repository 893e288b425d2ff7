//! Load generator for the transfer engine, and the report it prints.
//!
//! A run creates its own wallets under a unique prefix (`bench_<6 hex>_<i>`), moves money
//! between them and checks afterwards that the sum of their balances did not change. The
//! [`BenchReport`] is mode-neutral: the direct mode ([`run_direct`]) calls
//! [`WalletService::transfer`](crate::WalletService::transfer) from a pool of threads and
//! fills in every figure, including what the run left in Redis ([`Retained`]: outcome
//! records, history kept and trimmed, `used_memory` before and after); the end-to-end mode
//! ([`run_e2e`]) publishes requests to a running worker through Kafka, waits for their results
//! and fills in the figures it can see (throughput, publish-to-result latency, outcomes),
//! leaving the engine figures (`engine`) empty.
//!
//! One file per concern, the dependencies pointing one way (leaves first):
//!
//! - `error`: [`BenchError`]; and `figures`: the figures of a report ([`LatencySummary`],
//!   [`EngineFigures`], [`BalanceCheck`], [`RedisCost`], [`ClusterFigures`], [`Retained`]),
//!   pure. Both are leaves that `tools::latency` uses too.
//! - `setup`: the run's wallets in Redis: creation, the balance sums, cleanup.
//! - `workload`: the run's ids, pairs ([`Pairs`]) and requests.
//! - `report`: [`BenchReport`], its table and JSON, the tally a run keeps.
//! - `cost`: Redis's own counters (`INFO commandstats memory cpu`) and what a run left there.
//! - `direct`: [`run_direct`] and [`DirectConfig`]; `e2e`: [`run_e2e`] and [`E2eConfig`].
//!
//! Owns the bench: its wallets, workload, runs and report. Does not own how a transfer runs
//! (`engine`), how topics are read (`tools::results`), or the split of an end-to-end latency
//! into legs (`tools::latency`). This file holds only the modules and the public paths
//! (`tools::bench::X`); nothing in the folder imports from it.

mod cost;
mod direct;
mod e2e;
pub(crate) mod error;
pub(crate) mod figures;
mod report;
mod setup;
mod workload;

pub use direct::{
    BENCH_THREADS_LIMIT, BENCH_TRANSFERS_LIMIT, BENCH_WALLETS_LIMIT, BENCH_WALLETS_MIN,
    DirectConfig, run_direct,
};
pub use e2e::{E2eConfig, run_e2e};
pub use error::BenchError;
pub use figures::{
    BalanceCheck, ClusterFigures, EngineFigures, LatencySummary, NodeCost, PathFigures, RedisCost,
    Retained,
};
pub use report::BenchReport;
pub use workload::Pairs;

// The workload's and the cost counters' inner parts, public for the repository's tests; not
// part of the API.
#[doc(hidden)]
pub use cost::{WALLET_BYTES_SAMPLE, parse_command_calls};
#[doc(hidden)]
pub use direct::BENCH_TRANSIENT_RETRIES_LIMIT;
#[doc(hidden)]
pub use report::outcome_name;
#[doc(hidden)]
pub use setup::BENCH_OPENING_CENTS;
#[doc(hidden)]
pub use workload::{BENCH_AMOUNT_CENTS_MAX, run_ids, same_slot_ids};
