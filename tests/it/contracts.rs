//! The wire contract, `asyncapi.yaml`, against what the worker really sends and reads.
//!
//! - A real run (redis-server, tansu, the `wallet worker` binary): the six scenarios of
//!   `wallet produce`, then requests that reach every answer (every failure reason, a replay,
//!   an idempotency conflict, defaults, the original system's shape) and poison. Every message
//!   on the four topics is validated against its channel's payload schema (headers too), and
//!   the request schemas must sort the requests as the worker did: answered or dead-lettered,
//!   run or `invalid_request`.
//! - Without servers: the crate's serde types (`TransferRequest`, `TransferCompleted`,
//!   `LedgerEntry`) write what the schemas say, the decoder sorts payloads as the request
//!   schemas do, the enums and topic names are the crate's, and every example in the document
//!   matches its schema.
//!
//! The outgoing schemas are closed (`additionalProperties: false`), so a field added to a
//! message without the document fails here. Set `CONTRACTS_DUMP=DIR` to keep the real run's
//! messages as JSON lines (the document's examples come from such a run).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use jsonschema::Validator;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::support::create_wallets;
use crate::support::stack::Stack;
use crate::support::wait_until;
use wallet_transfer::engine::message::{Decoded, PAYLOAD_BYTES_LIMIT, RawRequest, decode};
use wallet_transfer::engine::money::BALANCE_LIMIT;
use wallet_transfer::tools::results::{ReadMessage, Start, TopicReader, read_to_end};
use wallet_transfer::worker::config::{self, WorkerConfig};
use wallet_transfer::worker::kafka;
use wallet_transfer::worker::ledger::{LedgerEntry, entries_for};
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, NewWallet, Status, TransferCompleted,
    TransferOutcome, TransferRequest,
};

/// `asyncapi.yaml` as JSON, read from the crate's own constant.
fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_norway::from_str(wallet_transfer::ASYNCAPI_YAML).expect("asyncapi.yaml is YAML")
    })
}

/// A validator of `#/components/schemas/{name}`, with the document's components beside it so
/// that every `$ref` resolves.
fn schema(name: &str) -> Validator {
    assert!(
        document()["components"]["schemas"].get(name).is_some(),
        "asyncapi.yaml has no schema {name}"
    );
    let root = json!({
        "allOf": [{ "$ref": format!("#/components/schemas/{name}") }],
        "components": document()["components"],
    });
    jsonschema::draft7::new(&root).unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

/// The schemas by name, built once.
fn validator(name: &str) -> &'static Validator {
    static ALL: OnceLock<HashMap<String, Validator>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        document()["components"]["schemas"]
            .as_object()
            .expect("components.schemas")
            .keys()
            .map(|name| (name.clone(), schema(name)))
            .collect()
    });
    &all[name]
}

/// Every way `value` breaks schema `name`, empty when it matches.
fn violations(name: &str, value: &Value) -> Vec<String> {
    validator(name)
        .iter_errors(value)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

/// Panics with the violations when `value` does not match schema `name` (also used by
/// `semantics::` for the `expired` answers, which need a rewound group to appear).
pub(crate) fn assert_matches(name: &str, what: &str, value: &Value) {
    let found = violations(name, value);
    assert!(found.is_empty(), "{what} breaks {name}: {found:?}\n{value}");
}

/// The last segment of a `$ref`.
fn ref_name(value: &Value) -> &str {
    let r = value["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("no $ref in {value}"));
    r.rsplit('/').next().expect("a ref has segments")
}

/// The component message of a channel (channels have one message each).
fn channel_message(channel: &str) -> &'static Value {
    let messages = document()["channels"][channel]["messages"]
        .as_object()
        .unwrap_or_else(|| panic!("channel {channel} has messages"));
    assert_eq!(messages.len(), 1, "{channel}: one message");
    let name = ref_name(messages.values().next().expect("one"));
    &document()["components"]["messages"][name]
}

/// The schema name of a channel's payload.
fn payload_schema(channel: &str) -> &'static str {
    ref_name(&channel_message(channel)["payload"])
}

/// The `enum` of schema `name`, as text (`null` left out).
fn enum_of(name: &str) -> Vec<String> {
    document()["components"]["schemas"][name]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has an enum"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The property names of schema `name`.
fn properties_of(name: &str) -> BTreeSet<String> {
    document()["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties"))
        .keys()
        .cloned()
        .collect()
}

fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_document_names_the_crates_topics_enums_headers_and_limits() {
    let defaults = WorkerConfig::default();
    for (channel, topic, default, action) in [
        (
            "transferRequested",
            kafka::TOPIC_REQUESTS,
            &defaults.requests_topic,
            "receive",
        ),
        (
            "transferCompleted",
            kafka::TOPIC_RESULTS,
            &defaults.results_topic,
            "send",
        ),
        (
            "transferDeadLetters",
            kafka::TOPIC_DLQ,
            &defaults.dlq_topic,
            "send",
        ),
        (
            "ledger",
            kafka::TOPIC_LEDGER,
            &defaults.ledger_topic,
            "send",
        ),
    ] {
        let c = &document()["channels"][channel];
        assert_eq!(c["address"], topic, "{channel}");
        assert_eq!(c["bindings"]["kafka"]["topic"], topic, "{channel}");
        assert_eq!(default, topic);
        let operations: Vec<&Value> = document()["operations"]
            .as_object()
            .expect("operations")
            .values()
            .filter(|o| ref_name(&o["channel"]) == channel)
            .collect();
        assert_eq!(operations.len(), 1, "one operation on {channel}");
        assert_eq!(operations[0]["action"], action, "{channel}");
    }
    assert_eq!(payload_schema("transferRequested"), "TransferRequested");
    assert_eq!(payload_schema("transferCompleted"), "TransferCompleted");
    assert_eq!(payload_schema("transferDeadLetters"), "DeadLetterPayload");
    assert_eq!(payload_schema("ledger"), "LedgerEntry");

    let statuses = [Status::Completed, Status::Failed].map(|s| s.as_str().to_string());
    assert_eq!(enum_of("Status"), statuses, "no result says PENDING");
    let reasons = FailureReason::ALL.map(|r| r.as_str().to_string());
    assert_eq!(enum_of("FailureReason"), reasons);
    assert_eq!(
        enum_of("Currency"),
        Currency::ALL.map(|c| c.as_str().to_string())
    );

    let headers = [
        config::DLQ_HEADER_ERROR,
        config::DLQ_HEADER_SOURCE_TOPIC,
        config::DLQ_HEADER_SOURCE_PARTITION,
        config::DLQ_HEADER_SOURCE_OFFSET,
        config::DLQ_HEADER_TRUNCATED,
    ];
    let named: BTreeSet<String> = headers.iter().map(|h| h.to_string()).collect();
    assert_eq!(properties_of("DeadLetterHeaders"), named);
    let schemas = &document()["components"]["schemas"];
    assert_eq!(
        schemas["DeadLetterPayload"]["maxLength"],
        config::DLQ_PAYLOAD_BYTES_LIMIT
    );
    assert_eq!(
        schemas["DeadLetterHeaders"]["properties"]["error"]["maxLength"],
        config::DLQ_ERROR_BYTES_LIMIT
    );
    let dead = channel_message("transferDeadLetters");
    assert_eq!(
        dead["bindings"]["kafka"]["key"]["maxLength"],
        config::DLQ_KEY_BYTES_LIMIT
    );
    let topic_config = |channel: &str, key: &str| {
        document()["channels"][channel]["bindings"]["kafka"]["topicConfiguration"][key].clone()
    };
    assert_eq!(
        topic_config("transferDeadLetters", "max.message.bytes"),
        config::DLQ_MESSAGE_BYTES_LIMIT
    );
    assert_eq!(
        topic_config("transferRequested", "retention.ms"),
        config::REQUESTS_RETENTION_MS_DEFAULT
    );
    assert_eq!(topic_config("ledger", "retention.ms"), -1);
    assert_eq!(PAYLOAD_BYTES_LIMIT, config::DLQ_PAYLOAD_BYTES_LIMIT);
}

