//! Least-privilege Redis over TLS: the worker end to end through `rediss://` (mutual TLS, a CA
//! the test makes) as the user of `deploy/redis-acl.conf`; the start-up permission check
//! naming each missing permission; passwords kept out of logs and `/metrics`.

use std::collections::{HashMap, HashSet};

use crate::support::stack::{Stack, result_of};
use crate::support::tls::{WORKER_USER, worker_acl_line, worker_rules};
use crate::support::{RedisServer, Tansu, create_wallets, http_get, total};
use wallet_transfer::engine::permissions::{self, Phase};
use wallet_transfer::engine::service::ServiceError;
use wallet_transfer::tools::ops;
use wallet_transfer::{Amount, Currency, EngineConfig, Status, TransferRequest};

/// A password that a leak would show verbatim and nothing else would contain.
fn secret() -> String {
    format!("pw-{}", uuid::Uuid::new_v4().simple())
}

/// A TLS server whose ACL file has the worker's user as `deploy/redis-acl.conf` writes it.
fn server_with_worker_user(password: &str) -> RedisServer {
    RedisServer::start_tls(&[(WORKER_USER, worker_rules(password))])
}

/// Creates (as `name`, through the plain port as the default user) a user with the worker's
/// rules less `drop`.
fn set_user_without(redis: &RedisServer, name: &str, password: &str, drop: &str) {
    let rules: Vec<String> = worker_rules(password)
        .into_iter()
        .filter(|r| r != drop)
        .collect();
    assert_ne!(
        rules.len(),
        worker_rules(password).len(),
        "{drop} is a rule"
    );
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg(&rules)
        .query::<()>(&mut redis.conn())
        .expect("ACL SETUSER");
}

fn keyspace(redis: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.conn())
        .expect("KEYS");
    keys.sort();
    keys
}

/// The (user, object) of each entry of ACL LOG: who was refused what.
fn acl_log(redis: &RedisServer) -> Vec<(String, String)> {
    let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut redis.conn())
        .expect("ACL LOG");
    let text = |entry: &HashMap<String, redis::Value>, field: &str| -> String {
        entry
            .get(field)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or_default()
    };
    entries
        .iter()
        .map(|e| (text(e, "username"), text(e, "object")))
        .collect()
}

#[test]
fn the_acl_line_is_in_the_docs_and_grants_exactly_what_the_check_asks() {
    let line = worker_acl_line();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("read docs/operations.md");
    assert!(
        doc.contains(&line),
        "docs/operations.md shows the ACL line of deploy/redis-acl.conf:\n{line}"
    );
    let rules = worker_rules("x");
    let granted: HashSet<&str> = rules.iter().filter_map(|r| r.strip_prefix('+')).collect();
    let patterns: HashSet<&str> = rules.iter().filter_map(|r| r.strip_prefix('~')).collect();
    let needs = permissions::worker_needs(false, true);
    let asked: HashSet<&str> = needs.iter().map(|n| n.acl).collect();
    let kinds: HashSet<&str> = needs
        .iter()
        .filter_map(|n| n.key.map(|k| k.pattern()))
        .collect();
    assert_eq!(
        granted, asked,
        "the line grants the commands the check asks for"
    );
    assert_eq!(patterns, kinds, "and the key patterns");
    for rule in ["reset", "resetchannels", "-@all", "on"] {
        assert!(rules.iter().any(|r| r == rule), "{rule} in {line}");
    }
}

