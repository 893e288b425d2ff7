//! Per-key order (the KEY ordering mode of Confluent's Parallel Consumer): jobs with the same
//! Kafka message key (the sender) in the same partition run one at a time, in offset order;
//! jobs of different keys run in parallel.
//!
//! Owns which keys have a job running and the jobs parked behind them. A parked job holds no
//! thread: it waits here until the job ahead of it finishes its transfer, then the thread that
//! finished takes it ([`KeyGate::release`]). Does not run jobs, know offsets' commit state, or
//! lock itself; the pipeline keeps it behind a mutex.
//!
//! A key is held from [`KeyGate::admit`] until [`KeyGate::release`]: through transient retries
//! too, so a later request of the same sender never overtakes an earlier one that is waiting
//! for Redis or a lock. Jobs without a key are never gated.

use std::collections::{HashMap, HashSet, VecDeque};

/// What the gate needs to know of a job.
pub trait Keyed {
    fn partition(&self) -> i32;
    fn key(&self) -> Option<&[u8]>;
    /// The assignment generation the job was consumed in (see [`KeyGate::drop_partitions`]).
    fn generation(&self) -> u64;
    /// Bytes it holds, for the bound on what the worker holds.
    fn size(&self) -> usize;
}

/// One busy key: the generation that holds it and the jobs waiting behind it.
#[derive(Debug)]
struct Busy<J> {
    generation: u64,
    waiting: VecDeque<J>,
}

/// Busy keys and their waiting jobs.
#[derive(Debug)]
pub struct KeyGate<J> {
    busy: HashMap<(i32, Vec<u8>), Busy<J>>,
    parked: usize,
    parked_bytes: usize,
}

impl<J> Default for KeyGate<J> {
    fn default() -> Self {
        KeyGate {
            busy: HashMap::new(),
            parked: 0,
            parked_bytes: 0,
        }
    }
}

impl<J: Keyed> KeyGate<J> {
    /// `Some(job)` when it may run now (its key was free and is now held by it); `None` when it
    /// was parked behind an earlier job of its key.
    pub fn admit(&mut self, job: J) -> Option<J> {
        let Some(key) = job.key() else {
            return Some(job);
        };
        let slot = (job.partition(), key.to_vec());
        match self.busy.get_mut(&slot) {
            Some(busy) => {
                debug_assert!(busy.generation <= job.generation());
                self.parked += 1;
                self.parked_bytes += job.size();
                busy.waiting.push_back(job);
                None
            }
            None => {
                let generation = job.generation();
                self.busy.insert(
                    slot,
                    Busy {
                        generation,
                        waiting: VecDeque::new(),
                    },
                );
                Some(job)
            }
        }
    }

    /// The running job `done` has finished its transfer: returns the next job of its key, which
    /// now holds the key, or `None` and the key is free. A job of a generation that no longer
    /// holds the key (its partition was revoked meanwhile) releases nothing.
    pub fn release(&mut self, done: &J) -> Option<J> {
        let key = done.key()?;
        let slot = (done.partition(), key.to_vec());
        let busy = self.busy.get_mut(&slot)?;
        if busy.generation != done.generation() {
            return None;
        }
        match busy.waiting.pop_front() {
            Some(next) => {
                self.parked -= 1;
                self.parked_bytes -= next.size();
                busy.generation = next.generation();
                Some(next)
            }
            None => {
                self.busy.remove(&slot);
                None
            }
        }
    }

    /// Forgets the revoked `partitions`: their busy keys are freed and their parked jobs are
    /// returned (they stay uncommitted for the partition's next owner).
    pub fn drop_partitions(&mut self, partitions: &HashSet<i32>) -> Vec<J> {
        let slots: Vec<(i32, Vec<u8>)> = self
            .busy
            .keys()
            .filter(|(p, _)| partitions.contains(p))
            .cloned()
            .collect();
        let mut dropped = Vec::new();
        for slot in slots {
            let busy = self.busy.remove(&slot).expect("slot listed above");
            self.parked -= busy.waiting.len();
            self.parked_bytes -= busy.waiting.iter().map(Keyed::size).sum::<usize>();
            dropped.extend(busy.waiting);
        }
        dropped
    }

    /// Jobs parked behind a busy key.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Bytes of the parked jobs.
    pub fn parked_bytes(&self) -> usize {
        self.parked_bytes
    }

