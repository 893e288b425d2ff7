//! The wire format: transfer requests and results as JSON, and the validation that turns a
//! request's bytes into a typed [`TransferRequest`].
//!
//! `asyncapi.yaml` is the whole contract, with a JSON Schema of every payload (here:
//! `TransferRequested`, `TransferRequestRules` and `TransferCompleted`); ARCHITECTURE.md, "Wire
//! format", keeps the invariants. The short form:
//!
//! ```text
//! request on wallet.transfer.requested (key = from_user):
//! {"transfer_id":"tx_1","from_user":"user_1","to_user":"user_2","amount":"100.50",
//!  "currency":"USD","idempotency_key":"req_tx_1"}
//! result on wallet.transfer.completed (key = transfer_id):
//! {"transfer_id":"tx_1","status":"COMPLETED","processed_at":1764170000.123,"from_user":"user_1",
//!  "to_user":"user_2","amount":"100.50","currency":"USD","idempotency_key":"req_tx_1",
//!  "reason":null,"duplicate":false}
//! ```
//!
//! `currency` defaults to USD, `idempotency_key` to `transfer_id`. A result's `status` is
//! `COMPLETED` or `FAILED` (never `PENDING`), its `reason` a snake_case [`FailureReason`] or
//! null, `processed_at` seconds with milliseconds. The ledger topic's entries are
//! `worker::ledger`'s.
//!
//! Owns the JSON shapes and the rules for ids. Decoding sorts input three ways, and never
//! panics: a valid request; a request that names a `transfer_id` but breaks a field rule (it
//! gets a FAILED result with reason `invalid_request`, echoing what was sent, cut to sane
//! lengths: the amount only when it is a plain decimal number, else `"0.00"`); and poison that
//! cannot be answered at all (empty, not JSON, not an object, no `transfer_id`, a field of the
//! wrong JSON type, over [`PAYLOAD_BYTES_LIMIT`]). The worker (`worker::pool`) sends poison to
//! `wallet.transfer.dlq` with the headers `error`, `source_topic`, `source_partition`,
//! `source_offset` (and `truncated` when the payload was cut). Does not touch Redis or Kafka.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::money::{Amount, Currency};

/// Largest request payload accepted, in bytes. Anything longer is poison.
pub const PAYLOAD_BYTES_LIMIT: usize = 64 * 1024;
/// Longest user or wallet id.
pub const USER_ID_LEN_LIMIT: usize = 64;
/// Longest transfer id or idempotency key.
pub const KEY_LEN_LIMIT: usize = 128;

/// A validated transfer request: every field obeys its rule. Built by
/// [`TransferRequest::new`] in code or by [`decode`] from the wire, which apply the same rules
/// (the struct is `#[non_exhaustive]`, so it cannot be built around them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransferRequest {
    /// The client's id for this transfer, echoed in the result (the result's Kafka key):
    /// `^[A-Za-z0-9_.:-]{1,128}$`.
    pub transfer_id: String,
    /// The sender's wallet id (the request's Kafka key): `^[A-Za-z0-9_-]{1,64}$`.
    pub from_user: String,
    /// The receiver's wallet id: `^[A-Za-z0-9_-]{1,64}$`.
    pub to_user: String,
    /// What moves: `0 < amount <= AMOUNT_LIMIT`, in cents.
    pub amount: Amount,
    /// The currency both wallets must hold; `USD` when the wire request leaves it out.
    pub currency: Currency,
    /// What makes the request happen once: every request with this key gets the first
    /// one's answer. The `transfer_id` when not given.
    pub idempotency_key: String,
    /// When the request was made (ms since the Unix epoch; the worker gives the Kafka
    /// message's timestamp), if known. A request older than the outcome ttl for which no
    /// outcome is recorded is not applied: it is answered FAILED `expired`
    /// (`engine::expiry`). Not part of the request's fingerprint.
    pub requested_at_ms: Option<u64>,
}

