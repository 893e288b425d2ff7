//! `wallet transfer FROM TO AMOUNT`: publishes one transfer request to Kafka and, with
//! `--wait`, waits for the worker's result and prints it.
//!
//! Owns the request's flags, the checks of its fields (usage errors, exit 2, that name the
//! argument: `FROM`, `AMOUNT`, `--currency`, ...) and the printed result. Does not own the
//! request's rules (`engine::message`), publishing or reading results (`tools::ops`), nor the
//! transfer itself (the worker).

use std::time::{Duration, Instant};

use clap::Args;
use wallet_transfer::engine::message::FieldError;
use wallet_transfer::tools::ops::{self, ResultWatcher};
use wallet_transfer::worker::kafka::{self, KafkaConfig};
use wallet_transfer::{Amount, Currency, Status, TransferCompleted, TransferRequest};

use crate::cli::{Failure, GlobalOpts, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "The request goes to --requests-topic with key FROM; the worker answers on \
                  --results-topic. AMOUNT is in major units (\"100.50\"). Without --wait the \
                  transfer id is printed once the broker has the request. With --wait the \
                  result is printed; exit 1 when it is FAILED or none arrives within \
                  --timeout-s seconds.\n\
                  Examples:\n  wallet transfer user_1 user_2 100.50 --wait\n  \
                  wallet transfer user_1 user_2 5 --currency EUR --id tx_42 \
                  --idempotency-key req_tx_42"
)]
pub struct TransferArgs {
    /// The user who pays
    #[arg(value_name = "FROM")]
    pub from: String,

    /// The user who is paid
    #[arg(value_name = "TO")]
    pub to: String,

    /// Amount in major units, e.g. 100 or 100.50 (greater than 0, at most two decimals)
    #[arg(value_name = "AMOUNT", allow_hyphen_values = true)]
    pub amount: String,

    /// Currency of the transfer: USD, EUR or GBP; must be both wallets' currency
    #[arg(long, value_name = "C", default_value = Currency::USD.as_str())]
    pub currency: String,

    /// Transfer id [default: tx_<32 hex>, random]
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// Idempotency key: a request repeated with the same key has one effect [default: the id]
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,

    /// Wait for the worker's result and print it (exit 1 if FAILED or none arrives in time)
    #[arg(long)]
    pub wait: bool,

    /// Seconds to wait for the broker's delivery report and, with --wait, for the result
    /// (1 to 3600)
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,

    /// Topic the request is published to
    #[arg(long, env = "TOPIC_REQUESTS", value_name = "TOPIC",
          default_value = kafka::TOPIC_REQUESTS)]
    pub requests_topic: String,

    /// Topic the worker publishes results to (read with --wait)
    #[arg(long, env = "TOPIC_RESULTS", value_name = "TOPIC",
          default_value = kafka::TOPIC_RESULTS)]
    pub results_topic: String,

    /// Extra librdkafka property, key=value (repeatable), e.g. -X security.protocol=SASL_SSL
    #[arg(long = "kafka-property", short = 'X', value_name = "KEY=VALUE",
          value_parser = kafka::parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

/// Publishes the request; with --wait, prints the result (exit 1 if FAILED or none came).
pub fn run(global: &GlobalOpts, args: TransferArgs) -> Result<(), Failure> {
    let request = request(&args)?;
    let kafka = KafkaConfig::new(&global.brokers).with_properties(args.kafka_properties.clone());
    let timeout = Duration::from_secs(args.timeout_s);
    let started = Instant::now();
    // Subscribed before the request is published, so its result cannot be missed.
    let watcher = if args.wait {
        Some(ResultWatcher::start(&kafka, &args.results_topic)?)
    } else {
        None
    };
    let delivered = ops::publish_request(&kafka, &args.requests_topic, &request, timeout)?;
    log::info!(
        "published transfer {} to {} partition {} offset {}",
        request.transfer_id,
        args.requests_topic,
        delivered.partition,
        delivered.offset
    );
    let Some(watcher) = watcher else {
        return print_out(&format!("{}\n", request.transfer_id));
    };
    let left = timeout.saturating_sub(started.elapsed());
    let Some(result) = watcher.wait_for(&request.transfer_id, left)? else {
        return Err(Failure::runtime(format!(
            "no result for transfer {} on {} within {} s (is a worker running on {}?)",
            request.transfer_id, args.results_topic, args.timeout_s, args.requests_topic
        )));
    };
    print_out(&result_text(&result))?;
    match result_failure(&result) {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// The request the arguments describe, checked; an error names the argument.
fn request(args: &TransferArgs) -> Result<TransferRequest, Failure> {
    let currency: Currency = args
        .currency
        .to_ascii_uppercase()
        .parse()
        .map_err(|e| Failure::usage(format!("--currency: {e}")))?;
    Amount::parse_transfer_amount(&args.amount)
        .map_err(|e| Failure::usage(format!("AMOUNT: {e}")))?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("tx_{}", uuid::Uuid::new_v4().simple()));
    let usage = |e: FieldError| Failure::usage(format!("{}: {}", arg_name(e.field), e.rule));
    let request =
        TransferRequest::new(&id, &args.from, &args.to, &args.amount, currency).map_err(usage)?;
    match &args.idempotency_key {
        Some(key) => request.with_idempotency_key(key).map_err(usage),
        None => Ok(request),
    }
}

/// The argument that sets a request field.
fn arg_name(field: &str) -> &'static str {
    match field {
        "transfer_id" => "--id",
        "from_user" => "FROM",
        "to_user" => "TO",
        "amount" => "AMOUNT",
        "currency" => "--currency",
        "idempotency_key" => "--idempotency-key",
        _ => "argument",
    }
}

