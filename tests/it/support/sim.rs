//! The reference model of the seeded simulation (`tests/it/simulation.rs`): what the answers
//! the engine gave imply, and the checks of a run's final state against it.
//!
//! The model is built from answers, not from a second implementation of the engine: each
//! request body (sender, receiver, amount under one idempotency key) gets its first answer;
//! every later answer to it must be that one again (marked duplicate); at most one body per key
//! takes effect (the key rule, [`KeyRule`]), and a body refused `idempotency_conflict` needs
//! such an owner. At the end each balance must be its opening plus its deposits plus the
//! COMPLETED answers' moves, and each wallet's history must hold exactly one debit and one
//! credit per COMPLETED answer (by transfer id) and one entry per deposit.
//!
//! Owns the bookkeeping and the verdicts. Does not talk to Redis: the runner reads balances
//! and histories and hands them in; the audit, the locks and the PENDING records are checked
//! by the runner.

use std::collections::{BTreeMap, BTreeSet};

use wallet_transfer::engine::wallet::{HistoryEntry, HistoryKind};
use wallet_transfer::{FailureReason, Status, TransferError, TransferOutcome, TransferRequest};

/// Which requests one idempotency key separates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// A key is unique across every sender: a second body under it is a conflict (decided
    /// for every topology, issue 20).
    Global,
    /// A key is unique per sender (what a cluster did before the key claim): another
    /// sender's body under the same key is a transfer of its own.
    PerSender,
}

/// What the engine answered one request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// COMPLETED, or FAILED with a recorded reason: the body owns its key.
    Decided {
        status: Status,
        reason: Option<FailureReason>,
        transfer_id: String,
        from_after_cents: Option<i64>,
        to_after_cents: Option<i64>,
    },
    /// Refused `idempotency_conflict`: another body owns the key; nothing moved.
    Conflict,
}

impl Answer {
    fn of(outcome: &TransferOutcome) -> Answer {
        if outcome.reason == Some(FailureReason::IdempotencyConflict) {
            return Answer::Conflict;
        }
        Answer::Decided {
            status: outcome.status,
            reason: outcome.reason,
            transfer_id: outcome.transfer_id.clone(),
            from_after_cents: outcome.from_balance_after.map(|a| a.minor()),
            to_after_cents: outcome.to_balance_after.map(|a| a.minor()),
        }
    }

    /// A short text for the trace.
    pub fn brief(&self) -> String {
        match self {
            Answer::Decided {
                status: Status::Completed,
                ..
            } => "COMPLETED".to_string(),
            Answer::Decided { status, reason, .. } => match reason {
                Some(r) => format!("{} {}", status.as_str(), r.as_str()),
                None => status.as_str().to_string(),
            },
            Answer::Conflict => "FAILED idempotency_conflict".to_string(),
        }
    }
}

/// One request body: the request (replays send it again unchanged) and what it got.
pub struct Body {
    pub request: TransferRequest,
    /// Wallet indexes of the sender and the receiver.
    pub from: usize,
    pub to: usize,
    pub first: Option<Answer>,
    /// Attempts that ended in a transient error before the first answer.
    pub errors: u32,
}

/// The model of one run.
pub struct Model {
    pub rule: KeyRule,
    pub wallets: Vec<String>,
    pub opening_cents: Vec<i64>,
    /// (wallet index, cents) of every deposit answered Ok.
    pub deposits: Vec<(usize, i64)>,
    pub bodies: Vec<Body>,
    pub frozen: BTreeSet<usize>,
    pub trace: Vec<String>,
}

impl Model {
    pub fn new(rule: KeyRule, wallets: Vec<String>, opening_cents: Vec<i64>) -> Model {
        Model {
            rule,
            wallets,
            opening_cents,
            deposits: Vec::new(),
            bodies: Vec::new(),
            frozen: BTreeSet::new(),
            trace: Vec::new(),
        }
    }

    /// Adds a request body; returns its index.
    pub fn add_body(&mut self, request: TransferRequest, from: usize, to: usize) -> usize {
        self.bodies.push(Body {
            request,
            from,
            to,
            first: None,
            errors: 0,
        });
        self.bodies.len() - 1
    }

