//! Operator tooling over the engine and the worker's topics: the ledger audit's checks
//! (`audit`), its reads, snapshots and other read-outs (`ops`), the one reader of the results and dead-letter topics (`results`),
//! the demo seeder (`seed`), the history migration (`migrate`), benchmarks (`bench`) and the six race scenarios (`scenarios`).
//! Behind the `tools` feature.
//!
//! Owns nothing the transfer path depends on: a change here cannot change how money moves.

pub mod audit;
pub mod bench;
#[doc(hidden)]
pub mod latency;
pub mod migrate;
pub mod ops;
#[doc(hidden)]
pub mod results;
pub mod scenarios;
pub mod seed;
