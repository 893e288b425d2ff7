//! The per-wallet checks: one wallet as read (its hash and its history, entries in either
//! format) parsed into a view, and what is wrong with the wallet on its own: it parses, no
//! negative balance, balance = opening + `hb` + the signed sum of the window, version = `hc`
//! + the entries in the window.
//!
//! Owns how the audit parses history entries (`Entry`, named by what moved the money:
//! `Mover`) and the per-wallet invariants. Pure: no I/O, no state across wallets. Does not
//! check transfers or deposits across wallets (`transfers`, `slots`) or the totals
//! (`settle`).

use crate::engine::keyspace::KeySpace;
use crate::engine::money::Amount;
use crate::engine::wallet::{HistoryKind, Wallet, parse_wallet};
use crate::tools::audit::input::{Fields, RawHistory, WalletRead};
use crate::tools::audit::report::{Violation, ViolationKind, amount};

/// How a history entry names what moved the money.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Mover {
    /// Its idempotency key (a deposit's id).
    Key(String),
    /// Its transfer id: an entry written before the idempotency key was recorded.
    Legacy(String),
}

/// One readable history entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) stream_id: String,
    pub(super) mover: Mover,
    pub(super) transfer_id: String,
    pub(super) kind: HistoryKind,
    pub(super) amount: Amount,
    /// Its number in the wallet (the version it made), when known.
    pub(super) number: Option<u64>,
}

/// One wallet: its snapshot from the full scan (checked on its own and summed), and the
/// entries read after it.
#[derive(Debug, Default)]
pub(super) struct WalletView {
    /// Read by the full scan; false for a wallet first read by a re-read.
    pub(super) scanned: bool,
    /// When the snapshot was read (0: never).
    pub(super) epoch: u64,
    /// `None` when the hash is missing or corrupt.
    pub(super) wallet: Option<Wallet>,
    /// The snapshot's (checkpoint entries `hc`, version) when its hash and history were both
    /// read: entries `hc + 1 ..= version` are its window.
    pub(super) window: Option<(u64, u64)>,
    /// The stream id time (ms) of the snapshot's first retained entry.
    pub(super) first_ms: Option<u64>,
    pub(super) entries: Vec<Entry>,
    /// Entries in the snapshot's stream, readable or not.
    pub(super) stream_len: u64,
    /// The snapshot's last stream id.
    pub(super) last_id: Option<String>,
    /// The history could not be read: it is not read again.
    pub(super) broken: bool,
    pub(super) problems: Vec<Violation>,
    /// Entries after the snapshot, from the latest re-read, and when that was (0: never).
    pub(super) late: Vec<Entry>,
    pub(super) late_epoch: u64,
    /// Entries trimmed (`hc`) as the latest re-read found them.
    pub(super) late_trimmed: Option<u64>,
}

impl WalletView {
    /// When the history was last read.
    pub(super) fn history_epoch(&self) -> u64 {
        self.epoch.max(self.late_epoch)
    }
}

/// Parses one wallet read and finds what is wrong with the wallet on its own.
/// Keys are named as `space` spells them.
pub(super) fn wallet_view(
    space: KeySpace,
    id: &str,
    read: WalletRead,
    listed: bool,
    epoch: u64,
) -> WalletView {
    let mut problems = Vec::new();
    let key = space.wallet(id);
    let parsed = read
        .hash
        .map_err(|e| format!("{key}: {e}"))
        .and_then(|f| parse_wallet(space, id, &f).map_err(|e| e.to_string()));
    let (wallet, corrupt) = match parsed {
        Ok(w) => (w, None),
        Err(e) => (
            None,
            Some(Violation::wallet(ViolationKind::WalletCorrupt, id, e)),
        ),
    };
    let first = wallet.as_ref().map(|w| w.checkpoint.entries + 1);
    let (entries, stream_len, last_id, first_ms) = match &read.history {
        Ok(history) => {
            let entries = parse_entries(space, id, history, first, &mut problems);
            let last_id = history.last().map(|(stream_id, _)| stream_id.clone());
            let first_ms = history
                .first()
                .and_then(|(stream_id, _)| stream_ms(stream_id));
            (entries, Some(history.len() as u64), last_id, first_ms)
        }
        Err(e) => {
            let detail = format!(
                "{} or {}: not a readable history: {e}",
                space.history(id),
                space.log(id)
            );
            let kind = ViolationKind::HistoryUnreadable;
            problems.push(Violation::wallet(kind, id, detail));
            (Vec::new(), None, None, None)
        }
    };
    if wallet.is_none() && corrupt.is_none() && (listed || stream_len > Some(0)) {
        let entries = stream_len.unwrap_or(0);
        let detail = format!(
            "{key} does not exist (listed in wallets:all: {listed}, history entries: {entries})"
        );
        problems.push(Violation::wallet(ViolationKind::WalletMissing, id, detail));
    }
    problems.extend(corrupt);
    if let Some(w) = &wallet {
        problems.extend(balance_violations(space, id, w, &entries, stream_len));
    }
    let window = wallet
        .as_ref()
        .filter(|_| stream_len.is_some())
        .map(|w| (w.checkpoint.entries, w.version));
    WalletView {
        scanned: true,
        epoch,
        wallet,
        window,
        first_ms,
        last_id,
        entries,
        stream_len: stream_len.unwrap_or(0),
        broken: stream_len.is_none(),
        problems,
        ..WalletView::default()
    }
}