    /// The key's scope under the rule: the key, or (sender, key).
    fn scope(&self, body: usize) -> (String, String) {
        let r = &self.bodies[body].request;
        match self.rule {
            KeyRule::Global => (String::new(), r.idempotency_key.clone()),
            KeyRule::PerSender => (r.from_user.clone(), r.idempotency_key.clone()),
        }
    }

    /// Books one attempt's result for `body`; returns a text for the trace, or the broken
    /// rule.
    pub fn record(
        &mut self,
        body: usize,
        result: &Result<TransferOutcome, TransferError>,
    ) -> Result<String, String> {
        let (answer, duplicate) = match result {
            Ok(outcome) => (Answer::of(outcome), outcome.duplicate),
            Err(TransferError::IdempotencyConflict { .. }) => (Answer::Conflict, false),
            Err(e) if e.is_transient() => {
                if self.bodies[body].first.is_none() {
                    self.bodies[body].errors += 1;
                }
                return Ok(format!("error {}", e.kind()));
            }
            Err(e) => return Err(format!("body {body}: a non-transient error: {e}")),
        };
        if let Ok(outcome) = result {
            self.check_echo(body, outcome)?;
        }
        let text = answer.brief();
        match self.bodies[body].first.clone() {
            Some(first) => self.check_again(body, &first, &answer, duplicate, result)?,
            None => self.check_first(body, &answer, duplicate)?,
        }
        Ok(text)
    }

    /// A decided answer names this body's request.
    fn check_echo(&self, body: usize, outcome: &TransferOutcome) -> Result<(), String> {
        let r = &self.bodies[body].request;
        if outcome.reason == Some(FailureReason::IdempotencyConflict) {
            return Ok(());
        }
        let echoed = (&outcome.from_user, &outcome.to_user, outcome.amount);
        if echoed != (&r.from_user, &r.to_user, r.amount) {
            return Err(format!(
                "body {body} ({} -> {}, {}, key {}) was answered with another request's outcome: {} -> {}, {} (transfer {})",
                r.from_user,
                r.to_user,
                r.amount,
                r.idempotency_key,
                outcome.from_user,
                outcome.to_user,
                outcome.amount,
                outcome.transfer_id
            ));
        }
        Ok(())
    }

    /// A later answer equals the first, marked duplicate.
    fn check_again(
        &self,
        body: usize,
        first: &Answer,
        answer: &Answer,
        duplicate: bool,
        result: &Result<TransferOutcome, TransferError>,
    ) -> Result<(), String> {
        if answer != first {
            return Err(format!(
                "body {body}: a replay answered {answer:?}, the first answer was {first:?}"
            ));
        }
        if result.is_ok() && matches!(answer, Answer::Decided { .. }) && !duplicate {
            return Err(format!(
                "body {body}: a replay's answer is not marked duplicate"
            ));
        }
        Ok(())
    }

    /// The first answer: not a duplicate unless an earlier attempt failed; a decided one is
    /// the only decided body of its key's scope.
    fn check_first(&mut self, body: usize, answer: &Answer, duplicate: bool) -> Result<(), String> {
        if duplicate && self.bodies[body].errors == 0 && matches!(answer, Answer::Decided { .. }) {
            return Err(format!(
                "body {body}: its first attempt was answered as a duplicate"
            ));
        }
        if let Answer::Decided { transfer_id, .. } = answer {
            let own = &self.bodies[body].request.transfer_id;
            if transfer_id != own {
                return Err(format!(
                    "body {body}: decided under transfer id {transfer_id}, not its own {own}"
                ));
            }
            let scope = self.scope(body);
            if let Some(other) = (0..self.bodies.len()).find(|&o| {
                o != body
                    && matches!(self.bodies[o].first, Some(Answer::Decided { .. }))
                    && self.scope(o) == scope
            }) {
                return Err(self.two_owners(other, body));
            }
        }
        self.bodies[body].first = Some(answer.clone());
        Ok(())
    }

