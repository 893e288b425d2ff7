//! The embeddable engine: [`WalletService`], a blocking handle over an r2d2 Redis pool (one
//! Redis) or one pool per primary (a Redis Cluster) that creates wallets, deposits, reads
//! balances and runs transfers.
//!
//! Owns the engine's settings and shared state (the topology, in-process lock queue, test
//! hooks). Does not own the operations: they live beside their own concepts (wallets in
//! `wallet`, the transfer algorithm in `transfer` and
//! `cluster_transfer`). Cheap to clone; share one per process.

use std::sync::Arc;

use crate::engine::cluster::{ClusterError, ClusterPools};
use crate::engine::keyspace::KeySpace;
use crate::engine::lock::{LocalLocks, LockConfig, StuckLocks};
use crate::engine::retention::HISTORY_MAX_ENTRIES_LIMIT;
use crate::engine::setting::{SettingError, setters};
use crate::engine::store::{self, Pool, RedisTls, StoreError};
use crate::engine::topology::Topology;

/// Engine settings. `Default` gives the documented defaults (those of the `wallet` binary's
/// flags); change them with the `with_*` setters, which keep compiling when settings are
/// added (the struct is `#[non_exhaustive]`):
///
/// ```
/// use wallet_transfer::EngineConfig;
/// use wallet_transfer::engine::lock::LockConfig;
///
/// let config = EngineConfig::default()
///     .with_lock(LockConfig::default().with_ttl_ms(5_000).with_retries_max(20))
///     .with_outcome_ttl_ms(Some(7 * 24 * 3600 * 1000));
/// assert_eq!(config.validate(), Ok(()));
/// assert_eq!(config.lock.ttl_ms, 5_000);
/// ```
///
/// [`WalletService::connect`] validates the settings; [`EngineConfig::validate`] checks them
/// alone, and its [`SettingError`] names the setting by its path (`lock.ttl_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The wallet locks: lifetime and retries (see [`LockConfig`]).
    pub lock: LockConfig,
    /// Times a transfer goes back to WATCH after EXEC found a watched key changed.
    pub watch_retries_max: u32,
    /// Expiry of outcome records; `None` (the default) keeps them for ever, so a replay at any
    /// time gets the original answer. With a ttl, a request must never be retried or replayed
    /// after it: its record would be gone and the money would move again. The worker derives
    /// its ttl from the requests topic's retention plus a margin, and refuses a shorter one.
    pub outcome_ttl_ms: Option<u64>,
    /// Most history entries a wallet keeps in Redis; older ones are trimmed into the wallet's
    /// checkpoint, which keeps its balance auditable (see [`crate::engine::retention`]). The
    /// worker also publishes every entry to the ledger topic, where trimmed ones stay; entries
    /// made by the library alone are gone from Redis once trimmed. `None` keeps every entry
    /// (memory grows with every transfer).
    pub history_max_entries: Option<u64>,
    /// TLS files for a `rediss://` URL (a private CA, a client certificate); used by
    /// [`WalletService::connect`] and [`WalletService::connect_cluster`].
    pub redis_tls: RedisTls,
    /// Replicas that must acknowledge each write step before the transfer goes on or answers:
    /// `WAIT n` [`WAIT_REPLICAS_TIMEOUT_MS`] on the connection that wrote, after the one-slot
    /// transaction and after each cross-slot step. Fewer acknowledgements in time is
    /// [`crate::TransferError::ReplicasBehind`], transient: the write stays on the primary and
    /// a retry of the request is answered from its record (or finishes a PENDING one). `None`
    /// (the default) waits for none: an answered transfer can then be lost when a primary
    /// fails before its replica has it.
    pub wait_replicas: Option<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lock: LockConfig::default(),
            watch_retries_max: 16,
            outcome_ttl_ms: None,
            history_max_entries: Some(HISTORY_MAX_ENTRIES_DEFAULT),
            redis_tls: RedisTls::default(),
            wait_replicas: None,
        }
    }
}

setters!(EngineConfig {
    with_lock => lock: LockConfig,
    with_watch_retries_max => watch_retries_max: u32,
    with_outcome_ttl_ms => outcome_ttl_ms: Option<u64>,
    with_history_max_entries => history_max_entries: Option<u64>,
    with_redis_tls => redis_tls: RedisTls,
    with_wait_replicas => wait_replicas: Option<u32>,
});

