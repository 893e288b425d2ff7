//! Transfers on a real Redis Cluster (3 primaries, `support::cluster`): random load across
//! shards from several "processes" with overspend races, a crash at each failpoint finished
//! by a replay and by `recover`, business failures recorded on the sender's shard, same-slot
//! transfers in one transaction, and a stale slot map (MOVED) during a transfer. After each,
//! the ledger is read from every primary and checked: money conserved, no negative balance,
//! every COMPLETED outcome one debit and one credit, nothing PENDING, no marker, no lock left.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::cluster::{hash_slot, keys};
use wallet_transfer::engine::keyspace::KeySpace;
use wallet_transfer::engine::lock::LockConfig;
use wallet_transfer::engine::recovery::RECOVER_ERRORS_LISTED_LIMIT;
use wallet_transfer::engine::service::Failpoint;
use wallet_transfer::engine::wallet::{HistoryKind, log_entry_fields, parse_history_fields};
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, NewWallet, Status, TransferError,
    TransferOutcome, TransferRequest, WalletService,
};

use crate::support::cluster::RedisCluster;
use crate::support::{create_usd, transfer_retrying, usd};

const POOL_SIZE: u32 = 8;

fn connect(redis: &RedisCluster, config: EngineConfig) -> WalletService {
    WalletService::connect_cluster(&redis.seeds(), "redis://", POOL_SIZE, config)
        .expect("connect to the test cluster")
}

/// Locks that expire soon (a crashed transfer's are left to expire) and patient retries.
fn config() -> EngineConfig {
    EngineConfig::default()
        .with_lock(
            LockConfig::default()
                .with_ttl_ms(1_000)
                .with_retry_delay_ms_base(2)
                .with_retry_delay_ms_max(20)
                .with_retries_max(1_000),
        )
        .with_history_max_entries(None)
}

/// Two wallet ids (`{prefix}_N`) in different slots, or in the same slot.
pub(crate) fn pair(prefix: &str, same_slot: bool) -> (String, String) {
    let a = format!("{prefix}_0");
    let slot = keys::wallet_slot(&a);
    let b = (1..100_000)
        .map(|n| format!("{prefix}_{n}"))
        .find(|b| (keys::wallet_slot(b) == slot) == same_slot)
        .expect("a second id");
    (a, b)
}

/// What the ledger holds, read from every primary.
#[derive(Debug, PartialEq, Eq)]
struct Ledger {
    /// Wallet id -> (balance, opening) in cents.
    wallets: BTreeMap<String, (i64, i64)>,
    /// (wallet, idempotency key, kind code) -> entries.
    entries: HashMap<(String, String, &'static str), u32>,
    /// Outcome key -> (status, sender, receiver, amount in cents).
    outcomes: BTreeMap<String, (String, String, String, i64)>,
    markers: Vec<String>,
    locks: Vec<String>,
}

fn read_ledger(redis: &RedisCluster) -> Ledger {
    let mut ledger = Ledger {
        wallets: BTreeMap::new(),
        entries: HashMap::new(),
        outcomes: BTreeMap::new(),
        markers: redis
            .scan_primaries("credit:{*}:*", Some("string"))
            .into_iter()
            .map(|k| k.1)
            .collect(),
        locks: redis
            .scan_primaries("lock:{*}", Some("string"))
            .into_iter()
            .map(|k| k.1)
            .collect(),
    };
    let cents = |f: &HashMap<String, String>, name: &str| -> i64 {
        let text = f
            .get(name)
            .unwrap_or_else(|| panic!("field {name} in {f:?}"));
        Amount::parse(text)
            .map(|a| a.minor())
            .unwrap_or_else(|_| text.parse().unwrap())
    };
    for (port, key) in redis.scan_primaries("wallet:{*}", Some("hash")) {
        let f: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut redis.conn(port))
            .unwrap();
        let id = key
            .trim_start_matches("wallet:{")
            .trim_end_matches('}')
            .to_string();
        ledger
            .wallets
            .insert(id, (cents(&f, "balance"), cents(&f, "opening_balance")));
    }
    for (port, key) in redis.scan_primaries("wallet:{*}:history", Some("stream")) {
        let id = key
            .trim_start_matches("wallet:{")
            .trim_end_matches("}:history");
        let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut redis.conn(port))
            .unwrap();
        for (stream_id, fields) in raw {
            let e = parse_history_fields(&stream_id, &fields).expect("a readable entry");
            let k = (id.to_string(), e.idempotency_key.unwrap(), e.kind.code());
            *ledger.entries.entry(k).or_default() += 1;
        }
    }
    for (port, key) in redis.scan_primaries("wallet:{*}:log", Some("list")) {
        let id = key.trim_start_matches("wallet:{").trim_end_matches("}:log");
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query(&mut redis.conn(port))
            .unwrap();
        for (n, line) in lines.iter().enumerate() {
            let (_, f) = log_entry_fields(line, n as u64 + 1);
            let key = [&f["k"], &f["t"]]
                .into_iter()
                .find(|k| !k.is_empty())
                .unwrap();
            let kind = HistoryKind::from_code(&f["d"]).expect("a readable line");
            let k = (id.to_string(), key.clone(), kind.code());
            *ledger.entries.entry(k).or_default() += 1;
        }
    }
    for (port, key) in redis.scan_primaries("transfer:{*}:*", Some("hash")) {
        let f: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut redis.conn(port))
            .unwrap();
        let record = (
            f["s"].clone(),
            f["f"].clone(),
            f["t"].clone(),
            f["a"].parse().expect("an amount in cents"),
        );
        ledger.outcomes.insert(key, record);
    }
    ledger
}

