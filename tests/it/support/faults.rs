//! The fault suite's shared pieces: sizes (short by default, full with `FAULT_SCALE=full`), a
//! replayable seed (`FAULT_SEED`), waiting until every request has an outcome, and the
//! exactly-once checker that each fault test ends with.
//!
//! The checker adds only what needs the run's requests and the output topics (lost requests,
//! effects counted from the histories, results agreeing with the records, the ledger topic
//! holding each COMPLETED transfer's two entries); the ledger in Redis itself is checked by the
//! operator tools, `ops::audit` and `ops::locks`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::wallet::HistoryKind;
use wallet_transfer::tools::ops;
use wallet_transfer::tools::results::{self, ReadMessage};
use wallet_transfer::worker::ledger::LedgerEntry;
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, Status, TransferCompleted, TransferOutcome,
    TransferRequest, WalletService,
};

use super::TestRedis;
use super::stack::{Stack, TopicLog, results_by_id};

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
pub fn wait_for_outcomes<R: TestRedis>(
    stack: &Stack<R>,
    results: &mut TopicLog,
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
            if let Ok(r) = m.result()
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

/// How many of `requests` have an outcome record (PENDING included), on one Redis or on each
/// sender's primary: pipelined `EXISTS` over fresh connections ([`TestRedis`]). 0 while a read
/// fails (a server restarting, a slot without an owner).
pub fn recorded<R: TestRedis>(stack: &Stack<R>, requests: &[TransferRequest]) -> usize {
    let space = stack.redis.key_space();
    let keys = requests
        .iter()
        .map(|r| space.outcome(&r.from_user, &r.idempotency_key))
        .collect();
    let Ok(groups) = stack.redis.conns_for(keys) else {
        return 0;
    };
    let mut found = 0;
    for (mut conn, keys) in groups {
        for batch in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.exists(key);
            }
            match pipe.query::<Vec<bool>>(&mut conn) {
                Ok(exists) => found += exists.into_iter().filter(|e| *e).count(),
                Err(_) => return 0,
            }
        }
    }
    found
}

/// Waits until at least `count` of `requests` have a recorded outcome: real progress, unlike
/// the results topic, which a reader sees late.
pub fn wait_recorded<R: TestRedis>(
    stack: &Stack<R>,
    requests: &[TransferRequest],
    count: usize,
    timeout_ms: u64,
) {
    super::wait_until(&format!("{count} recorded outcomes"), timeout_ms, || {
        recorded(stack, requests) >= count
    });
}

/// Whether every request has a recorded outcome. Redis errors (it may be restarting) count as
/// "not yet".
fn all_recorded<R: TestRedis>(stack: &Stack<R>, requests: &[TransferRequest]) -> bool {
    recorded(stack, requests) == requests.len()
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
    /// Distinct (wallet, version) entries in the ledger topic.
    pub ledger_entries: usize,
    /// Ledger messages beyond the first copy of their entry (republished after a redelivery).
    pub ledger_copies: usize,
    /// From the end of the last fault until every request had an outcome.
    pub recovery: Option<Duration>,
    pub violations: Vec<String>,
}

impl FaultReport {
    pub fn header() -> String {
        format!(
            "| {:<34} | {:>8} | {:>8} | {:>5} | {:>7} | {:>5} | {:>7} | {:>6} | {:>10} |",
            "fault",
            "injected",
            "requests",
            "lost",
            "doubled",
            "audit",
            "ledger",
            "copies",
            "recovery"
        )
    }

