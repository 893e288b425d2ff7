//! Operator views of the ledger: a snapshot of every wallet, the held locks, a full audit of
//! the ledger invariants, and publishing transfer requests to Kafka (waiting for their results
//! is [`crate::tools::results`]'s [`ResultWatcher`], re-exported here).
//!
//! [`audit`] is the one ledger auditor: the `wallet audit` command, the integration tests'
//! ledger checks and the fault suite's checker all go through it. It does the reads (each
//! wallet whole in one MULTI/EXEC, re-reads of a live ledger) and feeds them to the pure
//! checks of [`crate::tools::audit`], which are unit-tested there without Redis.
//!
//! Everything here reads with SCAN/SSCAN and pipelined batches, never `KEYS`, so it is safe on a
//! large production database. Nothing here changes data. The `wallet snapshot`, `locks`, `audit`
//! and `transfer` commands are thin wrappers around these functions.
//!
//! On a Redis Cluster (a service from `WalletService::connect_cluster`) every view scans each
//! primary (`ClusterPools::primaries`) with the cluster key names (`KeySpace::Cluster`:
//! `wallet:{id}`, `lock:{id}`, `transfer:{sender}:key`, `credit:{receiver}:sender:key`); there is no
//! `wallets:all` there. Does not: write, finish PENDING transfers (`WalletService::recover`),
//! or read replicas.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;

use crate::engine::cluster::{self, ClusterError};
use crate::engine::keyspace::{KeySpace, WalletListing};
use crate::engine::message::TransferRequest;
use crate::engine::money::Amount;
use crate::engine::retention::Checkpoint;
use crate::engine::service::WalletService;
use crate::engine::store::{self, PooledConn, keys};
use crate::engine::topology::{Shard, Topology};
use crate::engine::wallet::{RawHistory, combine_history};
pub use crate::tools::audit::{
    AuditReport, AuditSettings, Auditor, CreditMarker, CurrencyTotals, Fields, Plan, Reread,
    Snapshot, VIOLATIONS_LISTED_MAX, Violation, ViolationKind, WalletRead,
};
pub use crate::tools::results::{ReadError, ResultWatcher};
use crate::worker::kafka::KafkaConfig;

#[doc(hidden)]
/// Keys read per pipelined round trip.
pub const BATCH: usize = 500;

