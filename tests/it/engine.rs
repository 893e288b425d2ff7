//! The transfer engine on every topology (`on_every_topology!`: one redis-server, a 3-primary
//! cluster with the wallets in one slot and in a slot each): the original system's cases,
//! races, random load with a full ledger audit, stalled lock holders, locks changing hands,
//! stuck and busy locks, receivers deleted, and a PENDING key reused (cross-slot only). Two
//! tests stay on one topology and say why; crashes and replicas are in `cluster_transfer`.

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use crate::on_every_topology;
use crate::support::topology::{Bed, Topology};
use crate::support::{RedisServer, lock_keys, total, transfer_retrying, usd};
use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::lock::{self, LockConfig};
use wallet_transfer::engine::message::{Decoded, decode};
use wallet_transfer::tools::ops;
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, Status, TransferError, TransferOutcome,
    TransferRequest, WalletService,
};

fn amount(text: &str) -> Amount {
    Amount::parse(text).unwrap()
}

/// Runs every request on its own thread, all released at once; each thread gets its own
/// "process" (no shared in-process queue), so the Redis locks and WATCH do the work.
fn race(service: &WalletService, requests: Vec<TransferRequest>) -> Vec<TransferOutcome> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let threads: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let service = service.as_separate_process();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                transfer_retrying(&service, &r)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Lock settings that let many racing threads wait their turn.
fn patient() -> EngineConfig {
    EngineConfig::default().with_lock(
        LockConfig::default()
            .with_ttl_ms(10_000)
            .with_retry_delay_ms_base(2)
            .with_retry_delay_ms_max(20)
            .with_retries_max(1_000),
    )
}

fn assert_no_locks(redis: &RedisServer) {
    assert_eq!(lock_keys(&mut redis.conn()), Vec::<String>::new());
}

fn a_transfer_moves_the_exact_amount_and_records_it(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("user_1", "5234.50"), ("user_2", "10.00")]);
    let (u1, u2) = (bed.id("user_1"), bed.id("user_2"));

    let outcome = service.transfer(&usd("tx_1", &u1, &u2, "100.55")).unwrap();
    assert_eq!(outcome.status, Status::Completed);
    assert_eq!(outcome.reason, None);
    assert!(!outcome.duplicate);
    assert_eq!(service.balance(&u1).unwrap(), amount("5133.95"));
    assert_eq!(service.balance(&u2).unwrap(), amount("110.55"));
    assert_eq!(outcome.from_balance_after, Some(amount("5133.95")));
    assert_eq!(outcome.to_balance_after, Some(amount("110.55")));

    // The record is in Redis, readable by redis-cli, with no expiry.
    let record_key = bed.keys().outcome(&u1, "tx_1");
    let mut conn = bed.conn_for(&record_key);
    let record: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&record_key)
        .query(&mut conn)
        .unwrap();
    // The compact format (ARCHITECTURE.md, "Redis data model"): short names, cents.
    assert_eq!(record["s"], "COMPLETED");
    assert_eq!(record["a"], "10055");
    let ttl: i64 = redis::cmd("TTL").arg(&record_key).query(&mut conn).unwrap();
    assert_eq!(ttl, -1, "outcome records do not expire by default");
    let wallet_key = bed.keys().wallet(&u1);
    let wallet: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&wallet_key)
        .query(&mut bed.conn_for(&wallet_key))
        .unwrap();
    assert_eq!(wallet["balance"], "5133.95");
    assert_eq!(wallet["version"], "1");
    // The answer carries each wallet's version after the move, as Redis holds it (the ledger
    // entries are built from them).
    let version_of = |id: &str| -> u64 {
        let key = bed.keys().wallet(id);
        redis::cmd("HGET")
            .arg(&key)
            .arg("version")
            .query(&mut bed.conn_for(&key))
            .unwrap()
    };
    assert_eq!(
        (outcome.from_version_after, outcome.to_version_after),
        (Some(version_of(&u1)), Some(version_of(&u2)))
    );

    let history = service.history(&u1).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].transfer_id, "tx_1");
    assert_eq!(history[0].balance_after, amount("5133.95"));
    assert_eq!(
        outcome.stats.round_trips,
        bed.uncontended_round_trips(),
        "uncontended transfer round trips"
    );
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(
    a_transfer_moves_the_exact_amount_and_records_it,
    EngineConfig::default()
);

fn insufficient_funds_leaves_both_balances_and_is_recorded(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "5.00")]);
    let (a, b) = (bed.id("a"), bed.id("b"));

    let request = usd("tx_big", &a, &b, "100.01");
    let outcome = service.transfer(&request).unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.reason, Some(FailureReason::InsufficientFunds));
    assert_eq!(service.balance(&a).unwrap(), amount("100.00"));
    assert_eq!(service.balance(&b).unwrap(), amount("5.00"));
    // A refusal costs what a transfer costs up to its transaction, which records FAILED
    // instead of moving money: in one slot as much as a transfer; across slots the claim,
    // both locks with their reads, and the record, where a transfer has three more steps.
    let round_trips = match bed.topology {
        Topology::ClusterCrossSlot => 1 + 2 + 1,
        Topology::OneRedis | Topology::ClusterSameSlot => bed.uncontended_round_trips(),
    };
    let cost = outcome.stats;
    assert_eq!((cost.lock.attempts, cost.round_trips), (1, round_trips));

    // Money arrives; the replay still gets the recorded answer, not a new attempt.
    service.deposit(&a, amount("1000")).unwrap();
    let replay = service.transfer(&request).unwrap();
    assert!(replay.duplicate);
    assert_eq!(replay.reason, Some(FailureReason::InsufficientFunds));
    assert_eq!(service.balance(&b).unwrap(), amount("5.00"));
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(
    insufficient_funds_leaves_both_balances_and_is_recorded,
    EngineConfig::default()
);

