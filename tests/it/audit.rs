//! `wallet audit` (the real binary) against a real redis-server: a ledger made by the engine,
//! then broken by hand with redis commands the way an operator could break it (a transfer
//! applied twice, a credit deleted, money moved into a wallet of another currency, a
//! checkpoint edited), and a live ledger audited again and again while a worker runs a
//! `bench --e2e` load, with whole histories and with histories trimmed to 4 entries.

use redis::Commands;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::process::Proc;
use crate::support::stack::{Stack, WALLET_BIN, WorkerProcess};
use crate::support::{RedisServer, create_wallets};
use wallet_transfer::{
    Amount, Currency, EngineConfig, NewWallet, Status, TransferRequest, WalletService,
};

fn audit(url: &str, json: bool) -> Output {
    audit_with(url, if json { &["--json"] } else { &[] }, &[])
}

/// `wallet audit ARGS` with environment variables `env`.
fn audit_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(WALLET_BIN)
        .args(["--redis-url", url, "audit"])
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("OUTCOME_TTL_MS")
        .envs(env.iter().copied())
        .output()
        .expect("run wallet audit")
}

/// `wallet audit --json` exits 0; its report.
fn clean_report(url: &str) -> serde_json::Value {
    let out = audit(url, true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `wallet audit` exits 0 and reports no violation.
fn assert_clean(url: &str) {
    let out = audit(url, false);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("violations: 0"));
}

/// `wallet audit` exits 1; its `violation:` lines on stderr.
fn violations(url: &str) -> Vec<String> {
    let out = audit(url, false);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("violation: "))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    lines
}

/// Wallets a1 (100.00), a2 (50.00), a3 (0.00) in USD, e1 (20.00) in EUR; transfers t0 a1->a2
/// 10.00, t1 a2->a3 30.50, t2 a3->a1 5.00, a FAILED one and a deposit, all by the engine.
fn ledger(redis: &RedisServer) -> WalletService {
    let service = redis.service(2, EngineConfig::default());
    create_wallets(
        &service,
        &[("a1", "100.00"), ("a2", "50.00"), ("a3", "0.00")],
    );
    service
        .create_wallet(
            &NewWallet::new("e1", Amount::parse("20.00").unwrap(), Currency::EUR)
                .with_full_name("Test e1")
                .with_email("e1@example.com"),
        )
        .unwrap();
    let moves = [
        ("a1", "a2", "10.00"),
        ("a2", "a3", "30.50"),
        ("a3", "a1", "5"),
    ];
    for (i, (from, to, amount)) in moves.iter().enumerate() {
        let request =
            TransferRequest::new(&format!("t{i}"), from, to, amount, Currency::USD).unwrap();
        let outcome = service.transfer(&request).unwrap();
        assert_eq!(outcome.status, Status::Completed);
    }
    let failing = TransferRequest::new("t_fail", "a3", "a1", "999.00", Currency::USD).unwrap();
    assert_eq!(service.transfer(&failing).unwrap().status, Status::Failed);
    service
        .deposit("a3", Amount::parse("7.25").unwrap())
        .unwrap();
    service
}

/// Applies a transfer by hand as the engine does, in one MULTI/EXEC: a debit on `from` and a
/// credit on `to` carrying both ids, each balance and version moved to match.
fn apply_by_hand(conn: &mut redis::Connection, key: &str, from: &str, to: &str, amount: &str) {
    let amount = Amount::parse(amount).unwrap();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (id, kind) in [(from, "debit"), (to, "credit")] {
        let balance: String = redis::cmd("HGET")
            .arg(format!("wallet:{id}"))
            .arg("balance")
            .query(conn)
            .unwrap();
        let balance = Amount::parse(&balance).unwrap();
        let after = if kind == "debit" {
            balance.checked_sub(amount)
        } else {
            balance.checked_add(amount)
        }
        .unwrap();
        // The time 1764170000000 ms in base 36, the kind's sign, the amount in cents.
        let sign = if kind == "debit" { '-' } else { '+' };
        let line = format!("mig59ny8{sign}{} {key}", amount.minor());
        pipe.hset(format!("wallet:{id}"), "balance", after.to_string())
            .hincr(format!("wallet:{id}"), "version", 1)
            .rpush(format!("wallet:{id}:log"), line);
    }
    pipe.query::<()>(conn).unwrap();
}

