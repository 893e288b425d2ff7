//! `wallet history ID`: a wallet's history entries, oldest first, each marked with where it
//! came from: the entries Redis still keeps (`wallet:{id}:log`, LRANGE, after what an older
//! `wallet:{id}:history` stream still holds) and, for the older ones it has trimmed (versions
//! up to the checkpoint's `hc`), the ledger topic the worker publishes every transfer's
//! entries to (`worker::ledger`).
//!
//! ```text
//! wallet + its newest --limit entries (one MULTI/EXEC) -> versions hc+1..version from Redis
//! versions first..hc wanted -> read the ledger topic to its end, key = ID, dedupe by version
//! versions in neither place -> reported as missing, never hidden
//! ```
//!
//! Owns the merge of the two sources, the gap report and the output. Does not own the Redis
//! history format (`engine::wallet`), the ledger format (`worker::ledger`) or how a topic is
//! read (`tools::results::read_to_end`).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use wallet_transfer::engine::message::check_user_id;
use wallet_transfer::engine::wallet::{HistoryEntry, HistoryWindow};
use wallet_transfer::tools::results::{self, ReadError};
use wallet_transfer::worker::kafka::{self, KafkaConfig};
use wallet_transfer::worker::ledger::LedgerEntry;

use crate::cli::{Failure, GlobalOpts, json_out, new_table, print_out};

/// Default of `--limit`.
pub const HISTORY_LIMIT_DEFAULT: u64 = 1_000;
/// Upper bound of `--limit`: what one command holds in memory and prints.
pub const HISTORY_LIMIT_MAX: u64 = 1_000_000;

#[derive(Debug, Args)]
#[command(after_help = "\
Entries Redis still keeps (the last --history-max-entries of the wallet) come from Redis; \
older ones from the ledger topic, which is read to its end (every partition, up to where it \
was when the command started) and deduplicated by version: the worker publishes each entry at \
least once. Wallets never trimmed need no Kafka at all.
Versions found in neither place are reported as missing, not hidden: entries made before the \
ledger topic existed, by `wallet deposit` (it writes Redis only, so a trimmed deposit is only \
in the checkpoint's sum), or by a worker writing to another --ledger-topic.
Examples:
  wallet history user_1
      every entry of user_1 (the newest 1000), oldest first, with its source
  wallet history user_1 --limit 20 --json
      the newest 20 as one JSON object: entries, missing version ranges, ledger figures")]
pub struct HistoryArgs {
    /// The wallet (its user id)
    #[arg(value_name = "ID")]
    pub id: String,

    /// Show the newest N entries (1 to 1000000)
    #[arg(long, value_name = "N", default_value_t = HISTORY_LIMIT_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=HISTORY_LIMIT_MAX))]
    pub limit: u64,

    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,

    /// Topic the worker publishes ledger entries to (read for entries trimmed from Redis)
    #[arg(long, env = "TOPIC_LEDGER", value_name = "TOPIC",
          default_value = kafka::TOPIC_LEDGER)]
    pub ledger_topic: String,

    /// Longest time the ledger topic's read may take, in seconds (1 to 3600)
    #[arg(long, value_name = "N", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,

    /// Extra librdkafka property, key=value (repeatable), e.g. -X security.protocol=SASL_SSL
    #[arg(long = "kafka-property", short = 'X', value_name = "KEY=VALUE",
          value_parser = kafka::parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

/// One printed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Row {
    version: u64,
    /// `redis` or `ledger`.
    source: &'static str,
    kind: &'static str,
    amount: String,
    balance_after: String,
    transfer_id: String,
    idempotency_key: Option<String>,
    at_ms: u64,
}

impl Row {
    fn from_redis(version: u64, e: &HistoryEntry) -> Row {
        Row {
            version,
            source: "redis",
            kind: e.kind.as_str(),
            amount: e.amount.to_string(),
            balance_after: e.balance_after.to_string(),
            transfer_id: e.transfer_id.clone(),
            idempotency_key: e.idempotency_key.clone(),
            at_ms: e.at_ms,
        }
    }