/// The invariants; returns what they counted: (completed, failed) outcomes.
fn check_ledger(ledger: &Ledger, wallets: usize, total_cents: i64) -> (usize, usize) {
    assert_eq!(
        ledger.wallets.len(),
        wallets,
        "every wallet found on some primary"
    );
    let sum: i64 = ledger.wallets.values().map(|(b, _)| b).sum();
    assert_eq!(sum, total_cents, "money conserved");
    let opening: i64 = ledger.wallets.values().map(|(_, o)| o).sum();
    assert_eq!(opening, total_cents);
    for (id, (balance, _)) in &ledger.wallets {
        assert!(*balance >= 0, "{id} went negative: {balance}");
    }
    let (mut completed, mut failed) = (0, 0);
    for (key, (status, from, to, _)) in &ledger.outcomes {
        let k = key.split_once("}:").unwrap().1.to_string();
        let count = |w: &str, kind: HistoryKind| {
            ledger
                .entries
                .get(&(w.to_string(), k.clone(), kind.code()))
                .copied()
        };
        let (debits, credits) = (
            count(from, HistoryKind::Debit),
            count(to, HistoryKind::Credit),
        );
        match status.as_str() {
            "COMPLETED" => {
                completed += 1;
                assert_eq!(
                    (debits, credits),
                    (Some(1), Some(1)),
                    "{key}: one debit, one credit"
                );
            }
            "FAILED" => {
                failed += 1;
                assert_eq!((debits, credits), (None, None), "{key}: FAILED moved money");
            }
            other => panic!("{key} left {other}"),
        }
    }
    let moves = ledger.entries.values().map(|n| *n as usize).sum::<usize>();
    assert_eq!(
        moves,
        2 * completed,
        "no history entry without a COMPLETED outcome"
    );
    assert!(
        ledger.markers.is_empty(),
        "markers left: {:?}",
        ledger.markers
    );
    assert!(ledger.locks.is_empty(), "locks left: {:?}", ledger.locks);
    // Each balance is its opening plus its entries.
    let mut net: HashMap<&str, i64> = HashMap::new();
    for (key, (status, from, to, amount)) in &ledger.outcomes {
        if status == "COMPLETED" {
            *net.entry(from).or_default() -= amount;
            *net.entry(to).or_default() += amount;
        }
        let _ = key;
    }
    for (id, (balance, opening)) in &ledger.wallets {
        assert_eq!(
            *balance,
            opening + net.get(id.as_str()).unwrap_or(&0),
            "{id}"
        );
    }
    (completed, failed)
}

/// Random transfers over 300 wallets on 3 primaries from 4 "processes" (each its own
/// service: its own pools and in-process queue), half of them among 6 hot wallets in both
/// directions with amounts that overspend, a tenth between wallets of one slot, a tenth
/// re-sent; one more process crashes
/// transfers at both failpoints while another runs `recover` in a loop. Afterwards, over
/// every primary: money conserved, no negative balance, each COMPLETED outcome exactly one
/// debit and one credit, nothing PENDING, no marker and no lock left.
#[test]
fn random_load_across_shards_moves_money_exactly_once() {
    const WALLETS: usize = 300;
    const THREADS: usize = 4;
    const PER_THREAD: usize = 150;
    let redis = RedisCluster::start(3, 0);
    let base = connect(&redis, config());
    // The last 20 wallets are 10 pairs that share a slot, for same-slot transfers.
    let mut ids: Vec<String> = (0..WALLETS - 20).map(|i| format!("w{i}")).collect();
    for k in 0..10 {
        let (a, b) = pair(&format!("p{k}"), true);
        ids.extend([a, b]);
    }
    let ids = Arc::new(ids);
    create_usd(&base, &ids, "100.00");
    let seed: u64 = rand::random();
    println!("cluster load seed {seed}");
    let done = Arc::new(AtomicBool::new(false));
    let recoverer = {
        let service = connect(&redis, config());
        let done = done.clone();
        std::thread::spawn(move || {
            let mut finished = 0;
            while !done.load(Ordering::SeqCst) {
                finished += service.recover(1_000).expect("recover").finished;
            }
            finished
        })
    };
    let crasher = {
        let mut service = connect(&redis, config());
        let ids = ids.clone();
        std::thread::spawn(move || crash_some(&mut service, &ids, seed))
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let service = connect(&redis, config());
            let ids = ids.clone();
            std::thread::spawn(move || load(&service, &ids, seed + t as u64, t, PER_THREAD))
        })
        .collect();
    let mut cross = 0;
    let mut all = 0;
    for w in workers {
        let (c, n) = w.join().unwrap();
        cross += c;
        all += n;
    }
    let crashed = crasher.join().unwrap();
    done.store(true, Ordering::SeqCst);
    let recovered_while_loaded = recoverer.join().unwrap();
    // Crashed transfers' locks expire in 1 s; the last sweep finishes what is left.
    crate::support::wait_until("the crashed transfers' locks to expire", 30_000, || {
        redis
            .scan_primaries(KeySpace::Cluster.lock_pattern(), Some("string"))
            .is_empty()
    });
    let last = base.recover(1_000).unwrap();
    assert_eq!(last.failed, 0, "{last:?}");
    let ledger = read_ledger(&redis);
    let (completed, failed) = check_ledger(&ledger, WALLETS, WALLETS as i64 * 10_000);
    println!(
        "{all} transfers, {cross} cross-slot ({:.0}%); {completed} COMPLETED, {failed} FAILED outcomes; {crashed} crashed, {recovered_while_loaded} recovered under load, {} by the last sweep",
        100.0 * cross as f64 / all as f64,
        last.finished
    );
    assert!(cross * 2 > all, "most transfers are cross-slot");
    assert!(cross < all, "some are same-slot");
    assert!(failed > 0, "the hot wallets overspent");
    let again = base.recover(1_000).unwrap();
    assert_eq!((again.pending_found, again.finished), (0, 0));
}

/// One process's share of the load; returns (cross-slot, all) requests sent.
fn load(
    service: &WalletService,
    ids: &[String],
    seed: u64,
    thread: usize,
    count: usize,
) -> (usize, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sent: Vec<(TransferRequest, TransferOutcome)> = Vec::new();
    let mut cross = 0;
    for i in 0..count {
        let hot = rng.random_bool(0.5);
        let pick = |rng: &mut rand::rngs::StdRng| match hot {
            true => ids[rng.random_range(0..6)].clone(),
            false => ids[rng.random_range(0..ids.len())].clone(),
        };
        let (from, to) = if rng.random_bool(0.1) {
            // A same-slot pair (the last 20 wallets), either direction.
            let p = ids.len() - 20 + 2 * rng.random_range(0..10);
            let d = usize::from(rng.random_bool(0.5));
            (ids[p + d].clone(), ids[p + 1 - d].clone())
        } else {
            let from = pick(&mut rng);
            let mut to = pick(&mut rng);
            while to == from {
                to = pick(&mut rng);
            }
            (from, to)
        };
        let cents = rng.random_range(1..6_000);
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let request = usd(&format!("t{thread}_{i}"), &from, &to, &amount);
        cross += usize::from(keys::wallet_slot(&from) != keys::wallet_slot(&to));
        let outcome = transfer_retrying(service, &request);
        assert!(!outcome.duplicate);
        assert_ne!(outcome.status, Status::Pending);
        sent.push((request, outcome));
        if rng.random_bool(0.1) {
            let (request, first) = &sent[rng.random_range(0..sent.len())];
            let replay = transfer_retrying(service, request);
            assert!(replay.duplicate);
            assert_eq!(
                (replay.status, replay.reason, replay.to_balance_after),
                (first.status, first.reason, first.to_balance_after)
            );
        }
    }
    (cross, count)
}