/// The result message on `wallet.transfer.completed`, in the original system's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferCompleted {
    /// The request's `transfer_id` (also the message key).
    pub transfer_id: String,
    /// COMPLETED or FAILED.
    pub status: Status,
    /// Seconds since the Unix epoch, with milliseconds.
    pub processed_at: f64,
    /// The sender, as requested.
    pub from_user: String,
    /// The receiver, as requested.
    pub to_user: String,
    /// The amount as text with two decimals (`"100.50"`).
    pub amount: String,
    /// The currency code, as requested.
    pub currency: String,
    /// The request's idempotency key.
    pub idempotency_key: String,
    /// Why it failed; `null` when COMPLETED.
    pub reason: Option<FailureReason>,
    /// True when an earlier message with the same idempotency key was answered and this one
    /// changed nothing (see [`crate::TransferOutcome::duplicate`]).
    pub duplicate: bool,
}

/// The status of a transfer: `"COMPLETED"` or `"FAILED"` on the wire; a recorded outcome may
/// also be `"PENDING"` (Redis Cluster only).
///
/// Answers carry only the first two: [`crate::WalletService::transfer`] never returns a
/// PENDING outcome (it finishes the transfer first), so no result message says PENDING.
/// PENDING is the state of an outcome record of a cross-slot transfer on a Redis Cluster
/// between the debit and the completion (`engine::cluster_transfer`, "PENDING"); it is read
/// only by [`crate::WalletService::transfer_outcome_of`] and the recovery. Readers older than
/// it cannot meet it: they know no cluster key names (and would take the unknown status for a
/// corrupt record, never for a completed one). Every comparison with
/// [`Status::Completed`] counts it as not completed.
///
/// Not `#[non_exhaustive]`: the values of the stored data model; a new one comes only in a
/// minor release (docs/library.md, "Compatibility").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The money moved.
    Completed,
    /// Nothing moved; [`TransferCompleted::reason`] (or [`crate::TransferOutcome::reason`])
    /// says why.
    Failed,
    /// Recorded only, never answered: a cross-slot transfer on a Redis Cluster has debited the
    /// sender and has yet to credit the receiver (or to record that it did). The next
    /// delivery of the request, or [`crate::WalletService::recover`], finishes it.
    Pending,
}

impl Status {
    /// The wire text: `"COMPLETED"`, `"FAILED"` or (records only) `"PENDING"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Pending => "PENDING",
        }
    }

    /// Parses the text written by [`Status::as_str`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            "PENDING" => Some(Status::Pending),
            _ => None,
        }
    }
}

/// Why a transfer failed: the `reason` of a FAILED answer, snake_case on the wire.
///
/// The first six are business outcomes, recorded in Redis with the request's idempotency key,
/// so a replay gets the same answer. `InvalidRequest` and `IdempotencyConflict` are answered
/// but never recorded (validation is deterministic; a conflict leaves the first record alone).
/// Infrastructure trouble (Redis down, a lock held too long) is never a `FailureReason`: it is
/// a transient [`crate::TransferError`], retried and never answered.
///
/// The enum is `#[non_exhaustive]`: new reasons may come in a minor release, so a `match` on
/// it needs a wildcard arm. Without one it does not compile:
///
/// ```compile_fail,E0004
/// use wallet_transfer::FailureReason;
///
/// fn advice(reason: FailureReason) -> &'static str {
///     match reason {
///         FailureReason::InsufficientFunds => "top up the sender",
///         FailureReason::SameUser => "pick another receiver",
///         FailureReason::WalletNotFound => "create the wallet first",
///         FailureReason::WalletInactive => "reactivate the wallet",
///         FailureReason::CurrencyMismatch => "send in the wallets' currency",
///         FailureReason::BalanceLimit => "the receiver is full",
///         FailureReason::InvalidRequest => "fix the request",
///         FailureReason::IdempotencyConflict => "use a fresh idempotency key",
///         FailureReason::LegacyLockTimeout => "ask again with a fresh idempotency key",
///         FailureReason::Expired => "look the transfer up in the ledger",
///     }
/// }
/// ```
///
/// With the wildcard arm it does:
///
/// ```
/// use wallet_transfer::FailureReason;
///
/// fn advice(reason: FailureReason) -> &'static str {
///     match reason {
///         FailureReason::InsufficientFunds => "top up the sender",
///         FailureReason::InvalidRequest => "fix the request",
///         _ => "see the reason's documentation",
///     }
/// }
/// assert_eq!(advice(FailureReason::SameUser), "see the reason's documentation");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureReason {
    /// The sender's balance is below the amount. Recorded.
    InsufficientFunds,
    /// Sender and receiver are the same wallet. Recorded.
    SameUser,
    /// The sender's or the receiver's wallet does not exist. Recorded.
    WalletNotFound,
    /// The sender's or the receiver's wallet is frozen or closed. Recorded.
    WalletInactive,
    /// A wallet holds another currency than the request's. Recorded.
    CurrencyMismatch,
    /// The request names a `transfer_id` but breaks a field rule (see
    /// [`crate::engine::message::decode`]). Answered, not recorded.
    InvalidRequest,
    /// `"lock_timeout"`: only in records and results written by the original Python system,
    /// which answered a lock timeout with a FAILED result. This engine never gives it: a lock
    /// timeout is the transient [`crate::TransferError::LockTimeout`], retried and never
    /// answered. It is kept so that such an old record or result still reads (a replay of a
    /// request recorded this way gets that recorded answer back), and it is not in
    /// [`FailureReason::ALL`].
    #[serde(rename = "lock_timeout")]
    LegacyLockTimeout,
    /// The idempotency key was used before for a different request. Answered, not recorded;
    /// the library reports it as [`crate::TransferError::IdempotencyConflict`].
    IdempotencyConflict,
    /// The credit would take the receiver past [`crate::engine::money::BALANCE_LIMIT`].
    /// Recorded.
    BalanceLimit,
    /// The request is older than the outcome ttl ([`crate::EngineConfig::outcome_ttl_ms`])
    /// and no outcome is recorded for it, so it was not applied: an earlier delivery may have
    /// applied it and its record expired since (look the transfer up in the sender's history
    /// or the ledger topic). Answered, not recorded (`engine::expiry`).
    Expired,
}

