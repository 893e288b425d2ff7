//! The Kafka worker: the pipeline (`pipeline`: the worker and its shared state; `consumer`: the
//! consumer thread; `commit`: the committer thread; `pool`: transfer threads, delivery reports,
//! retry timer), per-key order
//! (`keyed`), the delay queue of retries (`retry`), its settings (`config`), the offset
//! watermark arithmetic it commits by (`offsets`), Kafka client settings and topic admin
//! (`kafka`), the outcome ttl the requests topic needs (`outcome_ttl`), the ledger topic's entries (`ledger`), Prometheus metrics (`metrics`), readiness (`health`), the recovery sweep of
//! cross-slot transfers left PENDING on a Redis Cluster (`sweep`), and the process around it
//! (`command`: signals, the metrics and health endpoint). Behind the `worker` feature.
//!
//! Owns message transport and delivery discipline. Does not own any transfer logic: every
//! transfer goes through [`crate::WalletService::transfer`].

#[doc(hidden)]
pub mod command;
mod commit;
pub mod config;
mod consumer;
#[doc(hidden)]
pub mod health;
#[doc(hidden)]
pub mod kafka;
mod keyed;
pub mod ledger;
#[doc(hidden)]
pub mod metric_names;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod offsets;
#[doc(hidden)]
pub mod outcome_ttl;
pub mod pipeline;
mod pool;
mod retry;
mod shared;
mod sweep;
mod warnings;

pub use config::WorkerConfig;
pub use kafka::KafkaConfig;
pub use metrics::{Metrics, MetricsServer, serve};
pub use pipeline::{Worker, WorkerError, WorkerReport};