fn same_user_and_unknown_wallets_fail_with_their_reasons(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00")]);
    let (a, ghost) = (bed.id("a"), bed.id("ghost"));

    let same = service.transfer(&usd("tx_s", &a, &a, "1")).unwrap();
    assert_eq!(same.reason, Some(FailureReason::SameUser));
    let unknown = service.transfer(&usd("tx_u", &a, &ghost, "1")).unwrap();
    assert_eq!(unknown.reason, Some(FailureReason::WalletNotFound));
    let unknown = service.transfer(&usd("tx_v", &ghost, &a, "1")).unwrap();
    assert_eq!(unknown.reason, Some(FailureReason::WalletNotFound));
    assert_eq!(service.balance(&a).unwrap(), amount("100.00"));
    assert!(service.wallet(&ghost).unwrap().is_none());
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(
    same_user_and_unknown_wallets_fail_with_their_reasons,
    EngineConfig::default()
);

fn frozen_wallets_and_other_currencies_are_refused(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0"), ("c", "0")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    let frozen_key = bed.keys().wallet(&c);
    redis::cmd("HSET")
        .arg(&frozen_key)
        .arg("status")
        .arg("frozen")
        .query::<()>(&mut bed.conn_for(&frozen_key))
        .unwrap();

    let frozen = service.transfer(&usd("t1", &a, &c, "1")).unwrap();
    assert_eq!(frozen.reason, Some(FailureReason::WalletInactive));
    let euros = TransferRequest::new("t2", &a, &b, "1", Currency::EUR).unwrap();
    let mismatch = service.transfer(&euros).unwrap();
    assert_eq!(mismatch.reason, Some(FailureReason::CurrencyMismatch));
    assert_eq!(service.balance(&a).unwrap(), amount("100.00"));
}
on_every_topology!(
    frozen_wallets_and_other_currencies_are_refused,
    EngineConfig::default()
);

fn the_idempotency_key_defaults_to_the_transfer_id_and_duplicates_move_money_once(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));

    let json =
        format!(r#"{{"transfer_id":"tx_42","from_user":"{a}","to_user":"{b}","amount":"30"}}"#);
    let Ok(Decoded::Request(request)) = decode(json.as_bytes()) else {
        panic!("valid request")
    };
    let first = service.transfer(&request).unwrap();
    assert_eq!(first.status, Status::Completed);
    let recorded = service
        .transfer_outcome_of(&a, "tx_42")
        .unwrap()
        .expect("recorded under tx_42");
    assert_eq!(recorded.transfer_id, "tx_42");

    for _ in 0..3 {
        let again = service.transfer(&request).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.status, Status::Completed);
        assert_eq!(again.processed_at_ms, first.processed_at_ms);
        assert_eq!(again.from_balance_after, first.from_balance_after);
    }
    assert_eq!(service.balance(&a).unwrap(), amount("70.00"));
    assert_eq!(service.balance(&b).unwrap(), amount("30.00"));
    assert_eq!(service.history(&a).unwrap().len(), 1);
}
on_every_topology!(
    the_idempotency_key_defaults_to_the_transfer_id_and_duplicates_move_money_once,
    EngineConfig::default()
);

fn a_key_reused_for_a_different_request_is_refused_and_the_record_kept(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0"), ("c", "0")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));

    let first = usd("t1", &a, &b, "10").with_idempotency_key("k1").unwrap();
    service.transfer(&first).unwrap();
    let record_key = bed.keys().outcome(&a, "k1");
    let mut conn = bed.conn_for(&record_key);
    let before: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&record_key)
        .query(&mut conn)
        .unwrap();

    for other in [
        usd("t2", &a, &b, "11").with_idempotency_key("k1").unwrap(),
        usd("t3", &a, &c, "10").with_idempotency_key("k1").unwrap(),
    ] {
        match service.transfer(&other) {
            Err(e @ TransferError::IdempotencyConflict { .. }) => assert!(!e.is_transient()),
            other => panic!("expected an idempotency conflict, got {other:?}"),
        }
    }
    let after: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&record_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(service.balance(&a).unwrap(), amount("90.00"));
    assert_eq!(service.balance(&c).unwrap(), Amount::ZERO);
}
on_every_topology!(
    a_key_reused_for_a_different_request_is_refused_and_the_record_kept,
    EngineConfig::default()
);

/// Records written before fingerprints were recorded have none: a later request with the key
/// is answered from the record (a duplicate), not refused as a conflict, and nothing moves.
fn a_record_without_a_fingerprint_answers_a_replay_instead_of_a_conflict(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    service.transfer(&usd("t1", &a, &b, "10")).unwrap();
    let record_key = bed.keys().outcome(&a, "t1");
    redis::cmd("HDEL")
        .arg(&record_key)
        .arg("request_hash")
        .arg("h")
        .query::<()>(&mut bed.conn_for(&record_key))
        .unwrap();
    let replay = service.transfer(&usd("t1", &a, &b, "10.00")).unwrap();
    assert!(replay.duplicate);
    assert_eq!(replay.status, Status::Completed);
    assert_eq!(service.balance(&a).unwrap(), amount("90.00"));
    assert_eq!(service.balance(&b).unwrap(), amount("10.00"));
}
on_every_topology!(
    a_record_without_a_fingerprint_answers_a_replay_instead_of_a_conflict,
    EngineConfig::default()
);

/// A redelivery of the message that produced an outcome is answered as the original; another
/// message (or a library call without an origin) with the same key is a duplicate.
fn the_same_origin_is_answered_as_the_original_and_another_is_a_duplicate(bed: &Bed) {
    use wallet_transfer::engine::transfer::Origin;
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let request = usd("t1", &a, &b, "10");
    let origin = |offset| Origin {
        topic: "requests".into(),
        partition: 3,
        offset,
    };
    let first = service.transfer_from(&request, Some(&origin(7))).unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.origin, Some(origin(7)));
    let redelivered = service.transfer_from(&request, Some(&origin(7))).unwrap();
    assert!(!redelivered.duplicate, "the same message again");
    assert_eq!(redelivered.processed_at_ms, first.processed_at_ms);
    assert!(
        service
            .transfer_from(&request, Some(&origin(8)))
            .unwrap()
            .duplicate
    );
    assert!(service.transfer(&request).unwrap().duplicate);
    assert_eq!(service.balance(&a).unwrap(), amount("90.00"));
}
on_every_topology!(
    the_same_origin_is_answered_as_the_original_and_another_is_a_duplicate,
    EngineConfig::default()
);

