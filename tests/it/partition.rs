//! A network partition under the worker on a Redis Cluster, tried as a Jepsen test would
//! (issue 20): 3 primaries with a replica each, every node on a loopback address of its own
//! (`support::partition`), the real `wallet worker --redis-cluster ... --wait-replicas N`
//! under `wallet bench --e2e --rate 300`; once the load flows, one primary is cut off with
//! iptables from its replica and every other node (cluster bus and replication; the worker
//! still reaches it) for a while, then healed. The isolated primary keeps serving writes it
//! cannot replicate for about `cluster-node-timeout`, its replica is promoted on the other
//! side, and at the heal the old primary becomes the new one's replica and drops what only it
//! held.
//!
//! Then, once the cluster agrees, the bench has every result and the recovery sweep has
//! finished every PENDING record: the cluster worker suite's checks over every primary (one
//! debit and one credit per idempotency key, every answered COMPLETED with both, money
//! conserved, none PENDING), the cross-shard audit (`ops::audit`, what `wallet audit` runs),
//! lock ttls and the ledger topic; and the bench's own balance check, read after the
//! failover (it follows MOVED).
//!
//! With `--wait-replicas 1` all of it must hold; with 0 the losses are reported, not
//! asserted (docs/operations.md, "Running on a Redis Cluster"). Short by default (one 12 s cut);
//! `FAULT_SCALE=full` (`make fault-test`) cuts for 12, 20 and 30 s, a fresh cluster each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wallet_transfer::tools::bench::{BENCH_OPENING_CENTS, Pairs, run_ids};
use wallet_transfer::{Amount, Currency, TransferCompleted, TransferRequest};

use crate::cluster_worker::{
    ClusterRun, Load, Verdict, answers, cluster_report, print_verdict, retries, service, tail,
    verdict,
};
use crate::support::Tansu;
use crate::support::cluster::{FAILOVER_TIMEOUT_MS, RedisCluster};
use crate::support::faults::{FaultReport, full_scale};
use crate::support::partition::{Partition, Subnet};
use crate::support::stack::{Finished, Stack, TopicLog, WalletProcess};

/// `cluster-node-timeout`: how long the isolated primary keeps serving, and about when its
/// replica is promoted (plus the election).
const NODE_TIMEOUT_MS: u64 = 5_000;
/// The bench's publish rate, requests per second.
const RATE: u64 = 300;
/// Wallets of a bench run (1,000,000.00 each: no transfer fails for funds).
const WALLETS: u32 = 1_000;
/// Seconds of load before the cut (half of it answered before the cut starts) and after the
/// heal.
const LEAD_S: u64 = 4;
const TAIL_S: u64 = 8;
const PARTITIONS: i32 = 4;
/// The bench's own timeout, and how long the test waits for it.
const BENCH_TIMEOUT_S: u64 = 600;
/// How long the recovery sweep may take to finish the PENDING records after the bench.
const DRAIN_TIMEOUT_MS: u64 = 120_000;

/// The cuts of one test, in seconds: each longer than the failover (node timeout plus the
/// election), so the replica is promoted while its old primary still serves.
fn cuts() -> Vec<u64> {
    if full_scale() {
        vec![12, 20, 30]
    } else {
        vec![12]
    }
}

/// One cut and what the checks found.
struct CutRun {
    wait_replicas: String,
    cut: Duration,
    promoted_ms: u128,
    verdict: Verdict,
    report: FaultReport,
    audit_violations: usize,
    bench: Finished,
    /// The bench's balance sums, before and after, when it printed its report.
    bench_balance: Option<(String, String)>,
}

impl CutRun {
    fn money_delta(&self) -> Amount {
        Amount::from_minor(self.verdict.total_after - self.verdict.total_before)
    }

    /// One line for the table in docs/measurements.md.
    fn row(&self) -> String {
        let v = &self.verdict;
        format!(
            "| {} s | {} | {} | {} | {} | {} | {} | {} |",
            self.cut.as_secs(),
            self.wait_replicas,
            v.requests,
            v.lost,
            v.doubled,
            signed(self.money_delta()),
            if self.audit_violations == 0 {
                "clean".to_string()
            } else {
                format!("{} violations", self.audit_violations)
            },
            self.bench
                .code
                .map_or("killed".into(), |c| format!("exit {c}"))
        )
    }
}

