//! Which Kafka offsets are in flight, per partition, and the position that is safe to commit.
//!
//! The consumer hands offsets out in order (`start`); pool threads finish them in any order
//! (`finish`). The commit position of a partition is the contiguous watermark (ARCHITECTURE.md,
//! "Offsets"), in Kafka's "next offset to consume" convention: 1 + the highest offset `o` such that every
//! started offset `<= o` is finished. Equivalently, it is the lowest unfinished offset, or 1 + the
//! highest started offset when nothing is in flight:
//!
//! ```text
//! started   10  11  12  13      17  18        (14..=16: gap, e.g. transaction markers)
//! finished   x       x   x       x
//! position          ^ 11: offset 11 is unfinished, so 12, 13 and 17 wait behind it
//! ```
//!
//! Gaps between started offsets never block the position: only offsets that were started count.
//! The position never passes an unfinished offset, never moves backwards, and memory is bounded
//! by the number of offsets in flight (one set of unfinished offsets per partition, no history).
//!
//! Owns the per-partition in-flight sets and which positions were already reported for commit.
//! Does not talk to Kafka, commit, know topic names (one tracker per subscribed topic), or lock:
//! it is pure and single-threaded. The pipeline keeps it behind one mutex, shared by the
//! consumer thread (`start`, positions, `forget` on revoke) and the producer's delivery callback
//! (`finish`, once a result or dead letter, and any ledger entries, are acknowledged).
//!
//! An offset at or below the highest one started on its partition is a redelivery, not a new
//! start: a fetch that went back (a seek, an offset reset, a broker serving an earlier batch)
//! hands the consumer messages it has already started. Each of them is in flight (it will
//! finish), finished, or below where this partition's tracking began (committed before), so
//! [`OffsetTracker::start`] changes nothing and answers [`Start::Redelivery`]: the caller skips
//! it. Finishing an offset that is not in flight returns an [`OffsetError`] in
//! every build and changes nothing: after a lost partition (session timeout) the worker forgets
//! it while jobs still run, so late completions are expected, and the caller decides whether a
//! given error is benign (see [`OffsetError::UnknownPartition`]) or worth a loud log.

use std::collections::{BTreeMap, BTreeSet};

/// Offsets in flight over all partitions at once. A sanity bound, far above what the worker's
/// bounded channel and pool allow: passing it means backpressure is broken, and the tracker
/// refuses to grow without limit.
pub const IN_FLIGHT_LIMIT: usize = 1 << 20;

/// A finished offset that the tracker did not hand out. Nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetError {
    /// The partition is not tracked: never started, or forgotten on revoke. Expected for jobs
    /// that complete after their partition was lost; their commit belongs to the new owner.
    #[error(
        "partition {partition} is not tracked (never started, or forgotten on revoke); finished offset {offset} ignored"
    )]
    UnknownPartition {
        /// The partition.
        partition: i32,
        /// The offset finished.
        offset: i64,
    },
    /// The partition is tracked but the offset is not in flight: never started (a gap), or
    /// finished twice. A bug in the caller.
    #[error(
        "offset {offset} on partition {partition} is not in flight (never started, or finished twice); ignored"
    )]
    NotInFlight {
        /// The partition.
        partition: i32,
        /// The offset finished.
        offset: i64,
    },
}

/// What [`OffsetTracker::start`] made of an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a redelivery must not be run as a new job"]
pub enum Start {
    /// The offset is now in flight.
    Started,
    /// The offset is not above `started_max`, the highest one started on its partition: the
    /// message was started before (in flight or finished) or lies below where the tracking
    /// began. Nothing changed; skip it.
    Redelivery {
        /// The highest offset started on the partition.
        started_max: i64,
    },
}

/// One partition's bookkeeping.
#[derive(Debug)]
struct PartitionOffsets {
    /// Started and not yet finished. Its size is the partition's in-flight count.
    unfinished: BTreeSet<i64>,
    /// The highest offset started; every later start must be above it.
    started_max: i64,
    /// The position last returned by `commits_due`; at first, the first offset started (the
    /// consumer was already there, so committing it would say nothing new).
    reported: i64,
}

