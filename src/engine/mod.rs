//! The blocking transfer engine: everything needed to move money between wallets in Redis,
//! exactly once per request, with no Kafka in sight. Builds alone
//! (`cargo build --no-default-features --lib`).
//!
//! Owns the data model and its invariants (see ARCHITECTURE.md, "Code map: src/engine").
//! Does not own message transport (`worker`) or operator tooling (`tools`).

#[doc(hidden)]
pub mod backoff;
#[doc(hidden)]
pub mod cluster;
pub(crate) mod cluster_lock;
#[doc(hidden)]
pub mod cluster_transfer;
#[doc(hidden)]
pub mod expiry;
pub(crate) mod key_claim;
#[doc(hidden)]
pub mod keyspace;
#[doc(hidden)]
pub mod lock;
pub mod message;
pub mod money;
#[doc(hidden)]
pub mod outcome;
#[doc(hidden)]
pub mod permissions;
#[doc(hidden)]
pub mod recovery;
#[doc(hidden)]
pub mod retention;
pub mod service;
#[doc(hidden)]
pub mod setting;
#[doc(hidden)]
pub mod store;
#[doc(hidden)]
pub mod topology;
pub mod transfer;
pub mod wallet;

// The engine's public API beyond the crate root: what a caller names to connect, configure and
// handle errors. The modules above marked `#[doc(hidden)]` hold the engine's internals; they
// stay reachable for the `wallet` binary and the repository's tests, carry no stability
// promise (docs/library.md, "Compatibility"), and may change in any release.
pub use cluster::{ClusterError, ClusterPools};
pub use lock::{LockConfig, LockError};
pub use permissions::PermissionError;
pub use recovery::RecoverReport;
pub use setting::SettingError;
pub use store::{Pool, RedisTls, StoreError, connect_pool};
pub use topology::{Shard, Topology};