#[test]
fn a_transfer_applied_twice_by_hand_makes_the_audit_fail_and_name_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _service = ledger(&redis);
    assert_clean(&url);

    // t0 (a1 -> a2, 10.00) applied a second time: everything consistent but the double effect.
    let mut conn = redis.conn();
    apply_by_hand(&mut conn, "t0", "a1", "a2", "10.00");
    let lines = violations(&url);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("repeated_entry key=t0 wallets=a1,a2: debit applied 2 times"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("repeated_entry key=t0 wallets=a1,a2: credit applied 2 times"),
        "{lines:?}"
    );

    let out = audit(&url, true);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["violations_total"], 2, "{report}");
    let first = &report["violations"][0];
    assert_eq!(first["kind"], "repeated_entry", "{report}");
    assert_eq!(first["idempotency_key"], "t0", "{report}");
    assert_eq!(
        first["wallets"],
        serde_json::json!(["a1", "a2"]),
        "{report}"
    );
}

#[test]
fn a_deleted_credit_is_named_by_the_audit() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _service = ledger(&redis);
    assert_clean(&url);

    // Delete t1's credit from a3's history, and move a3's balance and version to match.
    let mut conn = redis.conn();
    let history: Vec<String> = conn.lrange("wallet:a3:log", 0, -1).unwrap();
    let credit = history
        .iter()
        .find(|line| line.contains('+') && line.ends_with(" t1"))
        .expect("t1's credit");
    let balance: String = redis::cmd("HGET")
        .arg("wallet:a3")
        .arg("balance")
        .query(&mut conn)
        .unwrap();
    let balance = Amount::parse(&balance).unwrap();
    let after = balance
        .checked_sub(Amount::parse("30.50").unwrap())
        .unwrap();
    redis::pipe()
        .atomic()
        .lrem("wallet:a3:log", 1, credit)
        .hset("wallet:a3", "balance", after.to_string())
        .hincr("wallet:a3", "version", -1)
        .query::<()>(&mut conn)
        .unwrap();

    let lines = violations(&url);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        "totals_mismatch: USD: total balance 126.75 != openings 150.00 + deposits 7.25"
    );
    assert_eq!(
        lines[1],
        "missing_entry key=t1 wallets=a2,a3: 0 credit(s) in wallet:a3:log, the outcome \
         says 30.50"
    );
    // The entries after the deleted one moved down a number: t2's debit is no longer the
    // entry its outcome made.
    assert!(
        lines[2].starts_with("misplaced_entry key=t2 wallets=a3,a1: debit 5.00 in wallet:a3:")
            && lines[2].ends_with("is entry 1 of wallet:a3, the outcome says entry 2"),
        "{lines:?}"
    );
}

#[test]
fn a_move_into_a_wallet_of_another_currency_is_named_by_the_audit() {
    let redis = RedisServer::start();
    let url = redis.url();
    let service = ledger(&redis);
    // The engine refuses it: a FAILED outcome, no entries.
    let fx = TransferRequest::new("t_fx", "a1", "e1", "5.00", Currency::USD).unwrap();
    assert_eq!(service.transfer(&fx).unwrap().status, Status::Failed);
    assert_clean(&url);

    // Forced by hand: the outcome marked COMPLETED, the money moved into the EUR wallet.
    let mut conn = redis.conn();
    redis::cmd("HSET")
        .arg("transfer:t_fx")
        .arg(&[("s", "COMPLETED")])
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("HDEL")
        .arg("transfer:t_fx")
        .arg("r")
        .query::<()>(&mut conn)
        .unwrap();
    apply_by_hand(&mut conn, "t_fx", "a1", "e1", "5.00");
    let lines = violations(&url);
    assert_eq!(
        lines,
        [
            "totals_mismatch: EUR: total balance 25.00 != openings 20.00 + deposits 0.00",
            "totals_mismatch: USD: total balance 152.25 != openings 150.00 + deposits 7.25",
            "currency_mismatch key=t_fx wallets=a1,e1: credit of 5.00 in wallet:e1:log (a \
             EUR wallet) for a USD transfer",
        ]
    );
}

#[test]
fn a_history_that_is_not_a_list_is_reported_not_an_error() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _service = ledger(&redis);
    assert_clean(&url);
    let mut conn = redis.conn();
    redis::pipe()
        .atomic()
        .del("wallet:a1:log")
        .set("wallet:a1:log", "oops")
        .query::<()>(&mut conn)
        .unwrap();
    let lines = violations(&url);
    assert!(
        lines[0]
            .starts_with("history_unreadable wallets=a1: wallet:a1:history or wallet:a1:log: not a readable history"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("missing_entry key=t0")),
        "{lines:?}"
    );
}

