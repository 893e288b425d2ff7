//! A `redis-server` with a TLS port and an ACL file: a CA, a server certificate and a client
//! certificate made with the `openssl` command line in the server's temporary folder, mutual
//! TLS required on the TLS port, and users from the test. The plain port stays open for the
//! test's own reads and writes as the default user (all permissions), so the harness's
//! `conn()`, `service()` and `url()` work as for any [`RedisServer`].

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Proc, RedisServer};
use wallet_transfer::engine::store::RedisTls;
use wallet_transfer::{EngineConfig, WalletService};

/// The worker's user in `deploy/redis-acl.conf`.
pub const WORKER_USER: &str = "wallet-worker";

/// The file that documents and grants the worker's permissions.
pub const ACL_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/redis-acl.conf");

/// The `user wallet-worker ...` line of `deploy/redis-acl.conf`, as written there.
pub fn worker_acl_line() -> String {
    let text = std::fs::read_to_string(ACL_FILE).expect("read deploy/redis-acl.conf");
    let mut lines = text
        .lines()
        .filter(|l| l.starts_with(&format!("user {WORKER_USER} ")));
    let line = lines.next().expect("a user wallet-worker line");
    assert!(lines.next().is_none(), "one user wallet-worker line");
    line.to_string()
}

/// The rules of the worker's ACL line, after `user wallet-worker` and with the password
/// placeholder (`>CHANGE-ME`) replaced by `password`.
pub fn worker_rules(password: &str) -> Vec<String> {
    worker_acl_line()
        .split_whitespace()
        .skip(2)
        .map(|rule| match rule {
            ">CHANGE-ME" => format!(">{password}"),
            other => other.to_string(),
        })
        .collect()
}

/// The TLS side of a [`RedisServer`].
pub struct TlsListener {
    pub port: u16,
}

impl TlsListener {
    /// The redis-server flags for the TLS port, the certificates and the ACL file in `dir`.
    pub(super) fn server_args(&self, dir: &Path) -> Vec<String> {
        let file = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_string();
        vec![
            "--tls-port".into(),
            self.port.to_string(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--aclfile".into(),
            file("users.acl"),
        ]
    }
}

impl RedisServer {
    /// A server with a TLS port (mutual TLS) besides its plain one, and an ACL file with the
    /// default user (all permissions, no password: the test's own) and `users`, each a list of
    /// ACL rules after `user NAME`.
    pub fn start_tls(users: &[(&str, Vec<String>)]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary folder for redis");
        make_certificates(dir.path());
        let mut acl = String::from("user default on nopass ~* &* +@all\n");
        for (name, rules) in users {
            acl.push_str(&format!("user {name} {}\n", rules.join(" ")));
        }
        std::fs::write(dir.path().join("users.acl"), acl).expect("write users.acl");
        let mut server = RedisServer {
            child: Proc::default(),
            port: 0,
            dir,
            tls: Some(TlsListener { port: 0 }),
        };
        server.spawn_on_free_port();
        server
    }

    pub fn tls_port(&self) -> u16 {
        self.tls.as_ref().expect("started with start_tls").port
    }

    /// `rediss://user:password@127.0.0.1:TLS_PORT` (the server certificate names 127.0.0.1).
    pub fn tls_url(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}", self.tls_port())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The test CA and the client certificate the server accepts.
    pub fn tls_files(&self) -> RedisTls {
        RedisTls::default()
            .with_ca_file(Some(self.file("ca.crt")))
            .with_client_cert_file(Some(self.file("client.crt")))
            .with_client_key_file(Some(self.file("client.key")))
    }

    /// The `wallet` global flags for those files.
    pub fn tls_flags(&self) -> Vec<String> {
        let files = self.tls_files();
        let path = |p: Option<PathBuf>| p.expect("set").to_str().expect("utf-8").to_string();
        vec![
            "--redis-ca-file".into(),
            path(files.ca_file),
            "--redis-client-cert".into(),
            path(files.client_cert_file),
            "--redis-client-key".into(),
            path(files.client_key_file),
        ]
    }

    /// An engine over TLS as `user`.
    pub fn tls_service(
        &self,
        user: &str,
        password: &str,
        pool_size: u32,
    ) -> Result<WalletService, wallet_transfer::engine::service::ServiceError> {
        let config = EngineConfig::default().with_redis_tls(self.tls_files());
        WalletService::connect(&self.tls_url(user, password), pool_size, config)
    }
}

/// Runs `openssl ARGS` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.crt`), a server certificate for 127.0.0.1 and localhost (`server.crt`,
/// `server.key`) and a client certificate (`client.crt`, `client.key`), all P-256, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=wallet test CA",
    ]);
    openssl(dir, &ca);
    for (name, cn, usage, names) in [
        (
            "server",
            "localhost",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        ),
        ("client", WORKER_USER, "clientAuth", ""),
    ] {
        let ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n{names}"
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subject = format!("/CN={cn}");
        let mut request = vec!["req", "-nodes"];
        request.extend(ec);
        request.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &request);
        let ext_file = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext_file,
            ],
        );
    }
}