/// How long one `WAIT` for replicas may block (see [`EngineConfig::wait_replicas`]).
pub const WAIT_REPLICAS_TIMEOUT_MS: u64 = 1_000;
/// Upper bound for `wait_replicas`.
pub const WAIT_REPLICAS_LIMIT: u32 = 16;

/// Default of `history_max_entries`: the last 1,000 entries of each wallet stay in Redis.
pub const HISTORY_MAX_ENTRIES_DEFAULT: u64 = 1_000;

/// Upper bound for `watch_retries_max`.
pub const WATCH_RETRIES_LIMIT: u32 = 1_000;

impl EngineConfig {
    /// Checks every setting against its rule; the error names the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        self.lock.validate()?;
        SettingError::check_range(
            "watch_retries_max",
            self.watch_retries_max,
            0,
            WATCH_RETRIES_LIMIT,
        )?;
        if self.outcome_ttl_ms == Some(0) {
            return Err(SettingError::new(
                "outcome_ttl_ms",
                "must be positive when set, got 0",
            ));
        }
        if let Some(n) = self.history_max_entries {
            SettingError::check_range("history_max_entries", n, 1, HISTORY_MAX_ENTRIES_LIMIT)?;
        }
        if let Some(n) = self.wait_replicas {
            SettingError::check_range("wait_replicas", n, 1, WAIT_REPLICAS_LIMIT)?;
        }
        self.redis_tls.validate()?;
        Ok(())
    }
}

#[doc(hidden)]
/// A test-only pause point inside a transfer, between the WATCHed read and EXEC.
pub type Hook = Arc<dyn Fn(&str) + Send + Sync>;

#[doc(hidden)]
/// Where a cross-slot transfer on a Redis Cluster stops as if the process had crashed (tests
/// only, feature `test-hooks`; `engine::cluster_transfer`, "Recovery"). The transfer returns a
/// transient error there and leaves its locks to expire by their ttl, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Right after step 2: the sender debited, the outcome PENDING, no credit yet.
    AfterDebit,
    /// Right after step 3: the receiver credited (its marker written), the outcome still
    /// PENDING.
    AfterCredit,
}

/// The transfer engine. Blocking; safe to share between threads (clone it).
#[derive(Clone)]
pub struct WalletService {
    pub(crate) topology: Topology,
    pub(crate) config: EngineConfig,
    pub(crate) local_locks: Arc<LocalLocks>,
    pub(crate) stuck_locks: Arc<StuckLocks>,
    pub(crate) before_exec: Option<Hook>,
    pub(crate) failpoint: Option<Failpoint>,
}

impl WalletService {
    /// Connects to `redis_url` with a pool of `pool_size` connections (over TLS with the files
    /// of `config.redis_tls` for a `rediss://` URL) and checks that Redis answers a PING.
    ///
    /// The URL may carry AUTH (`rediss://user:password@host:6380/0`); errors name it without
    /// the password. The PING runs on one connection opened now, so a wrong URL, refused
    /// credentials or a Redis that is down fail here, at once. Size the pool to the threads
    /// that call the service at the same time: a transfer holds one connection for its whole
    /// run.
    ///
    /// It does not check the user's other permissions: the operator tools connect with users
    /// of their own. The worker calls [`WalletService::check_permissions`] next.
    pub fn connect(
        redis_url: &str,
        pool_size: u32,
        config: EngineConfig,
    ) -> Result<WalletService, ServiceError> {
        config.validate()?;
        let pool = store::connect_pool_tls(redis_url, &config.redis_tls, pool_size)?;
        WalletService::with_pool(pool, config)
    }

    /// Uses an existing pool (from [`crate::engine::store::connect_pool`], or one shared with
    /// another service).
    pub fn with_pool(pool: Pool, config: EngineConfig) -> Result<WalletService, ServiceError> {
        WalletService::with_topology(Topology::one(pool), config)
    }

    /// Connects to a Redis Cluster: reads the slot map from the first of `seeds`
    /// (`HOST:PORT`) that answers and opens a pool of `pool_size` connections to each primary.
    /// `template_url` gives the scheme and credentials for every node (`redis://`,
    /// `rediss://user:password@`; its host is not used) and `config.redis_tls` the TLS files,
    /// as for one Redis (see [`ClusterPools::connect`]).
    ///
    /// Size `pool_size` to twice the threads that call the service at once: a cross-slot
    /// transfer holds a connection to each wallet's primary, two to the same primary when
    /// both wallets' slots live there.
    pub fn connect_cluster(
        seeds: &[String],
        template_url: &str,
        pool_size: u32,
        config: EngineConfig,
    ) -> Result<WalletService, ServiceError> {
        config.validate()?;
        let pools = ClusterPools::connect(seeds, template_url, &config.redis_tls, pool_size)?;
        WalletService::with_cluster(Arc::new(pools), config)
    }

