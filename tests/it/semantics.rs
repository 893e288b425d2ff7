//! The worker's promises under scrutiny, end to end through real processes: per-sender order,
//! honest duplicates, retries that cannot starve the pool, an outcome ttl that cannot break
//! exactly-once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::support::cluster::RedisCluster;
use crate::support::faults::{self, wait_recorded};
use crate::support::stack::Stack;
use crate::support::{Tansu, TestRedis, create_wallets, wait_until};
use wallet_transfer::tools::ops;
use wallet_transfer::worker::kafka::{self, TopicSpec};
use wallet_transfer::worker::metrics::Metrics;
use wallet_transfer::worker::{Worker, WorkerConfig, WorkerError};
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, Status, TransferRequest, WalletService,
};

#[test]
fn requests_of_one_sender_complete_in_the_order_they_were_published() {
    let stack = Stack::start(4);
    let service = stack.redis.service(2, EngineConfig::default());
    let senders: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
    let mut wallets: Vec<(&str, &str)> = senders.iter().map(|s| (s.as_str(), "150.00")).collect();
    wallets.extend([("sink_b", "0"), ("sink_c", "0")]);
    create_wallets(&service, &wallets);
    // Each sender can pay one of its two transfers: the first published must be the one.
    let requests: Vec<TransferRequest> = senders
        .iter()
        .flat_map(|s| {
            ["b", "c"].map(|to| {
                let id = format!("{s}_to_{to}");
                TransferRequest::new(&id, s, &format!("sink_{to}"), "100.00", Currency::USD)
                    .unwrap()
            })
        })
        .collect();
    stack.publish_requests(&requests);
    let _worker = stack.spawn_worker(&["--threads", "8"]);
    let ids: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    let results = stack.wait_results_by_id(&ids, 1, 120_000);
    let inversions: Vec<&String> = senders
        .iter()
        .filter(|s| {
            let first = &results[&format!("{s}_to_b")][0];
            let second = &results[&format!("{s}_to_c")][0];
            first.status != Status::Completed
                || second.reason != Some(FailureReason::InsufficientFunds)
        })
        .collect();
    assert!(
        inversions.is_empty(),
        "{} of 200 senders had a later request win: {:?}",
        inversions.len(),
        &inversions[..inversions.len().min(5)]
    );
    assert!(ops::audit(&service).unwrap().is_ok());
}

/// Per-sender order holds while a request waits in the retry queue: the sender's first
/// request meets a receiver locked by someone else (a lock with a 2 s ttl), times out on the
/// lock (transient) and waits to be retried; the sender's second request, to a free receiver,
/// must wait behind it. The sender can pay only one: the first must be the one. (With the
/// sender's key released before the retry was scheduled, the second ran meanwhile and won.)
#[test]
fn a_senders_later_request_waits_while_its_first_one_is_retried() {
    let stack = Stack::start(1);
    let service = stack.redis.service(2, EngineConfig::default());
    create_wallets(
        &service,
        &[("rq_s", "10.00"), ("rq_busy", "0"), ("rq_free", "0")],
    );
    redis::cmd("SET")
        .arg("lock:rq_busy")
        .arg("held-by-someone-else")
        .arg("PX")
        .arg(2_000)
        .query::<()>(&mut stack.redis.conn())
        .unwrap();
    let requests: Vec<TransferRequest> = [("rq_1", "rq_busy"), ("rq_2", "rq_free")]
        .iter()
        .map(|(id, to)| TransferRequest::new(id, "rq_s", to, "10.00", Currency::USD))
        .collect::<Result<_, _>>()
        .unwrap();
    stack.publish_requests(&requests);
    let worker = stack.spawn_worker(&[
        "--threads",
        "4",
        "--lock-retries",
        "1",
        "--lock-retry-delay-ms",
        "10",
    ]);
    let ids: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    let results = stack.wait_results_by_id(&ids, 1, 60_000);
    let retried: f64 = worker
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("wallet_retries_total{cause=\"lock_timeout\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "the first request was retried:\n{}",
        worker.log()
    );
    let (first, second) = (&results["rq_1"][0], &results["rq_2"][0]);
    assert_eq!(
        (first.status, second.reason),
        (Status::Completed, Some(FailureReason::InsufficientFunds)),
        "the sender's later request overtook the one being retried: {first:?} {second:?}"
    );
}

