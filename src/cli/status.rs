//! `wallet status KEY`: prints the outcome recorded under an idempotency key, as a table or a
//! JSON object; exit 1 when none is recorded. `wallet status` without a key: what the store
//! holds (memory, outcome records, the oldest record's age; `ops::store_stats`). On a Redis
//! Cluster the record lives in the sender's slot (`transfer:{SENDER}:KEY`), so KEY needs
//! `--from SENDER` there; without a key every primary is summed.
//!
//! Owns the KEY check, the field names and their order in the output. Does not own how an
//! outcome is stored or read (`engine::transfer`, `WalletService::transfer_outcome`).

use clap::Args;
use comfy_table::Table;
use serde_json::Value;
use wallet_transfer::Amount;
use wallet_transfer::engine::message::{check_key, check_user_id};
use wallet_transfer::engine::transfer::TransferOutcome;
use wallet_transfer::tools::ops::{self, StoreStats};

use crate::cli::{Failure, GlobalOpts, json_out, new_table, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit 1 when no outcome is recorded under the key (never processed, or its \
                  record expired). Amounts in major units, processed_at in seconds since the \
                  Unix epoch.\n\
                  Without KEY: Redis used_memory, the number of outcome records (SCAN, at most \
                  1,000,000 counted) and the age of the oldest of the first 10,000 met (a \
                  sample, not the oldest of all).\n\
                  With --redis-cluster: the record of KEY lives in its sender's hash slot \
                  (transfer:{SENDER}:KEY; an idempotency key is unique per sender there), so \
                  give --from SENDER; a cross-slot transfer a crash stopped halfway shows as \
                  PENDING (wallet recover finishes it). Without KEY, every primary is summed.\n\
                  Examples:\n  wallet status req_tx_1 --json\n  \
                  wallet status req_tx_1 --from user_1 --redis-cluster 10.0.0.1:7000"
)]
pub struct StatusArgs {
    /// The idempotency key of the request (its transfer_id unless one was given); without it,
    /// what the store holds
    #[arg(value_name = "KEY")]
    pub key: Option<String>,

    /// The request's sender (from_user): where the record lives on a Redis Cluster; needed
    /// there with KEY, not used on one Redis
    #[arg(long, value_name = "SENDER", requires = "key")]
    pub from: Option<String>,

    /// Print the outcome as one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Prints the outcome recorded under the key.
pub fn run(global: &GlobalOpts, args: StatusArgs) -> Result<(), Failure> {
    let Some(key) = &args.key else {
        return store(global, args.json);
    };
    check_key("KEY", key).map_err(|e| Failure::usage(e.to_string()))?;
    let sender = match (&args.from, global.redis_cluster.is_some()) {
        (Some(from), _) => {
            check_user_id("--from", from).map_err(|e| Failure::usage(e.to_string()))?;
            from.as_str()
        }
        (None, true) => {
            return Err(Failure::usage(format!(
                "on a Redis Cluster the record of {key:?} lives in its sender's slot: add \
                 --from SENDER (the request's from_user)"
            )));
        }
        (None, false) => "",
    };
    let service = global.connect(1)?;
    let Some(outcome) = service.transfer_outcome_of(sender, key)? else {
        return Err(Failure::runtime(format!(
            "no outcome recorded under idempotency key {key:?} (never processed, or its record \
             expired)"
        )));
    };
    if args.json {
        return json_out(&outcome_json(&outcome));
    }
    print_out(&format!("{}\n", outcome_table(&outcome)))
}

/// Prints what the store holds.
fn store(global: &GlobalOpts, json: bool) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let stats = ops::store_stats(&service)?;
    if json {
        return json_out(&serde_json::to_value(&stats).expect("plain data"));
    }
    print_out(&format!("{}\n", store_table(&stats)))
}

/// The store's figures as a field/value table.
fn store_table(stats: &StoreStats) -> Table {
    let mut table = new_table(&["field", "value"]);
    let records = if stats.outcome_records_exact {
        stats.outcome_records.to_string()
    } else {
        format!("at least {}", stats.outcome_records)
    };
    let oldest = match stats.oldest_sampled_age_ms {
        Some(ms) => format!(
            "{:.1} s (oldest of {} sampled)",
            ms as f64 / 1000.0,
            stats.sampled
        ),
        None => "-".to_string(),
    };
    for (field, value) in [
        ("used_memory", format!("{} bytes", stats.used_memory_bytes)),
        ("outcome records", records),
        ("oldest record age", oldest),
    ] {
        table.add_row(vec![field.to_string(), value]);
    }
    table
}

/// Seconds since the Unix epoch, as the result message says it (read from the record, so a
/// PENDING one, which is never answered, shows too).
fn processed_at(outcome: &TransferOutcome) -> f64 {
    outcome.processed_at_ms as f64 / 1000.0
}

fn amount_text(a: Option<Amount>) -> Option<String> {
    a.map(|a| a.to_string())
}