/// What an uncontended transfer costs Redis, counted by Redis itself (`INFO commandstats`,
/// over every primary): at most 14 commands in 2 round trips in one slot, 27 in 6 across. A
/// replay takes its locks and gives them back.
fn an_uncontended_transfer_costs_at_most_its_topology_s_commands(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    // Warm the pools so no connection handshake (HELLO, CLIENT, PING) lands in the count.
    service.transfer(&usd("warm", &a, &b, "1.00")).unwrap();
    let before = bed.commands_run();
    let outcome = service.transfer(&usd("t1", &a, &b, "1.00")).unwrap();
    let used = bed.commands_run() - before;
    assert_eq!(outcome.status, Status::Completed);
    assert_eq!(outcome.stats.round_trips, bed.uncontended_round_trips());
    assert!(
        used <= bed.uncontended_commands_max(),
        "{used} commands for one uncontended transfer ({:?})",
        bed.topology
    );

    let replay = service.transfer(&usd("t1", &a, &b, "1.00")).unwrap();
    assert!(replay.duplicate);
    assert_eq!(bed.locks(), Vec::<String>::new());
    assert_eq!(service.balance(&b).unwrap(), amount("2.00"));
}
on_every_topology!(
    an_uncontended_transfer_costs_at_most_its_topology_s_commands,
    EngineConfig::default()
);

// One topology: validation runs before any Redis is asked.
#[test]
fn invalid_amounts_and_currencies_are_rejected_before_redis() {
    for (amount, field) in [("0", "amount"), ("-5", "amount"), ("1.234", "amount")] {
        let e = TransferRequest::new("t", "a", "b", amount, Currency::USD).unwrap_err();
        assert_eq!(e.field, field, "{amount}");
    }
    let json = r#"{"transfer_id":"t","from_user":"a","to_user":"b","amount":"1","currency":"XYZ"}"#;
    assert!(
        matches!(decode(json.as_bytes()), Ok(Decoded::Invalid { error, .. }) if error.field == "currency")
    );
}