#[test]
fn the_worker_runs_end_to_end_over_tls_as_the_restricted_user_and_never_shows_its_password() {
    let password = secret();
    let redis = server_with_worker_user(&password);
    let mut stack = Stack::start_on(redis, Tansu::start_persistent(), 3);
    let admin = stack.redis.service(2, EngineConfig::default());
    let ids: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "500.00")).collect();
    create_wallets(&admin, &pairs);
    let opening = total(&admin, &ids);

    stack.redis_args = vec![
        "--redis-url".into(),
        stack.redis.tls_url(WORKER_USER, &password),
    ];
    stack.redis_args.extend(stack.redis.tls_flags());
    let mut worker = stack.spawn_worker(&[]);
    let mut requests: Vec<TransferRequest> = (0..300)
        .map(|i| {
            let from = &ids[i % ids.len()];
            let to = &ids[(i * 7 + 3) % ids.len()];
            let amount = format!("{}.{:02}", 1 + i % 40, i % 100);
            TransferRequest::new(&format!("tls{i}"), from, to, &amount, Currency::USD).unwrap()
        })
        .collect();
    // A second delivery of one request: answered from its record, which releases the locks
    // it took through the release script (EVALSHA, SCRIPT LOAD, and GET/DEL inside it).
    requests.push(requests[0].clone());
    stack.publish_requests(&requests);

    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(requests.len(), 120_000).to_vec();
    let answered: HashSet<String> = read.iter().map(|m| result_of(m).transfer_id).collect();
    assert_eq!(answered.len(), requests.len() - 1, "every request answered");
    assert_eq!(read.iter().filter(|m| result_of(m).duplicate).count(), 1);
    let completed = read
        .iter()
        .filter(|m| result_of(m).status == Status::Completed && !result_of(m).duplicate)
        .count();
    assert!(completed > 0, "transfers moved money");

    let audit = ops::audit(&admin).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    assert_eq!(
        audit.total_balance, opening,
        "money is neither made nor lost"
    );

    // The worker's connections are on the TLS port, as the restricted user, and Redis refused
    // it nothing (a refusal is logged in ACL LOG; CLIENT SETINFO aside, which the worker
    // ignores and Redis 7.0 does not know).
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut stack.redis.conn())
        .expect("CLIENT LIST");
    let tls_port = format!("laddr=127.0.0.1:{} ", stack.redis.tls_port());
    let workers: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains(&format!(" user={WORKER_USER} ")))
        .collect();
    assert!(!workers.is_empty(), "{clients}");
    assert!(workers.iter().all(|l| l.contains(&tls_port)), "{clients}");
    let refused: Vec<String> = acl_log(&stack.redis)
        .into_iter()
        .filter(|(user, object)| user == WORKER_USER && object != "client|setinfo")
        .map(|(_, object)| object)
        .collect();
    assert_eq!(
        refused,
        Vec::<String>::new(),
        "nothing refused to the worker"
    );

    // Readiness PINGs over TLS too; neither endpoint shows the password.
    let (status, ready) = http_get(worker.metrics_port, "/readyz").expect("GET /readyz");
    assert_eq!(status, 200, "{ready}");
    let metrics = worker.metrics();
    assert!(
        metrics.contains("wallet_results_published_total"),
        "{metrics}"
    );
    for (what, text) in [("/metrics", &metrics), ("/readyz", &ready)] {
        assert!(!text.contains(&password), "the password in {what}");
    }
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(30_000), Some(0), "clean exit on SIGTERM");
    let log = worker.log();
    assert!(
        log.contains(&format!("rediss://{WORKER_USER}:***@127.0.0.1:")),
        "the worker logs where it connected, password masked:\n{log}"
    );
    assert!(!log.contains(&password), "the password in the log:\n{log}");
}

#[test]
fn each_permission_left_out_of_the_acl_line_is_named_by_the_check_and_nothing_is_written() {
    let password = secret();
    let redis = server_with_worker_user(&password);
    let before = keyspace(&redis);
    redis
        .tls_service(WORKER_USER, &password, 1)
        .expect("connect as the worker's user")
        .check_permissions()
        .expect("the ACL line grants everything the worker needs");

    let needs = permissions::worker_needs(false, true);
    let queued = needs.iter().filter(|n| n.phase == Phase::Queued).count();
    let rules = worker_rules(&password);
    let droppable = rules
        .iter()
        .filter(|r| r.starts_with('+') || r.starts_with('~'));
    for (i, rule) in droppable.enumerate() {
        let user = format!("lacking-{i}");
        set_user_without(&redis, &user, &password, rule);
        let result = redis
            .tls_service(&user, &password, 1)
            .map_err(|e| e.to_string())
            .and_then(|s| s.check_permissions().map_err(|e| e.to_string()));
        let error = result.expect_err(&format!("without {rule} the check fails"));
        assert!(!error.contains(&password), "{error}");
        if rule == "+ping" {
            // The connection's own PING is refused first, by WalletService::connect.
            assert!(error.contains("does not let this user run PING"), "{error}");
            assert!(error.contains("grant +ping"), "{error}");
            continue;
        }
        assert!(
            error.contains(&format!("(grant {rule}")),
            "without {rule}: {error}"
        );
        if rule == "+multi" {
            assert!(
                error.contains(&format!(
                    "{queued} more commands are checked inside a MULTI"
                )),
                "{error}"
            );
        } else {
            assert_eq!(
                error.matches("(grant ").count(),
                1,
                "only {rule} is missing: {error}"
            );
        }
        assert!(
            error.ends_with("deploy/redis-acl.conf (docs/operations.md, \"Redis permissions\")")
        );
    }
    assert_eq!(keyspace(&redis), before, "the checks wrote nothing");
}

