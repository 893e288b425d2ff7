//! Creating wallets on a Redis Cluster: each wallet's user and wallet hashes in the wallet's
//! slot (`user:{id}`, `wallet:{id}`), written on the slot's primary, pipelined per primary.
//!
//! Owns the cluster form of wallet creation. Does not: keep `users:all` and `wallets:all`
//! (single keys cannot sit in every wallet's slot; readers scan every primary for
//! `wallet:{*}` instead, see `cluster.rs`, "Open questions"), read, deposit or move money
//! (`wallet`, `cluster_transfer`, which work in both modes).

use std::collections::BTreeMap;

use crate::engine::cluster::{ClusterPools, keys};
use crate::engine::wallet::{NewWallet, WalletError, create_in_batches};

/// The creation of one wallet and its user, never overwriting an existing wallet: both keys
/// are in the wallet's slot, so the script runs on one node.
const CREATE_CLUSTER_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'user_id', ARGV[1], 'full_name', ARGV[2], 'email', ARGV[3],
  'created_at', ARGV[6], 'status', 'active')
redis.call('HSET', KEYS[1], 'wallet_id', ARGV[1], 'user_id', ARGV[1], 'balance', ARGV[4],
  'opening_balance', ARGV[4], 'currency', ARGV[5], 'status', 'active', 'created_at', ARGV[6],
  'version', 0)
return 1
"#;

/// Creates `wallets` (checked by the caller) on their primaries: grouped by the primary the
/// known map gives each wallet's slot, one pipelined round trip per batch of
/// [`crate::engine::wallet::CREATE_BATCH_LIMIT`]. Returns how many were created (existing ones are skipped). A
/// MOVED reply (the map is stale) refreshes the map and is returned as a Redis error: call
/// again, the creation is idempotent.
pub(crate) fn create_wallets(
    pools: &ClusterPools,
    wallets: &[NewWallet],
    wait_replicas: Option<u32>,
) -> Result<usize, WalletError> {
    let mut by_primary: BTreeMap<String, Vec<&NewWallet>> = BTreeMap::new();
    for w in wallets {
        let slot = keys::wallet_slot(&w.user_id);
        let primary = pools
            .primary_for_slot(slot)
            .ok_or(crate::engine::cluster::ClusterError::SlotUncovered(slot))?;
        by_primary.entry(primary).or_default().push(w);
    }
    let script = redis::Script::new(CREATE_CLUSTER_LUA);
    let mut created = 0;
    for (primary, group) in by_primary {
        let mut conn = pools.conn_for_addr(&primary)?;
        created += create_in_batches(&mut conn, &script, &group, |w| {
            vec![keys::wallet(&w.user_id), keys::user(&w.user_id)]
        })
        .inspect_err(|e| {
            if crate::engine::cluster::Redirect::parse(e).is_some() {
                let _ = pools.refresh();
            }
        })?;
        crate::engine::wallet::wait_replicas(
            &mut conn,
            wait_replicas,
            "the new wallets",
            crate::engine::wallet::CREATE_ADVICE,
        )?;
    }
    Ok(created)
}