    fn two_owners(&self, first: usize, second: usize) -> String {
        let (a, b) = (&self.bodies[first].request, &self.bodies[second].request);
        format!(
            "key rule ({:?}) broken: idempotency key {:?} decided twice, for body {first} ({} -> {}, {}) and for body {second} ({} -> {}, {}); the second must be refused idempotency_conflict",
            self.rule,
            a.idempotency_key,
            a.from_user,
            a.to_user,
            a.amount,
            b.from_user,
            b.to_user,
            b.amount
        )
    }

    /// Every body answered; every conflict has an owner in its scope.
    pub fn check_answers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, body) in self.bodies.iter().enumerate() {
            match &body.first {
                None => found.push(format!("body {i} never answered")),
                Some(Answer::Conflict) => {
                    let scope = self.scope(i);
                    let owned = (0..self.bodies.len()).any(|o| {
                        matches!(self.bodies[o].first, Some(Answer::Decided { .. }))
                            && self.scope(o) == scope
                    });
                    if !owned {
                        found.push(format!(
                            "body {i} refused idempotency_conflict, but no body owns key {:?}",
                            body.request.idempotency_key
                        ));
                    }
                }
                Some(Answer::Decided { .. }) => {}
            }
        }
        found
    }

    fn completed(&self) -> impl Iterator<Item = &Body> {
        self.bodies.iter().filter(|b| {
            matches!(
                b.first,
                Some(Answer::Decided {
                    status: Status::Completed,
                    ..
                })
            )
        })
    }

    /// What each wallet's balance must be, in cents.
    pub fn expected_balances(&self) -> Vec<i64> {
        let mut cents = self.opening_cents.clone();
        for (wallet, amount) in &self.deposits {
            cents[*wallet] += amount;
        }
        for body in self.completed() {
            cents[body.from] -= body.request.amount.minor();
            cents[body.to] += body.request.amount.minor();
        }
        cents
    }

    /// Balances and histories (one per wallet, in wallet order) against the model.
    pub fn check_ledger(&self, balances: &[i64], histories: &[Vec<HistoryEntry>]) -> Vec<String> {
        let mut found = Vec::new();
        let expected = self.expected_balances();
        for (i, id) in self.wallets.iter().enumerate() {
            if balances[i] != expected[i] {
                found.push(format!(
                    "{id}: balance {} cents, the answers imply {}",
                    balances[i], expected[i]
                ));
            }
        }
        let (sum, want): (i64, i64) = (balances.iter().sum(), expected.iter().sum());
        if sum != want {
            found.push(format!(
                "money: {sum} cents in all, {want} expected (openings plus deposits): {:+}",
                sum - want
            ));
        }
        found.extend(self.check_histories(histories));
        found
    }

    /// Transfer entries by (wallet, transfer id, kind), deposits by wallet.
    fn check_histories(&self, histories: &[Vec<HistoryEntry>]) -> Vec<String> {
        type Entry = (usize, String, &'static str);
        let mut want: BTreeMap<Entry, u32> = BTreeMap::new();
        for body in self.completed() {
            let id = body.request.transfer_id.clone();
            *want.entry((body.from, id.clone(), "debit")).or_default() += 1;
            *want.entry((body.to, id, "credit")).or_default() += 1;
        }
        for (wallet, _) in &self.deposits {
            *want.entry((*wallet, String::new(), "deposit")).or_default() += 1;
        }
        let mut got: BTreeMap<Entry, u32> = BTreeMap::new();
        for (wallet, entries) in histories.iter().enumerate() {
            for e in entries {
                let id = match e.kind {
                    HistoryKind::Deposit => String::new(),
                    _ => e.transfer_id.clone(),
                };
                *got.entry((wallet, id, e.kind.as_str())).or_default() += 1;
            }
        }
        let mut found = Vec::new();
        for key in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
            let (w, g) = (want.get(key), got.get(key));
            if w != g {
                let (wallet, id, kind) = key;
                found.push(format!(
                    "{}: {} {kind} entries for transfer {id:?}, the answers imply {}",
                    self.wallets[*wallet],
                    g.copied().unwrap_or(0),
                    w.copied().unwrap_or(0)
                ));
            }
        }
        found
    }
}
