//! Redis Cluster: hash slots, the key names of cluster mode, the slot map, MOVED/ASK redirects,
//! and one connection pool per primary (issue 11, the foundation under
//! `WalletService::connect_cluster`).
//!
//! Owns: the slot of a key (CRC16/XMODEM of its hash tag, mod 16384, as Redis and redis-rs
//! compute it), the spelling of every key in cluster mode, reading the slot map from
//! `CLUSTER SLOTS`, telling MOVED and ASK errors apart, and the pools: one r2d2 pool per
//! primary, opened with the same TLS and AUTH handling as a single Redis (`store::client`,
//! `store::connect_pool_tls`), replaced when a refresh finds that a slot range moved.
//!
//! Does not: run transfers, deposits or audits on a cluster (`transfer`, `cluster_transfer`
//! and `wallet` do, through `topology::Topology`), retry on a redirect by itself
//! (a caller sees the redirect, refreshes the map and retries the step as a transient error),
//! read from replicas, or change the standalone key names of `store::keys`.
//!
//! # Key names in cluster mode
//!
//! A transaction (WATCH/MULTI/EXEC) must stay in one hash slot, so every key of a wallet
//! carries the wallet id as its hash tag (the part between the first `{` and the first `}`
//! after it) and lands in the wallet's slot:
//!
//! | key | what |
//! | --- | --- |
//! | `wallet:{id}` | the wallet's hash |
//! | `wallet:{id}:log` | its history list (`wallet:{id}:history`: the stream of the older format, still read) |
//! | `lock:{id}` | its lock |
//! | `user:{id}` | its user's hash |
//! | `transfer:{sender}:idempotency_key` | the outcome record, in the sender's slot |
//! | `credit:{receiver}:sender:idempotency_key` | the step marker of a cross-slot credit, in the receiver's slot |
//! | `claim:idempotency_key` | which request holds the key (`key_claim`), in the key's own slot |
//!
//! (Here `{id}` is literal: the braces are in the key, `wallet:{user_1}`; in `store::keys` the
//! same spelling means "the id", `wallet:user_1`.) User ids cannot hold `{` or `}` (message
//! validation allows `[A-Za-z0-9_-]`), so the tag is always the whole id. Standalone mode keeps
//! the original names of `store::keys`, which the original Python system reads.
//!
//! A transfer between two wallets of the same slot stays one transaction; one whose wallets
//! are in different slots needs the steps of `cluster_transfer`. The outcome record lives in
//! the sender's slot, so the key alone does not find it: `WalletService::transfer_outcome_of`
//! takes the sender and the key. `users:all` and `wallets:all` are single keys in one slot, so
//! a cluster has neither: readers scan every primary for `wallet:{*}`.
//!
//! # Where the rest of cluster mode lives
//!
//! `WalletService::connect_cluster(seeds, template_url, pool_size, config)` reads the slot map
//! from the first seed that answers and opens these pools, with TLS and AUTH as for one Redis.
//! The service holds a `topology::Topology` (one Redis, or these pools: its shards are the
//! primaries) and takes its key names from `keyspace::KeySpace`; the key's claim is
//! `key_claim`, the cross-slot steps, PENDING records, recovery and the `WAIT` rules are
//! `cluster_transfer`, the shard locks `cluster_lock`, wallets and deposits `wallet`; the
//! operator tools loop over the topology's shards, the worker's recovery sweep is
//! `worker::sweep`. ARCHITECTURE.md, "Redis Cluster", keeps the invariants and this map.
//!
//! # Not done yet (issue 11)
//!
//! The worker's permission self-check on a cluster: it is skipped, and the worker says so
//! (grant the ACL of `deploy/redis-acl.conf` on every node). Following ASK: a transfer on a
//! migrating slot retries as transient (a refresh of the map, then the whole call again)
//! until the migration ends.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redis::{ErrorKind, ServerErrorKind};

use crate::engine::store::{self, Conn, Pool, PooledConn, RedisTls, StoreError};

/// Hash slots of a Redis Cluster: a key's slot is below this.
pub const SLOT_COUNT: u16 = 16_384;
/// Seed addresses accepted by [`ClusterPools::connect`].
pub const SEEDS_LIMIT: usize = 64;
/// Slot ranges in one map (a map has at most one per slot).
pub const RANGES_LIMIT: usize = SLOT_COUNT as usize;
/// Nodes (primaries and replicas) in one map, and pools kept at once; Redis advises at most
/// about 1,000 nodes per cluster.
pub const NODES_LIMIT: usize = 1_000;
/// Nodes asked for the map in one refresh, one after the other, until one answers with a map
/// that covers every slot.
pub const REFRESH_NODES_LIMIT: usize = 16;
/// Time allowed to connect to one node while reading the map.
pub const REFRESH_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Time allowed for one node's `CLUSTER SLOTS` reply.
pub const REFRESH_IO_TIMEOUT_MS: u64 = 2_000;
/// Connections per primary's pool, at most.
pub const POOL_SIZE_LIMIT: u32 = 1_024;
/// Longest a connect waits for every primary to say `cluster_state:ok`.
pub const CLUSTER_READY_WAIT_MS: u64 = 30_000;
/// Time between two readiness polls of the primaries.
pub const CLUSTER_READY_POLL_MS: u64 = 100;
/// Characters of one node's error kept in a refresh error (so a long list stays readable).
const NODE_ERROR_CHARS_LIMIT: usize = 200;

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key when it has
/// none, mod [`SLOT_COUNT`]. The same value as `CLUSTER KEYSLOT key`.
pub fn hash_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key).unwrap_or(key)) % SLOT_COUNT
}

