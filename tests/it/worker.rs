//! The `wallet worker` binary end to end: real redis-server, real tansu, real processes.

use std::collections::{HashMap, HashSet};

use crate::support::faults;
use crate::support::stack::Stack;
use crate::support::stack::result_of;
use crate::support::{create_wallets, wait_until};
use rand::{RngExt, SeedableRng};
use wallet_transfer::tools::ops;
use wallet_transfer::tools::results::ReadMessage;
use wallet_transfer::worker::config::DLQ_PAYLOAD_BYTES_LIMIT;
use wallet_transfer::{Amount, Currency, EngineConfig, Status, TransferRequest};

/// Creates `n` wallets `w0..w{n-1}` with random balances; returns ids and the opening total.
fn wallets(stack: &Stack, n: usize, seed: u64) -> (Vec<String>, Amount) {
    let service = stack.redis.service(2, EngineConfig::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let balances: Vec<String> = ids
        .iter()
        .map(|_| Amount::from_minor(rng.random_range(10_000..1_000_000)).to_string())
        .collect();
    let pairs: Vec<(&str, &str)> = ids
        .iter()
        .zip(&balances)
        .map(|(i, b)| (i.as_str(), b.as_str()))
        .collect();
    create_wallets(&service, &pairs);
    let total = crate::support::total(&service, &ids);
    (ids, total)
}

fn random_requests(ids: &[String], count: usize, prefix: &str, seed: u64) -> Vec<TransferRequest> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let from = &ids[rng.random_range(0..ids.len())];
            let to = &ids[rng.random_range(0..ids.len())];
            let amount = Amount::from_minor(rng.random_range(1..50_000)).to_string();
            TransferRequest::new(&format!("{prefix}{i}"), from, to, &amount, Currency::USD).unwrap()
        })
        .collect()
}

/// Every request has exactly one recorded outcome, its effects and agreeing results, and the
/// ledger is exact: the fault suite's checker (`faults::check`) on a run without a fault, then
/// what it does not count (every wallet audited, money neither made nor lost, no history
/// entry beside the requests').
fn assert_exactly_once(
    stack: &Stack,
    test: &str,
    ids: &[String],
    opening: Amount,
    requests: &[TransferRequest],
    results: &[ReadMessage],
) {
    let fault = format!("none ({test})");
    faults::check(stack, &fault, 0, requests, results, None, false).print_and_assert();
    let service = stack.redis.service(2, EngineConfig::default());
    let audit = ops::audit(&service).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    assert_eq!(audit.wallets_checked, ids.len() as u64);
    assert_eq!(
        audit.total_balance, opening,
        "money is neither made nor lost"
    );
    let mut completed = 0;
    for r in requests {
        let o = service
            .transfer_outcome(&r.idempotency_key)
            .unwrap()
            .unwrap_or_else(|| panic!("{} has no outcome", r.transfer_id));
        if o.status == Status::Completed {
            completed += 1;
        }
    }
    let entries: usize = ids
        .iter()
        .map(|id| service.history(id).unwrap().len())
        .sum();
    assert_eq!(
        entries,
        2 * completed,
        "two history entries per completed transfer, no more"
    );
}

