//! The blocking transfer engine: everything needed to move money between wallets in Redis,
//! exactly once per request, with no Kafka in sight. Builds alone
//! (`cargo build --no-default-features --lib`).
//!
//! Owns the data model and its invariants (see ARCHITECTURE.md, "Code map: src/engine").
//! Does not own message transport (`worker`) or operator tooling (`tools`).

pub mod backoff;
pub mod cluster;
pub(crate) mod cluster_lock;
pub mod cluster_transfer;
pub mod expiry;
pub(crate) mod key_claim;
pub mod keyspace;
pub mod lock;
pub mod message;
pub mod money;
pub mod outcome;
pub mod permissions;
pub mod retention;
pub mod service;
pub mod setting;
pub mod store;
pub mod topology;
pub mod transfer;
pub mod wallet;