/// Why an operator tool failed to run. A ledger problem is not an error: the audit reports it
/// in [`AuditReport::violations`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something of another shape than expected.
    #[error("redis reply: {0}")]
    Reply(#[from] redis::ParsingError),
    /// No pooled connection in time.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A Redis Cluster node could not be reached, or its slot map read.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A record that cannot be read.
    #[error("corrupt record {key}: {detail}")]
    Corrupt {
        /// The Redis key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A wallet operation failed.
    #[error(transparent)]
    Wallet(#[from] crate::engine::wallet::WalletError),
    /// Reading a topic failed.
    #[error(transparent)]
    Read(#[from] crate::tools::results::ReadError),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

#[doc(hidden)]
/// Most shards a view scans (a cluster's map holds at most [`cluster::NODES_LIMIT`] nodes).
pub const PRIMARIES_LIMIT: usize = crate::engine::topology::SHARDS_LIMIT;

/// One connection to each shard of the service's topology (the one Redis, or each primary),
/// sorted by label.
pub(crate) fn each_shard(service: &WalletService) -> Result<Vec<(Shard, PooledConn)>, OpsError> {
    let topology = service.topology();
    let shards = topology.shards().into_iter();
    shards
        .map(|shard| {
            let conn = topology.conn_for_shard::<OpsError>(&shard)?;
            Ok((shard, conn))
        })
        .collect()
}

/// The id of every wallet on one shard, sorted: by the key space's listing (the index set on
/// one Redis, a SCAN of the wallet hashes on a cluster's primary).
fn wallet_ids(conn: &mut PooledConn, space: KeySpace) -> Result<Vec<String>, OpsError> {
    match space.wallet_listing() {
        WalletListing::IndexSet(set) => sscan_all(conn, set),
        WalletListing::Scan(pattern) => {
            let found = scan_keys(conn, pattern, Some("hash"))?;
            let ids = found.iter().filter_map(|key| space.wallet_id_of_key(key));
            Ok(ids.map(str::to_string).collect())
        }
    }
}

/// Every member of a set, read with SSCAN; sorted, without repeats.
fn sscan_all(conn: &mut PooledConn, key: &str) -> Result<Vec<String>, OpsError> {
    let mut out = BTreeSet::new();
    store::scan_each(conn, Some(key), "*", None, |_, batch| {
        out.extend(batch);
        Ok::<_, OpsError>(())
    })?;
    Ok(out.into_iter().collect())
}

/// Every key matching `pattern` (of `type_` when given), read with SCAN; sorted, without
/// repeats.
fn scan_keys(
    conn: &mut PooledConn,
    pattern: &str,
    type_: Option<&str>,
) -> Result<Vec<String>, OpsError> {
    let mut out = BTreeSet::new();
    store::scan_each(conn, None, pattern, type_, |_, batch| {
        out.extend(batch);
        Ok::<_, OpsError>(())
    })?;
    Ok(out.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// snapshot

/// One row of `wallet snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRow {
    /// The wallet id.
    pub id: String,
    /// `full_name` of `user:{id}`, empty when there is none.
    pub name: String,
    /// `"5234.50"`; empty when the wallet hash is missing.
    pub balance: String,
    /// As stored.
    pub currency: String,
    /// As stored.
    pub status: String,
    /// As stored.
    pub version: String,
}

/// Every wallet in `wallets:all` (on a cluster: every `wallet:{id}` hash of every primary)
/// whose id starts with `prefix`, sorted by id. Fields are shown as stored (a corrupt field is
/// shown, not rejected); a wallet id without a hash gets the status `missing`.
pub fn snapshot(
    service: &WalletService,
    prefix: Option<&str>,
) -> Result<Vec<SnapshotRow>, OpsError> {
    let space = service.key_space();
    let mut rows = Vec::new();
    for (_, mut conn) in each_shard(service)? {
        let ids: Vec<String> = wallet_ids(&mut conn, space)?
            .into_iter()
            .filter(|id| prefix.is_none_or(|p| id.starts_with(p)))
            .collect();
        for batch in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.hgetall(space.wallet(id))
                    .cmd("HGET")
                    .arg(space.user(id))
                    .arg("full_name");
            }
            let replies: Vec<redis::Value> = pipe.query(&mut conn.redis)?;
            for (id, pair) in batch.iter().zip(replies.chunks(2)) {
                rows.push(snapshot_row(id, pair)?);
            }
        }
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows)
}

/// One row from the (HGETALL wallet, HGET user full_name) replies.
fn snapshot_row(id: &str, pair: &[redis::Value]) -> Result<SnapshotRow, OpsError> {
    let wallet: HashMap<String, String> = redis::from_redis_value(pair[0].clone())?;
    let name: Option<String> = redis::from_redis_value(pair[1].clone())?;
    let get = |f: &str| wallet.get(f).cloned().unwrap_or_default();
    Ok(SnapshotRow {
        id: id.to_string(),
        name: name.unwrap_or_default(),
        balance: get("balance"),
        currency: get("currency"),
        status: if wallet.is_empty() {
            "missing".to_string()
        } else {
            get("status")
        },
        version: wallet
            .get("version")
            .cloned()
            .unwrap_or_else(|| "0".to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// store

/// Most outcome records [`store_stats`] counts (SCAN stops there).
pub const STORE_COUNT_LIMIT: u64 = 1_000_000;

/// Outcome records [`store_stats`] reads for the oldest one's age.
pub const STORE_SAMPLE_LIMIT: usize = 10_000;

/// What the store holds, for `wallet status` without a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// `used_memory` of `INFO memory`, bytes.
    pub used_memory_bytes: u64,
    /// `transfer:*` hashes counted by SCAN, at most [`STORE_COUNT_LIMIT`].
    pub outcome_records: u64,
    /// False when the count stopped at [`STORE_COUNT_LIMIT`] (there are more).
    pub outcome_records_exact: bool,
    /// Records whose `processed_at` was read: the first [`STORE_SAMPLE_LIMIT`] the SCAN met,
    /// which is hash order, not age order.
    pub sampled: u64,
    /// Age of the oldest record of the sample, milliseconds; `None` with no record.
    pub oldest_sampled_age_ms: Option<u64>,
}

/// Memory, the number of outcome records (SCAN, bounded by [`STORE_COUNT_LIMIT`]) and the age
/// of the oldest of a sample of them (the first [`STORE_SAMPLE_LIMIT`] met; records of either
/// format, ARCHITECTURE.md, "Redis data model"). On a cluster: memory and records summed over
/// every primary, the limits over all of them. Reads only.
pub fn store_stats(service: &WalletService) -> Result<StoreStats, OpsError> {
    let pattern = service.key_space().outcome_pattern();
    let mut stats = StoreStats {
        used_memory_bytes: 0,
        outcome_records: 0,
        outcome_records_exact: true,
        sampled: 0,
        oldest_sampled_age_ms: None,
    };
    let mut oldest: Option<u64> = None;
    for (_, mut conn) in each_shard(service)? {
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn.redis)?;
        stats.used_memory_bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let room = STORE_COUNT_LIMIT.saturating_sub(stats.outcome_records);
        let sample_room = STORE_SAMPLE_LIMIT.saturating_sub(stats.sampled as usize);
        let (count, exact, sample) = count_outcomes(&mut conn, pattern, room, sample_room)?;
        stats.outcome_records += count;
        stats.outcome_records_exact &= exact;
        stats.sampled += sample.len() as u64;
        if let Some(at) = oldest_processed_at(&mut conn, &sample)? {
            oldest = Some(oldest.map_or(at, |t| t.min(at)));
        }
    }
    let now = crate::engine::message::now_ms();
    stats.oldest_sampled_age_ms = oldest.map(|at| now.saturating_sub(at));
    Ok(stats)
}

/// Outcome records matching `pattern` on one node: (count up to `limit`, whether the SCAN
/// finished, the first `sample_limit` keys met).
fn count_outcomes(
    conn: &mut PooledConn,
    pattern: &str,
    limit: u64,
    sample_limit: usize,
) -> Result<(u64, bool, Vec<String>), OpsError> {
    let mut seen = std::collections::HashSet::new();
    let mut sample = Vec::new();
    let mut cursor: u64 = 0;
    while (seen.len() as u64) < limit {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(store::SCAN_COUNT)
            .arg("TYPE")
            .arg("hash")
            .query(&mut conn.redis)?;
        for key in batch {
            if sample.len() < sample_limit && !seen.contains(&key) {
                sample.push(key.clone());
            }
            seen.insert(key);
        }
        cursor = next;
        if cursor == 0 {
            return Ok((seen.len() as u64, true, sample));
        }
    }
    Ok((seen.len() as u64, false, sample))
}

/// The earliest `processed_at` (ms) of the outcome records `keys`, read with HMGET of the
/// field of either format (`p` in ms, `processed_at` in seconds); records that vanished or do
/// not parse are skipped.
fn oldest_processed_at(conn: &mut PooledConn, keys: &[String]) -> Result<Option<u64>, OpsError> {
    let mut oldest: Option<u64> = None;
    for batch in keys.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("HMGET").arg(key).arg("p").arg("processed_at");
        }
        let times: Vec<(Option<String>, Option<String>)> = pipe.query(&mut conn.redis)?;
        for (compact, long) in times {
            let at = match (compact, long) {
                (Some(ms), _) => ms.parse::<u64>().ok(),
                (None, Some(s)) => s.parse::<f64>().ok().map(|s| (s * 1000.0).round() as u64),
                (None, None) => None,
            };
            if let Some(at) = at {
                oldest = Some(oldest.map_or(at, |t| t.min(at)));
            }
        }
    }
    Ok(oldest)
}

// ---------------------------------------------------------------------------------------------
// locks

/// One held `lock:*` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    /// The lock key, `lock:{wallet id}`.
    pub key: String,
    /// The owner token (`None` if the key vanished or is not a string).
    pub owner: Option<String>,
    /// Remaining time to live in milliseconds; `None` when the lock has no expiry (PTTL -1),
    /// which is a problem: such a lock is never released by itself.
    pub ttl_ms: Option<i64>,
    /// On a Redis Cluster: the primary that holds the lock (`HOST:PORT`); `None` on one Redis
    /// (and left out of the JSON there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// On a Redis Cluster: the lock's hash slot (its wallet's); `None` on one Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u16>,
}

impl LockInfo {
    /// A lock that never expires by itself.
    pub fn is_problem(&self) -> bool {
        self.ttl_ms.is_none()
    }
}

/// Every `lock:*` key with its owner token and remaining ttl, sorted by key. Keys that expired
/// between SCAN and the read are left out. On a cluster: every `lock:{id}` of every primary,
/// each with its shard (the primary's address and the slot).
pub fn locks(service: &WalletService) -> Result<Vec<LockInfo>, OpsError> {
    let mut out = Vec::new();
    let pattern = service.key_space().lock_pattern();
    for (shard, mut conn) in each_shard(service)? {
        for mut lock in locks_on(&mut conn, pattern)? {
            if let Some(addr) = shard.addr() {
                lock.slot = Some(cluster::hash_slot(lock.key.as_bytes()));
                lock.primary = Some(addr.to_string());
            }
            out.push(lock);
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The locks matching `pattern` on one node, without their shard.
fn locks_on(conn: &mut PooledConn, pattern: &str) -> Result<Vec<LockInfo>, OpsError> {
    let found = scan_keys(conn, pattern, None)?;
    let mut out = Vec::with_capacity(found.len());
    for batch in found.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("TYPE").arg(key).cmd("PTTL").arg(key);
        }
        let replies: Vec<(String, i64)> = pipe.query(&mut conn.redis)?;
        let strings: Vec<(&String, &(String, i64))> = batch
            .iter()
            .zip(replies.iter())
            .filter(|(_, (t, _))| t == "string")
            .collect();
        let mut pipe_strings = redis::pipe();
        for (key, _) in &strings {
            pipe_strings.cmd("GET").arg(*key);
        }
        let owners: Vec<Option<String>> = if strings.is_empty() {
            Vec::new()
        } else {
            pipe_strings.query(&mut conn.redis)?
        };
        let mut owner_of: HashMap<&String, Option<String>> = HashMap::new();
        for ((key, _), owner) in strings.iter().zip(owners) {
            owner_of.insert(key, owner);
        }
        for (key, (type_, pttl)) in batch.iter().zip(replies.iter()) {
            if type_ == "none" || *pttl == -2 {
                continue; // expired in the meantime
            }
            out.push(LockInfo {
                key: key.clone(),
                owner: owner_of.get(key).cloned().flatten(),
                ttl_ms: (*pttl >= 0).then_some(*pttl),
                primary: None,
                slot: None,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// audit

/// Checks the ledger invariants (listed in [`crate::tools::audit`]) over every wallet in
/// `wallets:all` and every outcome record, on a quiet or a live ledger, strictly (every
/// debit and credit needs its outcome record): [`audit_with`] and default settings.
pub fn audit(service: &WalletService) -> Result<AuditReport, OpsError> {
    audit_with(service, &AuditSettings::default())
}

/// Checks the ledger invariants with `settings` (the outcome ttl the engine writes with), on
/// any topology, shard by shard (the one Redis is one shard; a cluster's are its primaries):
///
/// 1. Redis `TIME` of the first shard, the scan's start; every outcome record of every shard
///    (SCAN, pipelined HGETALL in batches of [`BATCH`]);
/// 2. then each wallet's hash and history in one MULTI/EXEC (pipelined, [`BATCH`] wallets per
///    round trip), so each wallet is seen whole; the wallets are those of the key space's
///    listing (`wallets:all` on one Redis, the `wallet:{id}` hashes of each primary);
/// 3. the credit markers of cross-slot transfers, where the key space has them;
/// 4. every outcome record again, when the wallets were read shard by shard at their own
///    moments (every entry's record exists before the entry, so the second scan finds it), or
///    when a wallet's window starts after the scan's start (entries made during the scan may
///    hide in its checkpoint);
/// 5. then, while transfers finish during the scan, what a finding waits for (a wallet's
///    hash and its history after its snapshot, an outcome record), a bounded number of passes
///    ([`Auditor::settle`]).
///
/// A Redis error is an `Err`; a broken invariant is a [`Violation`] in the report. The checks
/// are pure functions over what was read ([`Auditor`]).
pub fn audit_with(
    service: &WalletService,
    settings: &AuditSettings,
) -> Result<AuditReport, OpsError> {
    let topology = service.topology();
    let space = topology.key_space();
    let shards = topology.shards();
    let first = shards
        .first()
        .ok_or_else(|| OpsError::Other("the topology names no shard".to_string()))?;
    let mut conn = topology.conn_for_shard::<OpsError>(first)?;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn.redis)?;
    drop(conn);
    let started_ms = seconds * 1000 + micros / 1000;
    let mut auditor = match space.has_cross_slot_transfers() {
        false => Auditor::new(*settings, started_ms),
        true => Auditor::across_shards(*settings, started_ms),
    };
    scan_outcomes(topology, &shards, &mut auditor)?;
    for shard in &shards {
        let mut conn = topology.conn_for_shard::<OpsError>(shard)?;
        let ids = wallet_ids(&mut conn, space)?;
        for batch in ids.chunks(BATCH) {
            for wallet in read_each_wallet(&mut conn, space, batch)? {
                auditor.ingest(Snapshot {
                    listed: true,
                    wallets: vec![wallet],
                    outcomes: Vec::new(),
                });
            }
        }
    }
    if let Some(pattern) = space.credit_marker_pattern() {
        auditor.ingest_markers(scan_markers(topology, &shards, pattern)?);
    }
    let mut outcome_scans = 1;
    if space.has_cross_slot_transfers() || auditor.needs_outcome_rescan() {
        scan_outcomes(topology, &shards, &mut auditor)?;
        outcome_scans += 1;
    }
    let mut report = auditor.settle(|plan| read_plan(topology, plan))?;
    report.outcome_scans = outcome_scans;
    Ok(report)
}

/// Every outcome record of every shard, fed to `auditor` batch by batch, keyed by what
/// follows `transfer:` ([`KeySpace::outcome_id`]).
fn scan_outcomes(
    topology: &Topology,
    shards: &[Shard],
    auditor: &mut Auditor,
) -> Result<(), OpsError> {
    let space = topology.key_space();
    for shard in shards {
        let mut conn = topology.conn_for_shard::<OpsError>(shard)?;
        let found = scan_keys(&mut conn, space.outcome_pattern(), Some("hash"))?;
        for batch in found.chunks(BATCH) {
            let fields = read_hashes(&mut conn, batch)?;
            let outcomes = batch.iter().zip(fields);
            let outcomes =
                outcomes.map(|(key, fields)| (space.outcome_id(key).to_string(), fields));
            auditor.ingest(Snapshot {
                outcomes: outcomes.collect(),
                ..Snapshot::default()
            });
        }
    }
    Ok(())
}

/// Each wallet of `ids` in its own MULTI/EXEC (HGETALL, XRANGE, LRANGE), all in one pipelined
/// round trip.
fn read_each_wallet(
    conn: &mut PooledConn,
    space: KeySpace,
    ids: &[String],
) -> Result<Vec<(String, WalletRead)>, OpsError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for id in ids {
        // The commands inside MULTI answer QUEUED; EXEC answers their replies.
        pipe.cmd("MULTI").ignore();
        add_wallet_reads(&mut pipe, space, id, true);
        pipe.cmd("EXEC");
    }
    // An error may leave the connection inside MULTI: it must not go back to the pool.
    let replies: Vec<redis::Value> = pipe.query(&mut conn.redis).inspect_err(|_| conn.taint())?;
    ids.iter()
        .zip(replies)
        .map(|(id, reply)| {
            let replies = match reply {
                redis::Value::Array(replies) if replies.len() == WALLET_READS => replies,
                other => return Err(unexpected(&space.wallet(id), &other)),
            };
            Ok((id.clone(), wallet_read(replies, None)))
        })
        .collect()
}

/// What `plan` asks for. When one transaction can read any keys of the topology (one Redis),
/// everything in one MULTI/EXEC, at one moment; otherwise (a cluster, where a transaction stays
/// in one slot) the outcome records first, grouped by shard (one pipelined round trip each),
/// then each wallet's hash and history in one MULTI/EXEC on its shard: the auditor takes the
/// outcomes as read at an earlier moment than the histories.
fn read_plan(topology: &Topology, plan: &Plan) -> Result<Reread, OpsError> {
    let space = topology.key_space();
    if space.one_transaction_reads_any_keys() {
        let shards = topology.shards();
        assert_eq!(
            shards.len(),
            1,
            "a key space read in one transaction has one shard"
        );
        let mut conn = topology.conn_for_shard::<OpsError>(&shards[0])?;
        return read_plan_at_one_moment(&mut conn, space, plan);
    }
    let mut reread = Reread::default();
    let outcome_keys = plan.outcomes.iter().map(|id| keys::outcome(id));
    for (shard, batch) in topology.by_shard(outcome_keys, String::clone)? {
        let mut conn = topology.conn_for_shard::<OpsError>(&shard)?;
        for (key, fields) in batch.iter().zip(read_hashes(&mut conn, &batch)?) {
            reread
                .outcomes
                .push((space.outcome_id(key).to_string(), fields));
        }
    }
    let ids = plan.histories.keys().chain(&plan.wallets);
    for (shard, group) in topology.by_shard(ids, |id| space.wallet(id))? {
        let mut conn = topology.conn_for_shard::<OpsError>(&shard)?;
        for id in group {
            let after = plan.histories.get(id).cloned().flatten();
            let read = read_wallets_at_one_moment(&mut conn, space, &[(id, after.as_deref())])?;
            let read = read.into_iter().next().expect("one wallet asked, one read");
            match plan.histories.contains_key(id) {
                true => reread.histories.push((id.to_string(), read)),
                false => reread.wallets.push((id.to_string(), read)),
            }
        }
    }
    Ok(reread)
}

/// Everything `plan` asks for in one MULTI/EXEC: wallet hashes with their histories after an
/// entry id (read whole, the entries up to that one dropped), whole wallets, outcome records.
fn read_plan_at_one_moment(
    conn: &mut PooledConn,
    space: KeySpace,
    plan: &Plan,
) -> Result<Reread, OpsError> {
    let mut asked: Vec<(&str, Option<&str>)> = Vec::new();
    for (id, after) in &plan.histories {
        asked.push((id, after.as_deref()));
    }
    for id in &plan.wallets {
        asked.push((id, None));
    }
    let outcome_keys: Vec<String> = plan.outcomes.iter().map(|id| keys::outcome(id)).collect();
    let (reads, outcomes) = read_at_one_moment(conn, space, &asked, &outcome_keys)?;
    let mut reads = reads.into_iter();
    let mut reread = Reread::default();
    for id in plan.histories.keys() {
        reread
            .histories
            .push((id.clone(), reads.next().expect("one read per wallet")));
    }
    for id in &plan.wallets {
        reread
            .wallets
            .push((id.clone(), reads.next().expect("one read per wallet")));
    }
    for (key, fields) in outcome_keys.iter().zip(outcomes) {
        reread
            .outcomes
            .push((space.outcome_id(key).to_string(), fields));
    }
    Ok(reread)
}

/// Each wallet of `asked` (its hash, and its history after the entry id given, all of it with
/// `None`), in one MULTI/EXEC.
fn read_wallets_at_one_moment(
    conn: &mut PooledConn,
    space: KeySpace,
    asked: &[(&str, Option<&str>)],
) -> Result<Vec<WalletRead>, OpsError> {
    Ok(read_at_one_moment(conn, space, asked, &[])?.0)
}

/// The wallets of `asked` and the outcome records `outcome_keys`, in one MULTI/EXEC.
fn read_at_one_moment(
    conn: &mut PooledConn,
    space: KeySpace,
    asked: &[(&str, Option<&str>)],
    outcome_keys: &[String],
) -> Result<(Vec<WalletRead>, Vec<Fields>), OpsError> {
    let mut pipe = redis::pipe();
    pipe.atomic().ignore_errors();
    for (id, _) in asked {
        add_wallet_reads(&mut pipe, space, id, false);
    }
    for key in outcome_keys {
        pipe.hgetall(key);
    }
    let replies: Vec<redis::Value> = pipe.query(&mut conn.redis).inspect_err(|_| conn.taint())?;
    let expected = asked.len() * WALLET_READS + outcome_keys.len();
    if replies.len() != expected {
        let detail = format!("{} replies to {expected} reads", replies.len());
        return Err(OpsError::Other(format!("audit re-read: {detail}")));
    }
    let mut replies = replies.into_iter();
    let mut next = |n: usize| replies.by_ref().take(n).collect::<Vec<_>>();
    let reads = asked
        .iter()
        .map(|(_, after)| wallet_read(next(WALLET_READS), *after))
        .collect();
    let outcomes = outcome_keys
        .iter()
        .map(|_| Ok(redis::from_redis_value(next(1).pop().unwrap_or_default())?))
        .collect::<Result<Vec<Fields>, OpsError>>()?;
    Ok((reads, outcomes))
}

/// Replies of [`add_wallet_reads`] per wallet.
const WALLET_READS: usize = 3;

/// HGETALL of the wallet, XRANGE of its older history stream, LRANGE of its log; their
/// replies ignored when `queued`.
fn add_wallet_reads(pipe: &mut redis::Pipeline, space: KeySpace, id: &str, queued: bool) {
    pipe.hgetall(space.wallet(id));
    if queued {
        pipe.ignore();
    }
    pipe.cmd("XRANGE").arg(space.history(id)).arg("-").arg("+");
    if queued {
        pipe.ignore();
    }
    pipe.lrange(space.log(id), 0, -1);
    if queued {
        pipe.ignore();
    }
}

/// A wallet from its (HGETALL, XRANGE, LRANGE) replies, its history the stream's entries then
/// the log's ([`combine_history`], numbered from the hash's `hc`, balances back from its
/// `balance`); with `after`, only the
/// entries after the one with that id (all of them when it is gone: trimmed, so older than
/// every entry left). A reply that is an error (a key of another type) is kept as the reason,
/// for the auditor to report.
fn wallet_read(replies: Vec<redis::Value>, after: Option<&str>) -> WalletRead {
    let mut replies = replies.into_iter();
    let mut next = || replies.next().unwrap_or_default();
    let (hash, stream, log) = (next(), next(), next());
    let hash: Result<Fields, String> = redis::from_redis_value(hash).map_err(|e| e.to_string());
    let trimmed = hash
        .as_ref()
        .ok()
        .and_then(|f| Checkpoint::from_fields(f).ok())
        .map_or(0, |c| c.entries);
    let stream: Result<RawHistory, String> =
        redis::from_redis_value(stream).map_err(|e| e.to_string());
    let log: Result<Vec<String>, String> = redis::from_redis_value(log).map_err(|e| e.to_string());
    let balance = hash
        .as_ref()
        .ok()
        .and_then(|f| Amount::parse(f.get("balance")?).ok());
    let history = stream.and_then(|stream| Ok(combine_history(stream, &log?, trimmed, balance)));
    let history = history.map(|mut h| {
        if let Some(at) = after.and_then(|a| h.iter().position(|(id, _)| id == a)) {
            h.drain(..=at);
        }
        h
    });
    WalletRead { hash, history }
}

fn unexpected(key: &str, reply: &redis::Value) -> OpsError {
    OpsError::Corrupt {
        key: key.to_string(),
        detail: format!("unexpected reply to MULTI/EXEC: {reply:?}"),
    }
}

/// HGETALL of each key in one pipelined round trip (empty for a key that is gone).
fn read_hashes(conn: &mut PooledConn, keys: &[String]) -> Result<Vec<Fields>, OpsError> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.hgetall(key);
    }
    Ok(pipe.query(&mut conn.redis)?)
}

#[doc(hidden)]
/// Most credit markers the audit reads (they live only while a cross-slot transfer is PENDING
/// or just completed, so a few per transfer in flight).
pub const MARKERS_LIMIT: usize = 100_000;

/// Every credit marker (`pattern`) of every shard (at most [`MARKERS_LIMIT`]).
fn scan_markers(
    topology: &Topology,
    shards: &[Shard],
    pattern: &str,
) -> Result<Vec<CreditMarker>, OpsError> {
    let mut out = Vec::new();
    for shard in shards {
        let mut conn = topology.conn_for_shard::<OpsError>(shard)?;
        let found = scan_keys(&mut conn, pattern, Some("string"))?;
        let room = MARKERS_LIMIT.saturating_sub(out.len());
        for batch in found[..found.len().min(room)].chunks(BATCH) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.get(key);
            }
            let values: Vec<Option<String>> = pipe.query(&mut conn.redis)?;
            for (key, value) in batch.iter().zip(values) {
                let parsed = cluster::keys::parse_credit_marker(key);
                if let (Some((receiver, sender, k)), Some(value)) = (parsed, value) {
                    out.push(CreditMarker {
                        receiver: receiver.to_string(),
                        sender: sender.to_string(),
                        idempotency_key: k.to_string(),
                        value,
                    });
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// publishing one request

/// Where a request landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Delivered {
    /// The partition.
    pub partition: i32,
    /// The offset in it.
    pub offset: i64,
}

type DeliverySlot = Arc<Mutex<Option<Result<Delivered, String>>>>;

struct DeliveryReport(DeliverySlot);

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        *self.0.lock() = Some(match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.to_string()),
        });
    }
}

/// Publishes `request` to `topic` (key = from_user) with an idempotent producer, flushes and
/// waits up to `timeout` for the broker's delivery report.
pub fn publish_request(
    kafka: &KafkaConfig,
    topic: &str,
    request: &TransferRequest,
    timeout: Duration,
) -> Result<Delivered, OpsError> {
    let slot: DeliverySlot = Arc::default();
    let timeout_ms = timeout
        .as_millis()
        .clamp(1_000, i32::MAX as u128)
        .to_string();
    let producer: BaseProducer<DeliveryReport> = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", &timeout_ms)
        .create_with_context(DeliveryReport(slot.clone()))?;
    let payload = request.to_json();
    producer
        .send(
            BaseRecord::to(topic)
                .key(&request.from_user)
                .payload(&payload),
        )
        .map_err(|(e, _)| e)?;
    let deadline = Instant::now() + timeout;
    loop {
        producer.poll(Duration::from_millis(50));
        if let Some(result) = slot.lock().take() {
            return result
                .map_err(|e| OpsError::Other(format!("publishing to topic {topic} failed: {e}")));
        }
        if Instant::now() >= deadline {
            let _ = producer.flush(Duration::from_millis(100));
            return Err(OpsError::Other(format!(
                "no delivery report from the brokers at {} within {} ms (is the broker running? \
                 does topic {topic} exist?)",
                kafka.brokers,
                timeout.as_millis()
            )));
        }
    }
}

/// Publishes `requests` in one burst (key = from_user) and waits up to `timeout` for every
/// delivery report.
pub fn publish_requests(
    kafka: &KafkaConfig,
    topic: &str,
    requests: &[TransferRequest],
    timeout: Duration,
) -> Result<(), OpsError> {
    let producer: BaseProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    for request in requests {
        let payload = request.to_json();
        let mut record = BaseRecord::to(topic)
            .key(request.from_user.as_str())
            .payload(payload.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        return Err(e.into());
                    }
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(timeout).map_err(|e| {
        OpsError::Other(format!(
            "requests not delivered to the brokers at {} within {} ms: {e}",
            kafka.brokers,
            timeout.as_millis()
        ))
    })
}