/// Random transfers among 10 wallets from 8 threads (half of them separate "processes"),
/// some from a wallet to itself: money conserved, one record per request, the audit clean,
/// one history entry per completed transfer a wallet took part in, no lock left.
fn random_load_keeps_the_ledger_exact(bed: &Bed) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 500;
    const WALLETS: usize = 10;
    let service = &bed.service;
    let seed: u64 = rand::random();
    println!("random load seed {seed} ({:?})", bed.topology);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let logical: Vec<String> = (0..WALLETS).map(|i| format!("w{i}")).collect();
    let balances: Vec<String> = (0..WALLETS)
        .map(|_| Amount::from_minor(rng.random_range(0..50_000)).to_string())
        .collect();
    let pairs: Vec<(&str, &str)> = logical
        .iter()
        .zip(&balances)
        .map(|(n, b)| (n.as_str(), b.as_str()))
        .collect();
    bed.create(&pairs);
    let names: Vec<String> = logical.iter().map(|n| bed.id(n)).collect();
    let opening_total = total(service, &names);

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            // Half the threads share a process, half act as separate processes.
            let service = if t % 2 == 0 {
                service.clone()
            } else {
                service.as_separate_process()
            };
            let names = names.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ t as u64);
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for i in 0..PER_THREAD {
                    let from = &names[rng.random_range(0..WALLETS)];
                    // Sometimes the same wallet on both sides: same_user must hold too.
                    let to = &names[rng.random_range(0..WALLETS)];
                    let cents = rng.random_range(1..20_000);
                    let request = usd(
                        &format!("r{t}_{i}"),
                        from,
                        to,
                        &Amount::from_minor(cents).to_string(),
                    );
                    outcomes.push((request.clone(), transfer_retrying(&service, &request)));
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<(TransferRequest, TransferOutcome)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();

    assert_eq!(
        total(service, &names),
        opening_total,
        "money is neither made nor lost"
    );
    let mut completed_per_wallet: HashMap<String, usize> = HashMap::new();
    for (request, outcome) in &outcomes {
        assert!(!outcome.duplicate);
        let recorded = service
            .transfer_outcome_of(&request.from_user, &request.idempotency_key)
            .unwrap()
            .expect("every request has a recorded outcome");
        assert_eq!(recorded.status, outcome.status);
        if outcome.status == Status::Completed {
            *completed_per_wallet
                .entry(request.from_user.clone())
                .or_default() += 1;
            *completed_per_wallet
                .entry(request.to_user.clone())
                .or_default() += 1;
        }
    }
    assert_eq!(
        bed.outcome_records().len(),
        THREADS * PER_THREAD,
        "exactly one record per request"
    );
    // No wallet negative, each balance = opening + history, one version per entry, every
    // COMPLETED record in both histories: the ledger auditor's checks (on a cluster over
    // every primary, the other bed's wallets included).
    let audit = ops::audit(service).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    assert!(audit.wallets_checked >= WALLETS as u64);
    for name in &names {
        assert_eq!(
            service.history(name).unwrap().len(),
            completed_per_wallet.get(name).copied().unwrap_or(0),
            "{name}: one history entry per completed transfer it took part in"
        );
    }
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(random_load_keeps_the_ledger_exact, patient());

fn a_hot_pair_completes_every_transfer(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "1000.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let requests = (0..200)
        .map(|i| usd(&format!("h{i}"), &a, &b, "1.25"))
        .collect();
    let outcomes = race(service, requests);
    assert!(outcomes.iter().all(|o| o.status == Status::Completed));
    assert_eq!(service.balance(&a).unwrap(), amount("750.00"));
    assert_eq!(service.balance(&b).unwrap(), amount("250.00"));
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(a_hot_pair_completes_every_transfer, patient());

fn both_directions_at_once_do_not_deadlock(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "500.00"), ("b", "500.00")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let requests = (0..100)
        .flat_map(|i| {
            [
                usd(&format!("ab{i}"), &a, &b, "2.00"),
                usd(&format!("ba{i}"), &b, &a, "0.50"),
            ]
        })
        .collect();
    let outcomes = race(service, requests);
    assert_eq!(outcomes.len(), 200);
    assert!(outcomes.iter().all(|o| o.status == Status::Completed));
    assert_eq!(service.balance(&a).unwrap(), amount("350.00"));
    assert_eq!(service.balance(&b).unwrap(), amount("650.00"));
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(both_directions_at_once_do_not_deadlock, patient());

fn overspend_races_let_only_what_fits_through(bed: &Bed) {
    let service = &bed.service;
    let mut wallets = vec![("p", "100.00"), ("q", "0"), ("payer", "5234.50")];
    let receivers = ["r1", "r2", "r3", "r4", "r5"];
    wallets.extend(receivers.iter().map(|r| (*r, "0")));
    bed.create(&wallets);
    let (p, q, payer) = (bed.id("p"), bed.id("q"), bed.id("payer"));

    let outcomes = race(
        service,
        ["50.00", "60.00", "70.00"]
            .iter()
            .enumerate()
            .map(|(i, a)| usd(&format!("o{i}"), &p, &q, a))
            .collect(),
    );
    let ok: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status == Status::Completed)
        .collect();
    assert_eq!(ok.len(), 1, "exactly one of 50, 60, 70 fits in 100");
    assert!(
        outcomes
            .iter()
            .filter(|o| o.status == Status::Failed)
            .all(|o| o.reason == Some(FailureReason::InsufficientFunds))
    );
    let spent = ok[0].amount;
    assert_eq!(
        service.balance(&p).unwrap(),
        amount("100.00").checked_sub(spent).unwrap()
    );

    let outcomes = race(
        service,
        receivers
            .iter()
            .enumerate()
            .map(|(i, r)| usd(&format!("f{i}"), &payer, &bed.id(r), "1500.00"))
            .collect(),
    );
    let ok = outcomes
        .iter()
        .filter(|o| o.status == Status::Completed)
        .count();
    assert_eq!(ok, 3);
    assert_eq!(service.balance(&payer).unwrap(), amount("734.50"));
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(overspend_races_let_only_what_fits_through, patient());

/// Lock settings whose lock expires under a stalled holder soon, with retries that wait it out.
fn short_lock() -> EngineConfig {
    EngineConfig::default().with_lock(
        LockConfig::default()
            .with_ttl_ms(300)
            .with_retry_delay_ms_base(20)
            .with_retry_delay_ms_max(50)
            .with_retries_max(200),
    )
}

/// A lost lock is a transient error that names the lock it lost, one of `wallets`' locks as
/// the topology spells them.
fn assert_names_a_lock_of(e: &TransferError, bed: &Bed, wallets: &[&str]) {
    assert!(e.is_transient(), "{e}");
    let TransferError::LockLost(key) = e else {
        panic!("not a lost lock: {e}");
    };
    let locks: Vec<String> = wallets.iter().map(|w| bed.keys().lock(w)).collect();
    assert!(locks.contains(key), "{key} is none of {locks:?}");
}

/// Runs `slow` (a -> b, 80.00 of a's 100.00) on a holder that stalls before its EXEC until
/// `fast` (on a wallet `slow` holds, after its lock expired) has completed; returns what
/// `slow` got. On a cluster across slots the stall is between the locked read and the debit.
fn stall_slow_behind(bed: &Bed, fast: &TransferRequest) -> Result<TransferOutcome, TransferError> {
    let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let mut stalled = bed.service.as_separate_process();
    let first = std::sync::atomic::AtomicBool::new(true);
    stalled.set_before_exec_hook(Arc::new(move |key: &str| {
        // Only before its first EXEC (a cross-slot run has up to three).
        let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        if key == "slow" && first && started_tx.try_send(()).is_ok() {
            // Stall past the lock ttl until the other transfer has completed.
            done_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the other transfer completes while we stall");
        }
    }));
    let slow_request = usd("slow", &bed.id("a"), &bed.id("b"), "80.00");
    let slow = std::thread::spawn(move || stalled.transfer(&slow_request));
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("slow transfer reached EXEC");
    let other = bed.service.as_separate_process();
    let done = other.transfer(fast).unwrap();
    assert_eq!(done.status, Status::Completed);
    // The fast one normally waits out the stalled lock; on a machine so busy that it first
    // asked after the 300 ms ttl it did not have to. That cannot tell anything about the
    // guarantee (the stalled holder must not overwrite, checked by the callers): reported,
    // not failed.
    if done.stats.lock.attempts == 1 {
        println!("the fast transfer found the stalled lock expired already (a busy machine)");
    }
    done_tx.send(()).unwrap();
    slow.join().unwrap()
}

/// The lock expires under a stalled holder and another transfer on the same sender completes;
/// the stalled one must not overwrite it. WATCH on the wallet and lock keys is what stops it.
fn a_stalled_holder_whose_lock_expired_cannot_overwrite(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0"), ("c", "0")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    match stall_slow_behind(bed, &usd("fast", &a, &c, "70.00")) {
        Err(e @ TransferError::LockLost(_)) => assert_names_a_lock_of(&e, bed, &[&a, &b]),
        Ok(o) => assert_eq!(o.reason, Some(FailureReason::InsufficientFunds)),
        Err(other) => panic!("stalled transfer should fail cleanly, got {other}"),
    }
    assert_eq!(service.balance(&a).unwrap(), amount("30.00"));
    assert_eq!(service.balance(&c).unwrap(), amount("70.00"));
    assert_eq!(
        service.balance(&b).unwrap(),
        Amount::ZERO,
        "the stale write never landed"
    );

    // Retried (as the worker does), the request now gets its honest answer.
    let retried = transfer_retrying(service, &usd("slow", &a, &b, "80.00"));
    assert_eq!(retried.reason, Some(FailureReason::InsufficientFunds));
    assert_eq!(service.balance(&a).unwrap(), amount("30.00"));
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(
    a_stalled_holder_whose_lock_expired_cannot_overwrite,
    short_lock()
);

/// The same stall with the other transfer on the receiver (c -> b): across slots nothing on
/// the sender's shard changed but its lock's expiry. No update of b is lost and no money moves
/// twice: the stalled transfer fails cleanly (or is left PENDING) and its retry, then a replay,
/// move its 80.00 exactly once.
fn a_stalled_holder_loses_no_update_of_a_receiver_taken_meanwhile(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0"), ("c", "100.00")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    match stall_slow_behind(bed, &usd("fast", &c, &b, "70.00")) {
        Err(e) => assert!(e.is_transient(), "the stalled transfer: {e}"),
        Ok(o) => panic!("a stalled holder answered {o:?}"),
    }
    assert_eq!(service.balance(&b).unwrap(), amount("70.00"));
    let retried = transfer_retrying(service, &usd("slow", &a, &b, "80.00"));
    assert_eq!(retried.status, Status::Completed);
    let replay = transfer_retrying(service, &usd("slow", &a, &b, "80.00"));
    assert!(replay.duplicate);
    for (id, balance) in [(&a, "20.00"), (&b, "150.00"), (&c, "30.00")] {
        assert_eq!(service.balance(id).unwrap(), amount(balance), "{id}");
    }
    let credits: Vec<String> = service
        .history(&b)
        .unwrap()
        .into_iter()
        .map(|e| e.transfer_id)
        .collect();
    assert_eq!(credits, ["fast", "slow"], "b: one credit per transfer");
    assert_eq!(service.recover(100).unwrap().pending_found, 0);
    assert_audited_and_unlocked(bed);
}
on_every_topology!(
    a_stalled_holder_loses_no_update_of_a_receiver_taken_meanwhile,
    short_lock()
);

/// The lock keys are WATCHed: a lock that expires and changes hands between a holder's WATCHed
/// read and its EXEC (and nothing else changes) makes the EXEC abort, so the transaction's DEL
/// cannot delete the new holder's lock, and the stale holder writes nothing.
fn a_lock_that_changes_hands_before_exec_aborts_it_and_the_new_holders_lock_survives(bed: &Bed) {
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let lock_a = bed.keys().lock(&a);
    let conn = Mutex::new(bed.conn_for(&lock_a));
    let hook_lock = lock_a.clone();
    let mut stalled = bed.service.as_separate_process();
    stalled.set_before_exec_hook(Arc::new(move |_key: &str| {
        // Wait (bounded) for our lock to expire, then take it as another holder would.
        take_once_expired(&mut conn.lock().unwrap(), &hook_lock);
    }));
    match stalled.transfer(&usd("t1", &a, &b, "10.00")) {
        Err(e @ TransferError::LockLost(_)) => assert_names_a_lock_of(&e, bed, &[&a, &b]),
        other => panic!("the stale holder must lose its lock, got {other:?}"),
    }
    let lock: Option<String> = redis::cmd("GET")
        .arg(&lock_a)
        .query(&mut bed.conn_for(&lock_a))
        .unwrap();
    assert_eq!(
        lock.as_deref(),
        Some("the-new-holder"),
        "the new holder's lock survives"
    );
    assert_eq!(
        bed.service.balance(&a).unwrap(),
        amount("100.00"),
        "nothing was written"
    );
    assert!(bed.service.transfer_outcome_of(&a, "t1").unwrap().is_none());
}
on_every_topology!(
    a_lock_that_changes_hands_before_exec_aborts_it_and_the_new_holders_lock_survives,
    EngineConfig::default().with_lock(LockConfig::default().with_ttl_ms(200))
);

/// A before-EXEC hook that touches a watched key (the sender's hash: on every topology the
/// EXEC that writes it) before each of the first `n` EXECs.
fn meddling(bed: &Bed, n: usize) -> wallet_transfer::engine::service::Hook {
    let wallet = bed.keys().wallet(&bed.id("a"));
    let conn = Mutex::new(bed.conn_for(&wallet));
    let left = std::sync::atomic::AtomicUsize::new(n);
    Arc::new(move |_key: &str| {
        let was = left.load(std::sync::atomic::Ordering::SeqCst);
        if was > 0 {
            left.store(was - 1, std::sync::atomic::Ordering::SeqCst);
            redis::cmd("HSET")
                .arg(&wallet)
                .arg("touched")
                .arg(was)
                .query::<()>(&mut *conn.lock().unwrap())
                .unwrap();
        }
    })
}

/// EXEC aborts while a watched key keeps changing: the transfer goes back to its WATCHed read
/// at most `watch_retries_max` times, then gives up with a transient error and writes nothing;
/// with room for the aborts it completes and reports them.
fn watch_conflicts_are_retried_up_to_their_limit_then_reported_as_transient(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let mut always = service.as_separate_process();
    always.set_before_exec_hook(meddling(bed, 100));
    match always.transfer(&usd("t1", &a, &b, "1.00")) {
        Err(e @ TransferError::WatchConflicts(3)) => assert!(e.is_transient()),
        other => panic!("want 3 aborted transactions (limit 2), got {other:?}"),
    }
    assert!(service.transfer_outcome_of(&a, "t1").unwrap().is_none());
    assert_eq!(service.balance(&a).unwrap(), amount("100.00"));
    assert_eq!(bed.locks(), Vec::<String>::new());

    let mut twice = service.as_separate_process();
    twice.set_before_exec_hook(meddling(bed, 2));
    let done = twice.transfer(&usd("t2", &a, &b, "1.00")).unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.stats.watch_retries, 2);
    // An abort costs the read again and an EXEC: one round trip each in one slot; across
    // slots the read is one per shard.
    let per_abort = match bed.topology {
        Topology::ClusterCrossSlot => 3,
        _ => 2,
    };
    assert_eq!(
        done.stats.round_trips,
        bed.uncontended_round_trips() + 2 * per_abort,
        "each abort costs a read and an EXEC"
    );
    let replay = twice.transfer(&usd("t2", &a, &b, "1.00")).unwrap();
    assert!(replay.duplicate);
    assert!(
        replay.stats.round_trips >= 1,
        "a replay reports what it cost"
    );
    assert_eq!(service.balance(&b).unwrap(), amount("1.00"));
}
on_every_topology!(
    watch_conflicts_are_retried_up_to_their_limit_then_reported_as_transient,
    EngineConfig::default().with_watch_retries_max(2)
);

