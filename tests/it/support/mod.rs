//! Test harness: real `redis-server` and `tansu` processes on free loopback ports, each in its
//! own temporary folder, waited on until they answer and killed when dropped.
//!
//! Binaries come from `REDIS_SERVER_BIN` / `TANSU_BIN`, else from PATH (and `~/.cargo/bin` for
//! tansu). A missing binary fails the test with the command that installs it. Nothing here is
//! a mock: the tests talk to the real servers.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wallet_transfer::engine::keyspace::KeySpace;
use wallet_transfer::{
    Amount, Currency, EngineConfig, NewWallet, TransferOutcome, TransferRequest, WalletService,
};

/// How long a server may take to answer after it was started.
pub const START_TIMEOUT_MS: u64 = 20_000;

/// Waits until `cond` is true, polling every 10 ms; panics with `what` after `timeout_ms`.
pub fn wait_until(what: &str, timeout_ms: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout_ms} ms waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

fn find_binary(env: &str, name: &str, install: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not name a file; install it with: {install}",
            path.display()
        );
        return path;
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found on PATH (or set {env}); install it with: {install}")
        })
}

/// Ties a child process to the test thread that spawns it: Linux sends it SIGKILL when that
/// thread ends (`PR_SET_PDEATHSIG`), so a test binary that is killed, or a test that panics
/// before the child is in its guard, leaves no server, worker or command behind. Every
/// long-lived child of the suite is spawned through it.
pub fn tied(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid,
    // _exit), on no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would kill this child.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

/// Calls `spawn` until it starts the server on its old port (the port may linger a moment).
fn respawn(what: &str, mut spawn: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    while !spawn() {
        assert!(Instant::now() < deadline, "{what} did not restart");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `redis-server` on a free port in a temporary folder, with AOF (`appendfsync always`) so a
/// restart keeps every acknowledged write.
pub struct RedisServer {
    child: Proc,
    pub port: u16,
    dir: tempfile::TempDir,
    /// A TLS listener beside the plain port, and an ACL file (see [`RedisServer::start_tls`]).
    tls: Option<tls::TlsListener>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary folder for redis");
        let mut server = RedisServer {
            child: Proc::default(),
            port: 0,
            dir,
            tls: None,
        };
        server.spawn_on_free_port();
        server
    }

    fn spawn_on_free_port(&mut self) {
        for _ in 0..5 {
            self.port = free_port();
            if let Some(tls) = &mut self.tls {
                tls.port = free_port();
            }
            if self.spawn() {
                return;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts the process on `self.port`; false when it exited (port taken).
    fn spawn(&mut self) -> bool {
        let bin = find_binary(
            "REDIS_SERVER_BIN",
            "redis-server",
            "apt-get install -y redis-server",
        );
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.path().to_str().expect("utf-8 temp path")])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(
                self.tls
                    .as_ref()
                    .map(|t| t.server_args(self.dir.path()))
                    .unwrap_or_default(),
            );
        log_to(&mut cmd, &self.dir.path().join("redis.log"));
        let mut child = Proc::spawn(&mut cmd, "redis-server");
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if child.exited().is_some() {
                return false;
            }
            if self.ping() {
                self.child = child;
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within {START_TIMEOUT_MS} ms; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A plain connection for the test's own reads and writes.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection()
            .expect("connect to test redis")
    }

    /// An engine on this server with `pool_size` connections.
    pub fn service(&self, pool_size: u32, config: EngineConfig) -> WalletService {
        WalletService::connect(&self.url(), pool_size, config).expect("connect engine")
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&self) {
        self.child.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.child.signal("CONT");
    }

    /// Kills the server (SIGKILL) and starts it again on the same port from its AOF.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the server (SIGKILL) and leaves it stopped: the port refuses connections.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Starts a server stopped by [`RedisServer::stop`] again, on its port, from its AOF.
    pub fn start_again(&mut self) {
        respawn("redis-server", || self.spawn());
    }
}

/// A `tansu` Kafka-compatible broker on a free port, with in-memory storage, or sqlite storage
/// in its temporary folder when started with [`Tansu::start_persistent`].
pub struct Tansu {
    child: Proc,
    pub port: u16,
    dir: tempfile::TempDir,
    storage: String,
}

impl Tansu {
    pub fn start() -> Tansu {
        Tansu::start_with_storage(|_| "memory://tansu/".to_string())
    }

    /// Storage that survives a broker restart (needs tansu built with `libsql`).
    pub fn start_persistent() -> Tansu {
        Tansu::start_with_storage(|_| "sqlite://tansu.db".to_string())
    }

    fn start_with_storage(storage: impl Fn(&Path) -> String) -> Tansu {
        let dir = tempfile::tempdir().expect("temporary folder for tansu");
        let storage = storage(dir.path());
        let mut broker = Tansu {
            child: Proc::default(),
            port: 0,
            dir,
            storage,
        };
        for _ in 0..5 {
            broker.port = free_port();
            if broker.spawn() {
                return broker;
            }
        }
        panic!(
            "tansu did not start on any of 5 free ports; log: {}",
            broker.log()
        );
    }

    fn spawn(&mut self) -> bool {
        let bin = find_binary(
            "TANSU_BIN",
            "tansu",
            "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql",
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn");
        log_to(&mut cmd, &self.dir.path().join("tansu.log"));
        let mut child = Proc::spawn(&mut cmd, "tansu");
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if child.exited().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = child;
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "tansu on port {} did not listen within {START_TIMEOUT_MS} ms; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    pub fn pause(&self) {
        self.child.signal("STOP");
    }

    pub fn resume(&self) {
        self.child.signal("CONT");
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the broker (SIGKILL); `start_again` brings it back on the same port and storage.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    pub fn start_again(&mut self) {
        respawn("tansu", || self.spawn());
    }
}

/// A Redis a test runs, one server or a cluster, as the test itself reads it: with fresh
/// connections that give up fast (500 ms to connect), no engine and no pool, so a read while
/// a server restarts fails at once and the caller can count it as "not yet".
pub trait TestRedis {
    /// The key names the engine writes there.
    fn key_space(&self) -> KeySpace;

    /// `keys` grouped by the node that holds them, each group with a fresh connection to its
    /// node; the error when a node does not answer (or a cluster slot has no owner).
    fn conns_for(
        &self,
        keys: Vec<String>,
    ) -> redis::RedisResult<Vec<(redis::Connection, Vec<String>)>>;
}

impl TestRedis for RedisServer {
    fn key_space(&self) -> KeySpace {
        KeySpace::Standalone
    }

    fn conns_for(
        &self,
        keys: Vec<String>,
    ) -> redis::RedisResult<Vec<(redis::Connection, Vec<String>)>> {
        let conn = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        Ok(vec![(conn, keys)])
    }
}

/// Creates active USD wallets with the given balances; panics unless all are new.
pub fn create_wallets(service: &WalletService, wallets: &[(&str, &str)]) {
    let new: Vec<NewWallet> = wallets
        .iter()
        .map(|(id, balance)| {
            NewWallet::new(
                id,
                Amount::parse(balance).expect("test balance"),
                Currency::USD,
            )
            .with_full_name(&format!("Test {id}"))
            .with_email(&format!("{id}@example.com"))
        })
        .collect();
    let created = service.create_wallets(&new).expect("create wallets");
    assert_eq!(created, new.len(), "every test wallet is new");
}

/// Sum of the balances of `ids`.
pub fn total(service: &WalletService, ids: &[String]) -> Amount {
    ids.iter().fold(Amount::ZERO, |sum, id| {
        sum.checked_add(service.balance(id).expect("balance"))
            .expect("no overflow")
    })
}

/// Every `lock:*` key currently in Redis.
pub fn lock_keys(conn: &mut redis::Connection) -> Vec<String> {
    redis::cmd("KEYS").arg("lock:*").query(conn).expect("KEYS")
}

/// A USD transfer request; `id` is its transfer id and so its idempotency key.
pub fn usd(id: &str, from: &str, to: &str, amount: &str) -> TransferRequest {
    TransferRequest::new(id, from, to, amount, Currency::USD).expect("valid request")
}

/// Creates active USD wallets `ids`, each with `balance` and no user details (unlike
/// [`create_wallets`]); panics unless all are new.
pub fn create_usd(service: &WalletService, ids: &[String], balance: &str) {
    let new: Vec<NewWallet> = ids
        .iter()
        .map(|id| NewWallet::new(id, Amount::parse(balance).unwrap(), Currency::USD))
        .collect();
    assert_eq!(service.create_wallets(&new).unwrap(), ids.len());
}

/// Tries of [`transfer_retrying`], at most.
pub const TRANSIENT_TRIES_MAX: u32 = 100;
/// How long [`transfer_retrying`] may retry, at most.
pub const TRANSIENT_DEADLINE_MS: u64 = 120_000;

/// Runs `request`, retrying transient errors as the worker does: at most
/// [`TRANSIENT_TRIES_MAX`] tries, 5 ms apart, within [`TRANSIENT_DEADLINE_MS`]. Panics on any
/// other error, and when the retries run out, with the last transient error: it never gives
/// up silently.
pub fn transfer_retrying(service: &WalletService, request: &TransferRequest) -> TransferOutcome {
    let deadline = Instant::now() + Duration::from_millis(TRANSIENT_DEADLINE_MS);
    let mut last = String::new();
    for tries in 1..=TRANSIENT_TRIES_MAX {
        match service.transfer(request) {
            Ok(outcome) => return outcome,
            Err(e) if e.is_transient() => {
                last = e.to_string();
                if Instant::now() >= deadline {
                    panic!(
                        "{}: still failing after {tries} tries and {TRANSIENT_DEADLINE_MS} ms: {last}",
                        request.transfer_id
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{}: {e}", request.transfer_id),
        }
    }
    panic!(
        "{}: still failing after {TRANSIENT_TRIES_MAX} tries: {last}",
        request.transfer_id
    )
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every key matching `pattern` (a SCAN MATCH glob) on the node behind `conn`, of type
/// `type_` only when given (`SCAN ... TYPE`).
pub fn scan(conn: &mut redis::Connection, pattern: &str, type_: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000);
        if let Some(type_) = type_ {
            cmd.arg("TYPE").arg(type_);
        }
        let (next, keys): (u64, Vec<String>) = cmd.query(conn).expect("SCAN");
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// GET `path` on 127.0.0.1:`port` over HTTP/1.0 (2 s to connect, 10 s to read): the status
/// and the body, or what went wrong.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

pub mod process;

pub use process::{Proc, log_to};

pub mod cluster;

pub mod stack;

pub mod tls;

pub mod faults;

pub mod partition;

pub mod sim;

pub mod topology;

/// [`tied`] holds: a child spawned by a thread that then ends is killed, as a killed test
/// binary's children are. (Without the hook the `sleep` outlives the thread and this fails.)
#[test]
fn a_child_dies_with_the_test_thread_that_spawned_it() {
    let pid = std::thread::spawn(|| {
        tied(Command::new("sleep").arg("600"))
            .spawn()
            .expect("spawn sleep")
            .id()
    })
    .join()
    .expect("the spawning thread");
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"))
    };
    wait_until("the child killed with its thread", 10_000, gone);
}