/// Cross-slot transfers that stop at a failpoint (alternating), not retried: their PENDING
/// records are left to the recovery. Returns how many crashed.
fn crash_some(service: &mut WalletService, ids: &[String], seed: u64) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xc4a5);
    let mut crashed = 0;
    for i in 0..20 {
        let from = ids[rng.random_range(0..ids.len())].clone();
        let to = ids[rng.random_range(0..ids.len())].clone();
        if keys::wallet_slot(&from) == keys::wallet_slot(&to) {
            continue;
        }
        let point = [Failpoint::AfterDebit, Failpoint::AfterCredit][i % 2];
        service.set_failpoint(Some(point));
        match service.transfer(&usd(&format!("crash_{i}"), &from, &to, "0.01")) {
            Err(e) if e.to_string().contains("failpoint") => crashed += 1,
            Err(e) => assert!(e.is_transient(), "{e}"),
            Ok(o) => assert_ne!(o.status, Status::Pending),
        }
    }
    crashed
}

/// The state a crash at `point` leaves, checked: the record PENDING, the sender debited, the
/// receiver credited only after step 3, no answer given.
fn crash_at(redis: &RedisCluster, point: Failpoint, tag: &str) -> (TransferRequest, Ledger) {
    let mut crashing = connect(redis, config());
    crashing.set_failpoint(Some(point));
    let (from, to) = pair(tag, false);
    create_usd(&crashing, &[from.clone(), to.clone()], "10.00");
    let request = usd(&format!("{tag}_tx"), &from, &to, "2.50");
    let e = crashing
        .transfer(&request)
        .expect_err("the failpoint stops it");
    assert!(
        e.is_transient() && e.to_string().contains("failpoint"),
        "{e}"
    );
    let record = crashing
        .transfer_outcome_of(&from, &request.idempotency_key)
        .unwrap()
        .expect("a record");
    assert_eq!(record.status, Status::Pending);
    assert_eq!(
        crashing.balance(&from).unwrap(),
        Amount::parse("7.50").unwrap()
    );
    let credited = point == Failpoint::AfterCredit;
    let to_balance = if credited { "12.50" } else { "10.00" };
    assert_eq!(
        crashing.balance(&to).unwrap(),
        Amount::parse(to_balance).unwrap()
    );
    let ledger = read_ledger(redis);
    assert_eq!(ledger.markers.len(), usize::from(credited));
    let held = |id: &str| ledger.locks.contains(&keys::lock(id));
    assert!(
        held(&from) && held(&to),
        "a crash leaves its locks to expire"
    );
    assert!(matches!(
        crashing.transfer_outcome(&request.idempotency_key),
        Err(TransferError::WrongMode(_))
    ));
    (request, ledger)
}

/// A crash after step 2 and one after step 3, each finished by the next delivery of its
/// request (once its locks expired): COMPLETED, money moved once; a further replay changes
/// nothing.
#[test]
fn a_replay_finishes_a_transfer_that_crashed_after_the_debit_or_the_credit() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    for (point, tag) in [
        (Failpoint::AfterDebit, "rd"),
        (Failpoint::AfterCredit, "rc"),
    ] {
        let (request, _) = crash_at(&redis, point, tag);
        let outcome = transfer_retrying(&service, &request);
        assert_eq!(outcome.status, Status::Completed, "{point:?}");
        assert_eq!(
            outcome.from_balance_after,
            Some(Amount::parse("7.50").unwrap())
        );
        assert_eq!(
            outcome.to_balance_after,
            Some(Amount::parse("12.50").unwrap())
        );
        let before = read_ledger(&redis);
        let again = transfer_retrying(&service, &request);
        assert_eq!((again.status, again.duplicate), (Status::Completed, true));
        assert_eq!(read_ledger(&redis), before, "a replay moved something");
    }
    let ledger = read_ledger(&redis);
    let (completed, _) = check_ledger(&ledger, 4, 4_000);
    assert_eq!(completed, 2);
}

/// A PENDING transfer finished after its receiver changed (a deposit since the decision)
/// answers the receiver's balance and version after its own credit, as the receiver's history
/// has them, not the decision's: the ledger entries are built from the answer.
#[test]
fn a_pending_transfer_finished_after_its_receiver_changed_answers_the_state_after_its_credit() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    let (request, _) = crash_at(&redis, Failpoint::AfterDebit, "rv");
    service
        .deposit(&request.to_user, Amount::parse("1.00").unwrap())
        .unwrap();
    let outcome = transfer_retrying(&service, &request);
    assert_eq!(outcome.status, Status::Completed);
    let history = service.history(&request.to_user).unwrap();
    let credit = history
        .iter()
        .find(|e| e.transfer_id == request.transfer_id)
        .expect("the credit in the receiver's history");
    let version = outcome
        .to_version_after
        .expect("a version after the credit");
    assert!(
        credit.stream_id.ends_with(&format!("-v{version}")),
        "{} made version {version}?",
        credit.stream_id
    );
    assert_eq!(outcome.to_balance_after, Some(credit.balance_after));
    assert_eq!(credit.balance_after, Amount::parse("13.50").unwrap());
}

