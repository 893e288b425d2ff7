//! The programs in `examples/`, run as built (`cargo build --examples`; `make test` and CI
//! build them first) against real redis-server and tansu processes: each must exit as
//! documented and print what it says it does.
//!
//! The binaries are looked up beside the `wallet` binary (`target/<profile>/examples/`). This
//! test does not build them itself: a cargo run inside `cargo test` would wait on the build
//! lock the outer cargo holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::RedisServer;
use crate::support::stack::{Stack, WALLET_BIN};
use wallet_transfer::tools::ops;
use wallet_transfer::{Amount, EngineConfig};

/// What an example run printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_code(&self, code: i32, what: &str) {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// The built example `name`; panics with the command that builds it when it is missing or
/// older than its source.
fn example_binary(name: &str) -> PathBuf {
    let dir = Path::new(WALLET_BIN)
        .parent()
        .expect("the wallet binary is in a folder")
        .join("examples");
    let binary = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&binary), modified(&source)) {
        (Some(built), Some(written)) if built >= written => binary,
        (None, _) => panic!(
            "{} is not built; run `cargo build --examples` first (make test and CI do)",
            binary.display()
        ),
        _ => panic!(
            "{} is older than examples/{name}.rs; run `cargo build --examples` first",
            binary.display()
        ),
    }
}

/// Runs example `name` with `env`, waiting at most `timeout_ms` (killed after that).
fn run_example(name: &str, env: &[(&str, String)], timeout_ms: u64) -> Run {
    let dir = tempfile::tempdir().expect("temporary folder");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = crate::support::tied(&mut Command::new(example_binary(name)))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(
            std::fs::File::create(&out_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&err_path).expect("stderr file"),
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"));
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "example {name} did not finish within {timeout_ms} ms\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run
}

/// The one line of `stdout` that starts with `prefix`.
fn line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", run.stdout))
}

#[test]
fn the_transfer_example_moves_money_once_and_reports_a_business_failure() {
    let redis = RedisServer::start();
    let run = run_example("transfer", &[("REDIS_URL", redis.url())], 60_000);
    run.assert_code(0, "transfer example");
    let moved = line(&run, "transfer tx_");
    assert!(moved.contains(": COMPLETED"), "{moved}");
    assert!(
        moved.contains(" 59.50") && moved.contains(" 40.50"),
        "{moved}"
    );
    let replay = line(&run, "replay tx_");
    assert!(replay.contains("COMPLETED duplicate=true"), "{replay}");
    assert!(
        replay.contains(" 59.50") && replay.contains(" 40.50"),
        "{replay}"
    );
    assert!(
        run.stdout.contains(": FAILED insufficient_funds"),
        "{}",
        run.stdout
    );

    // What it did is a sound ledger: 100.00 in two wallets, one transfer moved once.
    let service = redis.service(1, EngineConfig::default());
    let audit = ops::audit(&service).expect("audit");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    assert_eq!(audit.wallets_checked, 2);
    assert_eq!(audit.transfers_completed, 1);
    assert_eq!(audit.total_balance, Amount::parse("100.00").unwrap());

    // It runs again on the same Redis, with wallets of its own.
    run_example("transfer", &[("REDIS_URL", redis.url())], 60_000).assert_code(0, "second run");
}

#[test]
fn the_transfer_example_fails_with_a_clear_message_when_redis_is_down() {
    let url = format!("redis://127.0.0.1:{}", crate::support::free_port());
    let run = run_example("transfer", &[("REDIS_URL", url)], 30_000);
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stderr.contains("cannot reach Redis"), "{}", run.stderr);
}

#[test]
fn the_audit_example_passes_a_sound_ledger_and_names_a_broken_wallet() {
    let redis = RedisServer::start();
    run_example("transfer", &[("REDIS_URL", redis.url())], 60_000).assert_code(0, "transfer");
    let run = run_example("audit", &[("REDIS_URL", redis.url())], 60_000);
    run.assert_code(0, "audit of a sound ledger");
    assert!(run.stdout.contains("checked 2 wallets"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("USD: balances 100.00 = openings 100.00 + deposits 0.00"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("ledger is sound"), "{}", run.stdout);

    // Money made out of nothing: a balance changed behind the engine's back.
    let mut conn = redis.conn();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg("wallets:all")
        .query(&mut conn)
        .unwrap();
    let broken = ids.iter().find(|id| id.starts_with("bob_")).expect("bob");
    let () = redis::cmd("HSET")
        .arg(format!("wallet:{broken}"))
        .arg("balance")
        .arg("1000.00")
        .query(&mut conn)
        .unwrap();
    let run = run_example("audit", &[("REDIS_URL", redis.url())], 60_000);
    run.assert_code(1, "audit of a broken ledger");
    let violation = line(&run, "violation: ");
    assert!(violation.contains(broken.as_str()), "{violation}");

    let down = format!("redis://127.0.0.1:{}", crate::support::free_port());
    run_example("audit", &[("REDIS_URL", down)], 30_000).assert_code(2, "audit without Redis");
}

#[test]
fn the_worker_example_answers_a_request_and_stops_on_its_handle() {
    let stack = Stack::start(1);
    let env = [
        ("REDIS_URL", stack.redis.url()),
        ("KAFKA_BROKERS", stack.tansu.brokers()),
        ("TOPIC_REQUESTS", stack.topics.requests.clone()),
        ("TOPIC_RESULTS", stack.topics.results.clone()),
        ("TOPIC_DLQ", stack.topics.dlq.clone()),
        ("KAFKA_GROUP", stack.topics.group.clone()),
    ];
    let run = run_example("worker", &env, 180_000);
    run.assert_code(0, "worker example");
    let result = line(&run, "result tx_");
    assert!(result.contains(": COMPLETED duplicate=false"), "{result}");
    assert!(
        result.contains(" 75.00") && result.contains(" 25.00"),
        "{result}"
    );
    let stopped = line(&run, "worker stopped: ");
    assert!(stopped.contains("1 answered, 0 dead-lettered"), "{stopped}");

    // Its offset was committed when it stopped: the request is not redone by the next worker.
    let committed = stack.committed();
    assert_eq!(committed.get(&0), Some(&1), "{committed:?}");
    let service = stack.redis.service(1, EngineConfig::default());
    let audit = ops::audit(&service).expect("audit");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    assert_eq!(audit.transfers_completed, 1);
}
