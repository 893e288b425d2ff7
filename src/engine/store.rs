//! Redis connections: the r2d2 pool, its connection manager, and the key names of the data model.
//!
//! Owns how a connection is opened (timeouts, TLS: a private CA, a client certificate), when it
//! is thrown away instead of being reused (it broke, or an error left it in an unknown WATCH
//! state) and the spelling of every key. Does not know what the keys hold; `wallet` and
//! `transfer` read and write them. The commands the engine may send are listed in
//! `permissions`.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use crate::engine::setting::SettingError;

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

    /// A manager over a client built by [`client`] (with TLS files, say).
    pub fn with_client(client: redis::Client) -> RedisManager {
        RedisManager { client }
    }
}

/// Files for TLS to Redis (`rediss://` URLs), all PEM. With none set, a `rediss://` URL trusts
/// the system's root certificates and sends no client certificate. `#[non_exhaustive]`:
/// `RedisTls::default().with_ca_file(Some(path))`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    /// CA certificates to trust instead of the system's roots: for a server whose certificate
    /// a private CA signed.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain) for a server that asks for one (mutual TLS,
    /// `tls-auth-clients yes`); set together with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

crate::engine::setting::setters!(RedisTls {
    with_ca_file => ca_file: Option<PathBuf>,
    with_client_cert_file => client_cert_file: Option<PathBuf>,
    with_client_key_file => client_key_file: Option<PathBuf>,
});

impl RedisTls {
    /// True when any file is set (the URL must then be `rediss://`).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    /// A client certificate needs its key and the other way round; the error names the
    /// missing one.
    pub fn validate(&self) -> Result<(), SettingError> {
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => Err(SettingError::new(
                "redis_tls.client_key_file",
                "must be set with redis_tls.client_cert_file (the key of the client certificate)",
            )),
            (None, Some(_)) => Err(SettingError::new(
                "redis_tls.client_cert_file",
                "must be set with redis_tls.client_key_file (the certificate of the client key)",
            )),
            _ => Ok(()),
        }
    }
}

/// Makes rustls use the `ring` crypto provider, once per process, unless the program that
/// embeds the engine installed one of its own first. redis-rs builds its TLS settings from the
/// process default.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a provider is installed already: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A Redis client for `url` with the TLS files of `tls` read and checked (their contents are
/// kept in the client; connections made later do not read them again). Errors name the URL
/// without its password, or the file.
pub fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, StoreError> {
    install_crypto_provider();
    let bad_url = |detail: String| StoreError::BadUrl {
        url: redact_url(url),
        detail,
    };
    if !tls.is_set() {
        return redis::Client::open(url).map_err(|e| bad_url(e.to_string()));
    }
    if !url.starts_with("rediss://") {
        return Err(bad_url(
            "a CA file or client certificate is set, which needs a rediss:// (TLS) URL".into(),
        ));
    }
    tls.validate().map_err(|e| bad_url(e.to_string()))?;
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem(cert, "CERTIFICATE")?,
            client_key: read_pem(key, "PRIVATE KEY")?,
        }),
        _ => None,
    };
    let root_cert = match &tls.ca_file {
        Some(ca) => Some(read_pem(ca, "CERTIFICATE")?),
        None => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    redis::Client::build_with_tls(url, certificates).map_err(|e| StoreError::TlsFiles {
        detail: e.to_string(),
    })
}

/// The contents of a PEM file that holds at least one `label` block (`CERTIFICATE`, or
/// `PRIVATE KEY`, which also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn read_pem(path: &Path, label: &str) -> Result<Vec<u8>, StoreError> {
    let tls_file = |detail: String| StoreError::TlsFile {
        path: path.display().to_string(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| tls_file(e.to_string()))?;
    let text = String::from_utf8_lossy(&pem);
    let has_block = text.split("-----BEGIN ").skip(1).any(|block| {
        block
            .split("-----")
            .next()
            .is_some_and(|l| l.ends_with(label))
    });
    if !has_block {
        return Err(tls_file(format!("no PEM {label} block in it")));
    }
    Ok(pem)
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
    connect_pool_tls(url, &RedisTls::default(), size_max)
}