    fn from_ledger(e: &LedgerEntry) -> Row {
        Row {
            version: e.version,
            source: "ledger",
            kind: e.kind.as_str(),
            amount: e.amount.to_string(),
            balance_after: e.balance_after.to_string(),
            transfer_id: e.transfer_id.clone(),
            idempotency_key: Some(e.idempotency_key.clone()),
            at_ms: e.at_ms,
        }
    }
}

/// A run of versions found in neither place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Missing {
    from: u64,
    to: u64,
}

/// What the ledger topic held for the wanted versions of one wallet.
#[derive(Debug, Default)]
struct LedgerFound {
    /// Per version: the first copy read, and its bytes.
    entries: BTreeMap<u64, (LedgerEntry, Vec<u8>)>,
    /// Copies read beyond the first of a version (identical republications).
    copies: u64,
    /// Versions with copies that differ (a bug: copies must be identical).
    differing: Vec<u64>,
    /// Messages with the wallet's key that are not ledger entries of it.
    unreadable: u64,
    /// Messages read in the whole topic.
    scanned: u64,
}

impl LedgerFound {
    /// Takes one message of the ledger topic if it is an entry of `wallet` in `wanted`. Pure.
    fn add(&mut self, wallet: &str, key: Option<&[u8]>, payload: &[u8], wanted: (u64, u64)) {
        if key != Some(wallet.as_bytes()) {
            return;
        }
        let entry = match LedgerEntry::parse(payload) {
            Ok(e) if e.wallet_id == wallet => e,
            _ => {
                self.unreadable += 1;
                return;
            }
        };
        if entry.version < wanted.0 || entry.version > wanted.1 {
            return;
        }
        match self.entries.get(&entry.version) {
            None => {
                self.entries
                    .insert(entry.version, (entry, payload.to_vec()));
            }
            Some((_, first)) => {
                self.copies += 1;
                if first != payload && !self.differing.contains(&entry.version) {
                    self.differing.push(entry.version);
                }
            }
        }
    }
}

/// Which versions to show, and where each part comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// The oldest version shown.
    first: u64,
    /// The newest version (the wallet's).
    last: u64,
    /// Versions `first..=ledger_last` were trimmed from Redis: the ledger's. Below `first`
    /// when none are wanted.
    ledger_last: u64,
}

/// The plan for a wallet at `version` with `trimmed` entries trimmed and `retained` in Redis,
/// showing the newest `limit`; an error when the counts do not add up (version = trimmed +
/// retained). Pure.
fn plan(version: u64, trimmed: u64, retained: u64, limit: u64) -> Result<Plan, String> {
    if trimmed.checked_add(retained) != Some(version) {
        return Err(format!(
            "its version is {version} but Redis holds {retained} entries after {trimmed} trimmed ones: they do not add up (run wallet audit)"
        ));
    }
    let first = version.saturating_sub(limit.saturating_sub(1)).max(1);
    Ok(Plan {
        first,
        last: version,
        ledger_last: trimmed,
    })
}

/// The rows of versions `plan.first..=plan.last` and the runs missing from both sources:
/// Redis's newest entries are versions `last - len + 1 ..= last`. Pure.
fn merge(plan: Plan, redis: &[HistoryEntry], ledger: &LedgerFound) -> (Vec<Row>, Vec<Missing>) {
    let mut rows: Vec<Row> = ledger
        .entries
        .range(plan.first..=plan.ledger_last.max(plan.first))
        .filter(|(v, _)| **v <= plan.ledger_last)
        .map(|(_, (e, _))| Row::from_ledger(e))
        .collect();
    let redis_first = plan.last + 1 - redis.len() as u64;
    rows.extend(
        redis
            .iter()
            .enumerate()
            .map(|(i, e)| (redis_first + i as u64, e))
            .filter(|(v, _)| *v >= plan.first)
            .map(|(v, e)| Row::from_redis(v, e)),
    );
    let mut missing: Vec<Missing> = Vec::new();
    let mut expected = plan.first;
    for row in &rows {
        if row.version > expected {
            missing.push(Missing {
                from: expected,
                to: row.version - 1,
            });
        }
        expected = row.version + 1;
    }
    if plan.last >= plan.first && expected <= plan.last {
        missing.push(Missing {
            from: expected,
            to: plan.last,
        });
    }
    (rows, missing)
}

