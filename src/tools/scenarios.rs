//! The six race scenarios of the original system, end to end through Kafka and a running
//! worker (`wallet produce`).
//!
//! Each scenario creates its own fresh wallets (ids carry a run suffix, so a run is repeatable
//! on a live system and never touches seeded users), publishes its transfers in one burst (or,
//! for the chain, each after the previous result), collects the results, and checks them
//! against expectations computed from the starting balances. Owns nothing of the engine.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::engine::message::{FailureReason, Status, TransferCompleted, TransferRequest};
use crate::engine::money::{Amount, Currency};
use crate::engine::service::WalletService;
use crate::engine::wallet::NewWallet;
use crate::tools::ops::{OpsError, publish_request, publish_requests};
use crate::tools::results::ResultWatcher;
use crate::worker::kafka::KafkaConfig;

/// What one scenario did and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// 1 to 6.
    pub number: u32,
    /// One of [`SCENARIO_NAMES`].
    pub name: &'static str,
    /// Balances before, `(wallet id, amount)`.
    pub before: Vec<(String, String)>,
    /// Balances after.
    pub after: Vec<(String, String)>,
    /// Every request and its result.
    pub transfers: Vec<TransferLine>,
    /// What had to happen, in words.
    pub expectation: String,
    /// True when it did.
    pub passed: bool,
    /// What did not hold; empty when passed.
    pub problems: Vec<String>,
}

/// One request of a scenario and its result.
#[derive(Debug, Clone, Serialize)]
pub struct TransferLine {
    /// The request's transfer id.
    pub transfer_id: String,
    /// The sender.
    pub from_user: String,
    /// The receiver.
    pub to_user: String,
    /// The amount, as text.
    pub amount: String,
    /// COMPLETED or FAILED.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
}

/// The six scenarios of `wallet produce`, by number (1-based).
pub const SCENARIO_NAMES: [&str; 6] = [
    "concurrent overspend",
    "hot sender",
    "both directions at once",
    "chain a -> b -> c -> d",
    "overspend race",
    "same user",
];

/// Everything a scenario needs.
pub struct Runner<'a> {
    /// The engine, to create wallets and read balances.
    pub service: &'a WalletService,
    /// The brokers.
    pub kafka: &'a KafkaConfig,
    /// Where the worker reads requests.
    pub requests_topic: &'a str,
    /// Where the worker publishes results.
    pub results_topic: &'a str,
    /// How long to wait for each scenario's results.
    pub timeout: Duration,
    /// Prefix of this run's wallet and transfer ids, so runs never collide.
    pub run_id: String,
}