/// The hash tag of `key`: the bytes between its first `{` and the first `}` after that, when
/// there are any (`a{b}c{d}` -> `b`; `{}x`, `{x` -> none, the whole key is hashed).
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// Key names in cluster mode (module doc, "Key names in cluster mode"): the wallet id is the
/// hash tag of every key of the wallet. Pure functions; `store::keys` keeps the standalone
/// names.
pub mod keys {
    /// The id as a hash tag, `{id}`. Panics when the id cannot be one (empty, or holding a
    /// brace): validated ids never do, and a wrong tag would split a wallet across slots.
    fn tag(id: &str) -> String {
        assert!(
            !id.is_empty() && !id.contains(['{', '}']),
            "wallet id {id:?} cannot be a hash tag (empty or holding a brace)"
        );
        format!("{{{id}}}")
    }

    /// `wallet:{id}`: the wallet's hash.
    pub fn wallet(id: &str) -> String {
        format!("wallet:{}", tag(id))
    }
    /// `wallet:{id}:history`: the wallet's history stream in the older format (read,
    /// trimmed and migrated, never written).
    pub fn history(id: &str) -> String {
        format!("wallet:{}:history", tag(id))
    }
    /// `wallet:{id}:log`: the wallet's history list, one compact line per entry.
    pub fn log(id: &str) -> String {
        format!("wallet:{}:log", tag(id))
    }
    /// `lock:{id}`: the wallet's lock.
    pub fn lock(id: &str) -> String {
        format!("lock:{}", tag(id))
    }
    /// `user:{id}`: the user's hash, in the slot of the user's wallet.
    pub fn user(id: &str) -> String {
        format!("user:{}", tag(id))
    }
    /// `transfer:{sender}:idempotency_key`: a request's outcome record, in the sender's slot.
    pub fn outcome(sender: &str, idempotency_key: &str) -> String {
        format!("transfer:{}:{idempotency_key}", tag(sender))
    }
    /// `credit:{receiver}:sender:idempotency_key`: the marker of a cross-slot credit, written
    /// with the credit in the receiver's slot, so the credit step runs once however often it
    /// is tried. It names the whole transfer (sender and key, as the outcome record does), so
    /// another sender's transfer with the same key to the same receiver never reads,
    /// overwrites or deletes it. Sender ids hold no `:` (`[A-Za-z0-9_-]`), so the name parses
    /// back unambiguously ([`parse_credit_marker`]).
    pub fn credit_marker(receiver: &str, sender: &str, idempotency_key: &str) -> String {
        assert!(
            !sender.contains(':'),
            "sender id {sender:?} holds a ':' (validated ids never do)"
        );
        format!("credit:{}:{sender}:{idempotency_key}", tag(receiver))
    }
    /// The pattern that matches every credit marker (`SCAN MATCH`).
    pub const CREDIT_MARKER_PATTERN: &str = "credit:{*}:*";
    /// (receiver, sender, idempotency key) of a [`credit_marker`] key; `None` for any other
    /// key. Pure.
    pub fn parse_credit_marker(key: &str) -> Option<(&str, &str, &str)> {
        let (receiver, rest) = key.strip_prefix("credit:{")?.split_once("}:")?;
        let (sender, idempotency_key) = rest.split_once(':')?;
        let valid = |s: &str| !s.is_empty() && !s.contains(['{', '}']);
        (valid(receiver) && valid(sender) && !idempotency_key.is_empty()).then_some((
            receiver,
            sender,
            idempotency_key,
        ))
    }
    /// `claim:idempotency_key`: which request holds the key (`key_claim`), in the key's own
    /// slot (no hash tag: keys hold no braces), so every sender's request for the key meets
    /// it.
    pub fn claim(idempotency_key: &str) -> String {
        assert!(
            !idempotency_key.contains(['{', '}']),
            "idempotency key {idempotency_key:?} holds a brace (validated keys never do)"
        );
        format!("claim:{idempotency_key}")
    }
    /// The pattern that matches every claim (`SCAN MATCH`).
    pub const CLAIM_PATTERN: &str = "claim:*";
    /// The slot of every key of wallet `id`.
    pub fn wallet_slot(id: &str) -> u16 {
        super::hash_slot(id.as_bytes())
    }
}

/// `HOST:PORT` (or `[v6]:PORT`) -> host (brackets removed) and port.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

/// The canonical form of a node address, `host:port` with no brackets (as Redis writes it in
/// redirects and `CLUSTER SLOTS`).
fn normal_addr(addr: &str) -> Result<String, ClusterError> {
    match split_addr(addr.trim()) {
        Some((host, port)) => Ok(format!("{host}:{port}")),
        None => Err(ClusterError::BadAddress {
            addr: addr.to_string(),
        }),
    }
}

/// One range of slots and the nodes that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    /// First slot of the range.
    pub start: u16,
    /// Last slot of the range (inclusive).
    pub end: u16,
    /// The primary's address, `host:port`.
    pub primary: String,
    /// Its replicas' addresses.
    pub replicas: Vec<String>,
}

/// Which node serves which slots, as one node saw it when asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// Sorted by `start`, not overlapping.
    ranges: Vec<SlotRange>,
}