#[test]
fn a_worker_whose_user_lacks_one_permission_stops_at_start_naming_it() {
    let password = secret();
    let redis = server_with_worker_user(&password);
    let mut stack = Stack::start_on(redis, Tansu::start_persistent(), 1);
    let admin = stack.redis.service(2, EngineConfig::default());
    create_wallets(&admin, &[("a", "100.00"), ("b", "0")]);
    set_user_without(&stack.redis, "no-rpush", &password, "+rpush");
    let request = TransferRequest::new("x1", "a", "b", "10.00", Currency::USD).unwrap();
    stack.publish_requests(&[request]);

    // The URL and the TLS files through the environment this time.
    stack.redis_args = Vec::new();
    let files = stack.redis.tls_files();
    let path = |p: Option<std::path::PathBuf>| p.unwrap().to_str().unwrap().to_string();
    let env = [
        ("REDIS_URL", stack.redis.tls_url("no-rpush", &password)),
        ("REDIS_CA_FILE", path(files.ca_file)),
        ("REDIS_CLIENT_CERT", path(files.client_cert_file)),
        ("REDIS_CLIENT_KEY", path(files.client_key_file)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut worker = stack.spawn_worker_env(&[], &env);
    assert_eq!(worker.wait_exit(30_000), Some(1), "{}", worker.log());
    let log = worker.log();
    assert!(
        log.contains(
            "the Redis user lacks permissions the worker needs: command RPUSH (grant +rpush;"
        ),
        "{log}"
    );
    assert!(!log.contains(&password), "the password in the log:\n{log}");
    assert!(
        !log.contains("assigned"),
        "stopped before joining the group:\n{log}"
    );
    assert_eq!(
        admin.balance("a").unwrap(),
        Amount::parse("100.00").unwrap()
    );
    assert!(
        admin.transfer_outcome("x1").unwrap().is_none(),
        "no transfer ran"
    );
}

#[test]
fn tls_errors_say_what_to_set_and_never_show_the_password() {
    let password = secret();
    let redis = server_with_worker_user(&password);
    let url = redis.tls_url(WORKER_USER, &password);
    let connect = |config: EngineConfig| {
        wallet_transfer::WalletService::connect(&url, 1, config)
            .err()
            .expect("fails")
            .to_string()
    };
    // The system's roots do not know the test CA.
    let no_ca = EngineConfig::default().with_redis_tls(redis.tls_files().with_ca_file(None));
    let mut errors = Vec::new();
    let e = connect(no_ca);
    assert!(e.contains("--redis-ca-file / REDIS_CA_FILE"), "{e}");
    errors.push(e);
    // The server asks for a client certificate.
    let no_client_cert = EngineConfig::default().with_redis_tls(
        wallet_transfer::engine::store::RedisTls::default().with_ca_file(redis.tls_files().ca_file),
    );
    let e = connect(no_client_cert);
    assert!(e.contains("--redis-client-cert"), "{e}");
    errors.push(e);
    // A wrong password.
    let wrong = redis.tls_service(WORKER_USER, "not-the-password", 1).err();
    let e = wrong.expect("refused").to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    errors.push(e);
    // A CA file that holds no certificate, or TLS files with a plain URL.
    let not_pem = EngineConfig::default().with_redis_tls(
        redis
            .tls_files()
            .with_ca_file(redis.tls_files().client_key_file),
    );
    let e = connect(not_pem);
    assert!(e.contains("no PEM CERTIFICATE block"), "{e}");
    errors.push(e);
    let plain = wallet_transfer::WalletService::connect(
        &format!("redis://{WORKER_USER}:{password}@127.0.0.1:{}", redis.port),
        1,
        EngineConfig::default().with_redis_tls(redis.tls_files()),
    );
    let e = match plain {
        Err(ServiceError::Store(e)) => e.to_string(),
        other => panic!("{:?}", other.err()),
    };
    assert!(e.contains("needs a rediss:// (TLS) URL"), "{e}");
    errors.push(e);
    for e in &errors {
        assert!(!e.contains(&password), "{e}");
    }
}