/// A worker whose answers are all lost before their ack (the `results-unacked` failpoint)
/// records outcomes that are never acknowledged; it is killed, and a second worker answers the redelivered
/// messages from the records: as the original (`duplicate: false`), once each. A real re-send
/// of one request, a new message with the same key, is the only duplicate.
#[test]
fn a_result_lost_before_its_ack_is_answered_as_the_original_and_only_a_resend_is_a_duplicate() {
    let mut stack = Stack::start(2);
    let ids = faults::wallets(&stack, "ha", 10, "1000.00");
    let mut rng = faults::rng(7);
    let requests = faults::requests(&ids, 30, "ha", 1..10_000, &mut rng);
    stack.publish_requests(&requests);
    let mut doomed = stack.spawn_worker_env(&[], &[("WALLET_FAILPOINT", "results-unacked")]);
    wait_recorded(&stack, &requests, requests.len(), 60_000);
    let mut early = stack.reader(&stack.topics.results);
    early.drain_tolerant(500);
    assert!(
        early.messages.is_empty(),
        "every answer was lost before its ack"
    );
    assert!(
        stack.committed().values().all(|o| *o == 0) || stack.committed().is_empty(),
        "nothing unanswered may be committed: {:?}",
        stack.committed()
    );
    doomed.kill();
    // A fresh group reads from the beginning: the same messages, redelivered.
    stack.topics.group = format!("{}_again", stack.topics.group);
    let _worker = stack.spawn_worker(&[]);
    let ids: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    let results = stack.wait_results_by_id(&ids, 1, 60_000);
    for (id, answers) in &results {
        assert!(
            answers.iter().all(|a| !a.duplicate),
            "{id}: redelivery answered as a duplicate: {answers:?}"
        );
    }
    let service = stack.redis.service(2, EngineConfig::default());
    assert!(ops::audit(&service).unwrap().is_ok());

    stack.publish_requests(&requests[..1]);
    let resent = &requests[0].transfer_id;
    let again = stack.wait_results_by_id(std::slice::from_ref(resent), 2, 30_000);
    let duplicates = again[resent].iter().filter(|a| a.duplicate).count();
    assert_eq!(
        duplicates, 1,
        "the re-send is the one duplicate: {:?}",
        again[resent]
    );
}

/// A lock left without a ttl on one wallet, and more requests stuck on it than the worker
/// has threads: every other request completes meanwhile, and deleting the lock lets the stuck
/// ones complete.
#[test]
fn a_lock_without_ttl_holds_up_only_its_wallet_and_deleting_it_releases_the_stuck_requests() {
    let stack = Stack::start(2);
    let service = stack.redis.service(2, EngineConfig::default());
    let senders = faults::wallets(&stack, "st", 12, "100.00");
    let free = faults::wallets(&stack, "fr", 10, "1000.00");
    create_wallets(&service, &[("stuck", "0")]);
    let mut conn = stack.redis.conn();
    redis::cmd("SET")
        .arg("lock:stuck")
        .arg("left-by-a-dead-process")
        .query::<()>(&mut conn)
        .unwrap();
    let stuck: Vec<TransferRequest> = senders
        .iter()
        .map(|s| TransferRequest::new(&format!("{s}_stuck"), s, "stuck", "1.00", Currency::USD))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut rng = faults::rng(11);
    let others = faults::requests(&free, 60, "fr", 1..10_000, &mut rng);
    stack.publish_requests(&stuck);
    stack.publish_requests(&others);
    let worker = stack.spawn_worker(&[
        "--threads",
        "4",
        "--lock-retries",
        "2",
        "--lock-retry-delay-ms",
        "10",
    ]);
    wait_recorded(&stack, &others, others.len(), 60_000);
    assert_eq!(
        faults::recorded(&stack, &stuck),
        0,
        "nothing moves into the stuck wallet"
    );
    wait_until("the stuck lock reported", 10_000, || {
        worker.metric("wallet_locks_without_ttl_total") == 1.0
            && worker.metric("wallet_retrying_jobs") > 0.0
    });
    assert!(worker.log().contains("lock:stuck is held with no ttl"));
    redis::cmd("DEL")
        .arg("lock:stuck")
        .query::<()>(&mut conn)
        .unwrap();
    wait_recorded(&stack, &stuck, stuck.len(), 30_000);
    assert!(ops::audit(&service).unwrap().is_ok());
}