/// Prints the wallet's history.
pub fn run(global: &GlobalOpts, args: HistoryArgs) -> Result<(), Failure> {
    check_user_id("ID", &args.id).map_err(|e| Failure::usage(e.to_string()))?;
    let service = global.connect(1)?;
    let redis_max = args.limit.min(HISTORY_LIMIT_MAX);
    let Some(window) = service.history_window(&args.id, redis_max)? else {
        return Err(Failure::runtime(format!(
            "user {:?} has no wallet (see wallet snapshot)",
            args.id
        )));
    };
    let w = &window.wallet;
    let plan = plan(w.version, w.checkpoint.entries, window.retained, args.limit)
        .map_err(|e| Failure::runtime(format!("wallet {}: {e}", args.id)))?;
    let ledger = if plan.ledger_last >= plan.first {
        read_ledger(global, &args, plan)?
    } else {
        None
    };
    let found = ledger.unwrap_or_default();
    let (rows, missing) = merge(plan, &window.newest, &found);
    warn_ledger(&args, &found);
    if plan.first > 1 {
        eprintln!(
            "showing versions {}..{} of {} (the newest {}); --limit N for more",
            plan.first, plan.last, args.id, args.limit
        );
    }
    if args.json {
        return json_out(&history_json(&args, &window, plan, &rows, &missing, &found));
    }
    print_out(&history_text(&args, &rows, &missing))
}

/// Reads the ledger topic for versions `plan.first..=plan.ledger_last` of the wallet.
fn read_ledger(
    global: &GlobalOpts,
    args: &HistoryArgs,
    plan: Plan,
) -> Result<Option<LedgerFound>, Failure> {
    let kafka = KafkaConfig::new(&global.brokers).with_properties(args.kafka_properties.clone());
    let wanted = (plan.first, plan.ledger_last);
    let mut found = LedgerFound::default();
    let topic = &args.ledger_topic;
    let scanned = results::read_to_end(
        &kafka,
        topic,
        Duration::from_secs(args.timeout_s),
        |m| found.add(&args.id, m.key.as_deref(), &m.payload, wanted),
        |read, total| {
            let pct = (read * 100).checked_div(total).unwrap_or(100);
            eprintln!("reading ledger topic {topic}: {read} of {total} messages ({pct}%)");
        },
    )
    .map_err(|e| ledger_failure(args, plan, e))?;
    found.scanned = scanned;
    Ok(Some(found))
}

/// A failed ledger read, saying which versions needed it and what to do.
fn ledger_failure(args: &HistoryArgs, plan: Plan, e: ReadError) -> Failure {
    let need = format!(
        "versions {}..{} of {} were trimmed from Redis and are read from the ledger topic",
        plan.first, plan.ledger_last, args.id
    );
    let what = match e {
        ReadError::NoSuchTopic { topic, brokers } => format!(
            "{need}, but {topic} does not exist at {brokers} (the worker creates it when it starts; --ledger-topic must name the one the worker writes to)"
        ),
        ReadError::Timeout { .. } => format!("{need}: {e} (--timeout-s)"),
        other => format!("{need}: {other} (check --brokers)"),
    };
    Failure::runtime(what)
}

