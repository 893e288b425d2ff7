//! The fault suite's shared pieces: sizes (short by default, full with `FAULT_SCALE=full`), a
//! replayable seed (`FAULT_SEED`), waiting until every request has an outcome, and the
//! exactly-once checker that each fault test ends with.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::wallet::HistoryKind;
use wallet_transfer::tools::ops;
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, Status, TransferCompleted, TransferRequest,
};

use super::stack::{ReadMessage, Stack, TopicReader};

/// True when `FAULT_SCALE=full` (what `make fault-test` sets).
pub fn full_scale() -> bool {
    std::env::var("FAULT_SCALE").is_ok_and(|v| v == "full")
}

/// `short` in the default run, `full` under `FAULT_SCALE=full`.
pub fn size(short: usize, full: usize) -> usize {
    if full_scale() { full } else { short }
}

/// The seed of a test's random choices: `FAULT_SEED` when set, else a random one. Printed, so a
/// failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("FAULT_SEED") {
        Ok(s) => s.trim().parse().expect("FAULT_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!(
        "{test}: seed {seed} (replay: FAULT_SEED={seed}), scale {}",
        if full_scale() { "full" } else { "short" }
    );
    seed
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Creates wallets `{prefix}0..` with `balance` each; returns their ids.
pub fn wallets(stack: &Stack, prefix: &str, n: usize, balance: &str) -> Vec<String> {
    let service = stack.redis.service(2, EngineConfig::default());
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), balance)).collect();
    super::create_wallets(&service, &pairs);
    ids
}

/// `count` requests between random wallets of `ids` (from != to), amounts in cents drawn from
/// `cents`, unique transfer ids (and so unique idempotency keys) `{prefix}{i}`.
pub fn requests(
    ids: &[String],
    count: usize,
    prefix: &str,
    cents: std::ops::Range<i64>,
    rng: &mut rand::rngs::StdRng,
) -> Vec<TransferRequest> {
    (0..count)
        .map(|i| {
            let from = rng.random_range(0..ids.len());
            let mut to = rng.random_range(0..ids.len() - 1);
            if to >= from {
                to += 1;
            }
            let amount = Amount::from_minor(rng.random_range(cents.clone())).to_string();
            TransferRequest::new(
                &format!("{prefix}{i}"),
                &ids[from],
                &ids[to],
                &amount,
                Currency::USD,
            )
            .expect("valid test request")
        })
        .collect()
}

/// Reads the results topic until every request in `requests` has at least one result and a
/// recorded outcome, or `timeout_ms` passes. Returns the time it took; on timeout returns
/// `None` (the checker then counts the missing ones as lost).
pub fn wait_for_outcomes(
    stack: &Stack,
    results: &mut TopicReader,
    requests: &[TransferRequest],
    timeout_ms: u64,
) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(timeout_ms);
    let wanted: HashSet<&str> = requests.iter().map(|r| r.transfer_id.as_str()).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut read = 0;
    loop {
        for m in &results.messages[read..] {
            if let Ok(r) = serde_json::from_slice::<TransferCompleted>(&m.payload)
                && wanted.contains(r.transfer_id.as_str())
            {
                seen.insert(r.transfer_id);
            }
        }
        read = results.messages.len();
        if seen.len() == wanted.len() && all_recorded(stack, requests) {
            return Some(start.elapsed());
        }
        if Instant::now() >= deadline {
            println!(
                "gave up after {timeout_ms} ms: {} of {} requests have a result",
                seen.len(),
                wanted.len()
            );
            return None;
        }
        results.drain_tolerant(200);
    }
}

/// How many of `requests` have a recorded outcome (0 while Redis does not answer).
pub fn recorded(stack: &Stack, requests: &[TransferRequest]) -> usize {
    let Ok(client) = redis::Client::open(stack.redis.url()) else {
        return 0;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return 0;
    };
    let mut pipe = redis::pipe();
    for r in requests {
        pipe.exists(format!("transfer:{}", r.idempotency_key));
    }
    pipe.query::<Vec<bool>>(&mut conn)
        .map(|found| found.into_iter().filter(|f| *f).count())
        .unwrap_or(0)
}

