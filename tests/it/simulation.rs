//! A seeded simulation of the transfer engine, in the spirit of TigerBeetle's VOPR (issue 20):
//! from one seed, a handful of wallets and a run of random operations under random faults,
//! against real servers through the library API ([`WalletService`]), checked after the run
//! against the reference model of `support::sim`.
//!
//! Operations: transfers (some overdrawing), replays of an earlier request, re-sends of a key
//! by the same sender with another body, re-use of a key by another sender, deposits, freezes
//! and unfreezes (an operator's HSET), `recover` (the sweep's call). Faults: a crash at each
//! cross-slot failpoint (the run stops, its locks stay until their ttl); a stalled holder whose
//! lock expires while another transfer takes the same sender (the before-EXEC hook); and, on a
//! cluster with one replica per primary and `wait_replicas 1`, a partition episode: one
//! primary's replica paused (SIGSTOP), transfers touching that primary answered or retried,
//! then either healed or failed over with a loss: the old primary paused, the replica promoted
//! by `CLUSTER FAILOVER TAKEOVER`, the old primary back as its replica, so what reached only
//! the old primary vanishes, as in a partition. Every request left without an answer is then
//! retried until answered (a worker's redelivery), `recover` runs, every request is replayed.
//!
//! Checked: each answer against the first one; the key rule (`support::sim::KeyRule`); every
//! balance against the answers; one debit and one credit per COMPLETED answer in the
//! histories; nothing PENDING after `recover`; no lock left; the audit clean. A failure prints
//! the seed, the topology, the last operations and the command that replays it.
//!
//! Deterministic in its choices: a seed gives the same operations every time; what the
//! servers answer may depend on timing (a lock expiring, a WAIT). Sizes: `SIM_SEEDS`,
//! `SIM_OPS`; `FAULT_SCALE=full` runs many seeds from a random base; `SIM_SEED=n` (or `make
//! simulate SEED=n`, or `FAULT_SEED=n`) replays one, `SIM_TOPOLOGY` picks one topology,
//! `SIM_TRACE=1` prints every run's operations, `SIM_KEY_RULE=per-sender` holds a cluster to
//! the old per-sender key rule (to measure other bugs on an engine without the key claim).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, bounded};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::cluster::keys;
use wallet_transfer::engine::lock::LockConfig;
use wallet_transfer::engine::service::Failpoint;
use wallet_transfer::engine::wallet::WalletError;
use wallet_transfer::{Amount, Currency, EngineConfig, TransferRequest, WalletService};

use crate::support::cluster::RedisCluster;
use crate::support::faults::full_scale;
use crate::support::sim::{KeyRule, Model};
use crate::support::topology::{Bed, Topology};
use crate::support::wait_until;

/// Seeds and operations per topology in `make test` (fixed seeds 1..=n) and in
/// `FAULT_SCALE=full` (random base).
const SHORT_SEEDS: u64 = 5;
const SHORT_OPS: usize = 40;
const FULL_SEEDS: u64 = 30;
const FULL_OPS: usize = 150;
/// Operations of the trace shown with a failure.
const TRACE_SHOWN: usize = 30;
/// A simulated lock's ttl: short, so crashed and stalled holders' locks expire quickly.
const LOCK_TTL_MS: u64 = 300;
/// How long a request may stay unanswered at the end before the run fails.
const ANSWER_DEADLINE_MS: u64 = 30_000;
/// How long a stalled holder waits, at most, for the other transfer.
const STALL_LIMIT_MS: u64 = 10_000;
/// Waits of the partition episodes (promotion, rejoining, replication catching up).
const CLUSTER_WAIT_MS: u64 = 30_000;

/// Seeds and size of this process's runs, or `None` when `SIM_TOPOLOGY` names another.
fn plan(topology: &str) -> Option<(Vec<u64>, usize)> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if env("SIM_TOPOLOGY").is_some_and(|t| t != topology) {
        return None;
    }
    let number = |name: &str| env(name).map(|v| v.parse::<u64>().expect("a number"));
    let ops = number("SIM_OPS").map_or(if full_scale() { FULL_OPS } else { SHORT_OPS }, |n| {
        n as usize
    });
    if let Some(seed) = number("SIM_SEED").or_else(|| number("FAULT_SEED")) {
        return Some((vec![seed], ops));
    }
    let count = number("SIM_SEEDS").unwrap_or(if full_scale() {
        FULL_SEEDS
    } else {
        SHORT_SEEDS
    });
    let base = if full_scale() {
        rand::random::<u32>() as u64
    } else {
        1
    };
    Some(((base..base + count).collect(), ops))
}

