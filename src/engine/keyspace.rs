//! Which key names the engine writes: the standalone ones (`store::keys`, the original
//! system's) or the cluster ones (`cluster::keys`, every key of a wallet tagged `{id}`).
//!
//! Owns the choice between the two spellings, so the transfer and wallet code ask for "the
//! wallet key of X" without knowing the mode. Does not own the spellings themselves (they stay
//! in `store::keys` and `cluster::keys`) or the connections (`topology::Topology`).

use crate::engine::cluster;
use crate::engine::store::keys;

/// Most wallets one lock may cover.
pub const LOCK_KEYS_LIMIT: usize = 16;

/// The key names of one mode. Pure functions of the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpace {
    /// One Redis: `wallet:ID`, `transfer:KEY`, ... (the original system's names).
    Standalone,
    /// A Redis Cluster: `wallet:{ID}`, `transfer:{SENDER}:KEY`, ... (hash tags).
    Cluster,
}

impl KeySpace {
    /// The wallet's hash.
    pub fn wallet(self, id: &str) -> String {
        match self {
            KeySpace::Standalone => keys::wallet(id),
            KeySpace::Cluster => cluster::keys::wallet(id),
        }
    }

    /// The wallet's history stream of the older format (read, trimmed, migrated; never
    /// written).
    pub fn history(self, id: &str) -> String {
        match self {
            KeySpace::Standalone => keys::history(id),
            KeySpace::Cluster => cluster::keys::history(id),
        }
    }

    /// The wallet's history list, where every new entry goes.
    pub fn log(self, id: &str) -> String {
        match self {
            KeySpace::Standalone => keys::log(id),
            KeySpace::Cluster => cluster::keys::log(id),
        }
    }

    /// The wallet's lock.
    pub fn lock(self, id: &str) -> String {
        match self {
            KeySpace::Standalone => keys::lock(id),
            KeySpace::Cluster => cluster::keys::lock(id),
        }
    }

    /// The user's hash.
    pub fn user(self, id: &str) -> String {
        match self {
            KeySpace::Standalone => keys::user(id),
            KeySpace::Cluster => cluster::keys::user(id),
        }
    }

    /// The outcome record of a request; standalone names do not hold the sender.
    pub fn outcome(self, sender: &str, idempotency_key: &str) -> String {
        match self {
            KeySpace::Standalone => keys::outcome(idempotency_key),
            KeySpace::Cluster => cluster::keys::outcome(sender, idempotency_key),
        }
    }

    /// The sets every new wallet and user is added to: `users:all` and `wallets:all` on one
    /// Redis (the original system's indexes); none on a cluster, where one key cannot sit in
    /// every wallet's slot (readers scan each shard for [`KeySpace::wallet_pattern`]).
    pub fn wallet_index_sets(self) -> &'static [&'static str] {
        match self {
            KeySpace::Standalone => &[keys::USERS_ALL, keys::WALLETS_ALL],
            KeySpace::Cluster => &[],
        }
    }

    /// Whether an outcome record's name holds its sender (a cluster's, which lives in the
    /// sender's slot), so that the key alone cannot find it.
    pub fn outcome_needs_sender(self) -> bool {
        self == KeySpace::Cluster
    }

    /// The lock keys of `wallet_ids`, sorted as strings and unique: the one order every
    /// locker takes them in.
    /// At least one and at most [`LOCK_KEYS_LIMIT`] wallets (asserted).
    pub fn lock_keys(self, wallet_ids: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = wallet_ids.iter().map(|id| self.lock(id)).collect();
        keys.sort_unstable();
        keys.dedup();
        assert!(!keys.is_empty(), "a lock covers at least one wallet");
        assert!(
            keys.len() <= LOCK_KEYS_LIMIT,
            "too many wallets for one lock"
        );
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_names_are_the_original_ones_and_cluster_names_are_tagged() {
        let s = KeySpace::Standalone;
        assert_eq!(s.wallet("a"), "wallet:a");
        assert_eq!(s.outcome("a", "k"), "transfer:k");
        assert_eq!(s.lock_keys(&["b", "a", "b"]), ["lock:a", "lock:b"]);
        let c = KeySpace::Cluster;
        assert_eq!(c.history("a"), "wallet:{a}:history");
        assert_eq!(c.log("a"), "wallet:{a}:log");
        assert_eq!(s.log("a"), "wallet:a:log");
        assert_eq!(c.outcome("a", "k"), "transfer:{a}:k");
        // Sorted as keys, not as ids: `lock:{ab}` < `lock:{a}` because `b` < `}`.
        assert_eq!(c.lock_keys(&["a", "ab"]), ["lock:{ab}", "lock:{a}"]);
    }
}
