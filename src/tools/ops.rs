//! Operator views of the ledger: a snapshot of every wallet, the held locks, a full audit of
//! the ledger invariants, and publishing one transfer request to Kafka (optionally waiting for
//! its result).
//!
//! Everything here reads with SCAN/SSCAN and pipelined batches, never `KEYS`, so it is safe on a
//! large production database. Nothing here changes data. The `wallet snapshot`, `locks`, `audit`
//! and `transfer` commands are thin wrappers around these functions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::engine::message::{Status, TransferCompleted, TransferRequest};
use crate::engine::money::Amount;
use crate::engine::service::WalletService;
use crate::engine::store::{self, PooledConn, keys};
use crate::engine::transfer::parse_outcome;
use crate::engine::wallet::{HistoryKind, parse_wallet};
use crate::worker::kafka::{self, KafkaConfig};

/// Keys read per pipelined round trip.
pub const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis reply: {0}")]
    Reply(#[from] redis::ParsingError),
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Wallet(#[from] crate::engine::wallet::WalletError),
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
    pub id: String,
    /// `full_name` of `user:{id}`, empty when there is none.
    pub name: String,
    /// `"5234.50"`; empty when the wallet hash is missing.
    pub balance: String,
    pub currency: String,
    pub status: String,
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
pub struct AuditReport {
    pub wallets_checked: u64,
    /// Outcome records (`transfer:*`) read.
    pub transfers_checked: u64,
    pub transfers_completed: u64,
    pub history_entries: u64,
    #[serde(serialize_with = "as_text")]
    pub total_balance: Amount,
    #[serde(serialize_with = "as_text")]
    pub total_opening: Amount,
    #[serde(serialize_with = "as_text")]
    pub total_deposits: Amount,
    /// One line per broken invariant, naming the key; empty when the ledger is sound.
    pub violations: Vec<String>,
}

fn as_text<S: serde::Serializer>(a: &Amount, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_string())
}

impl AuditReport {
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

/// Checks the ledger invariants over every wallet in `wallets:all` and every outcome record:
///
/// - each wallet parses; balance = opening_balance + signed sum of its history; no negative
///   balance; version = number of history entries;
/// - each COMPLETED `transfer:*` record has a debit of its amount in `from_user`'s history and
///   a credit in `to_user`'s, both with its transfer_id;
/// - the total of balances = total of opening balances + total of deposits.
///
/// Reads with SSCAN/SCAN and pipelined batches; a Redis error is an `Err`, a broken invariant
/// is a line in [`AuditReport::violations`].
pub fn audit(service: &WalletService) -> Result<AuditReport, OpsError> {
    let mut conn = service.pool().get()?;
    let mut report = AuditReport::default();
    let mut violations = Vec::new();
    // (kind, wallet, transfer_id) -> amount, for debit and credit entries.
    let mut moves: HashMap<(&'static str, String, String), Amount> = HashMap::new();

    let ids = sscan_all(&mut conn, keys::WALLETS_ALL)?;
    for batch in ids.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for id in batch {
            pipe.hgetall(keys::wallet(id))
                .cmd("XRANGE")
                .arg(keys::history(id))
                .arg("-")
                .arg("+");
        }
        let replies: Vec<redis::Value> = pipe.query(&mut conn.redis)?;
        for (id, pair) in batch.iter().zip(replies.chunks(2)) {
            report.wallets_checked += 1;
            let key = keys::wallet(id);
            let fields: HashMap<String, String> = redis::from_redis_value(pair[0].clone())?;
            let wallet = match parse_wallet(id, &fields) {
                Ok(Some(w)) => w,
                Ok(None) => {
                    violations.push(format!("{key}: listed in wallets:all but does not exist"));
                    continue;
                }
                Err(e) => {
                    violations.push(format!("{key}: {e}"));
                    continue;
                }
            };
            let history_key = keys::history(id);
            let raw: Vec<(String, HashMap<String, String>)> =
                match redis::from_redis_value(pair[1].clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        violations.push(format!("{history_key}: not a readable stream: {e}"));
                        continue;
                    }
                };
            let mut net = Amount::ZERO;
            let mut entries: u64 = 0;
            let mut unreadable = false;
            for (stream_id, entry) in &raw {
                entries += 1;
                let parsed = parse_entry(entry);
                let Some((transfer_id, kind, amount)) = parsed else {
                    violations.push(format!(
                        "{history_key} {stream_id}: unreadable entry {entry:?}"
                    ));
                    unreadable = true;
                    continue;
                };
                net = add(net, kind.signed(amount))?;
                if kind == HistoryKind::Deposit {
                    report.total_deposits = add(report.total_deposits, amount)?;
                } else {
                    moves.insert((kind.as_str(), id.clone(), transfer_id), amount);
                }
            }
            report.history_entries += entries;
            report.total_balance = add(report.total_balance, wallet.balance)?;
            report.total_opening = add(report.total_opening, wallet.opening_balance)?;
            if wallet.balance.is_negative() {
                violations.push(format!("{key}: negative balance {}", wallet.balance));
            }
            let replayed = add(wallet.opening_balance, net)?;
            if !unreadable && replayed != wallet.balance {
                violations.push(format!(
                    "{key}: balance {} != opening {} + history {}",
                    wallet.balance, wallet.opening_balance, net
                ));
            }
            if wallet.version != entries {
                violations.push(format!(
                    "{key}: version {} != {entries} history entries",
                    wallet.version
                ));
            }
        }
    }

    let expected_total = add(report.total_opening, report.total_deposits)?;
    if report.total_balance != expected_total {
        violations.push(format!(
            "ledger: total balance {} != openings {} + deposits {}",
            report.total_balance, report.total_opening, report.total_deposits
        ));
    }

    let outcome_keys = scan_keys(&mut conn, "transfer:*", Some("hash"))?;
    for batch in outcome_keys.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.hgetall(key);
        }
        let records: Vec<HashMap<String, String>> = pipe.query(&mut conn.redis)?;
        for (key, fields) in batch.iter().zip(records) {
            if fields.is_empty() {
                continue; // expired between SCAN and HGETALL
            }
            report.transfers_checked += 1;
            let outcome = match parse_outcome(key, &fields) {
                Ok(o) => o,
                Err(e) => {
                    violations.push(format!("{key}: {e}"));
                    continue;
                }
            };
            if outcome.status != Status::Completed {
                continue;
            }
            report.transfers_completed += 1;
            for (kind, wallet) in [
                (HistoryKind::Debit, &outcome.from_user),
                (HistoryKind::Credit, &outcome.to_user),
            ] {
                let found =
                    moves.get(&(kind.as_str(), wallet.clone(), outcome.transfer_id.clone()));
                match found {
                    None => violations.push(format!(
                        "{key}: COMPLETED transfer {} has no {} in {}",
                        outcome.transfer_id,
                        kind.as_str(),
                        keys::history(wallet)
                    )),
                    Some(a) if *a != outcome.amount => violations.push(format!(
                        "{key}: transfer {} {} in {} is {a}, the record says {}",
                        outcome.transfer_id,
                        kind.as_str(),
                        keys::history(wallet),
                        outcome.amount
                    )),
                    Some(_) => {}
                }
            }
        }
    }

    if violations.len() > VIOLATIONS_LISTED_MAX {
        let more = violations.len() - VIOLATIONS_LISTED_MAX;
        violations.truncate(VIOLATIONS_LISTED_MAX);
        violations.push(format!("... and {more} more violations"));
    }
    report.violations = violations;
    Ok(report)
}

