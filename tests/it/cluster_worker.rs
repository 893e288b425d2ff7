//! The worker (the real `wallet worker` binary) on a real Redis Cluster (`support::cluster`)
//! with tansu: random cross-slot load, the recovery sweep, a primary SIGKILLed under load
//! (one replica per primary; with `--wait-replicas 1` asserted, with 0 reported), slots
//! migrated under load, `wallet produce`, and the fault suite's kill loop (the worker SIGKILLed
//! at random moments and restarted, with the fault suite's table row, the cross-shard audit
//! and the ledger topic check of `support::faults`). Each ends by reading every primary with
//! the engine's API: every request has exactly one effect (history entries counted by
//! idempotency key per wallet) and at least one result, money is conserved, no balance is
//! negative, nothing is PENDING.
//!
//! Short by default; `FAULT_SCALE=full` for bigger sizes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::RngExt;
use wallet_transfer::engine::cluster::keys;
use wallet_transfer::engine::lock::LockConfig;
use wallet_transfer::engine::recovery::RECOVER_LIMIT;
use wallet_transfer::engine::service::Failpoint;
use wallet_transfer::tools::results::ReadMessage;
use wallet_transfer::{
    Amount, Currency, EngineConfig, NewWallet, Status, TransferCompleted, TransferRequest,
    WalletService,
};

use crate::support::cluster::RedisCluster;
use crate::support::faults::{
    self as check, FaultReport, check_requests, recorded, rng, seed, size,
};
use crate::support::stack::{Stack, TopicLog, WorkerProcess, results_by_id};
use crate::support::{Tansu, wait_until};

const PARTITIONS: i32 = 4;
/// Time for a run's requests to be answered, failover included.
const ANSWER_TIMEOUT_MS: u64 = 180_000;

fn cluster_stack(replicas_per_primary: usize) -> Stack<RedisCluster> {
    Stack::start_on_cluster(
        RedisCluster::start(3, replicas_per_primary),
        Tansu::start_persistent(),
        PARTITIONS,
    )
}

/// The test's own view of the cluster, with the engine's API (locks short, for the crashes).
pub(crate) fn service(stack: &Stack<RedisCluster>) -> WalletService {
    let config = EngineConfig::default()
        .with_lock(LockConfig::default().with_ttl_ms(1_000))
        .with_history_max_entries(None);
    WalletService::connect_cluster(&stack.redis.seeds(), "redis://", 4, config)
        .expect("connect to the test cluster")
}

/// A run's wallets and requests.
pub(crate) struct Load {
    pub(crate) wallets: Vec<String>,
    pub(crate) requests: Vec<TransferRequest>,
    pub(crate) total: Amount,
}

/// `wallets` wallets of 100.00 and `count` random transfers between them (1 cent to 30.00,
/// so some overspend), both directions on the same wallets.
fn load(service: &WalletService, prefix: &str, wallets: usize, count: usize, test: &str) -> Load {
    let mut rng = rng(seed(test));
    let ids = wallet_ids(prefix, wallets);
    let new: Vec<NewWallet> = ids
        .iter()
        .map(|id| NewWallet::new(id, Amount::parse("100.00").unwrap(), Currency::USD))
        .collect();
    assert_eq!(service.create_wallets(&new).unwrap(), ids.len());
    let requests = (0..count)
        .map(|i| {
            let from = rng.random_range(0..ids.len());
            let to = (from + rng.random_range(1..ids.len())) % ids.len();
            let amount = Amount::from_minor(rng.random_range(1..3_000)).to_string();
            TransferRequest::new(
                &format!("{prefix}t{i}"),
                &ids[from],
                &ids[to],
                &amount,
                Currency::USD,
            )
            .expect("valid request")
        })
        .collect::<Vec<_>>();
    let total = Amount::from_minor(10_000 * wallets as i64);
    let cross = requests
        .iter()
        .filter(|r| keys::wallet_slot(&r.from_user) != keys::wallet_slot(&r.to_user))
        .count();
    println!(
        "{test}: {count} requests over {wallets} wallets, {cross} cross-slot ({:.0}%)",
        100.0 * cross as f64 / count.max(1) as f64
    );
    Load {
        wallets: ids,
        requests,
        total,
    }
}