impl SlotMap {
    /// A map of `ranges` (any order); an error when one is out of bounds or two overlap.
    pub fn from_ranges(mut ranges: Vec<SlotRange>) -> Result<SlotMap, String> {
        if ranges.len() > RANGES_LIMIT {
            return Err(format!("{} slot ranges, over {RANGES_LIMIT}", ranges.len()));
        }
        ranges.sort_by_key(|r| r.start);
        for r in &ranges {
            if r.start > r.end || r.end >= SLOT_COUNT {
                return Err(format!("slot range {}-{} out of bounds", r.start, r.end));
            }
        }
        if let Some(w) = ranges.windows(2).find(|w| w[0].end >= w[1].start) {
            return Err(format!(
                "slot ranges {}-{} and {}-{} overlap",
                w[0].start, w[0].end, w[1].start, w[1].end
            ));
        }
        let map = SlotMap { ranges };
        if map.nodes().len() > NODES_LIMIT {
            return Err(format!("more than {NODES_LIMIT} nodes"));
        }
        Ok(map)
    }

    /// The map in a `CLUSTER SLOTS` reply from node `asked` (`host:port`). A node whose host
    /// is empty or `?` (Redis does not know its own address) is taken to be on `asked`'s host.
    pub fn from_cluster_slots(reply: &redis::Value, asked: &str) -> Result<SlotMap, String> {
        let asked_host = split_addr(asked).map_or("127.0.0.1", |(h, _)| h);
        let redis::Value::Array(entries) = reply else {
            return Err(format!("expected an array, got {reply:?}"));
        };
        let mut ranges = Vec::with_capacity(entries.len().min(RANGES_LIMIT));
        for entry in entries.iter().take(RANGES_LIMIT + 1) {
            ranges.push(slots_entry(entry, asked_host)?);
        }
        SlotMap::from_ranges(ranges)
    }

    /// The ranges, sorted by first slot.
    pub fn ranges(&self) -> &[SlotRange] {
        &self.ranges
    }

    /// The range that holds `slot`, if any.
    pub fn range_for_slot(&self, slot: u16) -> Option<&SlotRange> {
        let i = self.ranges.partition_point(|r| r.end < slot);
        self.ranges.get(i).filter(|r| r.start <= slot)
    }

    /// The address of the primary that serves `slot`, if any.
    pub fn primary_for_slot(&self, slot: u16) -> Option<&str> {
        self.range_for_slot(slot).map(|r| r.primary.as_str())
    }

    /// How many of the [`SLOT_COUNT`] slots some primary serves.
    pub fn slots_covered(&self) -> u32 {
        self.ranges
            .iter()
            .map(|r| u32::from(r.end - r.start) + 1)
            .sum()
    }

    /// True when every slot has a primary (the cluster can serve any key).
    pub fn covers_all_slots(&self) -> bool {
        self.slots_covered() == u32::from(SLOT_COUNT)
    }

    /// The primaries' addresses, sorted, each once.
    pub fn primaries(&self) -> Vec<String> {
        let mut primaries: Vec<String> = self.ranges.iter().map(|r| r.primary.clone()).collect();
        primaries.sort();
        primaries.dedup();
        primaries
    }

    /// Every node's address, primaries first (each sorted), each once.
    pub fn nodes(&self) -> Vec<String> {
        let mut replicas: Vec<String> = self
            .ranges
            .iter()
            .flat_map(|r| r.replicas.iter().cloned())
            .collect();
        replicas.sort();
        replicas.dedup();
        let mut nodes = self.primaries();
        replicas.retain(|r| !nodes.contains(r));
        nodes.extend(replicas);
        nodes
    }
}

/// One entry of `CLUSTER SLOTS`: `[start, end, [host, port, id, ...], replicas...]`.
fn slots_entry(entry: &redis::Value, asked_host: &str) -> Result<SlotRange, String> {
    let redis::Value::Array(items) = entry else {
        return Err(format!("expected a slot range array, got {entry:?}"));
    };
    let slot = |i: usize| match items.get(i) {
        Some(redis::Value::Int(n)) => u16::try_from(*n).map_err(|_| format!("slot {n}")),
        other => Err(format!("expected a slot number, got {other:?}")),
    };
    let (start, end) = (slot(0)?, slot(1)?);
    let mut nodes = items
        .iter()
        .skip(2)
        .take(NODES_LIMIT)
        .map(|n| slots_node(n, asked_host));
    let primary = nodes
        .next()
        .ok_or_else(|| format!("slot range {start}-{end} has no primary"))??;
    let replicas = nodes.collect::<Result<Vec<_>, _>>()?;
    Ok(SlotRange {
        start,
        end,
        primary,
        replicas,
    })
}

/// A node of a `CLUSTER SLOTS` entry, `[host, port, id, metadata?]`, as `host:port`.
fn slots_node(node: &redis::Value, asked_host: &str) -> Result<String, String> {
    let bad = || format!("expected [host, port, ...], got {node:?}");
    let redis::Value::Array(fields) = node else {
        return Err(bad());
    };
    let host = match fields.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => return Err(bad()),
    };
    let port = match fields.get(1) {
        Some(redis::Value::Int(p)) => u16::try_from(*p).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let host = if host.is_empty() || host == "?" {
        asked_host.to_string()
    } else {
        host
    };
    Ok(format!("{host}:{port}"))
}