/// Says on stderr what in the ledger topic is wrong: copies that differ, unreadable messages.
fn warn_ledger(args: &HistoryArgs, found: &LedgerFound) {
    if !found.differing.is_empty() {
        eprintln!(
            "warning: the ledger topic {} holds differing copies of versions {:?} of {} (copies must be identical; the first read is shown; report this)",
            args.ledger_topic, found.differing, args.id
        );
    }
    if found.unreadable > 0 {
        eprintln!(
            "warning: {} messages keyed {} in {} are not ledger entries of it (skipped)",
            found.unreadable, args.id, args.ledger_topic
        );
    }
}

/// The history as one JSON object.
fn history_json(
    args: &HistoryArgs,
    window: &HistoryWindow,
    plan: Plan,
    rows: &[Row],
    missing: &[Missing],
    found: &LedgerFound,
) -> serde_json::Value {
    let w = &window.wallet;
    let ledger = (plan.ledger_last >= plan.first).then(|| {
        serde_json::json!({
            "topic": args.ledger_topic,
            "messages_read": found.scanned,
            "republished_copies": found.copies,
            "differing_versions": found.differing,
            "unreadable": found.unreadable,
        })
    });
    serde_json::json!({
        "wallet_id": w.wallet_id,
        "currency": w.currency.as_str(),
        "balance": w.balance.to_string(),
        "opening_balance": w.opening_balance.to_string(),
        "version": w.version,
        "trimmed_from_redis": w.checkpoint.entries,
        "first_version": plan.first,
        "entries": rows,
        "missing": missing,
        "ledger": ledger,
    })
}

/// The history as a table, missing runs in place, and a note explaining them.
fn history_text(args: &HistoryArgs, rows: &[Row], missing: &[Missing]) -> String {
    let mut table = new_table(&[
        "version",
        "source",
        "kind",
        "amount",
        "balance_after",
        "transfer_id",
        "idempotency_key",
        "at_ms",
    ]);
    let mut gaps = missing.iter().peekable();
    for row in rows {
        while let Some(gap) = gaps.next_if(|g| g.from < row.version) {
            table.add_row(missing_row(gap));
        }
        table.add_row(vec![
            row.version.to_string(),
            row.source.to_string(),
            row.kind.to_string(),
            row.amount.clone(),
            row.balance_after.clone(),
            row.transfer_id.clone(),
            row.idempotency_key.clone().unwrap_or_else(|| "-".into()),
            row.at_ms.to_string(),
        ]);
    }
    for gap in gaps {
        table.add_row(missing_row(gap));
    }
    let mut text = format!("{table}\n");
    if !missing.is_empty() {
        let total: u64 = missing.iter().map(|m| m.to - m.from + 1).sum();
        text.push_str(&format!(
            "{total} versions missing: trimmed from Redis and not in the ledger topic {} (made before it existed, by wallet deposit, which writes Redis only, or by a worker writing to another --ledger-topic); the wallet's checkpoint still sums them\n",
            args.ledger_topic
        ));
    }
    text
}