impl Runner<'_> {
    fn id(&self, name: &str) -> String {
        format!("{name}_{}", self.run_id)
    }

    fn wallets(&self, specs: &[(&str, &str)]) -> Result<Vec<String>, OpsError> {
        let new: Vec<NewWallet> = specs
            .iter()
            .map(|(name, balance)| NewWallet {
                user_id: self.id(name),
                full_name: format!("Scenario {name}"),
                email: format!("{}@example.com", self.id(name)),
                opening_balance: Amount::parse(balance).expect("scenario balance"),
                currency: Currency::USD,
            })
            .collect();
        self.service.create_wallets(&new)?;
        Ok(new.into_iter().map(|w| w.user_id).collect())
    }

    fn balances(&self, ids: &[String]) -> Result<Vec<(String, Amount)>, OpsError> {
        ids.iter()
            .map(|id| Ok((id.clone(), self.service.balance(id)?)))
            .collect()
    }

    fn request(&self, n: usize, from: &str, to: &str, amount: &str) -> TransferRequest {
        // Wallet ids are unique per scenario and run, so this id is too.
        TransferRequest::new(&format!("tx_{from}_{n}"), from, to, amount, Currency::USD)
            .expect("scenario request")
    }

    /// Publishes all at once and waits for every result.
    fn burst(&self, requests: &[TransferRequest]) -> Result<Vec<TransferCompleted>, OpsError> {
        let watcher = ResultWatcher::start(self.kafka, self.results_topic)?;
        publish_requests(self.kafka, self.requests_topic, requests, self.timeout)?;
        let ids: HashSet<String> = requests.iter().map(|r| r.transfer_id.clone()).collect();
        let results = watcher.wait_for_all(&ids, self.timeout)?;
        if results.len() < ids.len() {
            return Err(OpsError::Other(format!(
                "only {} of {} results arrived within {} s (is a worker running on topic {}?)",
                results.len(),
                ids.len(),
                self.timeout.as_secs(),
                self.requests_topic
            )));
        }
        Ok(requests
            .iter()
            .map(|r| results[&r.transfer_id].clone())
            .collect())
    }

    /// Runs scenario `number` (1 to 6).
    pub fn run(&self, number: u32) -> Result<ScenarioReport, OpsError> {
        let (ids, results, expectation, problems): (Vec<String>, _, String, Vec<String>) =
            match number {
                1 => self.concurrent_overspend()?,
                2 => self.hot_sender()?,
                3 => self.both_directions()?,
                4 => self.chain()?,
                5 => self.overspend_race()?,
                6 => self.same_user()?,
                other => return Err(OpsError::Other(format!("no scenario {other} (1 to 6)"))),
            };
        let _ = ids;
        let (before, after, results) = results;
        Ok(ScenarioReport {
            number,
            name: SCENARIO_NAMES[number as usize - 1],
            before: show(&before),
            after: show(&after),
            transfers: results.iter().map(line).collect(),
            expectation,
            passed: problems.is_empty(),
            problems,
        })
    }

    #[allow(clippy::type_complexity)]
    fn play(
        &self,
        ids: &[String],
        requests: &[TransferRequest],
    ) -> Result<
        (
            Vec<(String, Amount)>,
            Vec<(String, Amount)>,
            Vec<TransferCompleted>,
        ),
        OpsError,
    > {
        let before = self.balances(ids)?;
        let results = self.burst(requests)?;
        let after = self.balances(ids)?;
        Ok((before, after, results))
    }

    fn concurrent_overspend(&self) -> Result<Outcome, OpsError> {
        let ids = self.wallets(&[
            ("payer", "5234.50"),
            ("payee1", "0"),
            ("payee2", "0"),
            ("payee3", "0"),
            ("payee4", "0"),
            ("payee5", "0"),
        ])?;
        let requests: Vec<_> = (1..=5)
            .map(|i| self.request(i, &ids[0], &ids[i], "1500.00"))
            .collect();
        let played = self.play(&ids, &requests)?;
        let start = played.0[0].1;
        let amount = Amount::parse("1500.00").expect("amount");
        let fits = (start.minor() / amount.minor()).min(5);
        let final_payer = Amount::from_minor(start.minor() - fits * amount.minor());
        let mut problems = Vec::new();
        let ok = count(&played.2, Status::Completed);
        check(
            &mut problems,
            ok as i64 == fits,
            format!("{ok} succeeded, expected {fits}"),
        );
        check(
            &mut problems,
            played.1[0].1 == final_payer,
            format!("payer ends at {}, expected {final_payer}", played.1[0].1),
        );
        failures_are(&mut problems, &played.2, FailureReason::InsufficientFunds);
        // One sender, so one key: the worker keeps publish order, and the first ones win.
        first_ones_win(&mut problems, &played.2, fits as usize);
        let expectation = format!(
            "the first {fits} of 5 (in publish order) succeed, payer ends at {final_payer}"
        );
        Ok((ids, played, expectation, problems))
    }

    fn hot_sender(&self) -> Result<Outcome, OpsError> {
        let ids = self.wallets(&[("hot_payer", "10000.00"), ("hot_payee", "0")])?;
        let requests: Vec<_> = (0..100)
            .map(|i| self.request(i, &ids[0], &ids[1], "10.00"))
            .collect();
        let played = self.play(&ids, &requests)?;
        let moved = Amount::from_minor(100 * 1_000);
        let (payer, payee) = (played.0[0].1, played.0[1].1);
        let mut problems = Vec::new();
        let ok = count(&played.2, Status::Completed);
        check(&mut problems, ok == 100, format!("{ok} of 100 succeeded"));
        exact(
            &mut problems,
            &played.1[0],
            payer.checked_sub(moved).expect("no overflow"),
        );
        exact(
            &mut problems,
            &played.1[1],
            payee.checked_add(moved).expect("no overflow"),
        );
        Ok((
            ids,
            played,
            format!("all 100 succeed, {moved} moves"),
            problems,
        ))
    }

    fn both_directions(&self) -> Result<Outcome, OpsError> {
        let ids = self.wallets(&[("left", "1000.00"), ("right", "1000.00")])?;
        let mut requests = Vec::new();
        for i in 0..50 {
            requests.push(self.request(2 * i, &ids[0], &ids[1], "10.00"));
            requests.push(self.request(2 * i + 1, &ids[1], &ids[0], "5.00"));
        }
        let played = self.play(&ids, &requests)?;
        let net = Amount::from_minor(50 * (1_000 - 500));
        let mut problems = Vec::new();
        let ok = count(&played.2, Status::Completed);
        check(&mut problems, ok == 100, format!("{ok} of 100 completed"));
        exact(
            &mut problems,
            &played.1[0],
            played.0[0].1.checked_sub(net).expect("no overflow"),
        );
        exact(
            &mut problems,
            &played.1[1],
            played.0[1].1.checked_add(net).expect("no overflow"),
        );
        Ok((
            ids,
            played,
            format!("all 100 complete, net {net} left -> right"),
            problems,
        ))
    }

    fn chain(&self) -> Result<Outcome, OpsError> {
        let ids = self.wallets(&[("a", "100.00"), ("b", "0"), ("c", "0"), ("d", "0")])?;
        let before = self.balances(&ids)?;
        let watcher = ResultWatcher::start(self.kafka, self.results_topic)?;
        let mut results = Vec::new();
        for i in 0..3 {
            let request = self.request(i, &ids[i], &ids[i + 1], "100.00");
            publish_request(self.kafka, self.requests_topic, &request, self.timeout)?;
            let result = watcher
                .wait_for(&request.transfer_id, self.timeout)?
                .ok_or_else(|| OpsError::Other(format!("no result for {}", request.transfer_id)))?;
            results.push(result);
        }
        let after = self.balances(&ids)?;
        let mut problems = Vec::new();
        let ok = count(&results, Status::Completed);
        check(&mut problems, ok == 3, format!("{ok} of 3 succeeded"));
        exact(&mut problems, &after[3], before[0].1);
        exact(&mut problems, &after[0], Amount::ZERO);
        let played = (before, after, results);
        Ok((
            ids,
            played,
            "each hop succeeds in order; d ends with a's 100.00".into(),
            problems,
        ))
    }

    fn overspend_race(&self) -> Result<Outcome, OpsError> {
        let ids = self.wallets(&[("racer", "100.00"), ("r1", "0"), ("r2", "0"), ("r3", "0")])?;
        let amounts = ["50.00", "60.00", "70.00"];
        let requests: Vec<_> = amounts
            .iter()
            .enumerate()
            .map(|(i, a)| self.request(i, &ids[0], &ids[i + 1], a))
            .collect();
        let played = self.play(&ids, &requests)?;
        let start = played.0[0].1;
        let final_balance = played.1[0].1;
        let mut problems = Vec::new();
        let spent: i64 = requests
            .iter()
            .zip(&played.2)
            .filter(|(_, r)| r.status == Status::Completed)
            .map(|(q, _)| q.amount.minor())
            .sum();
        check(
            &mut problems,
            spent <= start.minor(),
            format!(
                "successes sum to {}, over {start}",
                Amount::from_minor(spent)
            ),
        );
        failures_are(&mut problems, &played.2, FailureReason::InsufficientFunds);
        for (q, r) in requests.iter().zip(&played.2) {
            check(
                &mut problems,
                r.status == Status::Completed || q.amount > final_balance,
                format!("{} failed yet fits in the final {final_balance}", q.amount),
            );
        }
        exact(
            &mut problems,
            &played.1[0],
            Amount::from_minor(start.minor() - spent),
        );
        let ok = count(&played.2, Status::Completed);
        check(
            &mut problems,
            ok == 1,
            format!("{ok} succeeded, expected exactly 1"),
        );
        // One sender, so one key: processed in publish order, the first (50.00) wins.
        first_ones_win(&mut problems, &played.2, 1);
        Ok((
            ids,
            played,
            "the first published (50.00) succeeds; 60.00 and 70.00 fail with insufficient_funds"
                .into(),
            problems,
        ))
    }

    fn same_user(&self) -> Result<Outcome, OpsError> {
        let ids = self.wallets(&[("self", "100.00")])?;
        let requests: Vec<_> = (0..3)
            .map(|i| self.request(i, &ids[0], &ids[0], "10.00"))
            .collect();
        let played = self.play(&ids, &requests)?;
        let mut problems = Vec::new();
        let failed = played
            .2
            .iter()
            .filter(|r| r.reason == Some(FailureReason::SameUser))
            .count();
        check(
            &mut problems,
            failed == 3,
            format!("{failed} of 3 failed with same_user"),
        );
        exact(&mut problems, &played.1[0], played.0[0].1);
        Ok((
            ids,
            played,
            "each fails with same_user; nothing moves".into(),
            problems,
        ))
    }
}