#[test]
fn an_outcome_ttl_shorter_than_the_requests_retention_is_refused_at_start() {
    let stack = Stack::start(1);
    let topic = format!("{}_kept", stack.topics.requests);
    let week_ms = (7 * 24 * 3_600_000u64).to_string();
    kafka::ensure_topics(
        &stack.kafka(),
        &[TopicSpec::new(&topic).with("retention.ms", &week_ms)],
        1,
        1,
    )
    .unwrap();
    let engine = EngineConfig::default().with_outcome_ttl_ms(Some(3_600_000));
    let service = stack.redis.service(2, engine);
    let config = WorkerConfig::default()
        .with_kafka(stack.kafka())
        .with_requests_topic(topic)
        .with_results_topic(stack.topics.results.clone())
        .with_dlq_topic(stack.topics.dlq.clone())
        .with_group_id(stack.topics.group.clone());
    let worker = Worker::new(config, service, Metrics::new()).unwrap();
    let stop: Arc<AtomicBool> = worker.shutdown_handle();
    let result = worker.run();
    drop(stop);
    match result {
        Err(WorkerError::Config(e)) => {
            assert_eq!(e.setting, "outcome_ttl_ms");
            assert!(e.rule.contains("move the money again"), "{e}");
        }
        other => panic!("want a refused outcome ttl, got {other:?}"),
    }
}

/// Left to its defaults, the worker gives outcome records the requests topic's retention plus
/// its segment.ms plus the margin, read from the broker at start: a record outlives every redelivery of its request.
#[test]
fn a_worker_left_to_its_defaults_keeps_outcome_records_for_the_topic_retention_plus_a_segment_plus_the_margin()
 {
    let mut stack = Stack::start(1);
    let topic = format!("{}_hour", stack.topics.requests);
    let hour_ms: u64 = 3_600_000;
    let segment_ms: u64 = 600_000;
    kafka::ensure_topics(
        &stack.kafka(),
        &[TopicSpec::new(&topic)
            .with("retention.ms", &hour_ms.to_string())
            .with("segment.ms", &segment_ms.to_string())],
        1,
        1,
    )
    .unwrap();
    stack.topics.requests = topic;
    let ids = faults::wallets(&stack, "rt", 2, "100.00");
    let request = TransferRequest::new("rt_1", &ids[0], &ids[1], "1.00", Currency::USD).unwrap();
    stack.publish_requests(std::slice::from_ref(&request));
    let margin_ms: u64 = 120_000;
    let _worker = stack.spawn_worker(&["--outcome-ttl-margin-ms", &margin_ms.to_string()]);
    wait_recorded(&stack, std::slice::from_ref(&request), 1, 60_000);
    let pttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("transfer:{}", request.idempotency_key))
        .query(&mut stack.redis.conn())
        .unwrap();
    let ttl_ms = (hour_ms + segment_ms + margin_ms) as i64;
    assert!(
        pttl_ms <= ttl_ms && pttl_ms > ttl_ms - 60_000,
        "the record lives retention + segment + margin = {ttl_ms} ms, has {pttl_ms} ms left"
    );
    // Inside the retention, the request sent again is answered from its record.
    stack.publish_requests(std::slice::from_ref(&request));
    let answers = stack.wait_results_by_id(std::slice::from_ref(&request.transfer_id), 2, 30_000);
    let answers = &answers[&request.transfer_id];
    assert_eq!(answers[0].status, Status::Completed);
    assert!(answers[1].duplicate, "{answers:?}");
    assert_eq!(answers[1].status, Status::Completed);
    let service = stack.redis.service(1, EngineConfig::default());
    assert_eq!(
        service.balance(&ids[1]).unwrap().to_string(),
        "101.00",
        "moved once"
    );
}

