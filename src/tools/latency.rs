//! Where an end-to-end request spends its time: the split into legs from the messages' own
//! timestamps, and the broker's own floor measured with the same client settings.
//!
//! ```text
//! request sent ---- to worker ----> outcome recorded ---- in worker ----> result produced
//!   (bench clock)   (broker, fetch     (processed_at)      (answer,         (message
//!                    wait, queue,                           produce call)    timestamp)
//!                    transfer)                                   ---- result back ----> received
//!                                                                (linger, broker, fetch wait)
//! ```
//!
//! Owns the arithmetic of the legs (pure), their histograms, and the floor measurement (a plain
//! message published and read back through the same broker, no worker involved). Does not run
//! the end-to-end bench itself (`tools::bench`). All clocks are this machine's wall clock in
//! milliseconds, so the legs are exact to a millisecond only when bench, worker and broker share
//! a host (as in `make up`); across hosts they include clock skew.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::tools::bench::error::BenchError;
use crate::tools::bench::figures::LatencySummary;
use crate::tools::results::{Start, TopicReader};
use crate::worker::kafka::{self, KafkaConfig, TopicSpec};

/// The topic the broker floor is measured on (created with one partition when missing).
pub const FLOOR_TOPIC: &str = "wallet.bench.floor";
/// Most messages one floor measurement publishes.
pub const FLOOR_MESSAGES_LIMIT: u64 = 10_000;
/// Longest leg recorded, in microseconds (one hour).
const LEG_US_LIMIT: u64 = 3_600_000_000;

/// Turns `Instant`s of this process into wall-clock milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    origin: Instant,
    origin_ms: i64,
}

impl WallClock {
    /// A clock whose origin is now.
    pub fn now() -> WallClock {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        WallClock {
            origin: Instant::now(),
            origin_ms,
        }
    }

    /// `at` as wall-clock milliseconds (an instant before the origin maps to the origin).
    pub fn ms(&self, at: Instant) -> i64 {
        self.origin_ms + at.saturating_duration_since(self.origin).as_millis() as i64
    }
}

/// The three legs of one request in milliseconds: to the worker (until its outcome was
/// recorded), in the worker (until its result was produced), and the result back (until it was
/// received). A leg that comes out negative (clock granularity) counts as 0. Pure.
pub fn legs(sent_ms: i64, processed_ms: i64, produced_ms: i64, received_ms: i64) -> [u64; 3] {
    let leg = |from: i64, to: i64| to.saturating_sub(from).max(0) as u64;
    [
        leg(sent_ms, processed_ms),
        leg(processed_ms, produced_ms),
        leg(produced_ms, received_ms),
    ]
}

/// Percentiles of each leg over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageSummary {
    /// From publishing the request until its outcome was recorded.
    pub to_worker: LatencySummary,
    /// From the outcome until the worker produced the result.
    pub in_worker: LatencySummary,
    /// From the result's production until the bench received it.
    pub result_back: LatencySummary,
}

/// Histograms of the legs of every request of a run.
pub struct StageSplit {
    legs: [Histogram<u64>; 3],
}

impl Default for StageSplit {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, LEG_US_LIMIT, 3).expect("constant bounds");
        StageSplit {
            legs: [h(), h(), h()],
        }
    }
}

impl StageSplit {
    /// Records one request's legs (see [`legs`]).
    pub fn record(&mut self, legs_ms: [u64; 3]) {
        for (h, ms) in self.legs.iter_mut().zip(legs_ms) {
            h.saturating_record((ms * 1_000).clamp(1, LEG_US_LIMIT));
        }
    }

    /// Percentiles of each leg so far.
    pub fn summary(&self) -> StageSummary {
        StageSummary {
            to_worker: LatencySummary::from_histogram_us(&self.legs[0]),
            in_worker: LatencySummary::from_histogram_us(&self.legs[1]),
            result_back: LatencySummary::from_histogram_us(&self.legs[2]),
        }
    }
}

/// The broker's own latency floor: `messages` plain messages published at `rate` per second
/// to [`FLOOR_TOPIC`] with `producer` and read back by a reader with the bench's settings; no
/// worker is involved. Each latency is from handing the message to the producer to reading it.
pub fn broker_floor(
    kafka: &KafkaConfig,
    producer: &ThreadedProducer<impl rdkafka::producer::ProducerContext<DeliveryOpaque = ()>>,
    messages: u64,
    rate: u32,
    timeout: Duration,
) -> Result<LatencySummary, BenchError> {
    assert!(messages <= FLOOR_MESSAGES_LIMIT && rate > 0);
    kafka::ensure_topics(kafka, &[TopicSpec::new(FLOOR_TOPIC)], 1, 1)
        .map_err(|e| BenchError::Kafka(format!("creating {FLOOR_TOPIC}: {e}")))?;
    let reader = TopicReader::open_prompt(kafka, FLOOR_TOPIC, Start::End)
        .map_err(|e| BenchError::Kafka(format!("reader of {FLOOR_TOPIC}: {e}")))?;
    let origin = Instant::now();
    let mut sent: Vec<Option<Instant>> = vec![None; messages as usize];
    let mut latency = Histogram::<u64>::new_with_bounds(1, LEG_US_LIMIT, 3).expect("bounds");
    let mut next = 0usize;
    while latency.len() < messages && origin.elapsed() < timeout {
        if next < sent.len()
            && origin.elapsed() >= Duration::from_secs_f64(next as f64 / f64::from(rate))
        {
            let key = next.to_string();
            let record = BaseRecord::to(FLOOR_TOPIC)
                .key(key.as_str())
                .payload(key.as_str());
            if producer.send(record).is_ok() {
                sent[next] = Some(Instant::now());
                next += 1;
            }
        }
        if let Some(Ok(m)) = reader.next(Duration::from_millis(1)) {
            let at = m
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok()?.parse::<usize>().ok())
                .and_then(|n| sent.get(n).copied().flatten());
            if let Some(at) = at {
                let us = m.received.saturating_duration_since(at).as_micros() as u64;
                latency.saturating_record(us.clamp(1, LEG_US_LIMIT));
            }
        }
    }
    producer.flush(Duration::from_secs(5)).ok();
    if latency.len() < messages {
        return Err(BenchError::Timeout(format!(
            "the broker floor: {} of {messages} messages came back through {FLOOR_TOPIC} within {} s",
            latency.len(),
            timeout.as_secs()
        )));
    }
    Ok(LatencySummary::from_histogram_us(&latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legs_add_up_and_never_go_negative() {
        let [to, inside, back] = legs(1_000, 1_012, 1_013, 1_020);
        assert_eq!((to, inside, back), (12, 1, 7));
        assert_eq!(to + inside + back, 20);
        // Millisecond clocks can put the produce stamp a hair before processed_at.
        assert_eq!(legs(1_000, 1_012, 1_011, 1_020), [12, 0, 9]);
    }

    #[test]
    fn the_split_summarises_each_leg() {
        let mut split = StageSplit::default();
        for ms in 1..=100 {
            split.record([ms, 1, 2 * ms]);
        }
        let s = split.summary();
        assert_eq!(s.to_worker.samples, 100);
        assert!((s.to_worker.p50_ms - 50.0).abs() < 0.5, "{s:?}");
        assert!((s.in_worker.p99_ms - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.result_back.p99_ms - 198.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn the_wall_clock_follows_instants() {
        let clock = WallClock::now();
        let later = Instant::now() + Duration::from_millis(1_500);
        assert_eq!(clock.ms(later) - clock.ms(clock.origin), 1_500);
    }
}
