//! Fixtures of the audit's unit tests (in `transfers` and `settle`): wallet hashes, history
//! entries and outcome records as Redis holds them, an auditor fed with them, and the ledgers
//! several tests share.
//!
//! Owns nothing the audit runs: compiled for tests only. Imports the auditor, never the
//! files whose tests use it.

use crate::tools::audit::auditor::Auditor;
use crate::tools::audit::input::{Fields, Plan, RawHistory, Reread, Snapshot, WalletRead};
use crate::tools::audit::report::AuditReport;

pub(super) fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn wallet_in(currency: &str, balance: &str, opening: &str, version: u64) -> Fields {
    let version = version.to_string();
    fields(&[
        ("balance", balance),
        ("opening_balance", opening),
        ("currency", currency),
        ("status", "active"),
        ("version", &version),
    ])
}

pub(super) fn wallet(balance: &str, opening: &str, version: u64) -> Fields {
    wallet_in("USD", balance, opening, version)
}

/// A history entry as the engine writes it (key = transfer id); `n` makes the stream id.
pub(super) fn entry(n: u32, id: &str, kind: &str, amount: &str) -> (String, Fields) {
    let e = fields(&[
        ("transfer_id", id),
        ("idempotency_key", id),
        ("kind", kind),
        ("amount", amount),
        ("balance_after", "0.00"),
        ("at", "1"),
    ]);
    (format!("1-{n}"), e)
}

pub(super) fn deposit(n: u32, id: &str, amount: &str) -> (String, Fields) {
    entry(n, id, "deposit", amount)
}

/// An entry written before the idempotency key was recorded.
pub(super) fn legacy(n: u32, id: &str, kind: &str, amount: &str) -> (String, Fields) {
    let (stream_id, mut e) = entry(n, id, kind, amount);
    e.remove("idempotency_key");
    (stream_id, e)
}

pub(super) fn outcome(id: &str, status: &str, from: &str, to: &str, amount: &str) -> Fields {
    fields(&[
        ("transfer_id", id),
        ("idempotency_key", id),
        ("status", status),
        ("from_user", from),
        ("to_user", to),
        ("amount", amount),
        ("currency", "USD"),
        ("processed_at", "1700000000.000"),
    ])
}

pub(super) fn read(hash: Fields, history: RawHistory) -> WalletRead {
    WalletRead {
        hash: Ok(hash),
        history: Ok(history),
    }
}

/// A wallet whose hash reads and whose history does not (a key of the wrong type).
pub(super) fn unreadable_history(hash: Fields) -> WalletRead {
    WalletRead {
        hash: Ok(hash),
        history: Err("WRONGTYPE".into()),
    }
}

/// Wallets of `wallets:all` and outcome records, read at one moment after everything added
/// before.
pub(super) fn add_at_once(
    a: &mut Auditor,
    wallets: Vec<(&str, WalletRead)>,
    outcomes: &[(&str, Fields)],
) {
    a.ingest(Snapshot {
        listed: true,
        wallets: wallets
            .into_iter()
            .map(|(id, read)| (id.to_string(), read))
            .collect(),
        outcomes: outcomes
            .iter()
            .map(|(k, f)| (k.to_string(), f.clone()))
            .collect(),
    });
}

/// One wallet of `wallets:all`, read whole by the scan after everything added before.
pub(super) fn add_wallet(a: &mut Auditor, id: &str, hash: Fields, history: RawHistory) {
    add_at_once(a, vec![(id, read(hash, history))], &[]);
}

/// Outcome records read by the scan (which reads them before the wallets).
pub(super) fn add_outcomes(a: &mut Auditor, outcomes: &[(&str, Fields)]) {
    a.ingest(Snapshot {
        outcomes: outcomes
            .iter()
            .map(|(k, f)| (k.to_string(), f.clone()))
            .collect(),
        ..Snapshot::default()
    });
}

/// t1: a pays b 10.00; d1: b gets a deposit of 5.00; t2 failed.
pub(super) fn sound() -> Auditor {
    let mut a = Auditor::default();
    add_outcomes(
        &mut a,
        &[
            ("t1", outcome("t1", "COMPLETED", "a", "b", "10.00")),
            ("t2", outcome("t2", "FAILED", "a", "b", "999.00")),
            ("gone", Fields::new()),
        ],
    );
    let a_history = vec![entry(1, "t1", "debit", "10.00")];
    add_wallet(&mut a, "a", wallet("90.00", "100.00", 1), a_history);
    let b_history = vec![entry(2, "t1", "credit", "10.00"), deposit(3, "d1", "5.00")];
    add_wallet(&mut a, "b", wallet("15.00", "0.00", 2), b_history);
    a
}

