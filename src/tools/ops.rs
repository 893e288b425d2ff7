//! Operator views of the ledger: a snapshot of every wallet, the held locks, a full audit of
//! the ledger invariants, and publishing transfer requests to Kafka (waiting for their results
//! is [`crate::tools::results`]'s [`ResultWatcher`], re-exported here).
//!
//! [`audit`] is the one ledger auditor: the `wallet audit` command, the integration tests'
//! ledger checks and the fault suite's checker all go through it. It reads in batches and
//! feeds what it read to pure checks (per wallet, per outcome record, the totals), which are
//! unit-tested below without Redis.
//!
//! Everything here reads with SCAN/SSCAN and pipelined batches, never `KEYS`, so it is safe on a
//! large production database. Nothing here changes data. The `wallet snapshot`, `locks`, `audit`
//! and `transfer` commands are thin wrappers around these functions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;

use crate::engine::message::{Status, TransferRequest};
use crate::engine::money::Amount;
use crate::engine::service::WalletService;
use crate::engine::store::{self, PooledConn, keys};
use crate::engine::transfer::{TransferOutcome, parse_outcome};
use crate::engine::wallet::{HistoryKind, Wallet, parse_wallet};
pub use crate::tools::results::ResultWatcher;
use crate::worker::kafka::KafkaConfig;

/// Keys read per pipelined round trip.
pub const BATCH: usize = 500;