/// An outcome as the engine returns it.
fn outcome(
    n: usize,
    status: Status,
    reason: Option<FailureReason>,
    duplicate: bool,
) -> TransferOutcome {
    let amounts = [1, 50, 10_050, 99_999_999_999_999, 100_000_000_000_000];
    let completed = status == Status::Completed;
    let user = |prefix: &str| match n % 3 {
        0 => format!("{prefix}_{n}"),
        1 => prefix.repeat(64)[..64].to_string(),
        _ => format!("{prefix}-{n}"),
    };
    let key = match n % 4 {
        0 => format!("tx_{n}"),
        1 => "k".repeat(128),
        2 => format!("a:b.c-d_{n}"),
        _ => "t".to_string(),
    };
    TransferOutcome {
        transfer_id: key.clone(),
        idempotency_key: if n.is_multiple_of(2) {
            key
        } else {
            format!("req_{n}")
        },
        status,
        reason,
        from_user: user("f"),
        to_user: user("t"),
        amount: Amount::from_minor(amounts[n % amounts.len()]),
        currency: Currency::ALL[n % 3].as_str().to_string(),
        processed_at_ms: 1_764_170_000_123 + n as u64,
        from_balance_after: completed.then(|| Amount::from_minor((n as i64) * 7)),
        to_balance_after: completed.then_some(BALANCE_LIMIT),
        from_version_after: completed.then_some(1 + n as u64),
        to_version_after: completed.then_some(2 + n as u64),
        duplicate,
        origin: None,
        request_hash: String::new(),
        stats: Default::default(),
    }
}

#[test]
fn the_serde_types_write_what_the_schemas_say() {
    // Results and ledger entries of every status, reason and duplicate flag.
    let mut answers = 0;
    for n in 0..60 {
        let mut kinds = vec![(Status::Completed, None)];
        kinds.extend(FailureReason::ALL.map(|r| (Status::Failed, Some(r))));
        for (status, reason) in kinds {
            if reason == Some(FailureReason::InvalidRequest) {
                continue; // never recorded: answered by echo_failed, below
            }
            for duplicate in [false, true] {
                let o = outcome(n, status, reason, duplicate);
                let result = serde_json::to_value(o.to_message()).expect("serialises");
                assert_eq!(keys_of(&result), properties_of("TransferCompleted"));
                assert_matches("TransferCompleted", "a result", &result);
                assert_matches("OriginalTransferCompleted", "a result", &result);
                for entry in entries_for(&o).expect("entries") {
                    let entry: Value = serde_json::from_slice(&entry.to_json()).expect("JSON");
                    assert_eq!(keys_of(&entry), properties_of("LedgerEntry"));
                    assert_matches("LedgerEntry", "a ledger entry", &entry);
                }
                answers += 1;
            }
        }
    }
    assert!(answers > 800);

    // The echo of an invalid request, whatever was sent.
    let sent = [
        "",
        "x",
        "ten",
        "1.234",
        "-5",
        "1e3",
        "é€😀",
        "a b",
        "100.505",
    ];
    for (i, text) in sent.iter().enumerate() {
        let long = text.repeat(200);
        for value in [Some(text.to_string()), Some(long), None] {
            let raw = RawRequest {
                transfer_id: text.repeat(i),
                from_user: value.clone(),
                to_user: value.clone(),
                amount: value.clone(),
                currency: value.clone(),
                idempotency_key: value.clone(),
            };
            let echo = serde_json::to_value(raw.echo_failed()).expect("serialises");
            assert_matches("TransferCompleted", "an invalid_request echo", &echo);
            assert_matches(
                "OriginalTransferCompleted",
                "an invalid_request echo",
                &echo,
            );
        }
    }

    // Requests as the crate writes them.
    for n in 0..30 {
        let o = outcome(n, Status::Completed, None, false);
        let request = TransferRequest::new(
            &o.transfer_id,
            &o.from_user,
            &o.to_user,
            &o.amount.to_string(),
            Currency::ALL[n % 3],
        )
        .and_then(|r| r.with_idempotency_key(&o.idempotency_key))
        .expect("a valid request");
        let json: Value = serde_json::from_str(&request.to_json()).expect("JSON");
        assert_eq!(keys_of(&json), properties_of("TransferRequested"));
        assert_matches("TransferRequested", "a request", &json);
        assert_matches("TransferRequestRules", "a request", &json);
    }
}