/// The readable entries of one history, numbered from `first` when known; each unreadable
/// one is a violation.
fn parse_entries(
    space: KeySpace,
    id: &str,
    history: &RawHistory,
    first: Option<u64>,
    problems: &mut Vec<Violation>,
) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(history.len());
    for (i, (stream_id, fields)) in history.iter().enumerate() {
        let number = first.map(|f| f + i as u64);
        match parse_entry(stream_id, fields, number) {
            Some(e) => entries.push(e),
            None => {
                let detail = format!(
                    "{} {stream_id}: unreadable entry {fields:?}",
                    entry_key(space, id, stream_id)
                );
                problems.push(Violation::wallet(
                    ViolationKind::HistoryUnreadable,
                    id,
                    detail,
                ));
            }
        }
    }
    entries
}

/// A re-read wallet: its hash as it is now, and the readable entries read (an unreadable one
/// was never in the cut), numbered back from the version (the last entry made it).
pub(super) fn parse_late(
    space: KeySpace,
    id: &str,
    read: WalletRead,
) -> (Option<Wallet>, Vec<Entry>) {
    let wallet = read
        .hash
        .ok()
        .and_then(|f| parse_wallet(space, id, &f).ok().flatten());
    let Ok(history) = read.history else {
        return (wallet, Vec::new());
    };
    let first = wallet
        .as_ref()
        .and_then(|w| (w.version + 1).checked_sub(history.len() as u64));
    let entries = history
        .iter()
        .enumerate()
        .filter_map(|(i, (stream_id, fields))| {
            parse_entry(stream_id, fields, first.map(|f| f + i as u64))
        })
        .collect();
    (wallet, entries)
}

/// The key an entry of `wallet`'s history is in, by its id: `wallet:{id}:log` for a log line
/// (`<ms>-v<n>`), `wallet:{id}:history` for an entry of the older stream.
pub(super) fn entry_key(space: KeySpace, wallet: &str, entry_id: &str) -> String {
    if entry_id.contains("-v") {
        space.log(wallet)
    } else {
        space.history(wallet)
    }
}

/// The time (ms) of an entry id, `ms-seq` (a stream entry) or `ms-vN` (a log line).
pub(super) fn stream_ms(stream_id: &str) -> Option<u64> {
    stream_id.split('-').next()?.parse().ok()
}

/// One history entry, in either format ([`crate::engine::wallet::parse_history_fields`]): transfer id, kind,
/// amount, and the idempotency key when recorded. The long format needs only `transfer_id`,
/// `kind` and `amount` here (the original system's entries may lack the rest).
fn parse_entry(stream_id: &str, f: &Fields, number: Option<u64>) -> Option<Entry> {
    let (transfer_id, key, kind, amount) = if let Some(code) = f.get("d") {
        // The compact fields (a stream entry, or a log line, whose balance the audit needs not).
        let kind = HistoryKind::from_code(code)?;
        let amount = Amount::from_minor(f.get("a")?.parse().ok()?);
        let transfer_id = f.get("t")?.clone();
        let key = f.get("k").filter(|k| !k.is_empty()).unwrap_or(&transfer_id);
        (transfer_id.clone(), Some(key.clone()), kind, amount)
    } else {
        let kind = match f.get("kind")?.as_str() {
            "debit" => HistoryKind::Debit,
            "credit" => HistoryKind::Credit,
            "deposit" => HistoryKind::Deposit,
            _ => return None,
        };
        let amount = Amount::parse(f.get("amount")?).ok()?;
        let key = f.get("idempotency_key").filter(|k| !k.is_empty()).cloned();
        (f.get("transfer_id")?.clone(), key, kind, amount)
    };
    let mover = match key {
        Some(key) => Mover::Key(key),
        None => Mover::Legacy(transfer_id.clone()),
    };
    Some(Entry {
        stream_id: stream_id.to_string(),
        mover,
        transfer_id,
        kind,
        amount,
        number,
    })
}

/// The per-wallet invariants: no negative balance; when the history was read (`stream_len`),
/// version = entries trimmed (`hc`) + retained entries, and when every retained entry was
/// readable, balance = opening + checkpoint (`hb`) + retained history.
fn balance_violations(
    space: KeySpace,
    id: &str,
    w: &Wallet,
    entries: &[Entry],
    stream_len: Option<u64>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let key = space.wallet(id);
    if w.balance.is_negative() {
        let detail = format!("{key}: negative balance {}", w.balance);
        out.push(Violation::wallet(
            ViolationKind::NegativeBalance,
            id,
            detail,
        ));
    }
    let Some(stream_len) = stream_len else {
        return out;
    };
    let net: i128 = entries
        .iter()
        .map(|e| i128::from(e.kind.signed(e.amount).minor()))
        .sum();
    let readable = entries.len() as u64 == stream_len;
    let (cp, trimmed) = (&w.checkpoint, i128::from(w.checkpoint.net.minor()));
    let opening = i128::from(w.opening_balance.minor());
    if readable && opening + trimmed + net != i128::from(w.balance.minor()) {
        let checkpoint = match cp.entries {
            0 if cp.net == Amount::ZERO => String::new(),
            n => format!(" + checkpoint {} ({n} trimmed)", cp.net),
        };
        let detail = format!(
            "{key}: balance {} != opening {}{checkpoint} + history {}",
            w.balance,
            w.opening_balance,
            amount(net)
        );
        out.push(Violation::wallet(
            ViolationKind::BalanceMismatch,
            id,
            detail,
        ));
    }
    if u128::from(w.version) != u128::from(cp.entries) + u128::from(stream_len) {
        let trimmed = match cp.entries {
            0 => String::new(),
            n => format!("{n} trimmed + "),
        };
        let detail = format!(
            "{key}: version {} != {trimmed}{stream_len} history entries",
            w.version
        );
        out.push(Violation::wallet(
            ViolationKind::VersionMismatch,
            id,
            detail,
        ));
    }
    out
}