pub(super) fn lines(report: &AuditReport) -> Vec<String> {
    report.violations.iter().map(ToString::to_string).collect()
}

pub(super) fn checked(a: &Auditor) -> Vec<String> {
    lines(&a.report(a.check(), 0))
}

/// The answer to the outcomes `plan` asks for: `record` for each.
pub(super) fn each_outcome(plan: &Plan, record: &Fields) -> Vec<(String, Fields)> {
    plan.outcomes
        .iter()
        .map(|k| (k.clone(), record.clone()))
        .collect()
}

/// Settles, answering each plan with `answer`.
pub(super) fn settle_with(a: Auditor, answer: impl Fn(&Plan) -> Reread) -> AuditReport {
    a.settle(|plan| Ok::<_, ()>(answer(plan))).unwrap()
}

/// Settles on a ledger that needs no re-read.
pub(super) fn settle_quiet(a: Auditor) -> AuditReport {
    a.settle(|plan| Err(format!("no re-read expected: {plan:?}")))
        .unwrap()
}

// ---- retention: checkpoints (hc, hb, hd) and the versions outcomes record (fv, tv) ----

/// A wallet hash with a checkpoint: `hc` entries trimmed, summing to `hb` cents, `hd` of
/// them deposits.
pub(super) fn trimmed(
    balance: &str,
    opening: &str,
    version: u64,
    hc: u64,
    hb: i64,
    hd: i64,
) -> Fields {
    let mut f = wallet(balance, opening, version);
    f.insert("hc".into(), hc.to_string());
    f.insert("hb".into(), hb.to_string());
    f.insert("hd".into(), hd.to_string());
    f
}

/// A COMPLETED outcome that made version `fv` of its sender and `tv` of its receiver.
pub(super) fn versioned(id: &str, from: &str, to: &str, amount: &str, fv: u64, tv: u64) -> Fields {
    let mut o = outcome(id, "COMPLETED", from, to, amount);
    o.insert("fv".into(), fv.to_string());
    o.insert("tv".into(), tv.to_string());
    o
}

/// An entry whose stream id says it was written at `ms`.
pub(super) fn timed(ms: u64, n: u32, id: &str, kind: &str, amount: &str) -> (String, Fields) {
    let (_, f) = entry(n, id, kind, amount);
    (format!("{ms}-{n}"), f)
}

/// a (opening 100.00): d1 deposit 3.00 (1), t1 debit 10.00 (2), t2 debit 5.00 (3), t3 debit
/// 1.00 (4); its first two trimmed. b (opening 0): t1 (1), t2 (2), t3 (3) credits; its
/// first trimmed. The hashes are given, the outcomes read first.
pub(super) fn trimmed_ledger(
    a_hash: Fields,
    b_hash: Fields,
    outcomes: &[(&str, Fields)],
) -> Auditor {
    let mut a = Auditor::default();
    add_outcomes(&mut a, outcomes);
    let a_history = vec![
        entry(3, "t2", "debit", "5.00"),
        entry(4, "t3", "debit", "1.00"),
    ];
    add_wallet(&mut a, "a", a_hash, a_history);
    let b_history = vec![
        entry(2, "t2", "credit", "5.00"),
        entry(3, "t3", "credit", "1.00"),
    ];
    add_wallet(&mut a, "b", b_hash, b_history);
    a
}

pub(super) fn trimmed_outcomes() -> Vec<(&'static str, Fields)> {
    vec![
        ("t1", versioned("t1", "a", "b", "10.00", 2, 1)),
        ("t2", versioned("t2", "a", "b", "5.00", 3, 2)),
        ("t3", versioned("t3", "a", "b", "1.00", 4, 3)),
    ]
}

pub(super) fn sound_a() -> Fields {
    trimmed("87.00", "100.00", 4, 2, -700, 300)
}

pub(super) fn sound_b() -> Fields {
    trimmed("16.00", "0.00", 3, 1, 1000, 0)
}