/// Lock settings that give up after one retry.
fn quick_lock(retries_max: u32) -> EngineConfig {
    EngineConfig::default().with_lock(
        LockConfig::default()
            .with_ttl_ms(10_000)
            .with_retries_max(retries_max)
            .with_retry_delay_ms_base(5)
            .with_retry_delay_ms_max(10),
    )
}

/// A lock found without a ttl makes transfers on its wallet fail fast (`lock_stuck`); once the
/// lock has a ttl again (a live holder), the next probe times out as an ordinary lock timeout,
/// and once it is gone the transfer goes through.
fn a_stuck_lock_fails_fast_and_is_probed_until_it_is_an_ordinary_lock_again(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let lock_b = bed.keys().lock(&b);
    let mut conn = bed.conn_for(&lock_b);
    let set = |conn: &mut redis::Connection, ttl_ms: Option<u64>| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&lock_b).arg("someone-else");
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms);
        }
        cmd.query::<()>(conn).unwrap();
    };
    set(&mut conn, None);
    let request = usd("t1", &a, &b, "1.00");
    match service.transfer(&request) {
        Err(TransferError::LockTimeout(lock::LockError::Timeout { no_ttl, .. })) => {
            assert_eq!(no_ttl, std::slice::from_ref(&lock_b));
        }
        other => panic!("the first attempt finds the lock without a ttl: {other:?}"),
    }
    match service.transfer(&request) {
        Err(e @ TransferError::LockStuck(_)) => assert!(e.is_transient()),
        other => panic!("known stuck: fail fast, got {other:?}"),
    }
    // Due for a recheck, still without a ttl: the probe (one attempt) says stuck again.
    std::thread::sleep(Duration::from_millis(lock::STUCK_RECHECK_MS + 50));
    match service.transfer(&request) {
        Err(TransferError::LockStuck(key)) => assert_eq!(key, lock_b),
        other => panic!("the probe finds it still stuck: {other:?}"),
    }
    // A live holder now: the probe after the recheck interval is an ordinary timeout.
    set(&mut conn, Some(60_000));
    std::thread::sleep(Duration::from_millis(lock::STUCK_RECHECK_MS + 50));
    match service.transfer(&request) {
        Err(TransferError::LockTimeout(lock::LockError::Timeout { no_ttl, .. })) => {
            assert!(no_ttl.is_empty());
        }
        other => panic!("a held lock with a ttl times out as usual: {other:?}"),
    }
    redis::cmd("DEL")
        .arg(&lock_b)
        .query::<()>(&mut conn)
        .unwrap();
    assert_eq!(
        service.transfer(&request).unwrap().status,
        Status::Completed
    );
}
on_every_topology!(
    a_stuck_lock_fails_fast_and_is_probed_until_it_is_an_ordinary_lock_again,
    quick_lock(1)
);