impl FailureReason {
    /// Every reason this engine answers with, in declaration order.
    /// [`FailureReason::LegacyLockTimeout`] is left out: it is only read, never given.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::InsufficientFunds,
        FailureReason::SameUser,
        FailureReason::WalletNotFound,
        FailureReason::WalletInactive,
        FailureReason::CurrencyMismatch,
        FailureReason::InvalidRequest,
        FailureReason::IdempotencyConflict,
        FailureReason::BalanceLimit,
        FailureReason::Expired,
    ];

    /// The wire text, such as `"insufficient_funds"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InsufficientFunds => "insufficient_funds",
            FailureReason::SameUser => "same_user",
            FailureReason::WalletNotFound => "wallet_not_found",
            FailureReason::WalletInactive => "wallet_inactive",
            FailureReason::CurrencyMismatch => "currency_mismatch",
            FailureReason::InvalidRequest => "invalid_request",
            FailureReason::LegacyLockTimeout => "lock_timeout",
            FailureReason::IdempotencyConflict => "idempotency_conflict",
            FailureReason::BalanceLimit => "balance_limit",
            FailureReason::Expired => "expired",
        }
    }

    /// Parses the wire text written by [`FailureReason::as_str`], the legacy `"lock_timeout"`
    /// included; `None` for anything else.
    pub fn parse(text: &str) -> Option<FailureReason> {
        FailureReason::ALL
            .into_iter()
            .chain([FailureReason::LegacyLockTimeout])
            .find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field that breaks its rule. Displays as `"amount: at most 2 decimals, got 100.505"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct FieldError {
    /// The field, by its wire name (`amount`, `from_user`, ...).
    pub field: &'static str,
    /// The rule it broke and what was given.
    pub rule: String,
}

impl FieldError {
    fn new(field: &'static str, rule: impl Into<String>) -> FieldError {
        FieldError {
            field,
            rule: rule.into(),
        }
    }
}

#[doc(hidden)]
/// Input that cannot be answered with a result: it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoisonError {
    /// Over [`PAYLOAD_BYTES_LIMIT`]; the length in bytes.
    #[error("payload is {0} bytes, over the limit of {PAYLOAD_BYTES_LIMIT}")]
    TooLarge(usize),
    /// Empty or only whitespace.
    #[error("payload is empty")]
    Empty,
    /// Not JSON; the parser's message.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("payload is JSON but not an object")]
    NotObject,
    /// No `transfer_id`, so there is nothing to address a result to.
    #[error("transfer_id is missing")]
    NoTransferId,
    /// A field of the wrong JSON type (a producer that does not speak this format).
    #[error("{0}")]
    WrongType(FieldError),
}

#[doc(hidden)]
/// What a payload turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A valid request: run it.
    Request(TransferRequest),
    /// It names a transfer but breaks a field rule: answer FAILED, reason `invalid_request`.
    Invalid {
        /// The FAILED `invalid_request` answer, echoing what was sent (cut to sane lengths).
        echo: TransferCompleted,
        /// The first rule broken.
        error: FieldError,
    },
}

#[doc(hidden)]
/// Sorts a raw payload into a request, an invalid request, or poison.
pub fn decode(payload: &[u8]) -> Result<Decoded, PoisonError> {
    if payload.len() > PAYLOAD_BYTES_LIMIT {
        return Err(PoisonError::TooLarge(payload.len()));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(PoisonError::Empty);
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| PoisonError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(PoisonError::NotObject);
    };
    // Types first: a field of the wrong JSON type means the producer does not speak our format.
    let text = |field: &'static str| -> Result<Option<String>, PoisonError> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if field == "amount" => Ok(Some(n.to_string())),
            Some(other) => Err(PoisonError::WrongType(FieldError::new(
                field,
                format!("must be a string, got {}", json_type(other)),
            ))),
        }
    };
    let transfer_id = text("transfer_id")?.ok_or(PoisonError::NoTransferId)?;
    let from_user = text("from_user")?;
    let to_user = text("to_user")?;
    let amount = text("amount")?;
    let currency = text("currency")?;
    let idempotency_key = text("idempotency_key")?;

    let raw = RawRequest {
        transfer_id,
        from_user,
        to_user,
        amount,
        currency,
        idempotency_key,
    };
    match raw.validate() {
        Ok(request) => Ok(Decoded::Request(request)),
        Err(error) => Ok(Decoded::Invalid {
            echo: raw.echo_failed(),
            error,
        }),
    }
}

#[doc(hidden)]
/// A request whose fields have the right JSON types but are not yet checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRequest {
    /// `transfer_id`, present (without it the payload is poison).
    pub transfer_id: String,
    /// `from_user`, if sent.
    pub from_user: Option<String>,
    /// `to_user`, if sent.
    pub to_user: Option<String>,
    /// `amount` as text (a JSON number is taken by its text), if sent.
    pub amount: Option<String>,
    /// `currency`, if sent.
    pub currency: Option<String>,
    /// `idempotency_key`, if sent.
    pub idempotency_key: Option<String>,
}

impl RawRequest {
    /// Applies every field rule; the first broken one is reported.
    pub fn validate(&self) -> Result<TransferRequest, FieldError> {
        check_key("transfer_id", &self.transfer_id)?;
        let required = |field: &'static str, v: &Option<String>| -> Result<String, FieldError> {
            v.clone()
                .ok_or_else(|| FieldError::new(field, "is required"))
        };
        let from_user = required("from_user", &self.from_user)?;
        check_user_id("from_user", &from_user)?;
        let to_user = required("to_user", &self.to_user)?;
        check_user_id("to_user", &to_user)?;
        let amount_text = required("amount", &self.amount)?;
        let amount = Amount::parse_transfer_amount(&amount_text)
            .map_err(|e| FieldError::new("amount", e.to_string()))?;
        let currency = match &self.currency {
            None => Currency::USD,
            Some(c) => c
                .parse()
                .map_err(|e: crate::engine::money::CurrencyError| {
                    FieldError::new("currency", e.to_string())
                })?,
        };
        let idempotency_key = match &self.idempotency_key {
            None => self.transfer_id.clone(),
            Some(k) => {
                check_key("idempotency_key", k)?;
                k.clone()
            }
        };
        Ok(TransferRequest {
            transfer_id: self.transfer_id.clone(),
            from_user,
            to_user,
            amount,
            currency,
            idempotency_key,
            requested_at_ms: None,
        })
    }

    /// A FAILED `invalid_request` result that echoes what was sent, cut to sane lengths. The
    /// amount is echoed only when it is a plain decimal number ([`echo_amount`]); otherwise it
    /// is `"0.00"`, so that every result carries a number in `amount` (the original system's
    /// result model reads it as a decimal and refuses anything else).
    pub fn echo_failed(&self) -> TransferCompleted {
        let cut = |s: &Option<String>| {
            s.as_deref()
                .unwrap_or("")
                .chars()
                .take(KEY_LEN_LIMIT)
                .collect::<String>()
        };
        TransferCompleted {
            transfer_id: self.transfer_id.chars().take(KEY_LEN_LIMIT).collect(),
            status: Status::Failed,
            processed_at: now_seconds(),
            from_user: cut(&self.from_user),
            to_user: cut(&self.to_user),
            amount: echo_amount(self.amount.as_deref()),
            currency: self
                .currency
                .as_deref()
                .map(|c| c.chars().take(16).collect())
                .unwrap_or_else(|| "USD".to_string()),
            idempotency_key: match &self.idempotency_key {
                Some(_) => cut(&self.idempotency_key),
                None => self.transfer_id.chars().take(KEY_LEN_LIMIT).collect(),
            },
            reason: Some(FailureReason::InvalidRequest),
            duplicate: false,
        }
    }
}

#[doc(hidden)]
/// The `amount` of an `invalid_request` answer: the amount as sent when it is a plain decimal
/// number (`-?digits[.digits]`, at most [`KEY_LEN_LIMIT`] characters), else `"0.00"` (not
/// sent, not a number, an exponent, too long). asyncapi.yaml, `TransferCompleted`, says so.
pub fn echo_amount(sent: Option<&str>) -> String {
    let plain = |text: &str| {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        text.len() <= KEY_LEN_LIMIT && all_digits(whole) && all_digits(fraction)
    };
    match sent {
        Some(text) if plain(text) => text.to_string(),
        _ => "0.00".to_string(),
    }
}

impl TransferRequest {
    /// Builds a request in code; the same rules apply as on the wire.
    pub fn new(
        transfer_id: &str,
        from_user: &str,
        to_user: &str,
        amount: &str,
        currency: Currency,
    ) -> Result<TransferRequest, FieldError> {
        RawRequest {
            transfer_id: transfer_id.to_string(),
            from_user: Some(from_user.to_string()),
            to_user: Some(to_user.to_string()),
            amount: Some(amount.to_string()),
            currency: Some(currency.as_str().to_string()),
            idempotency_key: None,
        }
        .validate()
    }

    /// The same request under another idempotency key.
    pub fn with_idempotency_key(mut self, key: &str) -> Result<TransferRequest, FieldError> {
        check_key("idempotency_key", key)?;
        self.idempotency_key = key.to_string();
        Ok(self)
    }

    /// The same request, made at `at_ms` (ms since the Unix epoch): see
    /// [`TransferRequest::requested_at_ms`].
    pub fn with_requested_at_ms(mut self, at_ms: u64) -> TransferRequest {
        self.requested_at_ms = Some(at_ms);
        self
    }

    /// The request as JSON for `wallet.transfer.requested`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "transfer_id": self.transfer_id,
            "from_user": self.from_user,
            "to_user": self.to_user,
            "amount": self.amount.to_string(),
            "currency": self.currency.as_str(),
            "idempotency_key": self.idempotency_key,
        })
        .to_string()
    }

    /// A stable fingerprint of what the request asks for (not its ids). The same idempotency
    /// key arriving with another fingerprint is an `idempotency_conflict`.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.from_user,
            &self.to_user,
            self.amount,
            self.currency.as_str(),
        )
    }
}

#[doc(hidden)]
/// [`TransferRequest::fingerprint`] from its parts: a recorded outcome holds all of them, so
/// its fingerprint is recomputed rather than stored (ARCHITECTURE.md, "Redis data model").
pub fn fingerprint(from_user: &str, to_user: &str, amount: Amount, currency: &str) -> String {
    let canonical = format!("{from_user}\n{to_user}\n{}\n{currency}", amount.minor());
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[doc(hidden)]
/// `^[A-Za-z0-9_-]{1,64}$`: the rule for user and wallet ids.
pub fn check_user_id(field: &'static str, id: &str) -> Result<(), FieldError> {
    check_chars(id, USER_ID_LEN_LIMIT, |c| {
        c.is_ascii_alphanumeric() || c == '_' || c == '-'
    })
    .map_err(|rule| FieldError::new(field, rule))
}

#[doc(hidden)]
/// `^[A-Za-z0-9_.:-]{1,128}$`: the rule for transfer ids and idempotency keys.
pub fn check_key(field: &'static str, key: &str) -> Result<(), FieldError> {
    check_chars(key, KEY_LEN_LIMIT, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
    })
    .map_err(|rule| FieldError::new(field, rule))
}

fn check_chars(text: &str, len_max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".to_string());
    }
    if text.len() > len_max {
        return Err(format!("at most {len_max} characters, got {}", text.len()));
    }
    match text.chars().find(|c| !allowed(*c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "may hold only letters, digits{}, got {c:?} in {:?}",
            if len_max == USER_ID_LEN_LIMIT {
                ", '_' and '-'"
            } else {
                ", '_', '-', '.' and ':'"
            },
            text.chars().take(len_max).collect::<String>()
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[doc(hidden)]
/// Seconds since the Unix epoch with millisecond precision.
pub fn now_seconds() -> f64 {
    now_ms() as f64 / 1000.0
}

#[doc(hidden)]
/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(json: &str) -> TransferRequest {
        match decode(json.as_bytes()) {
            Ok(Decoded::Request(r)) => r,
            other => panic!("expected a request from {json}, got {other:?}"),
        }
    }

    fn invalid(json: &str) -> FieldError {
        match decode(json.as_bytes()) {
            Ok(Decoded::Invalid { error, echo }) => {
                assert_eq!(echo.status, Status::Failed);
                assert_eq!(echo.reason, Some(FailureReason::InvalidRequest));
                error
            }
            other => panic!("expected an invalid request from {json}, got {other:?}"),
        }
    }

    #[test]
    fn decodes_the_original_shape_with_defaults() {
        let r = request(
            r#"{"transfer_id":"tx_1","from_user":"user_1","to_user":"user_2","amount":"100.50"}"#,
        );
        assert_eq!(r.amount.minor(), 10_050);
        assert_eq!(r.currency, Currency::USD);
        assert_eq!(r.idempotency_key, "tx_1");
        let r = request(
            r#"{"transfer_id":"tx_1","from_user":"a","to_user":"b","amount":100.5,"currency":"EUR","idempotency_key":"req_tx_1"}"#,
        );
        assert_eq!(r.amount.minor(), 10_050);
        assert_eq!(r.currency, Currency::EUR);
        assert_eq!(r.idempotency_key, "req_tx_1");
    }

    #[test]
    fn json_numbers_obey_the_text_rule() {
        let base = |amount: &str| {
            format!(r#"{{"transfer_id":"t","from_user":"a","to_user":"b","amount":{amount}}}"#)
        };
        assert_eq!(request(&base("100")).amount.minor(), 10_000);
        assert_eq!(
            invalid(&base("100.505")).to_string(),
            "amount: at most 2 decimals, got 100.505"
        );
        assert_eq!(invalid(&base("1e3")).field, "amount");
        assert_eq!(invalid(&base("-5")).field, "amount");
        assert_eq!(invalid(&base("0")).field, "amount");
    }

    #[test]
    fn field_rules_name_the_field() {
        let e = invalid(r#"{"transfer_id":"t","from_user":"a b","to_user":"b","amount":"1"}"#);
        assert_eq!(e.field, "from_user");
        let e = invalid(r#"{"transfer_id":"t","from_user":"a","amount":"1"}"#);
        assert_eq!(e.to_string(), "to_user: is required");
        let e = invalid(
            r#"{"transfer_id":"t","from_user":"a","to_user":"b","amount":"1","currency":"JPY"}"#,
        );
        assert_eq!(
            e.to_string(),
            r#"currency: must be one of USD, EUR, GBP, got "JPY""#
        );
        let e = invalid(r#"{"transfer_id":"t","from_user":"a","to_user":"b","amount":"abc"}"#);
        assert_eq!(e.field, "amount");
        let long = "x".repeat(65);
        let e = invalid(&format!(
            r#"{{"transfer_id":"t","from_user":"{long}","to_user":"b","amount":"1"}}"#
        ));
        assert_eq!(e.to_string(), "from_user: at most 64 characters, got 65");
    }

    #[test]
    fn poison_is_sorted_out() {
        assert_eq!(decode(b""), Err(PoisonError::Empty));
        assert!(matches!(decode(b"{not json"), Err(PoisonError::NotJson(_))));
        assert_eq!(decode(b"[1,2]"), Err(PoisonError::NotObject));
        assert_eq!(decode(b"{}"), Err(PoisonError::NoTransferId));
        assert!(matches!(
            decode(br#"{"transfer_id":"t","amount":{"x":1}}"#),
            Err(PoisonError::WrongType(FieldError {
                field: "amount",
                ..
            }))
        ));
        assert!(matches!(
            decode(br#"{"transfer_id":12}"#),
            Err(PoisonError::WrongType(FieldError {
                field: "transfer_id",
                ..
            }))
        ));
        let huge = vec![b' '; PAYLOAD_BYTES_LIMIT + 1];
        assert_eq!(
            decode(&huge),
            Err(PoisonError::TooLarge(PAYLOAD_BYTES_LIMIT + 1))
        );
    }

    #[test]
    fn result_json_has_the_original_shape() {
        let echo = RawRequest {
            transfer_id: "tx_1".into(),
            ..Default::default()
        }
        .echo_failed();
        let v: Value = serde_json::to_value(&echo).unwrap();
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["reason"], "invalid_request");
        assert_eq!(v["duplicate"], false);
        assert_eq!(v["idempotency_key"], "tx_1");
    }

    #[test]
    fn an_invalid_request_echoes_its_amount_only_when_it_is_a_plain_decimal() {
        for kept in ["1.234", "-5", "0", "007.5", "100.505"] {
            assert_eq!(echo_amount(Some(kept)), kept);
        }
        let long = "1".repeat(KEY_LEN_LIMIT + 1);
        for replaced in [
            None,
            Some(""),
            Some("abc"),
            Some("1e3"),
            Some("5."),
            Some(".5"),
        ] {
            assert_eq!(echo_amount(replaced), "0.00", "{replaced:?}");
        }
        assert_eq!(echo_amount(Some(&long)), "0.00");
        let e = invalid(r#"{"transfer_id":"t","from_user":"a","to_user":"b","amount":"ten"}"#);
        assert_eq!(e.field, "amount");
        match decode(br#"{"transfer_id":"t","from_user":"a","to_user":"b","amount":"ten"}"#) {
            Ok(Decoded::Invalid { echo, .. }) => assert_eq!(echo.amount, "0.00"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_reason_round_trips_and_the_legacy_lock_timeout_still_reads() {
        for reason in FailureReason::ALL {
            assert_eq!(FailureReason::parse(reason.as_str()), Some(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
        assert!(!FailureReason::ALL.contains(&FailureReason::LegacyLockTimeout));
        assert_eq!(
            FailureReason::parse("lock_timeout"),
            Some(FailureReason::LegacyLockTimeout)
        );
        // A FAILED result of the original Python system still reads.
        let old: TransferCompleted = serde_json::from_str(
            r#"{"transfer_id":"tx_1","status":"FAILED","processed_at":1764170000.123,"from_user":"user_1","to_user":"user_2","amount":"100.50","currency":"USD","idempotency_key":"tx_1","reason":"lock_timeout","duplicate":false}"#,
        )
        .unwrap();
        assert_eq!(old.reason, Some(FailureReason::LegacyLockTimeout));
        assert!(
            serde_json::to_string(&old)
                .unwrap()
                .contains(r#""reason":"lock_timeout""#)
        );
        assert_eq!(FailureReason::parse("lock_stuck"), None);
    }

    #[test]
    fn request_json_round_trips() {
        let r = TransferRequest::new("tx_9", "user_1", "user_2", "5234.5", Currency::GBP)
            .unwrap()
            .with_idempotency_key("k:9")
            .unwrap();
        assert_eq!(request(&r.to_json()), r);
    }

    #[test]
    fn fingerprint_depends_on_what_is_asked_not_on_ids() {
        let a = TransferRequest::new("tx_1", "u1", "u2", "10", Currency::USD).unwrap();
        let b = TransferRequest::new("tx_2", "u1", "u2", "10.00", Currency::USD).unwrap();
        let c = TransferRequest::new("tx_1", "u1", "u2", "10.01", Currency::USD).unwrap();
        let d = TransferRequest::new("tx_1", "u2", "u1", "10", Currency::USD).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_ne!(a.fingerprint(), d.fingerprint());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_json_like_text_never_panics(text in r#"[{}\[\]":,a-z0-9._\- ]{0,200}"#) {
            let _ = decode(text.as_bytes());
        }
    }
}