/// Why an operator tool failed to run. A ledger problem is not an error: the audit reports it
/// in [`AuditReport::violations`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something of another shape than expected.
    #[error("redis reply: {0}")]
    Reply(#[from] redis::ParsingError),
    /// No pooled connection in time.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A record that cannot be read.
    #[error("corrupt record {key}: {detail}")]
    Corrupt {
        /// The Redis key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A wallet operation failed.
    #[error(transparent)]
    Wallet(#[from] crate::engine::wallet::WalletError),
    /// Reading a topic failed.
    #[error(transparent)]
    Read(#[from] crate::tools::results::ReadError),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

/// Every member of a set, read with SSCAN; sorted, without repeats.
fn sscan_all(conn: &mut PooledConn, key: &str) -> Result<Vec<String>, OpsError> {
    let mut out = BTreeSet::new();
    store::scan_each(conn, Some(key), "*", None, |_, batch| {
        out.extend(batch);
        Ok::<_, OpsError>(())
    })?;
    Ok(out.into_iter().collect())
}

/// Every key matching `pattern` (of `type_` when given), read with SCAN; sorted, without
/// repeats.
fn scan_keys(
    conn: &mut PooledConn,
    pattern: &str,
    type_: Option<&str>,
) -> Result<Vec<String>, OpsError> {
    let mut out = BTreeSet::new();
    store::scan_each(conn, None, pattern, type_, |_, batch| {
        out.extend(batch);
        Ok::<_, OpsError>(())
    })?;
    Ok(out.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// snapshot

/// One row of `wallet snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRow {
    /// The wallet id.
    pub id: String,
    /// `full_name` of `user:{id}`, empty when there is none.
    pub name: String,
    /// `"5234.50"`; empty when the wallet hash is missing.
    pub balance: String,
    /// As stored.
    pub currency: String,
    /// As stored.
    pub status: String,
    /// As stored.
    pub version: String,
}

/// Every wallet in `wallets:all` whose id starts with `prefix`, sorted by id. Fields are shown
/// as stored (a corrupt field is shown, not rejected); a wallet id without a hash gets the
/// status `missing`.
pub fn snapshot(
    service: &WalletService,
    prefix: Option<&str>,
) -> Result<Vec<SnapshotRow>, OpsError> {
    let mut conn = service.pool().get()?;
    let ids: Vec<String> = sscan_all(&mut conn, keys::WALLETS_ALL)?
        .into_iter()
        .filter(|id| prefix.is_none_or(|p| id.starts_with(p)))
        .collect();
    let mut rows = Vec::with_capacity(ids.len());
    for batch in ids.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for id in batch {
            pipe.hgetall(keys::wallet(id))
                .cmd("HGET")
                .arg(keys::user(id))
                .arg("full_name");
        }
        let replies: Vec<redis::Value> = pipe.query(&mut conn.redis)?;
        for (id, pair) in batch.iter().zip(replies.chunks(2)) {
            let wallet: HashMap<String, String> = redis::from_redis_value(pair[0].clone())?;
            let name: Option<String> = redis::from_redis_value(pair[1].clone())?;
            let get = |f: &str| wallet.get(f).cloned().unwrap_or_default();
            rows.push(SnapshotRow {
                id: id.clone(),
                name: name.unwrap_or_default(),
                balance: get("balance"),
                currency: get("currency"),
                status: if wallet.is_empty() {
                    "missing".to_string()
                } else {
                    get("status")
                },
                version: wallet
                    .get("version")
                    .cloned()
                    .unwrap_or_else(|| "0".to_string()),
            });
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// locks

/// One held `lock:*` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    /// The lock key, `lock:{wallet id}`.
    pub key: String,
    /// The owner token (`None` if the key vanished or is not a string).
    pub owner: Option<String>,
    /// Remaining time to live in milliseconds; `None` when the lock has no expiry (PTTL -1),
    /// which is a problem: such a lock is never released by itself.
    pub ttl_ms: Option<i64>,
}

impl LockInfo {
    /// A lock that never expires by itself.
    pub fn is_problem(&self) -> bool {
        self.ttl_ms.is_none()
    }
}

/// Every `lock:*` key with its owner token and remaining ttl, sorted by key. Keys that expired
/// between SCAN and the read are left out.
pub fn locks(service: &WalletService) -> Result<Vec<LockInfo>, OpsError> {
    let mut conn = service.pool().get()?;
    let found = scan_keys(&mut conn, "lock:*", None)?;
    let mut out = Vec::with_capacity(found.len());
    for batch in found.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("TYPE").arg(key).cmd("PTTL").arg(key);
        }
        let replies: Vec<(String, i64)> = pipe.query(&mut conn.redis)?;
        let strings: Vec<(&String, &(String, i64))> = batch
            .iter()
            .zip(replies.iter())
            .filter(|(_, (t, _))| t == "string")
            .collect();
        let mut pipe_strings = redis::pipe();
        for (key, _) in &strings {
            pipe_strings.cmd("GET").arg(*key);
        }
        let owners: Vec<Option<String>> = if strings.is_empty() {
            Vec::new()
        } else {
            pipe_strings.query(&mut conn.redis)?
        };
        let mut owner_of: HashMap<&String, Option<String>> = HashMap::new();
        for ((key, _), owner) in strings.iter().zip(owners) {
            owner_of.insert(key, owner);
        }
        for (key, (type_, pttl)) in batch.iter().zip(replies.iter()) {
            if type_ == "none" || *pttl == -2 {
                continue; // expired in the meantime
            }
            out.push(LockInfo {
                key: key.clone(),
                owner: owner_of.get(key).cloned().flatten(),
                ttl_ms: (*pttl >= 0).then_some(*pttl),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// audit

/// What `audit` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditReport {
    /// Wallets in `wallets:all` checked.
    pub wallets_checked: u64,
    /// Outcome records (`transfer:*`) read.
    pub transfers_checked: u64,
    /// Of those, COMPLETED ones (each checked against both histories).
    pub transfers_completed: u64,
    /// History entries read over all wallets.
    pub history_entries: u64,
    /// The sum of every balance.
    #[serde(serialize_with = "as_text")]
    pub total_balance: Amount,
    /// The sum of every opening balance.
    #[serde(serialize_with = "as_text")]
    pub total_opening: Amount,
    /// The sum of every deposit (history entries of kind `deposit`).
    #[serde(serialize_with = "as_text")]
    pub total_deposits: Amount,
    /// One line per broken invariant, naming the key; empty when the ledger is sound.
    pub violations: Vec<String>,
}

fn as_text<S: serde::Serializer>(a: &Amount, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_string())
}

impl AuditReport {
    /// True when the ledger is sound: no violation.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Most violations listed one by one; after that they are only counted.
pub const VIOLATIONS_LISTED_MAX: usize = 1_000;

fn add(a: Amount, b: Amount) -> Result<Amount, OpsError> {
    a.checked_add(b)
        .map_err(|_| OpsError::Other("amount overflow while summing the ledger".to_string()))
}

/// A hash as HGETALL returns it.
type Fields = HashMap<String, String>;

/// A history stream as XRANGE returns it: (stream id, fields) per entry.
type RawHistory = Vec<(String, Fields)>;

/// A wallet as read for the audit: its hash, and its history or why it is not a stream.
type WalletRead = (Fields, Result<RawHistory, String>);

/// Checks the ledger invariants over every wallet in `wallets:all` and every outcome record:
///
/// - each wallet parses; balance = opening_balance + signed sum of its history; no negative
///   balance; version = number of history entries;
/// - each COMPLETED `transfer:*` record has a debit of its amount in `from_user`'s history and
///   a credit in `to_user`'s, both with its transfer_id;
/// - the total of balances = total of opening balances + total of deposits.
///
/// Reads with SSCAN/SCAN and pipelined batches; a Redis error is an `Err`, a broken invariant
/// is a line in [`AuditReport::violations`]. The checks themselves are pure functions over
/// what was read (`Auditor`).
pub fn audit(service: &WalletService) -> Result<AuditReport, OpsError> {
    let mut conn = service.pool().get()?;
    let mut auditor = Auditor::default();
    let ids = sscan_all(&mut conn, keys::WALLETS_ALL)?;
    for batch in ids.chunks(BATCH) {
        for (id, (fields, history)) in batch.iter().zip(read_wallets(&mut conn, batch)?) {
            auditor.wallet(id, &fields, history)?;
        }
    }
    auditor.totals()?;
    let outcome_keys = scan_keys(&mut conn, "transfer:*", Some("hash"))?;
    for batch in outcome_keys.chunks(BATCH) {
        for (key, fields) in batch.iter().zip(read_hashes(&mut conn, batch)?) {
            auditor.outcome(key, &fields);
        }
    }
    Ok(auditor.finish())
}

/// The hash and the history of each wallet in `ids`, in one pipelined round trip. A history
/// that does not read as a stream is an `Err` with the reason, for the auditor to report.
fn read_wallets(conn: &mut PooledConn, ids: &[String]) -> Result<Vec<WalletRead>, OpsError> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hgetall(keys::wallet(id))
            .cmd("XRANGE")
            .arg(keys::history(id))
            .arg("-")
            .arg("+");
    }
    let replies: Vec<redis::Value> = pipe.query(&mut conn.redis)?;
    replies
        .chunks(2)
        .map(|pair| {
            let fields: Fields = redis::from_redis_value(pair[0].clone())?;
            let history = redis::from_redis_value(pair[1].clone()).map_err(|e| e.to_string());
            Ok((fields, history))
        })
        .collect()
}

/// HGETALL of each key in one pipelined round trip (empty for a key that is gone).
fn read_hashes(conn: &mut PooledConn, keys: &[String]) -> Result<Vec<Fields>, OpsError> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.hgetall(key);
    }
    Ok(pipe.query(&mut conn.redis)?)
}

/// The audit's checks, fed with what [`audit`] read: every wallet (with its history), then
/// [`Auditor::totals`], then every outcome record, then [`Auditor::finish`]. Does no I/O.
#[derive(Debug, Default)]
struct Auditor {
    report: AuditReport,
    violations: Vec<String>,
    /// (kind, wallet, transfer_id) -> amount, for debit and credit entries.
    moves: HashMap<(&'static str, String, String), Amount>,
}

/// One wallet's history, replayed.
struct Replay {
    /// Signed sum of the readable entries.
    net: Amount,
    entries: u64,
    /// Some entry did not parse, so `net` is not the whole history.
    unreadable: bool,
}

impl Auditor {
    /// Checks one wallet: its `wallet:{id}` hash and its history, or why the history could not
    /// be read. `Err` only when a sum overflows.
    fn wallet(
        &mut self,
        id: &str,
        fields: &Fields,
        history: Result<RawHistory, String>,
    ) -> Result<(), OpsError> {
        self.report.wallets_checked += 1;
        let key = keys::wallet(id);
        let wallet = match parse_wallet(id, fields) {
            Ok(Some(w)) => w,
            Ok(None) => {
                let problem = format!("{key}: listed in wallets:all but does not exist");
                self.violations.push(problem);
                return Ok(());
            }
            Err(e) => {
                self.violations.push(format!("{key}: {e}"));
                return Ok(());
            }
        };
        let history = match history {
            Ok(h) => h,
            Err(e) => {
                let problem = format!("{}: not a readable stream: {e}", keys::history(id));
                self.violations.push(problem);
                return Ok(());
            }
        };
        let replay = self.replay(id, &history)?;
        self.report.history_entries += replay.entries;
        self.report.total_balance = add(self.report.total_balance, wallet.balance)?;
        self.report.total_opening = add(self.report.total_opening, wallet.opening_balance)?;
        self.violations
            .extend(wallet_violations(&key, &wallet, &replay)?);
        Ok(())
    }

    /// Sums one history, noting its debits and credits for the outcome checks and its deposits
    /// for the totals.
    fn replay(&mut self, id: &str, history: &RawHistory) -> Result<Replay, OpsError> {
        let mut replay = Replay {
            net: Amount::ZERO,
            entries: 0,
            unreadable: false,
        };
        for (stream_id, entry) in history {
            replay.entries += 1;
            let Some((transfer_id, kind, amount)) = parse_entry(entry) else {
                let history_key = keys::history(id);
                let problem = format!("{history_key} {stream_id}: unreadable entry {entry:?}");
                self.violations.push(problem);
                replay.unreadable = true;
                continue;
            };
            replay.net = add(replay.net, kind.signed(amount))?;
            if kind == HistoryKind::Deposit {
                self.report.total_deposits = add(self.report.total_deposits, amount)?;
            } else {
                self.moves
                    .insert((kind.as_str(), id.to_string(), transfer_id), amount);
            }
        }
        Ok(replay)
    }

    /// After the last wallet: the total of balances = openings + deposits.
    fn totals(&mut self) -> Result<(), OpsError> {
        let r = &self.report;
        if r.total_balance != add(r.total_opening, r.total_deposits)? {
            self.violations.push(format!(
                "ledger: total balance {} != openings {} + deposits {}",
                r.total_balance, r.total_opening, r.total_deposits
            ));
        }
        Ok(())
    }

    /// Checks one `transfer:*` record against the histories seen; an empty hash (expired
    /// between SCAN and HGETALL) is skipped.
    fn outcome(&mut self, key: &str, fields: &Fields) {
        if fields.is_empty() {
            return;
        }
        self.report.transfers_checked += 1;
        let outcome = match parse_outcome(key, fields) {
            Ok(o) => o,
            Err(e) => {
                self.violations.push(format!("{key}: {e}"));
                return;
            }
        };
        if outcome.status != Status::Completed {
            return;
        }
        self.report.transfers_completed += 1;
        for (kind, wallet) in [
            (HistoryKind::Debit, &outcome.from_user),
            (HistoryKind::Credit, &outcome.to_user),
        ] {
            let found =
                self.moves
                    .get(&(kind.as_str(), wallet.clone(), outcome.transfer_id.clone()));
            if let Some(problem) = move_violation(key, &outcome, kind, wallet, found) {
                self.violations.push(problem);
            }
        }
    }

    /// The report, with at most [`VIOLATIONS_LISTED_MAX`] violations listed one by one.
    fn finish(self) -> AuditReport {
        let mut violations = self.violations;
        if violations.len() > VIOLATIONS_LISTED_MAX {
            let more = violations.len() - VIOLATIONS_LISTED_MAX;
            violations.truncate(VIOLATIONS_LISTED_MAX);
            violations.push(format!("... and {more} more violations"));
        }
        AuditReport {
            violations,
            ..self.report
        }
    }
}

/// The per-wallet invariants: no negative balance, balance = opening + history (when every
/// entry was readable), version = number of entries.
fn wallet_violations(key: &str, wallet: &Wallet, replay: &Replay) -> Result<Vec<String>, OpsError> {
    let mut out = Vec::new();
    if wallet.balance.is_negative() {
        out.push(format!("{key}: negative balance {}", wallet.balance));
    }
    if !replay.unreadable && add(wallet.opening_balance, replay.net)? != wallet.balance {
        out.push(format!(
            "{key}: balance {} != opening {} + history {}",
            wallet.balance, wallet.opening_balance, replay.net
        ));
    }
    if wallet.version != replay.entries {
        out.push(format!(
            "{key}: version {} != {} history entries",
            wallet.version, replay.entries
        ));
    }
    Ok(out)
}

/// What is wrong with the `kind` entry of a COMPLETED `outcome` in `wallet`'s history, given
/// the amount of the entry `found` there with its transfer id.
fn move_violation(
    key: &str,
    outcome: &TransferOutcome,
    kind: HistoryKind,
    wallet: &str,
    found: Option<&Amount>,
) -> Option<String> {
    let id = &outcome.transfer_id;
    let (kind, history) = (kind.as_str(), keys::history(wallet));
    match found {
        None => Some(format!(
            "{key}: COMPLETED transfer {id} has no {kind} in {history}"
        )),
        Some(a) if *a != outcome.amount => Some(format!(
            "{key}: transfer {id} {kind} in {history} is {a}, the record says {}",
            outcome.amount
        )),
        Some(_) => None,
    }
}

/// (transfer_id, kind, amount) of one history stream entry.
fn parse_entry(f: &Fields) -> Option<(String, HistoryKind, Amount)> {
    let kind = match f.get("kind")?.as_str() {
        "debit" => HistoryKind::Debit,
        "credit" => HistoryKind::Credit,
        "deposit" => HistoryKind::Deposit,
        _ => return None,
    };
    let amount = Amount::parse(f.get("amount")?).ok()?;
    Some((f.get("transfer_id")?.clone(), kind, amount))
}

// ---------------------------------------------------------------------------------------------
// publishing one request

/// Where a request landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Delivered {
    /// The partition.
    pub partition: i32,
    /// The offset in it.
    pub offset: i64,
}

type DeliverySlot = Arc<Mutex<Option<Result<Delivered, String>>>>;

struct DeliveryReport(DeliverySlot);

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        *self.0.lock() = Some(match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.to_string()),
        });
    }
}

