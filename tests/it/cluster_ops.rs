//! The operator commands on a real Redis Cluster (3 primaries, `support::cluster`), run as the
//! real `wallet` binary with `--redis-cluster`: `audit` over every shard (clean after random
//! cross-slot load, a doctored balance named, a PENDING counted as in flight), `recover`
//! (finishes a crashed transfer, then finds nothing), `locks` (each lock with its shard),
//! `status KEY --from SENDER`, `seed` and `snapshot`.

use std::process::Output;

use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::cluster::keys;
use wallet_transfer::engine::lock::LockConfig;
use wallet_transfer::engine::service::Failpoint;
use wallet_transfer::{Amount, EngineConfig, Status, TransferRequest, WalletService};

use crate::support::cluster::RedisCluster;
use crate::support::stack::WALLET_BIN;
use crate::support::{RedisServer, create_usd, usd, wait_until};

const POOL_SIZE: u32 = 8;
/// How long a crashed transfer's locks may take to expire, with margin.
const LOCK_EXPIRY_WAIT_MS: u64 = 10_000;

fn config(lock_ttl_ms: u64) -> EngineConfig {
    EngineConfig::default()
        .with_lock(
            LockConfig::default()
                .with_ttl_ms(lock_ttl_ms)
                .with_retry_delay_ms_base(2)
                .with_retry_delay_ms_max(20)
                .with_retries_max(1_000),
        )
        .with_history_max_entries(None)
}

fn connect(redis: &RedisCluster, lock_ttl_ms: u64) -> WalletService {
    WalletService::connect_cluster(&redis.seeds(), "redis://", POOL_SIZE, config(lock_ttl_ms))
        .expect("connect to the test cluster")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two wallet ids (`{prefix}_N`) in different hash slots.
fn cross_pair(prefix: &str) -> (String, String) {
    let a = format!("{prefix}_0");
    let slot = keys::wallet_slot(&a);
    let b = (1..100_000)
        .map(|n| format!("{prefix}_{n}"))
        .find(|b| keys::wallet_slot(b) != slot)
        .expect("a second id");
    (a, b)
}

/// A cross-slot transfer of 2.50 between two fresh wallets of 10.00 that stops at `point` as a
/// crash would: its record PENDING, its locks left to expire after `lock_ttl_ms`.
fn crash(redis: &RedisCluster, point: Failpoint, tag: &str, lock_ttl_ms: u64) -> TransferRequest {
    let mut crashing = connect(redis, lock_ttl_ms);
    crashing.set_failpoint(Some(point));
    let (from, to) = cross_pair(tag);
    create_usd(&crashing, &[from.clone(), to.clone()], "10.00");
    let request = usd(&format!("{tag}_tx"), &from, &to, "2.50");
    let e = crashing
        .transfer(&request)
        .expect_err("the failpoint stops it");
    assert!(e.to_string().contains("failpoint"), "{e}");
    request
}

/// Waits (bounded) until no `lock:{...}` key is left on any primary.
fn wait_for_locks_to_expire(redis: &RedisCluster) {
    wait_until(
        "the crashed transfer's locks to expire",
        LOCK_EXPIRY_WAIT_MS,
        || {
            redis.primary_ports().into_iter().all(|port| {
                let mut conn = redis.conn(port);
                let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(0)
                    .arg("MATCH")
                    .arg("lock:*")
                    .arg("COUNT")
                    .arg(10_000)
                    .query(&mut conn)
                    .expect("SCAN");
                found.is_empty()
            })
        },
    );
}

fn json(out: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} / {stderr}"))
}