/// `n` wallet ids in pairs: each odd one in the slot of the one before it, so some transfers
/// are same-slot (one transaction) and most cross-slot.
fn wallet_ids(prefix: &str, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            ids.push(format!("{prefix}w{i}"));
            continue;
        }
        let slot = keys::wallet_slot(&ids[i - 1]);
        let twin = (0..1_000_000)
            .map(|k| format!("{prefix}w{i}_{k}"))
            .find(|id| keys::wallet_slot(id) == slot)
            .expect("an id in the same slot within a million tries");
        ids.push(twin);
    }
    ids
}

/// Reads results until every request has one, or the timeout; returns them by transfer id.
pub(crate) fn wait_results(
    results: &mut TopicLog,
    requests: &[TransferRequest],
    timeout_ms: u64,
) -> HashMap<String, Vec<TransferCompleted>> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let answered = answers(results);
        let all = requests
            .iter()
            .all(|r| answered.contains_key(&r.transfer_id));
        if all || Instant::now() >= deadline {
            return answered;
        }
        results.drain_tolerant(200);
    }
}

/// The results read so far by transfer id; a message that is not a result is left out here
/// (the checker, `faults::check_on`, reports it).
pub(crate) fn answers(results: &TopicLog) -> HashMap<String, Vec<TransferCompleted>> {
    results_by_id(&results.messages, &mut Vec::new())
}

/// What the check over every primary found: the fault suite's per-request checker
/// (`faults::check_requests`: each request against its record, its history entries and its
/// result messages) plus what only the cluster's ledger shows (PENDING records, money).
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) requests: usize,
    pub(crate) completed: usize,
    pub(crate) failed: usize,
    /// Requests without an outcome record.
    pub(crate) lost: usize,
    /// Requests with more history entries than their outcome allows.
    pub(crate) doubled: usize,
    pub(crate) no_result: usize,
    /// The per-request checker's findings besides a missing result: effects that are not the
    /// record's (a debit without its credit, money moved by a FAILED one), a result that
    /// disagrees with the record (status, reason, amount, key), a request answered only as a
    /// duplicate.
    pub(crate) violations: Vec<String>,
    pub(crate) pending: u64,
    pub(crate) negative: usize,
    pub(crate) total_before: i64,
    pub(crate) total_after: i64,
}

impl Verdict {
    /// The counts, and the first per-request violation.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} requests: {} completed, {} failed; lost {}, doubled {}, without result {}, other violations {} (first: {:?}), pending {}, negative {}, money {} -> {} (delta {})",
            self.requests,
            self.completed,
            self.failed,
            self.lost,
            self.doubled,
            self.no_result,
            self.violations.len(),
            self.violations.first(),
            self.pending,
            self.negative,
            Amount::from_minor(self.total_before),
            Amount::from_minor(self.total_after),
            Amount::from_minor(self.total_after - self.total_before)
        )
    }

    pub(crate) fn clean(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.no_result == 0
            && self.violations.is_empty()
            && self.pending == 0
            && self.negative == 0
            && self.total_before == self.total_after
    }
}

/// Checks every request of `load` with the engine's API over every primary: first the
/// recovery sweep (counting what it finds PENDING), then the fault suite's per-request checker
/// against `answered`, then the balances.
pub(crate) fn verdict(
    service: &WalletService,
    load: &Load,
    answered: &HashMap<String, Vec<TransferCompleted>>,
) -> Verdict {
    // The test's own map may predate a failover or a migration.
    let pools = service.cluster().expect("a cluster service");
    pools.refresh().expect("read the slot map again");
    let found = service
        .recover(RECOVER_LIMIT)
        .unwrap_or_else(|e| panic!("scan every primary for PENDING: {e}"));
    // A request without a result is counted in `no_result`, not listed.
    let checked = check_requests(service, &load.requests, answered, false, false);
    let mut v = Verdict {
        requests: load.requests.len(),
        completed: checked.completed.len(),
        failed: checked.failed,
        lost: checked.unrecorded,
        doubled: checked.doubled,
        no_result: checked.unanswered,
        violations: checked.violations,
        pending: found.pending_found,
        total_before: load.total.minor(),
        ..Verdict::default()
    };
    for id in &load.wallets {
        let balance = service.balance(id).expect("balance");
        v.negative += usize::from(balance.is_negative());
        v.total_after += balance.minor();
    }
    v
}

