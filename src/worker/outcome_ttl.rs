//! How long outcome records must live for the requests topic as the brokers describe it, and
//! the ttl the transfer threads use while the worker runs (ARCHITECTURE.md, "Retention").
//!
//! Kafka deletes whole segments: a segment goes once its newest message is past `retention.ms`,
//! and a segment takes new messages for up to `segment.ms` before it is rolled, so a message can
//! stay `retention.ms + segment.ms` (plus the broker's retention check interval, which the
//! margin covers). `segment.bytes` only makes segments roll sooner, so it never lengthens that.
//! A topic whose `cleanup.policy` is `compact` without `delete` keeps each key's latest message
//! for ever: no ttl covers it (with `compact,delete` the retention still deletes old segments,
//! KIP-71, so the rule above holds). A broker that does not report `segment.ms` (tansu, for a
//! topic created without it) is taken to use Kafka's default, 7 days: the long side.
//!
//! At start the worker reads the requests topic's `retention.ms`, `segment.ms` and
//! `cleanup.policy` from the brokers, and the pipeline settles the ttl by this rule. With none
//! set (`--outcome-ttl-ms auto`, the default) every outcome record gets retention plus segment
//! plus `outcome_ttl_margin_ms` (default one day: a request can come back while it is in the
//! topic, plus the time a consumer may lag behind); a topic that keeps its messages for ever
//! keeps the records for ever; a retention the brokers do not report (tansu, for a topic
//! created without one) keeps them for ever too, with a warning, because no ttl could be
//! checked; a compacted topic is refused unless records are kept for ever (`--outcome-ttl-ms
//! forever`). A ttl set by hand below what the topic needs is refused at start, naming the
//! reason (so is one that cannot be checked). Keeping a record too long costs memory; dropping
//! it too early moves money twice. The library alone keeps records for ever unless told
//! otherwise, and the crate doc states its rule: never retry after the ttl.
//!
//! While running, the worker reads the topic again every `outcome_ttl_check_interval_ms` (5
//! minutes by default, at most an hour). The ttl only grows, and only for new records:
//! [`LiveTtl`] holds the ttl new records are written with (raised when the topic's retention
//! grows) and the ttl requests are judged against, which stays the one the run started with,
//! since records written before a raise still expire after it (`engine::expiry`); the pool
//! dates each request earlier by the raise ([`judged_at_ms`]), as the engine has one ttl for
//! both. A hand-set ttl the topic outgrows stops the worker, and so does a derived one when the
//! topic comes to need records kept for ever (records already written expire).
//!
//! Owns the rule (pure) and [`LiveTtl`]. Does not read the topic (`worker::kafka`), settle the
//! ttl at start or watch the topic (`worker::pipeline`), or judge requests (`engine::expiry`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::setting::SettingError;

/// `segment.ms` assumed when the brokers do not report it: Kafka's default (`log.roll.hours`
/// 168), 7 days.
pub const KAFKA_SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 3_600_000;

/// Default interval at which a running worker reads the requests topic's configs again
/// (`WorkerConfig::outcome_ttl_check_interval_ms`): 5 minutes.
pub const OUTCOME_TTL_CHECK_INTERVAL_MS: u64 = 300_000;

/// Upper bound on `WorkerConfig::outcome_ttl_check_interval_ms`: 1 hour, so a raised retention
/// is followed within the margin's first hour.
pub const OUTCOME_TTL_CHECK_INTERVAL_MS_LIMIT: u64 = 3_600_000;

/// What the brokers report of the requests topic's configs that bound how long a message stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicRetention {
    /// `retention.ms` (`-1`: for ever); `None` when not reported.
    pub retention_ms: Option<i64>,
    /// `segment.ms`; `None` when not reported (then [`KAFKA_SEGMENT_MS_DEFAULT`]).
    pub segment_ms: Option<i64>,
    /// `cleanup.policy` holds `compact` and not `delete`: a key's latest message stays for ever.
    pub compact_only: bool,
}

/// What the topic asks of the outcome ttl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    /// Records must live at least this long.
    AtLeast {
        /// The least ttl.
        ttl_ms: u64,
        /// The sum, spelled out.
        why: String,
    },
    /// No ttl covers the topic: records must be kept for ever.
    Forever {
        /// Which setting says so.
        why: String,
    },
    /// The brokers do not report `retention.ms` (and the topic is not compacted).
    Unknown,
}

impl TopicRetention {
    /// Whether `cleanup.policy` (a comma-separated list, possibly in brackets) compacts without
    /// deleting. Pure.
    pub fn compact_only_policy(policy: &str) -> bool {
        let words: Vec<&str> = policy
            .split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        words.contains(&"compact") && !words.contains(&"delete")
    }