/// Transfers of the live load: about 10 s at `--rate 150`, over 600 wallets (two scan
/// batches, so transfers also land between the reads of a sender and a receiver).
const LIVE_TRANSFERS: u64 = 1_500;

#[test]
fn audits_during_a_live_e2e_bench_all_pass() {
    let stack = Stack::start(2);
    let url = stack.redis.url();
    let worker = stack.spawn_worker(&[]);
    assert_clean(&url);
    let logs = tempfile::tempdir().expect("temporary folder");
    let (out_path, err_path) = (logs.path().join("out"), logs.path().join("err"));
    let mut bench = crate::support::tied(&mut Command::new(WALLET_BIN))
        .args(stack.global_args())
        .args(["bench", "--e2e", "--json", "--timeout-s", "240"])
        .args(["--transfers", &LIVE_TRANSFERS.to_string()])
        .args(["--wallets", "600", "--rate", "150"])
        .args(["--requests-topic", &stack.topics.requests])
        .args(["--results-topic", &stack.topics.results])
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .expect("spawn wallet bench");
    let started = Instant::now();
    // (transfers checked, re-read passes) of each audit run while the bench runs.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    while bench.try_wait().expect("bench status").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "bench did not end"
        );
        let out = audit(&url, true);
        assert_eq!(
            out.status.code(),
            Some(0),
            "audit {} during the load: {}\nworker log:\n{}",
            runs.len() + 1,
            text(&out.stderr),
            worker.log()
        );
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON object");
        let field = |name: &str| report[name].as_u64().expect(name);
        runs.push((field("transfers_checked"), field("settle_passes")));
    }
    let status = bench.wait().expect("bench status");
    let bench_err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "bench: {bench_err}");
    let bench_out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let bench_report: serde_json::Value = serde_json::from_str(bench_out.trim()).expect("JSON");
    assert_eq!(bench_report["balance"]["ok"], true, "{bench_report}");
    let live = runs
        .iter()
        .filter(|(n, _)| (1..LIVE_TRANSFERS).contains(n))
        .count();
    let reread = runs.iter().filter(|(_, passes)| *passes > 0).count();
    println!(
        "{} audits in {:?}: {live} while transfers ran, {reread} read again what transfers \
         finishing during the scan left half seen (most passes: {})",
        runs.len(),
        started.elapsed(),
        runs.iter().map(|r| r.1).max().unwrap_or(0)
    );
    // Fewer overlaps (a machine too busy for the audits to keep up with the load) test less,
    // and break nothing: reported, not failed.
    if live < 3 {
        println!("only {live} audits overlapped the load (a busy machine): {runs:?}");
    }
    let out = audit(&url, true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The bench's one warm-up transfer comes on top of the run's.
    assert_eq!(report["transfers_checked"], LIVE_TRANSFERS + 1, "{report}");
    assert_eq!(
        report["settle_passes"], 0,
        "a quiet ledger needs no re-read"
    );
}

// ---- histories trimmed into checkpoints (history_max_entries) ----

/// Most history entries each wallet keeps in the trimmed ledgers below.
const KEPT: u64 = 4;

/// A small xorshift generator: the same load on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Six wallets w0..w5 of 100.00 USD keeping [`KEPT`] entries each, and a random load of 300
/// transfers (some FAILED for want of funds) and deposits through the engine; returns the
/// service and the sum of the deposits.
fn trimmed_ledger(redis: &RedisServer) -> (WalletService, Amount) {
    let config = EngineConfig::default().with_history_max_entries(Some(KEPT));
    let service = redis.service(2, config);
    let ids: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    let wallets: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "100.00")).collect();
    create_wallets(&service, &wallets);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut deposits = Amount::ZERO;
    for i in 0..300 {
        let from = &ids[rng.below(6) as usize];
        if rng.below(5) == 0 {
            let amount = Amount::from_minor(1 + rng.below(500) as i64);
            service.deposit(from, amount).unwrap();
            deposits = deposits.checked_add(amount).unwrap();
            continue;
        }
        let to = &ids[rng.below(6) as usize];
        let amount = Amount::from_minor(1 + rng.below(4_000) as i64).to_string();
        let request = TransferRequest::new(&format!("r{i}"), from, to, &amount, Currency::USD);
        service.transfer(&request.unwrap()).unwrap();
    }
    (service, deposits)
}