/// The key rule the model holds a topology to: global everywhere, unless `SIM_KEY_RULE=per-sender`
/// asks for the cluster's old rule (to measure other bugs on a main without the key claim).
fn key_rule(topology: Topology) -> KeyRule {
    let per_sender = std::env::var("SIM_KEY_RULE").is_ok_and(|v| v == "per-sender");
    match (topology, per_sender) {
        (Topology::OneRedis, _) | (_, false) => KeyRule::Global,
        _ => KeyRule::PerSender,
    }
}

fn config(replicated: bool) -> EngineConfig {
    EngineConfig::default()
        .with_lock(
            LockConfig::default()
                .with_ttl_ms(LOCK_TTL_MS)
                .with_retry_delay_ms_base(2)
                .with_retry_delay_ms_max(20)
                .with_retries_max(1_000),
        )
        .with_history_max_entries(None)
        .with_wait_replicas(replicated.then_some(1))
}

#[test]
fn random_operations_and_faults_match_the_model_on_one_redis() {
    let Some((seeds, ops)) = plan("one-redis") else {
        return;
    };
    for seed in seeds {
        let bed = Bed::one_redis(config(false));
        Sim::new(&bed, None, "one-redis", seed).run(ops);
    }
}

#[test]
fn random_operations_and_faults_match_the_model_on_a_cluster_in_one_slot() {
    on_cluster("same-slot", true);
}

#[test]
fn random_operations_and_faults_match_the_model_on_a_cluster_across_slots() {
    on_cluster("cross-slot", false);
}

/// Every seed on one cluster of 3 primaries with a replica each, `wait_replicas 1`.
fn on_cluster(name: &'static str, same_slot: bool) {
    let Some((seeds, ops)) = plan(name) else {
        return;
    };
    let cluster = RedisCluster::start(3, 1);
    for port in cluster.ports() {
        // A node that comes back as a replica after a losing failover resyncs in full: at once,
        // not after the default 5 s wait for more replicas to share the transfer.
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-sync-delay")
            .arg(0)
            .query::<()>(&mut cluster.conn(port))
            .expect("CONFIG SET repl-diskless-sync-delay");
    }
    for seed in seeds {
        let bed = Bed::on_cluster(&cluster, same_slot, config(true));
        Sim::new(&bed, Some(&cluster), name, seed).run(ops);
    }
}

/// One operation, drawn from the seed. Wallets and bodies are indexes into the model.
#[derive(Debug)]
enum Op {
    Transfer {
        from: usize,
        to: usize,
        cents: i64,
    },
    Replay {
        body: usize,
    },
    /// The same sender and key, another receiver or amount.
    Resend {
        body: usize,
        to: usize,
        cents: i64,
    },
    /// Another sender, the same key.
    Reuse {
        body: usize,
        from: usize,
        to: usize,
        cents: i64,
    },
    Deposit {
        wallet: usize,
        cents: i64,
    },
    Freeze {
        wallet: usize,
        frozen: bool,
    },
    Recover,
    Crash {
        from: usize,
        to: usize,
        cents: i64,
        point: Failpoint,
    },
    /// `from -> to` stalls before EXEC past its lock's ttl while `from -> other` runs.
    Stall {
        from: usize,
        to: usize,
        cents: i64,
        other: usize,
        other_cents: i64,
    },
    /// The replica of `wallet`'s primary paused, `transfers` sent (each retried once), then
    /// healed, or failed over with the loss of what only the primary had.
    Partition {
        wallet: usize,
        transfers: Vec<(usize, usize, i64)>,
        recover: bool,
        loss: bool,
    },
}

struct Sim<'b, 'c> {
    bed: &'b Bed<'c>,
    cluster: Option<&'c RedisCluster>,
    name: &'static str,
    seed: u64,
    rng: StdRng,
    model: Model,
    /// Bodies sent by crash operations: the favourite targets of a key's re-use.
    crashed: Vec<usize>,
    /// What the run went through (crashes, stalls, errors, partitions), for its summary line.
    counts: std::collections::BTreeMap<&'static str, u32>,
    /// No trace lines for answers (the final replays: a wrong one fails with its own text).
    quiet: bool,
    started: Instant,
}