/// The outcome as one JSON object, amounts as text.
fn outcome_json(outcome: &TransferOutcome) -> Value {
    serde_json::json!({
        "idempotency_key": outcome.idempotency_key,
        "transfer_id": outcome.transfer_id,
        "status": outcome.status.as_str(),
        "reason": outcome.reason.map(|r| r.as_str()),
        "from_user": outcome.from_user,
        "to_user": outcome.to_user,
        "amount": outcome.amount.to_string(),
        "currency": outcome.currency,
        "processed_at": processed_at(outcome),
        "from_balance_after": amount_text(outcome.from_balance_after),
        "to_balance_after": amount_text(outcome.to_balance_after),
    })
}

/// The outcome as a field/value table, `-` for what is not set.
fn outcome_table(outcome: &TransferOutcome) -> Table {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut table = new_table(&["field", "value"]);
    for (field, value) in [
        ("idempotency_key", outcome.idempotency_key.clone()),
        ("transfer_id", outcome.transfer_id.clone()),
        ("status", outcome.status.as_str().to_string()),
        (
            "reason",
            or_dash(outcome.reason.map(|r| r.as_str().to_string())),
        ),
        ("from_user", outcome.from_user.clone()),
        ("to_user", outcome.to_user.clone()),
        ("amount", outcome.amount.to_string()),
        ("currency", outcome.currency.clone()),
        ("processed_at", format!("{:.3}", processed_at(outcome))),
        (
            "from_balance_after",
            or_dash(amount_text(outcome.from_balance_after)),
        ),
        (
            "to_balance_after",
            or_dash(amount_text(outcome.to_balance_after)),
        ),
    ] {
        table.add_row(vec![field.to_string(), value]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_global;
    use wallet_transfer::{FailureReason, Status};

    fn outcome(status: Status) -> TransferOutcome {
        TransferOutcome {
            transfer_id: "tx_1".into(),
            idempotency_key: "req_1".into(),
            status,
            reason: (status == Status::Failed).then_some(FailureReason::InsufficientFunds),
            from_user: "user_1".into(),
            to_user: "user_2".into(),
            amount: Amount::from_minor(10_050),
            currency: "USD".into(),
            processed_at_ms: 1_700_000_000_123,
            from_balance_after: (status == Status::Completed).then_some(Amount::from_minor(1)),
            to_balance_after: None,
            from_version_after: None,
            to_version_after: None,
            duplicate: false,
            origin: None,
            request_hash: "h".into(),
            stats: Default::default(),
        }
    }

    #[test]
    fn a_bad_key_is_a_usage_error_before_any_connection() {
        let args = StatusArgs {
            key: Some("no spaces".into()),
            from: None,
            json: false,
        };
        let e = run(&test_global(), args).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("KEY"), "{e}");
    }

    #[test]
    fn a_key_on_a_cluster_needs_its_sender_before_any_connection() {
        let cli = crate::cli::parse(&["status", "k1", "--redis-cluster", "h:1"]).unwrap();
        let e = crate::cli::run(cli).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("add --from SENDER"), "{e}");
        assert!(
            crate::cli::parse(&["status", "--from", "u"]).is_err(),
            "--from needs KEY"
        );
        let cli = crate::cli::parse(&["status", "k1", "--from", "a b"]).unwrap();
        let e = crate::cli::run(cli).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("--from"), "{e}");
    }

    #[test]
    fn json_has_every_field_with_amounts_as_text() {
        let value = outcome_json(&outcome(Status::Completed));
        assert_eq!(value["status"], "COMPLETED");
        assert_eq!(value["amount"], "100.50");
        assert_eq!(value["from_balance_after"], "0.01");
        assert!(value["to_balance_after"].is_null());
        assert!(value["reason"].is_null());
        assert_eq!(value.as_object().unwrap().len(), 11);
    }

    #[test]
    fn the_store_table_says_when_the_count_stopped_and_the_age_is_a_sample() {
        let stats = StoreStats {
            used_memory_bytes: 1_234,
            outcome_records: 1_000_000,
            outcome_records_exact: false,
            sampled: 1_000,
            oldest_sampled_age_ms: Some(61_500),
        };
        let text = store_table(&stats).to_string();
        assert!(text.contains("1234 bytes"), "{text}");
        assert!(text.contains("at least 1000000"), "{text}");
        assert!(text.contains("61.5 s (oldest of 1000 sampled)"), "{text}");
    }

    #[test]
    fn table_shows_a_dash_for_what_is_not_set() {
        let text = outcome_table(&outcome(Status::Failed)).to_string();
        assert!(text.contains("insufficient_funds"), "{text}");
        assert!(text.contains("1700000000.123"), "{text}");
        let to_after = text
            .lines()
            .find(|l| l.contains("to_balance_after"))
            .unwrap();
        assert!(to_after.contains(" - "), "{text}");
    }
}