/// `+1.00`, `-1.00`, `0.00`.
fn signed(amount: Amount) -> String {
    if amount.minor() > 0 {
        format!("+{amount}")
    } else {
        amount.to_string()
    }
}

const TABLE_HEADER: &str = "| cut | --wait-replicas | requests | lost | doubled | money | audit | bench |\n| --- | --- | --- | --- | --- | --- | --- | --- |";

/// Starts the stack on fresh addresses, runs the bench through one cut of `cut_s` seconds
/// with the worker on `--wait-replicas wait_replicas`, and checks the result.
fn cut_run(test: &str, wait_replicas: &str, cut_s: u64) -> CutRun {
    let subnet = Subnet::take();
    let ips = subnet.ips(6);
    let cluster = RedisCluster::start_on_addresses(3, 1, &ips, NODE_TIMEOUT_MS);
    let stack = Stack::start_on_cluster(cluster, Tansu::start_persistent(), PARTITIONS);
    let service = service(&stack);
    let worker = stack.spawn_worker(&[
        "--wait-replicas",
        wait_replicas,
        "--recover-interval-ms",
        "1000",
    ]);
    let transfers = RATE * (LEAD_S + cut_s + TAIL_S);
    let mut bench = spawn_bench(&stack, transfers);
    let mut results = stack.reader(&stack.topics.results);
    // The load flows: the warm-up and half the lead answered.
    results.read_until((RATE * LEAD_S / 2) as usize, BENCH_TIMEOUT_S * 1_000);
    let cut = cut_off(&stack, &subnet, &ips, Duration::from_secs(cut_s));
    let healed = Instant::now();
    wait_agreement(&stack.redis, cut.victim, cut.replica);
    let finished = bench.wait(BENCH_TIMEOUT_S * 1_000);
    let (load, missing) = bench_load(&mut results, transfers as usize);
    let pending = drain(&stack.redis, &load);
    let recovery = (missing == 0 && pending == 0).then(|| healed.elapsed());
    let mut v = verdict(&service, &load, &answers(&results));
    v.no_result += missing;
    print_verdict(test, &v);
    let run = ClusterRun {
        fault: format!("primary cut off {cut_s} s, --wait-replicas {wait_replicas}"),
        injected: 1,
        recovery,
        verdict: v,
    };
    let report = cluster_report(&stack, &service, test, &load, &run, &results.messages);
    let audit_violations = report
        .violations
        .iter()
        .filter(|v| v.starts_with("audit: "))
        .count();
    println!(
        "{test}: primary {} cut off for {} ms, replica {} promoted after {} ms; {pending} PENDING after the drain; retries: {}",
        cut.victim,
        cut.lasted.as_millis(),
        cut.replica,
        cut.promoted_ms,
        retries(&worker)
    );
    let bench_balance = bench_balance(&finished);
    println!(
        "{test}: bench exit {:?}, balance sums {bench_balance:?}; stderr tail:\n{}",
        finished.code,
        tail(&finished.stderr, 5)
    );
    assert_eq!(subnet.rules(), Vec::<String>::new(), "every rule deleted");
    CutRun {
        wait_replicas: wait_replicas.to_string(),
        cut: cut.lasted,
        promoted_ms: cut.promoted_ms,
        verdict: run.verdict,
        report,
        audit_violations,
        bench: finished,
        bench_balance,
    }
}

/// `wallet bench --e2e --rate RATE` of `transfers` requests against the stack's worker.
fn spawn_bench(stack: &Stack<RedisCluster>, transfers: u64) -> WalletProcess {
    stack.spawn_wallet(
        "bench",
        &[
            "--e2e",
            "--rate",
            &RATE.to_string(),
            "--transfers",
            &transfers.to_string(),
            "--wallets",
            &WALLETS.to_string(),
            "--json",
            "--timeout-s",
            &BENCH_TIMEOUT_S.to_string(),
        ],
    )
}

/// What a cut did.
struct Cut {
    victim: u16,
    replica: u16,
    promoted_ms: u128,
    lasted: Duration,
}

