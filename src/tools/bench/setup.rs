//! A run's wallets in Redis: creating them with the bench opening balance, summing their
//! balances (the money check's two readings, following a cluster's slot map when it moved),
//! grouping ids by the Redis that holds them, and deleting every key a run wrote.
//!
//! Owns the bench's key footprint: which keys a run creates and which its cleanup deletes, on
//! one Redis or on every primary of a cluster. Does not own the run's ids or prefix
//! (`workload`), or the verdict of the money check (`BalanceCheck`, in `figures`).

use std::time::Duration;

use crate::engine::cluster_transfer::REDIRECT_RETRIES_LIMIT;
use crate::engine::money::{Amount, Currency};
use crate::engine::service::WalletService;
use crate::engine::store::PooledConn;
use crate::engine::wallet::NewWallet;
use crate::tools::bench::error::BenchError;

/// Opening balance of every bench wallet: 1_000_000.00, so insufficient funds stays rare.
pub const BENCH_OPENING_CENTS: i64 = 100_000_000;

/// Wallets created or read per batch.
pub(super) const BATCH: usize = 1_000;

/// `ids` grouped by the shard that holds their keys, each group with a connection to it:
/// one group on one Redis; one per primary (of the known map) on a cluster.
pub(super) fn by_node<'a>(
    service: &WalletService,
    ids: &'a [String],
) -> Result<Vec<(PooledConn, Vec<&'a str>)>, BenchError> {
    let (topology, space) = (service.topology(), service.key_space());
    let groups = topology.by_shard(ids.iter().map(String::as_str), |id| space.wallet(id))?;
    groups
        .into_iter()
        .map(|(shard, ids)| Ok((topology.conn_for_shard::<BenchError>(&shard)?, ids)))
        .collect()
}

/// Creates one wallet per id with the bench opening balance; returns how many were new.
pub(super) fn create_bench_wallets(
    service: &WalletService,
    ids: &[String],
) -> Result<usize, BenchError> {
    let mut created = 0;
    for chunk in ids.chunks(BATCH * 10) {
        let batch: Vec<NewWallet> = chunk
            .iter()
            .map(|id| NewWallet {
                user_id: id.clone(),
                full_name: format!("Bench {id}"),
                email: format!("{id}@bench.invalid"),
                opening_balance: Amount::from_minor(BENCH_OPENING_CENTS),
                currency: Currency::USD,
            })
            .collect();
        created += service.create_wallets(&batch)?;
    }
    Ok(created)
}

pub(super) struct BalanceSum {
    pub(super) sum: Amount,
    pub(super) negative: u32,
}

/// Sums the balances of `ids`, reading them in pipelined batches. A missing or unreadable
/// balance is an error. On a cluster, an error that says the known slot map is stale (a
/// failover or a slot migration during the run: MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY,
/// a primary that does not answer) reads the map again and sums again, at most
/// [`REDIRECT_RETRIES_LIMIT`] times.
pub(super) fn sum_balances(
    service: &WalletService,
    ids: &[String],
) -> Result<BalanceSum, BenchError> {
    let mut attempt = 0;
    loop {
        match sum_balances_once(service, ids) {
            Err(e) if attempt < REDIRECT_RETRIES_LIMIT && stale_map(service, &e) => {
                log::info!("summing the balances: {e}; reading the slot map again");
                if let Err(refresh) = service.topology().refresh() {
                    log::info!("slot map refresh failed: {refresh}");
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

/// True when `e`, met on a cluster, may come from a stale slot map
/// ([`cluster::map_may_be_stale`]). Pure but for the mode.
fn stale_map(service: &WalletService, e: &BenchError) -> bool {
    match e {
        BenchError::Redis(e) => service.topology().map_may_be_stale(e),
        BenchError::Cluster(e) => e.is_transient(),
        _ => false,
    }
}

fn sum_balances_once(service: &WalletService, ids: &[String]) -> Result<BalanceSum, BenchError> {
    let space = service.key_space();
    let mut sum = Amount::ZERO;
    let mut negative = 0;
    for (mut conn, ids) in by_node(service, ids)? {
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hget(space.wallet(id), "balance");
            }
            let balances: Vec<Option<String>> = pipe.query(&mut conn.redis)?;
            for (id, text) in chunk.iter().zip(balances) {
                let balance = parse_balance(id, text)?;
                if balance.is_negative() {
                    negative += 1;
                }
                sum = sum
                    .checked_add(balance)
                    .map_err(|_| BenchError::Setup("balance sum overflows".into()))?;
            }
        }
    }
    Ok(BalanceSum { sum, negative })
}

/// The balance of wallet `id` read as `text`; a missing or unreadable one is an error.
fn parse_balance(id: &str, text: Option<String>) -> Result<Amount, BenchError> {
    let text = text.ok_or_else(|| {
        BenchError::Setup(format!(
            "wallet {id} has no balance (deleted during the run?)"
        ))
    })?;
    Amount::parse(&text)
        .map_err(|e| BenchError::Setup(format!("wallet {id} balance {text:?}: {e}")))
}

/// Deletes the run's keys on every shard: wallets with their histories, users, outcome
/// records, locks left behind, on a cluster the keys' claims and any credit marker
/// ([`KeySpace::run_patterns`]); then the run's ids from the index sets where the key space
/// has them (`users:all` / `wallets:all` on one Redis). Each key alone, pipelined per SCAN
/// batch (a batch spans slots). Returns how many keys were deleted.
///
/// [`KeySpace::run_patterns`]: crate::engine::keyspace::KeySpace::run_patterns
pub(super) fn cleanup(
    service: &WalletService,
    run: &str,
    ids: &[String],
) -> Result<u64, BenchError> {
    let (topology, space) = (service.topology(), service.key_space());
    let patterns = space.run_patterns(run);
    let mut deleted = 0;
    for shard in topology.shards() {
        let mut conn = topology.conn_for_shard::<BenchError>(&shard)?;
        for pattern in &patterns {
            deleted += crate::tools::seed::unlink_each_matching(&mut conn, pattern)?;
        }
        for set in space.wallet_index_sets() {
            for chunk in ids.chunks(BATCH) {
                redis::cmd("SREM")
                    .arg(*set)
                    .arg(chunk)
                    .query::<()>(&mut conn.redis)?;
            }
        }
    }
    Ok(deleted)
}