/// The `hc` of `wallet`, which must have been trimmed.
fn trimmed_count(conn: &mut redis::Connection, wallet: &str) -> u64 {
    let hc: Option<u64> = redis::cmd("HGET")
        .arg(format!("wallet:{wallet}"))
        .arg("hc")
        .query(conn)
        .unwrap();
    let hc = hc.unwrap_or(0);
    assert!(hc > 0, "{wallet} has a checkpoint");
    hc
}

fn hincrby(conn: &mut redis::Connection, wallet: &str, field: &str, by: i64) {
    redis::cmd("HINCRBY")
        .arg(format!("wallet:{wallet}"))
        .arg(field)
        .arg(by)
        .query::<()>(conn)
        .unwrap();
}

#[test]
fn a_random_load_with_deposits_and_trimmed_histories_audits_clean() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_service, deposits) = trimmed_ledger(&redis);
    let report = clean_report(&url);
    assert_eq!(report["wallets_with_checkpoint"], 6, "{report}");
    let field = |name: &str| report[name].as_u64().expect(name);
    assert!(field("entries_trimmed") > 6 * 10, "{report}");
    assert!(field("history_entries") <= 6 * (KEPT + 1), "{report}");
    assert!(field("entries_before_window") > 100, "{report}");
    let usd = &report["currencies"][0];
    assert_eq!(usd["deposits"], deposits.to_string(), "{report}");
    assert_ne!(usd["trimmed_deposits"], "0.00", "{report}");
    assert!(
        report["horizon"]
            .as_str()
            .unwrap()
            .contains("checked only through the checkpoints"),
        "{report}"
    );
    let out = audit(&url, false);
    let summary = text(&out.stdout);
    assert!(
        summary.contains("horizon: 6 wallet(s) have a checkpoint"),
        "{summary}"
    );
}

#[test]
fn a_checkpoint_sum_edited_by_hand_makes_the_audit_fail_and_name_the_wallet() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _ledger = trimmed_ledger(&redis);
    let mut conn = redis.conn();
    trimmed_count(&mut conn, "w2");
    hincrby(&mut conn, "w2", "hb", 100);
    let lines = violations(&url);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("balance_mismatch wallets=w2: wallet:w2: balance "),
        "{lines:?}"
    );
    let out = audit(&url, true);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let v = &report["violations"][0];
    assert_eq!(
        (&v["kind"], &v["wallets"]),
        (&"balance_mismatch".into(), &serde_json::json!(["w2"])),
        "{report}"
    );
}

#[test]
fn money_created_in_a_balance_and_its_checkpoint_together_is_caught_by_the_currency_total() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (service, deposits) = trimmed_ledger(&redis);
    let mut conn = redis.conn();
    trimmed_count(&mut conn, "w3");
    let balance = service.balance("w3").unwrap();
    let raised = balance.checked_add(Amount::from_minor(100)).unwrap();
    redis::pipe()
        .atomic()
        .hset("wallet:w3", "balance", raised.to_string())
        .hincr("wallet:w3", "hb", 100)
        .query::<()>(&mut conn)
        .unwrap();
    let lines = violations(&url);
    let openings = Amount::parse("600.00").unwrap();
    let total = openings.checked_add(deposits).unwrap();
    let created = total.checked_add(Amount::from_minor(100)).unwrap();
    assert_eq!(
        lines,
        [format!(
            "totals_mismatch: USD: total balance {created} != openings {openings} + deposits \
             {deposits}"
        )]
    );
}

#[test]
fn a_trimmed_count_edited_by_hand_is_caught_by_the_version_rule() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _ledger = trimmed_ledger(&redis);
    let mut conn = redis.conn();
    let hc = trimmed_count(&mut conn, "w4");
    hincrby(&mut conn, "w4", "hc", 1);
    let lines = violations(&url);
    let version_rule = format!("{} trimmed + ", hc + 1);
    assert!(
        lines.iter().any(
            |l| l.starts_with("version_mismatch wallets=w4: wallet:w4: version ")
                && l.contains(&version_rule)
        ),
        "{lines:?}"
    );
}