    /// The `segment.ms` the rule counts: the reported one, or Kafka's default when it is not
    /// reported or not a duration.
    pub fn segment_ms_counted(&self) -> u64 {
        self.segment_ms
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(KAFKA_SEGMENT_MS_DEFAULT)
    }

    /// The least outcome ttl for this topic with `margin_ms` on top. Pure.
    pub fn needed(&self, margin_ms: u64) -> Needed {
        if self.compact_only {
            return Needed::Forever {
                why: "its cleanup.policy is compact (without delete), which keeps each key's latest message for ever".into(),
            };
        }
        let Some(retention_ms) = self.retention_ms else {
            return Needed::Unknown;
        };
        let Ok(retention) = u64::try_from(retention_ms) else {
            return Needed::Forever {
                why: format!("its retention.ms is {retention_ms}: it keeps its messages for ever"),
            };
        };
        let segment = self.segment_ms_counted();
        let reported = match self.segment_ms {
            Some(_) => "",
            None => ", Kafka's default: not reported",
        };
        Needed::AtLeast {
            ttl_ms: retention.saturating_add(segment).saturating_add(margin_ms),
            why: format!(
                "its retention.ms ({retention}) plus segment.ms ({segment}{reported}; Kafka deletes whole segments) plus the margin ({margin_ms})"
            ),
        }
    }
}

/// The rule for an outcome ttl set by hand: it must cover `topic` ([`TopicRetention::needed`]);
/// a topic whose retention is not reported cannot be checked and is refused too. Pure.
pub fn check_set_ttl(
    ttl_ms: u64,
    retention: &TopicRetention,
    margin_ms: u64,
    topic: &str,
) -> Result<(), SettingError> {
    let least = match retention.needed(margin_ms) {
        Needed::AtLeast { ttl_ms: least, .. } if ttl_ms >= least => return Ok(()),
        Needed::AtLeast { ttl_ms: least, why } => format!("at least {least} ms: {why}"),
        Needed::Forever { why } => format!("forever: {why}"),
        Needed::Unknown => {
            return Err(SettingError::new(
                "outcome_ttl_ms",
                format!(
                    "{ttl_ms} cannot be checked: the brokers do not report the retention.ms of {topic}; set retention.ms on the topic, or keep records for ever"
                ),
            ));
        }
    };
    Err(SettingError::new(
        "outcome_ttl_ms",
        format!(
            "must cover the requests topic {topic}, {least}; got {ttl_ms}: a request redelivered after its outcome record expired would move the money again"
        ),
    ))
}

/// The ttl derived for `topic` when none is set: `Ok(Some(ms))`, `Ok(None)` for records kept
/// for ever (the topic keeps its messages for ever, or its retention is not reported), or an
/// error for a compacted topic (records kept for ever must be asked for: `--outcome-ttl-ms
/// forever`). Pure.
pub fn derive(
    retention: &TopicRetention,
    margin_ms: u64,
    topic: &str,
) -> Result<Option<u64>, SettingError> {
    match retention.needed(margin_ms) {
        Needed::AtLeast { ttl_ms, .. } => Ok(Some(ttl_ms)),
        Needed::Unknown => Ok(None),
        Needed::Forever { .. } if !retention.compact_only => Ok(None),
        Needed::Forever { why } => Err(SettingError::new(
            "outcome_ttl_ms",
            format!(
                "cannot be derived from the requests topic {topic}: {why}, so no ttl outlives its redeliveries; set the ttl to forever to keep outcome records for ever, or give the topic cleanup.policy delete"
            ),
        )),
    }
}

/// What a running worker does when it reads the topic again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The ttl in force covers the topic (a ttl never shrinks).
    Keep,
    /// Derived, and the topic now needs more.
    Raise {
        /// The ttl new records get.
        to_ms: u64,
        /// The sum, spelled out.
        why: String,
    },
    /// No ttl the worker may use covers the topic any more: stop with this error (the one the
    /// start would give, or, for a derived ttl the topic now needs kept for ever, why a
    /// running worker cannot switch to that).
    Stop(SettingError),
}

/// The decision for a worker running with `ttl_ms` (`set_by_hand`: the operator's, never
/// changed by the worker) when the topic reads `retention`. Pure.
pub fn recheck(
    ttl_ms: u64,
    set_by_hand: bool,
    retention: &TopicRetention,
    margin_ms: u64,
    topic: &str,
) -> Recheck {
    if set_by_hand {
        return match check_set_ttl(ttl_ms, retention, margin_ms, topic) {
            Ok(()) => Recheck::Keep,
            Err(e) => Recheck::Stop(e),
        };
    }
    match retention.needed(margin_ms) {
        Needed::AtLeast { ttl_ms: least, .. } if least <= ttl_ms => Recheck::Keep,
        Needed::AtLeast { ttl_ms: to_ms, why } => Recheck::Raise { to_ms, why },
        // Not reported any more (a broker that forgets): the ttl in force was checked; keep it.
        Needed::Unknown => Recheck::Keep,
        Needed::Forever { why } => Recheck::Stop(SettingError::new(
            "outcome_ttl_ms",
            format!(
                "derived as {ttl_ms} ms, no longer covers the requests topic {topic}: {why}; records already written expire, so a running worker cannot keep outcomes for ever: restart it with the ttl set to forever"
            ),
        )),
    }
}

