//! The integration tests, as one binary: `cargo test --test it`, or one area with a filter
//! (`cargo test --test it faults::`). They run against real `redis-server` and `tansu`
//! processes that each test starts on free ports (see `support`), and the real `wallet`
//! binary where a test drives a command or a worker.

mod support;

mod audit;
mod bench_cluster;
mod bench_e2e;
mod cluster;
mod cluster_ops;
mod cluster_transfer;
mod cluster_worker;
mod contracts;
mod docs;
mod engine;
mod examples;
mod expiry;
mod faults;
mod history;
mod kafka;
mod key_rule;
mod lifecycle;
mod memory;
mod monitoring;
mod ops;
mod outcome_ttl;
mod partition;
mod produce;
mod retention;
mod seed;
mod semantics;
mod shutdown;
mod simulation;
mod tls;
mod worker;