#[test]
fn every_example_in_the_document_is_a_message_of_its_channel() {
    let mut examples = 0;
    for channel in [
        "transferRequested",
        "transferCompleted",
        "transferDeadLetters",
        "ledger",
    ] {
        let message = channel_message(channel);
        let payload = payload_schema(channel);
        for example in message["examples"].as_array().expect("examples") {
            let what = format!("{channel} example {}", example["name"]);
            assert_matches(payload, &what, &example["payload"]);
            if let Some(headers) = message.get("headers") {
                assert_matches(ref_name(headers), &what, &example["headers"]);
            }
            let text = example["payload"].to_string();
            match channel {
                "transferRequested" => {
                    // A JSON-number amount runs by its text: the rules cover text amounts.
                    let runs = violations("TransferRequestRules", &example["payload"]).is_empty()
                        || example["payload"]["amount"].is_number();
                    match decode(text.as_bytes()) {
                        Ok(Decoded::Request(_)) => assert!(runs, "{what}"),
                        Ok(Decoded::Invalid { .. }) => assert!(!runs, "{what}"),
                        Err(e) => panic!("{what}: poison: {e}"),
                    }
                }
                "transferCompleted" => {
                    let result: TransferCompleted = serde_json::from_str(&text).expect(&what);
                    assert_eq!(
                        serde_json::to_value(&result).expect("serialises"),
                        example["payload"]
                    );
                }
                "ledger" => {
                    let entry = LedgerEntry::parse(text.as_bytes()).expect(&what);
                    let again: Value = serde_json::from_slice(&entry.to_json()).expect("JSON");
                    assert_eq!(again, example["payload"], "{what}");
                }
                _ => {
                    assert!(decode(example["payload"].as_str().expect("text").as_bytes()).is_err())
                }
            }
            examples += 1;
        }
    }
    assert!(examples >= 8, "{examples} examples");
}

/// JSON text of one field of a generated request: absent, null, or a raw JSON value.
fn field(name: &str, value: Option<&str>) -> Option<String> {
    value.map(|v| format!("\"{name}\":{v}"))
}