impl<'b, 'c> Sim<'b, 'c> {
    /// Creates the run's wallets (3 to 6, balances 10.00 to 200.00).
    fn new(
        bed: &'b Bed<'c>,
        cluster: Option<&'c RedisCluster>,
        name: &'static str,
        seed: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(3..=6);
        let names: Vec<String> = (0..count).map(|i| format!("s{seed}w{i}")).collect();
        let opening: Vec<i64> = (0..count)
            .map(|_| rng.random_range(10..=200) * 100)
            .collect();
        let balances: Vec<String> = opening
            .iter()
            .map(|c| Amount::from_minor(*c).to_string())
            .collect();
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(balances.iter().map(String::as_str))
            .collect();
        bed.create(&pairs);
        let ids = names.iter().map(|n| bed.id(n)).collect();
        println!(
            "simulation {name}: seed {seed}, {count} wallets (replay: make simulate SEED={seed} TOPOLOGY={name})"
        );
        Sim {
            bed,
            cluster,
            name,
            seed,
            rng,
            model: Model::new(key_rule(bed.topology), ids, opening),
            crashed: Vec::new(),
            counts: Default::default(),
            quiet: false,
            started: Instant::now(),
        }
    }

    fn run(mut self, ops: usize) {
        // A partition episode per 50 operations (at least one) on a cluster.
        let episodes = if self.cluster.is_some() {
            ops.div_ceil(50)
        } else {
            0
        };
        let partitions: Vec<usize> = (0..episodes)
            .map(|_| self.rng.random_range(0..ops))
            .collect();
        for i in 0..ops {
            let op = match partitions.contains(&i) {
                true => self.partition_op(),
                false => self.next_op(),
            };
            self.model.trace.push(format!("#{i} {op:?}"));
            self.apply(op);
        }
        self.finish();
        if std::env::var("SIM_TRACE").is_ok_and(|v| v == "1") {
            println!("{}", self.model.trace.join("\n"));
        }
        println!(
            "simulation {}: seed {} clean: {} requests, {} deposits, {:?}, {:.1} s",
            self.name,
            self.seed,
            self.model.bodies.len(),
            self.model.deposits.len(),
            self.counts,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn wallet(&mut self) -> usize {
        self.rng.random_range(0..self.model.wallets.len())
    }

    fn other_than(&mut self, not: usize) -> usize {
        let n = self.model.wallets.len();
        (not + self.rng.random_range(1..n)) % n
    }

    /// An amount for a transfer from `from`: mostly a quarter of its opening or less, a
    /// quarter of the time up to twice it (overdrafts).
    fn cents(&mut self, from: usize) -> i64 {
        let opening = self.model.opening_cents[from];
        match self.rng.random_bool(0.75) {
            true => self.rng.random_range(1..=opening / 4),
            false => self.rng.random_range(opening / 2..=opening * 2),
        }
    }

    fn next_op(&mut self) -> Op {
        let bodies = self.model.bodies.len();
        let roll = match bodies {
            0 => 0,
            _ => self.rng.random_range(0..100),
        };
        match roll {
            30..42 => Op::Replay {
                body: self.rng.random_range(0..bodies),
            },
            42..48 => self.resend_op(),
            48..58 => self.reuse_op(),
            58..64 => {
                let wallet = self.wallet();
                Op::Deposit {
                    wallet,
                    cents: self.rng.random_range(1..=5_000),
                }
            }
            64..70 => {
                let wallet = self.wallet();
                Op::Freeze {
                    wallet,
                    frozen: !self.model.frozen.contains(&wallet),
                }
            }
            70..76 => Op::Recover,
            76..90 => {
                // Small amounts: a crash is meant to stop a transfer that was decided to move.
                let from = self.wallet();
                let to = self.other_than(from);
                let cents = self
                    .rng
                    .random_range(1..=self.model.opening_cents[from] / 4);
                let point =
                    [Failpoint::AfterDebit, Failpoint::AfterCredit][self.rng.random_range(0..2)];
                Op::Crash {
                    from,
                    to,
                    cents,
                    point,
                }
            }
            90..96 => {
                let (from, to, cents) = self.pair();
                let other = self.other_than(from);
                let other_cents = self.cents(from);
                Op::Stall {
                    from,
                    to,
                    cents,
                    other,
                    other_cents,
                }
            }
            _ => {
                let (from, to, cents) = self.pair();
                Op::Transfer { from, to, cents }
            }
        }
    }

    fn pair(&mut self) -> (usize, usize, i64) {
        let from = self.wallet();
        let to = self.other_than(from);
        (from, to, self.cents(from))
    }

    fn resend_op(&mut self) -> Op {
        let body = self.rng.random_range(0..self.model.bodies.len());
        let from = self.model.bodies[body].from;
        let to = self.other_than(from);
        let mut cents = self.cents(from);
        let b = &self.model.bodies[body];
        if (b.to, b.request.amount.minor()) == (to, cents) {
            cents += 1;
        }
        Op::Resend { body, to, cents }
    }

    /// Another sender's request under an earlier key: mostly the last crashed one's, mostly
    /// to the same receiver (the sequence of issue 20's item 1).
    fn reuse_op(&mut self) -> Op {
        let body = match self.crashed.last() {
            Some(&b) if self.rng.random_bool(0.7) => b,
            _ => self.rng.random_range(0..self.model.bodies.len()),
        };
        let (first_from, first_to) = (self.model.bodies[body].from, self.model.bodies[body].to);
        let from = self.other_than(first_from);
        let to = match self.rng.random_bool(0.8) && first_to != from {
            true => first_to,
            false => self.other_than(from),
        };
        let cents = match self.rng.random_bool(0.6) {
            true => self.model.bodies[body].request.amount.minor(),
            false => self.cents(from),
        };
        Op::Reuse {
            body,
            from,
            to,
            cents,
        }
    }

    /// A partition episode around an active wallet's primary: one transfer from it and one
    /// to it (in a random order), each with a wallet on another primary when there is one,
    /// of at most 1.00 (so they are decided COMPLETED); sometimes a `recover` in between;
    /// three times in four a failover that loses what the replica did not get.
    fn partition_op(&mut self) -> Op {
        let active: Vec<usize> = (0..self.model.wallets.len())
            .filter(|w| !self.model.frozen.contains(w))
            .collect();
        let pool = if active.len() >= 2 {
            active
        } else {
            (0..self.model.wallets.len()).collect()
        };
        let wallet = pool[self.rng.random_range(0..pool.len())];
        let primary = |w: usize| self.primary_of(w);
        let apart: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&w| primary(w) != primary(wallet))
            .collect();
        let others = match apart.is_empty() {
            true => pool.iter().copied().filter(|&w| w != wallet).collect(),
            false => apart,
        };
        let mut pick = || others[self.rng.random_range(0..others.len())];
        let (out, inn) = (pick(), pick());
        let mut transfers = vec![(wallet, out, 0), (inn, wallet, 0)];
        if self.rng.random_bool(0.5) {
            transfers.reverse();
        }
        for t in &mut transfers {
            t.2 = self.rng.random_range(1..=100);
        }
        let recover = self.rng.random_bool(0.3);
        let loss = self.rng.random_bool(0.75);
        Op::Partition {
            wallet,
            transfers,
            recover,
            loss,
        }
    }

    /// The port of the primary that serves wallet `w` now (which wallets share a primary
    /// stays the same through failovers: a failover moves whole slot ranges).
    fn primary_of(&self, w: usize) -> Option<u16> {
        let cluster = self.cluster?;
        cluster.owner_of(
            cluster.primary_ports()[0],
            keys::wallet_slot(&self.model.wallets[w]),
        )
    }

    /// A new request body `from -> to`, under a key of its own or `key`; an earlier body
    /// when it is the same request (then this is its replay).
    fn body(&mut self, from: usize, to: usize, cents: i64, key: Option<String>) -> usize {
        let n = self.model.bodies.len();
        let key = key.unwrap_or_else(|| format!("s{}_k{n}", self.seed));
        let same = |b: &crate::support::sim::Body| {
            (
                b.from,
                b.to,
                b.request.amount.minor(),
                &b.request.idempotency_key,
            ) == (from, to, cents, &key)
        };
        if let Some(earlier) = self.model.bodies.iter().position(same) {
            return earlier;
        }
        let (from_id, to_id) = (&self.model.wallets[from], &self.model.wallets[to]);
        let amount = Amount::from_minor(cents).to_string();
        let request = TransferRequest::new(
            &format!("s{}_t{n}", self.seed),
            from_id,
            to_id,
            &amount,
            Currency::USD,
        )
        .and_then(|r| r.with_idempotency_key(&key))
        .expect("a valid request");
        self.model.add_body(request, from, to)
    }

    /// One attempt of `body` through `service`, booked in the model and the trace.
    fn attempt(&mut self, body: usize, service: &WalletService) {
        let request = self.model.bodies[body].request.clone();
        let result = service.transfer(&request);
        self.book(body, result);
    }

    fn book(
        &mut self,
        body: usize,
        result: Result<wallet_transfer::TransferOutcome, wallet_transfer::TransferError>,
    ) {
        if let Err(e) = &result
            && e.is_transient()
        {
            *self.counts.entry(e.kind()).or_default() += 1;
        }
        match self.model.record(body, &result) {
            Ok(_) if self.quiet => {}
            Ok(text) => self.model.trace.push(format!("    body {body} -> {text}")),
            Err(broken) => self.fail(&[broken]),
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Transfer { from, to, cents } => {
                let b = self.body(from, to, cents, None);
                self.attempt(b, &self.bed.service.clone());
            }
            Op::Replay { body } => self.attempt(body, &self.bed.service.clone()),
            Op::Resend { body, to, cents } => {
                let (from, key) = (
                    self.model.bodies[body].from,
                    self.model.bodies[body].request.idempotency_key.clone(),
                );
                let b = self.body(from, to, cents, Some(key));
                self.attempt(b, &self.bed.service.clone());
            }
            Op::Reuse {
                body,
                from,
                to,
                cents,
            } => {
                let key = self.model.bodies[body].request.idempotency_key.clone();
                let b = self.body(from, to, cents, Some(key));
                self.attempt(b, &self.bed.service.clone());
            }
            Op::Deposit { wallet, cents } => self.deposit(wallet, cents),
            Op::Freeze { wallet, frozen } => self.freeze(wallet, frozen),
            Op::Recover => self.recover(100),
            Op::Crash {
                from,
                to,
                cents,
                point,
            } => {
                let b = self.body(from, to, cents, None);
                let mut crashing = self.bed.service.as_separate_process();
                crashing.set_failpoint(Some(point));
                self.attempt(b, &crashing);
                self.crashed.push(b);
                if self.model.bodies[b].first.is_none() {
                    *self.counts.entry("crashed").or_default() += 1;
                }
            }
            Op::Stall {
                from,
                to,
                cents,
                other,
                other_cents,
            } => self.stall((from, to, cents), (other, other_cents)),
            Op::Partition {
                wallet,
                transfers,
                recover,
                loss,
            } => self.partition(wallet, &transfers, recover, loss),
        }
    }

    fn deposit(&mut self, wallet: usize, cents: i64) {
        let id = self.model.wallets[wallet].clone();
        let frozen = self.model.frozen.contains(&wallet);
        match (
            self.bed.service.deposit(&id, Amount::from_minor(cents)),
            frozen,
        ) {
            (Ok(_), false) => {
                self.model.deposits.push((wallet, cents));
                self.model.trace.push("    deposited".into());
            }
            (Err(WalletError::Inactive { .. }), true) => {
                self.model.trace.push("    refused: frozen".into())
            }
            (result, _) => self.fail(&[format!(
                "deposit of {cents} cents to {id} (frozen: {frozen}): {result:?}"
            )]),
        }
    }

    /// Sets the wallet's status as an operator would (HSET on its hash).
    fn freeze(&mut self, wallet: usize, frozen: bool) {
        let key = self.bed.keys().wallet(&self.model.wallets[wallet]);
        let status = if frozen { "frozen" } else { "active" };
        redis::cmd("HSET")
            .arg(&key)
            .arg("status")
            .arg(status)
            .query::<()>(&mut self.bed.conn_for(&key))
            .expect("HSET status");
        match frozen {
            true => self.model.frozen.insert(wallet),
            false => self.model.frozen.remove(&wallet),
        };
    }

    fn recover(&mut self, limit: usize) {
        let text = match self.bed.service.recover(limit) {
            Ok(r) => format!(
                "    recover: {} pending, {} finished, {} failed",
                r.pending_found, r.finished, r.failed
            ),
            Err(e) => format!("    recover: error {e}"),
        };
        self.model.trace.push(text);
    }

    /// `slow` stalls before its EXEC (a separate process's hook) until `fast`, on the same
    /// sender, has run past the expired lock; then it goes on.
    fn stall(&mut self, slow: (usize, usize, i64), fast: (usize, i64)) {
        let slow = self.body(slow.0, slow.1, slow.2, None);
        let fast = self.body(self.model.bodies[slow].from, fast.0, fast.1, None);
        let request = self.model.bodies[slow].request.clone();
        let key = request.idempotency_key.clone();
        let (started_tx, started_rx) = bounded::<()>(1);
        let (done_tx, done_rx) = bounded::<()>(1);
        let mut stalled = self.bed.service.as_separate_process();
        let first = std::sync::atomic::AtomicBool::new(true);
        stalled.set_before_exec_hook(Arc::new(move |k: &str| {
            // Only before its first EXEC (a cross-slot run has up to three).
            let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
            if k == key && first && started_tx.try_send(()).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_millis(STALL_LIMIT_MS));
            }
        }));
        let handle = std::thread::spawn(move || stalled.transfer(&request));
        let deadline = Instant::now() + Duration::from_millis(STALL_LIMIT_MS);
        let reached = loop {
            match started_rx.recv_timeout(Duration::from_millis(10)) {
                Ok(()) => break true,
                Err(RecvTimeoutError::Disconnected) => break false,
                Err(RecvTimeoutError::Timeout)
                    if handle.is_finished() || Instant::now() > deadline =>
                {
                    break false;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        self.model
            .trace
            .push(format!("    body {slow} stalled before EXEC: {reached}"));
        let stall = if reached { "stalled" } else { "not_stalled" };
        *self.counts.entry(stall).or_default() += 1;
        self.attempt(fast, &self.bed.service.clone());
        let _ = done_tx.try_send(());
        let result = handle.join().expect("the stalled transfer's thread");
        self.book(slow, result);
    }

    /// The partition episode of [`Op::Partition`] (clusters only).
    fn partition(
        &mut self,
        wallet: usize,
        transfers: &[(usize, usize, i64)],
        recover: bool,
        loss: bool,
    ) {
        let cluster = self.cluster.expect("partitions run on a cluster");
        let primary = self.primary_of(wallet).expect("the wallet's primary");
        let replica = cluster
            .replica_of(primary)
            .expect("a replica of the primary");
        wait_caught_up(cluster, primary, replica);
        cut_replica(cluster, primary, replica);
        for &(from, to, cents) in transfers {
            let b = self.body(from, to, cents, None);
            let service = self.bed.service.clone();
            self.attempt(b, &service);
            if self.model.bodies[b].first.is_none() {
                self.attempt(b, &service);
            }
        }
        if recover {
            self.recover(2);
        }
        match loss {
            true => fail_over_losing_writes(cluster, primary, replica),
            false => {
                cluster.resume(replica);
                wait_caught_up(cluster, primary, replica);
            }
        }
        if let Some(pools) = self.bed.service.cluster() {
            pools.refresh().expect("a fresh slot map");
        }
        self.model
            .trace
            .push(format!("    partition of {primary} ended, loss: {loss}"));
        let end = if loss {
            "failovers_losing"
        } else {
            "partitions_healed"
        };
        *self.counts.entry(end).or_default() += 1;
    }

    /// Retries every unanswered request until answered, runs `recover` until nothing is
    /// PENDING, replays every request, then checks the whole ledger.
    fn finish(&mut self) {
        self.model
            .trace
            .push("end: unanswered requests retried".into());
        let service = self.bed.service.clone();
        for body in 0..self.model.bodies.len() {
            let deadline = Instant::now() + Duration::from_millis(ANSWER_DEADLINE_MS);
            while self.model.bodies[body].first.is_none() && Instant::now() < deadline {
                self.attempt(body, &service);
                if self.model.bodies[body].first.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let mut found = self.model.check_answers();
        found.extend(self.recover_all());
        self.model.trace.push("end: every request replayed".into());
        self.quiet = true;
        for body in 0..self.model.bodies.len() {
            if self.model.bodies[body].first.is_some() {
                self.attempt(body, &service);
            }
        }
        found.extend(self.check_state());
        if !found.is_empty() {
            self.fail(&found);
        }
    }

    /// `recover` until a run finds nothing PENDING (bounded).
    fn recover_all(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_millis(ANSWER_DEADLINE_MS);
        loop {
            match self.bed.service.recover(1_000) {
                Ok(r) if r.pending_found == 0 => return Vec::new(),
                _ if Instant::now() > deadline => {
                    return vec!["records still PENDING after recover ran for 30 s".into()];
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Balances, histories, PENDING records, locks and the audit.
    fn check_state(&mut self) -> Vec<String> {
        let service = &self.bed.service;
        let ids = &self.model.wallets;
        let balances: Vec<i64> = ids
            .iter()
            .map(|id| service.balance(id).expect("balance").minor())
            .collect();
        let histories: Vec<_> = ids
            .iter()
            .map(|id| service.history(id).expect("history"))
            .collect();
        let mut found = self.model.check_ledger(&balances, &histories);
        for (i, body) in self.model.bodies.iter().enumerate() {
            let r = &body.request;
            if let Ok(Some(record)) = service.transfer_outcome_of(&r.from_user, &r.idempotency_key)
                && record.status == wallet_transfer::Status::Pending
            {
                found.push(format!("body {i}: record still PENDING after recover"));
            }
        }
        let locks_gone = Instant::now() + Duration::from_millis(5 * LOCK_TTL_MS);
        while !self.bed.locks().is_empty() && Instant::now() < locks_gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        let locks = self.bed.locks();
        if !locks.is_empty() {
            found.push(format!("locks left past their ttl: {locks:?}"));
        }
        let audit = wallet_transfer::tools::ops::audit(service).expect("the audit runs");
        if audit.violations_total > 0 {
            found.push(format!(
                "audit: {} violations: {:?}",
                audit.violations_total, audit.violations
            ));
        }
        found
    }

    fn fail(&self, found: &[String]) -> ! {
        let trace = &self.model.trace;
        let shown = &trace[trace.len().saturating_sub(TRACE_SHOWN)..];
        panic!(
            "simulation {} (key rule {:?}), seed {}: {} finding(s):\n  {}\nwallets: {:?}\nlast operations:\n{}\nreplay: make simulate SEED={} TOPOLOGY={}",
            self.name,
            self.model.rule,
            self.seed,
            found.len(),
            found.join("\n  "),
            self.model.wallets,
            shown.join("\n"),
            self.seed,
            self.name
        );
    }
}

/// One field of `INFO replication` on the node `port`.
fn replication(cluster: &RedisCluster, port: u16, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut cluster.try_conn(port).ok()?)
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Cuts `replica` off from `primary`: paused (SIGSTOP), and its replication link closed by the
/// primary, so nothing the primary writes from now on reaches it, not even into its socket
/// buffer (a paused replica alone would still receive the bytes and apply them on SIGCONT).
fn cut_replica(cluster: &RedisCluster, primary: u16, replica: u16) {
    cluster.pause(replica);
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query::<u64>(&mut cluster.conn(primary))
        .expect("CLIENT KILL TYPE replica");
}

/// Waits until `replica` follows `primary` with its link up and holds all it wrote.
fn wait_caught_up(cluster: &RedisCluster, primary: u16, replica: u16) {
    wait_until(
        "the replica caught up with its primary",
        CLUSTER_WAIT_MS,
        || {
            let offset =
                |port, field| replication(cluster, port, field).and_then(|v| v.parse::<u64>().ok());
            replication(cluster, replica, "master_link_status").as_deref() == Some("up")
                && replication(cluster, replica, "master_port").and_then(|p| p.parse::<u16>().ok())
                    == Some(primary)
                && offset(replica, "slave_repl_offset") >= offset(primary, "master_repl_offset")
        },
    );
}

/// The end of a partition that loses writes: the old primary stops (paused), its replica
/// (which missed what the primary did while it was paused) takes the slots over, and the old
/// primary comes back as the new primary's replica, dropping what only it had.
fn fail_over_losing_writes(cluster: &RedisCluster, primary: u16, replica: u16) {
    cluster.pause(primary);
    cluster.resume(replica);
    let promoted = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .arg("TAKEOVER")
        .query::<()>(&mut cluster.conn(replica));
    wait_until("the replica promoted", CLUSTER_WAIT_MS, || {
        replication(cluster, replica, "role").as_deref() == Some("master")
    });
    cluster.resume(primary);
    promoted.expect("CLUSTER FAILOVER TAKEOVER");
    wait_caught_up(cluster, replica, primary);
    cluster.wait_ok(CLUSTER_WAIT_MS);
}