#[test]
fn two_thousand_requests_each_have_exactly_one_effect_and_one_result() {
    let stack = Stack::start(6);
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let (ids, opening) = wallets(&stack, 50, seed);
    let requests = random_requests(&ids, 2_000, "r", seed);
    let worker = stack.spawn_worker(&[]);
    stack.publish_requests(&requests);

    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(2_000, 120_000).to_vec();
    let mut seen = HashSet::new();
    for m in &read {
        let r = result_of(m);
        assert!(
            seen.insert(r.transfer_id.clone()),
            "one result per request: {}",
            r.transfer_id
        );
        assert_eq!(
            m.key.as_deref(),
            Some(r.transfer_id.as_bytes()),
            "keyed by transfer_id"
        );
        assert!(!r.duplicate);
    }
    assert_eq!(seen.len(), 2_000);
    let test = "worker::two_thousand";
    assert_exactly_once(&stack, test, &ids, opening, &requests, &read);

    // The metrics agree with the run.
    let completed = read
        .iter()
        .filter(|m| result_of(m).status == Status::Completed)
        .count();
    assert_eq!(
        worker.metric(r#"wallet_transfers_total{reason="",status="COMPLETED"}"#) as usize,
        completed
    );
    assert_eq!(
        worker.metric("wallet_results_published_total") as usize,
        2_000
    );
    wait_until("all offsets committed", 30_000, || {
        stack.committed().values().sum::<i64>() == 2_000
    });
}

#[test]
fn a_request_published_three_times_has_one_effect_and_three_results() {
    let stack = Stack::start(3);
    create_wallets(
        &stack.redis.service(2, EngineConfig::default()),
        &[("a", "100.00"), ("b", "0")],
    );
    let request = TransferRequest::new("dup_1", "a", "b", "60.00", Currency::USD).unwrap();
    let _worker = stack.spawn_worker(&[]);
    stack.publish_requests(&[request.clone(), request.clone(), request.clone()]);

    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(3, 60_000).to_vec();
    assert_eq!(read.len(), 3);
    let duplicates = read.iter().filter(|m| result_of(m).duplicate).count();
    assert_eq!(duplicates, 2);
    assert!(
        read.iter()
            .all(|m| result_of(m).status == Status::Completed)
    );
    let service = stack.redis.service(2, EngineConfig::default());
    assert_eq!(
        service.balance("a").unwrap(),
        Amount::parse("40.00").unwrap()
    );
    assert_eq!(
        service.balance("b").unwrap(),
        Amount::parse("60.00").unwrap()
    );
}

#[test]
fn poison_goes_to_the_dead_letter_topic_and_the_worker_carries_on() {
    let stack = Stack::start(1);
    create_wallets(
        &stack.redis.service(2, EngineConfig::default()),
        &[("a", "1000.00"), ("b", "0")],
    );
    let worker = stack.spawn_worker(&[]);
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"this is not json".to_vec()),
        ("empty", Vec::new()),
        ("2 MB", vec![b'x'; 2 * 1024 * 1024]),
        // Fits a topic's default 1 MiB limit, but with headers it would not fit a dead-letter
        // topic of the same limit unless cut.
        ("1,048,400 bytes", vec![b'{'; 1_048_400]),
        (
            "no transfer_id",
            br#"{"from_user":"a","to_user":"b","amount":"1"}"#.to_vec(),
        ),
        (
            "amount as object",
            br#"{"transfer_id":"p5","from_user":"a","to_user":"b","amount":{"v":1}}"#.to_vec(),
        ),
    ];
    let mut messages = Vec::new();
    for (i, (_, bad)) in poison.iter().enumerate() {
        let good = TransferRequest::new(&format!("g{i}"), "a", "b", "1.00", Currency::USD).unwrap();
        messages.push((Some("a".to_string()), good.to_json().into_bytes()));
        messages.push((None, bad.clone()));
    }
    // And one with a transfer_id but an invalid amount: a FAILED result, not a dead letter.
    messages.push((
        None,
        br#"{"transfer_id":"bad_amount","from_user":"a","to_user":"b","amount":"1.234"}"#.to_vec(),
    ));
    stack.publish(&messages);

    let mut dlq = stack.reader(&stack.topics.dlq);
    let dead = dlq.read_until(poison.len(), 60_000).to_vec();
    assert_eq!(dead.len(), poison.len());
    // Poison has no key, so the pool answers it in any order: match dead letters by content.
    for (what, payload) in &poison {
        // Forwarded whole up to the decode cap; a longer payload is cut, and says so.
        let kept = &payload[..payload.len().min(DLQ_PAYLOAD_BYTES_LIMIT)];
        let truncated =
            (payload.len() > DLQ_PAYLOAD_BYTES_LIMIT).then(|| payload.len().to_string());
        let found: Vec<_> = dead
            .iter()
            .filter(|m| m.payload == kept && m.headers.get("truncated") == truncated.as_ref())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{what}: one dead letter with the first {} of {} bytes (truncated header {truncated:?})",
            kept.len(),
            payload.len()
        );
        let m = found[0];
        assert!(!m.headers["error"].is_empty(), "{what}: error header");
        let names = match *what {
            "not json" => "not JSON",
            "2 MB" | "1,048,400 bytes" => "over the limit",
            "amount as object" => "amount",
            _ => "",
        };
        assert!(
            m.headers["error"].contains(names),
            "{what}: error header {:?} names {names:?}",
            m.headers["error"]
        );
        assert_eq!(m.headers["source_partition"], "0");
        assert!(m.headers.contains_key("source_offset"));
    }

    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(poison.len() + 1, 60_000).to_vec();
    let by_id: HashMap<String, _> = read
        .iter()
        .map(|m| (result_of(m).transfer_id.clone(), result_of(m)))
        .collect();
    for i in 0..poison.len() {
        assert_eq!(by_id[&format!("g{i}")].status, Status::Completed);
    }
    let bad = &by_id["bad_amount"];
    assert_eq!(bad.status, Status::Failed);
    assert_eq!(
        bad.reason,
        Some(wallet_transfer::FailureReason::InvalidRequest)
    );
    assert_eq!(worker.metric("wallet_dlq_total") as usize, poison.len());
    let mut worker = worker;
    assert!(worker.is_running());
    wait_until("every offset committed past the poison", 30_000, || {
        stack.committed().get(&0) == Some(&(messages.len() as i64))
    });
}