fn a_lock_held_by_another_times_out_without_recording_anything(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let lock_b = bed.keys().lock(&b);
    let mut conn = bed.conn_for(&lock_b);
    redis::cmd("SET")
        .arg(&lock_b)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut conn)
        .unwrap();

    let started = std::time::Instant::now();
    let stats = match service.transfer(&usd("t", &a, &b, "1")) {
        Err(e @ TransferError::LockTimeout(lock::LockError::Timeout { stats, .. })) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("after 4 attempts"), "{e}");
            stats
        }
        other => panic!("expected a lock timeout, got {other:?}"),
    };
    // Each attempt takes a's lock, finds b's held and gives a's back; then one last look at
    // the ttls (UNWATCH, PTTL): one round trip per attempt's SETs and one per release on one
    // connection, two SETs apart and one PTTL per lock across slots.
    let attempts = 4;
    let round_trips = match bed.topology {
        Topology::ClusterCrossSlot => attempts * (2 + 1) + 2,
        Topology::OneRedis | Topology::ClusterSameSlot => attempts * (1 + 1) + 1,
    };
    assert_eq!((stats.attempts, stats.round_trips), (attempts, round_trips));
    let waited_us = started.elapsed().as_micros() as u64;
    // The three delays between the attempts are 5, 10 and 10 ms at least.
    assert!(
        stats.wait_us >= 25_000 && stats.wait_us <= waited_us,
        "{stats:?} in {waited_us} us"
    );
    assert!(
        service.transfer_outcome_of(&a, "t").unwrap().is_none(),
        "a timeout is not an outcome"
    );
    assert_eq!(bed.locks(), vec![lock_b.clone()], "a's lock was given back");
    let owner: String = redis::cmd("GET").arg(&lock_b).query(&mut conn).unwrap();
    assert_eq!(owner, "someone-else");
}
on_every_topology!(
    a_lock_held_by_another_times_out_without_recording_anything,
    quick_lock(3)
);

/// Waits (bounded) until `lock` has expired, then takes it as another holder would, for a
/// minute, with the token `the-new-holder`.
fn take_once_expired(conn: &mut redis::Connection, lock: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis::cmd("EXISTS").arg(lock).query::<i64>(conn).unwrap() == 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock never expired"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let taken: Option<String> = redis::cmd("SET")
        .arg(lock)
        .arg("the-new-holder")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query(conn)
        .unwrap();
    assert!(taken.is_some(), "the new holder takes the expired lock");
}

/// A cluster bed with each wallet in a slot of its own, whose locks expire after `ttl_ms` (a
/// crashed or stalled run's are left to expire) and whose lock retries wait for them.
fn cross_slot_bed(cluster: &crate::support::cluster::RedisCluster, ttl_ms: u64) -> Bed<'_> {
    let config = EngineConfig::default().with_lock(
        LockConfig::default()
            .with_ttl_ms(ttl_ms)
            .with_retry_delay_ms_base(10)
            .with_retry_delay_ms_max(50)
            .with_retries_max(200),
    );
    Bed::on_cluster(cluster, false, config)
}

/// The audit finds nothing wrong and no lock is left.
fn assert_audited_and_unlocked(bed: &Bed) {
    let audit = ops::audit(&bed.service).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    assert_eq!(bed.locks(), Vec::<String>::new());
}

/// Deletes `id`'s wallet hash as an operator would (no lock taken); returns its fields.
fn delete_wallet(conn: &mut redis::Connection, wallet_key: &str) -> HashMap<String, String> {
    let saved: HashMap<String, String> = redis::cmd("HGETALL").arg(wallet_key).query(conn).unwrap();
    redis::cmd("DEL").arg(wallet_key).query::<()>(conn).unwrap();
    saved
}

