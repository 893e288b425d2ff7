//! One rule for idempotency keys on every topology (issue 20, `engine::key_claim`): a key
//! names one request, whoever sends it. A reuse by another sender, or by the same sender for
//! another receiver or amount, is `idempotency_conflict` and moves nothing; the first request
//! keeps its answer. On one Redis the record `transfer:KEY` enforces it; on a cluster the
//! claim `claim:KEY` does, before any lock.

use crate::on_every_topology;
use crate::support::topology::{Bed, Topology};
// `usd(KEY, ..)`: a request's transfer id is its idempotency key, the key these tests reuse.
use crate::support::usd;
use wallet_transfer::engine::service::Failpoint;
use wallet_transfer::{Amount, EngineConfig, Status, TransferError, TransferOutcome};

fn balances(bed: &Bed, names: &[&str]) -> Vec<Amount> {
    names
        .iter()
        .map(|name| bed.service.balance(&bed.id(name)).unwrap())
        .collect()
}

/// The conflict's first request, or a panic naming what came instead.
fn conflict(answer: Result<TransferOutcome, TransferError>, what: &str) -> TransferOutcome {
    match answer {
        Err(TransferError::IdempotencyConflict { original, .. }) => *original,
        other => panic!("{what}: expected idempotency_conflict, got {other:?}"),
    }
}

fn a_key_reused_by_another_request_is_a_conflict_and_moves_nothing(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "0"), ("c", "100.00"), ("d", "0")]);
    let (a, b, c, d) = (bed.id("a"), bed.id("b"), bed.id("c"), bed.id("d"));
    let first = usd("k1", &a, &b, "10.00");
    assert_eq!(service.transfer(&first).unwrap().status, Status::Completed);
    let before = balances(bed, &["a", "b", "c", "d"]);

    let reuses = [
        (
            usd("k1", &c, &b, "10.00"),
            "another sender to the same receiver",
        ),
        (usd("k1", &c, &d, "10.00"), "another sender and receiver"),
        (
            usd("k1", &a, &d, "10.00"),
            "the same sender to another receiver",
        ),
        (usd("k1", &a, &b, "10.01"), "the same pair, another amount"),
    ];
    for (reuse, what) in &reuses {
        let original = conflict(service.transfer(reuse), what);
        assert_eq!(
            (original.from_user.as_str(), original.status),
            (a.as_str(), Status::Completed),
            "{what}: the first request keeps the key"
        );
    }
    assert_eq!(
        balances(bed, &["a", "b", "c", "d"]),
        before,
        "nothing moved"
    );
    // The first request still gets its own answer, and a fresh key still works.
    let replay = service.transfer(&first).unwrap();
    assert_eq!((replay.status, replay.duplicate), (Status::Completed, true));
    let fresh = service.transfer(&usd("k2", &c, &d, "10.00")).unwrap();
    assert_eq!(fresh.status, Status::Completed);
    assert_eq!(bed.locks(), Vec::<String>::new());
}
on_every_topology!(
    a_key_reused_by_another_request_is_a_conflict_and_moves_nothing,
    EngineConfig::default()
);

fn a_key_whose_first_request_failed_is_still_taken(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "1.00"), ("b", "0"), ("c", "100.00")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    let poor = service.transfer(&usd("k3", &a, &b, "5.00")).unwrap();
    assert_eq!(poor.status, Status::Failed);
    let original = conflict(
        service.transfer(&usd("k3", &c, &b, "5.00")),
        "another sender after a FAILED first request",
    );
    assert_eq!(original.status, Status::Failed);
    assert_eq!(
        balances(bed, &["a", "b", "c"]),
        balances_of(&["1.00", "0", "100.00"])
    );
}
on_every_topology!(
    a_key_whose_first_request_failed_is_still_taken,
    EngineConfig::default()
);

fn balances_of(texts: &[&str]) -> Vec<Amount> {
    texts.iter().map(|t| Amount::parse(t).unwrap()).collect()
}

