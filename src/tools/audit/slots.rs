//! One transfer's debits and credits, slot by slot (kind, wallet), against what its outcomes
//! expect there: how many in the window, of which amounts, at which entry numbers, how many
//! trimmed into the checkpoint; and how the violations about one group name it and place its
//! entries.
//!
//! Owns the verdict on one slot (missing, repeated, unexpected, of another amount, misplaced).
//! Pure: no state, no I/O. Does not decide what a slot expects, that is where each entry
//! stands against the snapshots (`transfers`).

use std::collections::BTreeMap;

use crate::engine::keyspace::KeySpace;
use crate::engine::money::Amount;
use crate::engine::transfer::TransferOutcome;
use crate::engine::wallet::HistoryKind;
use crate::tools::audit::report::{Violation, ViolationKind};
use crate::tools::audit::wallet::{Entry, Mover, entry_key};

/// A debit or credit, the wallet whose history holds it, and when it was read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen<'a> {
    pub(super) wallet: &'a str,
    pub(super) entry: &'a Entry,
    pub(super) epoch: u64,
}

/// How violations about one group name it.
#[derive(Debug)]
pub(super) struct Name {
    /// How keys are spelled (one Redis or a cluster).
    space: KeySpace,
    key: Option<String>,
    transfer_id: Option<String>,
    wallets: Vec<String>,
}

impl Name {
    pub(super) fn of(
        space: KeySpace,
        mover: &Mover,
        seen: &[Seen<'_>],
        claimants: &[(&str, &TransferOutcome)],
    ) -> Name {
        let (key, transfer_id) = match mover {
            Mover::Key(key) => {
                let id = claimants.first().map(|(_, o)| o.transfer_id.clone());
                let id = id.or_else(|| seen.first().map(|s| s.entry.transfer_id.clone()));
                (Some(key.clone()), id)
            }
            Mover::Legacy(id) => {
                let key = match claimants {
                    [(key, _)] => Some(key.to_string()),
                    _ => None,
                };
                (key, Some(id.clone()))
            }
        };
        let named = claimants
            .iter()
            .flat_map(|(_, o)| [o.from_user.as_str(), o.to_user.as_str()]);
        let debits = seen.iter().filter(|s| s.entry.kind == HistoryKind::Debit);
        let credits = seen.iter().filter(|s| s.entry.kind != HistoryKind::Debit);
        let wallets = unique(named.chain(debits.chain(credits).map(|s| s.wallet)));
        Name {
            space,
            key,
            transfer_id,
            wallets,
        }
    }

    pub(super) fn violation(&self, kind: ViolationKind, detail: String) -> Violation {
        Violation {
            kind,
            idempotency_key: self.key.clone(),
            transfer_id: self.transfer_id.clone(),
            wallets: self.wallets.clone(),
            detail,
        }
    }
}

/// A debit (0) or credit (1) slot in a wallet.
pub(super) type Slot<'a> = (u8, &'a str);

pub(super) fn rank(kind: HistoryKind) -> u8 {
    u8::from(kind != HistoryKind::Debit)
}

/// What a group's COMPLETED outcomes expect of one slot.
#[derive(Debug, Default)]
pub(super) struct Expected {
    /// Entries to see: amount, and entry number when the outcome recorded it.
    pub(super) required: Vec<(Amount, Option<u64>)>,
    /// Entries of outcomes without versions, older than the window: trimmed if not seen.
    pub(super) optional: Vec<Amount>,
    /// Entries trimmed before the snapshot (in its checkpoint).
    pub(super) before: usize,
    /// Entries made after the snapshot and trimmed before the re-read.
    pub(super) since: usize,
    /// Credits of PENDING outcomes: each may be done (once) or not yet.
    pub(super) pending: Vec<Amount>,
}

/// Expected against seen debits and credits of a group claimed by COMPLETED outcomes: per
/// (kind, wallet), as many entries as outcomes expect in the window, of their amounts, at
/// their numbers. Each violation comes with the wallet that lacks an entry, when that is what
/// it is; `before_window` counts the entries accepted as trimmed.
pub(super) fn check_slots<'a>(
    mut expected: BTreeMap<Slot<'a>, Expected>,
    seen: &[Seen<'a>],
    name: &Name,
    before_window: &mut u64,
) -> Vec<(Violation, Option<&'a str>)> {
    let mut observed: BTreeMap<Slot<'a>, Vec<Seen<'a>>> = BTreeMap::new();
    for s in seen {
        observed
            .entry((rank(s.entry.kind), s.wallet))
            .or_default()
            .push(*s);
    }
    for slot in observed.keys() {
        expected.entry(*slot).or_default();
    }
    let mut out = Vec::new();
    for (slot, want) in &expected {
        let got = observed.get(slot).map_or(&[][..], Vec::as_slice);
        match judge_slot(*slot, want, got, name) {
            Ok(trimmed) => *before_window += trimmed,
            Err(found) => out.push(found),
        }
    }
    out
}

