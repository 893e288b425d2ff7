//! History retention on every topology (`on_every_topology!`: one Redis, a cluster in one slot
//! and across slots): a wallet keeps its last entries, the trimmed ones are summed into its
//! checkpoint in the same transaction, the audit stays exact across trims, an unreadable
//! entry is never summed, and histories written as streams (the format before the list) are
//! read, trimmed, audited and migrated without losing an entry.

use redis::Commands;

use crate::on_every_topology;
use crate::support::topology::Bed;
use crate::support::usd;
use wallet_transfer::engine::retention::{Checkpoint, trim_slack};
use wallet_transfer::tools::ops;
use wallet_transfer::{Amount, EngineConfig, WalletService};

/// balance = opening + checkpoint + retained entries, and version = trimmed + retained, for
/// `id` as Redis holds it now; returns the checkpoint.
fn assert_window_adds_up(service: &WalletService, id: &str) -> Checkpoint {
    let wallet = service.wallet(id).unwrap().expect("wallet exists");
    let retained = service.history(id).unwrap();
    let moved = retained.iter().fold(Amount::ZERO, |sum, e| {
        sum.checked_add(e.kind.signed(e.amount)).unwrap()
    });
    let expected = wallet
        .opening_balance
        .checked_add(wallet.checkpoint.net)
        .and_then(|b| b.checked_add(moved))
        .unwrap();
    assert_eq!(wallet.balance, expected, "{id}: {wallet:?}");
    assert_eq!(
        wallet.version,
        wallet.checkpoint.entries + retained.len() as u64,
        "{id}: version = trimmed + retained"
    );
    if let Some(last) = retained.last() {
        assert_eq!(last.balance_after, wallet.balance, "{id}: newest entry");
    }
    wallet.checkpoint
}

/// 40 transfers both ways and 6 deposits with 4 entries kept: the window stays bounded, each
/// checkpoint sums what was trimmed, and the audit (every primary on a cluster) finds the
/// ledger exact through the checkpoints.
fn a_wallet_keeps_its_last_entries_and_its_checkpoint_sums_the_trimmed_ones(bed: &Bed) {
    let max = 4;
    let service = &bed.service;
    bed.create(&[("a", "100.00"), ("b", "100.00")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    let history_a = bed.keys().log(&a);
    let mut conn = bed.conn_for(&history_a);
    for i in 0..40 {
        let (from, to) = if i % 3 == 0 { (&b, &a) } else { (&a, &b) };
        service
            .transfer(&usd(&format!("t{i}"), from, to, &format!("1.{i:02}")))
            .unwrap();
        if i % 7 == 0 {
            service.deposit(&a, Amount::from_minor(5)).unwrap();
        }
        let len: u64 = conn.llen(&history_a).unwrap();
        assert!(
            len <= max + trim_slack(max),
            "after t{i}: {len} entries kept"
        );
    }
    for id in [&a, &b] {
        let checkpoint = assert_window_adds_up(service, id);
        assert!(checkpoint.entries >= 30, "{id} trimmed only {checkpoint:?}");
    }
    let total = service
        .balance(&a)
        .unwrap()
        .checked_add(service.balance(&b).unwrap())
        .unwrap();
    assert_eq!(
        total,
        Amount::parse("200.30").unwrap(),
        "6 deposits of 0.05"
    );
    let audit = ops::audit(service).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);
}
on_every_topology!(
    a_wallet_keeps_its_last_entries_and_its_checkpoint_sums_the_trimmed_ones,
    EngineConfig::default().with_history_max_entries(Some(4))
);

fn a_trim_sums_entries_of_the_long_format_and_never_an_unreadable_one(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "10.00"), ("b", "10.00"), ("c", "10.00")]);
    let (a, b, c) = (bed.id("a"), bed.id("b"), bed.id("c"));
    let keys = bed.keys();
    let mut conn_a = bed.conn_for(&keys.wallet(&a));
    // Two entries in the original long format (as the Python system wrote them), matching a
    // balance moved by hand from 10.00 to 12.25.
    for (kind, amount, after) in [("credit", "3.00", "13.00"), ("debit", "0.75", "12.25")] {
        let _: String = redis::cmd("XADD")
            .arg(keys.history(&a))
            .arg("*")
            .arg(&[
                ("transfer_id", "old"),
                ("kind", kind),
                ("amount", amount),
                ("balance_after", after),
                ("at", "1"),
            ])
            .query(&mut conn_a)
            .unwrap();
    }
    let _: () = conn_a
        .hset_multiple(keys.wallet(&a), &[("balance", "12.25"), ("version", "2")])
        .unwrap();
    // c's oldest entry cannot be read: its amount is not a number.
    let mut conn_c = bed.conn_for(&keys.wallet(&c));
    let _: String = redis::cmd("XADD")
        .arg(keys.history(&c))
        .arg("*")
        .arg(&[
            ("t", "bad"),
            ("k", ""),
            ("d", "c"),
            ("a", "x"),
            ("b", "1000"),
        ])
        .query(&mut conn_c)
        .unwrap();
    let _: () = conn_c.hset(keys.wallet(&c), "version", "1").unwrap();
    for i in 0..6 {
        service
            .transfer(&usd(&format!("a{i}"), &a, &b, "0.01"))
            .unwrap();
        service
            .transfer(&usd(&format!("c{i}"), &c, &b, "0.01"))
            .unwrap();
    }
    let checkpoint = assert_window_adds_up(service, &a);
    assert!(
        checkpoint.entries >= 2,
        "the long entries were trimmed: {checkpoint:?}"
    );
    let wallet_c = service.wallet(&c).unwrap().unwrap();
    assert_eq!(
        wallet_c.checkpoint,
        Checkpoint::default(),
        "nothing summed past a bad entry"
    );
    let stream: u64 = conn_c.xlen(keys.history(&c)).unwrap();
    let log: u64 = conn_c.llen(keys.log(&c)).unwrap();
    assert_eq!(
        (stream, log),
        (1, 6),
        "c's history stays whole until the entry is repaired"
    );
}
on_every_topology!(
    a_trim_sums_entries_of_the_long_format_and_never_an_unreadable_one,
    EngineConfig::default().with_history_max_entries(Some(2))
);

