//! Offset commits: one committer thread that runs every commit in the order it was asked for
//! (periodic, revoke and final commits alike), and what it remembers of them.
//!
//! ```text
//! consumer loop (every commit interval) --order--> committer thread --commit (sync)--> coordinator
//! revoke callback, final commit         --order, wait for the reply (bounded)-->
//! ```
//!
//! What is committed is each partition's contiguous watermark (`worker::offsets`): the lowest
//! offset whose answer (result or dead letter, and its ledger entries) is not yet acknowledged
//! by the brokers, so a crash anywhere leaves an unanswered message uncommitted and it is
//! delivered again; the engine answers the redelivery from its record. Commits are
//! synchronous, so their success is known, and are asked for at three moments:
//!
//! - every `commit_interval_ms` (1 s by default), by the consumer loop;
//! - on revoke (or a rebalance error, which drops the whole assignment), by the consumer's
//!   rebalance callback: after the revoked partitions' running jobs finish or three quarters of
//!   `revoke_timeout_ms` pass, the commit having the last quarter; also while a stop is under
//!   way, whose deadline then bounds both;
//! - at shutdown, the final commit, which has the last quarter of the stop's deadline
//!   (`worker::pipeline`); what is not finished by then stays uncommitted.
//!
//! One thread and one queue, so a periodic commit asked for before a revoke never lands after
//! the revoke's own commit; and the [`CommitLedger`] trims from any order the partitions it
//! would move backwards, so no order can undo a later one. A failed commit is remembered until
//! the next periodic commit, which then covers every partition; a later success (of other
//! partitions, a revoke's) does not make it forgotten.
//!
//! Owns the committer thread, the commit call to Kafka and the ledger. Does not decide what is
//! safe to commit (`worker::offsets`) or when (`worker::consumer`, `worker::pipeline`). Generic
//! over the consumer's context (the worker's is `worker::consumer::ConsumerCtx`, which holds a
//! [`Committer`]), so this file does not use the consumer's and the dependency points one way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::worker::shared::Shared;

/// What the committer knows of the commits so far. Pure.
#[derive(Debug, Default)]
pub(crate) struct CommitLedger {
    /// A commit failed since the last full periodic commit was asked for.
    failed: bool,
    /// The highest position committed per partition.
    committed: HashMap<i32, i64>,
}

impl CommitLedger {
    /// The positions that move their partition forward; one at or below what was committed
    /// already (a stale order) is left out.
    pub fn forward(&self, positions: &[(i32, i64)]) -> Vec<(i32, i64)> {
        positions
            .iter()
            .filter(|(p, o)| self.committed.get(p).is_none_or(|c| o > c))
            .copied()
            .collect()
    }

    /// Notes how a commit of `positions` ended. A failure is kept until
    /// [`take_failed`](Self::take_failed); a success never clears it (it may cover other
    /// partitions than the failed one).
    pub fn record(&mut self, positions: &[(i32, i64)], ok: bool) {
        if !ok {
            self.failed = true;
            return;
        }
        for &(partition, position) in positions {
            let committed = self.committed.entry(partition).or_insert(position);
            *committed = (*committed).max(position);
        }
    }

    /// Whether a commit failed since the last call: the next commit must cover every partition.
    pub fn take_failed(&mut self) -> bool {
        std::mem::take(&mut self.failed)
    }

    /// What `asked` comes to once committed: each partition at the higher of the position
    /// asked and the one committed before.
    pub fn committed_of(&self, asked: &[(i32, i64)]) -> Vec<(i32, i64)> {
        asked
            .iter()
            .map(|&(p, o)| (p, self.committed.get(&p).map_or(o, |c| o.max(*c))))
            .collect()
    }
}

/// Positions per partition, in Kafka's "next offset to consume" convention.
type Positions = Vec<(i32, i64)>;

/// One commit for the committer thread; `reply` gets the positions committed (`None` when the
/// commit failed).
struct CommitOrder<C: ConsumerContext> {
    consumer: Arc<BaseConsumer<C>>,
    positions: Vec<(i32, i64)>,
    reply: Option<crossbeam_channel::Sender<Option<Positions>>>,
}

/// Commits on a thread of its own, one commit at a time in the order asked, so that a group
/// coordinator that is away blocks that thread (for librdkafka's request timeouts), never the
/// consumer thread. Clones share the thread and the ledger.
pub(crate) struct Committer<C: ConsumerContext> {
    orders: crossbeam_channel::Sender<CommitOrder<C>>,
    ledger: Arc<Mutex<CommitLedger>>,
}

impl<C: ConsumerContext> Clone for Committer<C> {
    fn clone(&self) -> Self {
        Committer {
            orders: self.orders.clone(),
            ledger: self.ledger.clone(),
        }
    }
}

