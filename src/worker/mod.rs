//! The Kafka worker: the consumer-to-pool pipeline (`pipeline`) and the offset watermark
//! arithmetic it commits by (`offsets`).

pub mod command;
pub mod offsets;
pub mod pipeline;

pub use pipeline::{Worker, WorkerConfig, WorkerError, WorkerReport};