/// More PENDING transfers than a run may list errors for, each busy (its sender's lock held
/// by someone else): one run counts them all as failed and lists the first
/// [`RECOVER_ERRORS_LISTED_LIMIT`]. Once the locks are free, a run with a limit finishes that
/// many and says it stopped there; the next finishes the rest and does not.
#[test]
fn recover_counts_busy_records_lists_a_bounded_few_and_stops_at_its_limit() {
    let redis = RedisCluster::start(3, 0);
    let crashed = RECOVER_ERRORS_LISTED_LIMIT + 1;
    let requests: Vec<TransferRequest> = (0..crashed)
        .map(|i| crash_at(&redis, Failpoint::AfterDebit, &format!("rl{i}")).0)
        .collect();
    // Someone else holds every sender's lock, for longer than the test.
    for request in &requests {
        let lock = keys::lock(&request.from_user);
        let port = redis
            .owner_of(redis.primary_ports()[0], hash_slot(lock.as_bytes()))
            .expect("an owner");
        redis::cmd("SET")
            .arg(&lock)
            .arg("someone-else")
            .arg("PX")
            .arg(120_000)
            .query::<()>(&mut redis.conn(port))
            .unwrap();
    }
    let impatient = EngineConfig::default()
        .with_lock(LockConfig::default().with_retries_max(1))
        .with_history_max_entries(None);
    let busy = connect(&redis, impatient).recover(100).unwrap();
    assert_eq!(
        (busy.pending_found, busy.finished, busy.failed),
        (crashed as u64, 0, crashed as u64),
        "{busy:?}"
    );
    assert_eq!(
        busy.errors.len(),
        RECOVER_ERRORS_LISTED_LIMIT,
        "errors listed of {} failed",
        busy.failed
    );
    assert!(busy.errors.iter().all(|e| e.contains("lock")), "{busy:?}");
    assert!(!busy.limit_reached);
    for (port, lock) in redis.scan_primaries(KeySpace::Cluster.lock_pattern(), Some("string")) {
        redis::cmd("DEL")
            .arg(&lock)
            .query::<()>(&mut redis.conn(port))
            .unwrap();
    }
    let service = connect(&redis, config());
    let limit = crashed - 1;
    let first = service.recover(limit).unwrap();
    assert_eq!(
        (
            first.pending_found,
            first.finished,
            first.failed,
            first.limit_reached
        ),
        (limit as u64, limit as u64, 0, true),
        "{first:?}"
    );
    assert_eq!(first.primaries_scanned, 3, "{first:?}");
    let rest = service.recover(limit).unwrap();
    assert_eq!(
        (
            rest.pending_found,
            rest.finished,
            rest.failed,
            rest.limit_reached
        ),
        (1, 1, 0, false),
        "{rest:?}"
    );
    assert_eq!(rest.records_scanned, crashed as u64, "{rest:?}");
    let ledger = read_ledger(&redis);
    let (completed, _) = check_ledger(&ledger, 2 * crashed, 2 * crashed as i64 * 1_000);
    assert_eq!(completed, crashed);
}

/// The same two crashes finished by `recover` (no request needed); a second `recover` finds
/// nothing and changes nothing; the request sent afterwards is answered from its record.
#[test]
fn recover_finishes_crashed_transfers_once() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    let mut requests = Vec::new();
    for (point, tag) in [
        (Failpoint::AfterDebit, "vd"),
        (Failpoint::AfterCredit, "vc"),
    ] {
        requests.push(crash_at(&redis, point, tag).0);
    }
    let started = std::time::Instant::now();
    let report = loop {
        // Until the crashed runs' locks expire, their records are busy (counted, retried).
        let report = service.recover(100).unwrap();
        if report.failed == 0 {
            break report;
        }
        assert!(
            report.errors.iter().all(|e| e.contains("lock")),
            "{report:?}"
        );
        assert!(started.elapsed().as_secs() < 60, "still busy: {report:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        (report.pending_found, report.finished),
        (2, 2),
        "{report:?}"
    );
    let ledger = read_ledger(&redis);
    check_ledger(&ledger, 4, 4_000);
    let second = service.recover(100).unwrap();
    assert_eq!(
        (second.pending_found, second.finished),
        (0, 0),
        "{second:?}"
    );
    assert_eq!(second.records_scanned, 2);
    assert_eq!(
        read_ledger(&redis),
        ledger,
        "a second recover changed something"
    );
    for request in &requests {
        let answer = transfer_retrying(&service, request);
        assert_eq!((answer.status, answer.duplicate), (Status::Completed, true));
    }
    assert_eq!(read_ledger(&redis), ledger);
}

/// Cross-slot business failures are decided from both shards' reads and recorded FAILED in
/// the sender's slot; a replay gets the same answer; nothing moves.
#[test]
fn cross_slot_business_failures_are_recorded_on_the_senders_shard() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    let (from, to) = pair("bf", false);
    create_usd(&service, &[from.clone(), to.clone()], "5.00");
    let (_, missing) = pair("nobody", false);
    let cases = [
        (
            usd("poor", &from, &to, "5.01"),
            FailureReason::InsufficientFunds,
        ),
        (
            usd("lost", &from, &missing, "1.00"),
            FailureReason::WalletNotFound,
        ),
        (
            TransferRequest::new("eur", &from, &to, "1.00", Currency::EUR).unwrap(),
            FailureReason::CurrencyMismatch,
        ),
    ];
    for (request, reason) in &cases {
        let outcome = transfer_retrying(&service, request);
        assert_eq!(
            (outcome.status, outcome.reason),
            (Status::Failed, Some(*reason))
        );
        let replay = transfer_retrying(&service, request);
        assert_eq!((replay.reason, replay.duplicate), (Some(*reason), true));
        let record = service
            .transfer_outcome_of(&from, &request.idempotency_key)
            .unwrap();
        assert_eq!(record.map(|r| r.status), Some(Status::Failed));
    }
    let ledger = read_ledger(&redis);
    assert_eq!(check_ledger(&ledger, 2, 1_000), (0, 3));
}

/// Commands run so far, summed over every primary (`INFO commandstats`, INFO left out).
fn commands(redis: &RedisCluster) -> u64 {
    redis
        .primary_ports()
        .into_iter()
        .map(|port| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut redis.conn(port))
                .unwrap();
            wallet_transfer::tools::bench::parse_command_calls(&info)
        })
        .sum()
}

/// Two wallets of one slot: today's algorithm, one transaction on the slot's primary (two
/// round trips, at most 14 commands, as on one Redis; no marker); a cross-slot one costs six
/// round trips and at most 27 commands (20 sent, 7 more run inside the two scripts). On a
/// cluster each is preceded by the key's claim: one more round trip, one more command.
#[test]
fn same_slot_transfers_stay_one_transaction() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    let (a, b) = pair("ss", true);
    let (c, d) = pair("xs", false);
    create_usd(
        &service,
        &[a.clone(), b.clone(), c.clone(), d.clone()],
        "10.00",
    );
    // Warm the pools, so no connection handshake lands in the counts.
    for (id, from, to) in [("w1", &a, &b), ("w2", &c, &d), ("w3", &d, &c)] {
        service.transfer(&usd(id, from, to, "0.01")).unwrap();
    }
    let before = commands(&redis);
    let same = service.transfer(&usd("same", &a, &b, "1.00")).unwrap();
    let same_commands = commands(&redis) - before;
    assert_eq!(same.status, Status::Completed);
    // The key's claim (`key_claim`) is one round trip and one command before each.
    assert_eq!(same.stats.round_trips, 1 + 2, "{:?}", same.stats);
    assert!(same_commands <= 1 + 14, "{same_commands} commands");
    let before = commands(&redis);
    let cross = service.transfer(&usd("cross", &c, &d, "1.00")).unwrap();
    let cross_commands = commands(&redis) - before;
    assert_eq!(cross.status, Status::Completed);
    assert_eq!(cross.stats.round_trips, 1 + 6, "{:?}", cross.stats);
    assert!(cross_commands <= 1 + 27, "{cross_commands} commands");
    println!(
        "same-slot: {} round trips, {same_commands} commands; cross-slot: {} round trips, {cross_commands} commands",
        same.stats.round_trips, cross.stats.round_trips
    );
    check_ledger(&read_ledger(&redis), 4, 4_000);
}

