//! Redis connections: the r2d2 pool, its connection manager, and the key names of the data model.
//!
//! Owns how a connection is opened (timeouts), when it is thrown away instead of being reused
//! (it broke, or an error left it in an unknown WATCH state) and the spelling of every key.
//! Does not know what the keys hold; `wallet` and `transfer` read and write them.

use std::time::Duration;

/// Time allowed to open a TCP connection to Redis.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Time allowed for one reply. A paused Redis turns into an error after this, never a hang.
pub const IO_TIMEOUT_MS: u64 = 5_000;
/// Time a caller waits for a free pooled connection.
pub const POOL_WAIT_MS: u64 = 5_000;

/// One Redis connection as the pool hands it out.
pub struct Conn {
    pub(crate) redis: redis::Connection,
    /// Set when an error struck between WATCH and EXEC (or anywhere the connection state is
    /// unknown). A tainted connection is dropped by the pool, never handed out again.
    tainted: bool,
}

impl Conn {
    /// Marks this connection as unfit for reuse; the pool discards it when it comes back.
    pub(crate) fn taint(&mut self) {
        self.tainted = true;
    }
}

/// Opens connections for r2d2 with connect and I/O timeouts set.
///
/// Written here rather than taken from redis-rs's `r2d2` feature because that manager cannot
/// be told that a connection left an error in the middle of WATCH...EXEC: such a connection
/// must be dropped, not returned to the pool with a stale WATCH on it.
#[derive(Debug, Clone)]
pub struct RedisManager {
    client: redis::Client,
}

impl RedisManager {
    /// A manager for `url` (`redis://` or `rediss://`, with AUTH); opens nothing yet.
    pub fn new(url: &str) -> Result<RedisManager, redis::RedisError> {
        Ok(RedisManager {
            client: redis::Client::open(url)?,
        })
    }
}

impl r2d2::ManageConnection for RedisManager {
    type Connection = Conn;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<Conn, redis::RedisError> {
        let redis = self
            .client
            .get_connection_with_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))?;
        redis.set_read_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)))?;
        redis.set_write_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)))?;
        Ok(Conn {
            redis,
            tainted: false,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query::<String>(&mut conn.redis)
            .map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        use redis::ConnectionLike;
        conn.tainted || !conn.redis.is_open()
    }
}

/// The engine's Redis pool; cheap to clone (it is shared).
pub type Pool = r2d2::Pool<RedisManager>;
/// A connection borrowed from the [`Pool`]; it goes back when dropped (or is discarded when
/// tainted).
pub type PooledConn = r2d2::PooledConnection<RedisManager>;

/// Builds a pool of at most `size_max` connections to `url` and checks that Redis answers.
///
/// The error names the URL without its password.
pub fn connect_pool(url: &str, size_max: u32) -> Result<Pool, StoreError> {
    if size_max == 0 {
        return Err(StoreError::PoolSize);
    }
    let manager = RedisManager::new(url).map_err(|e| StoreError::BadUrl {
        url: redact_url(url),
        detail: e.to_string(),
    })?;
    // One real connection and round trip now, so a wrong URL fails at once with a clear
    // message, not after the pool's wait.
    let unreachable = |e: redis::RedisError| StoreError::Unreachable {
        url: redact_url(url),
        detail: e.to_string(),
    };
    let mut probe = r2d2::ManageConnection::connect(&manager).map_err(unreachable)?;
    r2d2::ManageConnection::is_valid(&manager, &mut probe).map_err(unreachable)?;
    drop(probe);
    Ok(r2d2::Pool::builder()
        .max_size(size_max)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_millis(POOL_WAIT_MS))
        .test_on_check_out(false)
        .error_handler(Box::new(PoolErrorLog))
        .build_unchecked(manager))
}

/// Logs the pool's failed connection attempts at warn, once per attempt, with no secrets (the
/// redis error does not carry the URL).
#[derive(Debug)]
struct PoolErrorLog;

impl r2d2::HandleError<redis::RedisError> for PoolErrorLog {
    fn handle_error(&self, error: redis::RedisError) {
        log::warn!("redis connection failed: {error}");
    }
}

/// Why the pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A pool of zero connections was asked for.
    #[error("the Redis pool needs at least one connection")]
    PoolSize,
    /// The URL does not parse.
    #[error("invalid Redis URL {url}: {detail}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The first connection or its PING failed: Redis is down, unreachable, or refused AUTH.
    #[error(
        "cannot reach Redis at {url}: {detail} (is redis-server running? check --redis-url / REDIS_URL)"
    )]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The connection error.
        detail: String,
    },
}

/// `redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`. Secrets never reach logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

/// Keys (or set members) asked for per SCAN/SSCAN step.
pub const SCAN_COUNT: usize = 1_000;

/// Walks a cursor command to its end, handing each batch to `each` (with the connection, so
/// it may act on the batch): `SCAN cursor MATCH pattern COUNT n [TYPE t]` when `set` is `None`,
/// else `SSCAN set cursor MATCH pattern COUNT n`. Batches may repeat a name (Redis's cursor guarantee); callers that
/// collect de-duplicate.
pub fn scan_each<E: From<redis::RedisError>>(
    conn: &mut Conn,
    set: Option<&str>,
    pattern: &str,
    type_: Option<&str>,
    mut each: impl FnMut(&mut Conn, Vec<String>) -> Result<(), E>,
) -> Result<(), E> {
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = match set {
            None => redis::cmd("SCAN"),
            Some(key) => {
                let mut c = redis::cmd("SSCAN");
                c.arg(key);
                c
            }
        };
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        if let (None, Some(t)) = (set, type_) {
            cmd.arg("TYPE").arg(t);
        }
        let (next, batch): (u64, Vec<String>) = cmd.query(&mut conn.redis)?;
        if !batch.is_empty() {
            each(conn, batch)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Key names of the Redis data model (ARCHITECTURE.md, "Redis data model"), kept compatible with the original
/// Python system.
pub mod keys {
    /// The set of every user id.
    pub const USERS_ALL: &str = "users:all";
    /// The set of every wallet id; the audit walks it.
    pub const WALLETS_ALL: &str = "wallets:all";

    /// `user:{id}`: the user's hash (name, email, created_at, status).
    pub fn user(id: &str) -> String {
        format!("user:{id}")
    }
    /// `wallet:{id}`: the wallet's hash (balance, opening_balance, currency, status, version).
    pub fn wallet(id: &str) -> String {
        format!("wallet:{id}")
    }
    /// `wallet:{id}:history`: the stream of the wallet's debits, credits and deposits.
    pub fn history(id: &str) -> String {
        format!("wallet:{id}:history")
    }
    /// `lock:{id}`: the wallet's lock, holding its owner's token, with a ttl.
    pub fn lock(id: &str) -> String {
        format!("lock:{id}")
    }
    /// `transfer:{idempotency_key}`: the outcome record of a request.
    pub fn outcome(idempotency_key: &str) -> String {
        format!("transfer:{idempotency_key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://app:s3cret@db:6379/0"),
            "redis://app:***@db:6379/0"
        );
        assert_eq!(redact_url("rediss://:tok@db:6380"), "rediss://:***@db:6380");
        assert_eq!(redact_url("redis://s3cret@db"), "redis://***@db");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
