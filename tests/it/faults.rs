//! Proof under faults: the worker keeps "exactly one effect per request" while processes are
//! killed, stalled and restarted under it.
//!
//! Every scenario drives load with unique idempotency keys, injects its fault, waits (with a
//! deadline) until every request has an outcome, and ends with `support::faults::check`: nothing
//! lost, nothing doubled, `ops::audit` clean, every result agrees with the recorded outcome, no
//! lock without a ttl. Each prints a table row.
//!
//! Sizes are short by default (`make test`); `FAULT_SCALE=full` (`make fault-test`) runs the
//! full ones. Each test prints its seed; `FAULT_SEED=<seed>` replays its random choices.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::faults::{self, check, rng, size, wait_for_outcomes};
use crate::support::stack::{Stack, WorkerProcess, result_of};
use crate::support::{RedisServer, Tansu, ms, wait_until};
use proptest::prelude::*;
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use wallet_transfer::engine::message::{Decoded, decode};
use wallet_transfer::tools::ops;
use wallet_transfer::worker::config::DLQ_PAYLOAD_BYTES_LIMIT;
use wallet_transfer::{
    Amount, EngineConfig, FailureReason, Status, TransferCompleted, TransferRequest,
};

/// Longest wait for all outcomes after the last fault.
/// How long a scenario waits for every result after its fault. A cap, not a speed claim: after
/// a broker pause tansu can leave the worker's rejoin unanswered until the rebalance timeout
/// plus the session timeout have passed (about a minute), and a machine busy with other
/// builds stretches that; the wait ends as soon as the last result is in.
fn drain_timeout_ms() -> u64 {
    size(180_000, 600_000) as u64
}

fn metric_sum(worker: &WorkerProcess, series: &[&str]) -> f64 {
    series.iter().map(|s| worker.metric(s)).sum()
}

/// 1. SIGKILL at random moments, restart each time.
#[test]
fn crash_sigkill_and_restart_loses_nothing_and_doubles_nothing() {
    let seed = faults::seed("crash");
    let mut rng = rng(seed);
    let n = size(800, 5_000);
    let kills = size(2, 5);
    let stack = Stack::start(4);
    let ids = faults::wallets(&stack, "c", 40, "2000.00");
    // Amounts up to 500.00 on 2000.00 wallets: some insufficient_funds, recorded and checked.
    let requests = faults::requests(&ids, n, "crash_", 1..50_000, &mut rng);
    stack.publish_requests(&requests);
    let mut worker = stack.spawn_worker(&[]);
    let mut results = stack.reader(&stack.topics.results);

    let mut points: Vec<usize> = (0..kills)
        .map(|_| rng.random_range(n / 20..n * 9 / 10))
        .collect();
    points.sort_unstable();
    for point in points {
        faults::wait_recorded(&stack, &requests, point, 300_000);
        std::thread::sleep(ms(rng.random_range(0..300)));
        // Restarted until it holds the partitions (tansu and a dead member's session: see
        // `spawn_worker_assigned`).
        stack.kill_and_restart(&mut worker, &[], || {});
    }
    let recovery = wait_for_outcomes(&stack, &mut results, &requests, drain_timeout_ms());
    results.drain_tolerant(1_000);
    let report = check(
        &stack,
        "worker SIGKILL + restart",
        kills,
        &requests,
        &results.messages,
        recovery,
        false,
    );
    report.print_and_assert();
}