/// A worker whose ledger entries are never acknowledged (the `ledger-unacked` failpoint)
/// delivers every result but may commit no offset of a COMPLETED transfer, even at a clean
/// stop; the next worker answers the redelivered requests from their records and publishes the
/// entries, each transfer's debit and credit exactly once as distinct entries.
#[test]
fn a_request_is_committed_only_once_its_ledger_entries_are_acknowledged() {
    let stack = Stack::start(2);
    let ids = faults::wallets(&stack, "lu", 6, "1000.00");
    let mut rng = faults::rng(11);
    let requests = faults::requests(&ids, 20, "lu", 1..10_000, &mut rng);
    stack.publish_requests(&requests);
    let mut doomed = stack.spawn_worker_env(&[], &[("WALLET_FAILPOINT", "ledger-unacked")]);
    let tids: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    stack.wait_results_by_id(&tids, 1, 60_000);
    doomed.signal("TERM");
    assert_eq!(doomed.wait_exit(30_000), Some(0), "{}", doomed.log());
    let committed = stack.committed();
    assert!(
        committed.values().all(|o| *o == 0),
        "an offset was committed before its ledger entries were acknowledged: {committed:?}"
    );
    let _worker = stack.spawn_worker(&[]);
    stack.wait_results_by_id(&tids, 2, 60_000);
    let mut log = stack.reader(&stack.topics.results);
    wait_until("both workers' results", 30_000, || {
        log.drain_tolerant(100);
        log.messages.len() >= 2 * requests.len()
    });
    faults::check(
        &stack,
        "ledger entries unacknowledged, clean stop",
        1,
        &requests,
        &log.messages,
        None,
        true,
    )
    .print_and_assert();
}