/// The sender's slot moves to another primary after the service read the map: the first
/// command there answers MOVED, the map is refreshed and the transfer runs again, once.
#[test]
fn a_moved_slot_refreshes_the_map_and_the_transfer_completes_once() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    let (from, to) = pair("mv", false);
    create_usd(&service, &[from.clone(), to.clone()], "10.00");
    let slot = keys::wallet_slot(&from);
    let pools = service.cluster().expect("a cluster service");
    let port = |addr: String| addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
    let owner = port(pools.primary_for_slot(slot).unwrap());
    let target = redis
        .primary_ports()
        .into_iter()
        .find(|p| *p != owner)
        .unwrap();
    redis.begin_migration(slot, owner, target);
    let (wallet, user) = (keys::wallet(&from), keys::user(&from));
    redis.migrate_keys(owner, target, &[wallet.as_str(), user.as_str()]);
    redis.end_migration(slot, target);
    assert_eq!(
        pools.primary_for_slot(slot).map(port),
        Some(owner),
        "the map is stale"
    );
    let outcome = transfer_retrying(&service, &usd("moved", &from, &to, "3.00"));
    assert_eq!(outcome.status, Status::Completed);
    assert_eq!(
        pools.primary_for_slot(slot).map(port),
        Some(target),
        "refreshed"
    );
    assert_eq!(check_ledger(&read_ledger(&redis), 2, 2_000), (1, 0));
}

/// `wait_replicas`: on 3 primaries without replicas no write is acknowledged within the
/// WAIT timeout, so a transfer returns the transient `ReplicasBehind` after its first write,
/// the key's claim, before any money moves; a replay answered from a record (written by a
/// service that does not wait) fails the same way until a replica has it; with one replica
/// per primary every step is acknowledged. (A WAIT that fails after a step was applied:
/// `a_credit_found_done_is_...` and `a_pending_record_is_...` below, replicas paused.)
#[test]
fn wait_replicas_fails_without_an_acknowledgement_and_passes_with_one_replica() {
    let zero = EngineConfig::default().with_wait_replicas(Some(0));
    assert_eq!(zero.validate().unwrap_err().setting, "wait_replicas");
    let waiting = config().with_wait_replicas(Some(1));
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, waiting.clone());
    let (from, to) = pair("wr", false);
    let (a, b) = pair("ws", true);
    // Created without the wait: new wallets wait for the replicas too.
    create_usd(
        &connect(&redis, config()),
        &[from.clone(), to.clone(), a.clone(), b.clone()],
        "10.00",
    );
    let request = usd("wr_tx", &from, &to, "1.00");
    let started = std::time::Instant::now();
    let e = service
        .transfer(&request)
        .expect_err("no replica to acknowledge");
    assert!(
        matches!(
            e,
            TransferError::ReplicasBehind {
                acked: 0,
                wanted: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.is_transient() && e.to_string().contains("retry the request"),
        "{e}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(1_000));
    // The key's claim (`key_claim`) is the first write and waits too: nothing after it ran.
    assert_eq!(service.transfer_outcome_of(&from, "wr_tx").unwrap(), None);
    let same = service.transfer(&usd("ws_tx", &a, &b, "1.00")).unwrap_err();
    assert!(
        matches!(same, TransferError::ReplicasBehind { .. }),
        "{same}"
    );
    assert_eq!(service.transfer_outcome_of(&a, "ws_tx").unwrap(), None);
    for id in [&from, &to, &a, &b] {
        assert_eq!(
            service.balance(id).unwrap(),
            Amount::parse("10.00").unwrap()
        );
    }
    let plain = connect(&redis, config());
    for request in [request.clone(), usd("ws_tx", &a, &b, "1.00")] {
        assert_eq!(
            transfer_retrying(&plain, &request).status,
            Status::Completed
        );
        // A replay finds the record, but no replica has it: it must not be answered.
        let again = service.transfer(&request).unwrap_err();
        assert!(
            matches!(again, TransferError::ReplicasBehind { .. }),
            "a replay answered what no replica has: {again}"
        );
    }
    assert_eq!(check_ledger(&read_ledger(&redis), 4, 4_000), (2, 0));
    drop(redis);

    let redis = RedisCluster::start(3, 1);
    let service = connect(&redis, waiting);
    create_usd(
        &service,
        &[from.clone(), to.clone(), a.clone(), b.clone()],
        "10.00",
    );
    for request in [usd("c", &from, &to, "1.00"), usd("s", &a, &b, "1.00")] {
        assert_eq!(
            service.transfer(&request).unwrap().status,
            Status::Completed
        );
    }
}

/// The `wallet` binary on a cluster: `deposit`, `history` and `audit` take --redis-cluster
/// (the URL gives only the scheme).
#[test]
fn the_wallet_command_deposits_on_a_cluster_and_audits_it() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    create_usd(&service, &["cli_a".to_string()], "10.00");
    let out = redis.wallet(&["deposit", "cli_a", "2.50"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(service.balance("cli_a").unwrap().to_string(), "12.50");
    let out = redis.wallet(&["history", "cli_a", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deposit"),
        "{out:?}"
    );
    // The operator commands run on a cluster too (tests/it/cluster_ops.rs).
    let out = redis.wallet(&["audit"]);
    assert!(out.status.success(), "{out:?}");
}

/// AUTH on a cluster: the template URL's user and password reach every primary's pool, a
/// transfer runs as that user, and a wrong password is refused at connect without being shown.
#[test]
fn a_cluster_with_acl_users_is_reached_with_the_url_s_credentials() {
    let redis = RedisCluster::start(3, 0);
    for port in redis.ports() {
        let mut conn = crate::support::cluster::node_conn(port).unwrap();
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "teller", "on", ">s3cret-pw", "~*", "+@all"])
            .query(&mut conn)
            .unwrap();
        // No way in without credentials from now on.
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "default", "off"])
            .query(&mut conn)
            .unwrap();
    }
    let service = WalletService::connect_cluster(
        &redis.seeds(),
        "redis://teller:s3cret-pw@ignored",
        POOL_SIZE,
        config(),
    )
    .expect("the URL's credentials reach every primary");
    let ids = ["auth_a".to_string(), "auth_b".to_string()];
    create_usd(&service, &ids, "10.00");
    let outcome = transfer_retrying(&service, &usd("auth_tx", &ids[0], &ids[1], "1.00"));
    assert_eq!(outcome.status, Status::Completed);
    let refused =
        WalletService::connect_cluster(&redis.seeds(), "redis://teller:wrong-pw@x", 2, config());
    let e = refused
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(!e.contains("wrong-pw"), "the password is not shown: {e}");
}

