//! Why a bench run could not finish: [`BenchError`].
//!
//! Owns the one error type of the bench, which `tools::latency` (the broker floor) returns
//! too. A leaf: it imports nothing from the rest of the bench or from `tools::latency`, so
//! both can use it without importing each other. Does not own the money check's verdict,
//! which is not an error (`BenchReport::check`, in `report`).

use crate::engine::cluster::ClusterError;
use crate::engine::setting::SettingError;
use crate::engine::wallet::WalletError;

/// Why a bench run could not finish (a money check that fails is not an error: see
/// [`BenchReport::balance`](crate::tools::bench::BenchReport::balance)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A setting broke its rule.
    #[error("invalid bench setting: {0}")]
    Config(#[from] SettingError),
    /// Preparing the run failed (creating wallets, a worker that does not answer, ...).
    #[error("bench setup: {0}")]
    Setup(String),
    /// A wallet operation failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis Cluster's map or a primary's pool failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// No pooled connection in time.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// Publishing requests or reading results failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Not every result arrived in time.
    #[error("timed out: {0}")]
    Timeout(String),
}