/// (transfer_id, kind, amount) of one history stream entry.
fn parse_entry(f: &HashMap<String, String>) -> Option<(String, HistoryKind, Amount)> {
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
    pub partition: i32,
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

/// A consumer positioned at the current end of every partition of a results topic: start it
/// before publishing a request, then [`ResultWatcher::wait_for`] its result.
pub struct ResultWatcher {
    consumer: BaseConsumer,
    topic: String,
}

impl ResultWatcher {
    /// Assigns every partition of `topic` at its high watermark. No consumer group is joined
    /// and nothing is committed.
    pub fn start(kafka: &KafkaConfig, topic: &str) -> Result<ResultWatcher, OpsError> {
        let partitions = kafka::partition_count(kafka, topic)?;
        if partitions == 0 {
            return Err(OpsError::Other(format!(
                "results topic {topic} does not exist at {} (check --results-topic)",
                kafka.brokers
            )));
        }
        let consumer: BaseConsumer = kafka
            .client_config()
            .set(
                "group.id",
                format!("wallet-cli-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let timeout = Duration::from_millis(kafka::ADMIN_TIMEOUT_MS);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        consumer.assign(&tpl)?;
        Ok(ResultWatcher {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// The results of every transfer in `ids` that arrive within `timeout` (the first one of
    /// each id).
    pub fn wait_for_all(
        &self,
        ids: &std::collections::HashSet<String>,
        timeout: Duration,
    ) -> Result<std::collections::HashMap<String, TransferCompleted>, OpsError> {
        let mut found = std::collections::HashMap::new();
        let deadline = Instant::now() + timeout;
        while found.len() < ids.len() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            if let Some(Ok(m)) = self.consumer.poll(wait)
                && let Some(payload) = m.payload()
                && let Ok(result) = serde_json::from_slice::<TransferCompleted>(payload)
                && ids.contains(&result.transfer_id)
            {
                found.entry(result.transfer_id.clone()).or_insert(result);
            }
        }
        Ok(found)
    }

    /// The first result with `transfer_id`, or `None` after `timeout`. Messages that are not
    /// results (or other transfers' results) are skipped.
    pub fn wait_for(
        &self,
        transfer_id: &str,
        timeout: Duration,
    ) -> Result<Option<TransferCompleted>, OpsError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            match self.consumer.poll(wait) {
                None => {}
                Some(Err(e)) => log::debug!("polling {}: {e}", self.topic),
                Some(Ok(m)) => {
                    let Some(payload) = m.payload() else { continue };
                    if let Ok(result) = serde_json::from_slice::<TransferCompleted>(payload)
                        && result.transfer_id == transfer_id
                    {
                        return Ok(Some(result));
                    }
                }
            }
        }
    }
}