/// Publishes `request` to `topic` (key = from_user) with an idempotent producer, flushes and
/// waits up to `timeout` for the broker's delivery report.
pub fn publish_request(
    kafka: &KafkaConfig,
    topic: &str,
    request: &TransferRequest,
    timeout: Duration,
) -> Result<Delivered, OpsError> {
    let slot: DeliverySlot = Arc::default();
    let timeout_ms = timeout
        .as_millis()
        .clamp(1_000, i32::MAX as u128)
        .to_string();
    let producer: BaseProducer<DeliveryReport> = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", &timeout_ms)
        .create_with_context(DeliveryReport(slot.clone()))?;
    let payload = request.to_json();
    producer
        .send(
            BaseRecord::to(topic)
                .key(&request.from_user)
                .payload(&payload),
        )
        .map_err(|(e, _)| e)?;
    let deadline = Instant::now() + timeout;
    loop {
        producer.poll(Duration::from_millis(50));
        if let Some(result) = slot.lock().take() {
            return result
                .map_err(|e| OpsError::Other(format!("publishing to topic {topic} failed: {e}")));
        }
        if Instant::now() >= deadline {
            let _ = producer.flush(Duration::from_millis(100));
            return Err(OpsError::Other(format!(
                "no delivery report from the brokers at {} within {} ms (is the broker running? \
                 does topic {topic} exist?)",
                kafka.brokers,
                timeout.as_millis()
            )));
        }
    }
}