/// A transfer crashed after its debit holds both wallets' locks: `wallet locks` lists them
/// with the primary and slot that hold them, and `wallet status KEY --from SENDER` reads the
/// PENDING record from the sender's slot (without --from it says what to pass).
#[test]
fn locks_show_their_shard_and_status_finds_a_record_by_its_sender() {
    let redis = RedisCluster::start(3, 0);
    let request = crash(&redis, Failpoint::AfterDebit, "lk", 60_000);
    let out = redis.wallet(&["locks"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let from = &request.from_user;
    let slot = keys::wallet_slot(from);
    let port = redis.owner_of(redis.ports()[0], slot).expect("an owner");
    let row = stdout
        .lines()
        .find(|l| l.contains(&keys::lock(from)))
        .unwrap_or_else(|| panic!("no row for {}: {stdout}", keys::lock(from)));
    assert!(
        row.contains(&format!(":{port} ")) && row.contains(&format!(" {slot} ")),
        "lock:{{{from}}} should sit on the primary at port {port}, slot {slot}: {row}"
    );
    assert!(stdout.contains("2 locks held"), "{stdout}");
    let locks = json(&redis.wallet(&["locks", "--json"]));
    assert!(
        locks[0]["primary"].is_string() && locks[0]["slot"].is_u64(),
        "{locks}"
    );

    let key = &request.idempotency_key;
    let out = redis.wallet(&["status", key, "--from", from, "--json"]);
    let record = json(&out);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(record["status"], "PENDING");
    assert_eq!(record["to_user"], request.to_user.as_str());
    let out = redis.wallet(&["status", key]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out).1.contains("--from SENDER"), "{out:?}");
}

/// A transfer that crashed after its debit is PENDING: `wallet audit` counts its 2.50 as in
/// flight and stays clean; `wallet recover` (once the locks expired) finishes it, the money
/// moved once, the audit is clean with nothing in flight, and a second recover finds nothing.
/// One that crashed after its credit is PENDING with nothing in flight.
#[test]
fn a_crashed_transfer_is_in_flight_for_the_audit_until_recover_finishes_it() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, 1_000);
    let request = crash(&redis, Failpoint::AfterDebit, "rv", 1_000);
    let report = json(&redis.wallet(&["audit", "--json"]));
    assert_eq!(report["violations_total"], 0, "{report}");
    assert_eq!(report["pending_transfers"], 1, "{report}");
    assert_eq!(report["currencies"][0]["in_flight"], "2.50", "{report}");
    wait_for_locks_to_expire(&redis);
    let out = redis.wallet(&["recover"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("PENDING found: 1\nfinished now: 1\n"),
        "{stdout}"
    );
    let record = service
        .transfer_outcome_of(&request.from_user, &request.idempotency_key)
        .unwrap()
        .expect("a record");
    assert_eq!(record.status, Status::Completed);
    assert_eq!(
        service.balance(&request.to_user).unwrap().to_string(),
        "12.50"
    );
    let again = json(&redis.wallet(&["recover", "--json"]));
    assert_eq!(
        (again["pending_found"].as_u64(), again["finished"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(again["primaries_scanned"], 3);
    let report = json(&redis.wallet(&["audit", "--json"]));
    assert_eq!(report["violations_total"], 0, "{report}");
    assert!(report.get("pending_transfers").is_none(), "{report}");
    assert_eq!(report["currencies"][0]["in_flight"], "0.00", "{report}");

    crash(&redis, Failpoint::AfterCredit, "rc", 1_000);
    let out = redis.wallet(&["audit"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("PENDING transfers (cross-slot"), "{stdout}");
    assert!(
        !stdout.contains("in flight during"),
        "credited already: {stdout}"
    );
}

/// Random transfers between seeded wallets from four "processes" (most of them cross-slot,
/// with overspend races) and deposits: `wallet audit` on the cluster is clean and the total
/// holds; then one wallet's balance edited by hand on its primary fails it, naming the
/// wallet.
#[test]
fn audit_on_a_cluster_is_clean_after_random_load_and_names_a_doctored_balance() {
    let redis = RedisCluster::start(3, 0);
    let out = redis.wallet(&["seed", "--users", "30", "--rng-seed", "7"]);
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<String> = (1..=30).map(|n| format!("user_{n}")).collect();
    let snapshot = json(&redis.wallet(&["snapshot", "--json"]));
    assert_eq!(snapshot.as_array().map(Vec::len), Some(30), "{snapshot}");
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let service = connect(&redis, 5_000);
            let pairs = random_pairs(&ids, t, 60);
            std::thread::spawn(move || load(&service, &pairs, t))
        })
        .collect();
    let cross: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        cross * 2 > 240,
        "most transfers are cross-slot: {cross} of 240"
    );
    let out = redis.wallet(&["audit"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("wallets checked: 30\n"), "{stdout}");
    assert!(stdout.contains("violations: 0\n"), "{stdout}");

    let victim = "user_3";
    let port = redis
        .owner_of(redis.ports()[0], keys::wallet_slot(victim))
        .expect("an owner");
    let service = connect(&redis, 5_000);
    let doctored = Amount::from_minor(service.balance(victim).unwrap().minor() + 100);
    let _: () = redis::cmd("HSET")
        .arg(keys::wallet(victim))
        .arg("balance")
        .arg(doctored.to_string())
        .query(&mut redis.conn(port))
        .expect("doctor the balance");
    let out = redis.wallet(&["audit"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("balance_mismatch") && l.contains(victim)),
        "{stderr}"
    );
}

/// One process's share: its transfers (retried while transient, as the worker would) and a
/// deposit every tenth; returns how many were cross-slot.
fn load(service: &WalletService, pairs: &[(String, String)], t: u64) -> usize {
    let mut cross = 0;
    for (i, (from, to)) in pairs.iter().enumerate() {
        cross += usize::from(keys::wallet_slot(from) != keys::wallet_slot(to));
        let amount = ["1.00", "25.50", "400.00", "3000.00"][i % 4];
        let request = usd(&format!("ld_{t}_{i}"), from, to, amount);
        let done = (0..100).any(|_| match service.transfer(&request) {
            Ok(o) => o.status != Status::Pending,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                false
            }
        });
        assert!(
            done,
            "{}: still transient after 100 tries",
            request.transfer_id
        );
        if i % 10 == 0 {
            service
                .deposit(from, Amount::parse("5.00").unwrap())
                .unwrap();
        }
    }
    cross
}

/// On a single Redis a transfer is never PENDING: `wallet recover` says so and exits 0.
#[test]
fn recover_on_a_single_redis_has_nothing_to_do() {
    let redis = RedisServer::start();
    let out = std::process::Command::new(WALLET_BIN)
        .args(["recover", "--redis-url", &redis.url()])
        .env_remove("REDIS_CLUSTER")
        .output()
        .expect("run wallet");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("single Redis: nothing to recover"),
        "{stdout}"
    );
}