/// Two wallet ids whose slots are served by two different primaries (so a WAIT on one
/// primary says nothing of the other).
fn pair_across_primaries(redis: &RedisCluster, prefix: &str) -> (String, String) {
    let primary = |id: &str| redis.owner_of(redis.primary_ports()[0], keys::wallet_slot(id));
    let a = format!("{prefix}_0");
    let b = (1..100_000)
        .map(|n| format!("{prefix}_{n}"))
        .find(|b| primary(b) != primary(&a))
        .expect("a second id on another primary");
    (a, b)
}

/// Wallet ids `{prefix}_N`, one per slot asked for: `n` ids in `n` different slots.
fn ids_in_different_slots(prefix: &str, n: usize) -> Vec<String> {
    let mut slots = std::collections::HashSet::new();
    (0..100_000)
        .map(|i| format!("{prefix}_{i}"))
        .filter(|id| slots.insert(keys::wallet_slot(id)))
        .take(n)
        .collect()
}

/// The same idempotency key from two senders to one receiver, each cross-slot: the first
/// stops right after its credit (its marker written, its record PENDING), the second runs to
/// the end, then the first is finished, once by a replay and once by `recover`. Each
/// transfer credits the receiver once. (With the marker named after the receiver and the key
/// only, the second took the first's marker for a stale one, overwrote it and deleted it at
/// its unlock, and the first was credited a second time when finished: r = 130 of 120.)
#[test]
fn the_same_key_from_two_senders_to_one_receiver_credits_each_transfer_once() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    for (tag, by_recover) in [("kr", false), ("kv", true)] {
        let ids = ids_in_different_slots(tag, 3);
        let (s1, s2, r) = (&ids[0], &ids[1], &ids[2]);
        create_usd(&service, &ids, "100.00");
        let request = |tx: &str, from: &str| {
            usd(tx, from, r, "10.00")
                .with_idempotency_key(&format!("{tag}_shared_key"))
                .expect("a valid key")
        };
        let (first, second) = (request("t1", s1), request("t2", s2));
        let mut crashing = connect(&redis, config());
        crashing.set_failpoint(Some(Failpoint::AfterCredit));
        let e = crashing
            .transfer(&first)
            .expect_err("the failpoint stops it");
        assert!(e.to_string().contains("failpoint"), "{e}");
        assert_eq!(
            service.balance(r).unwrap(),
            Amount::parse("110.00").unwrap()
        );
        // The key rule refuses the second sender (`key_claim`); the marker must hold even
        // when the claim is gone (lost at a failover under `wait_replicas` 0), so it is
        // deleted here and the second transfer runs.
        match service.transfer(&second) {
            Err(TransferError::IdempotencyConflict { original, .. }) => {
                assert_eq!(original.from_user, *s1, "the first request holds the key")
            }
            other => panic!("the second sender's reuse of the key: {other:?}"),
        }
        forget_claim(&redis, &second.idempotency_key);
        let done = transfer_retrying(&service, &second);
        assert_eq!((done.status, done.duplicate), (Status::Completed, false));
        if by_recover {
            let started = std::time::Instant::now();
            let report = loop {
                let report = service.recover(100).unwrap();
                if report.failed == 0 {
                    break report;
                }
                assert!(started.elapsed().as_secs() < 60, "still busy: {report:?}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            };
            assert_eq!(report.finished, 1, "{report:?}");
        }
        forget_claim(&redis, &first.idempotency_key);
        let replay = transfer_retrying(&service, &first);
        assert_eq!(replay.status, Status::Completed);
        for (id, expected) in [(s1, "90.00"), (s2, "90.00"), (r, "120.00")] {
            assert_eq!(
                service.balance(id).unwrap(),
                Amount::parse(expected).unwrap(),
                "{id} after two transfers of 10.00 with one key from two senders ({tag})"
            );
        }
    }
    let ledger = read_ledger(&redis);
    assert!(
        ledger.markers.is_empty(),
        "markers left: {:?}",
        ledger.markers
    );
    assert!(ledger.locks.is_empty(), "locks left: {:?}", ledger.locks);
    let total: i64 = ledger.wallets.values().map(|(b, _)| b).sum();
    assert_eq!(total, 6 * 10_000, "money conserved");
    // Both requests are recorded under one key, which the key rule forbids: the audit says
    // so, and nothing else.
    let report = wallet_transfer::tools::ops::audit(&service).expect("the audit runs");
    let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
    assert_eq!(kinds, ["key_reused", "key_reused"], "{report:?}");
}

/// Deletes the claim of `key` (`key_claim`), as a failover under `wait_replicas` 0 could.
fn forget_claim(redis: &RedisCluster, key: &str) {
    let claim = keys::claim(key);
    let port = redis
        .owner_of(redis.primary_ports()[0], hash_slot(claim.as_bytes()))
        .expect("the claim's primary");
    redis::cmd("DEL")
        .arg(&claim)
        .query::<()>(&mut redis.conn(port))
        .expect("DEL the claim");
}

/// `wait_replicas` on the credit a marker says was done: the receiver's primary has its
/// replica paused, so step 3 is applied but its WAIT fails (`ReplicasBehind`). The retry
/// finds the PENDING record and the marker; it must not answer COMPLETED while no replica
/// has the credit (a failover would lose a credit answered as done), and it answers once the
/// replica is back. (Before, the retry skipped the credit without a WAIT on the receiver's
/// shard and answered COMPLETED at once.)
#[test]
fn a_credit_found_done_is_not_answered_before_the_receivers_replica_has_it() {
    let redis = RedisCluster::start(3, 1);
    let service = connect(&redis, config().with_wait_replicas(Some(1)));
    let (from, to) = pair_across_primaries(&redis, "wc");
    create_usd(&service, &[from.clone(), to.clone()], "10.00");
    let receiver_primary = redis
        .owner_of(redis.primary_ports()[0], keys::wallet_slot(&to))
        .expect("the receiver's primary");
    let replica = redis
        .replica_of(receiver_primary)
        .expect("the receiver's primary has a replica");
    let request = usd("wc_tx", &from, &to, "1.00");
    redis.pause(replica);
    let first = service.transfer(&request);
    let retry = service.transfer(&request);
    redis.resume(replica);
    assert!(
        matches!(first, Err(TransferError::ReplicasBehind { .. })),
        "step 3's WAIT had no replica: {first:?}"
    );
    assert!(
        matches!(retry, Err(TransferError::ReplicasBehind { .. })),
        "the retry answered a credit no replica has: {retry:?}"
    );
    let done = transfer_retrying(&service, &request);
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        service.balance(&to).unwrap(),
        Amount::parse("11.00").unwrap()
    );
    check_ledger(&read_ledger(&redis), 2, 2_000);
}

