//! The operator commands (`snapshot`, `status`, `deposit`, `locks`, `audit`, `transfer`) run as
//! the real `wallet` binary against a real redis-server (and tansu for `transfer --wait`).

use std::process::{Command, Output};

use crate::support::stack::Stack;
use crate::support::{RedisServer, create_wallets};
use wallet_transfer::{Amount, Currency, EngineConfig, Status, TransferRequest};

const WALLET: &str = env!("CARGO_BIN_EXE_wallet");

fn wallet(args: &[&str]) -> Output {
    Command::new(WALLET)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("REDIS_URL")
        .output()
        .expect("run wallet")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed by a signal")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit `expected`, no panic, and one `wallet: error:` line on stderr containing `needle`.
fn assert_fails(out: &Output, expected: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(
        code(out),
        expected,
        "stderr: {err}\nstdout: {}",
        stdout(out)
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn audit_passes_on_a_sound_ledger_and_names_a_corrupted_wallet() {
    let redis = RedisServer::start();
    let url = redis.url();
    let service = redis.service(2, EngineConfig::default());
    create_wallets(
        &service,
        &[("a1", "100.00"), ("a2", "50.00"), ("a3", "0.00")],
    );
    for (i, (from, to, amount)) in [
        ("a1", "a2", "10.00"),
        ("a2", "a3", "30.50"),
        ("a3", "a1", "5"),
    ]
    .iter()
    .enumerate()
    {
        let request =
            TransferRequest::new(&format!("t{i}"), from, to, amount, Currency::USD).unwrap();
        assert_eq!(
            service.transfer(&request).unwrap().status,
            Status::Completed
        );
    }
    // A recorded failure is part of the ledger too.
    let failing = TransferRequest::new("t_fail", "a3", "a1", "999.00", Currency::USD).unwrap();
    assert_eq!(service.transfer(&failing).unwrap().status, Status::Failed);
    service
        .deposit("a3", Amount::parse("7.25").unwrap())
        .unwrap();

    let report = wallet_transfer::tools::ops::audit(&service).unwrap();
    assert!(report.is_ok(), "{:?}", report.violations);
    assert_eq!(report.wallets_checked, 3);
    assert_eq!(report.transfers_checked, 4);
    assert_eq!(report.transfers_completed, 3);
    assert_eq!(report.total_balance.to_string(), "157.25");

    let out = wallet(&["--redis-url", &url, "audit"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("wallets checked: 3"), "{text}");
    assert!(text.contains("transfers checked: 4"), "{text}");

    let out = wallet(&["--redis-url", &url, "snapshot", "--prefix", "a"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("Test a1"), "{}", stdout(&out));
    let out = wallet(&["--redis-url", &url, "snapshot", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(rows[0]["id"], "a1");

    let out = wallet(&["--redis-url", &url, "status", "t1", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "COMPLETED");
    assert_eq!(status["amount"], "30.50");
    assert_fails(
        &wallet(&["--redis-url", &url, "status", "nope"]),
        1,
        "no outcome recorded",
    );
    // Without a key: what the store holds (every record counted, the oldest one's age).
    let out = wallet(&["--redis-url", &url, "status", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let store: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(store["outcome_records"], 4, "{store}");
    assert_eq!(store["outcome_records_exact"], true, "{store}");
    assert!(store["used_memory_bytes"].as_u64().unwrap() > 0, "{store}");
    assert!(store["oldest_sampled_age_ms"].as_u64().is_some(), "{store}");

    // Corrupt one balance behind the engine's back.
    let mut conn = redis.conn();
    redis::cmd("HSET")
        .arg("wallet:a2")
        .arg("balance")
        .arg("1000.00")
        .query::<()>(&mut conn)
        .unwrap();
    let out = wallet(&["--redis-url", &url, "audit"]);
    assert_fails(&out, 1, "wallet:a2");
    assert!(stderr(&out).contains("wallet:a2: balance 1000.00 != opening 50.00"));
    assert!(stderr(&out).contains("totals_mismatch: USD: total balance"));
    let report = wallet_transfer::tools::ops::audit(&service).unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.detail.starts_with("wallet:a2: balance 1000.00")),
        "{:?}",
        report.violations
    );
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    let redis = RedisServer::start();
    let url = redis.url();
    let service = redis.service(1, EngineConfig::default());
    create_wallets(&service, &[("d1", "1.00")]);

    for (amount, rule) in [
        ("abc", "must be digits"),
        ("-5", "greater than 0"),
        ("1.234", "at most 2 decimals"),
        ("0", "greater than 0"),
    ] {
        let out = wallet(&["--redis-url", &url, "deposit", "d1", amount]);
        assert_fails(&out, 2, "AMOUNT");
        assert_fails(&out, 2, rule);
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
    assert_fails(
        &wallet(&["--redis-url", &url, "deposit", "d1", "5", "--bogus"]),
        2,
        "--bogus",
    );
    assert_fails(
        &wallet(&["--redis-url", &url, "deposit", "bad id!", "5"]),
        2,
        "USER",
    );
    assert_fails(
        &wallet(&["--redis-url", &url, "deposit", "ghost", "5"]),
        1,
        "ghost",
    );

    let out = wallet(&["--redis-url", "redis://127.0.0.1:1", "deposit", "d1", "5"]);
    assert_fails(&out, 1, "cannot reach Redis at redis://127.0.0.1:1");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    // Transfer input is checked before any Kafka client is made.
    for (args, needle) in [
        (
            vec!["transfer", "d1", "d2", "5", "--currency", "XYZ"],
            "--currency",
        ),
        (vec!["transfer", "d1", "d2", "1.234"], "AMOUNT"),
        (vec!["transfer", "d1", "d2", "5", "--id", "bad id"], "--id"),
        (vec!["transfer", "d 1", "d2", "5"], "FROM"),
    ] {
        assert_fails(&wallet(&args), 2, needle);
    }

    let out = wallet(&["--redis-url", &url, "deposit", "d1", "2.50"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("balance now 3.50"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn locks_flags_a_lock_without_ttl() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _service = redis.service(1, EngineConfig::default());
    let mut conn = redis.conn();

    let out = wallet(&["--redis-url", &url, "locks"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    redis::cmd("SET")
        .arg("lock:held")
        .arg("tok1")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut conn)
        .unwrap();
    let out = wallet(&["--redis-url", &url, "locks", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let locks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(locks[0]["key"], "lock:held");
    assert_eq!(locks[0]["owner"], "tok1");
    assert!(locks[0]["ttl_ms"].as_i64().unwrap() > 0);

    redis::cmd("SET")
        .arg("lock:x")
        .arg("y")
        .query::<()>(&mut conn)
        .unwrap();
    let out = wallet(&["--redis-url", &url, "locks"]);
    assert_fails(&out, 1, "lock:x");
    assert!(stdout(&out).contains("NO TTL"), "{}", stdout(&out));
    assert!(!stderr(&out).contains("lock:held"), "{}", stderr(&out));
}

#[test]
fn transfer_waits_for_the_worker_result() {
    let stack = Stack::start(2);
    let service = stack.redis.service(1, EngineConfig::default());
    create_wallets(&service, &[("A", "20.00"), ("B", "1.00")]);
    let _worker = stack.spawn_worker(&[]);

    let out = stack.wallet(
        "transfer",
        &[
            "A",
            "B",
            "5",
            "--wait",
            "--id",
            "tx_cli_1",
            "--timeout-s",
            "60",
        ],
    );
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("status: COMPLETED"),
        "{}",
        stdout(&out)
    );
    assert_eq!(service.balance("A").unwrap().to_string(), "15.00");
    assert_eq!(service.balance("B").unwrap().to_string(), "6.00");

    let report = wallet_transfer::tools::ops::audit(&service).unwrap();
    assert!(report.is_ok(), "{:?}", report.violations);
    assert_eq!(report.transfers_completed, 1);
}
