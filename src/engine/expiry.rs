//! How old a request may be and still be applied (ARCHITECTURE.md, "Retention").
//!
//! An outcome record lives for the outcome ttl. A request delivered again after its record
//! expired would move the money a second time, and Kafka can deliver a request again long
//! after the ttl that consumer lag alone suggests: an offset reset to earliest, a new group id,
//! committed offsets that expired while the group was empty, retention raised while running, a
//! compacted topic, a producer clock ahead. So the rule is on the request's own age (the Kafka
//! message's timestamp), wherever it came from: a request whose age is at least the ttl less
//! the clock allowance and for which no outcome is recorded is not applied; it is answered
//! FAILED `expired`, nothing written (on a cluster it claims no key either). A recorded outcome
//! is still answered, since a record that exists says what happened. The check runs under the
//! wallets' locks, right after the record was read, so a record cannot expire between the two.
//! Proven safe by a property test here (a delivery that is applied always finds the first
//! one's record) and on every topology by `tests/it/expiry.rs`.
//!
//! Clocks: the age is the engine's clock less the request's time (the producer's clock, for a
//! Kafka message's create time). A producer clock behind makes requests look older (refused
//! sooner: safe). A producer clock ahead makes them look younger and keeps them in the topic
//! longer than its retention, so it could hide a redelivery past the ttl: the allowance
//! [`clock_allowance_ms`] (a minute, or a tenth of the ttl when that is less) is taken off the
//! ttl, and the worker dead-letters a message stamped further ahead than that
//! ([`Freshness::Ahead`]).
//!
//! Owns the rule, as pure functions. Does not own the ttl (`EngineConfig::outcome_ttl_ms`,
//! derived by the worker), reading records or answering (`transfer`, `cluster_transfer`), or
//! dead-lettering (the worker).

/// The most a producer's clock may be ahead of the engine's: one minute, or a tenth of the
/// ttl when that is less (short test ttls).
pub const CLOCK_ALLOWANCE_LIMIT_MS: u64 = 60_000;

/// How a request's time compares with the outcome ttl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Young enough: its outcome, if any, is still recorded.
    Fresh,
    /// As old as the ttl less the allowance, or older: its record may have expired.
    Expired {
        /// How old it is.
        age_ms: u64,
    },
    /// Stamped further in the future than the allowance: a producer clock that is wrong.
    Ahead {
        /// By how much.
        ahead_ms: u64,
    },
}

/// The clock allowance for `ttl_ms`: [`CLOCK_ALLOWANCE_LIMIT_MS`] or a tenth of the ttl,
/// whichever is less. Pure.
pub fn clock_allowance_ms(ttl_ms: u64) -> u64 {
    CLOCK_ALLOWANCE_LIMIT_MS.min(ttl_ms / 10)
}

/// The freshness of a request made at `requested_at_ms`, at `now_ms`, under an outcome ttl
/// of `ttl_ms` (`None`: records never expire, so nothing is ever expired). Pure.
pub fn freshness(requested_at_ms: Option<u64>, now_ms: u64, ttl_ms: Option<u64>) -> Freshness {
    let (Some(at), Some(ttl)) = (requested_at_ms, ttl_ms) else {
        return Freshness::Fresh;
    };
    let allowance = clock_allowance_ms(ttl);
    if at > now_ms {
        let ahead_ms = at - now_ms;
        return match ahead_ms > allowance {
            true => Freshness::Ahead { ahead_ms },
            false => Freshness::Fresh,
        };
    }
    let age_ms = now_ms - at;
    match age_ms >= ttl - allowance {
        true => Freshness::Expired { age_ms },
        false => Freshness::Fresh,
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY_MS: u64 = 86_400_000;

    #[test]
    fn a_request_is_expired_once_older_than_the_ttl_less_the_allowance() {
        let ttl = Some(DAY_MS);
        let now = 10 * DAY_MS;
        let edge = now - (DAY_MS - CLOCK_ALLOWANCE_LIMIT_MS);
        assert_eq!(freshness(Some(edge + 1), now, ttl), Freshness::Fresh);
        assert_eq!(
            freshness(Some(edge), now, ttl),
            Freshness::Expired {
                age_ms: DAY_MS - CLOCK_ALLOWANCE_LIMIT_MS
            }
        );
        assert_eq!(freshness(Some(now), now, ttl), Freshness::Fresh);
    }

    #[test]
    fn records_kept_for_ever_or_an_unknown_time_never_expire_a_request() {
        assert_eq!(freshness(Some(0), 10 * DAY_MS, None), Freshness::Fresh);
        assert_eq!(freshness(None, 10 * DAY_MS, Some(1)), Freshness::Fresh);
    }

    #[test]
    fn a_clock_ahead_within_the_allowance_is_fresh_and_beyond_it_is_ahead() {
        let ttl = Some(DAY_MS);
        let now = DAY_MS;
        let within = now + CLOCK_ALLOWANCE_LIMIT_MS;
        assert_eq!(freshness(Some(within), now, ttl), Freshness::Fresh);
        assert_eq!(
            freshness(Some(within + 1), now, ttl),
            Freshness::Ahead {
                ahead_ms: CLOCK_ALLOWANCE_LIMIT_MS + 1
            }
        );
        // A short ttl gets a tenth of itself.
        assert_eq!(clock_allowance_ms(5_000), 500);
    }

    proptest! {
        /// The safety argument: a record written at first processing time `p` (on or after
        /// the request's time, less a clock ahead by at most the allowance) lives until
        /// `p + ttl`; every delivery that is not refused comes before that.
        #[test]
        fn a_delivery_that_is_applied_always_finds_the_first_one_s_record(
            ttl in 10u64..1_200_000,
            at in 0u64..100 * DAY_MS,
            ahead_fraction in 0u64..=100,
            first_fraction in 0u64..=300,
            again_fraction in 900u64..=1_100,
        ) {
            // Processing within a few allowances of the request, again around one ttl later
            // (where a record expires).
            let ahead = clock_allowance_ms(ttl) * ahead_fraction / 100;
            let stamped = at + ahead;
            let first = at + clock_allowance_ms(ttl) * first_fraction / 100;
            let again = first + ttl * again_fraction / 1_000;
            if freshness(Some(stamped), first, Some(ttl)) != Freshness::Fresh {
                return Ok(());
            }
            if freshness(Some(stamped), again, Some(ttl)) == Freshness::Fresh {
                prop_assert!(again < first + ttl, "applied at {again}, record gone at {}", first + ttl);
            }
        }
    }
}
