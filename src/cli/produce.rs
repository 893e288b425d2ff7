//! `wallet produce`: runs the race scenarios end to end through Kafka against a running
//! worker and prints each one's balances, transfers and verdict; exit 1 if any failed.
//!
//! Owns the flags, the run id, the report's text and the summary. Does not own the scenarios,
//! their wallets or their expectations (`tools::scenarios`).

use std::time::Duration;

use clap::Args;
use wallet_transfer::tools::scenarios::{Runner, SCENARIO_NAMES, ScenarioReport};
use wallet_transfer::worker::kafka::{self, KafkaConfig};

use crate::cli::{Failure, GlobalOpts, json_out, print_out};

/// How many scenarios there are; `--scenario` takes 1 to this.
const SCENARIOS: u32 = SCENARIO_NAMES.len() as u32;

#[derive(Debug, Args)]
#[command(
    after_help = "Each scenario creates its own wallets (ids end in a run suffix), so runs \
                  repeat on a live system and never touch seeded users. Expectations are \
                  computed from the starting balances.\n\
                  Scenarios: 1 concurrent overspend, 2 hot sender, 3 both directions, 4 chain, \
                  5 overspend race, 6 same user.\n\
                  Example: wallet produce --scenario 1"
)]
pub struct ProduceArgs {
    /// Run only scenario N (1 to 6) [default: all six]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(SCENARIOS)))]
    pub scenario: Option<u32>,

    /// Seconds to wait for each scenario's results (1 to 3600)
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Print the reports as one JSON array instead of tables
    #[arg(long)]
    pub json: bool,

    /// Topic the requests are published to
    #[arg(long, env = "TOPIC_REQUESTS", value_name = "TOPIC",
          default_value = kafka::TOPIC_REQUESTS)]
    pub requests_topic: String,

    /// Topic the worker publishes results to
    #[arg(long, env = "TOPIC_RESULTS", value_name = "TOPIC",
          default_value = kafka::TOPIC_RESULTS)]
    pub results_topic: String,
}

/// Runs the chosen scenarios and prints their reports; exit 1 if any failed.
pub fn run(global: &GlobalOpts, args: ProduceArgs) -> Result<(), Failure> {
    let service = global.connect(2)?;
    let kafka = KafkaConfig::new(&global.brokers);
    let runner = Runner {
        service: &service,
        kafka: &kafka,
        requests_topic: &args.requests_topic,
        results_topic: &args.results_topic,
        timeout: Duration::from_secs(args.timeout),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    let numbers: Vec<u32> = match args.scenario {
        Some(n) => vec![n],
        None => (1..=SCENARIOS).collect(),
    };
    let mut reports = Vec::new();
    for n in numbers {
        let report = runner.run(n)?;
        if !args.json {
            print_out(&scenario_text(&report))?;
        }
        reports.push(report);
    }
    if args.json {
        json_out(&reports)?;
    } else {
        print_out(&summary(&reports))?;
    }
    match failure(&reports) {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// One scenario: balances before and after, each transfer's outcome, the verdict.
fn scenario_text(r: &ScenarioReport) -> String {
    let mut balances = comfy_table::Table::new();
    balances.set_header(vec!["wallet", "before", "after"]);
    for ((id, before), (_, after)) in r.before.iter().zip(&r.after) {
        balances.add_row(vec![id.as_str(), before.as_str(), after.as_str()]);
    }
    let mut out = format!("\n== scenario {}: {}\n{balances}\n", r.number, r.name);
    for t in &r.transfers {
        let verdict = if t.status == "COMPLETED" {
            "OK    "
        } else {
            "FAILED"
        };
        out.push_str(&format!(
            "  {verdict} {} {} -> {} {}{}\n",
            t.transfer_id,
            t.from_user,
            t.to_user,
            t.amount,
            t.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!("  expected: {}\n", r.expectation));
    if r.passed {
        out.push_str("  verdict: PASS\n");
    } else {
        out.push_str(&format!("  verdict: FAIL: {}\n", r.problems.join("; ")));
    }
    out
}

/// The closing line of the text output.
fn summary(reports: &[ScenarioReport]) -> String {
    let passed = reports.iter().filter(|r| r.passed).count();
    format!(
        "\nsummary: {passed} of {} scenarios passed\n",
        reports.len()
    )
}

/// The failure naming every scenario that did not pass, if one did not.
fn failure(reports: &[ScenarioReport]) -> Option<Failure> {
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} {}", r.number, r.name))
        .collect();
    (!failed.is_empty())
        .then(|| Failure::runtime(format!("scenarios failed: {}", failed.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{flag_help, parse};
    use wallet_transfer::tools::scenarios::TransferLine;

    fn report(number: u32, passed: bool) -> ScenarioReport {
        let line = |id: &str, status: &str, reason: Option<&str>| TransferLine {
            transfer_id: id.into(),
            from_user: "a_r1".into(),
            to_user: "b_r1".into(),
            amount: "60.00".into(),
            status: status.into(),
            reason: reason.map(Into::into),
        };
        ScenarioReport {
            number,
            name: SCENARIO_NAMES[number as usize - 1],
            before: vec![("a_r1".into(), "100.00".into())],
            after: vec![("a_r1".into(), "40.00".into())],
            transfers: vec![
                line("t1", "COMPLETED", None),
                line("t2", "FAILED", Some("insufficient_funds")),
            ],
            expectation: "one of two completes".into(),
            passed,
            problems: if passed {
                vec![]
            } else {
                vec!["both completed".into()]
            },
        }
    }

    #[test]
    fn a_scenario_reads_as_balances_transfers_and_verdict() {
        let text = scenario_text(&report(1, true));
        assert!(
            text.starts_with("\n== scenario 1: concurrent overspend\n"),
            "{text}"
        );
        assert!(text.contains("  OK     t1 a_r1 -> b_r1 60.00\n"), "{text}");
        assert!(
            text.contains("  FAILED t2 a_r1 -> b_r1 60.00 (insufficient_funds)\n"),
            "{text}"
        );
        assert!(text.ends_with("  expected: one of two completes\n  verdict: PASS\n"));
        let text = scenario_text(&report(2, false));
        assert!(
            text.ends_with("  verdict: FAIL: both completed\n"),
            "{text}"
        );
    }

    #[test]
    fn failed_scenarios_are_named_in_the_failure() {
        let reports = [report(1, true), report(5, false)];
        assert_eq!(summary(&reports), "\nsummary: 1 of 2 scenarios passed\n");
        let f = failure(&reports).unwrap();
        assert_eq!(f.exit_code(), 1);
        assert_eq!(f.to_string(), "scenarios failed: 5 overspend race");
        assert!(failure(&reports[..1]).is_none());
    }

    #[test]
    fn scenario_numbers_are_those_of_the_library() {
        assert!(parse(&["produce", "--scenario", "1"]).is_ok());
        let last = SCENARIOS.to_string();
        assert!(parse(&["produce", "--scenario", &last]).is_ok());
        let over = (SCENARIOS + 1).to_string();
        assert!(parse(&["produce", "--scenario", &over]).is_err());
        assert!(parse(&["produce", "--scenario", "0"]).is_err());
        let help = flag_help("produce", "scenario");
        assert!(help.contains(&format!("1 to {SCENARIOS}")), "{help}");
    }
}