/// Partition 0 holds a slow job followed by 50 quick ones; partition 1 gets one marker
/// request afterwards. Its commit is the event that says a commit round ran after the quick
/// ones' answers were acknowledged (one broker connection acknowledges in order), so partition
/// 0's position is checked then, not after a sleep.
#[test]
fn a_slow_job_holds_the_committed_offset_until_it_is_done() {
    let stack = Stack::start(2);
    let service = stack.redis.service(2, EngineConfig::default());
    let mut pairs = vec![
        ("slow_from", "100.00"),
        ("slow_to", "0"),
        ("mark_from", "1.00"),
        ("mark_to", "0"),
    ];
    let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    for n in &names {
        pairs.push((n.as_str(), "1000.00"));
    }
    create_wallets(&service, &pairs);
    let worker = stack.spawn_worker(&["--lock-retries", "2", "--lock-retry-delay-ms", "10"]);

    // Warm up: one message at offset 0, so the group has a committed position.
    let warm = TransferRequest::new("warm", "f0", "f1", "1", Currency::USD).unwrap();
    stack.publish_requests_on(0, &[warm]);
    wait_until("offset 1 committed", 60_000, || {
        stack.committed().get(&0) == Some(&1)
    });

    // Someone else holds the slow transfer's wallet: it keeps retrying.
    let mut conn = stack.redis.conn();
    redis::cmd("SET")
        .arg("lock:slow_to")
        .arg("test-holder")
        .arg("PX")
        .arg(120_000)
        .query::<()>(&mut conn)
        .unwrap();
    let slow = TransferRequest::new("slow", "slow_from", "slow_to", "5", Currency::USD).unwrap();
    let fast: Vec<TransferRequest> = (0..50)
        .map(|i| {
            TransferRequest::new(
                &format!("fast{i}"),
                &names[i % 10],
                &names[(i + 1) % 10],
                "1",
                Currency::USD,
            )
            .unwrap()
        })
        .collect();
    let mut batch = vec![slow];
    batch.extend(fast);
    stack.publish_requests_on(0, &batch);

    let mut results = stack.reader(&stack.topics.results);
    results.read_until(1 + 50, 60_000);
    // The 50 after it are done, yet the commit stays at the slow one (offset 1).
    wait_until("lock retries counted", 20_000, || {
        worker.metric(r#"wallet_retries_total{cause="lock_timeout"}"#) >= 2.0
    });
    let marker = TransferRequest::new("mark", "mark_from", "mark_to", "1", Currency::USD).unwrap();
    stack.publish_requests_on(1, &[marker]);
    wait_until("the marker on partition 1 committed", 60_000, || {
        stack.committed().get(&1) == Some(&1)
    });
    assert_eq!(
        stack.committed().get(&0),
        Some(&1),
        "never past the unfinished offset 1"
    );

    redis::cmd("DEL")
        .arg("lock:slow_to")
        .query::<()>(&mut conn)
        .unwrap();
    wait_until("commit moves past everything", 30_000, || {
        stack.committed().get(&0) == Some(&52)
    });
    assert_eq!(
        service.balance("slow_to").unwrap(),
        Amount::parse("5").unwrap()
    );
}

#[test]
fn sigterm_under_load_exits_cleanly_and_a_restart_finishes_the_rest() {
    let stack = Stack::start(4);
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let (ids, opening) = wallets(&stack, 30, seed);
    let requests = random_requests(&ids, 1_500, "t", seed);
    let mut worker = stack.spawn_worker(&[]);
    stack.publish_requests(&requests);

    let mut results = stack.reader(&stack.topics.results);
    results.read_until(100, 60_000);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(30_000), Some(0), "clean exit on SIGTERM");
    assert!(worker.log().contains("stopped:"), "{}", worker.log());

    let _second = stack.spawn_worker(&[]);
    // A request answered but not yet committed at the stop is answered again after the
    // restart (from its record): wait for every distinct id, not for a message count.
    let mut distinct: HashSet<String> = HashSet::new();
    wait_until("every request answered", 120_000, || {
        results.drain_tolerant(100);
        distinct = results
            .messages
            .iter()
            .map(|m| result_of(m).transfer_id)
            .collect();
        distinct.len() == 1_500
    });
    let test = "worker::sigterm";
    assert_exactly_once(&stack, test, &ids, opening, &requests, &results.messages);
}

#[test]
fn two_workers_in_one_group_share_the_partitions() {
    let stack = Stack::start(6);
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let (ids, opening) = wallets(&stack, 40, seed);
    let first = stack.spawn_worker(&[]);
    let second = stack.spawn_worker(&[]);
    // Both must hold partitions before the load: each one's latest assignment change is an
    // assignment of some partitions (not a revoke, not an empty set).
    let holds_partitions = |log: String| {
        log.lines()
            .rev()
            .find(|l| l.contains("] assigned") || l.contains("} revoked"))
            .is_some_and(|l| l.contains("] assigned") && !l.contains("partitions [] assigned"))
    };
    wait_until("both workers assigned", 60_000, || {
        holds_partitions(first.log()) && holds_partitions(second.log())
    });
    let requests = random_requests(&ids, 1_000, "s", seed);
    stack.publish_requests(&requests);

    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(1_000, 120_000).to_vec();
    let distinct: HashSet<String> = read.iter().map(|m| result_of(m).transfer_id).collect();
    assert_eq!(distinct.len(), 1_000);
    let test = "worker::two_workers";
    assert_exactly_once(&stack, test, &ids, opening, &requests, &read);
    let a = first.metric("wallet_results_published_total");
    let b = second.metric("wallet_results_published_total");
    assert!(a > 0.0 && b > 0.0, "both workers did work: {a} and {b}");
}