fn pool(values: &[&'static str]) -> impl Strategy<Value = Option<&'static str>> {
    let mut all: Vec<Option<&'static str>> = values.iter().map(|v| Some(*v)).collect();
    all.extend([None, Some("null")]);
    proptest::sample::select(all)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// `TransferRequested` matches exactly what the decoder answers (a payload that breaks it
    /// is poison), and `TransferRequestRules` exactly what it runs (for text amounts).
    #[test]
    fn the_request_schemas_sort_payloads_as_the_decoder_does(
        transfer_id in pool(&[r#""tx_1""#, r#""a:b.c-d_e""#, LONG_KEY, TOO_LONG_KEY, r#""""#, r#""a b""#, r#""é""#, "12", "true"]),
        from_user in pool(&[r#""user_1""#, LONG_USER, TOO_LONG_USER, r#""""#, r#""a.b""#, "5", "[]"]),
        to_user in pool(&[r#""user_2""#, r#""u-2""#, r#""a b""#, "{}"]),
        amount in pool(&[
            r#""100.50""#, r#""1""#, r#""0.01""#, r#""0.5""#, r#""007.5""#, r#""1000000000000""#,
            r#""1000000000000.00""#, r#""1000000000000.01""#, r#""999999999999.99""#, r#""0""#,
            r#""0.00""#, r#""-5""#, r#""+5""#, r#""1e3""#, r#""100.505""#, r#""5.""#, r#"".5""#,
            r#""abc""#, r#""""#, r#"" 1""#, LONG_AMOUNT, TOO_LONG_AMOUNT, "100.5", "1e3", "0",
            "100.505", "true", r#"{"v":1}"#,
        ]),
        currency in pool(&[r#""USD""#, r#""EUR""#, r#""GBP""#, r#""JPY""#, r#""usd""#, r#""""#, "1"]),
        idempotency_key in pool(&[r#""req_1""#, r#""k:9""#, LONG_KEY, TOO_LONG_KEY, r#""""#, r#""a b""#, "7"]),
        extra in pool(&[r#""ignored""#, r#"{"a":[1,2]}"#]),
    ) {
        let fields: Vec<String> = [
            field("transfer_id", transfer_id),
            field("from_user", from_user),
            field("to_user", to_user),
            field("amount", amount),
            field("currency", currency),
            field("idempotency_key", idempotency_key),
            field("note", extra),
        ]
        .into_iter()
        .flatten()
        .collect();
        let text = format!("{{{}}}", fields.join(","));
        let value: Value = serde_json::from_str(&text).expect("generated JSON");
        let decoded = decode(text.as_bytes());
        let answered = violations("TransferRequested", &value);
        prop_assert_eq!(answered.is_empty(), decoded.is_ok(), "{} -> {:?}: {:?}", text, decoded, answered);
        let text_amount = !value.get("amount").is_some_and(Value::is_number);
        if decoded.is_ok() && text_amount {
            let runs = violations("TransferRequestRules", &value);
            let ran = matches!(decoded, Ok(Decoded::Request(_)));
            prop_assert_eq!(runs.is_empty(), ran, "{} -> {:?}: {:?}", text, decoded, runs);
        }
    }
}

const LONG_KEY: &str = r#""kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk""#;
const TOO_LONG_KEY: &str = r#""kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk""#;
const LONG_USER: &str = r#""uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu""#;
const TOO_LONG_USER: &str =
    r#""uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu""#;
const LONG_AMOUNT: &str = r#""00000000000000000000000000000001""#;
const TOO_LONG_AMOUNT: &str = r#""000000000000000000000000000000001""#;

#[test]
fn the_long_values_of_the_generator_are_at_their_limits() {
    let len = |quoted: &str| quoted.len() - 2;
    assert_eq!(len(LONG_KEY), 128);
    assert_eq!(len(TOO_LONG_KEY), 129);
    assert_eq!(len(LONG_USER), 64);
    assert_eq!(len(TOO_LONG_USER), 65);
    assert_eq!(len(LONG_AMOUNT), 32);
    assert_eq!(len(TOO_LONG_AMOUNT), 33);
}

/// What the original system's `TransferRequested` model publishes (as inferred in the
/// document): all six fields, the amount as the text of a Python `Decimal`.
#[test]
fn what_the_original_model_publishes_is_answered_and_its_common_form_runs() {
    let original = |id: &str, amount: &str| {
        json!({"transfer_id": id, "from_user": "user_1", "to_user": "user_2", "amount": amount,
               "currency": "USD", "idempotency_key": format!("req_{id}")})
    };
    for amount in ["100.50", "100.5", "7", "0.01", "999999999999.99"] {
        let message = original("tx_1", amount);
        assert_matches(
            "OriginalTransferRequested",
            "the original's request",
            &message,
        );
        assert_matches("TransferRequested", "the original's request", &message);
        assert_matches("TransferRequestRules", "the original's request", &message);
        assert!(matches!(
            decode(message.to_string().as_bytes()),
            Ok(Decoded::Request(_))
        ));
    }
    // What its model allows beyond this worker's rules is answered FAILED invalid_request.
    for (id, amount) in [
        ("tx 1", "1"),
        ("tx_1", "100.500"),
        ("tx_1", "1E+2"),
        ("tx_1", "9999999999999999.99"),
    ] {
        let message = original(id, amount);
        assert_matches(
            "OriginalTransferRequested",
            "the original's request",
            &message,
        );
        assert_matches("TransferRequested", "the original's request", &message);
        assert!(
            !violations("TransferRequestRules", &message).is_empty(),
            "{message}"
        );
        assert!(matches!(
            decode(message.to_string().as_bytes()),
            Ok(Decoded::Invalid { .. })
        ));
    }
}

// The real run.

/// A raw request keyed by `key`.
type Raw = (Option<String>, Vec<u8>);

fn raw(key: Option<&str>, payload: Value) -> Raw {
    (key.map(str::to_string), payload.to_string().into_bytes())
}

/// Requests that reach every answer the worker gives, and poison.
fn requests_for_every_answer() -> Vec<Raw> {
    let request = |id: &str, from: &str, to: &str, amount: &str, currency: Currency| {
        let r = TransferRequest::new(id, from, to, amount, currency).expect("valid");
        (
            Some(from.to_string()),
            r.with_idempotency_key(&format!("req_{id}"))
                .expect("key")
                .to_json()
                .into_bytes(),
        )
    };
    let ok = request("c_ok", "ca", "cb", "10.50", Currency::USD);
    let body = |id: &str, amount: &str| json!({"transfer_id": id, "from_user": "ca", "to_user": "cb", "amount": amount});
    let big = json!({"transfer_id": "c_big", "from_user": "ca", "to_user": "cb", "amount": "1", "pad": "x".repeat(PAYLOAD_BYTES_LIMIT)});
    vec![
        ok.clone(),
        ok, // a replay: duplicate
        {
            let r = TransferRequest::new("c_conflict", "ca", "cb", "11.00", Currency::USD)
                .expect("valid");
            (
                Some("ca".into()),
                r.with_idempotency_key("req_c_ok")
                    .expect("key")
                    .to_json()
                    .into_bytes(),
            )
        },
        raw(
            Some("cb"),
            json!({"transfer_id": "c_defaults", "from_user": "cb", "to_user": "ca", "amount": 2.5, "note": "ignored"}),
        ),
        raw(
            Some("ca"),
            json!({"transfer_id": "c_nulls", "from_user": "ca", "to_user": "cb", "amount": "1", "currency": null, "idempotency_key": null}),
        ),
        request("c_funds", "cb", "ca", "100000.00", Currency::USD),
        request("c_same", "ca", "ca", "1.00", Currency::USD),
        request("c_missing", "ca", "c_nobody", "1.00", Currency::USD),
        request("c_frozen", "ca", "cfrozen", "1.00", Currency::USD),
        request("c_eur", "ca", "ceur", "1.00", Currency::EUR),
        request("c_full", "ca", "cfull", "1.00", Currency::USD),
        raw(None, body("c_decimals", "1.234")),
        raw(None, body("c_text", "ten")),
        raw(None, body("c bad id", "1")),
        raw(
            Some("ca"),
            json!({"transfer_id": "c_no_receiver", "from_user": "ca", "amount": "1"}),
        ),
        // The original system's shape, and a Decimal text its model allows and this worker does not.
        raw(
            Some("213321231213213"),
            json!({"transfer_id": "tx_orig_1", "from_user": "ca", "to_user": "cb", "amount": "5.5", "currency": "USD", "idempotency_key": "req_tx_orig_1"}),
        ),
        raw(
            Some("213321231213213"),
            json!({"transfer_id": "tx_orig_2", "from_user": "ca", "to_user": "cb", "amount": "1E+2", "currency": "USD", "idempotency_key": "req_tx_orig_2"}),
        ),
        // Poison.
        (None, b"this is not json".to_vec()),
        (Some("ca".into()), b"[1,2]".to_vec()),
        (None, Vec::new()),
        raw(
            None,
            json!({"from_user": "ca", "to_user": "cb", "amount": "1"}),
        ),
        raw(
            Some("ca"),
            json!({"transfer_id": "c_typed", "from_user": 5, "to_user": "cb", "amount": "1"}),
        ),
        raw(Some("ca"), big),
    ]
}

/// The wallets the requests above need.
fn wallets_for_every_answer(stack: &Stack) {
    let service = stack.redis.service(2, EngineConfig::default());
    let full = Amount::from_minor(BALANCE_LIMIT.minor() - 50).to_string();
    create_wallets(
        &service,
        &[
            ("ca", "1000.00"),
            ("cb", "50.00"),
            ("cfrozen", "10.00"),
            ("cfull", &full),
        ],
    );
    let eur = NewWallet::new("ceur", Amount::from_minor(10_000), Currency::EUR);
    assert!(service.create_wallet(&eur).expect("create ceur"));
    redis::cmd("HSET")
        .arg("wallet:cfrozen")
        .arg("status")
        .arg("frozen")
        .query::<()>(&mut stack.redis.conn())
        .expect("freeze cfrozen");
}

/// Every message of `topic`, from its beginning to its end now.
fn read_all(stack: &Stack, topic: &str) -> Vec<ReadMessage> {
    let mut all = Vec::new();
    read_to_end(
        &stack.kafka(),
        topic,
        Duration::from_secs(60),
        |m| all.push(m.clone()),
        |_, _| {},
    )
    .unwrap_or_else(|e| panic!("read {topic}: {e}"));
    all
}

/// A message as one JSON line: where it is, its key, headers and payload, as text (the first
/// 300 bytes, as sent: the document's examples keep their field order).
fn dump_line(m: &ReadMessage) -> Value {
    let key = m.key.as_deref().map(String::from_utf8_lossy);
    let payload = String::from_utf8_lossy(&m.payload[..m.payload.len().min(300)]);
    json!({
        "partition": m.partition,
        "offset": m.offset,
        "key": key,
        "headers": m.headers,
        "payload": payload,
    })
}

fn dump(topic: &str, messages: &[ReadMessage]) {
    let Ok(dir) = std::env::var("CONTRACTS_DUMP") else {
        return;
    };
    std::fs::create_dir_all(&dir).expect("dump folder");
    let lines: Vec<String> = messages.iter().map(|m| dump_line(m).to_string()).collect();
    std::fs::write(format!("{dir}/{topic}.jsonl"), lines.join("\n") + "\n").expect("dump");
}

/// What the run must have shown, beyond each message matching: every answer kind.
#[derive(Default)]
struct Seen {
    statuses: HashSet<String>,
    reasons: HashSet<String>,
    duplicates: HashSet<bool>,
    kinds: HashSet<String>,
    truncated: HashSet<bool>,
}

#[test]
fn every_message_of_a_real_run_matches_its_channel_schema() {
    let stack = Stack::start(3);
    wallets_for_every_answer(&stack);
    let _worker = stack.spawn_worker(&[]);
    let output = stack.wallet("produce", &["--timeout", "120"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wallet produce: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("summary: 6 of 6 scenarios passed"),
        "{stdout}"
    );
    stack.publish(&requests_for_every_answer());

    // Everything published is answered and acknowledged once the commits reach the ends.
    let requests = TopicReader::open(&stack.kafka(), &stack.topics.requests, Start::Beginning)
        .expect("reader");
    let ends: HashMap<i32, i64> = requests
        .high_watermarks()
        .expect("watermarks")
        .into_iter()
        .map(|(p, (_, high))| (p, high))
        .collect();
    wait_until("every request answered and committed", 120_000, || {
        let committed = stack.committed();
        ends.iter()
            .all(|(p, high)| committed.get(p).copied().unwrap_or(0) >= *high)
    });

    let mut seen = Seen::default();
    let topics = &stack.topics;
    let results = read_all(&stack, &topics.results);
    let dead = read_all(&stack, &topics.dlq);
    let ledger = read_all(&stack, &topics.ledger);
    let sent = read_all(&stack, &topics.requests);
    for (topic, messages) in [
        (&topics.requests, &sent),
        (&topics.results, &results),
        (&topics.dlq, &dead),
        (&topics.ledger, &ledger),
    ] {
        dump(topic, messages);
    }
    let reasons_by_id = check_results(&results, &mut seen);
    check_ledger(&ledger, &results, &mut seen);
    let dead_offsets = check_dead_letters(&dead, &topics.requests, &mut seen);
    check_requests(&sent, &dead_offsets, &reasons_by_id);

    let all = |names: &[&str]| {
        names
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<String>>()
    };
    assert_eq!(seen.statuses, all(&["COMPLETED", "FAILED"]));
    // Every reason but `expired`, which needs a group rewound past the outcome ttl: its real
    // answers are checked against the schema in
    // `semantics::a_group_rewound_after_the_records_expired_moves_no_money`.
    assert_eq!(
        seen.reasons,
        FailureReason::ALL
            .iter()
            .filter(|r| **r != FailureReason::Expired)
            .map(|r| r.as_str().to_string())
            .collect()
    );
    assert_eq!(seen.duplicates, HashSet::from([false, true]));
    assert_eq!(seen.kinds, all(&["debit", "credit"]));
    assert_eq!(seen.truncated, HashSet::from([false, true]));
    println!(
        "validated {} requests, {} results, {} dead letters, {} ledger entries",
        sent.len(),
        results.len(),
        dead.len(),
        ledger.len()
    );
}

/// Each result matches `TransferCompleted` and the original's model and is keyed by its
/// transfer id. Returns the reasons (`""` for none) each transfer id was answered with.
fn check_results(results: &[ReadMessage], seen: &mut Seen) -> HashMap<String, HashSet<String>> {
    let mut reasons: HashMap<String, HashSet<String>> = HashMap::new();
    for m in results {
        let value: Value = serde_json::from_slice(&m.payload).expect("a result is JSON");
        assert_matches("TransferCompleted", "a result", &value);
        assert_matches("OriginalTransferCompleted", "a result", &value);
        let id = value["transfer_id"]
            .as_str()
            .expect("transfer_id")
            .to_string();
        assert_eq!(
            m.key.as_deref(),
            Some(id.as_bytes()),
            "a result is keyed by its transfer id"
        );
        let reason = value["reason"].as_str().unwrap_or_default().to_string();
        seen.statuses
            .insert(value["status"].as_str().expect("status").to_string());
        seen.duplicates
            .insert(value["duplicate"].as_bool().expect("duplicate"));
        if !reason.is_empty() {
            seen.reasons.insert(reason.clone());
        }
        reasons.entry(id).or_default().insert(reason);
    }
    reasons
}

/// Each entry matches `LedgerEntry`, is keyed by its wallet, and every COMPLETED original
/// result has its debit and credit.
fn check_ledger(ledger: &[ReadMessage], results: &[ReadMessage], seen: &mut Seen) {
    let mut entries = HashSet::new();
    for m in ledger {
        let value: Value = serde_json::from_slice(&m.payload).expect("an entry is JSON");
        assert_matches("LedgerEntry", "a ledger entry", &value);
        let wallet = value["wallet_id"].as_str().expect("wallet_id");
        assert_eq!(
            m.key.as_deref(),
            Some(wallet.as_bytes()),
            "an entry is keyed by its wallet"
        );
        LedgerEntry::parse(&m.payload).expect("the crate reads it");
        let kind = value["kind"].as_str().expect("kind").to_string();
        seen.kinds.insert(kind.clone());
        entries.insert((value["transfer_id"].as_str().expect("id").to_string(), kind));
    }
    for m in results {
        let r: TransferCompleted = serde_json::from_slice(&m.payload).expect("the crate reads it");
        if r.status == Status::Completed && !r.duplicate {
            for kind in ["debit", "credit"] {
                assert!(
                    entries.contains(&(r.transfer_id.clone(), kind.to_string())),
                    "{} has a {kind}",
                    r.transfer_id
                );
            }
        }
    }
}

/// Each dead letter's headers match `DeadLetterHeaders` and its payload `DeadLetterPayload`;
/// returns the (partition, offset) of every dead-lettered request.
fn check_dead_letters(
    dead: &[ReadMessage],
    requests_topic: &str,
    seen: &mut Seen,
) -> HashSet<(i32, i64)> {
    let mut offsets = HashSet::new();
    for m in dead {
        let headers = serde_json::to_value(&m.headers).expect("headers as JSON");
        assert_matches("DeadLetterHeaders", "dead-letter headers", &headers);
        let payload = Value::String(String::from_utf8_lossy(&m.payload).into_owned());
        assert_matches("DeadLetterPayload", "a dead letter's payload", &payload);
        assert!(m.payload.len() <= config::DLQ_PAYLOAD_BYTES_LIMIT);
        assert!(
            m.key
                .as_ref()
                .is_none_or(|k| k.len() <= config::DLQ_KEY_BYTES_LIMIT)
        );
        assert_eq!(m.headers[config::DLQ_HEADER_SOURCE_TOPIC], requests_topic);
        seen.truncated
            .insert(m.headers.contains_key(config::DLQ_HEADER_TRUNCATED));
        let number = |h: &str| m.headers[h].parse::<i64>().expect("a number");
        offsets.insert((
            number(config::DLQ_HEADER_SOURCE_PARTITION) as i32,
            number(config::DLQ_HEADER_SOURCE_OFFSET),
        ));
    }
    offsets
}

/// Each request the worker answered matches `TransferRequested` and each dead-lettered one does
/// not (or is over the size limit); of the answered ones with a text amount, those matching
/// `TransferRequestRules` ran and the others were answered `invalid_request`.
fn check_requests(
    sent: &[ReadMessage],
    dead: &HashSet<(i32, i64)>,
    reasons: &HashMap<String, HashSet<String>>,
) {
    let (mut answered, mut poison, mut invalid) = (0, 0, 0);
    for m in sent {
        let is_dead = dead.contains(&(m.partition, m.offset));
        let value = serde_json::from_slice::<Value>(&m.payload).ok();
        let wire = value
            .as_ref()
            .is_some_and(|v| violations("TransferRequested", v).is_empty());
        if m.payload.len() > PAYLOAD_BYTES_LIMIT {
            assert!(is_dead, "a request over the size limit is a dead letter");
            continue;
        }
        let text = String::from_utf8_lossy(&m.payload);
        assert_eq!(
            wire, !is_dead,
            "matches TransferRequested exactly when answered: {text}"
        );
        let Some(value) = value.filter(|_| wire) else {
            poison += 1;
            continue;
        };
        answered += 1;
        let id = value["transfer_id"].as_str().expect("a string id");
        let answers = reasons
            .get(id)
            .unwrap_or_else(|| panic!("no result for {text}"));
        if value["amount"].is_number() {
            continue;
        }
        let runs = violations("TransferRequestRules", &value).is_empty();
        let was_invalid = answers.contains(FailureReason::InvalidRequest.as_str());
        assert_eq!(
            runs, !was_invalid,
            "matches TransferRequestRules exactly when it ran: {text} -> {answers:?}"
        );
        invalid += usize::from(was_invalid);
    }
    assert!(
        answered > 20 && poison >= 5 && invalid >= 4,
        "{answered} answered, {poison} poison, {invalid} invalid"
    );
}