#[test]
fn an_entry_whose_outcome_expired_counts_as_expired_only_past_the_outcome_ttl() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _service = ledger(&redis);
    // t1's record gone, as an outcome ttl would make it go.
    let mut conn = redis.conn();
    redis::cmd("DEL")
        .arg("transfer:t1")
        .query::<()>(&mut conn)
        .unwrap();
    let lines = violations(&url);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("entry_without_outcome key=t1 wallets=a2,a3"),
        "{lines:?}"
    );
    // An hour's ttl: t1's entries are younger, their outcome had to be there.
    let out = audit_with(&url, &["--outcome-ttl-ms", "3600000"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    // A 1 ms ttl (from the environment): the entries were written before the audit started.
    let out = audit_with(&url, &["--json"], &[("OUTCOME_TTL_MS", "1")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["outcomes_expired"], &report["outcome_ttl_ms"]),
        (&2.into(), &1.into()),
        "{report}"
    );
}

/// Transfers of one live load with trimmed histories: about 4 s at `--rate 150` over 40
/// wallets, so each wallet's window of 4 entries moves many times during the run.
const TRIMMED_LIVE_TRANSFERS: u64 = 600;

/// Audits that must have seen trims while a load ran.
const LIVE_AUDITS_WITH_TRIMS: usize = 3;

/// Loads run at most: a machine too busy for enough audits to overlap one load runs another
/// rather than failing (it cannot tell), up to this many.
const LIVE_LOADS_LIMIT: usize = 5;

/// (entries trimmed, re-read passes, outcome scans) of one audit run.
type AuditRun = (u64, u64, u64);

#[test]
fn audits_during_a_live_e2e_bench_with_trimmed_histories_all_pass() {
    let stack = Stack::start(2);
    let url = stack.redis.url();
    let kept = KEPT.to_string();
    let worker = stack.spawn_worker(&["--history-max-entries", &kept]);
    let started = Instant::now();
    let mut runs: Vec<AuditRun> = Vec::new();
    let mut loads = 0;
    let trimmed_live = |runs: &[AuditRun]| runs.iter().filter(|r| r.0 > 0).count();
    while trimmed_live(&runs) < LIVE_AUDITS_WITH_TRIMS {
        assert!(
            loads < LIVE_LOADS_LIMIT,
            "after {loads} loads only {} of {} audits saw trims",
            trimmed_live(&runs),
            runs.len()
        );
        loads += 1;
        audit_while_a_bench_runs(&stack, &url, &worker, &mut runs);
    }
    println!(
        "{} audits over {loads} loads in {:?} over trimmed histories: {} read again, {} scanned the outcomes twice",
        runs.len(),
        started.elapsed(),
        runs.iter().filter(|r| r.1 > 0).count(),
        runs.iter().filter(|r| r.2 > 1).count()
    );
    let report = clean_report(&url);
    assert_eq!(
        report["transfers_checked"],
        loads as u64 * (TRIMMED_LIVE_TRANSFERS + 1),
        "{report}"
    );
    assert!(
        report["entries_before_window"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// Runs one `wallet bench --e2e` load of [`TRIMMED_LIVE_TRANSFERS`] and audits again and
/// again until it ends; each audit must pass. Appends each audit's figures to `runs`.
fn audit_while_a_bench_runs(
    stack: &Stack,
    url: &str,
    worker: &WorkerProcess,
    runs: &mut Vec<AuditRun>,
) {
    // A guard: a failed audit below kills the bench with it.
    let mut bench = Proc::spawn(
        Command::new(WALLET_BIN)
            .args(stack.global_args())
            .args(["bench", "--e2e", "--json", "--timeout-s", "240"])
            .args(["--transfers", &TRIMMED_LIVE_TRANSFERS.to_string()])
            .args(["--wallets", "40", "--rate", "150"])
            .args(["--requests-topic", &stack.topics.requests])
            .args(["--results-topic", &stack.topics.results])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "wallet bench",
    );
    let started = Instant::now();
    let code = loop {
        if let Some(code) = bench.exited() {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "bench did not end"
        );
        let out = audit(url, true);
        assert_eq!(
            out.status.code(),
            Some(0),
            "audit {} during the load: {}\nworker log:\n{}",
            runs.len() + 1,
            text(&out.stderr),
            worker.log()
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let field = |name: &str| report[name].as_u64().expect(name);
        runs.push((
            field("entries_trimmed"),
            field("settle_passes"),
            field("outcome_scans"),
        ));
    };
    assert_eq!(code, Some(0), "wallet bench's exit");
}