pub(crate) fn print_verdict(test: &str, v: &Verdict) {
    println!("{test}: {}", v.summary());
    for violation in v.violations.iter().take(10) {
        println!("  {test}: violation: {violation}");
    }
}

/// A run without a fault, checked: its verdict, then the fault suite's checker with the
/// verdict's findings (see [`cluster_report`]); panics on any violation, with the worker's log
/// tail.
fn assert_clean(
    stack: &Stack<RedisCluster>,
    service: &WalletService,
    test: &str,
    load: &Load,
    results: &TopicLog,
    worker: &WorkerProcess,
) {
    let v = verdict(service, load, &answers(results));
    print_verdict(test, &v);
    let run = ClusterRun {
        fault: format!("none ({test})"),
        injected: 0,
        recovery: None,
        verdict: v,
    };
    let report = cluster_report(stack, service, test, load, &run, &results.messages);
    if !report.violations.is_empty() {
        println!("{test}: worker log tail:\n{}", tail(&worker.log(), 40));
    }
    report.print_and_assert();
}

/// The worker's retries by cause, those above zero: `redis_cluster 12, replicas_behind 3`.
pub(crate) fn retries(worker: &WorkerProcess) -> String {
    let text = worker.metrics();
    let causes: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("wallet_retries_total{cause=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(_, n)| n.trim() != "0")
        .map(|(cause, n)| format!("{cause} {}", n.trim()))
        .collect();
    if causes.is_empty() {
        "none".to_string()
    } else {
        causes.join(", ")
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn the_worker_on_a_cluster_answers_random_cross_slot_load_once_each() {
    let test = "cluster_worker::load";
    let stack = cluster_stack(0);
    let service = service(&stack);
    let load = load(&service, "cl_", 16, size(300, 3_000), test);
    let worker = stack.spawn_worker(&[]);
    let mut results = stack.reader(&stack.topics.results);
    let started = Instant::now();
    stack.publish_requests(&load.requests);
    wait_results(&mut results, &load.requests, ANSWER_TIMEOUT_MS);
    println!("{test}: answered in {} ms", started.elapsed().as_millis());
    assert_clean(&stack, &service, test, &load, &results, &worker);
    assert_eq!(
        worker.metric("wallet_ready_check{check=\"redis\"}"),
        1.0,
        "the readiness check pings every primary"
    );
    assert!(
        worker.log().contains("connected to 3 primaries"),
        "{}",
        worker.log()
    );
}

/// Leaves `n` cross-slot transfers PENDING, as a worker crashing after step 2 would.
fn crash_after_debit(service: &WalletService, load: &Load, n: usize) -> Vec<TransferRequest> {
    let mut crashing = service.clone();
    crashing.set_failpoint(Some(Failpoint::AfterDebit));
    let left: Vec<TransferRequest> = load
        .requests
        .iter()
        .filter(|r| keys::wallet_slot(&r.from_user) != keys::wallet_slot(&r.to_user))
        .take(n)
        .cloned()
        .collect();
    for r in &left {
        let e = crashing.transfer(r).expect_err("stopped at the failpoint");
        assert!(e.is_transient(), "{e}");
    }
    left
}

#[test]
fn the_recovery_sweep_finishes_transfers_a_crash_left_pending() {
    let test = "cluster_worker::sweep";
    let stack = cluster_stack(0);
    let service = service(&stack);
    let mut load = load(&service, "cs_", 8, 40, test);
    let pending = crash_after_debit(&service, &load, 10);
    // Only the crashed requests: none is delivered to the worker, so only the sweep can
    // finish them.
    load.requests = pending;
    let status = |r: &TransferRequest| {
        service
            .transfer_outcome_of(&r.from_user, &r.idempotency_key)
            .unwrap()
            .map(|o| o.status)
    };
    assert!(
        load.requests
            .iter()
            .all(|r| status(r) == Some(Status::Pending))
    );
    let worker = stack.spawn_worker(&["--recover-interval-ms", "200"]);
    wait_until("the sweep to finish every PENDING transfer", 30_000, || {
        load.requests
            .iter()
            .all(|r| status(r) == Some(Status::Completed))
    });
    assert!(worker.metric("wallet_recover_finished_total") >= load.requests.len() as f64);
    assert!(
        worker.log().contains("recovery sweep: "),
        "{}",
        worker.log()
    );
    // Effects and money, as for requests (their results are never published: no delivery).
    let v = verdict(&service, &load, &HashMap::new());
    print_verdict(test, &v);
    assert_eq!(
        (
            v.completed,
            v.lost,
            v.doubled,
            v.violations.as_slice(),
            v.pending,
            v.negative
        ),
        (load.requests.len(), 0, 0, &[][..], 0, 0),
        "{}",
        v.summary()
    );
    assert_eq!(v.total_before, v.total_after);
}

/// Figures of one failover run.
struct Failover {
    verdict: Verdict,
    /// The fault suite's checker on the run ([`cluster_report`]).
    report: FaultReport,
}

/// Kills the primary that serves the most of the load's wallets once a quarter of the results
/// are in, waits for its replica's promotion, starts the killed node again (it comes back as
/// the new primary's replica, so `WAIT 1` can be met again) and waits for every result.
fn failover_run(test: &str, wait_replicas: &str, prefix: &str) -> (Failover, WorkerProcess) {
    let mut stack = cluster_stack(1);
    let service = service(&stack);
    let load = load(&service, prefix, 16, size(400, 4_000), test);
    let victim = busiest_primary(&stack.redis, &load.wallets);
    let replica = stack
        .redis
        .replica_of(victim)
        .expect("the victim's replica");
    let worker = stack.spawn_worker(&["--wait-replicas", wait_replicas]);
    let mut results = stack.reader(&stack.topics.results);
    let (first, second) = load.requests.split_at(load.requests.len() / 2);
    stack.publish_requests(first);
    results.read_until(load.requests.len() / 4, ANSWER_TIMEOUT_MS);
    let killed = Instant::now();
    stack.redis.kill(victim);
    // The second half runs into the dead primary and the election.
    stack.publish_requests(second);
    stack.redis.wait_for_promotion(replica);
    let promoted_ms = killed.elapsed().as_millis();
    stack.redis.start_again(victim);
    stack.redis.wait_replicas_linked(3);
    let answered = wait_results(&mut results, &load.requests, ANSWER_TIMEOUT_MS);
    let answered_ms = killed.elapsed().as_millis();
    let v = verdict(&service, &load, &answered);
    println!(
        "{test}: primary {victim} killed after {} results; replica {replica} promoted in {promoted_ms} ms; every request answered {answered_ms} ms after the kill; retries: {}",
        load.requests.len() / 4,
        retries(&worker)
    );
    print_verdict(test, &v);
    let run = ClusterRun {
        fault: format!("primary SIGKILL, --wait-replicas {wait_replicas}, cluster"),
        injected: 1,
        recovery: None,
        verdict: v,
    };
    let report = cluster_report(&stack, &service, test, &load, &run, &results.messages);
    let failover = Failover {
        verdict: run.verdict,
        report,
    };
    (failover, worker)
}

/// The primary serving the slots of most of `wallets`.
fn busiest_primary(cluster: &RedisCluster, wallets: &[String]) -> u16 {
    let asked = cluster.primary_ports()[0];
    let mut served: HashMap<u16, usize> = HashMap::new();
    for id in wallets {
        let owner = cluster
            .owner_of(asked, keys::wallet_slot(id))
            .expect("slot owner");
        *served.entry(owner).or_default() += 1;
    }
    served
        .into_iter()
        .max_by_key(|(port, n)| (*n, *port))
        .map(|(port, _)| port)
        .expect("a primary")
}

#[test]
fn a_primary_killed_under_load_with_wait_replicas_1_loses_and_doubles_nothing() {
    let test = "cluster_worker::failover_wait_1";
    let (run, worker) = failover_run(test, "1", "f1_");
    if !run.report.violations.is_empty() {
        println!("{test}: worker log tail:\n{}", tail(&worker.log(), 40));
    }
    run.report.print_and_assert();
}

/// With `--wait-replicas 0` a failover may lose steps that were answered: only what holds
/// whatever Redis loses is asserted (every request answered, the worker up); the rest is
/// reported.
#[test]
fn a_primary_killed_under_load_with_wait_replicas_0_is_reported() {
    let test = "cluster_worker::failover_wait_0";
    let (run, mut worker) = failover_run(test, "0", "f0_");
    let v = &run.verdict;
    assert_eq!(v.no_result, 0, "every request is answered: {}", v.summary());
    assert!(worker.is_running(), "{}", tail(&worker.log(), 40));
    assert!(
        worker
            .log()
            .contains("--wait-replicas 0: a primary failover can lose"),
        "the worker warns at start"
    );
    println!("{}\n{}", FaultReport::header(), run.report.row());
    println!(
        "{test}: {} (not asserted: with --wait-replicas 0 nothing guarantees it)",
        if v.clean() {
            "this run lost and doubled nothing"
        } else {
            "this run broke the invariants above"
        }
    );
}

/// Moves every key of `slot` from `from` to `to` (a migration begun), ten at a time: from
/// then on `from` answers ASK for them.
fn move_keys(cluster: &RedisCluster, slot: u16, from: u16, to: u16) {
    for _ in 0..1_000 {
        let batch: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(10)
            .query(&mut cluster.conn(from))
            .expect("CLUSTER GETKEYSINSLOT");
        if batch.is_empty() {
            return;
        }
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        cluster.migrate_keys(from, to, &refs);
    }
    panic!("slot {slot} still had keys on {from} after 1000 batches");
}

#[test]
fn slots_migrated_under_load_lose_and_double_nothing() {
    let test = "cluster_worker::reshard";
    let stack = cluster_stack(0);
    let service = service(&stack);
    let load = load(&service, "rs_", 16, size(400, 4_000), test);
    let worker = stack.spawn_worker(&[]);
    let mut results = stack.reader(&stack.topics.results);
    let primaries = stack.redis.primary_ports();
    let chunks: Vec<&[TransferRequest]> = load.requests.chunks(load.requests.len() / 12).collect();
    let mut published = 0;
    let mut moved = 0;
    for (i, pair) in chunks.chunks(2).enumerate() {
        let slot = keys::wallet_slot(&load.wallets[i % load.wallets.len()]);
        let asked = primaries[0];
        let from = stack.redis.owner_of(asked, slot).expect("slot owner");
        let to = primaries[(primaries.iter().position(|&p| p == from).unwrap() + 1) % 3];
        // A chunk runs while the slot is MIGRATING and its keys move (TRYAGAIN, ASK), the
        // next one while and after the slot changes hands (MOVED). Keys move at once, as
        // `redis-cli --cluster reshard` does: a transaction over a slot whose keys are split
        // between two nodes gets TRYAGAIN until they are all on one.
        stack.redis.begin_migration(slot, from, to);
        stack.publish_requests(pair[0]);
        published += pair[0].len();
        move_keys(&stack.redis, slot, from, to);
        if let Some(next) = pair.get(1) {
            stack.publish_requests(next);
            published += next.len();
        }
        stack.redis.end_migration(slot, to);
        moved += 1;
        // Keep the load overlapping the next migration without running away from it.
        results.read_until(published.saturating_sub(pair[0].len()), ANSWER_TIMEOUT_MS);
    }
    stack.publish_requests(&load.requests[published..]);
    let during = published;
    wait_results(&mut results, &load.requests, ANSWER_TIMEOUT_MS);
    println!(
        "{test}: {moved} wallets' slots migrated while {} of {} requests were published; retries: {}",
        during,
        load.requests.len(),
        retries(&worker)
    );
    assert_clean(&stack, &service, test, &load, &results, &worker);
}

#[test]
fn produce_runs_its_six_scenarios_against_a_worker_on_a_cluster() {
    let stack = cluster_stack(0);
    let worker = stack.spawn_worker(&[]);
    let out = stack.wallet("produce", &["--timeout", "120"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}\nworker log tail:\n{}",
        tail(&worker.log(), 40)
    );
}

/// The fault suite's kill loop (`faults.rs`, test 1) on a 3-primary cluster: the requests
/// published in `kills + 1` chunks, and while each of the first `kills` is being processed
/// the worker (`flags`) is SIGKILLed at a random moment (after a random 10-90% of the chunk
/// is recorded, plus 0-20 ms) and started again; then the last chunk, every result awaited
/// and the run checked over every primary. Publishing by chunks keeps every kill inside
/// work in flight (a worker in a debug build clears a few hundred requests in about a
/// second). Returns the fault suite's row.
fn kill_loop(test: &str, prefix: &str, flags: &[&str]) -> FaultReport {
    let n = size(600, 5_000);
    let kills = size(3, 6);
    let stack = cluster_stack(0);
    let service = service(&stack);
    let load = load(&service, prefix, 16, n, test);
    let mut rng = rng(seed(&format!("{test} kill points")));
    let mut worker = stack.spawn_worker(flags);
    let mut results = stack.reader(&stack.topics.results);
    let chunks: Vec<&[TransferRequest]> = load.requests.chunks(n.div_ceil(kills + 1)).collect();
    let mut published = 0;
    for chunk in &chunks[..kills] {
        stack.publish_requests(chunk);
        let point = chunk.len() * rng.random_range(10..90) / 100;
        published += chunk.len();
        // Only the chunk is read: each poll is one read per request.
        wait_until(&format!("{point} recorded outcomes"), 300_000, || {
            recorded(&stack, chunk) >= point
        });
        // A random moment: not a synchronisation.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..20)));
        // Restarted until it holds the partitions (see `spawn_worker_assigned`).
        stack.kill_and_restart(&mut worker, flags, || {
            let pending = load
                .requests
                .iter()
                .filter_map(|r| {
                    let o = service.transfer_outcome_of(&r.from_user, &r.idempotency_key);
                    o.expect("outcome record")
                })
                .filter(|o| o.status == Status::Pending)
                .count();
            println!(
                "{test}: killed with {} of {published} published requests recorded, {pending} PENDING",
                recorded(&stack, &load.requests)
            );
        });
    }
    for chunk in &chunks[kills..] {
        stack.publish_requests(chunk);
    }
    let restarted = Instant::now();
    let answered = wait_results(&mut results, &load.requests, ANSWER_TIMEOUT_MS);
    let all = answered.len() == load.requests.len();
    let recovery = (all && recorded(&stack, &load.requests) == n).then(|| restarted.elapsed());
    results.drain_tolerant(1_000);
    let v = verdict(&service, &load, &answers(&results));
    print_verdict(test, &v);
    println!("{test}: retries: {}", retries(&worker));
    let run = ClusterRun {
        fault: "worker SIGKILL + restart, cluster".to_string(),
        injected: kills,
        recovery,
        verdict: v,
    };
    cluster_report(&stack, &service, test, &load, &run, &results.messages)
}

/// What a run on a cluster did (its fault, if any) and found.
pub(crate) struct ClusterRun {
    /// The fault suite's name for the run's fault.
    pub(crate) fault: String,
    /// How many times it was injected (0: none).
    pub(crate) injected: usize,
    pub(crate) recovery: Option<Duration>,
    pub(crate) verdict: Verdict,
}

/// The fault suite's row for a run on a cluster: the one exactly-once checker
/// (`faults::check_on`: every request against its record, its history entries and its result
/// messages, the audit across shards, no lock without a ttl, the ledger topic), plus what only
/// a cluster can leave behind (the verdict: PENDING records, money, every request decided).
pub(crate) fn cluster_report(
    stack: &Stack<RedisCluster>,
    service: &WalletService,
    test: &str,
    load: &Load,
    run: &ClusterRun,
    results: &[ReadMessage],
) -> FaultReport {
    let checked = check::Run {
        fault: &run.fault,
        injected: run.injected,
        requests: &load.requests,
        results,
        recovery: run.recovery,
        no_failures: false,
    };
    let mut report = check::check_on(stack, service, &checked);
    let v = &run.verdict;
    if !(v.clean() && v.completed + v.failed == v.requests) {
        report
            .violations
            .push(format!("{test}: verdict: {}", v.summary()));
    }
    report
}

/// The fault suite's kill loop on a cluster, with the worker's recovery sweep every second
/// (a transfer killed between its steps is also finished by its redelivery).
#[test]
fn the_kill_loop_on_a_cluster_loses_nothing_and_doubles_nothing() {
    let flags = ["--recover-interval-ms", "1000", "--lock-ttl-ms", "2000"];
    kill_loop("cluster_worker::kill_loop", "kl_", &flags).print_and_assert();
}