/// Waits until at least `count` of `requests` have a recorded outcome: real progress, unlike
/// the results topic, which a reader sees late.
pub fn wait_recorded(stack: &Stack, requests: &[TransferRequest], count: usize, timeout_ms: u64) {
    super::wait_until(&format!("{count} recorded outcomes"), timeout_ms, || {
        recorded(stack, requests) >= count
    });
}

/// Whether every request has a recorded outcome. Redis errors (it may be restarting) count as
/// "not yet".
fn all_recorded(stack: &Stack, requests: &[TransferRequest]) -> bool {
    let Ok(client) = redis::Client::open(stack.redis.url()) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    requests.chunks(500).all(|batch| {
        let mut pipe = redis::pipe();
        for r in batch {
            pipe.exists(format!("transfer:{}", r.idempotency_key));
        }
        pipe.query::<Vec<bool>>(&mut conn)
            .is_ok_and(|found| found.into_iter().all(|f| f))
    })
}

/// What one fault scenario found. `violations` lists every broken claim; the test asserts it
/// is empty after printing the row.
#[derive(Debug, Clone)]
pub struct FaultReport {
    pub fault: String,
    /// How many times the fault was injected.
    pub injected: usize,
    pub requests: usize,
    /// Requests without a recorded outcome or without any result message.
    pub lost: usize,
    /// Requests with more than one effect (more history entries than their outcome allows).
    pub doubled: usize,
    pub audit_ok: bool,
    /// From the end of the last fault until every request had an outcome.
    pub recovery: Option<Duration>,
    pub violations: Vec<String>,
}

impl FaultReport {
    pub fn header() -> String {
        format!(
            "| {:<34} | {:>8} | {:>8} | {:>5} | {:>7} | {:>5} | {:>10} |",
            "fault", "injected", "requests", "lost", "doubled", "audit", "recovery"
        )
    }

    pub fn row(&self) -> String {
        format!(
            "| {:<34} | {:>8} | {:>8} | {:>5} | {:>7} | {:>5} | {:>10} |",
            self.fault,
            self.injected,
            self.requests,
            self.lost,
            self.doubled,
            if self.audit_ok { "ok" } else { "FAIL" },
            match self.recovery {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => "timeout".to_string(),
            }
        )
    }

    /// Prints the table row (and the violations), then fails the test if any claim broke.
    pub fn print_and_assert(&self) {
        println!("{}", FaultReport::header());
        println!("{}", self.row());
        for v in self.violations.iter().take(50) {
            println!("  violation: {v}");
        }
        assert!(
            self.violations.is_empty(),
            "{}: {} violations, first: {:?}",
            self.fault,
            self.violations.len(),
            self.violations.first()
        );
    }
}

