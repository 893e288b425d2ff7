//! The Kafka worker: the consumer-to-pool pipeline (`pipeline`), its settings (`config`), the
//! offset watermark arithmetic it commits by (`offsets`), Kafka client settings and topic admin
//! (`kafka`), Prometheus metrics (`metrics`), and the process around it (`command`: signals and
//! the metrics endpoint). Behind the `worker` feature.
//!
//! Owns message transport and delivery discipline. Does not own any transfer logic: every
//! transfer goes through [`crate::WalletService::transfer`].

pub mod command;
pub mod config;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod pipeline;

pub use config::WorkerConfig;
pub use pipeline::{Worker, WorkerError, WorkerReport};