/// A cross-slot request that crashed after its debit holds its key while PENDING: another
/// sender's reuse is a conflict that names it as PENDING, and the first finishes once.
#[test]
fn a_key_held_by_a_crashed_transfer_is_a_conflict_until_and_after_it_finishes() {
    let cluster = crate::support::cluster::RedisCluster::start(3, 0);
    let config = EngineConfig::default().with_lock(
        wallet_transfer::engine::lock::LockConfig::default()
            .with_ttl_ms(300)
            .with_retries_max(1_000),
    );
    let bed = Bed::on_cluster(&cluster, false, config.clone());
    assert_eq!(bed.topology, Topology::ClusterCrossSlot);
    bed.create(&[("a", "100.00"), ("b", "0"), ("c", "100.00")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    let first = usd("k4", &a, &b, "10.00");
    let mut crashing = bed.service.as_separate_process();
    crashing.set_failpoint(Some(Failpoint::AfterDebit));
    let e = crashing
        .transfer(&first)
        .expect_err("the failpoint stops it");
    assert!(e.to_string().contains("failpoint"), "{e}");

    let original = conflict(
        bed.service.transfer(&usd("k4", &c, &b, "10.00")),
        "another sender while the first is PENDING",
    );
    assert_eq!(
        (original.from_user.as_str(), original.status),
        (a.as_str(), Status::Pending)
    );
    // The crashed run's locks expire by their ttl; until then the recovery counts it failed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let report = loop {
        let report = bed.service.recover(100).unwrap();
        if report.failed == 0 || std::time::Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(report.finished, 1, "{report:?}");
    let replay = bed.service.transfer(&first).unwrap();
    assert_eq!(replay.status, Status::Completed);
    conflict(
        bed.service.transfer(&usd("k4", &c, &b, "10.00")),
        "another sender after the first finished",
    );
    assert_eq!(
        balances(&bed, &["a", "b", "c"]),
        balances_of(&["90.00", "10.00", "100.00"])
    );
    let audit = wallet_transfer::tools::ops::audit(&bed.service).expect("the audit runs");
    assert_eq!(audit.violations_total, 0, "{audit:?}");
}

/// The worker's answer to a reused key, end to end on both topologies: a result FAILED
/// `idempotency_conflict` (not a dead letter), the first request's money moved once.
fn the_worker_answers_a_reused_key_with_a_conflict_result<R>(
    stack: &crate::support::stack::Stack<R>,
    service: &wallet_transfer::WalletService,
) {
    crate::support::create_wallets(
        service,
        &[("kw_a", "100.00"), ("kw_b", "100.00"), ("kw_c", "100.00")],
    );
    let keyed = |id: &str, from: &str, amount: &str| {
        usd(id, from, "kw_b", amount)
            .with_idempotency_key("kw_key")
            .expect("a valid key")
    };
    let requests = [
        keyed("kw_1", "kw_a", "10.00"),
        keyed("kw_2", "kw_c", "10.00"),
        keyed("kw_3", "kw_a", "11.00"),
    ];
    // The first request is answered before the reuses are sent: requests of different
    // senders run in parallel, and the first to take the key keeps it.
    stack.publish_requests(&requests[..1]);
    let _worker = stack.spawn_worker(&[]);
    let mut log = stack.reader(&stack.topics.results);
    log.read_until(1, 60_000);
    stack.publish_requests(&requests[1..]);
    // The answers to the reuses come in any order.
    let mut answers: Vec<_> = log
        .read_until(requests.len(), 60_000)
        .iter()
        .map(crate::support::stack::result_of)
        .map(|r| (r.transfer_id, r.status, r.reason, r.duplicate))
        .collect();
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    use wallet_transfer::FailureReason::IdempotencyConflict;
    assert_eq!(
        answers,
        [
            ("kw_1".to_string(), Status::Completed, None, false),
            (
                "kw_2".to_string(),
                Status::Failed,
                Some(IdempotencyConflict),
                false
            ),
            (
                "kw_3".to_string(),
                Status::Failed,
                Some(IdempotencyConflict),
                false
            ),
        ]
    );
    let balances: Vec<Amount> = ["kw_a", "kw_b", "kw_c"]
        .iter()
        .map(|id| service.balance(id).unwrap())
        .collect();
    assert_eq!(balances, balances_of(&["90.00", "110.00", "100.00"]));
}

#[test]
fn the_worker_answers_a_reused_key_with_a_conflict_result_on_one_redis() {
    let stack = crate::support::stack::Stack::start(1);
    let service = stack.redis.service(2, EngineConfig::default());
    the_worker_answers_a_reused_key_with_a_conflict_result(&stack, &service);
}

#[test]
fn the_worker_answers_a_reused_key_with_a_conflict_result_on_a_cluster() {
    let cluster = crate::support::cluster::RedisCluster::start(3, 0);
    let service = wallet_transfer::WalletService::connect_cluster(
        &cluster.seeds(),
        "redis://",
        2,
        EngineConfig::default(),
    )
    .expect("connect to the test cluster");
    let stack = crate::support::stack::Stack::start_on_cluster(
        cluster,
        crate::support::Tansu::start_persistent(),
        1,
    );
    the_worker_answers_a_reused_key_with_a_conflict_result(&stack, &service);
}