/// One slot: the entries seen against those expected. `Ok` with the number of entries
/// accepted as trimmed before the window, or the violation (with the wallet when an entry is
/// missing).
fn judge_slot<'a>(
    slot: Slot<'a>,
    want: &Expected,
    got: &[Seen<'a>],
    name: &Name,
) -> Result<u64, (Violation, Option<&'a str>)> {
    let (kind, wallet, space) = (["debit", "credit"][usize::from(slot.0)], slot.1, name.space);
    let (history, placed) = (space.log(wallet), || places(space, got));
    let (need, most) = (
        want.required.len(),
        want.required.len() + want.optional.len() + want.pending.len(),
    );
    let trimmed = want.before + want.since;
    let note = match trimmed {
        0 => String::new(),
        n => format!(
            " (and {n} trimmed into the checkpoint of {})",
            space.wallet(wallet)
        ),
    };
    let required: Vec<Amount> = sorted(want.required.iter().map(|r| r.0));
    let amounts: Vec<Amount> = sorted(got.iter().map(|s| s.entry.amount));
    let (what, detail) = if got.len() < need {
        let detail = format!(
            "{} {kind}(s) in {history}, the outcome says {}{note}",
            got.len(),
            list(&required)
        );
        (ViolationKind::MissingEntry, detail)
    } else if got.len() > most && most + trimmed == 0 {
        let detail = format!("the outcome moves no money through this: {}", placed());
        (ViolationKind::UnexpectedEntry, detail)
    } else if got.len() > most {
        let (times, expected) = (got.len() + trimmed, most + trimmed);
        let detail = format!(
            "{kind} applied {times} times, expected {expected}: {}{note}",
            placed()
        );
        (ViolationKind::RepeatedEntry, detail)
    } else if !amounts_fit(
        &amounts,
        &required,
        &[&want.optional[..], &want.pending].concat(),
    ) {
        let all = sorted(
            required
                .iter()
                .chain(&want.optional)
                .chain(&want.pending)
                .copied(),
        );
        let history = got
            .first()
            .map_or(history, |s| entry_key(space, wallet, &s.entry.stream_id));
        let detail = format!(
            "{kind} in {history} is {}, the outcome says {}",
            list(&amounts),
            list(&all)
        );
        (ViolationKind::AmountMismatch, detail)
    } else if let Some(detail) = misplaced(space, kind, wallet, want, got) {
        (ViolationKind::MisplacedEntry, detail)
    } else {
        let absent = (most - got.len()).saturating_sub(want.pending.len());
        return Ok((want.before + absent) as u64);
    };
    let short = (what == ViolationKind::MissingEntry).then_some(wallet);
    Err((name.violation(what, detail), short))
}

/// Whether the amounts seen are those required, or (when some may have been trimmed) each is
/// one of those expected.
fn amounts_fit(amounts: &[Amount], required: &[Amount], optional: &[Amount]) -> bool {
    if optional.is_empty() {
        return amounts == required;
    }
    let mut pool: Vec<Amount> = required.iter().chain(optional).copied().collect();
    amounts
        .iter()
        .all(|a| match pool.iter().position(|p| p == a) {
            Some(i) => {
                pool.swap_remove(i);
                true
            }
            None => false,
        })
}

/// The one entry of a slot that one outcome expects, when it is not the entry number the
/// outcome recorded.
fn misplaced(
    space: KeySpace,
    kind: &str,
    wallet: &str,
    want: &Expected,
    got: &[Seen<'_>],
) -> Option<String> {
    let ([(_, Some(n))], [seen], []) = (&want.required[..], got, &want.optional[..]) else {
        return None;
    };
    let m = seen.entry.number?;
    (m != *n).then(|| {
        format!(
            "{kind} {} in {} {} is entry {m} of {}, the outcome says entry {n}",
            seen.entry.amount,
            entry_key(space, wallet, &seen.entry.stream_id),
            seen.entry.stream_id,
            space.wallet(wallet)
        )
    })
}

fn sorted(amounts: impl Iterator<Item = Amount>) -> Vec<Amount> {
    let mut v: Vec<Amount> = amounts.collect();
    v.sort();
    v
}

/// `a, b` without repeats, in first-seen order.
pub(super) fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

/// Amounts as `10.00` or `[10.00, 10.00]`.
fn list(amounts: &[Amount]) -> String {
    match amounts {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(Amount::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Where entries are: `debit 10.00 in wallet:a:history 1-0, ...`.
pub(super) fn places(space: KeySpace, seen: &[Seen<'_>]) -> String {
    seen.iter()
        .map(|s| {
            let e = s.entry;
            format!(
                "{} {} in {} {}",
                e.kind.as_str(),
                e.amount,
                entry_key(space, s.wallet, &e.stream_id),
                e.stream_id
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(list: &[&str]) -> Vec<Amount> {
        list.iter().map(|a| Amount::parse(a).unwrap()).collect()
    }

    #[test]
    fn amounts_fit_those_required_or_each_is_one_expected_used_once() {
        let fit = |seen: &[&str], required: &[&str], optional: &[&str]| {
            amounts_fit(&amounts(seen), &amounts(required), &amounts(optional))
        };
        // Nothing may have been trimmed: exactly those required.
        assert!(fit(&["1.00", "2.00"], &["1.00", "2.00"], &[]));
        assert!(!fit(&["1.00", "3.00"], &["1.00", "2.00"], &[]));
        // Some may have been trimmed: each seen is one of those expected, each used once.
        assert!(fit(&["2.00"], &["1.00"], &["2.00"]));
        assert!(fit(&["1.00", "2.00"], &["1.00"], &["2.00"]));
        assert!(!fit(&["3.00"], &["1.00"], &["2.00"]));
        assert!(!fit(&["2.00", "2.00"], &["1.00"], &["2.00"]));
    }
}
