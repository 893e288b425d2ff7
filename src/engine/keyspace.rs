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
    /// every wallet's slot (readers scan each shard for [`KeySpace::wallet_listing`]).
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

    /// SCAN pattern of every outcome record (`transfer:KEY`, `transfer:{SENDER}:KEY`).
    pub fn outcome_pattern(self) -> &'static str {
        match self {
            KeySpace::Standalone => keys::OUTCOME_PATTERN,
            KeySpace::Cluster => "transfer:{*}:*",
        }
    }

    /// What follows `transfer:` in an outcome record's name: the key (`KEY`), or on a cluster
    /// `{SENDER}:KEY`, which the audit keys its records by.
    pub fn outcome_id(self, record_key: &str) -> &str {
        record_key.strip_prefix("transfer:").unwrap_or(record_key)
    }

    /// SCAN patterns of every key a bench run `run` leaves (its wallets are `{run}_...`, its
    /// idempotency keys `{run}_t...`): wallets with their histories, users, outcome records,
    /// locks, and on a cluster the credit markers and the keys' claims. Not the index sets.
    pub fn run_patterns(self, run: &str) -> Vec<String> {
        match self {
            KeySpace::Standalone => ["wallet", "user", "transfer", "lock"]
                .iter()
                .map(|family| format!("{family}:{run}_*"))
                .collect(),
            KeySpace::Cluster => {
                let tag = format!("{{{run}_*}}");
                vec![
                    format!("wallet:{tag}*"),
                    format!("user:{tag}"),
                    format!("transfer:{tag}:*"),
                    format!("credit:{tag}:*"),
                    format!("lock:{tag}"),
                    // The claims of the run's idempotency keys (no hash tag).
                    format!("claim:{run}_*"),
                ]
            }
        }
    }

    /// SCAN pattern of the outcome records of bench run `run`'s transfers (`{run}_t...`).
    pub fn run_outcome_pattern(self, run: &str) -> String {
        match self {
            KeySpace::Standalone => format!("transfer:{run}_t*"),
            KeySpace::Cluster => format!("transfer:{{{run}_*}}:{run}_t*"),
        }
    }

    /// Whether a transfer's wallets may sit in different hash slots, so that it runs as steps
    /// with PENDING records and credit markers (a cluster), rather than always as one
    /// transaction (one Redis).
    pub fn has_cross_slot_transfers(self) -> bool {
        self == KeySpace::Cluster
    }

    /// Whether one MULTI/EXEC may read any keys of this key space (one Redis); on a cluster
    /// a transaction stays within one hash slot.
    pub fn one_transaction_reads_any_keys(self) -> bool {
        self == KeySpace::Standalone
    }

    /// SCAN pattern of every wallet lock (`lock:ID`, `lock:{ID}`).
    pub fn lock_pattern(self) -> &'static str {
        match self {
            KeySpace::Standalone => keys::LOCK_PATTERN,
            KeySpace::Cluster => "lock:{*}",
        }
    }

    /// SCAN pattern of the older history streams (`wallet:ID:history`).
    pub fn history_stream_pattern(self) -> &'static str {
        match self {
            KeySpace::Standalone => "wallet:*:history",
            KeySpace::Cluster => "wallet:{*}:history",
        }
    }

    /// How every wallet is listed: SSCAN of `wallets:all` on one Redis, SCAN of `wallet:{*}`
    /// hashes on each shard of a cluster (which has no index set).
    pub fn wallet_listing(self) -> WalletListing {
        match self {
            KeySpace::Standalone => WalletListing::IndexSet(keys::WALLETS_ALL),
            KeySpace::Cluster => WalletListing::Scan("wallet:{*}"),
        }
    }

    /// The wallet id in a wallet hash's name (`wallet:ID`, `wallet:{ID}`); `None` for any
    /// other key.
    pub fn wallet_id_of_key(self, key: &str) -> Option<&str> {
        let rest = key.strip_prefix("wallet:")?;
        match self {
            KeySpace::Standalone => Some(rest).filter(|id| !id.contains(':')),
            KeySpace::Cluster => rest.strip_prefix('{')?.strip_suffix('}'),
        }
    }

    /// SCAN pattern of the credit markers of cross-slot transfers; `None` where there are
    /// none (one Redis, where every transfer is one transaction).
    pub fn credit_marker_pattern(self) -> Option<&'static str> {
        match self {
            KeySpace::Standalone => None,
            KeySpace::Cluster => Some(cluster::keys::CREDIT_MARKER_PATTERN),
        }
    }

    /// SCAN patterns that together match every key of the data model (users, wallets with
    /// their histories, outcome records, locks; on a cluster also the credit markers and the
    /// keys' claims), without the index sets ([`KeySpace::wallet_index_sets`]).
    pub fn data_model_patterns(self) -> &'static [&'static str] {
        match self {
            KeySpace::Standalone => &[
                keys::USER_PATTERN,
                keys::WALLET_PATTERN,
                keys::OUTCOME_PATTERN,
                keys::LOCK_PATTERN,
            ],
            KeySpace::Cluster => &[
                keys::USER_PATTERN,
                keys::WALLET_PATTERN,
                keys::OUTCOME_PATTERN,
                keys::LOCK_PATTERN,
                "credit:*",
                cluster::keys::CLAIM_PATTERN,
            ],
        }
    }
}

/// How a key space lists its wallets (see [`KeySpace::wallet_listing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletListing {
    /// Members of this set (one Redis's `wallets:all`).
    IndexSet(&'static str),
    /// Hashes whose names match this pattern, on every shard ([`KeySpace::wallet_id_of_key`]
    /// gives the id).
    Scan(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_match_the_names_and_give_the_ids_back() {
        for space in [KeySpace::Standalone, KeySpace::Cluster] {
            let wallet = space.wallet("user_1");
            assert_eq!(space.wallet_id_of_key(&wallet), Some("user_1"));
            assert_eq!(space.wallet_id_of_key(&space.log("user_1")), None);
            assert_eq!(space.wallet_id_of_key(&space.user("user_1")), None);
            let outcome = space.outcome("user_1", "k1");
            let glob = space
                .outcome_pattern()
                .replace("{*}", "{user_1}")
                .replace('*', "k1");
            assert_eq!(glob, outcome);
            assert!(space.outcome_id(&outcome).ends_with("k1"));
            let stream = space.history_stream_pattern().replace('*', "user_1");
            assert_eq!(stream, space.history("user_1"));
        }
        assert_eq!(KeySpace::Cluster.outcome_id("transfer:{a}:k"), "{a}:k");
    }

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