/// `n` (sender, receiver) pairs of distinct wallets, reproducible from `seed`.
fn random_pairs(ids: &[String], seed: u64, n: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a = rng.random_range(0..ids.len());
            let b = (a + rng.random_range(1..ids.len())) % ids.len();
            (ids[a].clone(), ids[b].clone())
        })
        .collect()
}

/// A command started while a primary answers CLUSTERDOWN (as right after `redis-cli --cluster
/// create`, or during a failover) waits for the cluster, says so on stderr, and succeeds once
/// it is ready. The cluster is made to fail on purpose: a primary without a replica is
/// stopped (SIGSTOP) until the others mark it failed, and resumed once `seed` says it waits.
/// (Before, `seed` failed at once with "ClusterDown: The cluster is down".)
#[test]
fn a_command_waits_for_a_cluster_that_is_not_ready_and_says_so() {
    use std::io::{BufRead, BufReader};
    let redis = RedisCluster::start(3, 0);
    let stopped = redis.primary_ports()[0];
    let others: Vec<String> = redis
        .primary_ports()
        .into_iter()
        .filter(|&p| p != stopped)
        .map(|p| redis.addr(p))
        .collect();
    redis.pause(stopped);
    let other = redis.primary_ports()[1];
    wait_until("the others say cluster_state:fail", 20_000, || {
        redis.cluster_state(other).as_deref() == Some("fail")
    });
    let mut seed = crate::support::tied(&mut std::process::Command::new(WALLET_BIN))
        .args(["seed", "--users", "5", "--redis-cluster", &others.join(",")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wallet seed");
    let mut said = Vec::new();
    for line in BufReader::new(seed.stderr.take().expect("stderr")).lines() {
        let line = line.expect("stderr line");
        said.push(line.clone());
        if line.contains("waiting up to") {
            redis.resume(stopped);
        }
    }
    redis.resume(stopped);
    let out = seed.wait_with_output().expect("seed ends");
    let said = said.join("\n");
    assert!(
        out.status.success(),
        "seed failed on a cluster that became ready:\n{said}"
    );
    assert!(
        said.contains("waiting up to") && said.contains("is ready after"),
        "{said}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 created"));
}