/// A receiver whose wallet was deleted after it took part in a transfer: a transfer to it
/// fails `wallet_not_found`, is recorded FAILED (a replay gets the same answer), moves nothing
/// and leaves no lock.
fn a_transfer_to_a_deleted_receiver_moves_nothing_and_is_recorded(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    assert_eq!(
        service.transfer(&usd("t1", &a, &b, "10")).unwrap().status,
        Status::Completed
    );
    let wallet_b = bed.keys().wallet(&b);
    delete_wallet(&mut bed.conn_for(&wallet_b), &wallet_b);

    let request = usd("t2", &a, &b, "10");
    let gone = service.transfer(&request).unwrap();
    assert_eq!(
        (gone.status, gone.reason, gone.duplicate),
        (Status::Failed, Some(FailureReason::WalletNotFound), false)
    );
    let recorded = service.transfer_outcome_of(&a, "t2").unwrap().unwrap();
    assert_eq!(recorded.reason, Some(FailureReason::WalletNotFound));
    let replay = service.transfer(&request).unwrap();
    assert!(replay.duplicate);
    assert_eq!(replay.reason, Some(FailureReason::WalletNotFound));
    assert_eq!(service.balance(&a).unwrap(), amount("90.00"));
    assert_eq!(service.history(&a).unwrap().len(), 1);
    assert!(service.wallet(&b).unwrap().is_none());
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(
    a_transfer_to_a_deleted_receiver_moves_nothing_and_is_recorded,
    EngineConfig::default()
);

/// The receiver's wallet deleted while a transfer to it waits for its EXEC (an operator's DEL
/// takes no lock). In one slot the EXEC aborts and the transfer is recorded FAILED
/// `wallet_not_found`, nothing moved. Across slots the decision was taken at the read, so the
/// debit goes through and the transfer stays PENDING with an error that is not transient
/// (src/engine/cluster_transfer.rs, "PENDING"); once the wallet is
/// restored, `recover` credits it once. Either way no money is made or lost, nothing stays
/// PENDING after the recovery, and the audit is clean.
fn a_receiver_deleted_before_exec_is_credited_once_or_not_at_all(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let wallet_b = bed.keys().wallet(&b);
    let conn = Mutex::new(bed.conn_for(&wallet_b));
    let saved = Arc::new(Mutex::new(HashMap::new()));
    let (hook_key, hook_saved) = (wallet_b.clone(), saved.clone());
    let mut deleting = service.as_separate_process();
    deleting.set_before_exec_hook(Arc::new(move |_key: &str| {
        let mut saved = hook_saved.lock().unwrap();
        if saved.is_empty() {
            *saved = delete_wallet(&mut conn.lock().unwrap(), &hook_key);
        }
    }));
    let request = usd("t1", &a, &b, "10.00");
    let cross = bed.topology == Topology::ClusterCrossSlot;
    match deleting.transfer(&request) {
        Ok(o) if !cross => assert_eq!(o.reason, Some(FailureReason::WalletNotFound)),
        Err(e) if cross => {
            assert!(
                !e.is_transient() && e.to_string().contains("restore the wallet"),
                "{e}"
            );
            let record = service.transfer_outcome_of(&a, "t1").unwrap().unwrap();
            assert_eq!(record.status, Status::Pending);
        }
        other => panic!("{:?}: {other:?}", bed.topology),
    }
    assert!(service.wallet(&b).unwrap().is_none(), "the hook deleted b");
    let mut conn = bed.conn_for(&wallet_b);
    for (field, value) in saved.lock().unwrap().iter() {
        redis::cmd("HSET")
            .arg(&wallet_b)
            .arg(field)
            .arg(value)
            .query::<()>(&mut conn)
            .unwrap();
    }
    let report = service.recover(100).unwrap();
    assert_eq!(report.finished, u64::from(cross), "{report:?}");
    let replay = transfer_retrying(service, &request);
    assert!(replay.duplicate);
    let (a_after, b_after) = if cross {
        ("90.00", "10.00")
    } else {
        ("100.00", "0.00")
    };
    assert_eq!(service.balance(&a).unwrap(), amount(a_after));
    assert_eq!(service.balance(&b).unwrap(), amount(b_after));
    assert_eq!(service.history(&b).unwrap().len(), usize::from(cross));
    assert_eq!(service.recover(100).unwrap().pending_found, 0);
    assert_audited_and_unlocked(bed);
}
on_every_topology!(
    a_receiver_deleted_before_exec_is_credited_once_or_not_at_all,
    short_lock()
);

// One topology (a cluster, wallets in different slots): only a cross-slot transfer can be
// PENDING.
/// A transfer crashed after its debit (PENDING) and a new request with the same key from the
/// same sender but another body (another amount, another receiver): each is refused
/// `idempotency_conflict` and moves nothing (it does not finish the PENDING one either); the
/// PENDING transfer is then finished once by its own replay, and a second replay and the
/// recovery change nothing.
#[test]
fn a_new_request_reusing_a_pending_key_moves_nothing_and_the_pending_one_finishes_once() {
    use crate::support::cluster::RedisCluster;
    use wallet_transfer::engine::service::Failpoint;
    let cluster = RedisCluster::start(3, 0);
    let bed = cross_slot_bed(&cluster, 500);
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "100.00"), ("c", "100.00")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    let with_key = |r: TransferRequest| r.with_idempotency_key("k1").unwrap();
    let original = with_key(usd("t1", &a, &b, "10.00"));
    let mut crashing = service.as_separate_process();
    crashing.set_failpoint(Some(Failpoint::AfterDebit));
    let e = crashing
        .transfer(&original)
        .expect_err("the failpoint stops it");
    assert!(e.to_string().contains("failpoint"), "{e}");

    for request in [
        with_key(usd("t2", &a, &b, "11.00")),
        with_key(usd("t3", &a, &c, "10.00")),
    ] {
        // The crashed run's locks expire by their ttl; the lock retries wait for them.
        match service.transfer(&request) {
            Err(e @ TransferError::IdempotencyConflict { .. }) => assert!(!e.is_transient()),
            other => panic!(
                "{}: expected an idempotency conflict, got {other:?}",
                request.transfer_id
            ),
        }
        let record = service.transfer_outcome_of(&a, "k1").unwrap().unwrap();
        assert_eq!(
            record.status,
            Status::Pending,
            "the new request finished it"
        );
        for (id, balance) in [(&a, "90.00"), (&b, "100.00"), (&c, "100.00")] {
            assert_eq!(service.balance(id).unwrap(), amount(balance), "{id}");
        }
    }
    let done = transfer_retrying(service, &original);
    assert_eq!(done.status, Status::Completed);
    let replay = transfer_retrying(service, &original);
    assert!(replay.duplicate);
    assert_eq!(service.recover(100).unwrap().pending_found, 0);
    for (id, balance) in [(&a, "90.00"), (&b, "110.00"), (&c, "100.00")] {
        assert_eq!(service.balance(id).unwrap(), amount(balance), "{id}");
    }
    assert_eq!(service.history(&b).unwrap().len(), 1, "b credited once");
    assert_audited_and_unlocked(&bed);
}