type Played = (
    Vec<(String, Amount)>,
    Vec<(String, Amount)>,
    Vec<TransferCompleted>,
);
type Outcome = (Vec<String>, Played, String, Vec<String>);

fn count(results: &[TransferCompleted], status: Status) -> usize {
    results.iter().filter(|r| r.status == status).count()
}

/// Results in publish order: the first `winners` COMPLETED, every later one FAILED.
fn first_ones_win(problems: &mut Vec<String>, results: &[TransferCompleted], winners: usize) {
    for (i, r) in results.iter().enumerate() {
        let want = if i < winners {
            Status::Completed
        } else {
            Status::Failed
        };
        check(
            problems,
            r.status == want,
            format!(
                "request {} (published #{}) is {:?}, expected {want:?}: per-sender order broken",
                r.transfer_id,
                i + 1,
                r.status
            ),
        );
    }
}

fn check(problems: &mut Vec<String>, ok: bool, problem: String) {
    if !ok {
        problems.push(problem);
    }
}

fn exact(problems: &mut Vec<String>, (id, actual): &(String, Amount), expected: Amount) {
    check(
        problems,
        *actual == expected,
        format!("{id} ends at {actual}, expected {expected}"),
    );
}

fn failures_are(problems: &mut Vec<String>, results: &[TransferCompleted], reason: FailureReason) {
    for r in results.iter().filter(|r| r.status == Status::Failed) {
        check(
            problems,
            r.reason == Some(reason),
            format!(
                "{} failed with {:?}, expected {reason}",
                r.transfer_id, r.reason
            ),
        );
    }
}

fn show(balances: &[(String, Amount)]) -> Vec<(String, String)> {
    balances
        .iter()
        .map(|(id, a)| (id.clone(), a.to_string()))
        .collect()
}

fn line(r: &TransferCompleted) -> TransferLine {
    TransferLine {
        transfer_id: r.transfer_id.clone(),
        from_user: r.from_user.clone(),
        to_user: r.to_user.clone(),
        amount: r.amount.clone(),
        status: r.status.as_str().to_string(),
        reason: r.reason.map(|r| r.as_str().to_string()),
    }
}

/// Results by transfer id, for [`ResultWatcher::wait_for_all`].
pub type ResultsById = HashMap<String, TransferCompleted>;