/// `wait_replicas` on a PENDING record found by a replay: the sender's primary has its
/// replica paused, so step 2 (the debit and the PENDING record) is applied but its WAIT
/// fails. The retry finds the PENDING record; it must not credit the receiver on a debit no
/// replica has (a failover would drop the debit and the record, and the next delivery would
/// debit and credit again: money created). Once the replica is back it finishes, once.
#[test]
fn a_pending_record_is_not_finished_before_the_senders_replica_has_it() {
    let redis = RedisCluster::start(3, 1);
    let service = connect(&redis, config().with_wait_replicas(Some(1)));
    let (from, to) = pair_across_primaries(&redis, "wp");
    create_usd(&service, &[from.clone(), to.clone()], "10.00");
    let sender_primary = redis
        .owner_of(redis.primary_ports()[0], keys::wallet_slot(&from))
        .expect("the sender's primary");
    let replica = redis.replica_of(sender_primary).expect("a replica");
    let request = usd("wp_tx", &from, &to, "1.00");
    redis.pause(replica);
    let first = service.transfer(&request);
    let retry = service.transfer(&request);
    let recovered = service.recover(100);
    let receiver_balance = service.balance(&to);
    redis.resume(replica);
    assert!(
        matches!(first, Err(TransferError::ReplicasBehind { .. })),
        "step 2's WAIT had no replica: {first:?}"
    );
    assert!(
        matches!(retry, Err(TransferError::ReplicasBehind { .. })),
        "the retry finished a PENDING no replica has: {retry:?}"
    );
    assert_eq!(
        receiver_balance.unwrap(),
        Amount::parse("10.00").unwrap(),
        "credited on a debit no replica has"
    );
    let recovered = recovered.expect("recover runs");
    assert_eq!(
        (recovered.finished, recovered.failed),
        (0, 1),
        "the sweep finished a PENDING no replica has: {recovered:?}"
    );
    let done = transfer_retrying(&service, &request);
    assert_eq!(done.status, Status::Completed);
    check_ledger(&read_ledger(&redis), 2, 2_000);
}

/// Sets `field` of wallet `id`'s hash to `value` on its primary, as an operator would.
fn set_wallet_field(redis: &RedisCluster, id: &str, field: &str, value: &str) {
    let key = keys::wallet(id);
    let port = redis
        .owner_of(redis.primary_ports()[0], keys::wallet_slot(id))
        .expect("the wallet's primary");
    redis::cmd("HSET")
        .arg(&key)
        .arg(field)
        .arg(value)
        .query::<()>(&mut redis.conn(port))
        .unwrap();
}

/// The rule for a PENDING transfer whose receiver changed between the decision and the
/// credit (src/engine/cluster_transfer.rs, "PENDING"): it is finished as decided. A
/// receiver frozen since, or one whose balance moved so that the credit passes
/// `BALANCE_LIMIT`, is credited (the sender's money has left; the run logs that it finished
/// past the rule). A receiver deleted since leaves the transfer PENDING with an error that is
/// not transient and says what to do; once the wallet is restored, `recover` finishes it.
#[test]
fn a_pending_transfer_is_finished_as_decided_after_the_receiver_changed() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());

    let (frozen, _) = crash_at(&redis, Failpoint::AfterDebit, "fz");
    set_wallet_field(&redis, &frozen.to_user, "status", "frozen");
    assert_eq!(
        transfer_retrying(&service, &frozen).status,
        Status::Completed
    );
    assert_eq!(
        service.balance(&frozen.to_user).unwrap(),
        Amount::parse("12.50").unwrap()
    );

    let (full, _) = crash_at(&redis, Failpoint::AfterDebit, "lm");
    let near = wallet_transfer::engine::money::BALANCE_LIMIT
        .checked_sub(Amount::parse("1.00").unwrap())
        .unwrap();
    set_wallet_field(&redis, &full.to_user, "balance", &near.to_string());
    assert_eq!(transfer_retrying(&service, &full).status, Status::Completed);
    assert_eq!(
        service.balance(&full.to_user).unwrap(),
        near.checked_add(Amount::parse("2.50").unwrap()).unwrap(),
        "credited as decided, past the limit"
    );

    let (gone, _) = crash_at(&redis, Failpoint::AfterDebit, "dl");
    let receiver = service
        .wallet(&gone.to_user)
        .unwrap()
        .expect("the receiver");
    let port = redis
        .owner_of(redis.primary_ports()[0], keys::wallet_slot(&gone.to_user))
        .unwrap();
    let saved: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::wallet(&gone.to_user))
        .query(&mut redis.conn(port))
        .unwrap();
    redis::cmd("DEL")
        .arg(keys::wallet(&gone.to_user))
        .query::<()>(&mut redis.conn(port))
        .unwrap();
    let e = loop {
        match service.transfer(&gone) {
            Err(e) if e.is_transient() => std::thread::sleep(std::time::Duration::from_millis(50)),
            other => break other.expect_err("no receiver to credit"),
        }
    };
    assert!(e.to_string().contains("restore the wallet"), "{e}");
    let record = service
        .transfer_outcome_of(&gone.from_user, &gone.idempotency_key)
        .unwrap();
    assert_eq!(record.map(|r| r.status), Some(Status::Pending));
    let report = service.recover(100).unwrap();
    assert_eq!((report.finished, report.failed), (0, 1), "{report:?}");
    for (field, value) in &saved {
        set_wallet_field(&redis, &gone.to_user, field, value);
    }
    let report = service.recover(100).unwrap();
    assert_eq!((report.finished, report.failed), (1, 0), "{report:?}");
    assert_eq!(
        service.balance(&gone.to_user).unwrap(),
        receiver.balance.checked_add(gone.amount).unwrap()
    );
}

