//! `wallet history` (the real binary) over a worker that trims Redis to 4 entries per wallet:
//! the trimmed entries come back from the ledger topic, every version once, the balances
//! chaining from the opening balance; a trimmed deposit (Redis only) is reported missing.

use std::process::Command;

use serde_json::Value;

use crate::support::faults;
use crate::support::stack::{Stack, WALLET_BIN, WorkerProcess};
use crate::support::{create_wallets, wait_until};
use wallet_transfer::{Amount, Currency, EngineConfig, TransferRequest};

/// `count` transfers of 1.00 + i cents, alternating a -> b and b -> a.
fn transfers(prefix: &str, count: usize) -> Vec<TransferRequest> {
    (0..count)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
            let amount = Amount::from_minor(100 + i as i64).to_string();
            TransferRequest::new(&format!("{prefix}{i}"), from, to, &amount, Currency::USD)
                .expect("valid request")
        })
        .collect()
}

/// Publishes `requests` and waits until each has an outcome and the worker has published
/// `ledger_total` ledger entries in all.
fn run(stack: &Stack, worker: &WorkerProcess, requests: &[TransferRequest], ledger_total: usize) {
    stack.publish_requests(requests);
    faults::wait_recorded(stack, requests, requests.len(), 120_000);
    wait_until("the ledger entries acknowledged", 60_000, || {
        worker.metric("wallet_ledger_entries_published_total") >= ledger_total as f64
    });
}

/// `wallet history ARGS...` against the stack's ledger topic.
fn history(stack: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(WALLET_BIN)
        .args(stack.global_args())
        .arg("history")
        .args(args)
        .args(["--ledger-topic", &stack.topics.ledger])
        .output()
        .expect("run wallet history")
}

fn history_json(stack: &Stack, id: &str, extra: &[&str]) -> Value {
    let args: Vec<&str> = [id, "--json"].iter().chain(extra).copied().collect();
    let out = history(stack, &args);
    assert!(
        out.status.success(),
        "wallet history {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("history JSON")
}

fn amount(v: &Value) -> Amount {
    Amount::parse(v.as_str().expect("amount text")).expect("amount")
}

/// Checks versions `1..=version` are listed in order (except `gap`), each older than the Redis
/// window from the ledger, and that every balance_after follows from the one before (across
/// the gap by `gap_amount`); returns how many came from the ledger.
fn assert_chain(h: &Value, gap: Option<u64>, gap_amount: Amount) -> usize {
    let version = h["version"].as_u64().unwrap();
    let trimmed = h["trimmed_from_redis"].as_u64().unwrap();
    let entries = h["entries"].as_array().unwrap();
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1..=version).filter(|v| Some(*v) != gap).collect();
    assert_eq!(versions, want, "{}", h["wallet_id"]);
    let mut balance = amount(&h["opening_balance"]);
    for e in entries {
        let v = e["version"].as_u64().unwrap();
        if Some(v - 1) == gap {
            balance = balance.checked_add(gap_amount).unwrap();
        }
        let moved = amount(&e["amount"]).minor();
        let signed = if e["kind"] == "debit" { -moved } else { moved };
        balance = balance.checked_add(Amount::from_minor(signed)).unwrap();
        assert_eq!(amount(&e["balance_after"]), balance, "version {v}: {e}");
        let source = if v <= trimmed { "ledger" } else { "redis" };
        assert_eq!(e["source"], source, "version {v} (trimmed {trimmed})");
    }
    assert_eq!(
        balance,
        amount(&h["balance"]),
        "the newest entry is the balance"
    );
    entries.iter().filter(|e| e["source"] == "ledger").count()
}

#[test]
fn history_returns_entries_older_than_the_redis_window_from_the_ledger_topic() {
    let stack = Stack::start(2);
    let service = stack.redis.service(1, EngineConfig::default());
    create_wallets(
        &service,
        &[("a", "1000.00"), ("b", "1000.00"), ("c", "5.00")],
    );
    let worker = stack.spawn_worker(&["--history-max-entries", "4"]);
    let first = transfers("h1_", 12);
    run(&stack, &worker, &first, 24);
    // A deposit writes Redis only: once trimmed, its version is in neither place.
    let deposit = Amount::from_minor(777);
    service.deposit("a", deposit).expect("deposit");
    let second = transfers("h2_", 12);
    run(&stack, &worker, &second, 48);

    let b = history_json(&stack, "b", &[]);
    assert_eq!(b["version"], 24);
    assert_eq!(b["missing"], serde_json::json!([]));
    let from_ledger = assert_chain(&b, None, Amount::ZERO);
    assert!(
        from_ledger >= 19,
        "b: {from_ledger} entries from the ledger"
    );
    println!(
        "b: {from_ledger} of 24 entries from the ledger, ledger {}",
        b["ledger"]
    );

    let a = history_json(&stack, "a", &[]);
    assert_eq!(a["version"], 25);
    assert_eq!(a["missing"], serde_json::json!([{"from": 13, "to": 13}]));
    assert_chain(&a, Some(13), deposit);
    let text = history(&stack, &["a"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("| 13 ") && stdout.contains("missing") && stdout.contains("wallet deposit"),
        "{stdout}"
    );

    let newest = history_json(&stack, "b", &["--limit", "6"]);
    let versions: Vec<u64> = newest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (19..=24).collect::<Vec<u64>>());

    // A wallet never trimmed needs no Kafka at all.
    let out = Command::new(WALLET_BIN)
        .args([
            "--redis-url",
            &stack.redis.url(),
            "--brokers",
            "127.0.0.1:1",
        ])
        .args(["history", "c", "--json"])
        .output()
        .expect("run wallet history");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A ledger topic that does not exist is named, with what to do.
    let out = Command::new(WALLET_BIN)
        .args(stack.global_args())
        .args(["history", "b", "--ledger-topic", "no_such_ledger"])
        .output()
        .expect("run wallet history");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no_such_ledger does not exist") && stderr.contains("--ledger-topic"),
        "{stderr}"
    );
}
