//! The embeddable engine: [`WalletService`], a blocking handle over an r2d2 Redis pool that
//! creates wallets, deposits, reads balances and runs transfers.
//!
//! Owns the engine's settings and shared state (pool, in-process lock queue, test hooks).
//! The operations live beside their own concepts: wallets in `wallet`, the transfer algorithm
//! in `transfer`. Cheap to clone; share one per process.

use std::sync::Arc;

use crate::engine::lock::{LocalLocks, LockConfig, StuckLocks};
use crate::engine::retention::HISTORY_MAX_ENTRIES_LIMIT;
use crate::engine::setting::{SettingError, setters};
use crate::engine::store::{self, Pool, RedisTls, StoreError};

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
    /// [`WalletService::connect`] only.
    pub redis_tls: RedisTls,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lock: LockConfig::default(),
            watch_retries_max: 16,
            outcome_ttl_ms: None,
            history_max_entries: Some(HISTORY_MAX_ENTRIES_DEFAULT),
            redis_tls: RedisTls::default(),
        }
    }
}

setters!(EngineConfig {
    with_lock => lock: LockConfig,
    with_watch_retries_max => watch_retries_max: u32,
    with_outcome_ttl_ms => outcome_ttl_ms: Option<u64>,
    with_history_max_entries => history_max_entries: Option<u64>,
    with_redis_tls => redis_tls: RedisTls,
});

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
        self.redis_tls.validate()?;
        Ok(())
    }
}

/// A test-only pause point inside a transfer, between the WATCHed read and EXEC.
pub type Hook = Arc<dyn Fn(&str) + Send + Sync>;

/// The transfer engine. Blocking; safe to share between threads (clone it).
#[derive(Clone)]
pub struct WalletService {
    pub(crate) pool: Pool,
    pub(crate) config: EngineConfig,
    pub(crate) local_locks: Arc<LocalLocks>,
    pub(crate) stuck_locks: Arc<StuckLocks>,
    pub(crate) before_exec: Option<Hook>,
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
        config.validate()?;
        Ok(WalletService {
            pool,
            config,
            local_locks: Arc::new(LocalLocks::default()),
            stuck_locks: Arc::new(StuckLocks::default()),
            before_exec: None,
        })
    }

    /// The settings this service runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The Redis pool, for reads of your own alongside the engine's (the tools use it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Test hook: `hook(idempotency_key)` runs after the WATCHed read and before EXEC.
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
}
