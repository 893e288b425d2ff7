//! Rate-limited warnings: a warning of one kind is logged at most once per interval; repeats in
//! between are counted and the count rides on the next line that is logged ("... (and 312 more
//! like this in the last 10 s)"). An outage then costs a few log lines, not one per message.
//!
//! Owns the per-kind clocks and counts. Does not decide what is worth a warning; callers name
//! the kind (a short constant such as `delivery_failed`) and build the text only when it is
//! logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Kinds of warning remembered at most; callers use a small fixed set of constant names.
const KINDS_LIMIT: usize = 64;

/// Per kind: when it was last logged and how many repeats were held back since.
#[derive(Debug)]
pub struct Warnings {
    interval: Duration,
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Warnings {
    pub fn new(interval_ms: u64) -> Warnings {
        Warnings {
            interval: Duration::from_millis(interval_ms),
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Logs `text()` at warn level unless a warning of `kind` was logged less than the interval
    /// ago, in which case it is only counted.
    pub fn warn(&self, kind: &'static str, text: impl FnOnce() -> String) {
        if let Some(held_back) = self.admit(kind, Instant::now()) {
            let text = text();
            if held_back == 0 {
                log::warn!("{text}");
            } else {
                log::warn!(
                    "{text} (and {held_back} more like this in the last {} s)",
                    self.interval.as_secs()
                );
            }
        }
    }

    /// Whether a warning of `kind` at `now` is logged: `Some(repeats held back since the last
    /// one)`, or `None` when it is only counted. Pure apart from the state it keeps.
    fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        match kinds.get_mut(kind) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.interval => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                if kinds.len() < KINDS_LIMIT {
                    kinds.insert(kind, (now, 0));
                }
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_interval_are_counted_and_reported_with_the_next_line() {
        let w = Warnings::new(10_000);
        let t0 = Instant::now();
        assert_eq!(w.admit("a", t0), Some(0), "the first one is logged");
        for i in 1..=5 {
            assert_eq!(w.admit("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(w.admit("b", t0), Some(0), "another kind has its own clock");
        assert_eq!(
            w.admit("a", t0 + Duration::from_secs(11)),
            Some(5),
            "after the interval: logged, with the 5 held back"
        );
        assert_eq!(w.admit("a", t0 + Duration::from_secs(12)), None);
    }
}