/// The result as printed with --wait.
fn result_text(result: &TransferCompleted) -> String {
    format!(
        "transfer_id: {}\nstatus: {}\nreason: {}\nduplicate: {}\n",
        result.transfer_id,
        result.status.as_str(),
        reason(result),
        result.duplicate
    )
}

fn reason(result: &TransferCompleted) -> &'static str {
    result.reason.map(|r| r.as_str()).unwrap_or("-")
}

/// The failure a FAILED result ends the command with.
fn result_failure(result: &TransferCompleted) -> Option<Failure> {
    (result.status == Status::Failed).then(|| {
        Failure::runtime(format!(
            "transfer {} FAILED: {}",
            result.transfer_id,
            reason(result)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse, test_global};
    use wallet_transfer::FailureReason;

    fn transfer_args(argv: &[&str]) -> TransferArgs {
        let argv: Vec<&str> = std::iter::once("transfer")
            .chain(argv.iter().copied())
            .collect();
        match parse(&argv).unwrap().command {
            Command::Transfer(args) => args,
            other => panic!("not transfer: {other:?}"),
        }
    }

    #[test]
    fn the_request_takes_every_argument() {
        let args = transfer_args(&[
            "user_1",
            "user_2",
            "100.50",
            "--currency",
            "eur",
            "--id",
            "tx_42",
            "--idempotency-key",
            "req_42",
        ]);
        let r = request(&args).unwrap();
        assert_eq!(
            (r.transfer_id.as_str(), r.idempotency_key.as_str()),
            ("tx_42", "req_42")
        );
        assert_eq!(
            (r.from_user.as_str(), r.to_user.as_str()),
            ("user_1", "user_2")
        );
        assert_eq!(
            (r.amount, r.currency),
            (Amount::from_minor(10_050), Currency::EUR)
        );
    }

    #[test]
    fn the_id_defaults_to_a_random_one_and_the_key_to_the_id() {
        let r = request(&transfer_args(&["a", "b", "1"])).unwrap();
        assert_eq!(r.currency, Currency::USD);
        assert!(r.transfer_id.starts_with("tx_"), "{}", r.transfer_id);
        assert_eq!(r.transfer_id.len(), 3 + 32);
        assert_eq!(r.idempotency_key, r.transfer_id);
    }

    #[test]
    fn bad_input_is_a_usage_error_naming_the_argument_before_any_connection() {
        for (argv, named) in [
            (&["a", "b", "1", "--currency", "XYZ"][..], "--currency: "),
            (&["a", "b", "-1"][..], "AMOUNT: "),
            (&["a", "b", "1.001"][..], "AMOUNT: "),
            (&["a b", "b", "1"][..], "FROM: "),
            (&["a", "", "1"][..], "TO: "),
            (&["a", "b", "1", "--id", "no spaces"][..], "--id: "),
            (
                &["a", "b", "1", "--idempotency-key", ""][..],
                "--idempotency-key: ",
            ),
        ] {
            let e = run(&test_global(), transfer_args(argv)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}: {e}");
            assert!(e.to_string().starts_with(named), "{argv:?}: {e}");
        }
    }

    #[test]
    fn a_failed_result_is_printed_and_fails() {
        let mut result = TransferCompleted {
            transfer_id: "tx_1".into(),
            status: Status::Failed,
            processed_at: 1.5,
            from_user: "a".into(),
            to_user: "b".into(),
            amount: "1.00".into(),
            currency: "USD".into(),
            idempotency_key: "tx_1".into(),
            reason: Some(FailureReason::InsufficientFunds),
            duplicate: true,
        };
        assert_eq!(
            result_text(&result),
            "transfer_id: tx_1\nstatus: FAILED\nreason: insufficient_funds\nduplicate: true\n"
        );
        let failure = result_failure(&result).unwrap();
        assert_eq!(failure.exit_code(), 1);
        assert_eq!(
            failure.to_string(),
            "transfer tx_1 FAILED: insufficient_funds"
        );
        result.status = Status::Completed;
        result.reason = None;
        assert!(result_text(&result).contains("reason: -\n"));
        assert!(result_failure(&result).is_none());
    }
}