    pub fn row(&self) -> String {
        format!(
            "| {:<34} | {:>8} | {:>8} | {:>5} | {:>7} | {:>5} | {:>7} | {:>6} | {:>10} |",
            self.fault,
            self.injected,
            self.requests,
            self.lost,
            self.doubled,
            if self.audit_ok { "ok" } else { "FAIL" },
            self.ledger_entries,
            self.ledger_copies,
            match self.recovery {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                // A run without a fault has nothing to recover from.
                None if self.injected == 0 => "-".to_string(),
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
/// And for the whole ledger, the operator tools' own checks: `ops::audit` has no violations,
/// and `ops::locks` finds no lock without a ttl; and the ledger topic (see [`check_ledger`]).
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
    let run = Run {
        fault,
        injected,
        requests,
        results,
        recovery,
        no_failures,
    };
    check_on(stack, &service, &run)
}

/// What a fault run did, for [`check_on`].
pub struct Run<'a> {
    pub fault: &'a str,
    pub injected: usize,
    pub requests: &'a [TransferRequest],
    pub results: &'a [ReadMessage],
    pub recovery: Option<Duration>,
    pub no_failures: bool,
}

/// [`check`] on any topology: `service` reads the records (`transfer_outcome_of`, on each
/// sender's shard), the histories of the requests' wallets, the audit and the locks; the one
/// exactly-once checker of the fault suite and of the cluster's fault tests.
pub fn check_on<R>(stack: &Stack<R>, service: &WalletService, run: &Run<'_>) -> FaultReport {
    let (fault, requests) = (run.fault, run.requests);
    let mut violations = Vec::new();
    let by_id = results_by_id(run.results, &mut violations);
    let audit = ops::audit(service).expect("audit reads redis");
    let checked = check_requests(service, requests, &by_id, true, run.no_failures);
    let (lost, doubled, completed) = (checked.lost, checked.doubled, checked.completed);
    violations.extend(checked.violations);
    if checked.failed > 0 {
        println!(
            "{fault}: {} of {} requests FAILED",
            checked.failed,
            requests.len()
        );
    }
    violations.extend(audit.violations.iter().map(|v| format!("audit: {v}")));
    let locks = ops::locks(service).expect("locks read redis");
    for lock in locks.iter().filter(|l| l.is_problem()) {
        violations.push(format!("{} has no ttl", lock.key));
    }
    let ledger = read_ledger(stack, &completed, LEDGER_WAIT_MS);
    let found = check_ledger(&completed, &ledger);
    println!(
        "{fault}: ledger topic: {} entries for {} COMPLETED transfers, {} republished copies",
        found.entries,
        completed.len(),
        found.copies
    );
    violations.extend(found.violations);
    FaultReport {
        fault: fault.to_string(),
        injected: run.injected,
        requests: requests.len(),
        lost,
        doubled,
        audit_ok: audit.is_ok(),
        ledger_entries: found.entries,
        ledger_copies: found.copies,
        recovery: run.recovery,
        violations,
    }
}

/// What [`check_requests`] found over a run's requests.
pub struct RequestsFindings {
    /// Requests without a recorded outcome or (when answers are expected) without a result.
    pub lost: usize,
    /// Requests without a recorded outcome.
    pub unrecorded: usize,
    /// Requests without a result message.
    pub unanswered: usize,
    /// Requests with more history entries than their outcome allows.
    pub doubled: usize,
    /// Requests whose outcome is FAILED.
    pub failed: usize,
    /// The COMPLETED outcomes, by idempotency key.
    pub completed: HashMap<String, TransferOutcome>,
    /// Every broken claim, one line each.
    pub violations: Vec<String>,
}

/// The per-request half of the exactly-once checker ([`check_on`] is this plus the audit,
/// the locks and the ledger topic), on any topology: each of `requests` against its record
/// (read with `service` on its sender's shard), its history entries and its result messages
/// `by_id` (see [`check_request`]). With `answered` false the results were never published
/// (only a recovery sweep finished the requests): a request without one is counted in
/// `unanswered`, not reported; otherwise it is a violation and counts as lost.
pub fn check_requests(
    service: &WalletService,
    requests: &[TransferRequest],
    by_id: &HashMap<String, Vec<TransferCompleted>>,
    answered: bool,
    no_failures: bool,
) -> RequestsFindings {
    let effects = effects_by_transfer(service, requests);
    let mut found = RequestsFindings {
        lost: 0,
        unrecorded: 0,
        unanswered: 0,
        doubled: 0,
        failed: 0,
        completed: HashMap::new(),
        violations: Vec::new(),
    };
    for r in requests {
        let outcome = service
            .transfer_outcome_of(&r.from_user, &r.idempotency_key)
            .expect("read outcome");
        if let Some(o) = outcome.as_ref().filter(|o| o.status == Status::Completed) {
            found.completed.insert(r.idempotency_key.clone(), o.clone());
        }
        let entries = effects.get(&r.transfer_id).map_or(&[][..], Vec::as_slice);
        let answers = by_id.get(&r.transfer_id).map_or(&[][..], Vec::as_slice);
        let one = check_request(r, outcome.as_ref(), entries, answers, no_failures);
        found.lost += usize::from(one.unrecorded || (answered && one.unanswered));
        found.unrecorded += usize::from(one.unrecorded);
        found.unanswered += usize::from(one.unanswered);
        found.doubled += usize::from(one.doubled);
        found.failed += usize::from(outcome.is_some_and(|o| o.status == Status::Failed));
        if answered && one.unanswered && !one.unrecorded {
            found
                .violations
                .push(format!("{}: no result message", r.transfer_id));
        }
        found.violations.extend(one.violations);
    }
    found
}

/// Longest wait for the ledger topic to hold the entries of every COMPLETED outcome.
pub const LEDGER_WAIT_MS: u64 = 60_000;

/// The (wallet, version) entries a COMPLETED outcome must have in the ledger topic.
fn wanted_entries(outcomes: &HashMap<String, TransferOutcome>) -> HashSet<(String, u64)> {
    outcomes
        .values()
        .flat_map(|o| {
            [
                o.from_version_after.map(|v| (o.from_user.clone(), v)),
                o.to_version_after.map(|v| (o.to_user.clone(), v)),
            ]
        })
        .flatten()
        .collect()
}

/// Every message of the ledger topic, read to its end again and again until the entries of
/// every outcome in `completed` are there, or `timeout_ms` passes (the checker then reports
/// what is missing). A republication after a redelivery may land after the result a test
/// waited for.
pub fn read_ledger<R>(
    stack: &Stack<R>,
    completed: &HashMap<String, TransferOutcome>,
    timeout_ms: u64,
) -> Vec<ReadMessage> {
    let wanted = wanted_entries(completed);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let mut messages = Vec::new();
        let read = results::read_to_end(
            &stack.kafka(),
            &stack.topics.ledger,
            Duration::from_millis(30_000),
            |m| messages.push(m.clone()),
            |_, _| {},
        );
        if let Err(e) = &read {
            println!("reading the ledger topic: {e}");
        }
        let present: HashSet<(String, u64)> = messages
            .iter()
            .filter_map(|m| LedgerEntry::parse(&m.payload).ok())
            .map(|e| (e.wallet_id, e.version))
            .collect();
        if (read.is_ok() && wanted.is_subset(&present)) || Instant::now() >= deadline {
            return messages;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What [`check_ledger`] found.
pub struct LedgerFindings {
    /// Distinct (wallet, version) entries.
    pub entries: usize,
    /// Messages beyond the first copy of their entry.
    pub copies: usize,
    pub violations: Vec<String>,
}

/// The ledger topic against the COMPLETED outcomes of the run (by idempotency key):
///
/// - every message is a ledger entry keyed by its wallet;
/// - copies of one (wallet, version) are byte-identical (republished, never recomputed);
/// - every COMPLETED outcome has exactly one distinct debit (on its sender, at its `fv`, with
///   its `from_balance_after`) and one distinct credit (receiver, `tv`, `to_balance_after`),
///   both of its amount, currency, transfer id and key;
/// - no entry exists for a key without a COMPLETED outcome.
pub fn check_ledger(
    completed: &HashMap<String, TransferOutcome>,
    messages: &[ReadMessage],
) -> LedgerFindings {
    let mut violations = Vec::new();
    let mut by_identity: HashMap<(String, u64), Vec<&[u8]>> = HashMap::new();
    let mut by_key: HashMap<String, Vec<LedgerEntry>> = HashMap::new();
    for m in messages {
        let entry = match LedgerEntry::parse(&m.payload) {
            Ok(e) => e,
            Err(e) => {
                violations.push(format!(
                    "ledger partition {} offset {} is not an entry: {e}",
                    m.partition, m.offset
                ));
                continue;
            }
        };
        if m.key.as_deref() != Some(entry.key()) {
            violations.push(format!(
                "ledger entry {} v{} keyed {:?}",
                entry.wallet_id, entry.version, m.key
            ));
        }
        let copies = by_identity
            .entry((entry.wallet_id.clone(), entry.version))
            .or_default();
        if copies.is_empty() {
            by_key
                .entry(entry.idempotency_key.clone())
                .or_default()
                .push(entry);
        } else if copies[0] != m.payload.as_slice() {
            violations.push(format!(
                "ledger entry {} v{}: copies differ: {} vs {}",
                entry.wallet_id,
                entry.version,
                String::from_utf8_lossy(copies[0]),
                String::from_utf8_lossy(&m.payload)
            ));
        }
        copies.push(&m.payload);
    }
    for (key, outcome) in completed {
        let entries = by_key.remove(key).unwrap_or_default();
        violations.extend(outcome_entries_violations(key, outcome, &entries));
    }
    for (key, entries) in by_key {
        violations.push(format!(
            "{key}: {} ledger entries but no COMPLETED outcome",
            entries.len()
        ));
    }
    LedgerFindings {
        entries: by_identity.len(),
        copies: by_identity.values().map(|c| c.len() - 1).sum(),
        violations,
    }
}

/// The distinct ledger entries of one COMPLETED outcome: one debit and one credit that agree
/// with it.
fn outcome_entries_violations(
    key: &str,
    o: &TransferOutcome,
    entries: &[LedgerEntry],
) -> Vec<String> {
    let mut violations = Vec::new();
    let sides = [
        (
            HistoryKind::Debit,
            &o.from_user,
            o.from_version_after,
            o.from_balance_after,
        ),
        (
            HistoryKind::Credit,
            &o.to_user,
            o.to_version_after,
            o.to_balance_after,
        ),
    ];
    for (kind, wallet, version, balance) in sides {
        let of_kind: Vec<&LedgerEntry> = entries.iter().filter(|e| e.kind == kind).collect();
        let [entry] = of_kind[..] else {
            violations.push(format!(
                "{key}: {} distinct {} entries in the ledger topic, want 1",
                of_kind.len(),
                kind.as_str()
            ));
            continue;
        };
        let agrees = entry.wallet_id == *wallet
            && Some(entry.version) == version
            && Some(entry.balance_after) == balance
            && entry.amount == o.amount
            && entry.currency == o.currency
            && entry.transfer_id == o.transfer_id;
        if !agrees {
            violations.push(format!(
                "{key}: ledger {} {entry:?} disagrees with the record (wallet {wallet}, version {version:?}, balance {balance:?})",
                kind.as_str()
            ));
        }
    }
    violations
}

/// One history entry: (wallet, kind, amount).
type Effect = (String, HistoryKind, Amount);

/// The history entries of the requests' wallets, per transfer id: how many effects each
/// request had (an entry in another wallet is the audit's to find).
fn effects_by_transfer(
    service: &WalletService,
    requests: &[TransferRequest],
) -> HashMap<String, Vec<Effect>> {
    let wallet_ids: std::collections::BTreeSet<&str> = requests
        .iter()
        .flat_map(|r| [r.from_user.as_str(), r.to_user.as_str()])
        .collect();
    let mut effects: HashMap<String, Vec<Effect>> = HashMap::new();
    for id in wallet_ids {
        for e in service.history(id).expect("history") {
            effects.entry(e.transfer_id.clone()).or_default().push((
                id.to_string(),
                e.kind,
                e.amount,
            ));
        }
    }
    effects
}

/// What [`check_request`] found about one request.
struct RequestFindings {
    /// No recorded outcome.
    unrecorded: bool,
    /// No result message (a violation when results are expected: [`check_requests`]).
    unanswered: bool,
    doubled: bool,
    violations: Vec<String>,
}

/// One request against its recorded `outcome`, its history `entries` and its result
/// messages (`answers`). A missing result is flagged (`unanswered`), not listed: whether it
/// is a violation is [`check_requests`]'s call.
fn check_request(
    r: &TransferRequest,
    outcome: Option<&TransferOutcome>,
    entries: &[Effect],
    answers: &[TransferCompleted],
    no_failures: bool,
) -> RequestFindings {
    let id = &r.transfer_id;
    let Some(outcome) = outcome else {
        let mut violations = vec![format!("{id}: no recorded outcome")];
        if !entries.is_empty() {
            violations.push(format!(
                "{id}: {} history entries but no outcome",
                entries.len()
            ));
        }
        return RequestFindings {
            unrecorded: true,
            unanswered: answers.is_empty(),
            doubled: !entries.is_empty(),
            violations,
        };
    };
    let mut violations = Vec::new();
    if outcome.transfer_id != *id {
        violations.push(format!(
            "{id}: outcome recorded for {}",
            outcome.transfer_id
        ));
    }
    let (doubled, effects) = effects_violation(r, outcome, entries);
    violations.extend(effects);
    violations.extend(outcome_violation(id, outcome, no_failures));
    violations.extend(
        answers
            .iter()
            .filter_map(|a| answer_violation(r, outcome, a)),
    );
    // A redelivery of the message that made the record is answered as the original: a
    // request whose every answer says `duplicate` was told its own transfer happened before.
    if !answers.is_empty() && answers.iter().all(|a| a.duplicate) {
        violations.push(format!(
            "{id}: answered only as a duplicate ({} answers, none the original)",
            answers.len()
        ));
    }
    RequestFindings {
        unrecorded: false,
        unanswered: answers.is_empty(),
        doubled,
        violations,
    }
}

/// Whether the request had more effects than its outcome allows, and what is wrong with them:
/// a COMPLETED transfer is one debit of its amount on `from_user` and one credit on `to_user`,
/// a FAILED one nothing.
fn effects_violation(
    r: &TransferRequest,
    outcome: &TransferOutcome,
    entries: &[Effect],
) -> (bool, Option<String>) {
    let mut want = match outcome.status {
        Status::Completed => vec![
            (r.from_user.clone(), HistoryKind::Debit, r.amount),
            (r.to_user.clone(), HistoryKind::Credit, r.amount),
        ],
        Status::Failed => Vec::new(),
        // Only a cross-slot transfer on a Redis Cluster stops halfway: its debit is done.
        Status::Pending => vec![(r.from_user.clone(), HistoryKind::Debit, r.amount)],
    };
    let doubled = entries.len() > want.len();
    let mut got = entries.to_vec();
    got.sort_by_key(|(w, k, _)| (w.clone(), k.as_str()));
    want.sort_by_key(|(w, k, _)| (w.clone(), k.as_str()));
    let problem = (got != want).then(|| {
        format!(
            "{}: {:?} outcome, history entries {got:?}, expected {want:?}",
            r.transfer_id, outcome.status
        )
    });
    (doubled, problem)
}

/// A FAILED outcome that the scenario rules out, or one with a reason that is not a business
/// rule (a fault must never end in a recorded failure).
fn outcome_violation(id: &str, outcome: &TransferOutcome, no_failures: bool) -> Vec<String> {
    let mut out = Vec::new();
    if no_failures && outcome.status != Status::Completed {
        out.push(format!(
            "{id}: FAILED ({:?}) although every wallet could pay",
            outcome.reason
        ));
    }
    let business = matches!(
        outcome.reason,
        Some(
            FailureReason::InsufficientFunds
                | FailureReason::SameUser
                | FailureReason::WalletNotFound
                | FailureReason::WalletInactive
                | FailureReason::CurrencyMismatch
        )
    );
    if outcome.status == Status::Failed && !business {
        out.push(format!(
            "{id}: recorded FAILED with a non-business reason {:?}",
            outcome.reason
        ));
    }
    out
}

/// A result message that disagrees with the recorded outcome.
fn answer_violation(
    r: &TransferRequest,
    outcome: &TransferOutcome,
    a: &TransferCompleted,
) -> Option<String> {
    let agrees = a.status == outcome.status
        && a.reason == outcome.reason
        && a.amount == outcome.amount.to_string()
        && a.idempotency_key == r.idempotency_key;
    (!agrees).then(|| {
        format!(
            "{}: result {:?}/{:?} (amount {}) disagrees with the record {:?}/{:?}",
            r.transfer_id, a.status, a.reason, a.amount, outcome.status, outcome.reason
        )
    })
}

/// The checker is itself checked: each kind of broken claim is reported, and a sound request
/// is not.
#[test]
fn the_fault_checker_reports_lost_doubled_and_disagreeing_requests() {
    let r = TransferRequest::new("t1", "a", "b", "10.00", Currency::USD).expect("request");
    let ten = r.amount;
    let outcome = TransferOutcome {
        transfer_id: "t1".into(),
        idempotency_key: "t1".into(),
        status: Status::Completed,
        reason: None,
        from_user: "a".into(),
        to_user: "b".into(),
        amount: ten,
        currency: "USD".into(),
        processed_at_ms: 0,
        from_balance_after: None,
        to_balance_after: None,
        from_version_after: None,
        to_version_after: None,
        duplicate: false,
        origin: None,
        request_hash: String::new(),
        stats: Default::default(),
    };
    let answer = outcome.to_message();
    let effects = vec![
        ("a".to_string(), HistoryKind::Debit, ten),
        ("b".to_string(), HistoryKind::Credit, ten),
    ];
    let sound = check_request(
        &r,
        Some(&outcome),
        &effects,
        std::slice::from_ref(&answer),
        true,
    );
    assert!(
        !sound.unrecorded && !sound.unanswered && !sound.doubled,
        "{:?}",
        sound.violations
    );
    assert!(sound.violations.is_empty(), "{:?}", sound.violations);

    let lost = check_request(&r, None, &effects, &[], false);
    assert!(
        lost.unrecorded && lost.doubled,
        "effects without an outcome"
    );
    let unanswered = check_request(&r, Some(&outcome), &effects, &[], false);
    assert!(unanswered.unanswered && !unanswered.unrecorded);

    let mut twice = effects.clone();
    twice.push(("a".to_string(), HistoryKind::Debit, ten));
    let doubled = check_request(
        &r,
        Some(&outcome),
        &twice,
        std::slice::from_ref(&answer),
        false,
    );
    assert!(doubled.doubled && !doubled.unrecorded && !doubled.unanswered);
    assert_eq!(doubled.violations.len(), 1, "{:?}", doubled.violations);

    let mut copy = answer.clone();
    copy.duplicate = true;
    let only_duplicates = check_request(&r, Some(&outcome), &effects, &[copy.clone()], false);
    assert_eq!(
        only_duplicates.violations.len(),
        1,
        "{:?}",
        only_duplicates.violations
    );
    let resent = check_request(&r, Some(&outcome), &effects, &[answer.clone(), copy], false);
    assert!(resent.violations.is_empty(), "{:?}", resent.violations);

    let mut other = answer;
    other.status = Status::Failed;
    let disagreeing = check_request(&r, Some(&outcome), &effects, &[other], false);
    assert_eq!(
        disagreeing.violations.len(),
        1,
        "{:?}",
        disagreeing.violations
    );
    assert!(disagreeing.violations[0].contains("disagrees with the record"));

    let failed = TransferOutcome {
        status: Status::Failed,
        reason: Some(FailureReason::InvalidRequest),
        ..outcome
    };
    let found = check_request(&r, Some(&failed), &[], &[failed.to_message()], true);
    assert_eq!(found.violations.len(), 2, "{:?}", found.violations);
}

/// The ledger checker is itself checked: identical copies are counted, not reported; a copy
/// that differs, a missing side, a wrong balance and an entry without an outcome are.
#[test]
fn the_ledger_checker_reports_missing_differing_and_orphan_entries() {
    let outcome = TransferOutcome {
        transfer_id: "t1".into(),
        idempotency_key: "t1".into(),
        status: Status::Completed,
        reason: None,
        from_user: "a".into(),
        to_user: "b".into(),
        amount: Amount::from_minor(1_000),
        currency: "USD".into(),
        processed_at_ms: 5,
        from_balance_after: Some(Amount::from_minor(9_000)),
        to_balance_after: Some(Amount::from_minor(11_000)),
        from_version_after: Some(3),
        to_version_after: Some(8),
        duplicate: false,
        origin: None,
        request_hash: String::new(),
        stats: Default::default(),
    };
    let entries = wallet_transfer::worker::ledger::entries_for(&outcome).expect("entries");
    let message = |e: &LedgerEntry| ReadMessage {
        partition: 0,
        offset: 0,
        key: Some(e.key().to_vec()),
        payload: e.to_json(),
        headers: HashMap::new(),
        received: Instant::now(),
        timestamp_ms: None,
    };
    let completed = HashMap::from([("t1".to_string(), outcome)]);
    let sound: Vec<ReadMessage> = entries.iter().chain(&entries[..1]).map(message).collect();
    let found = check_ledger(&completed, &sound);
    assert!(found.violations.is_empty(), "{:?}", found.violations);
    assert_eq!((found.entries, found.copies), (2, 1));

    let mut changed = entries[0].clone();
    changed.at_ms += 1;
    let differing = [
        message(&entries[0]),
        message(&changed),
        message(&entries[1]),
    ];
    let found = check_ledger(&completed, &differing);
    assert_eq!(found.violations.len(), 1, "{:?}", found.violations);
    assert!(found.violations[0].contains("copies differ"));

    let found = check_ledger(&completed, &[message(&entries[0])]);
    assert_eq!(found.violations.len(), 1, "{:?}", found.violations);
    assert!(found.violations[0].contains("0 distinct credit"));

    let mut wrong = entries[1].clone();
    wrong.balance_after = Amount::from_minor(1);
    let found = check_ledger(&completed, &[message(&entries[0]), message(&wrong)]);
    assert!(
        found.violations[0].contains("disagrees"),
        "{:?}",
        found.violations
    );

    let mut orphan = entries[0].clone();
    orphan.idempotency_key = "t2".into();
    orphan.version = 4;
    let all = [message(&entries[0]), message(&entries[1]), message(&orphan)];
    let found = check_ledger(&completed, &all);
    assert_eq!(found.violations.len(), 1, "{:?}", found.violations);
    assert!(found.violations[0].contains("no COMPLETED outcome"));
}
