//! [`Backoff`]: the one formula for every retry delay in the system (lock retries, transient
//! transfer retries, result publishing): `first_ms * 2^attempt`, capped at `max_ms`, plus
//! optional random jitter of up to `jitter_ms`.
//!
//! Owns the arithmetic (pure, overflow-free) and the jitter draw. Does not sleep and does not
//! count attempts; callers own their loops and their limits.

use rand::RngExt;

/// Doubling delays with a cap and optional jitter. Attempts are 0-based: attempt 0 waits
/// `first_ms` (plus jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, in milliseconds.
    pub first_ms: u64,
    /// Cap on one delay before jitter, in milliseconds.
    pub max_ms: u64,
    /// Random extra of 0..=jitter_ms added to every delay, so that retries that collided once
    /// do not collide again; 0 for none.
    pub jitter_ms: u64,
}

/// Doubling stops mattering long before this many attempts; it keeps the shift in range.
const DOUBLINGS_LIMIT: u32 = 32;

impl Backoff {
    /// The delay before retry `attempt` without jitter: `first_ms * 2^attempt`, capped.
    pub fn base_delay_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.min(DOUBLINGS_LIMIT);
        self.first_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The delay before retry `attempt`, jitter included.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let jitter = if self.jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=self.jitter_ms)
        };
        self.base_delay_ms(attempt).saturating_add(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays_double_from_the_first_and_stop_at_the_cap() {
        let b = Backoff {
            first_ms: 100,
            max_ms: 2_000,
            jitter_ms: 0,
        };
        let delays: Vec<u64> = (0..7).map(|a| b.base_delay_ms(a)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_600, 2_000, 2_000]);
        assert_eq!(b.delay_ms(3), 800);
    }

    proptest! {
        #[test]
        fn a_delay_never_exceeds_the_cap_plus_jitter(
            first in 0u64..10_000, max in 0u64..100_000, jitter in 0u64..1_000, attempt in any::<u32>()
        ) {
            let b = Backoff { first_ms: first, max_ms: max, jitter_ms: jitter };
            let d = b.delay_ms(attempt);
            prop_assert!(d <= max + jitter);
            prop_assert!(d >= b.base_delay_ms(attempt));
            prop_assert!(b.base_delay_ms(attempt) <= b.base_delay_ms(attempt.saturating_add(1)));
        }
    }
}