/// `wallet recover` says when it credits past the receiver-change rule (src/engine/
/// cluster_transfer.rs, "PENDING"): of two crashed transfers, the one whose receiver was
/// closed since is credited as decided and logged with its transfer, its receiver and the
/// status found; the one whose receiver did not change is finished without that warning.
#[test]
fn recover_warns_when_it_credits_a_receiver_that_changed_since_the_decision() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config());
    let (closed, _) = crash_at(&redis, Failpoint::AfterDebit, "cl");
    set_wallet_field(&redis, &closed.to_user, "status", "closed");
    let (unchanged, _) = crash_at(&redis, Failpoint::AfterDebit, "un");
    let out = redis.wallet(&["recover"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("finishing its credit as decided"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for said in [&closed.to_user, &closed.from_user, "status closed", "2.50"] {
        assert!(warnings[0].contains(said), "{said} in {}", warnings[0]);
    }
    for request in [&closed, &unchanged] {
        let record = service
            .transfer_outcome_of(&request.from_user, &request.idempotency_key)
            .unwrap();
        assert_eq!(record.map(|r| r.status), Some(Status::Completed));
        let to = service.balance(&request.to_user).unwrap();
        assert_eq!(to, Amount::parse("12.50").unwrap(), "{}", request.to_user);
    }
}

/// A hook that deposits 1.00 into `to` before each EXEC of a cross-slot run but its first
/// (the debit's; nothing else touches the sender), at most `n` times: the receiver changes
/// between its read and the credit's EXEC, as a deposit (which takes no lock) can.
fn depositing_before_the_credit(
    service: &WalletService,
    to: &str,
    n: usize,
) -> wallet_transfer::engine::service::Hook {
    let (service, to) = (service.clone(), to.to_string());
    let calls = std::sync::atomic::AtomicUsize::new(0);
    Arc::new(move |_key: &str| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        if (1..=n).contains(&call) {
            service
                .deposit(&to, Amount::parse("1.00").unwrap())
                .unwrap();
        }
    })
}

/// A receiver that changes between the locked read and the credit's EXEC aborts the credit:
/// the run reads the receiver again and credits on top of what changed, each abort counted
/// in `watch_retries` and its read and EXEC in `round_trips`. A receiver that keeps changing
/// stops the credit after `watch_retries_max` aborts with a transient error, the record
/// PENDING and nothing credited; a retry finishes it once.
#[test]
fn a_receiver_changed_before_the_credit_is_read_again_and_credited_once() {
    let redis = RedisCluster::start(3, 0);
    let service = connect(&redis, config().with_watch_retries_max(2));
    let (a, b) = pair("rc", false);
    create_usd(&service, &[a.clone(), b.clone()], "100.00");
    let money = |s: &str| Amount::parse(s).unwrap();

    let mut always = service.as_separate_process();
    always.set_before_exec_hook(depositing_before_the_credit(&service, &b, 100));
    let t1 = usd("t1", &a, &b, "10.00");
    match always.transfer(&t1) {
        Err(e @ TransferError::WatchConflicts(3)) => assert!(e.is_transient()),
        other => panic!("want 3 aborted credits (limit 2), got {other:?}"),
    }
    let record = service.transfer_outcome_of(&a, "t1").unwrap().unwrap();
    assert_eq!(record.status, Status::Pending);
    assert_eq!(
        service.balance(&b).unwrap(),
        money("103.00"),
        "3 deposits, no credit"
    );
    let done = transfer_retrying(&service, &t1);
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.to_balance_after, Some(money("113.00")));

    let mut twice = service.as_separate_process();
    twice.set_before_exec_hook(depositing_before_the_credit(&service, &b, 2));
    let done = twice.transfer(&usd("t2", &a, &b, "10.00")).unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.stats.watch_retries, 2);
    // Uncontended: the claim, then 6 (topology.rs, `uncontended_round_trips`); an aborted
    // credit costs its EXEC and the receiver's read again.
    assert_eq!(done.stats.round_trips, 1 + 6 + 2 * 2);
    let receiver = service.wallet(&b).unwrap().unwrap();
    assert_eq!(receiver.balance, money("125.00"), "113 + 2 deposits + 10");
    assert_eq!(done.to_balance_after, Some(receiver.balance));
    assert_eq!(done.to_version_after, Some(receiver.version));
    let mut credits: Vec<String> = service
        .history(&b)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == HistoryKind::Credit)
        .map(|e| e.transfer_id)
        .collect();
    credits.sort();
    assert_eq!(credits, ["t1", "t2"], "each credited once");
    assert_eq!(service.balance(&a).unwrap(), money("80.00"));
    assert!(read_ledger(&redis).locks.is_empty());
    let audit = wallet_transfer::tools::ops::audit(&service).expect("the audit runs");
    assert!(audit.is_ok(), "{:?}", audit.violations);
}

/// Deposits and new wallets are answered only once the configured replicas have them, as
/// transfers are: with the wallet's replica paused, a deposit (and a wallet created in that
/// slot) is written on the primary but refused `ReplicasBehind`, naming what to do (a deposit
/// has no idempotency key: read the history first); with the replica back both pass. (Before,
/// they sent no WAIT: a deposit answered on a primary that then failed over was lost.)
#[test]
fn deposits_and_new_wallets_wait_for_the_replicas_too() {
    let redis = RedisCluster::start(3, 1);
    let waiting = connect(&redis, config().with_wait_replicas(Some(1)));
    let (id, sibling) = pair("dw", true);
    create_usd(&waiting, std::slice::from_ref(&id), "10.00");
    let primary = redis
        .owner_of(redis.primary_ports()[0], keys::wallet_slot(&id))
        .expect("the wallet's primary");
    let replica = redis.replica_of(primary).expect("a replica");
    redis.pause(replica);
    let deposit = waiting.deposit(&id, Amount::parse("1.00").unwrap());
    let created = waiting.create_wallet(&NewWallet::new(&sibling, Amount::ZERO, Currency::USD));
    redis.resume(replica);
    match deposit {
        Err(e @ wallet_transfer::engine::wallet::WalletError::ReplicasBehind { .. }) => {
            assert!(e.to_string().contains("read the wallet's history"), "{e}")
        }
        other => panic!("a deposit no replica has was answered: {other:?}"),
    }
    assert!(
        matches!(
            created,
            Err(wallet_transfer::engine::wallet::WalletError::ReplicasBehind { .. })
        ),
        "a wallet no replica has was answered: {created:?}"
    );
    assert_eq!(
        waiting.balance(&id).unwrap(),
        Amount::parse("11.00").unwrap(),
        "the deposit is on the primary"
    );
    assert_eq!(
        waiting
            .deposit(&id, Amount::parse("1.00").unwrap())
            .unwrap(),
        Amount::parse("12.00").unwrap()
    );
}