/// Publishes `requests` in one burst (key = from_user) and waits up to `timeout` for every
/// delivery report.
pub fn publish_requests(
    kafka: &KafkaConfig,
    topic: &str,
    requests: &[TransferRequest],
    timeout: Duration,
) -> Result<(), OpsError> {
    let producer: BaseProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    for request in requests {
        let payload = request.to_json();
        let mut record = BaseRecord::to(topic)
            .key(request.from_user.as_str())
            .payload(payload.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        return Err(e.into());
                    }
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(timeout).map_err(|e| {
        OpsError::Other(format!(
            "requests not delivered to the brokers at {} within {} ms: {e}",
            kafka.brokers,
            timeout.as_millis()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn wallet(balance: &str, opening: &str, version: u64) -> Fields {
        let version = version.to_string();
        fields(&[
            ("balance", balance),
            ("opening_balance", opening),
            ("currency", "USD"),
            ("status", "active"),
            ("version", &version),
        ])
    }

    fn entry(transfer_id: &str, kind: &str, amount: &str) -> (String, Fields) {
        let e = fields(&[
            ("transfer_id", transfer_id),
            ("kind", kind),
            ("amount", amount),
        ]);
        (format!("1-{transfer_id}-{kind}"), e)
    }

    fn outcome(transfer_id: &str, status: &str, amount: &str) -> Fields {
        fields(&[
            ("transfer_id", transfer_id),
            ("status", status),
            ("from_user", "a"),
            ("to_user", "b"),
            ("amount", amount),
            ("currency", "USD"),
            ("processed_at", "1700000000.000"),
        ])
    }

    /// a pays b 10.00 (t1); b gets a deposit of 5.00; t2 failed.
    fn sound() -> Auditor {
        let mut a = Auditor::default();
        a.wallet(
            "a",
            &wallet("90.00", "100.00", 1),
            Ok(vec![entry("t1", "debit", "10.00")]),
        )
        .unwrap();
        let b_history = vec![
            entry("t1", "credit", "10.00"),
            entry("d1", "deposit", "5.00"),
        ];
        a.wallet("b", &wallet("15.00", "0.00", 2), Ok(b_history))
            .unwrap();
        a.totals().unwrap();
        a.outcome("transfer:t1", &outcome("t1", "COMPLETED", "10.00"));
        a.outcome("transfer:t2", &outcome("t2", "FAILED", "999.00"));
        a.outcome("transfer:gone", &Fields::new());
        a
    }

    #[test]
    fn a_sound_ledger_has_no_violations_and_is_counted() {
        let r = sound().finish();
        assert!(r.is_ok(), "{:?}", r.violations);
        assert_eq!((r.wallets_checked, r.history_entries), (2, 3));
        assert_eq!((r.transfers_checked, r.transfers_completed), (2, 1));
        assert_eq!(r.total_balance.to_string(), "105.00");
        assert_eq!(r.total_opening.to_string(), "100.00");
        assert_eq!(r.total_deposits.to_string(), "5.00");
    }

    #[test]
    fn a_balance_the_history_does_not_explain_is_named_with_the_totals() {
        let mut a = Auditor::default();
        let history = Ok(vec![entry("t1", "debit", "10.00")]);
        a.wallet("a", &wallet("1000.00", "100.00", 1), history)
            .unwrap();
        a.totals().unwrap();
        let v = a.finish().violations;
        assert_eq!(
            v,
            [
                "wallet:a: balance 1000.00 != opening 100.00 + history -10.00",
                "ledger: total balance 1000.00 != openings 100.00 + deposits 0.00",
            ]
        );
    }

    #[test]
    fn a_negative_balance_and_a_version_off_the_history_are_violations() {
        let mut a = Auditor::default();
        let history = Ok(vec![entry("t1", "debit", "10.00")]);
        a.wallet("a", &wallet("-10.00", "0.00", 3), history)
            .unwrap();
        let v = a.finish().violations;
        assert_eq!(
            v,
            [
                "wallet:a: negative balance -10.00",
                "wallet:a: version 3 != 1 history entries",
            ]
        );
    }

    #[test]
    fn missing_wallets_and_unreadable_histories_are_reported_not_summed() {
        let mut a = Auditor::default();
        a.wallet("ghost", &Fields::new(), Ok(Vec::new())).unwrap();
        a.wallet("bad", &fields(&[("balance", "x")]), Ok(Vec::new()))
            .unwrap();
        a.wallet("noise", &wallet("1.00", "1.00", 0), Err("WRONGTYPE".into()))
            .unwrap();
        let garbled = vec![("1-0".to_string(), fields(&[("kind", "gift")]))];
        a.wallet("odd", &wallet("7.00", "1.00", 1), Ok(garbled))
            .unwrap();
        let r = a.finish();
        assert_eq!(r.wallets_checked, 4);
        assert_eq!(
            r.total_balance.to_string(),
            "7.00",
            "only the wallet that was read"
        );
        let v = r.violations;
        assert_eq!(v.len(), 4, "{v:?}");
        assert_eq!(
            v[0],
            "wallet:ghost: listed in wallets:all but does not exist"
        );
        assert!(v[1].starts_with("wallet:bad: "), "{v:?}");
        assert_eq!(
            v[2],
            "wallet:noise:history: not a readable stream: WRONGTYPE"
        );
        assert!(
            v[3].starts_with("wallet:odd:history 1-0: unreadable entry"),
            "{v:?}"
        );
    }

    #[test]
    fn a_completed_record_needs_its_debit_and_credit_of_its_amount() {
        let mut a = sound();
        a.outcome("transfer:t3", &outcome("t3", "COMPLETED", "1.00"));
        a.outcome("transfer:t1b", &outcome("t1", "COMPLETED", "9.99"));
        a.outcome("transfer:junk", &fields(&[("status", "MAYBE")]));
        let v = a.finish().violations;
        assert_eq!(v.len(), 5, "{v:?}");
        assert_eq!(
            v[0],
            "transfer:t3: COMPLETED transfer t3 has no debit in wallet:a:history"
        );
        assert_eq!(
            v[1],
            "transfer:t3: COMPLETED transfer t3 has no credit in wallet:b:history"
        );
        assert_eq!(
            v[2],
            "transfer:t1b: transfer t1 debit in wallet:a:history is 10.00, the record says 9.99"
        );
        assert!(v[4].starts_with("transfer:junk: "), "{v:?}");
    }

    #[test]
    fn violations_past_the_limit_are_only_counted() {
        let mut a = Auditor::default();
        for i in 0..VIOLATIONS_LISTED_MAX + 3 {
            a.wallet(&format!("w{i}"), &Fields::new(), Ok(Vec::new()))
                .unwrap();
        }
        let v = a.finish().violations;
        assert_eq!(v.len(), VIOLATIONS_LISTED_MAX + 1);
        assert_eq!(v.last().unwrap(), "... and 3 more violations");
    }
}
