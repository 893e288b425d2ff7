//! `wallet bench --direct --redis-cluster` on a real 3-primary cluster, small sizes, not
//! timed: the report accounts for every transfer on each path, Redis's command count per
//! transfer is in the range of the path it measured, and the money is conserved by the
//! engine's own balances of every wallet the run created (found by scanning every primary,
//! not from the report). And `wallet bench --e2e --redis-cluster` against a worker on the
//! cluster: every transfer answered, one outcome record each, money conserved, none PENDING.

use std::process::Command;

use serde_json::Value;
use wallet_transfer::tools::bench::BENCH_OPENING_CENTS;
use wallet_transfer::{Amount, EngineConfig, WalletService};

use crate::support::Tansu;
use crate::support::cluster::RedisCluster;
use crate::support::stack::{Stack, WALLET_BIN};

const TRANSFERS: u64 = 240;
const WALLETS: u64 = 120;
const THREADS: &str = "4";

/// Runs `wallet bench --direct --redis-cluster SEEDS --pairs PAIRS --json` with the test's
/// sizes; the report as JSON.
fn bench(redis: &RedisCluster, pairs: &str) -> Value {
    let out = Command::new(WALLET_BIN)
        .args(["--redis-cluster", &redis.seeds().join(",")])
        .args(["bench", "--direct", "--json", "--pairs", pairs])
        .args(["--threads", THREADS])
        .args(["--transfers", &TRANSFERS.to_string()])
        .args(["--wallets", &WALLETS.to_string()])
        .output()
        .expect("run wallet bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--pairs {pairs}: exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

/// Every key matching `pattern` on every primary, with the primary's port (a small test
/// cluster: KEYS is fine).
fn scan_all(redis: &RedisCluster, pattern: &str) -> Vec<(u16, String)> {
    let mut found = Vec::new();
    for port in redis.primary_ports() {
        let mut conn = redis.conn(port);
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
        found.extend(keys.into_iter().map(|k| (port, k)));
    }
    found
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The report accounts for every transfer: every request answered COMPLETED (the balances
/// are far above the amounts), no error, the paths' requests adding up to the run's, one
/// outcome record per request and two history entries per transfer on the primaries.
fn check_accounted(r: &Value) {
    assert_eq!(count(&r["transfers"]), TRANSFERS, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let answered: u64 = r["outcomes"].as_object().unwrap().values().map(count).sum();
    assert_eq!(answered, TRANSFERS, "{r}");
    assert_eq!(count(&r["outcomes"]["COMPLETED"]), TRANSFERS, "{r}");
    let paths = &r["cluster"]["paths"];
    let by_path =
        count(&paths["same_slot"]["transfers"]) + count(&paths["cross_slot"]["transfers"]);
    assert_eq!(by_path, TRANSFERS, "{r}");
    assert_eq!(count(&r["retained"]["outcome_records"]), TRANSFERS, "{r}");
    assert_eq!(
        count(&r["retained"]["history_entries"]),
        2 * TRANSFERS,
        "{r}"
    );
    assert_eq!(r["balance"]["ok"], true, "{r}");
    let primaries = r["cluster"]["primaries"].as_array().unwrap();
    assert_eq!(primaries.len(), 3, "{r}");
    let commands: u64 = primaries.iter().map(|p| count(&p["commands"])).sum();
    assert_eq!(commands, count(&r["redis"]["commands"]), "{r}");
}

/// Money conserved by the engine's balances: every wallet of the run, found by scanning
/// every primary for `wallet:{<run>_*}`, read through `WalletService::balance`.
fn check_conserved(redis: &RedisCluster, service: &WalletService, r: &Value) {
    let run = r["run"].as_str().unwrap();
    let wallets = scan_all(redis, &format!("wallet:{{{run}_*}}"));
    assert_eq!(wallets.len() as u64, count(&r["wallets"]), "{wallets:?}");
    let mut sum = Amount::ZERO;
    for (_, key) in &wallets {
        let id = key
            .strip_prefix("wallet:{")
            .and_then(|k| k.strip_suffix('}'))
            .unwrap();
        let balance = service.balance(id).unwrap();
        assert!(!balance.is_negative(), "{id}: {balance}");
        sum = sum.checked_add(balance).unwrap();
    }
    let opening = Amount::from_minor(BENCH_OPENING_CENTS * wallets.len() as i64);
    assert_eq!(sum, opening, "run {run}");
    for leftover in ["lock", "credit"] {
        let keys = scan_all(redis, &format!("{leftover}:{{{run}_*}}*"));
        assert!(keys.is_empty(), "{keys:?}");
    }
    let pending = scan_all(redis, &format!("transfer:{{{run}_*}}:*"))
        .into_iter()
        .filter(|(port, key)| {
            let status: Option<String> = redis::cmd("HGET")
                .arg(key)
                .arg("s")
                .query(&mut redis.conn(*port))
                .unwrap();
            status.as_deref() != Some("COMPLETED")
        })
        .count();
    assert_eq!(pending, 0, "run {run}: outcome records not COMPLETED");
}

/// Redis's commands per transfer of a run whose transfers all took one path, and the
/// engine's round trips, against what the path costs (src/engine/cluster_transfer.rs):
/// the key's claim (1 round trip, 1 command), then same-slot 2 round trips and at most 14
/// commands uncontended, cross-slot 6 round trips and 27 commands run (scripts' commands
/// counted); lock waits and WATCH retries add a few.
fn check_path(r: &Value, path: &str, round_trips: (f64, f64), commands: (f64, f64)) {
    let p = &r["cluster"]["paths"][path];
    assert_eq!(count(&p["transfers"]), TRANSFERS, "{r}");
    let rt = p["round_trips_per_transfer"].as_f64().unwrap();
    assert!(
        rt >= round_trips.0 && rt <= round_trips.1,
        "{path}: {rt} round trips\n{r}"
    );
    let c = p["commands_per_transfer"].as_f64().unwrap();
    assert!(
        c >= commands.0 && c <= commands.1,
        "{path}: {c} commands\n{r}"
    );
}

#[test]
fn cluster_bench_accounts_for_every_transfer_on_each_path() {
    let redis = RedisCluster::start(3, 0);
    let service =
        WalletService::connect_cluster(&redis.seeds(), "redis://", 2, EngineConfig::default())
            .expect("connect to the test cluster");
    let same = bench(&redis, "same-slot");
    check_accounted(&same);
    check_path(
        &same,
        "same_slot",
        (1.0 + 2.0, 1.0 + 2.5),
        (1.0 + 14.0, 1.0 + 17.0),
    );
    check_conserved(&redis, &service, &same);
    let cross = bench(&redis, "cross-slot");
    check_accounted(&cross);
    check_path(
        &cross,
        "cross_slot",
        (1.0 + 6.0, 1.0 + 7.0),
        (1.0 + 27.0, 1.0 + 31.0),
    );
    check_conserved(&redis, &service, &cross);
    // Random pairs: two of 120 random ids share a slot about once in 16384 draws, so nearly
    // every transfer takes the cross-slot path, whatever the number of primaries.
    let random = bench(&redis, "random");
    check_accounted(&random);
    assert!(count(&random["cluster"]["paths"]["cross_slot"]["transfers"]) >= TRANSFERS - 2);
    check_conserved(&redis, &service, &random);
    println!(
        "commands/transfer: same-slot {}, cross-slot {}; round trips: {}, {}",
        same["cluster"]["paths"]["same_slot"]["commands_per_transfer"],
        cross["cluster"]["paths"]["cross_slot"]["commands_per_transfer"],
        same["cluster"]["paths"]["same_slot"]["round_trips_per_transfer"],
        cross["cluster"]["paths"]["cross_slot"]["round_trips_per_transfer"],
    );
}

/// `bench --e2e` on a cluster: the worker (`--redis-cluster`) answers every request, the
/// report splits them by path and gives each primary's figures, and the primaries hold one
/// outcome record per request, no PENDING one, and the money the run's wallets opened with.
#[test]
fn e2e_bench_on_a_cluster_accounts_for_every_transfer() {
    let stack = Stack::start_on_cluster(RedisCluster::start(3, 0), Tansu::start_persistent(), 2);
    let worker = stack.spawn_worker(&[]);
    let transfers = 300;
    let out = stack.wallet(
        "bench",
        &[
            "--e2e",
            "--transfers",
            &transfers.to_string(),
            "--wallets",
            "40",
            "--json",
            "--timeout-s",
            "240",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}\nworker log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        worker.log()
    );
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["mode"], "e2e", "{r}");
    assert_eq!(count(&r["transfers"]), transfers, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let answered: u64 = r["outcomes"].as_object().unwrap().values().map(count).sum();
    assert_eq!(answered, transfers, "{r}");
    let paths = &r["cluster"]["paths"];
    let by_path =
        count(&paths["same_slot"]["transfers"]) + count(&paths["cross_slot"]["transfers"]);
    assert_eq!(by_path, transfers, "{r}");
    assert!(
        paths["cross_slot"]["round_trips_per_transfer"].is_null(),
        "{r}"
    );
    let primaries = r["cluster"]["primaries"].as_array().unwrap();
    assert_eq!(primaries.len(), 3, "{r}");
    assert!(count(&r["cluster"]["primaries"][0]["commands"]) > 0, "{r}");
    assert_eq!(r["balance"]["ok"], true, "{r}");
    let run = r["run"].as_str().unwrap();
    let records = scan_all(&stack.redis, &format!("transfer:{{{run}_*}}:{run}_t*"));
    assert_eq!(records.len() as u64, transfers, "run {run}");
    let service = WalletService::connect_cluster(
        &stack.redis.seeds(),
        "redis://",
        2,
        EngineConfig::default(),
    )
    .expect("connect to the test cluster");
    check_conserved(&stack.redis, &service, &r);
    println!(
        "e2e on a cluster: {} transfers/s, {} cross-slot of {transfers}, redis commands/transfer {}",
        r["transfers_per_s"],
        paths["cross_slot"]["transfers"],
        r["cluster"]["commands_per_transfer"]
    );
}