/// [`connect_pool`] with TLS files for a `rediss://` URL.
pub fn connect_pool_tls(url: &str, tls: &RedisTls, size_max: u32) -> Result<Pool, StoreError> {
    if size_max == 0 {
        return Err(StoreError::PoolSize);
    }
    let manager = RedisManager::with_client(client(url, tls)?);
    // One real connection and round trip now, so a wrong URL fails at once with a clear
    // message, not after the pool's wait.
    let failed = |e: redis::RedisError| connect_error(url, e);
    let mut probe = r2d2::ManageConnection::connect(&manager).map_err(failed)?;
    r2d2::ManageConnection::is_valid(&manager, &mut probe).map_err(failed)?;
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

/// What went wrong with the first connection, told apart for the user: credentials refused,
/// PING not permitted, a TLS certificate missing or not trusted, or no answer at all.
fn connect_error(url: &str, e: redis::RedisError) -> StoreError {
    let url = redact_url(url);
    let detail = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
        return StoreError::Refused { url, detail };
    }
    if e.code() == Some("NOPERM") {
        return StoreError::Denied { url, detail };
    }
    if url.starts_with("rediss://") {
        let hint = if detail.contains("CertificateRequired") {
            Some(
                "the server asks for a client certificate: --redis-client-cert and --redis-client-key / REDIS_CLIENT_CERT and REDIS_CLIENT_KEY",
            )
        } else if detail.contains("certificate") || detail.contains("Certificate") {
            Some(
                "a server certificate from a private CA? name that CA with --redis-ca-file / REDIS_CA_FILE",
            )
        } else {
            None
        };
        if let Some(hint) = hint {
            return StoreError::Tls { url, detail, hint };
        }
    }
    StoreError::Unreachable { url, detail }
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
    /// A TLS file (CA, client certificate or key) cannot be read or is not PEM.
    #[error("cannot use the TLS file {path}: {detail}")]
    TlsFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The TLS files do not make a TLS setup together (a key that does not match its
    /// certificate, ...).
    #[error("cannot use the Redis TLS files (CA, client certificate and key): {detail}")]
    TlsFiles {
        /// What is wrong.
        detail: String,
    },
    /// The first connection or its PING failed: Redis is down or unreachable.
    #[error(
        "cannot reach Redis at {url}: {detail} (is redis-server running? check --redis-url / REDIS_URL)"
    )]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The connection error.
        detail: String,
    },
    /// The TLS handshake failed in a way with a known fix (a private CA, a client certificate).
    #[error("cannot reach Redis at {url}: {detail} ({hint})")]
    Tls {
        /// The URL, password redacted.
        url: String,
        /// The handshake error.
        detail: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// Redis refused the user and password.
    #[error(
        "Redis at {url} refused the credentials: {detail} (check the user and password in --redis-url / REDIS_URL)"
    )]
    Refused {
        /// The URL, password redacted.
        url: String,
        /// Redis's answer.
        detail: String,
    },
    /// The user may not run PING (an ACL without `+ping`).
    #[error(
        "Redis at {url} does not let this user run PING: {detail} (grant +ping; docs/operations.md, \"Redis permissions\")"
    )]
    Denied {
        /// The URL, password redacted.
        url: String,
        /// Redis's answer.
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

    /// Every user hash (a SCAN pattern, and the key pattern an ACL grants).
    pub const USER_PATTERN: &str = "user:*";
    /// Every wallet hash with its history (`wallet:{id}:log`, `wallet:{id}:history`).
    pub const WALLET_PATTERN: &str = "wallet:*";
    /// Every outcome record.
    pub const OUTCOME_PATTERN: &str = "transfer:*";
    /// Every wallet lock.
    pub const LOCK_PATTERN: &str = "lock:*";

    /// `user:{id}`: the user's hash (name, email, created_at, status).
    pub fn user(id: &str) -> String {
        format!("user:{id}")
    }
    /// `wallet:{id}`: the wallet's hash (balance, opening_balance, currency, status, version).
    pub fn wallet(id: &str) -> String {
        format!("wallet:{id}")
    }
    /// `wallet:{id}:history`: the stream of the wallet's debits, credits and deposits in the older
    /// format (read, trimmed and migrated, never written: see [`log()`]).
    pub fn history(id: &str) -> String {
        format!("wallet:{id}:history")
    }
    /// `wallet:{id}:log`: the list of the wallet's debits, credits and deposits, one compact
    /// line per entry (`wallet::format_log_entry`), oldest first.
    pub fn log(id: &str) -> String {
        format!("wallet:{id}:log")
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
    fn a_pem_file_must_hold_a_block_of_its_kind() {
        let dir = std::env::temp_dir().join(format!("store-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        );
        let key = write(
            "k.pem",
            "x\n-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n",
        );
        assert!(read_pem(&cert, "CERTIFICATE").is_ok());
        assert!(read_pem(&key, "PRIVATE KEY").is_ok());
        let e = read_pem(&key, "CERTIFICATE").unwrap_err().to_string();
        assert!(e.ends_with("k.pem: no PEM CERTIFICATE block in it"), "{e}");
        let e = read_pem(&dir.join("missing.pem"), "CERTIFICATE").unwrap_err();
        assert!(e.to_string().starts_with("cannot use the TLS file "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_client_certificate_and_its_key_come_together() {
        let cert = RedisTls {
            client_cert_file: Some("c.pem".into()),
            ..RedisTls::default()
        };
        assert_eq!(
            cert.validate().unwrap_err().setting,
            "redis_tls.client_key_file"
        );
        let key = RedisTls {
            client_key_file: Some("k.pem".into()),
            ..RedisTls::default()
        };
        assert_eq!(
            key.validate().unwrap_err().setting,
            "redis_tls.client_cert_file"
        );
        assert!(RedisTls::default().validate().is_ok());
        assert!(!RedisTls::default().is_set() && cert.is_set());
        let e = client("redis://127.0.0.1:6379", &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a rediss:// (TLS) URL"), "{e}");
    }

    #[test]
    fn first_connection_errors_say_what_to_fix_without_the_password() {
        let url = "rediss://app:s3cret@db:6380";
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "WRONGPASS"));
        let refused = connect_error(url, auth).to_string();
        assert!(refused.starts_with("Redis at rediss://app:***@db:6380 refused the credentials"));
        let untrusted = redis::RedisError::from(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        let e = connect_error(url, untrusted).to_string();
        assert!(
            e.ends_with("name that CA with --redis-ca-file / REDIS_CA_FILE)"),
            "{e}"
        );
        let required = redis::RedisError::from(std::io::Error::other(
            "received fatal alert: CertificateRequired",
        ));
        let e = connect_error(url, required).to_string();
        assert!(
            e.contains("--redis-client-cert and --redis-client-key"),
            "{e}"
        );
        let down = redis::RedisError::from(std::io::Error::other("Connection refused"));
        let e = connect_error(url, down).to_string();
        assert!(e.contains("is redis-server running?"), "{e}");
        for e in [refused, e] {
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

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