/// The exactly-once checker. For every request in `requests`:
///
/// - it has a recorded outcome (`transfer:{idempotency_key}`) and at least one result message,
///   else it is lost;
/// - its history entries across all wallets: exactly a debit of its amount on `from_user` and a
///   credit on `to_user` when COMPLETED, none otherwise (more is "doubled");
/// - every result message for it agrees with the recorded outcome (status, reason, amount);
/// - when `no_failures`, its outcome is COMPLETED (the scenario gave every wallet enough money,
///   so any FAILED would have been caused by the fault).
///
/// And for the whole ledger: `ops::audit` has no violations, and no `lock:*` key lives without
/// a ttl.
pub fn check(
    stack: &Stack,
    fault: &str,
    injected: usize,
    requests: &[TransferRequest],
    results: &[ReadMessage],
    recovery: Option<Duration>,
    no_failures: bool,
) -> FaultReport {
    let service = stack.redis.service(2, EngineConfig::default());
    let mut violations = Vec::new();

    // Results per transfer id.
    let mut by_id: HashMap<String, Vec<TransferCompleted>> = HashMap::new();
    for m in results {
        match serde_json::from_slice::<TransferCompleted>(&m.payload) {
            Ok(r) => by_id.entry(r.transfer_id.clone()).or_default().push(r),
            Err(e) => violations.push(format!(
                "result at partition {} offset {} is not a result: {e}",
                m.partition, m.offset
            )),
        }
    }

    // History entries per transfer id, over every wallet.
    let audit = ops::audit(&service).expect("audit reads redis");
    let wallet_ids: Vec<String> = {
        let mut conn = stack.redis.conn();
        redis::cmd("SMEMBERS")
            .arg("wallets:all")
            .query(&mut conn)
            .expect("wallets:all")
    };
    let mut history: HashMap<String, Vec<(String, HistoryKind, Amount)>> = HashMap::new();
    for id in &wallet_ids {
        for e in service.history(id).expect("history") {
            history
                .entry(e.transfer_id.clone())
                .or_default()
                .push((id.clone(), e.kind, e.amount));
        }
    }

    let mut lost = 0;
    let mut doubled = 0;
    let mut failed = 0;
    for r in requests {
        let outcome = service
            .transfer_outcome(&r.idempotency_key)
            .expect("read outcome");
        let entries = history
            .get(&r.transfer_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let answers = by_id.get(&r.transfer_id).map(Vec::as_slice).unwrap_or(&[]);
        let Some(outcome) = outcome else {
            lost += 1;
            violations.push(format!("{}: no recorded outcome", r.transfer_id));
            if !entries.is_empty() {
                doubled += 1;
                violations.push(format!(
                    "{}: {} history entries but no outcome",
                    r.transfer_id,
                    entries.len()
                ));
            }
            continue;
        };
        if answers.is_empty() {
            lost += 1;
            violations.push(format!("{}: no result message", r.transfer_id));
        }
        if outcome.transfer_id != r.transfer_id {
            violations.push(format!(
                "{}: outcome recorded for {}",
                r.transfer_id, outcome.transfer_id
            ));
        }
        let expected = match outcome.status {
            Status::Completed => vec![
                (r.from_user.clone(), HistoryKind::Debit, r.amount),
                (r.to_user.clone(), HistoryKind::Credit, r.amount),
            ],
            Status::Failed => {
                failed += 1;
                Vec::new()
            }
        };
        if entries.len() > expected.len() {
            doubled += 1;
        }
        let mut got = entries.to_vec();
        got.sort_by_key(|(w, k, _)| (w.clone(), k.as_str()));
        let mut want = expected;
        want.sort_by_key(|(w, k, _)| (w.clone(), k.as_str()));
        if got != want {
            violations.push(format!(
                "{}: {:?} outcome, history entries {got:?}, expected {want:?}",
                r.transfer_id, outcome.status
            ));
        }
        if no_failures && outcome.status != Status::Completed {
            violations.push(format!(
                "{}: FAILED ({:?}) although every wallet could pay",
                r.transfer_id, outcome.reason
            ));
        }
        if outcome.status == Status::Failed
            && !matches!(
                outcome.reason,
                Some(
                    FailureReason::InsufficientFunds
                        | FailureReason::SameUser
                        | FailureReason::WalletNotFound
                        | FailureReason::WalletInactive
                        | FailureReason::CurrencyMismatch
                )
            )
        {
            violations.push(format!(
                "{}: recorded FAILED with a non-business reason {:?}",
                r.transfer_id, outcome.reason
            ));
        }
        for a in answers {
            if a.status != outcome.status
                || a.reason != outcome.reason
                || a.amount != outcome.amount.to_string()
                || a.idempotency_key != r.idempotency_key
            {
                violations.push(format!(
                    "{}: result {:?}/{:?} (amount {}) disagrees with the record {:?}/{:?}",
                    r.transfer_id, a.status, a.reason, a.amount, outcome.status, outcome.reason
                ));
            }
        }
    }
    if failed > 0 {
        println!("{fault}: {failed} of {} requests FAILED", requests.len());
    }

    let audit_ok = audit.violations.is_empty();
    for v in &audit.violations {
        violations.push(format!("audit: {v}"));
    }

    let mut conn = stack.redis.conn();
    for key in super::lock_keys(&mut conn) {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("PTTL");
        if ttl == -1 {
            violations.push(format!("{key} has no ttl"));
        }
    }

    FaultReport {
        fault: fault.to_string(),
        injected,
        requests: requests.len(),
        lost,
        doubled,
        audit_ok,
        recovery,
        violations,
    }
}