    /// Uses existing cluster pools (shared with another service, say).
    pub fn with_cluster(
        pools: Arc<ClusterPools>,
        config: EngineConfig,
    ) -> Result<WalletService, ServiceError> {
        WalletService::with_topology(Topology::cluster(pools), config)
    }

    /// Uses an existing [`Topology`] (one Redis or a cluster).
    pub fn with_topology(
        topology: Topology,
        config: EngineConfig,
    ) -> Result<WalletService, ServiceError> {
        config.validate()?;
        Ok(WalletService {
            topology,
            config,
            local_locks: Arc::new(LocalLocks::default()),
            stuck_locks: Arc::new(StuckLocks::default()),
            before_exec: None,
            failpoint: None,
        })
    }

    /// The settings this service runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The Redis pool of a service on one Redis, for reads of your own alongside the
    /// engine's (the tools use it).
    ///
    /// # Panics
    ///
    /// On a service made by [`WalletService::connect_cluster`]: a cluster has one pool per
    /// primary, see [`WalletService::cluster`]. Code that may run in either mode asks
    /// [`WalletService::standalone_pool`], which says `None` instead.
    pub fn pool(&self) -> &Pool {
        self.standalone_pool().expect(
            "WalletService::pool() on a Redis Cluster service: use cluster() (one pool per primary) or standalone_pool()",
        )
    }

    /// The Redis pool when the service talks to one Redis; `None` on a cluster.
    pub fn standalone_pool(&self) -> Option<&Pool> {
        self.topology.one_pool()
    }

    /// The cluster's pools and slot map when the service talks to a Redis Cluster; `None` on
    /// one Redis.
    pub fn cluster(&self) -> Option<&Arc<ClusterPools>> {
        self.topology.cluster_pools()
    }

    /// Where the keys live: one Redis or a cluster's shards, their connections and key names.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The key names this service writes.
    pub fn key_space(&self) -> KeySpace {
        self.topology.key_space()
    }

    /// Test hook: cross-slot transfers on a cluster stop at `failpoint` (see [`Failpoint`]);
    /// `None` turns it off.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_failpoint(&mut self, failpoint: Option<Failpoint>) {
        self.failpoint = failpoint;
    }

    /// Test hook: `hook(idempotency_key)` runs after the WATCHed read and before each EXEC
    /// (across slots: the debit's or the FAILED record's, the credit's, and the completion's
    /// script).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_before_exec_hook(&mut self, hook: Hook) {
        self.before_exec = Some(hook);
    }

    /// A service that shares the pool and settings but not the in-process lock queue, as a
    /// second worker process would. Tests use it to race "processes" inside one test.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn as_separate_process(&self) -> WalletService {
        WalletService {
            local_locks: Arc::new(LocalLocks::default()),
            stuck_locks: Arc::new(StuckLocks::default()),
            ..self.clone()
        }
    }
}

/// Why a [`WalletService`] could not be made. Neither is transient in the sense of
/// [`crate::TransferError::is_transient`]: fix the setting, or start Redis and connect again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A setting broke its rule; the error names it.
    #[error("invalid engine setting: {0}")]
    Config(#[from] SettingError),
    /// The pool could not be built: a bad URL, Redis unreachable, or a pool of size 0.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster's map or pools could not be had: no seed answered, a bad address or
    /// template URL.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// `WAIT wanted WAIT_REPLICAS_TIMEOUT_MS` on `conn`, the connection that just wrote: how many
/// replicas acknowledged its writes (fewer than `wanted` when the timeout passed). The one
/// WAIT of the engine: transfers, deposits and new wallets use it.
pub(crate) fn wait_acked(
    conn: &mut crate::engine::store::Conn,
    wanted: u32,
) -> redis::RedisResult<u32> {
    redis::cmd("WAIT")
        .arg(wanted)
        .arg(WAIT_REPLICAS_TIMEOUT_MS)
        .query(&mut conn.redis)
        .inspect_err(|_| conn.taint())
}