/// A deposit as the engine wrote it before the history list (commit 41460c6,
/// `wallet::deposit_once` and `add_history_in`): balance, version and an XADD of the compact
/// stream entry (`t`, `k`, `d`, `a`, `b`), in one MULTI/EXEC.
fn deposit_in_the_stream_format(bed: &Bed, id: &str, deposit_id: &str, cents: i64) {
    let keys = bed.keys();
    let mut conn = bed.conn_for(&keys.wallet(id));
    let balance: String = conn.hget(keys.wallet(id), "balance").unwrap();
    let after = Amount::parse(&balance).unwrap().minor() + cents;
    redis::pipe()
        .atomic()
        .hset(
            keys.wallet(id),
            "balance",
            Amount::from_minor(after).to_string(),
        )
        .hincr(keys.wallet(id), "version", 1)
        .cmd("XADD")
        .arg(keys.history(id))
        .arg("*")
        .arg(&[("t", deposit_id), ("k", ""), ("d", "p")])
        .arg("a")
        .arg(cents)
        .arg("b")
        .arg(after)
        .query::<()>(&mut conn)
        .unwrap();
}

/// What a reader shows of one entry, whatever its format: kind, amount, balance, ids, time.
fn entry_view(e: &wallet_transfer::engine::wallet::HistoryEntry) -> String {
    let key = e.idempotency_key.as_deref().unwrap_or("-");
    let (kind, amount, after) = (e.kind.as_str(), e.amount, e.balance_after);
    format!(
        "{kind} {amount} {after} {} {key} {}",
        e.transfer_id, e.at_ms
    )
}

/// Histories written as streams by the code before the list format: read with the entries
/// written after them (stream first), the audit exact, then moved whole into the lists by
/// `migrate-history` (the streams deleted), every entry read the same after it.
fn a_history_written_as_a_stream_is_read_audited_and_migrated_whole(bed: &Bed) {
    let service = &bed.service;
    bed.create(&[("a", "10.00"), ("b", "10.00")]);
    let (a, b) = (bed.id("a"), bed.id("b"));
    for (i, cents) in [125, 250, 5].into_iter().enumerate() {
        deposit_in_the_stream_format(bed, &a, &format!("dep_old{i}"), cents);
    }
    deposit_in_the_stream_format(bed, &b, "dep_oldb", 100);
    for i in 0..3 {
        service
            .transfer(&usd(&format!("new{i}"), &a, &b, "1.00"))
            .unwrap();
    }
    let before = service.history(&a).unwrap();
    let kinds: Vec<&str> = before.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["deposit", "deposit", "deposit", "debit", "debit", "debit"]
    );
    for id in [&a, &b] {
        assert_window_adds_up(service, id);
    }
    let window = service.history_window(&a, 4).unwrap().unwrap();
    assert_eq!(window.retained, 6);
    let newest: Vec<String> = window.newest.iter().map(entry_view).collect();
    let all: Vec<String> = before.iter().map(entry_view).collect();
    assert_eq!(
        newest,
        all[2..],
        "the newest 4: one stream entry, three lines"
    );
    let audit = ops::audit(service).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);

    let report = wallet_transfer::tools::migrate::migrate_histories(service).unwrap();
    assert_eq!(
        (
            report.wallets_migrated,
            report.entries_moved,
            report.wallets_left
        ),
        (2, 4, 0)
    );
    let keys = bed.keys();
    for id in [&a, &b] {
        let exists: bool = bed
            .conn_for(&keys.wallet(id))
            .exists(keys.history(id))
            .unwrap();
        assert!(!exists, "{id}'s stream is gone");
        assert_window_adds_up(service, id);
    }
    let after: Vec<String> = service
        .history(&a)
        .unwrap()
        .iter()
        .map(entry_view)
        .collect();
    assert_eq!(after, all, "every entry read the same from the list");
    let audit = ops::audit(service).expect("audit reads redis");
    assert!(audit.is_ok(), "{:?}", audit.violations);
    let again = wallet_transfer::tools::migrate::migrate_histories(service).unwrap();
    assert_eq!(again.entries_moved, 0, "nothing left to move");
}
on_every_topology!(
    a_history_written_as_a_stream_is_read_audited_and_migrated_whole,
    EngineConfig::default()
);