    /// Keys with a job running (or retrying).
    #[cfg(test)]
    pub fn busy_keys(&self) -> usize {
        self.busy.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct J {
        partition: i32,
        key: Option<Vec<u8>>,
        offset: i64,
        generation: u64,
    }

    impl Keyed for J {
        fn partition(&self) -> i32 {
            self.partition
        }
        fn key(&self) -> Option<&[u8]> {
            self.key.as_deref()
        }
        fn generation(&self) -> u64 {
            self.generation
        }
        fn size(&self) -> usize {
            10
        }
    }

    fn j(partition: i32, key: &str, offset: i64) -> J {
        J {
            partition,
            key: Some(key.as_bytes().to_vec()),
            offset,
            generation: 0,
        }
    }

    #[test]
    fn a_later_job_of_a_key_waits_for_the_earlier_and_other_keys_do_not() {
        let mut gate = KeyGate::default();
        let a1 = gate.admit(j(0, "a", 1)).expect("a is free");
        assert_eq!(gate.admit(j(0, "a", 2)), None, "parked behind a1");
        assert_eq!(gate.admit(j(0, "a", 3)), None, "parked behind a2");
        assert!(gate.admit(j(0, "b", 4)).is_some(), "b is another key");
        assert!(
            gate.admit(j(1, "a", 5)).is_some(),
            "same key, other partition"
        );
        assert_eq!(gate.parked(), 2);
        assert_eq!(gate.parked_bytes(), 20);
        let a2 = gate.release(&a1).expect("a2 is next");
        assert_eq!(a2.offset, 2);
        assert_eq!(gate.parked_bytes(), 10, "a3 alone is parked");
        let a3 = gate.release(&a2).expect("a3 is next");
        assert_eq!(a3.offset, 3);
        assert_eq!(gate.release(&a3), None);
        assert_eq!(gate.parked(), 0);
        assert_eq!(gate.parked_bytes(), 0);
        assert!(gate.admit(j(0, "a", 6)).is_some(), "a is free again");
    }

    #[test]
    fn jobs_without_a_key_are_never_gated() {
        let mut gate = KeyGate::default();
        let unkeyed = J {
            key: None,
            ..j(0, "", 1)
        };
        assert!(gate.admit(unkeyed.clone()).is_some());
        assert!(gate.admit(unkeyed.clone()).is_some());
        assert_eq!(gate.release(&unkeyed), None);
        assert_eq!(gate.busy_keys(), 0);
    }

    #[test]
    fn revoking_a_partition_returns_its_parked_jobs_and_frees_its_keys() {
        let mut gate = KeyGate::default();
        let running = gate.admit(j(0, "a", 1)).unwrap();
        gate.admit(j(0, "a", 2));
        gate.admit(j(1, "a", 3)).unwrap();
        gate.admit(j(1, "a", 4));
        let dropped = gate.drop_partitions(&HashSet::from([0]));
        assert_eq!(dropped.iter().map(|d| d.offset).collect::<Vec<_>>(), [2]);
        assert_eq!(gate.parked(), 1);
        assert_eq!(
            gate.parked_bytes(),
            10,
            "the parked job of partition 1 is still held"
        );
        // The job that was running when its partition went away releases nothing, and a job
        // of the new assignment holds the key.
        let fresh = J {
            generation: 1,
            ..j(0, "a", 1)
        };
        assert!(gate.admit(fresh).is_some());
        assert_eq!(gate.release(&running), None);
        assert_eq!(gate.busy_keys(), 2);
    }

    proptest! {
        /// Whatever the interleaving of admissions and completions, each key's jobs run one at
        /// a time and in offset order, and every admitted job runs exactly once.
        #[test]
        fn each_key_runs_in_offset_order_one_at_a_time(
            keys in proptest::collection::vec(0u8..4, 1..60),
            picks in proptest::collection::vec(any::<proptest::sample::Index>(), 0..200),
        ) {
            let mut gate = KeyGate::default();
            let mut running: Vec<J> = Vec::new();
            let mut ran: Vec<J> = Vec::new();
            let mut next_offset = 0;
            let mut picks = picks.into_iter();
            loop {
                let admit = next_offset < keys.len() as i64
                    && (running.is_empty() || picks.len() % 2 == 0);
                if admit {
                    let key = keys[next_offset as usize].to_string();
                    if let Some(job) = gate.admit(j(0, &key, next_offset)) {
                        prop_assert!(running.iter().all(|r| r.key != job.key));
                        running.push(job);
                    }
                    next_offset += 1;
                } else if !running.is_empty() {
                    let i = picks.next().map_or(0, |p| p.index(running.len()));
                    let done = running.swap_remove(i);
                    if let Some(next) = gate.release(&done) {
                        prop_assert!(running.iter().all(|r| r.key != next.key));
                        running.push(next);
                    }
                    ran.push(done);
                } else {
                    break;
                }
                let _ = picks.next();
            }
            prop_assert_eq!(ran.len(), keys.len());
            prop_assert_eq!(gate.parked(), 0);
            for key in 0u8..4 {
                let order: Vec<i64> = ran
                    .iter()
                    .filter(|r| r.key.as_deref() == Some(key.to_string().as_bytes()))
                    .map(|r| r.offset)
                    .collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
            }
        }
    }
}