/// Cuts the first primary off from every other node for `cut` (longer when its replica's
/// promotion takes longer: the cut lasts until the other side has a new primary), then heals.
fn cut_off(stack: &Stack<RedisCluster>, subnet: &Subnet, ips: &[String], cut: Duration) -> Cut {
    let redis = &stack.redis;
    let victim = redis.primary_ports()[0];
    let replica = redis.replica_of(victim).expect("the victim's replica");
    let started = Instant::now();
    let partition = Partition::isolate(subnet, redis.ip(victim), ips);
    crate::support::wait_until(
        &format!("the replica on {replica} to be promoted during the cut"),
        cut.as_millis() as u64 + FAILOVER_TIMEOUT_MS,
        || redis.primary_ports().contains(&replica),
    );
    let promoted_ms = started.elapsed().as_millis();
    // The fault's duration, not a synchronisation.
    std::thread::sleep(cut.saturating_sub(started.elapsed()));
    drop(partition);
    Cut {
        victim,
        replica,
        promoted_ms,
        lasted: started.elapsed(),
    }
}

/// Waits until the old primary follows the promoted one, every node says the cluster is ok
/// and the three replicas are linked.
fn wait_agreement(redis: &RedisCluster, victim: u16, replica: u16) {
    crate::support::wait_until(
        &format!("the old primary {victim} to become the replica of {replica}"),
        FAILOVER_TIMEOUT_MS,
        || redis.replica_of(replica) == Some(victim),
    );
    redis.wait_ok(FAILOVER_TIMEOUT_MS);
    redis.wait_replicas_linked(3);
}

/// The bench run's wallets and requests, rebuilt from its results (the run's name is in its
/// warm-up's id, `<run>_warmup`; each result carries its request's fields), and how many of
/// its `transfers` requests (plus the warm-up) have no result.
fn bench_load(results: &mut TopicLog, transfers: usize) -> (Load, usize) {
    results.drain_tolerant(1_000);
    let run = results
        .messages
        .iter()
        .filter_map(|m| m.result().ok())
        .find_map(|r| r.transfer_id.strip_suffix("_warmup").map(str::to_string))
        .expect("the bench's warm-up result");
    let mut requests: HashMap<String, TransferRequest> = HashMap::new();
    for r in results.messages.iter().filter_map(|m| m.result().ok()) {
        if r.transfer_id.starts_with(&format!("{run}_")) {
            requests
                .entry(r.transfer_id.clone())
                .or_insert_with(|| request_of(&r));
        }
    }
    let missing = transfers + 1 - requests.len();
    let wallets = run_ids(&run, WALLETS, Pairs::Random);
    let total = Amount::from_minor(BENCH_OPENING_CENTS * i64::from(WALLETS));
    let mut requests: Vec<TransferRequest> = requests.into_values().collect();
    requests.sort_by(|a, b| a.transfer_id.cmp(&b.transfer_id));
    let load = Load {
        wallets,
        requests,
        total,
    };
    (load, missing)
}

/// The request a result answers.
fn request_of(r: &TransferCompleted) -> TransferRequest {
    assert_eq!(r.currency, "USD", "bench requests are in USD: {r:?}");
    let request = TransferRequest::new(
        &r.transfer_id,
        &r.from_user,
        &r.to_user,
        &r.amount,
        Currency::USD,
    )
    .expect("a result's request is valid");
    if r.idempotency_key == r.transfer_id {
        request
    } else {
        request
            .with_idempotency_key(&r.idempotency_key)
            .expect("a result's key is valid")
    }
}