/// What kind of redirect a node answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    /// The slot lives on another node now: refresh the map, then retry there.
    Moved,
    /// The slot is being migrated and this key is on the importing node already: send
    /// `ASKING` and then the command to that node, once; the map stays as it is.
    Ask,
}

/// A MOVED or ASK error: the slot and the node to go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// MOVED or ASK.
    pub kind: RedirectKind,
    /// The key's slot.
    pub slot: u16,
    /// The node to go to, `host:port` as Redis wrote it (`:port` when Redis does not know the
    /// host, which then is the one of the node that answered).
    pub addr: String,
}

impl Redirect {
    /// The redirect in `error` (redis-rs gives a `-MOVED 3999 127.0.0.1:6381` reply the kind
    /// `ErrorKind::Server(ServerErrorKind::Moved)` and the detail `3999 127.0.0.1:6381`); `None`
    /// for every other error.
    pub fn parse(error: &redis::RedisError) -> Option<Redirect> {
        let kind = match error.kind() {
            ErrorKind::Server(ServerErrorKind::Moved) => RedirectKind::Moved,
            ErrorKind::Server(ServerErrorKind::Ask) => RedirectKind::Ask,
            _ => return None,
        };
        let (addr, slot) = error.redirect_node()?;
        (slot < SLOT_COUNT).then(|| Redirect {
            kind,
            slot,
            addr: addr.to_string(),
        })
    }
}

/// True for a Redis error that says the slot map may be stale: a redirect or a moving slot
/// (also inside a pipeline or a transaction, where redis-rs reports the first failed
/// command's kind), a primary that became a replica, or a node that does not answer (failing
/// over?). Callers read the map again ([`ClusterPools::refresh`]) and run the call again. Pure.
pub fn map_may_be_stale(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    Redirect::parse(e).is_some()
        || e.kind() == ErrorKind::Io
        || matches!(
            e.kind(),
            ErrorKind::Server(
                S::Moved
                    | S::Ask
                    | S::TryAgain
                    | S::ClusterDown
                    | S::ExecAbort
                    | S::ReadOnly
                    | S::MasterDown
            )
        )
}

/// Sends `ASKING` on `conn`: the next command on it may touch a slot this node is importing
/// (after an ASK redirect to it).
pub fn asking(conn: &mut Conn) -> Result<(), redis::RedisError> {
    redis::cmd("ASKING").query::<()>(&mut conn.redis)
}

/// Runs one command on a pooled cluster connection (operator tools and tests; the engine's
/// own steps use the connection directly).
pub fn query<T: redis::FromRedisValue>(
    conn: &mut Conn,
    cmd: &redis::Cmd,
) -> Result<T, redis::RedisError> {
    cmd.query(&mut conn.redis)
}

/// Why the cluster could not be reached or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No seed address was given.
    #[error("no Redis Cluster seed address given: name at least one node as HOST:PORT")]
    NoSeeds,
    /// More seeds than [`SEEDS_LIMIT`].
    #[error(
        "{0} Redis Cluster seed addresses, over the limit of {SEEDS_LIMIT}: a few of the nodes are enough"
    )]
    TooManySeeds(usize),
    /// An address is not `HOST:PORT`.
    #[error("Redis Cluster node address {addr:?} is not HOST:PORT (or [IPv6]:PORT)")]
    BadAddress {
        /// The address as given.
        addr: String,
    },
    /// The pool size is 0 or over [`POOL_SIZE_LIMIT`].
    #[error(
        "Redis Cluster pools need between 1 and {POOL_SIZE_LIMIT} connections per primary, got {0}"
    )]
    PoolSize(u32),
    /// The template URL (scheme and credentials for every node) is not usable.
    #[error("invalid Redis URL template {url} for a cluster: {detail}")]
    BadTemplate {
        /// The template, password redacted.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No node answered with a map that covers every slot.
    #[error(
        "no Redis Cluster node gave a slot map that covers all {SLOT_COUNT} slots (asked {asked}: {errors}); check the addresses, or run `redis-cli --cluster check HOST:PORT` (a failover may be in progress: retry)"
    )]
    NoMap {
        /// How many nodes were asked.
        asked: usize,
        /// What each said, `addr: error; ...`.
        errors: String,
    },
    /// The known map has no primary for a slot.
    #[error(
        "no primary serves slot {0} in the known Redis Cluster map: refresh the map and retry (a failover may be in progress), or run `redis-cli --cluster check HOST:PORT`"
    )]
    SlotUncovered(u16),
    /// A pool to a node could not be opened.
    #[error("cannot open a pool to Redis Cluster node {addr}: {source}")]
    Pool {
        /// The node.
        addr: String,
        /// Why.
        source: StoreError,
    },
    /// No connection to a node came free or could be opened in time.
    #[error(
        "no connection to Redis Cluster node {addr} within {} ms: {detail} (the node may be down or failing over: refresh the map and retry)",
        store::POOL_WAIT_MS
    )]
    Checkout {
        /// The node.
        addr: String,
        /// The pool's error.
        detail: String,
    },
    /// More distinct nodes than [`NODES_LIMIT`] would have pools.
    #[error(
        "more than {NODES_LIMIT} Redis Cluster nodes would have pools; refresh the map (old nodes are dropped then)"
    )]
    TooManyNodes,
    /// Primaries still said their `cluster_state` was not `ok` after
    /// [`CLUSTER_READY_WAIT_MS`] (they answer CLUSTERDOWN meanwhile).
    #[error(
        "the Redis Cluster is not ready after {waited_ms} ms (just created, failing over, or slots uncovered): {detail}; check `redis-cli -h HOST -p PORT cluster info` and `redis-cli --cluster check HOST:PORT`, then run again"
    )]
    NotReady {
        /// The primaries that did not say `cluster_state:ok`, or why the map could not be
        /// read.
        detail: String,
        /// How long the call waited.
        waited_ms: u64,
    },
}