impl PartitionOffsets {
    fn position(&self) -> i64 {
        let position = match self.unfinished.first() {
            Some(&lowest) => lowest,
            None => self.started_max + 1,
        };
        debug_assert!(position <= self.started_max + 1);
        debug_assert!(position >= self.reported);
        position
    }
}

/// Per-partition in-flight offsets and commit positions. See the module documentation.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, PartitionOffsets>,
    /// Sum of the partitions' in-flight counts, kept so `in_flight_total` is O(1).
    in_flight_total: usize,
}

impl OffsetTracker {
    /// A tracker with no partitions.
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// Records that `offset` on `partition` was handed to a pool thread, unless it is not above
    /// every offset started before on this partition (since the last
    /// [`forget`](Self::forget)): then it is a redelivery and nothing changes.
    ///
    /// # Panics
    ///
    /// If `offset` is negative or `i64::MAX`, or if more than [`IN_FLIGHT_LIMIT`] offsets would
    /// be in flight.
    pub fn start(&mut self, partition: i32, offset: i64) -> Start {
        assert!(
            (0..i64::MAX).contains(&offset),
            "offset {offset} on partition {partition} is outside 0..i64::MAX"
        );
        assert!(
            self.in_flight_total < IN_FLIGHT_LIMIT,
            "{IN_FLIGHT_LIMIT} offsets in flight already: the consumer is not applying backpressure"
        );
        match self.partitions.get_mut(&partition) {
            Some(state) => {
                if offset <= state.started_max {
                    return Start::Redelivery {
                        started_max: state.started_max,
                    };
                }
                state.started_max = offset;
                let inserted = state.unfinished.insert(offset);
                assert!(inserted);
            }
            None => {
                self.partitions.insert(
                    partition,
                    PartitionOffsets {
                        unfinished: BTreeSet::from([offset]),
                        started_max: offset,
                        reported: offset,
                    },
                );
            }
        }
        self.in_flight_total += 1;
        Start::Started
    }