/// 2. A worker stalled (SIGSTOP) while it holds locks, past the lock ttl.
///
/// Why this shape: A and B are in the SAME group and the load is concentrated on three wallets,
/// so every transfer touches wallets A may hold. A is stopped at a moment when it provably holds
/// a lock (a `lock:*` key exists while only A runs, and still exists 100 ms later, so it is not
/// an EXEC already on the wire). B then joins; once A's session times out B takes over every
/// partition, including the very messages A has in flight, and processes them while A's locks
/// have expired (ttl 1 s, stall >= 7 s). When A continues it resumes mid-transfer with a stale
/// WATCH/lock: its EXEC must abort (or its lock check fail) and the retry must find B's
/// recorded outcome. That exercises both claims at once: the same request processed by two
/// live workers has one effect, and a stalled holder cannot overwrite newer balances. A second
/// group would only re-run every request on purpose, which the redelivery storm covers.
#[test]
fn stalled_lock_holder_cannot_double_spend_or_overwrite() {
    let seed = faults::seed("stall");
    let mut rng = rng(seed);
    let n = size(300, 1_500);
    let stack = Stack::start(4);
    let ids = faults::wallets(&stack, "s", 3, "1000000.00");
    let requests = faults::requests(&ids, n, "stall_", 1..10_000, &mut rng);
    stack.publish_requests(&requests);
    let flags = ["--lock-ttl-ms", "1000"];
    let mut a = stack.spawn_worker(&flags);
    let mut results = stack.reader(&stack.topics.results);
    faults::wait_recorded(&stack, &requests, rng.random_range(5..n / 10), 120_000);

    // Stop A at a moment it holds a lock.
    let mut conn = stack.redis.conn();
    let mut held = Vec::new();
    for _ in 0..5_000 {
        a.signal("STOP");
        let first = crate::support::lock_keys(&mut conn);
        if !first.is_empty() {
            std::thread::sleep(ms(100));
            let again = crate::support::lock_keys(&mut conn);
            held = first.into_iter().filter(|k| again.contains(k)).collect();
            if !held.is_empty() {
                break;
            }
        }
        a.signal("CONT");
        std::thread::sleep(ms(rng.random_range(0..15)));
    }
    assert!(!held.is_empty(), "never caught A holding a lock");
    let stalled_at = Instant::now();
    println!("A stopped holding {held:?}");

    let b = stack.spawn_worker(&flags);
    // B must take over A's partitions (A's session expires) and do real work on the wallets
    // A holds, well past the lock ttl.
    let before = results.messages.len();
    wait_until("B publishes results while A is stalled", 120_000, || {
        results.drain_tolerant(100);
        b.metric("wallet_results_published_total") >= 20.0
            || results.messages.len() >= before + n / 2
    });
    let remaining = Duration::from_secs(7).saturating_sub(stalled_at.elapsed());
    std::thread::sleep(remaining);
    let stall = stalled_at.elapsed();
    let locks = ops::locks(&stack.redis.service(1, EngineConfig::default())).expect("locks");
    assert!(locks.iter().all(|l| !l.is_problem()), "{locks:?}");
    a.signal("CONT");
    println!("A continued after {:.1} s", stall.as_secs_f64());

    let recovery = wait_for_outcomes(&stack, &mut results, &requests, drain_timeout_ms());
    results.drain_tolerant(1_000);
    let stale = ["lock_lost", "watch_conflicts", "redis"]
        .map(|c| format!(r#"wallet_retries_total{{cause="{c}"}}"#));
    let mut stale: Vec<&str> = stale.iter().map(String::as_str).collect();
    stale.push("wallet_watch_conflicts_total");
    // A was stopped holding locks: resuming, its EXEC must abort or its lock check fail, or,
    // when it was stopped waiting for Redis's reply to its lock round trip, the interrupted
    // read fails (EINTR) and the connection is thrown away. B may have recorded every outcome
    // before A's thread runs again, so wait (bounded); never reaching it means the stale path
    // never ran.
    wait_until("A takes the stale path after the stall", 30_000, || {
        metric_sum(&a, &stale) >= 1.0
    });
    let a_stale = metric_sum(&a, &stale);
    let b_stale = metric_sum(&b, &stale);
    println!(
        "retries after the stall (lock_lost + watch_conflicts + redis): A {a_stale}, B {b_stale}"
    );
    assert!(a.is_running(), "A carries on after SIGCONT");
    let report = check(
        &stack,
        "holder SIGSTOP > lock ttl",
        1,
        &requests,
        &results.messages,
        recovery,
        true,
    );
    report.print_and_assert();
}

/// Load on wallets that can always pay: any FAILED would be the fault's doing.
fn rich_load(stack: &Stack, prefix: &str, n: usize, rng: &mut StdRng) -> Vec<TransferRequest> {
    let ids = faults::wallets(stack, prefix, 20, "1000000000.00");
    faults::requests(&ids, n, prefix, 1..50_000, rng)
}

/// The shape of the outage scenarios (3a-4b): load on wallets that can always pay, one worker
/// process, the fault injected once a random tenth to third of the outcomes is recorded; then
/// every request (plus any `inject` publishes) must complete on that same process, with no
/// FAILED result.
fn outage(
    fault: &str,
    prefix: &str,
    mut stack: Stack,
    worker_flags: &[&str],
    inject: impl FnOnce(&mut Stack, &mut StdRng) -> Vec<TransferRequest>,
) -> WorkerProcess {
    let mut rng = rng(faults::seed(prefix));
    let n = size(500, 3_000);
    let mut requests = rich_load(&stack, prefix, n, &mut rng);
    stack.publish_requests(&requests);
    let mut worker = stack.spawn_worker(worker_flags);
    let pid = worker.pid();
    let mut results = stack.reader(&stack.topics.results);
    faults::wait_recorded(&stack, &requests, rng.random_range(n / 10..n / 3), 120_000);
    requests.extend(inject(&mut stack, &mut rng));
    let recovery = wait_for_outcomes(&stack, &mut results, &requests, drain_timeout_ms());
    results.drain_tolerant(1_000);
    assert!(worker.is_running(), "{fault}: the worker survives");
    assert_eq!(worker.pid(), pid, "{fault}: no restart");
    check(
        &stack,
        fault,
        1,
        &requests,
        &results.messages,
        recovery,
        true,
    )
    .print_and_assert();
    worker
}

/// 3a. Redis SIGSTOPped for 5 s under load.
#[test]
fn redis_paused_five_seconds_under_load() {
    outage(
        "redis SIGSTOP 5 s",
        "rp",
        Stack::start(4),
        &[],
        |stack, _| {
            stack.redis.pause();
            std::thread::sleep(ms(5_000));
            stack.redis.resume();
            Vec::new()
        },
    );
}

/// 3b. Redis killed and restarted from its AOF under load.
#[test]
fn redis_restarted_from_aof_under_load() {
    outage(
        "redis SIGKILL + restart (AOF)",
        "rr",
        Stack::start(4),
        &[],
        |stack, _| {
            stack.redis.restart();
            Vec::new()
        },
    );
}

/// 4a. The broker SIGSTOPped for 10 s under load; the same worker process carries on.
#[test]
fn broker_paused_ten_seconds_under_load() {
    let stack = Stack::start_on(RedisServer::start(), Tansu::start_persistent(), 4);
    // tansu can leave the rejoin after a lost session unanswered; the worker then rejoins as a
    // new member once the rebalance timeout plus the session timeout has passed.
    let flags = ["--max-poll-interval-ms", "20000"];
    outage("broker SIGSTOP 10 s", "bp", stack, &flags, |stack, rng| {
        stack.tansu.pause();
        std::thread::sleep(ms(10_000));
        stack.tansu.resume();
        // The pause outlasts the session: the worker loses its partitions and must rejoin.
        // What is published now is only processed if it did.
        let ids = faults::wallets(stack, "late", 20, "1000000000.00");
        let after = faults::requests(&ids, size(500, 3_000) / 4, "late", 1..50_000, rng);
        stack.publish_requests(&after);
        after
    });
}

/// 4c. The broker paused for longer than the result producer's message timeout: deliveries
/// fail, the answers wait in the delay queue and are published again once the broker is back,
/// and no offset is committed past an answer that was not delivered. Every request ends with
/// its result.
#[test]
#[ignore = "tansu 0.6 panics (tansu-storage lite.rs:503, service.rs:337) on the idempotent producer's state after deliveries timed out, then resets every connection of that producer, even after a restart (state in sqlite): about 1 run in 4 since the ledger entries triple the messages in flight. Run it with --ignored; it passes when tansu does not break"]
fn broker_paused_past_the_message_timeout_loses_no_answer() {
    let stack = Stack::start_on(RedisServer::start(), Tansu::start_persistent(), 4);
    // A session longer than the pause: this test is about deliveries, not rebalances.
    let flags = [
        "-X",
        "message.timeout.ms=2000",
        "--session-timeout-ms",
        "30000",
        "--max-poll-interval-ms",
        "40000",
    ];
    let worker = outage(
        "broker SIGSTOP 6 s > message timeout 2 s",
        "bt",
        stack,
        &flags,
        |stack, _| {
            stack.tansu.pause();
            std::thread::sleep(ms(6_000));
            stack.tansu.resume();
            Vec::new()
        },
    );
    let failed_deliveries = worker.metric(r#"wallet_retries_total{cause="kafka_produce"}"#);
    println!("failed deliveries retried: {failed_deliveries}");
    assert!(
        failed_deliveries >= 1.0,
        "some delivery timed out and was retried"
    );
}

/// 4b. The broker killed and restarted (sqlite storage) under load.
#[test]
fn broker_restarted_under_load() {
    let stack = Stack::start_on(RedisServer::start(), Tansu::start_persistent(), 4);
    outage(
        "broker SIGKILL + restart (sqlite)",
        "br",
        stack,
        &[],
        |stack, _| {
            stack.tansu.restart();
            Vec::new()
        },
    );
}

/// 5. Every request published three times, two workers in one group.
#[test]
fn redelivery_storm_has_one_effect_per_request() {
    let seed = faults::seed("storm");
    let mut rng = rng(seed);
    let n = size(300, 1_500);
    let stack = Stack::start(4);
    let ids = faults::wallets(&stack, "d", 30, "2000.00");
    let requests = faults::requests(&ids, n, "storm_", 1..50_000, &mut rng);
    let first = stack.spawn_worker(&[]);
    let second = stack.spawn_worker(&[]);
    wait_until("both workers assigned", 60_000, || {
        first.log().contains("assigned") && second.log().contains("assigned")
    });
    let mut storm: Vec<TransferRequest> = requests
        .iter()
        .flat_map(|r| [r.clone(), r.clone(), r.clone()])
        .collect();
    storm.shuffle(&mut rng);
    let started = Instant::now();
    stack.publish_requests(&storm);
    let mut results = stack.reader(&stack.topics.results);
    let _ = wait_for_outcomes(&stack, &mut results, &requests, drain_timeout_ms());
    // Every delivery is answered: 3 results per request.
    let deadline = Instant::now() + ms(60_000);
    while results.messages.len() < 3 * n && Instant::now() < deadline {
        results.drain_tolerant(200);
    }
    let recovery = Some(started.elapsed());
    results.drain_tolerant(1_000);
    let mut report = check(
        &stack,
        "redelivery x3, 2 workers",
        2 * n,
        &requests,
        &results.messages,
        recovery,
        false,
    );
    let mut answers: HashMap<String, (usize, usize)> = HashMap::new();
    for m in &results.messages {
        let r = result_of(m);
        let e = answers.entry(r.transfer_id).or_default();
        e.0 += 1;
        if !r.duplicate {
            e.1 += 1;
        }
    }
    for r in &requests {
        let (all, fresh) = answers.get(&r.transfer_id).copied().unwrap_or_default();
        if all < 3 {
            report
                .violations
                .push(format!("{}: {all} results for 3 deliveries", r.transfer_id));
        }
        if fresh != 1 {
            report.violations.push(format!(
                "{}: {fresh} results not marked duplicate (want exactly 1)",
                r.transfer_id
            ));
        }
    }
    report.print_and_assert();
}

/// One malformed payload that `decode` must send to the DLQ (see `message::decode`).
fn poison(i: usize, big: bool, rng: &mut StdRng) -> Vec<u8> {
    if big {
        // 1 MB strings: over the 64 KiB limit.
        let s = "x".repeat(1024 * 1024);
        return if i.is_multiple_of(2) {
            json!({"transfer_id": s, "from_user": "a", "to_user": "b", "amount": "1"})
        } else {
            json!(s)
        }
        .to_string()
        .into_bytes();
    }
    let id = format!("bad_{i}");
    let wrong = |rng: &mut StdRng| -> Value {
        match rng.random_range(0..4) {
            0 => json!(true),
            1 => json!([1, "x"]),
            2 => json!({"v": 1}),
            _ => json!(12.5),
        }
    };
    let good = json!({"transfer_id": id, "from_user": "a", "to_user": "b", "amount": "1.00"});
    let payload = match rng.random_range(0..8) {
        // random bytes
        0 => (0..rng.random_range(1..300))
            .map(|_| rng.random::<u8>())
            .collect(),
        // truncated JSON
        1 => {
            let text = good.to_string().into_bytes();
            let cut = rng.random_range(1..text.len());
            text[..cut].to_vec()
        }
        // a huge number as transfer_id
        2 => {
            let digits: String = (0..rng.random_range(20..80))
                .map(|k| char::from(b'1' + ((i + k) % 9) as u8))
                .collect();
            format!(r#"{{"transfer_id":{digits},"from_user":"a","to_user":"b","amount":"1"}}"#)
                .into_bytes()
        }
        // transfer_id of a wrong type
        3 => {
            let mut v = good.clone();
            v["transfer_id"] = wrong(rng);
            v.to_string().into_bytes()
        }
        // another field of a wrong type (amount may be a number, so never a number there)
        4 => {
            let fields = [
                "from_user",
                "to_user",
                "amount",
                "currency",
                "idempotency_key",
            ];
            let field = fields[rng.random_range(0..fields.len())];
            let mut v = good.clone();
            v[field] = loop {
                let w = wrong(rng);
                if !(field == "amount" && w.is_number()) {
                    break w;
                }
            };
            v.to_string().into_bytes()
        }
        // JSON, but not an object
        5 => [
            json!([good.clone()]),
            json!("a string"),
            json!(42),
            json!(null),
            json!(false),
        ][rng.random_range(0..5)]
        .to_string()
        .into_bytes(),
        // no usable transfer_id
        6 => {
            let mut v = good.clone();
            if rng.random::<bool>() {
                v.as_object_mut().unwrap().remove("transfer_id");
            } else {
                v["transfer_id"] = Value::Null;
            }
            v.to_string().into_bytes()
        }
        // empty or blank
        _ => b"  \n\t".repeat(rng.random_range(0..3)),
    };
    assert!(
        decode(&payload).is_err(),
        "generator made a non-poison payload: {}",
        String::from_utf8_lossy(&payload)
    );
    payload
}

/// 6. Malformed messages interleaved with good ones.
#[test]
fn poison_flood_goes_to_the_dlq_and_every_good_request_completes() {
    let seed = faults::seed("poison");
    let mut rng = rng(seed);
    let good_n = size(200, 1_000);
    let bad_n = size(200, 1_000);
    let big_n = size(2, 6);
    let invalid_n = size(20, 100);
    let stack = Stack::start(2);
    let ids = faults::wallets(&stack, "p", 20, "1000000.00");
    let requests = faults::requests(&ids, good_n, "good_", 1..50_000, &mut rng);
    let bad: Vec<Vec<u8>> = (0..bad_n).map(|i| poison(i, i < big_n, &mut rng)).collect();
    // A valid transfer_id with bad values is answered FAILED invalid_request, not dead-lettered.
    let invalid: Vec<Vec<u8>> = (0..invalid_n)
        .map(|i| {
            let (field, value) = [
                ("amount", json!("1.234")),
                ("amount", json!("0")),
                ("currency", json!("JPY")),
                ("from_user", json!("a b")),
            ][i % 4]
                .clone();
            let mut v = json!({"transfer_id": format!("inv_{i}"), "from_user": "p0",
                               "to_user": "p1", "amount": "1.00"});
            v[field] = value;
            let payload = v.to_string().into_bytes();
            assert!(matches!(decode(&payload), Ok(Decoded::Invalid { .. })));
            payload
        })
        .collect();
    let mut messages: Vec<(Option<String>, Vec<u8>)> = requests
        .iter()
        .map(|r| (Some(r.from_user.clone()), r.to_json().into_bytes()))
        .chain(bad.iter().map(|b| (None, b.clone())))
        .chain(invalid.iter().map(|b| (None, b.clone())))
        .collect();
    messages.shuffle(&mut rng);

    let mut worker = stack.spawn_worker(&[]);
    let pid = worker.pid();
    stack.publish(&messages);
    let mut results = stack.reader(&stack.topics.results);
    let recovery = wait_for_outcomes(&stack, &mut results, &requests, drain_timeout_ms());
    let mut dlq = stack.reader(&stack.topics.dlq);
    dlq.read_until(bad_n, 120_000);
    dlq.drain_tolerant(2_000);
    results.drain_tolerant(1_000);

    let mut report = check(
        &stack,
        "poison flood",
        bad_n,
        &requests,
        &results.messages,
        recovery,
        false,
    );
    // A dead letter carries its payload whole, or its first DLQ_PAYLOAD_BYTES_LIMIT bytes with
    // the full length in a `truncated` header.
    let cut = |b: &[u8]| b[..b.len().min(DLQ_PAYLOAD_BYTES_LIMIT)].to_vec();
    let mut want: HashMap<(Vec<u8>, Option<String>), i64> = HashMap::new();
    for b in &bad {
        let truncated = (b.len() > DLQ_PAYLOAD_BYTES_LIMIT).then(|| b.len().to_string());
        *want.entry((cut(b), truncated)).or_default() += 1;
    }
    for m in &dlq.messages {
        let truncated = m.headers.get("truncated").cloned();
        *want.entry((m.payload.clone(), truncated)).or_default() -= 1;
        if m.headers.get("error").is_none_or(String::is_empty) {
            report
                .violations
                .push(format!("dead letter at {} without error header", m.offset));
        }
    }
    for ((payload, _), missing) in want.iter().filter(|(_, c)| **c != 0) {
        report.violations.push(format!(
            "dlq count off by {missing} for {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(80)])
        ));
    }
    let answered: HashMap<String, TransferCompleted> = results
        .messages
        .iter()
        .map(result_of)
        .map(|r| (r.transfer_id.clone(), r))
        .collect();
    for i in 0..invalid_n {
        match answered.get(&format!("inv_{i}")) {
            Some(r)
                if r.status == Status::Failed
                    && r.reason == Some(FailureReason::InvalidRequest) => {}
            other => report.violations.push(format!(
                "inv_{i}: expected FAILED invalid_request, got {other:?}"
            )),
        }
    }
    assert!(worker.is_running(), "the worker never exits");
    assert_eq!(worker.pid(), pid);
    println!(
        "dead letters {} (sent {bad_n}), metric {}",
        dlq.messages.len(),
        worker.metric("wallet_dlq_total")
    );
    report.print_and_assert();
}

// 7. The request parser under arbitrary JSON values.

const FIELDS: [&str; 6] = [
    "transfer_id",
    "from_user",
    "to_user",
    "amount",
    "currency",
    "idempotency_key",
];

/// A JSON number from arbitrary text (serde_json keeps it exactly: `arbitrary_precision`).
fn number() -> impl Strategy<Value = Value> {
    r"-?(0|[1-9][0-9]{0,29})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?"
        .prop_map(|t| serde_json::from_str::<Value>(&t).expect("number text"))
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        number(),
        any::<String>().prop_map(Value::String),
        "[A-Za-z0-9_.:-]{0,12}".prop_map(Value::String),
        r"[0-9]{1,14}(\.[0-9]{0,3})?".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value of the field's own kind, often valid, sometimes just over a rule's edge.
fn plausible(field: &str) -> BoxedStrategy<Value> {
    let text = |re: &'static str| re.prop_map(Value::String).boxed();
    match field {
        "amount" => prop_oneof![
            text(r"[0-9]{1,13}(\.[0-9]{1,3})?"),
            text(r"-?[0-9]{0,3}\.?[0-9]{0,3}"),
            number(),
        ]
        .boxed(),
        "currency" => prop::sample::select(vec!["USD", "EUR", "GBP", "JPY", "usd", ""])
            .prop_map(|s| Value::String(s.to_string()))
            .boxed(),
        "transfer_id" | "idempotency_key" => prop_oneof![
            6 => text("[A-Za-z0-9_.:-]{1,20}"),
            1 => text("[A-Za-z0-9_.:-]{120,135}"),
            1 => text(r"[A-Za-z0-9 /\\é]{0,6}"),
        ]
        .boxed(),
        _ => prop_oneof![
            6 => text("[A-Za-z0-9_-]{1,20}"),
            1 => text("[A-Za-z0-9_-]{60,70}"),
            1 => text(r"[A-Za-z0-9 .:\\é]{0,6}"),
        ]
        .boxed(),
    }
}

/// Objects with the real field names (each usually present, usually of its own kind, else of
/// any JSON type) plus random extra keys; sometimes any value at all at the top.
fn request_like() -> impl Strategy<Value = Value> {
    let fields: Vec<_> = FIELDS
        .iter()
        .map(|f| {
            let v = prop_oneof![
                20 => plausible(f),
                1 => Just(Value::Null),
                2 => leaf(),
                1 => value(),
            ];
            prop::option::weighted(0.9, v).prop_map(move |v| (f.to_string(), v))
        })
        .collect();
    let extra = prop::collection::btree_map("[a-z_]{0,16}", value(), 0..3);
    let object = (fields, extra).prop_map(|(fields, extra)| {
        let mut map: serde_json::Map<String, Value> = extra.into_iter().collect();
        for (f, v) in fields {
            match v {
                Some(v) => map.insert(f, v),
                None => map.remove(&f),
            };
        }
        Value::Object(map)
    });
    prop_oneof![9 => object, 1 => value()]
}

/// Checks one value; returns whether it decoded to a request.
fn decode_one(v: &Value) -> Result<bool, TestCaseError> {
    let bytes = serde_json::to_vec(v).expect("serialise");
    match decode(&bytes) {
        Ok(Decoded::Request(r)) => {
            // What to_json writes decodes to the same request ...
            prop_assert_eq!(
                decode(r.to_json().as_bytes()),
                Ok(Decoded::Request(r.clone()))
            );
            // ... and says what the value said, field by field.
            let out: Value = serde_json::from_str(&r.to_json()).expect("to_json is JSON");
            for field in FIELDS {
                let sent = &v[field];
                let written = &out[field];
                match (field, sent) {
                    ("amount", _) => {
                        let text = match sent {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        prop_assert_eq!(Amount::parse(&text).ok(), Some(r.amount));
                        let amount = r.amount.to_string();
                        prop_assert_eq!(written.as_str(), Some(amount.as_str()));
                    }
                    ("currency", Value::Null) => prop_assert_eq!(written, &json!("USD")),
                    ("idempotency_key", Value::Null) => {
                        prop_assert_eq!(written, &v["transfer_id"]);
                    }
                    _ => prop_assert_eq!(written, sent, "field {}", field),
                }
            }
            Ok(true)
        }
        Ok(Decoded::Invalid { echo, .. }) => {
            prop_assert_eq!(echo.status, Status::Failed);
            prop_assert_eq!(echo.reason, Some(FailureReason::InvalidRequest));
            let id = v["transfer_id"].as_str();
            prop_assert!(id.is_some(), "invalid implies a string transfer_id");
            prop_assert!(
                id.unwrap_or_default()
                    .starts_with(echo.transfer_id.as_str())
            );
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

/// Scenario 7: no JSON value makes `decode` panic, and whatever it accepts as a request round-trips
/// through `TransferRequest::to_json`. Counts the accepted ones, so the round-trip property is
/// not checked vacuously.
#[test]
fn decode_never_panics_on_json_values_and_requests_round_trip() {
    let cases = size(3_000, 30_000) as u32;
    let seed = faults::seed("decode");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes,
        ),
    );
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&request_like(), |v| {
        if decode_one(&v)? {
            accepted.set(accepted.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("{cases} values, {} decoded to requests", accepted.get());
    assert!(
        accepted.get() >= cases / 100,
        "too few valid requests generated ({}) to test the round trip",
        accepted.get()
    );
}