/// The ttls the transfer threads use, shared with the watcher that raises them. `0` stands for
/// none (records kept for ever).
#[derive(Debug, Default)]
pub struct LiveTtl {
    record_ms: AtomicU64,
    judge_ms: AtomicU64,
}

impl LiveTtl {
    /// Sets both at start.
    pub fn start(&self, ttl_ms: Option<u64>) {
        let ms = ttl_ms.unwrap_or(0);
        self.record_ms.store(ms, Ordering::SeqCst);
        self.judge_ms.store(ms, Ordering::SeqCst);
    }

    /// Raises the ttl of new records to `to_ms` (never lowers it); returns the one before.
    pub fn raise(&self, to_ms: u64) -> u64 {
        self.record_ms.fetch_max(to_ms, Ordering::SeqCst)
    }

    /// The ttl new records get (`None`: kept for ever).
    pub fn record_ms(&self) -> Option<u64> {
        Some(self.record_ms.load(Ordering::SeqCst)).filter(|ms| *ms > 0)
    }

    /// The ttl requests are judged against: the least any record of this run was written with.
    pub fn judge_ms(&self) -> Option<u64> {
        Some(self.judge_ms.load(Ordering::SeqCst)).filter(|ms| *ms > 0)
    }
}

/// How far back to date a request made at `at_ms` so that an engine writing records with
/// `record_ms` judges it as if against `judge_ms` (or stricter: the engine's clock allowance
/// grows with the ttl): the engine has one ttl for both. A raise larger than the time since
/// the epoch floors at 0 (no real message is that old). Pure.
pub fn judged_at_ms(at_ms: u64, record_ms: Option<u64>, judge_ms: Option<u64>) -> u64 {
    match (record_ms, judge_ms) {
        (Some(record), Some(judge)) => at_ms.saturating_sub(record.saturating_sub(judge)),
        _ => at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::expiry::{self, Freshness};
    use proptest::prelude::*;

    const DAY_MS: i64 = 86_400_000;

    fn topic(retention_ms: i64, segment_ms: Option<i64>) -> TopicRetention {
        TopicRetention {
            retention_ms: Some(retention_ms),
            segment_ms,
            compact_only: false,
        }
    }

    #[test]
    fn a_ttl_must_cover_the_retention_plus_a_whole_segment_plus_the_margin() {
        let t = topic(7 * DAY_MS, Some(DAY_MS));
        let least = (9 * DAY_MS) as u64;
        assert!(check_set_ttl(least, &t, DAY_MS as u64, "t").is_ok());
        let e = check_set_ttl(least - 1, &t, DAY_MS as u64, "t").unwrap_err();
        assert_eq!(e.setting, "outcome_ttl_ms");
        for part in [
            "at least 777600000 ms",
            "retention.ms (604800000)",
            "segment.ms (86400000",
            "margin (86400000)",
            "got 777599999",
            "move the money again",
        ] {
            assert!(e.rule.contains(part), "{part}: {e}");
        }
    }

    #[test]
    fn a_segment_ms_not_reported_counts_as_kafka_s_default() {
        let t = topic(60_000, None);
        assert_eq!(t.segment_ms_counted(), KAFKA_SEGMENT_MS_DEFAULT);
        assert_eq!(
            derive(&t, 1_000, "t").unwrap(),
            Some(61_000 + KAFKA_SEGMENT_MS_DEFAULT)
        );
        let e = check_set_ttl(61_000, &t, 1_000, "t").unwrap_err();
        assert!(e.rule.contains("Kafka's default: not reported"), "{e}");
    }

    #[test]
    fn a_compacted_topic_is_refused_unless_records_are_kept_for_ever() {
        for policy in ["compact", "[compact]", " compact "] {
            assert!(TopicRetention::compact_only_policy(policy), "{policy}");
        }
        for policy in ["delete", "compact,delete", "[delete, compact]", ""] {
            assert!(!TopicRetention::compact_only_policy(policy), "{policy}");
        }
        let t = TopicRetention {
            compact_only: true,
            ..topic(DAY_MS, Some(DAY_MS))
        };
        let e = derive(&t, 0, "t").unwrap_err();
        assert!(e.rule.contains("cleanup.policy is compact"), "{e}");
        assert!(e.rule.contains("forever"), "{e}");
        assert!(check_set_ttl(u64::MAX, &t, 0, "t").is_err());
    }

    #[test]
    fn a_topic_kept_for_ever_or_unreported_derives_records_kept_for_ever() {
        assert_eq!(derive(&topic(-1, None), DAY_MS as u64, "t"), Ok(None));
        assert_eq!(derive(&TopicRetention::default(), 0, "t"), Ok(None));
        let e = check_set_ttl(u64::MAX, &TopicRetention::default(), 0, "t").unwrap_err();
        assert!(e.rule.contains("cannot be checked"), "{e}");
        assert!(check_set_ttl(u64::MAX, &topic(-1, None), 0, "t").is_err());
    }

    #[test]
    fn a_running_ttl_grows_when_derived_stops_when_set_by_hand_and_never_shrinks() {
        let longer = topic(2 * DAY_MS, Some(DAY_MS));
        let ttl = (3 * DAY_MS) as u64;
        assert_eq!(recheck(ttl, false, &longer, 0, "t"), Recheck::Keep);
        assert!(matches!(
            recheck(ttl, false, &longer, 1, "t"),
            Recheck::Raise { to_ms, .. } if to_ms == ttl + 1
        ));
        assert!(matches!(
            recheck(ttl, true, &longer, 1, "t"),
            Recheck::Stop(e) if e.rule.contains("must cover")
        ));
        let shorter = topic(DAY_MS, Some(1));
        assert_eq!(recheck(ttl, false, &shorter, 0, "t"), Recheck::Keep);
        let compacted = TopicRetention {
            compact_only: true,
            ..shorter
        };
        assert!(matches!(
            recheck(ttl, false, &compacted, 0, "t"),
            Recheck::Stop(e) if e.rule.contains("restart it with the ttl set to forever")
        ));
        assert!(matches!(
            recheck(ttl, false, &topic(-1, None), 0, "t"),
            Recheck::Stop(_)
        ));
    }

    #[test]
    fn a_raise_changes_the_ttl_of_new_records_and_not_the_one_requests_are_judged_by() {
        let live = LiveTtl::default();
        live.start(Some(1_000));
        assert_eq!(live.raise(5_000), 1_000);
        assert_eq!(live.raise(2_000), 5_000, "never lowered");
        assert_eq!(
            (live.record_ms(), live.judge_ms()),
            (Some(5_000), Some(1_000))
        );
        live.start(None);
        assert_eq!((live.record_ms(), live.judge_ms()), (None, None));
    }

    proptest! {
        /// The pure rule: any ttl at or past retention + segment + margin is accepted, any
        /// below is refused, and the derived one is exactly the least accepted.
        #[test]
        fn the_least_accepted_ttl_is_the_derived_one(
            retention in 0i64..400 * DAY_MS,
            segment in proptest::option::of(1i64..30 * DAY_MS),
            margin in 0u64..30 * DAY_MS as u64,
            below in 1u64..DAY_MS as u64,
        ) {
            let t = topic(retention, segment);
            let derived = derive(&t, margin, "t").unwrap().unwrap();
            let segment_counted = segment.map_or(KAFKA_SEGMENT_MS_DEFAULT, |s| s as u64);
            prop_assert_eq!(derived, retention as u64 + segment_counted + margin);
            prop_assert!(check_set_ttl(derived, &t, margin, "t").is_ok());
            prop_assert!(check_set_ttl(derived.saturating_sub(below), &t, margin, "t").is_err());
            prop_assert_eq!(recheck(derived, false, &t, margin, "t"), Recheck::Keep);
        }

        /// After a raise, a request is judged no later than under the ttl the run started
        /// with: one the old ttl calls expired is expired under the raised one too.
        #[test]
        fn a_raise_never_makes_a_request_past_the_old_ttl_fresh(
            judge in 10u64..10 * DAY_MS as u64,
            extra in 0u64..10 * DAY_MS as u64,
            // Real message times (2020 on): the shift never floors at the epoch.
            at in 1_600_000_000_000u64..2_000_000_000_000,
            age in 0u64..20 * DAY_MS as u64,
        ) {
            let record = judge + extra;
            let now = at + age;
            let shifted = judged_at_ms(at, Some(record), Some(judge));
            let old = expiry::freshness(Some(at), now, Some(judge));
            let raised = expiry::freshness(Some(shifted), now, Some(record));
            if matches!(old, Freshness::Expired { .. }) {
                prop_assert!(matches!(raised, Freshness::Expired { .. }), "{:?}", raised);
            }
        }
    }
}
