//! The delay queue of jobs waiting to be tried again: after a transient transfer error (Redis
//! down, a lock held too long) or a failed result delivery.
//!
//! Owns when each waiting job is due and how long the oldest has been retrying. A waiting job
//! holds no thread: the pipeline's retry timer moves due jobs back to the pool. Does not decide
//! delays (the caller computes them with [`crate::engine::backoff::Backoff`]), run jobs, or lock
//! itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::Instant;

/// One waiting job, ordered by due time, then by arrival.
#[derive(Debug)]
struct Waiting<J> {
    due: Instant,
    seq: u64,
    partition: i32,
    /// When this job first failed, for the age of the oldest retry.
    retrying_since: Instant,
    size: usize,
    job: J,
}

impl<J> PartialEq for Waiting<J> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<J> Eq for Waiting<J> {}
impl<J> PartialOrd for Waiting<J> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<J> Ord for Waiting<J> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Jobs waiting for their next try, earliest due first.
#[derive(Debug)]
pub struct RetryQueue<J> {
    heap: BinaryHeap<Reverse<Waiting<J>>>,
    seq: u64,
    bytes: usize,
}

impl<J> Default for RetryQueue<J> {
    fn default() -> Self {
        RetryQueue {
            heap: BinaryHeap::new(),
            seq: 0,
            bytes: 0,
        }
    }
}

impl<J> RetryQueue<J> {
    /// Queues `job` (of `partition`, failing since `retrying_since`, holding `size` bytes)
    /// until `due`.
    pub fn push(
        &mut self,
        due: Instant,
        partition: i32,
        retrying_since: Instant,
        size: usize,
        job: J,
    ) {
        self.seq += 1;
        self.bytes += size;
        self.heap.push(Reverse(Waiting {
            due,
            seq: self.seq,
            partition,
            retrying_since,
            size,
            job,
        }));
    }

    /// Bytes of the waiting jobs.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes every job due at `now`, earliest first, with the time it has been retrying since.
    pub fn pop_due(&mut self, now: Instant) -> Vec<(J, Instant)> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|w| w.0.due <= now) {
            let w = self.heap.pop().expect("peeked").0;
            self.bytes -= w.size;
            due.push((w.job, w.retrying_since));
        }
        due
    }

    /// When the earliest job is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|w| w.0.due)
    }

    /// Since when the longest-retrying waiting job has been failing.
    pub fn oldest_since(&self) -> Option<Instant> {
        self.heap.iter().map(|w| w.0.retrying_since).min()
    }

    /// Removes and returns the jobs of revoked `partitions`: their retries stop.
    pub fn drop_partitions(&mut self, partitions: &HashSet<i32>) -> Vec<J> {
        let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_iter()
            .partition(|w| partitions.contains(&w.0.partition));
        self.heap = kept.into_iter().collect();
        self.bytes = self.heap.iter().map(|w| w.0.size).sum();
        dropped.into_iter().map(|w| w.0.job).collect()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Removes and returns every waiting job (at shutdown).
    pub fn drain(&mut self) -> Vec<J> {
        self.bytes = 0;
        std::mem::take(&mut self.heap)
            .into_iter()
            .map(|w| w.0.job)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jobs_come_out_when_due_earliest_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = RetryQueue::default();
        q.push(t0 + ms(30), 0, t0, 7, "c");
        q.push(t0 + ms(10), 1, t0 + ms(5), 7, "a");
        q.push(t0 + ms(20), 0, t0, 7, "b");
        assert_eq!(q.next_due(), Some(t0 + ms(10)));
        assert!(q.pop_due(t0).is_empty(), "nothing is due yet");
        let due: Vec<&str> = q.pop_due(t0 + ms(20)).into_iter().map(|(j, _)| j).collect();
        assert_eq!(due, ["a", "b"]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.bytes(), 7);
        assert_eq!(q.oldest_since(), Some(t0));
    }

    #[test]
    fn jobs_due_at_the_same_time_come_out_in_the_order_they_were_queued() {
        let t0 = Instant::now();
        let mut q = RetryQueue::default();
        assert!(q.is_empty());
        for job in ["a", "b", "c", "d", "e"] {
            q.push(t0, 0, t0, 1, job);
        }
        assert!(!q.is_empty());
        let due: Vec<&str> = q.pop_due(t0).into_iter().map(|(j, _)| j).collect();
        assert_eq!(due, ["a", "b", "c", "d", "e"]);
        assert!(q.is_empty());
    }

    #[test]
    fn draining_at_shutdown_returns_every_waiting_job() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let mut q = RetryQueue::default();
        q.push(later, 0, t0, 3, "x");
        q.push(later, 1, t0, 4, "y");
        let mut drained = q.drain();
        drained.sort();
        assert_eq!(drained, ["x", "y"], "none is lost, none is due yet");
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_revoked_partition_stops_retrying() {
        let t0 = Instant::now();
        let mut q = RetryQueue::default();
        q.push(t0, 0, t0, 7, 1);
        q.push(t0, 1, t0, 7, 2);
        q.push(t0, 0, t0, 7, 3);
        let mut dropped = q.drop_partitions(&HashSet::from([0]));
        dropped.sort();
        assert_eq!(dropped, [1, 3]);
        assert_eq!(
            q.pop_due(t0)
                .into_iter()
                .map(|(j, _)| j)
                .collect::<Vec<_>>(),
            [2]
        );
        assert!(q.is_empty());
        assert_eq!(q.oldest_since(), None);
    }
}