fn missing_row(gap: &Missing) -> Vec<String> {
    let versions = if gap.from == gap.to {
        gap.from.to_string()
    } else {
        format!("{}-{}", gap.from, gap.to)
    };
    let mut row = vec![versions, "missing".to_string()];
    row.extend(std::iter::repeat_n("-".to_string(), 6));
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_transfer::Amount;
    use wallet_transfer::engine::wallet::HistoryKind;

    fn redis_entry(id: &str, after: i64) -> HistoryEntry {
        HistoryEntry {
            stream_id: "1-0".into(),
            transfer_id: id.into(),
            idempotency_key: Some(id.into()),
            kind: HistoryKind::Credit,
            amount: Amount::from_minor(100),
            balance_after: Amount::from_minor(after),
            at_ms: 1,
        }
    }

    fn ledger_entry(version: u64) -> LedgerEntry {
        LedgerEntry {
            wallet_id: "a".into(),
            version,
            kind: HistoryKind::Debit,
            amount: Amount::from_minor(100),
            balance_after: Amount::from_minor(1_000 - version as i64),
            currency: "USD".into(),
            transfer_id: format!("t{version}"),
            idempotency_key: format!("t{version}"),
            at_ms: 7,
        }
    }

    #[test]
    fn the_plan_takes_the_newest_limit_and_refuses_counts_that_do_not_add_up() {
        let p = plan(10, 6, 4, 1_000).unwrap();
        assert_eq!((p.first, p.last, p.ledger_last), (1, 10, 6));
        let p = plan(10, 6, 4, 3).unwrap();
        assert_eq!(p.first, 8, "the newest 3: 8, 9, 10");
        assert!(p.ledger_last < p.first, "no ledger read needed");
        assert_eq!(plan(0, 0, 0, 5).unwrap().first, 1);
        let e = plan(10, 6, 3, 5).unwrap_err();
        assert!(e.contains("wallet audit"), "{e}");
    }

    #[test]
    fn the_ledger_keeps_one_copy_per_version_and_notices_differing_ones() {
        let mut found = LedgerFound::default();
        let wanted = (2, 5);
        for v in [1, 2, 3, 3, 6] {
            found.add("a", Some(b"a"), &ledger_entry(v).to_json(), wanted);
        }
        found.add("a", Some(b"b"), &ledger_entry(4).to_json(), wanted);
        found.add("a", Some(b"a"), b"not json", wanted);
        let mut other = ledger_entry(2);
        other.balance_after = Amount::from_minor(1);
        found.add("a", Some(b"a"), &other.to_json(), wanted);
        assert_eq!(found.entries.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(found.copies, 2);
        assert_eq!(found.differing, [2]);
        assert_eq!(found.unreadable, 1);
    }

    #[test]
    fn merge_numbers_redis_from_the_top_and_reports_every_gap() {
        let mut found = LedgerFound::default();
        for v in [2, 4] {
            found.add("a", Some(b"a"), &ledger_entry(v).to_json(), (1, 5));
        }
        let redis = [redis_entry("r6", 50), redis_entry("r7", 60)];
        let p = plan(7, 5, 2, 1_000).unwrap();
        let (rows, missing) = merge(p, &redis, &found);
        let got: Vec<(u64, &str)> = rows.iter().map(|r| (r.version, r.source)).collect();
        assert_eq!(
            got,
            [(2, "ledger"), (4, "ledger"), (6, "redis"), (7, "redis")]
        );
        assert_eq!(
            missing,
            [
                Missing { from: 1, to: 1 },
                Missing { from: 3, to: 3 },
                Missing { from: 5, to: 5 }
            ]
        );
        let p = plan(7, 5, 2, 1).unwrap();
        let (rows, missing) = merge(p, &redis[1..], &LedgerFound::default());
        assert_eq!((rows.len(), rows[0].version), (1, 7));
        assert!(missing.is_empty());
    }

    #[test]
    fn the_table_shows_gaps_in_place_and_explains_them() {
        let args = HistoryArgs {
            id: "a".into(),
            limit: 10,
            json: false,
            ledger_topic: "wallet.ledger".into(),
            timeout_s: 1,
            kafka_properties: Vec::new(),
        };
        let rows = [Row::from_ledger(&ledger_entry(3))];
        let missing = [Missing { from: 1, to: 2 }, Missing { from: 4, to: 4 }];
        let text = history_text(&args, &rows, &missing);
        let order: Vec<usize> = ["1-2", "| 3 ", "| 4 "]
            .iter()
            .map(|s| text.find(s).unwrap_or_else(|| panic!("{s} in {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("3 versions missing"), "{text}");
        assert!(text.contains("wallet deposit"), "{text}");
    }

    #[test]
    fn help_says_where_entries_come_from_and_what_may_be_missing() {
        let (summary, help) = crate::cli::subcommand_help("history");
        assert!(summary.contains("oldest first"), "{summary}");
        for needle in ["ledger topic", "wallet deposit", "wallet history user_1"] {
            assert!(help.contains(needle), "{needle}: {help}");
        }
    }
}