/// The same reuse after the key's claim was lost (as at a failover with `wait_replicas` 0):
/// the new request now takes the claim and gets as far as the PENDING record, which must
/// still refuse it as a conflict and leave the PENDING transfer alone for its own request or
/// the recovery; the recovery then finishes it once. Cross-slot only, like the test above.
#[test]
fn a_pending_transfer_whose_key_claim_was_lost_is_left_to_the_recovery_not_to_another_request() {
    use crate::support::cluster::RedisCluster;
    use wallet_transfer::engine::cluster::keys;
    use wallet_transfer::engine::service::Failpoint;
    let cluster = RedisCluster::start(3, 0);
    let bed = cross_slot_bed(&cluster, 500);
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "100.00")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let with_key = |r: TransferRequest| r.with_idempotency_key("k1").unwrap();
    let mut crashing = service.as_separate_process();
    crashing.set_failpoint(Some(Failpoint::AfterDebit));
    let e = crashing
        .transfer(&with_key(usd("t1", &a, &b, "10.00")))
        .expect_err("the failpoint stops it");
    assert!(e.to_string().contains("failpoint"), "{e}");
    let claim = keys::claim("k1");
    let deleted: i64 = redis::cmd("DEL")
        .arg(&claim)
        .query(&mut bed.conn_for(&claim))
        .unwrap();
    assert_eq!(deleted, 1, "the claim was there to lose");

    match service.transfer(&with_key(usd("t2", &a, &b, "11.00"))) {
        Err(TransferError::IdempotencyConflict { .. }) => {}
        other => panic!("expected an idempotency conflict, got {other:?}"),
    }
    let record = service.transfer_outcome_of(&a, "k1").unwrap().unwrap();
    assert_eq!(
        record.status,
        Status::Pending,
        "another request finished it"
    );
    assert_eq!(service.balance(&b).unwrap(), amount("100.00"));
    let report = service.recover(100).unwrap();
    assert_eq!(
        (report.pending_found, report.finished),
        (1, 1),
        "{report:?}"
    );
    for (id, balance) in [(&a, "90.00"), (&b, "110.00")] {
        assert_eq!(service.balance(id).unwrap(), amount(balance), "{id}");
    }
    assert_audited_and_unlocked(&bed);
}

/// A cross-slot run whose sender's lock is lost between the credit and the completion (its
/// ttl ran out and another holder took it): the completion's script finds the lock not its
/// own and changes nothing, so the run must fail `lock_lost` and leave the record PENDING
/// with its credit marker; the next run then completes it without crediting again. (Taking
/// the failed completion for a success would delete the marker and answer COMPLETED over a
/// PENDING record, which its next run would credit a second time.)
#[test]
fn a_sender_lock_lost_before_the_completion_leaves_the_transfer_pending_and_credited_once() {
    use crate::support::cluster::RedisCluster;
    use wallet_transfer::engine::cluster::keys;
    let cluster = RedisCluster::start(3, 0);
    let bed = cross_slot_bed(&cluster, 300);
    bed.create(&[("a", "100.00"), ("b", "100.00")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let lock_a = bed.keys().lock(&a);
    let conn = Mutex::new(bed.conn_for(&lock_a));
    let (hook_lock, calls) = (lock_a.clone(), Arc::new(Mutex::new(0)));
    let mut stalled = bed.service.as_separate_process();
    stalled.set_before_exec_hook(Arc::new(move |_key: &str| {
        let mut calls = calls.lock().unwrap();
        *calls += 1;
        if *calls != 3 {
            return; // the debit's, the credit's, then the completion's
        }
        take_once_expired(&mut conn.lock().unwrap(), &hook_lock);
    }));
    let request = usd("t1", &a, &b, "10.00");
    match stalled.transfer(&request) {
        Err(TransferError::LockLost(key)) => assert_eq!(key, lock_a),
        other => panic!("the completion without its lock must fail, got {other:?}"),
    }
    let record = bed.service.transfer_outcome_of(&a, "t1").unwrap().unwrap();
    assert_eq!(record.status, Status::Pending);
    let marker = keys::credit_marker(&b, &a, "t1");
    let kept: i64 = redis::cmd("EXISTS")
        .arg(&marker)
        .query(&mut bed.conn_for(&marker))
        .unwrap();
    assert_eq!(kept, 1, "the credit marker stays until the completion");
    redis::cmd("DEL")
        .arg(&lock_a)
        .query::<()>(&mut bed.conn_for(&lock_a))
        .unwrap();
    let done = transfer_retrying(&bed.service, &request);
    assert_eq!(done.status, Status::Completed);
    for (id, balance) in [(&a, "90.00"), (&b, "110.00")] {
        assert_eq!(bed.service.balance(id).unwrap(), amount(balance), "{id}");
    }
    assert_eq!(bed.service.history(&b).unwrap().len(), 1, "b credited once");
    assert_audited_and_unlocked(&bed);
}

// One topology: `lock::acquire` and its guard are one Redis's lock API; a cluster's locks
// (`cluster_lock`) are crate-private, and every test above checks they are all given back.
#[test]
fn release_checks_the_token_and_runs_on_every_path() {
    let redis = RedisServer::start();
    let service = redis.service(4, EngineConfig::default());
    let config = LockConfig::default();
    let mut conn = redis.conn();

    // Wrong token: our lock expired and another took it; our release must leave theirs.
    let guard = lock::acquire(
        service.pool().get().unwrap(),
        lock::lock_keys(&["x"]),
        &config,
    )
    .unwrap();
    assert_eq!(guard.stats().attempts, 1);
    assert_eq!(guard.keys(), ["lock:x".to_string()]);
    let held: String = redis::cmd("GET").arg("lock:x").query(&mut conn).unwrap();
    assert_eq!(
        guard.token(),
        held,
        "the token is the one stored in the lock"
    );
    redis::cmd("SET")
        .arg("lock:x")
        .arg("intruder")
        .query::<()>(&mut conn)
        .unwrap();
    assert_eq!(guard.release().unwrap(), 0);
    let owner: String = redis::cmd("GET").arg("lock:x").query(&mut conn).unwrap();
    assert_eq!(owner, "intruder");
    redis::cmd("DEL")
        .arg("lock:x")
        .query::<()>(&mut conn)
        .unwrap();

    // Extend works only while the lock is ours.
    let mut guard = lock::acquire(
        service.pool().get().unwrap(),
        lock::lock_keys(&["y", "z"]),
        &config,
    )
    .unwrap();
    assert!(guard.extend(60_000).unwrap());
    let ttl_ms: i64 = redis::cmd("PTTL").arg("lock:z").query(&mut conn).unwrap();
    assert!(
        ttl_ms > 10_000,
        "extended past the original ttl, got {ttl_ms}"
    );
    redis::cmd("SET")
        .arg("lock:z")
        .arg("intruder")
        .query::<()>(&mut conn)
        .unwrap();
    assert!(!guard.extend(60_000).unwrap());
    drop(guard);
    assert_eq!(lock_keys(&mut conn), vec!["lock:z".to_string()]);
    redis::cmd("DEL")
        .arg("lock:z")
        .query::<()>(&mut conn)
        .unwrap();

    // A panic under the lock still releases it.
    let pool = service.pool().clone();
    let panicked = std::thread::spawn(move || {
        let _guard =
            lock::acquire(pool.get().unwrap(), lock::lock_keys(&["p", "q"]), &config).unwrap();
        panic!("boom under the lock");
    })
    .join();
    assert!(panicked.is_err());
    assert_no_locks(&redis);
}