    /// Records that the job for `offset` on `partition` is done (its result published, or the
    /// input dead-lettered). On error nothing changes.
    pub fn finish(&mut self, partition: i32, offset: i64) -> Result<(), OffsetError> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Err(OffsetError::UnknownPartition { partition, offset });
        };
        if !state.unfinished.remove(&offset) {
            return Err(OffsetError::NotInFlight { partition, offset });
        }
        assert!(self.in_flight_total > 0);
        self.in_flight_total -= 1;
        Ok(())
    }

    /// The offset to commit for `partition` (Kafka's "next offset to consume"): every started
    /// offset below it is finished, and it is never above an unfinished offset. `None` when the
    /// partition is not tracked.
    pub fn commit_position(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .map(PartitionOffsets::position)
    }

    /// The positions that advanced since the previous call (or, for a partition, since its first
    /// start), sorted by partition, and marks them reported. Commit these periodically.
    ///
    /// A position is reported once. If committing it fails, it is re-reported only when it
    /// advances again; commit [`positions`](Self::positions) to catch up (a commit that lags
    /// only means redelivery, which idempotency absorbs).
    pub fn commits_due(&mut self) -> Vec<(i32, i64)> {
        let mut due = Vec::new();
        for (&partition, state) in &mut self.partitions {
            let position = state.position();
            if position > state.reported {
                state.reported = position;
                due.push((partition, position));
            }
        }
        due
    }

    /// The position of every tracked partition, sorted by partition, whether or not it moved.
    /// For the final commit on shutdown.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|(&partition, state)| (partition, state.position()))
            .collect()
    }

    /// Drops everything known about `partition` (on revoke or loss, after its last commit) and
    /// returns how many offsets were still in flight. Later `finish` calls for it return
    /// [`OffsetError::UnknownPartition`]; a later `start` begins afresh at any offset.
    pub fn forget(&mut self, partition: i32) -> usize {
        let Some(state) = self.partitions.remove(&partition) else {
            return 0;
        };
        let dropped = state.unfinished.len();
        assert!(self.in_flight_total >= dropped);
        self.in_flight_total -= dropped;
        dropped
    }

    /// Offsets started and not finished on `partition`.
    pub fn in_flight(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |state| state.unfinished.len())
    }

    /// Offsets started and not finished, over all partitions.
    pub fn in_flight_total(&self) -> usize {
        debug_assert_eq!(
            self.in_flight_total,
            self.partitions
                .values()
                .map(|state| state.unfinished.len())
                .sum::<usize>()
        );
        self.in_flight_total
    }

    /// True when nothing is in flight on `partition` (also when it is not tracked).
    pub fn is_idle(&self, partition: i32) -> bool {
        self.in_flight(partition) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Starts an offset that must be new.
    fn start(tracker: &mut OffsetTracker, partition: i32, offset: i64) {
        assert_eq!(tracker.start(partition, offset), Start::Started);
    }

    #[test]
    fn untracked_partition_has_no_position_and_is_idle() {
        let mut tracker = OffsetTracker::new();
        assert_eq!(tracker.commit_position(0), None);
        assert!(tracker.is_idle(0));
        assert_eq!(tracker.in_flight(0), 0);
        assert_eq!(tracker.in_flight_total(), 0);
        assert!(tracker.commits_due().is_empty());
        assert!(tracker.positions().is_empty());
        assert_eq!(tracker.forget(0), 0);
    }

    #[test]
    fn first_start_sets_the_position_without_making_a_commit_due() {
        let mut tracker = OffsetTracker::new();
        start(&mut tracker, 3, 40);
        assert_eq!(tracker.commit_position(3), Some(40));
        assert!(!tracker.is_idle(3));
        assert!(tracker.commits_due().is_empty());
        assert_eq!(tracker.positions(), vec![(3, 40)]);
    }

    #[test]
    fn position_is_the_next_offset_to_consume() {
        let mut tracker = OffsetTracker::new();
        for offset in 0..3 {
            start(&mut tracker, 0, offset);
        }
        tracker.finish(0, 0).unwrap();
        assert_eq!(tracker.commit_position(0), Some(1));
        tracker.finish(0, 2).unwrap();
        assert_eq!(tracker.commit_position(0), Some(1), "offset 1 still runs");
        tracker.finish(0, 1).unwrap();
        assert_eq!(
            tracker.commit_position(0),
            Some(3),
            "last finished is 2, so commit 3"
        );
        assert!(tracker.is_idle(0));
    }

    #[test]
    fn an_unfinished_offset_holds_back_later_finished_ones() {
        let mut tracker = OffsetTracker::new();
        for offset in 10..=13 {
            start(&mut tracker, 0, offset);
        }
        for offset in [13, 12, 11] {
            tracker.finish(0, offset).unwrap();
            assert_eq!(tracker.commit_position(0), Some(10));
        }
        assert_eq!(tracker.in_flight(0), 1);
        tracker.finish(0, 10).unwrap();
        assert_eq!(tracker.commit_position(0), Some(14));
    }

    #[test]
    fn gaps_between_started_offsets_do_not_block() {
        let mut tracker = OffsetTracker::new();
        start(&mut tracker, 0, 5);
        start(&mut tracker, 0, 9);
        tracker.finish(0, 5).unwrap();
        assert_eq!(
            tracker.commit_position(0),
            Some(9),
            "6..=8 were never started"
        );
        tracker.finish(0, 9).unwrap();
        assert_eq!(tracker.commit_position(0), Some(10));
        // Nothing in flight: a new start past a gap moves the position to it.
        start(&mut tracker, 0, 20);
        assert_eq!(tracker.commit_position(0), Some(20));
    }

    #[test]
    fn commits_due_reports_each_advance_once_sorted_by_partition() {
        let mut tracker = OffsetTracker::new();
        start(&mut tracker, 2, 100);
        start(&mut tracker, 1, 7);
        start(&mut tracker, 1, 8);
        start(&mut tracker, 0, 0);
        assert!(tracker.commits_due().is_empty());

        tracker.finish(2, 100).unwrap();
        tracker.finish(1, 7).unwrap();
        assert_eq!(tracker.commits_due(), vec![(1, 8), (2, 101)]);
        assert!(tracker.commits_due().is_empty(), "nothing moved since");

        tracker.finish(0, 0).unwrap();
        tracker.finish(1, 8).unwrap();
        assert_eq!(tracker.commits_due(), vec![(0, 1), (1, 9)]);
        assert!(tracker.commits_due().is_empty());
        assert_eq!(tracker.positions(), vec![(0, 1), (1, 9), (2, 101)]);
    }

    #[test]
    fn finishing_what_was_not_started_is_an_error_and_changes_nothing() {
        let mut tracker = OffsetTracker::new();
        assert_eq!(
            tracker.finish(4, 1),
            Err(OffsetError::UnknownPartition {
                partition: 4,
                offset: 1
            })
        );
        start(&mut tracker, 0, 5);
        start(&mut tracker, 0, 9);
        for offset in [4, 7, 10] {
            assert_eq!(
                tracker.finish(0, offset),
                Err(OffsetError::NotInFlight {
                    partition: 0,
                    offset
                })
            );
        }
        tracker.finish(0, 5).unwrap();
        assert_eq!(
            tracker.finish(0, 5),
            Err(OffsetError::NotInFlight {
                partition: 0,
                offset: 5
            }),
            "finished twice"
        );
        assert_eq!(tracker.in_flight(0), 1);
        assert_eq!(tracker.in_flight_total(), 1);
        assert_eq!(tracker.commit_position(0), Some(9));
    }

    #[test]
    fn a_fetch_that_goes_back_is_a_redelivery_and_changes_nothing() {
        let mut tracker = OffsetTracker::new();
        for offset in 10..=14 {
            assert_eq!(tracker.start(0, offset), Start::Started);
        }
        tracker.finish(0, 10).unwrap();
        tracker.finish(0, 12).unwrap();
        let redelivery = Start::Redelivery { started_max: 14 };
        // Below the first start (committed before), finished, in flight, the latest: all again.
        for offset in [3, 9, 10, 11, 12, 14] {
            assert_eq!(tracker.start(0, offset), redelivery, "offset {offset}");
        }
        assert_eq!(tracker.in_flight(0), 3, "11, 13 and 14 still run");
        assert_eq!(tracker.commit_position(0), Some(11));
        assert_eq!(
            tracker.start(0, 15),
            Start::Started,
            "then on past the old end"
        );
        for offset in [11, 13, 14, 15] {
            tracker.finish(0, offset).unwrap();
        }
        assert_eq!(tracker.commit_position(0), Some(16));
        assert_eq!(tracker.in_flight_total(), 0);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn starting_a_negative_offset_panics() {
        let _ = OffsetTracker::new().start(0, -1);
    }

    #[test]
    fn forget_drops_the_partition_and_allows_a_fresh_start() {
        let mut tracker = OffsetTracker::new();
        start(&mut tracker, 0, 10);
        start(&mut tracker, 0, 11);
        for offset in 3..6 {
            start(&mut tracker, 1, offset);
        }
        assert_eq!(tracker.in_flight_total(), 5);

        assert_eq!(tracker.forget(0), 2);
        assert_eq!(tracker.commit_position(0), None);
        // 5 - 2, which no other arithmetic on these counts gives (5 / 2 = 2, 5 + 2, 5 * 2).
        assert_eq!(tracker.in_flight_total(), 3);
        assert!(matches!(
            tracker.finish(0, 10),
            Err(OffsetError::UnknownPartition { .. })
        ));

        // Reassigned: the consumer resumes from the last commit, below what was started before.
        start(&mut tracker, 0, 8);
        assert_eq!(tracker.commit_position(0), Some(8));
        assert!(tracker.commits_due().is_empty());
        assert_eq!(
            tracker.commit_position(1),
            Some(3),
            "other partitions untouched"
        );
    }

    #[test]
    fn memory_follows_the_in_flight_count_not_the_history() {
        let mut tracker = OffsetTracker::new();
        const WINDOW: i64 = 16;
        for offset in 0..100_000 {
            start(&mut tracker, 0, offset);
            if offset >= WINDOW {
                // Finish out of order inside the window: the oldest but one, then the oldest.
                let oldest = offset - WINDOW;
                if oldest % 2 == 0 {
                    tracker.finish(0, oldest + 1).unwrap();
                    tracker.finish(0, oldest).unwrap();
                }
            }
            assert!(tracker.in_flight(0) <= WINDOW as usize + 1);
            assert_eq!(
                tracker.partitions[&0].unfinished.len(),
                tracker.in_flight(0)
            );
        }
    }

    /// Increasing offsets with gaps, an order to finish them in, and how far the consumer runs
    /// ahead of the finishes at each step.
    fn scenario() -> impl Strategy<Value = (Vec<i64>, Vec<usize>, Vec<usize>)> {
        (0i64..1_000, prop::collection::vec(0i64..4, 1..64))
            .prop_map(|(base, gaps)| {
                let mut offset = base;
                let mut offsets = Vec::with_capacity(gaps.len());
                for gap in gaps {
                    offsets.push(offset);
                    offset += 1 + gap;
                }
                offsets
            })
            .prop_flat_map(|offsets| {
                let count = offsets.len();
                let order = Just((0..count).collect::<Vec<usize>>()).prop_shuffle();
                let lookahead = prop::collection::vec(0usize..8, count);
                (Just(offsets), order, lookahead)
            })
    }

    /// What the position must be, computed from scratch.
    fn model_position(offsets: &[i64], started_count: usize, finished: &[bool]) -> i64 {
        (0..started_count)
            .find(|&index| !finished[index])
            .map_or(offsets[started_count - 1] + 1, |index| offsets[index])
    }

    proptest! {
        #[test]
        fn position_never_passes_unfinished_work((offsets, order, lookahead) in scenario()) {
            const PARTITION: i32 = 7;
            const BYSTANDER: i32 = 8;
            let mut tracker = OffsetTracker::new();
            // Another partition with one offset that never finishes: must stay unaffected.
            start(&mut tracker, BYSTANDER, 0);

            let count = offsets.len();
            let mut started_count = 0;
            let mut finished = vec![false; count];
            let mut position_previous = offsets[0];
            let mut reported = offsets[0];

            let mut check = |tracker: &mut OffsetTracker, started_count: usize, finished: &[bool]| {
                let position = tracker.commit_position(PARTITION).unwrap();
                let unfinished_lowest = (0..started_count)
                    .filter(|&index| !finished[index])
                    .map(|index| offsets[index])
                    .min();
                if let Some(lowest) = unfinished_lowest {
                    prop_assert!(position <= lowest, "position {} passed unfinished {}", position, lowest);
                }
                prop_assert!(position >= position_previous, "position went back");
                prop_assert_eq!(position, model_position(&offsets, started_count, finished));
                position_previous = position;

                let in_flight = (0..started_count).filter(|&index| !finished[index]).count();
                prop_assert_eq!(tracker.in_flight(PARTITION), in_flight);
                prop_assert_eq!(tracker.in_flight_total(), in_flight + 1);

                let due = tracker.commits_due();
                if position > reported {
                    prop_assert_eq!(due, vec![(PARTITION, position)]);
                    reported = position;
                } else {
                    prop_assert!(due.is_empty());
                }
                prop_assert_eq!(tracker.commit_position(BYSTANDER), Some(0));
                Ok(())
            };

            for (step, &index) in order.iter().enumerate() {
                // The consumer runs ahead: start everything up to the offset about to finish,
                // and maybe some more.
                let start_until = (index + 1).max(started_count + lookahead[step]).min(count);
                while started_count < start_until {
                    start(&mut tracker, PARTITION, offsets[started_count]);
                    started_count += 1;
                    check(&mut tracker, started_count, &finished)?;
                }
                tracker.finish(PARTITION, offsets[index]).unwrap();
                finished[index] = true;
                check(&mut tracker, started_count, &finished)?;
            }

            prop_assert_eq!(tracker.commit_position(PARTITION), Some(offsets[count - 1] + 1));
            prop_assert!(tracker.is_idle(PARTITION));
            prop_assert_eq!(tracker.in_flight_total(), 1);
        }
    }
}