/// Waits (up to [`DRAIN_TIMEOUT_MS`]) until the worker's recovery sweep has finished every
/// PENDING record of the load's senders; returns how many are left.
fn drain(redis: &RedisCluster, load: &Load) -> usize {
    let deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
    loop {
        let left = pending_records(redis, load);
        if left == Some(0) || Instant::now() >= deadline {
            return left.unwrap_or(usize::MAX);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PENDING outcome records of the load's senders, read on each primary (SCAN, HGET s);
/// `None` while a primary does not answer.
fn pending_records(redis: &RedisCluster, load: &Load) -> Option<usize> {
    let run = load.wallets[0].rsplit_once('_').map(|(run, _)| run)?;
    let pattern = format!("transfer:{{{run}_*}}:*");
    let mut pending = 0;
    for port in redis.primary_ports() {
        let mut conn = redis.try_conn(port).ok()?;
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query(&mut conn)
                .ok()?;
            let mut pipe = redis::pipe();
            for key in &batch {
                pipe.hget(key, "s");
            }
            let states: Vec<Option<String>> = pipe.query(&mut conn).ok()?;
            pending += states
                .iter()
                .filter(|s| s.as_deref() == Some("PENDING"))
                .count();
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Some(pending)
}

/// `sum_before` and `sum_after` of the bench's JSON report, when it printed one.
fn bench_balance(finished: &Finished) -> Option<(String, String)> {
    let line = finished.stdout.lines().rev().find(|l| l.starts_with('{'))?;
    let report: serde_json::Value = serde_json::from_str(line).ok()?;
    let sum = |field: &str| report["balance"][field].as_str().map(str::to_string);
    Some((sum("sum_before")?, sum("sum_after")?))
}

fn print_table(test: &str, runs: &[CutRun]) {
    println!(
        "{test}: {} runs, node timeout {NODE_TIMEOUT_MS} ms, bench --e2e --rate {RATE} --wallets {WALLETS}",
        runs.len()
    );
    println!("{TABLE_HEADER}");
    for run in runs {
        println!("{}", run.row());
    }
}

/// The bench's balance check agrees with the test's sums: it read every wallet after the
/// failover, on the wallet's new primary.
fn assert_bench_saw_the_money(run: &CutRun) {
    let (before, after) = run
        .bench_balance
        .clone()
        .unwrap_or_else(|| panic!("the bench printed no report: {}", run.bench.stderr));
    assert_eq!(
        (before, after),
        (
            Amount::from_minor(run.verdict.total_before).to_string(),
            Amount::from_minor(run.verdict.total_after).to_string()
        ),
        "the bench's balance sums are the test's"
    );
}

#[test]
fn a_primary_cut_off_with_wait_replicas_1_loses_and_doubles_nothing() {
    let test = "partition::wait_1";
    let runs: Vec<CutRun> = cuts().into_iter().map(|s| cut_run(test, "1", s)).collect();
    print_table(test, &runs);
    for run in &runs {
        assert_bench_saw_the_money(run);
        assert!(
            run.promoted_ms < run.cut.as_millis(),
            "the failover happened during the cut"
        );
        run.report.print_and_assert();
        assert_eq!(run.bench.code, Some(0), "{}", run.bench.stderr);
    }
}

/// With `--wait-replicas 0` the isolated primary's writes that no replica copied are lost at
/// the heal although they were answered: reported, not asserted (every request still gets a
/// result, the rules are gone, the bench reads every balance).
#[test]
fn a_primary_cut_off_with_wait_replicas_0_is_reported() {
    let test = "partition::wait_0";
    let runs: Vec<CutRun> = cuts().into_iter().map(|s| cut_run(test, "0", s)).collect();
    print_table(test, &runs);
    for run in &runs {
        assert_bench_saw_the_money(run);
        assert_eq!(run.verdict.no_result, 0, "every request is answered");
        println!(
            "{test}: {} s: lost {}, doubled {}, money {} (not asserted: with --wait-replicas 0 \
             nothing guarantees it)",
            run.cut.as_secs(),
            run.verdict.lost,
            run.verdict.doubled,
            signed(run.money_delta())
        );
    }
}

/// The harness alone, no worker: a cut primary still answers the test (from 127.0.0.1) while
/// its replica is promoted on the other side; at the heal it follows the new primary; the
/// rules are gone after the heal, and after a panic inside a cut.
#[test]
fn a_cut_isolates_a_node_from_the_cluster_only_and_heals() {
    let subnet = Subnet::take();
    let ips = subnet.ips(6);
    let redis = RedisCluster::start_on_addresses(3, 1, &ips, 1_000);
    let victim = redis.primary_ports()[0];
    let replica = redis.replica_of(victim).expect("the victim's replica");
    let partition = Partition::isolate(&subnet, redis.ip(victim), &ips);
    assert_eq!(subnet.rules().len(), 10, "{:?}", subnet.rules());
    crate::support::wait_until("the replica's promotion", FAILOVER_TIMEOUT_MS, || {
        redis.primary_ports().contains(&replica)
    });
    let pong: String = redis::cmd("PING")
        .query(&mut redis.conn(victim))
        .expect("the cut node still answers clients");
    assert_eq!(pong, "PONG");
    drop(partition);
    assert_eq!(subnet.rules(), Vec::<String>::new());
    wait_agreement(&redis, victim, replica);
    println!("a panic inside a cut follows, on purpose");
    let panicked = std::panic::catch_unwind(|| {
        let _cut = Partition::isolate(&subnet, &ips[1], &ips);
        panic!("a test failing inside a cut (on purpose)");
    });
    assert!(panicked.is_err());
    assert_eq!(subnet.rules(), Vec::<String>::new(), "deleted on the panic");
}