impl ClusterError {
    /// True when the same call may succeed later without anyone changing the configuration:
    /// the cluster was mid-failover, a node was down or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::NoMap { .. }
            | ClusterError::SlotUncovered(_)
            | ClusterError::Checkout { .. }
            | ClusterError::TooManyNodes
            | ClusterError::NotReady { .. } => true,
            ClusterError::Pool { source, .. } => matches!(source, StoreError::Unreachable { .. }),
            _ => false,
        }
    }
}

/// The scheme, credentials and query of a Redis URL, to which a node's address is added.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlTemplate {
    /// `redis` or `rediss`.
    scheme: String,
    /// `user:password@`, `:password@` or empty.
    userinfo: String,
    /// `?...` or empty.
    query: String,
}

impl UrlTemplate {
    /// `redis://`, `rediss://user:secret@`, `rediss://:tok@any-host:6379/0?protocol=resp3`:
    /// the host, when there is one, is not used. Database 0 only (a cluster has no other).
    fn parse(url: &str) -> Result<UrlTemplate, ClusterError> {
        let bad = |detail: &str| ClusterError::BadTemplate {
            url: store::redact_url(url),
            detail: detail.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected redis:// or rediss://"))?;
        if scheme != "redis" && scheme != "rediss" {
            return Err(bad("expected redis:// or rediss://"));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (path, query) = tail.split_at(tail.find('?').unwrap_or(tail.len()));
        if !matches!(path, "" | "/" | "/0") {
            return Err(bad("a Redis Cluster has only database 0"));
        }
        let userinfo = authority
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        Ok(UrlTemplate {
            scheme: scheme.to_string(),
            userinfo,
            query: query.to_string(),
        })
    }

    /// The URL of node `addr` (`host:port`, IPv6 hosts bracketed).
    fn url_for(&self, addr: &str) -> String {
        let host_port = match split_addr(addr) {
            Some((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
            _ => addr.to_string(),
        };
        format!(
            "{}://{}{host_port}{}",
            self.scheme, self.userinfo, self.query
        )
    }
}

/// What a [`ClusterPools::refresh`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Primaries that got a new pool.
    pub added: Vec<String>,
    /// Nodes whose pools were dropped (no longer primaries).
    pub removed: Vec<String>,
}

/// The map and the pools that go with it; replaced together.
struct Current {
    map: SlotMap,
    /// One pool per primary, plus pools opened for ASK targets until the next refresh.
    pools: HashMap<String, Pool>,
}

/// One r2d2 pool per primary of a Redis Cluster, and the slot map that says which to use.
/// Shared by reference between threads; [`ClusterPools::refresh`] swaps map and pools at once.
pub struct ClusterPools {
    template: UrlTemplate,
    tls: RedisTls,
    pool_size_max: u32,
    /// Normalized seed addresses, asked after the known nodes when refreshing.
    seeds: Vec<String>,
    current: RwLock<Current>,
    /// One refresh at a time; others wait for it rather than ask the cluster again.
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for ClusterPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPools")
            .field("primaries", &self.primaries())
            .field("pool_size_max", &self.pool_size_max)
            .finish_non_exhaustive()
    }
}

impl ClusterPools {
    /// Reads the slot map from the first of `seeds` (`HOST:PORT`) that gives one covering
    /// every slot, and opens a pool of at most `pool_size_max` connections to each primary.
    /// `template_url` gives the scheme and credentials for every node (`redis://`,
    /// `rediss://user:password@`; its host is not used) and `tls` the TLS files, as for one
    /// Redis.
    pub fn connect(
        seeds: &[impl AsRef<str>],
        template_url: &str,
        tls: &RedisTls,
        pool_size_max: u32,
    ) -> Result<ClusterPools, ClusterError> {
        if seeds.is_empty() {
            return Err(ClusterError::NoSeeds);
        }
        if seeds.len() > SEEDS_LIMIT {
            return Err(ClusterError::TooManySeeds(seeds.len()));
        }
        if pool_size_max == 0 || pool_size_max > POOL_SIZE_LIMIT {
            return Err(ClusterError::PoolSize(pool_size_max));
        }
        let seeds = seeds
            .iter()
            .map(|s| normal_addr(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let template = UrlTemplate::parse(template_url)?;
        // The TLS files and the URL are checked now, before any node is asked.
        store::client(&template.url_for(&seeds[0]), tls).map_err(|source| ClusterError::Pool {
            addr: seeds[0].clone(),
            source,
        })?;
        let pools = ClusterPools {
            template,
            tls: tls.clone(),
            pool_size_max,
            seeds,
            current: RwLock::new(Current {
                map: SlotMap::default(),
                pools: HashMap::new(),
            }),
            refreshing: Mutex::new(()),
        };
        pools.wait_until_ready(CLUSTER_READY_WAIT_MS)?;
        Ok(pools)
    }

    /// Pools that know no node yet and ask `seed` when refreshed, never waited for: for the
    /// unit tests of what runs around a refresh (which fails when nothing listens there).
    #[cfg(test)]
    pub(crate) fn unconnected(seed: &str) -> ClusterPools {
        ClusterPools {
            template: UrlTemplate::parse("redis://localhost").expect("a valid url"),
            tls: RedisTls::default(),
            pool_size_max: 1,
            seeds: vec![seed.to_string()],
            current: RwLock::new(Current {
                map: SlotMap::default(),
                pools: HashMap::new(),
            }),
            refreshing: Mutex::new(()),
        }
    }

    /// Waits until every primary of the map says `cluster_state:ok` (right after
    /// `redis-cli --cluster create`, or during a failover, some answer CLUSTERDOWN for a
    /// moment, or do not answer at all), at most `wait_ms`, saying so on the log (stderr)
    /// once, and reads the map again while it waits, as it may change. A cluster no seed
    /// answered for ([`ClusterError::NoMap`]) is not waited for: that is a wrong address more
    /// often than a failover. Polls every [`CLUSTER_READY_POLL_MS`].
    fn wait_until_ready(&self, wait_ms: u64) -> Result<(), ClusterError> {
        let started = std::time::Instant::now();
        let mut waited = false;
        loop {
            let not_ready = match self.not_ready() {
                Ok(nodes) if nodes.is_empty() => {
                    if waited {
                        log::warn!(
                            "the Redis Cluster is ready after {} ms",
                            started.elapsed().as_millis()
                        );
                    }
                    return Ok(());
                }
                Ok(nodes) => format!("{} not saying cluster_state:ok", nodes.join(", ")),
                Err(e) if e.is_transient() && !matches!(e, ClusterError::NoMap { .. }) => {
                    e.to_string()
                }
                Err(e) => return Err(e),
            };
            let waited_ms = started.elapsed().as_millis() as u64;
            if waited_ms >= wait_ms {
                return Err(ClusterError::NotReady {
                    detail: not_ready,
                    waited_ms,
                });
            }
            if !waited {
                log::warn!(
                    "waiting up to {wait_ms} ms for the Redis Cluster: not ready yet (just created, or failing over): {not_ready}"
                );
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(CLUSTER_READY_POLL_MS));
        }
    }

    /// Reads the map, then the primaries that do not say `cluster_state:ok`.
    fn not_ready(&self) -> Result<Vec<String>, ClusterError> {
        self.refresh()?;
        Ok(self
            .primaries()
            .into_iter()
            .filter(|addr| !self.says_ok(addr))
            .collect())
    }

    /// True when node `addr` answers `CLUSTER INFO` with `cluster_state:ok`.
    fn says_ok(&self, addr: &str) -> bool {
        let Ok(mut conn) = self.conn_for_addr(addr) else {
            return false;
        };
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query::<String>(&mut conn.redis)
            .is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
    }

    /// Reads the map again from a reachable node (the known primaries, then the replicas,
    /// then the seeds; at most [`REFRESH_NODES_LIMIT`] asked), opens pools for new primaries,
    /// drops those of nodes that are no longer primaries, and swaps map and pools at once. On
    /// error nothing changes. Call it after a MOVED, or when a primary stops answering.
    pub fn refresh(&self) -> Result<Refreshed, ClusterError> {
        let _one_at_a_time = self.refreshing.lock();
        let (mut candidates, old_pools) = {
            let current = self.current.read();
            (current.map.nodes(), current.pools.clone())
        };
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let map = self.read_map(&candidates)?;
        let mut pools = HashMap::new();
        let mut refreshed = Refreshed::default();
        for primary in map.primaries() {
            let pool = match old_pools.get(&primary) {
                Some(pool) => pool.clone(),
                None => {
                    refreshed.added.push(primary.clone());
                    self.open_pool(&primary)?
                }
            };
            pools.insert(primary, pool);
        }
        refreshed.removed = old_pools
            .keys()
            .filter(|addr| !pools.contains_key(*addr))
            .cloned()
            .collect();
        refreshed.removed.sort();
        *self.current.write() = Current { map, pools };
        Ok(refreshed)
    }

    /// The first map among `candidates` that covers every slot.
    fn read_map(&self, candidates: &[String]) -> Result<SlotMap, ClusterError> {
        let mut errors = Vec::new();
        for addr in candidates.iter().take(REFRESH_NODES_LIMIT) {
            match self.ask_map(addr) {
                Ok(map) if map.covers_all_slots() => return Ok(map),
                Ok(map) => errors.push(format!(
                    "{addr}: its map covers {} slots",
                    map.slots_covered()
                )),
                Err(e) => errors.push(format!(
                    "{addr}: {}",
                    e.chars().take(NODE_ERROR_CHARS_LIMIT).collect::<String>()
                )),
            }
        }
        Err(ClusterError::NoMap {
            asked: errors.len(),
            errors: errors.join("; "),
        })
    }

    /// `CLUSTER SLOTS` from node `addr` on a connection of its own (not pooled).
    fn ask_map(&self, addr: &str) -> Result<SlotMap, String> {
        let client =
            store::client(&self.template.url_for(addr), &self.tls).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(REFRESH_CONNECT_TIMEOUT_MS))
            .map_err(|e| e.to_string())?;
        let io = Some(Duration::from_millis(REFRESH_IO_TIMEOUT_MS));
        conn.set_read_timeout(io).map_err(|e| e.to_string())?;
        conn.set_write_timeout(io).map_err(|e| e.to_string())?;
        let reply: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        SlotMap::from_cluster_slots(&reply, addr)
    }

    /// A pool to node `addr`, checked with one connection and PING.
    fn open_pool(&self, addr: &str) -> Result<Pool, ClusterError> {
        store::connect_pool_tls(&self.template.url_for(addr), &self.tls, self.pool_size_max)
            .map_err(|source| ClusterError::Pool {
                addr: addr.to_string(),
                source,
            })
    }

    /// A connection to the primary that serves `slot` in the known map.
    pub fn conn_for_slot(&self, slot: u16) -> Result<PooledConn, ClusterError> {
        let (addr, pool) = {
            let current = self.current.read();
            let addr = current
                .map
                .primary_for_slot(slot)
                .ok_or(ClusterError::SlotUncovered(slot))?;
            (addr.to_string(), current.pools.get(addr).cloned())
        };
        // Every primary of the map has a pool: refresh builds them together.
        let pool = pool.ok_or(ClusterError::SlotUncovered(slot))?;
        checkout(&addr, &pool)
    }

    /// A connection to the primary that serves `key`'s slot in the known map.
    pub fn conn_for_key(&self, key: impl AsRef<[u8]>) -> Result<PooledConn, ClusterError> {
        self.conn_for_slot(hash_slot(key.as_ref()))
    }

    /// A connection to node `addr` (`host:port`): the target of an ASK redirect, say (send
    /// [`asking`] first). A node without a pool gets one, kept until the next refresh.
    pub fn conn_for_addr(&self, addr: &str) -> Result<PooledConn, ClusterError> {
        let addr = normal_addr(addr)?;
        let known = self.current.read().pools.get(&addr).cloned();
        let pool = match known {
            Some(pool) => pool,
            None => {
                let pool = self.open_pool(&addr)?;
                let mut current = self.current.write();
                if current.pools.len() >= NODES_LIMIT {
                    return Err(ClusterError::TooManyNodes);
                }
                current.pools.entry(addr.clone()).or_insert(pool).clone()
            }
        };
        checkout(&addr, &pool)
    }

    /// The primaries of the known map, sorted: scans walk each of them.
    pub fn primaries(&self) -> Vec<String> {
        self.current.read().map.primaries()
    }

    /// The primary that serves `slot` in the known map.
    pub fn primary_for_slot(&self, slot: u16) -> Option<String> {
        self.current
            .read()
            .map
            .primary_for_slot(slot)
            .map(str::to_string)
    }

    /// A copy of the known map.
    pub fn slot_map(&self) -> SlotMap {
        self.current.read().map.clone()
    }
}

/// A connection from `pool` (node `addr`), within the pool's wait.
fn checkout(addr: &str, pool: &Pool) -> Result<PooledConn, ClusterError> {
    pool.get().map_err(|e| ClusterError::Checkout {
        addr: addr.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_reference_values() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(hash_slot(b"123456789"), 0x31C3 % SLOT_COUNT);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"bar"), 5061);
        assert_eq!(hash_slot(b""), 0);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_slot(b"foo{bar}{zap}"), hash_slot(b"bar"));
    }

    #[test]
    fn the_hash_tag_is_between_the_first_open_and_the_next_close() {
        let tag = |k: &str| hash_tag(k.as_bytes()).map(|t| String::from_utf8_lossy(t).into_owned());
        assert_eq!(tag("a{b}c{d}"), Some("b".into()));
        assert_eq!(tag("{}"), None);
        assert_eq!(tag("{"), None);
        assert_eq!(tag("}{x}"), Some("x".into()));
        assert_eq!(tag("{}{x}"), None);
        assert_eq!(tag("x{y"), None);
        assert_eq!(tag("{{y}}"), Some("{y".into()));
    }

    #[test]
    fn every_key_of_a_wallet_is_in_its_slot_and_the_outcome_in_the_senders() {
        let slot = keys::wallet_slot("user_1");
        for key in [
            keys::wallet("user_1"),
            keys::history("user_1"),
            keys::lock("user_1"),
            keys::user("user_1"),
            keys::outcome("user_1", "req:tx.1"),
            keys::credit_marker("user_1", "user_2", "req:tx.1"),
        ] {
            assert_eq!(hash_slot(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(keys::wallet("user_1"), "wallet:{user_1}");
        assert_eq!(keys::history("u"), "wallet:{u}:history");
        assert_eq!(keys::outcome("a", "k"), "transfer:{a}:k");
        assert_eq!(keys::credit_marker("b", "a", "k:1"), "credit:{b}:a:k:1");
        assert_eq!(
            keys::parse_credit_marker("credit:{b}:a:k:1"),
            Some(("b", "a", "k:1"))
        );
        // The format before the sender was in the name, and other keys, are not markers.
        assert_eq!(keys::parse_credit_marker("credit:{b}:k"), None);
        assert_eq!(keys::parse_credit_marker("transfer:{b}:a:k"), None);
        // Standalone names stay as they were.
        assert_eq!(
            crate::engine::store::keys::wallet("user_1"),
            "wallet:user_1"
        );
    }

    #[test]
    #[should_panic(expected = "cannot be a hash tag")]
    fn an_id_with_a_brace_is_refused() {
        keys::wallet("a}b");
    }

    fn node(host: &str, port: i64) -> redis::Value {
        redis::Value::Array(vec![
            redis::Value::BulkString(host.as_bytes().to_vec()),
            redis::Value::Int(port),
            redis::Value::BulkString(b"0123abcd".to_vec()),
            redis::Value::Array(vec![]),
        ])
    }

    fn entry(start: i64, end: i64, nodes: Vec<redis::Value>) -> redis::Value {
        let mut items = vec![redis::Value::Int(start), redis::Value::Int(end)];
        items.extend(nodes);
        redis::Value::Array(items)
    }

    #[test]
    fn a_slot_map_reads_cluster_slots_and_knows_its_coverage() {
        let reply = redis::Value::Array(vec![
            entry(
                5461,
                10922,
                vec![node("10.0.0.2", 7001), node("10.0.0.5", 7004)],
            ),
            entry(0, 5460, vec![node("", 7000)]),
            entry(10923, 16383, vec![node("?", 7002)]),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "10.0.0.9:7005").unwrap();
        assert!(map.covers_all_slots());
        assert_eq!(map.primary_for_slot(0), Some("10.0.0.9:7000"));
        assert_eq!(map.primary_for_slot(5461), Some("10.0.0.2:7001"));
        assert_eq!(map.primary_for_slot(16383), Some("10.0.0.9:7002"));
        assert_eq!(
            map.range_for_slot(6000).unwrap().replicas,
            ["10.0.0.5:7004"]
        );
        assert_eq!(map.primaries().len(), 3);
        assert_eq!(map.nodes().last().unwrap(), "10.0.0.5:7004");
        let partial = redis::Value::Array(vec![entry(0, 99, vec![node("h", 1)])]);
        let map = SlotMap::from_cluster_slots(&partial, "h:1").unwrap();
        assert_eq!((map.slots_covered(), map.covers_all_slots()), (100, false));
        assert_eq!(map.primary_for_slot(100), None);
    }

    #[test]
    fn a_slot_map_refuses_overlaps_and_nonsense() {
        let overlapping = redis::Value::Array(vec![
            entry(0, 10, vec![node("h", 1)]),
            entry(10, 20, vec![node("h", 2)]),
        ]);
        let e = SlotMap::from_cluster_slots(&overlapping, "h:1").unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        let out = redis::Value::Array(vec![entry(0, 16384, vec![node("h", 1)])]);
        assert!(SlotMap::from_cluster_slots(&out, "h:1").is_err());
        let no_primary = redis::Value::Array(vec![entry(0, 1, vec![])]);
        assert!(SlotMap::from_cluster_slots(&no_primary, "h:1").is_err());
        assert!(SlotMap::from_cluster_slots(&redis::Value::Okay, "h:1").is_err());
    }

    fn server_error(wire: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(wire)
            .unwrap()
            .extract_error()
            .unwrap_err()
    }

    #[test]
    fn redirects_are_read_from_what_redis_rs_makes_of_the_reply() {
        let moved = server_error(b"-MOVED 3999 127.0.0.1:6381\r\n");
        assert_eq!(
            Redirect::parse(&moved),
            Some(Redirect {
                kind: RedirectKind::Moved,
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        let ask = Redirect::parse(&server_error(b"-ASK 12 ::1:7000\r\n")).unwrap();
        assert_eq!(
            (ask.kind, ask.slot, ask.addr.as_str()),
            (RedirectKind::Ask, 12, "::1:7000")
        );
        for other in [
            &b"-ERR unknown command\r\n"[..],
            b"-MOVED nonsense\r\n",
            b"-MOVED 16384 h:1\r\n",
            b"-CLUSTERDOWN The cluster is down\r\n",
        ] {
            assert_eq!(Redirect::parse(&server_error(other)), None);
        }
    }

    #[test]
    fn a_url_template_keeps_scheme_credentials_and_query() {
        let t = UrlTemplate::parse("rediss://app:s3cret@ignored:6379/0?protocol=resp3").unwrap();
        assert_eq!(
            t.url_for("10.0.0.1:7000"),
            "rediss://app:s3cret@10.0.0.1:7000?protocol=resp3"
        );
        assert_eq!(
            t.url_for("::1:7000"),
            "rediss://app:s3cret@[::1]:7000?protocol=resp3"
        );
        let plain = UrlTemplate::parse("redis://").unwrap();
        assert_eq!(plain.url_for("h:1"), "redis://h:1");
        let e = UrlTemplate::parse("redis://:pw@h/3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only database 0") && !e.contains("pw"), "{e}");
        assert!(UrlTemplate::parse("http://h").is_err());
    }

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(normal_addr(" 127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(normal_addr("[::1]:7000").unwrap(), "::1:7000");
        for bad in ["127.0.0.1", ":7000", "h:0", "h:x", "h:70000"] {
            assert!(normal_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_checks_its_settings_before_asking_anyone() {
        let none: [&str; 0] = [];
        let e = ClusterPools::connect(&none, "redis://", &RedisTls::default(), 4).unwrap_err();
        assert!(matches!(e, ClusterError::NoSeeds));
        let e = ClusterPools::connect(&["h:1"], "redis://", &RedisTls::default(), 0).unwrap_err();
        assert!(matches!(e, ClusterError::PoolSize(0)));
        let e = ClusterPools::connect(&["h"], "redis://", &RedisTls::default(), 1).unwrap_err();
        assert!(e.to_string().contains("is not HOST:PORT"), "{e}");
        let many = vec!["h:1"; SEEDS_LIMIT + 1];
        let e = ClusterPools::connect(&many, "redis://", &RedisTls::default(), 1).unwrap_err();
        assert!(matches!(e, ClusterError::TooManySeeds(_)));
    }
}