impl<C: ConsumerContext + 'static> Committer<C> {
    pub fn start(shared: Arc<Shared>) -> Committer<C> {
        let (orders, rx) = crossbeam_channel::bounded::<CommitOrder<C>>(1);
        let ledger = Arc::new(Mutex::new(CommitLedger::default()));
        let thread_ledger = ledger.clone();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                // Ends when every Committer (every sender of orders) is gone.
                for order in rx {
                    let committed =
                        commit_forward(&shared, &thread_ledger, &order.consumer, &order.positions);
                    if let Some(reply) = order.reply {
                        let _ = reply.send(committed);
                    }
                }
            })
            .expect("spawn committer");
        Committer { orders, ledger }
    }

    /// Commits `positions` on the calling thread (see [`commit_forward`]), for a consumer that
    /// is being closed and cannot be handed to the committer thread.
    pub fn commit_now(
        &self,
        shared: &Shared,
        consumer: &BaseConsumer<C>,
        positions: &[(i32, i64)],
    ) -> Option<Vec<(i32, i64)>> {
        commit_forward(shared, &self.ledger, consumer, positions)
    }

    /// Hands the partitions whose watermark moved (or, after a failed commit, every partition)
    /// to the committer, unless a commit is still waiting to run.
    pub fn commit_due(&self, shared: &Shared, consumer: &Arc<BaseConsumer<C>>) {
        if self.orders.is_full() {
            return;
        }
        let positions = if self.ledger.lock().take_failed() {
            shared.tracker.lock().positions()
        } else {
            shared.tracker.lock().commits_due()
        };
        if positions.is_empty() {
            return;
        }
        let order = CommitOrder {
            consumer: consumer.clone(),
            positions,
            reply: None,
        };
        if self.orders.try_send(order).is_err() {
            self.ledger.lock().record(&[], false);
        }
    }

    /// Commits `positions` after every commit asked for before, waiting until `deadline`: the
    /// positions committed, none when the commit failed or did not finish in time.
    pub fn commit_by(
        &self,
        consumer: &Arc<BaseConsumer<C>>,
        positions: Vec<(i32, i64)>,
        deadline: Instant,
    ) -> Option<Vec<(i32, i64)>> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let order = CommitOrder {
            consumer: consumer.clone(),
            positions,
            reply: Some(reply),
        };
        self.orders.send_deadline(order, deadline).ok()?;
        answer.recv_deadline(deadline).ok().flatten()
    }
}

/// Commits `positions`, trimmed to those that move their partition forward, and notes the
/// result in `ledger`: the positions committed, `None` when the commit failed.
fn commit_forward<C: ConsumerContext>(
    shared: &Shared,
    ledger: &Mutex<CommitLedger>,
    consumer: &BaseConsumer<C>,
    positions: &[(i32, i64)],
) -> Option<Vec<(i32, i64)>> {
    let forward = ledger.lock().forward(positions);
    let ok = commit(shared, consumer, &forward);
    let mut ledger = ledger.lock();
    ledger.record(&forward, ok);
    ok.then(|| ledger.committed_of(positions))
}

/// Commits `positions` synchronously (one round trip to the group coordinator, bounded by
/// librdkafka's request timeouts), so success is known here and only confirmed positions
/// reach the metrics.
fn commit<C: ConsumerContext>(
    shared: &Shared,
    consumer: &BaseConsumer<C>,
    positions: &[(i32, i64)],
) -> bool {
    if positions.is_empty() {
        return true;
    }
    let topic = &shared.config.requests_topic;
    let mut tpl = TopicPartitionList::new();
    for &(partition, position) in positions {
        tpl.add_partition_offset(topic, partition, Offset::Offset(position))
            .expect("valid offset");
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            for &(partition, position) in positions {
                shared.metrics.set_committed(partition, position);
            }
            log::debug!("committed {positions:?}");
            true
        }
        Err(e) => {
            shared.warnings.warn("commit", || {
                format!("commit {positions:?}: {e}; the next commit retries them")
            });
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_order_never_moves_a_partition_back() {
        let mut ledger = CommitLedger::default();
        // A revoke committed partition 0 at 120 ...
        ledger.record(&[(0, 120)], true);
        // ... then a periodic order asked for before it (0 at 100) comes to be run.
        let stale = [(0, 100), (1, 7)];
        assert_eq!(
            ledger.forward(&stale),
            vec![(1, 7)],
            "only what moves forward"
        );
        assert_eq!(ledger.forward(&[(0, 120)]), vec![], "nothing new");
        assert_eq!(ledger.forward(&[(0, 121)]), vec![(0, 121)]);
        ledger.record(&[(1, 7)], true);
        assert_eq!(ledger.committed_of(&stale), vec![(0, 120), (1, 7)]);
    }

    #[test]
    fn a_failed_commit_is_kept_until_taken_whatever_succeeds_after_it() {
        let mut ledger = CommitLedger::default();
        ledger.record(&[(0, 10)], false);
        // A later commit of other partitions (a revoke's, the final one) succeeds.
        ledger.record(&[(1, 5)], true);
        assert!(
            ledger.take_failed(),
            "the next periodic commit covers every partition"
        );
        assert!(!ledger.take_failed(), "taken once");
        assert_eq!(
            ledger.forward(&[(0, 10)]),
            vec![(0, 10)],
            "0 at 10 never went"
        );
    }
}