/// A producer whose queue holds one message (`-X queue.buffering.max.messages=1`): nearly
/// every answer (a result and two ledger entries) finds the queue full and waits for room.
/// Every request is still answered once, the money moves once, every offset is committed,
/// and the waits are counted as backpressure (`wallet_produce_queue_full_total`), not as
/// produce retries. (With an answer abandoned at its first wait, the results never came.)
#[test]
fn answers_that_find_the_producer_queue_full_wait_for_room_and_none_is_lost() {
    let stack = Stack::start(2);
    let ids = faults::wallets(&stack, "qf", 8, "1000.00");
    let mut rng = faults::rng(17);
    let requests = faults::requests(&ids, 60, "qf", 1..10_000, &mut rng);
    let worker = stack.spawn_worker(&["-X", "queue.buffering.max.messages=1"]);
    stack.publish_requests(&requests);
    let tids: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    stack.wait_results_by_id(&tids, 1, 120_000);
    wait_until("every offset committed", 60_000, || {
        stack.committed().values().sum::<i64>() == requests.len() as i64
    });
    let mut log = stack.reader(&stack.topics.results);
    wait_until("every result read back", 30_000, || {
        log.drain_tolerant(100);
        log.messages.len() >= requests.len()
    });
    faults::check(
        &stack,
        "producer queue of one message",
        0,
        &requests,
        &log.messages,
        None,
        true,
    )
    .print_and_assert();
    let waited = worker.metric("wallet_produce_queue_full_total");
    assert!(waited > 0.0, "the queue was never full: {waited}");
    assert_eq!(
        worker.metric(r#"wallet_retries_total{cause="kafka_produce"}"#),
        0.0,
        "a full queue is not a produce retry"
    );
}

/// A group rewound after the records expired (issue 20): the requests topic keeps 10 s and the
/// worker derives a 10 s outcome ttl from it (margin 0). Every request is answered COMPLETED;
/// once every record has expired, a worker of a new group (which starts from the earliest
/// offset, as a reset to earliest would) is handed every request again and answers each FAILED
/// `expired`: no balance changes, no record written. (Without the age rule it moved all the
/// money a second time.)
#[test]
fn a_group_rewound_after_the_records_expired_moves_no_money() {
    let mut stack = Stack::start(1);
    let topic = format!("{}_short", stack.topics.requests);
    let retention_ms: u64 = 10_000;
    kafka::ensure_topics(
        &stack.kafka(),
        &[TopicSpec::new(&topic)
            .with("retention.ms", &retention_ms.to_string())
            .with("segment.ms", "1")],
        1,
        1,
    )
    .unwrap();
    stack.topics.requests = topic;
    let ids = faults::wallets(&stack, "rw", 4, "100.00");
    let mut rng = faults::rng(20);
    let requests = faults::requests(&ids, 12, "rw", 1..1_000, &mut rng);
    let margin = ["--outcome-ttl-margin-ms", "0"];
    let mut first = stack.spawn_worker(&margin);
    wait_until("the first worker's partition", 60_000, || {
        first.metric("wallet_assigned_partitions") >= 1.0
    });
    stack.publish_requests(&requests);
    let tids: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    let answers = stack.wait_results_by_id(&tids, 1, 60_000);
    assert!(
        answers
            .values()
            .all(|a| a[0].reason != Some(FailureReason::Expired)),
        "a first delivery was too old: {answers:?}"
    );
    first.signal("TERM");
    assert_eq!(first.wait_exit(30_000), Some(0), "{}", first.log());
    let service = stack.redis.service(1, EngineConfig::default());
    let balances = |s: &WalletService| -> Vec<String> {
        ids.iter()
            .map(|id| s.balance(id).unwrap().to_string())
            .collect()
    };
    let after_first = balances(&service);
    wait_until("every outcome record to expire", 60_000, || {
        faults::recorded(&stack, &requests) == 0
    });
    let group = format!("{}_rewound", stack.topics.group);
    let _second = stack.spawn_worker(&[margin[0], margin[1], "--group", &group]);
    let answers = stack.wait_results_by_id(&tids, 2, 60_000);
    for id in &tids {
        let again = &answers[id][1];
        assert_eq!(
            (again.status, again.reason),
            (Status::Failed, Some(FailureReason::Expired)),
            "{id}: {:?}",
            answers[id]
        );
        let wire = serde_json::to_value(again).expect("a result serialises");
        crate::contracts::assert_matches("TransferCompleted", "an expired answer", &wire);
    }
    assert_eq!(balances(&service), after_first, "a rewind moved money");
    assert_eq!(
        faults::recorded(&stack, &requests),
        0,
        "an expired request wrote a record"
    );
}

/// A result whose delivery fails (hook `WALLET_FAILPOINT_DELIVERY_FAILS`: the first delivery
/// of `df_0`'s result is reported failed after the broker took it) is redone: the job runs
/// again, is answered from its record as the original (`duplicate: false`), and its result
/// is published a second time; the money moves once and every offset is committed in the
/// end. (With a failed delivery counted as done, the result went out once and was never
/// redone: a real lost delivery would have lost the answer.)
#[test]
fn a_result_whose_delivery_fails_is_published_again_and_the_money_moves_once() {
    let stack = Stack::start(1);
    let ids = faults::wallets(&stack, "df", 4, "100.00");
    let requests: Vec<TransferRequest> = (0..4)
        .map(|i| {
            let (from, to) = (&ids[i], &ids[(i + 1) % ids.len()]);
            TransferRequest::new(&format!("df_{i}"), from, to, "10.00", Currency::USD)
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let failing = requests[0].transfer_id.clone();
    let _worker = stack.spawn_worker_env(&[], &[("WALLET_FAILPOINT_DELIVERY_FAILS", &failing)]);
    stack.publish_requests(&requests);
    let all: Vec<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
    stack.wait_results_by_id(&all, 1, 60_000);
    let twice = stack.wait_results_by_id(std::slice::from_ref(&failing), 2, 60_000);
    let answers = &twice[&failing];
    assert_eq!(
        answers.len(),
        2,
        "published once more after the failed delivery: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.status == Status::Completed && !a.duplicate),
        "the redo is the original answer again: {answers:?}"
    );
    let service = stack.redis.service(2, EngineConfig::default());
    for id in &ids {
        assert_eq!(
            service.balance(id).unwrap(),
            Amount::parse("100.00").unwrap()
        );
    }
    wait_until("every offset committed", 30_000, || {
        stack.committed().values().sum::<i64>() == requests.len() as i64
    });
    assert!(ops::audit(&service).unwrap().is_ok());
}

/// A transfer that hits data no retry can mend (a sender whose balance does not read) is
/// answered by a dead letter naming the key, at once and once; its key passes to the sender's
/// next request, the other senders' money moves, and the offsets are committed. Guards the
/// pool's split of transfer errors into transient (retried) and permanent (dead-lettered):
/// with every error retried, the corrupt request held its sender and its partition for ever.
fn a_corrupt_wallet_is_dead_lettered_and_the_worker_carries_on<R: TestRedis>(
    stack: &Stack<R>,
    service: &WalletService,
) {
    create_wallets(
        service,
        &[("cw_a", "100.00"), ("cw_b", "0"), ("cw_c", "100.00")],
    );
    let corrupt = stack.redis.key_space().wallet("cw_a");
    for (mut conn, keys) in stack.redis.conns_for(vec![corrupt.clone()]).unwrap() {
        redis::cmd("HSET")
            .arg(&keys[0])
            .arg("balance")
            .arg("not money")
            .query::<()>(&mut conn)
            .unwrap();
    }
    let usd = |id: &str, from: &str, to: &str| {
        TransferRequest::new(id, from, to, "10.00", Currency::USD).unwrap()
    };
    // Two requests of the corrupt sender (the second waits for the first's key), then one of
    // a sound sender.
    let requests = [
        usd("cw_1", "cw_a", "cw_b"),
        usd("cw_2", "cw_a", "cw_c"),
        usd("cw_3", "cw_c", "cw_b"),
    ];
    let worker = stack.spawn_worker(&[]);
    stack.publish_requests(&requests);

    let mut dlq = stack.reader(&stack.topics.dlq);
    let dead = dlq.read_until(2, 60_000).to_vec();
    for m in &dead {
        let error = &m.headers["error"];
        assert!(
            error.contains("corrupt record") && error.contains(&corrupt),
            "the dead letter names the corrupt key {corrupt}: {error:?}"
        );
    }
    let offsets: BTreeSet<&str> = dead
        .iter()
        .map(|m| m.headers["source_offset"].as_str())
        .collect();
    assert_eq!(offsets, BTreeSet::from(["0", "1"]));
    let results = stack.wait_results_by_id(&["cw_3".to_string()], 1, 60_000);
    assert_eq!(results["cw_3"][0].status, Status::Completed);
    wait_until("every offset committed", 60_000, || {
        stack.committed().values().sum::<i64>() == requests.len() as i64
    });
    let balances: Vec<Amount> = ["cw_b", "cw_c"]
        .iter()
        .map(|id| service.balance(id).unwrap())
        .collect();
    assert_eq!(
        balances,
        [
            Amount::parse("10.00").unwrap(),
            Amount::parse("90.00").unwrap()
        ]
    );
    assert_eq!(worker.metric("wallet_dlq_total"), 2.0);
    assert_eq!(
        worker.metric(r#"wallet_retries_total{cause="corrupt"}"#),
        0.0,
        "a corrupt record is not retried"
    );
}

#[test]
fn a_corrupt_wallet_is_dead_lettered_and_the_worker_carries_on_on_one_redis() {
    let stack = Stack::start(1);
    let service = stack.redis.service(2, EngineConfig::default());
    a_corrupt_wallet_is_dead_lettered_and_the_worker_carries_on(&stack, &service);
}

#[test]
fn a_corrupt_wallet_is_dead_lettered_and_the_worker_carries_on_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let service =
        WalletService::connect_cluster(&cluster.seeds(), "redis://", 2, EngineConfig::default())
            .expect("connect to the test cluster");
    let stack = Stack::start_on_cluster(cluster, Tansu::start_persistent(), 1);
    a_corrupt_wallet_is_dead_lettered_and_the_worker_carries_on(&stack, &service);
}
