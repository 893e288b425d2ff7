//! The one reader of the worker's output topics (results, the dead-letter topic and the ledger
//! topic), for
//! everything outside the worker: `wallet transfer --wait`, `wallet produce`, `wallet bench
//! --e2e` and the integration tests.
//!
//! Two levels:
//!
//! - [`TopicReader`]: every partition of one topic, from its beginning or from its current
//!   end, as raw [`ReadMessage`]s (key, payload, headers, when it was received). For callers
//!   that need more than results: the bench (receipt times for latency), the tests (dead
//!   letters with their headers, every message of a run).
//! - [`ResultWatcher`]: started before publishing; waits for the results of given transfer ids.
//! - [`read_to_end`]: a bounded read of a whole topic, to the end it had when the read began
//!   (`wallet history` over the ledger topic, the fault checker).
//!
//! Owns: how a topic is read (no consumer group is joined, nothing is committed, partitions are
//! assigned with explicit offsets) and how a result message is parsed. Does not own: publishing
//! requests (`ops`), what a caller does with what it read (latency figures, checks), or the
//! worker's own consumer, which is `worker::kafka` and commits its offsets.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::message::TransferCompleted;
use crate::worker::kafka::{self, KafkaConfig};

/// Longest single poll of a waiting call, so a deadline is never overshot by much.
const POLL_SLICE_MS: u64 = 200;
/// Largest message fetched per partition: dead letters may be a few megabytes.
const FETCH_MESSAGE_BYTES_MAX: &str = "10000000";
/// How long the broker may hold a fetch of a prompt reader (see [`TopicReader::open_prompt`]).
const PROMPT_FETCH_WAIT_MS: &str = "2";

/// Why a topic could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The topic does not exist.
    #[error(
        "topic {topic} does not exist at {brokers} (the worker creates its topics when it \
         starts; check the topic name)"
    )]
    NoSuchTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
    },
    /// A bounded read did not reach the end it was given in time.
    #[error(
        "reading {topic} to its end took longer than {timeout_ms} ms ({read} of {total} \
         messages read; the brokers may be slow or away: try again, or allow more time)"
    )]
    Timeout {
        /// The topic.
        topic: String,
        /// The time allowed.
        timeout_ms: u64,
        /// Messages read by then.
        read: u64,
        /// Messages there were to read.
        total: u64,
    },
    /// A consumer call failed.
    #[error("kafka: {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
}

fn kafka_error(what: impl Into<String>) -> impl FnOnce(KafkaError) -> ReadError {
    let what = what.into();
    move |source| ReadError::Kafka { what, source }
}

/// Where a new reader starts in every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest message still kept.
    Beginning,
    /// The high watermark at the time the reader is opened: only what is published afterwards.
    End,
}

/// One message as read, copied out of the consumer.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    /// The partition.
    pub partition: i32,
    /// The offset in it.
    pub offset: i64,
    /// The message key, if any.
    pub key: Option<Vec<u8>>,
    /// The payload (empty for none).
    pub payload: Vec<u8>,
    /// Headers with their values as (lossy) UTF-8; a header without a value maps to "".
    pub headers: HashMap<String, String>,
    /// When this reader got it from the consumer.
    pub received: Instant,
    /// The message's timestamp (CreateTime: when its producer handed it over), in ms since the
    /// Unix epoch, when it has one.
    pub timestamp_ms: Option<i64>,
}

impl ReadMessage {
    fn copy(m: &BorrowedMessage<'_>, received: Instant) -> ReadMessage {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        ReadMessage {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            received,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The payload as a result message.
    pub fn result(&self) -> Result<TransferCompleted, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// Reads every partition of one topic. No consumer group is joined and nothing is committed:
/// each reader has its own position and leaves no trace on the broker.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl TopicReader {
    /// A reader of `topic` from `start`; fails when the topic does not exist.
    pub fn open(kafka: &KafkaConfig, topic: &str, start: Start) -> Result<TopicReader, ReadError> {
        TopicReader::open_with(kafka, topic, start, None)
    }

    /// Like [`TopicReader::open`], but asks the broker to answer a fetch within 10 ms even when
    /// it has nothing: the reader is a stopwatch (the bench), not only a collector, and must not
    /// sit on a fetch while messages arrive.
    pub fn open_prompt(
        kafka: &KafkaConfig,
        topic: &str,
        start: Start,
    ) -> Result<TopicReader, ReadError> {
        TopicReader::open_with(kafka, topic, start, Some(PROMPT_FETCH_WAIT_MS))
    }

    fn open_with(
        kafka: &KafkaConfig,
        topic: &str,
        start: Start,
        fetch_wait_ms: Option<&str>,
    ) -> Result<TopicReader, ReadError> {
        let partitions = kafka::partition_count(kafka, topic)
            .map_err(kafka_error(format!("metadata of topic {topic}")))?;
        if partitions == 0 {
            return Err(ReadError::NoSuchTopic {
                topic: topic.to_string(),
                brokers: kafka.brokers.clone(),
            });
        }
        let mut config = kafka.client_config();
        config
            .set(
                "group.id",
                format!("wallet-reader-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.message.max.bytes", FETCH_MESSAGE_BYTES_MAX);
        if let Some(ms) = fetch_wait_ms {
            config.set("fetch.wait.max.ms", ms);
        }
        let consumer: BaseConsumer = config
            .create()
            .map_err(kafka_error(format!("reader of {topic}")))?;
        let assignment = assignment(&consumer, topic, partitions, start)?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error(format!("assigning the partitions of {topic}")))?;
        Ok(TopicReader {
            consumer,
            topic: topic.to_string(),
            partitions,
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message, waiting up to `wait`: `None` when none came, `Err` for a consumer
    /// error (the broker may be away; the reader stays usable and resumes where it was).
    pub fn next(&self, wait: Duration) -> Option<Result<ReadMessage, KafkaError>> {
        let message = self.consumer.poll(wait)?;
        let received = Instant::now();
        Some(message.map(|m| ReadMessage::copy(&m, received)))
    }
}

/// How often [`read_to_end`] reports its progress.
pub const SCAN_PROGRESS_INTERVAL_MS: u64 = 2_000;

/// Reads every partition of `topic` from its beginning to its high watermark as read when the
/// call starts (what is published afterwards is not read), handing each message to `each`.
/// Bounded twice: by those watermarks, and by `timeout` (then [`ReadError::Timeout`] says how
/// far it got). `progress` gets (messages read, messages to read) every
/// [`SCAN_PROGRESS_INTERVAL_MS`]. Returns the number of messages read. Consumer errors (a broker
/// away for a moment) are retried until the timeout.
pub fn read_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&ReadMessage),
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReadError> {
    let deadline = Instant::now() + timeout;
    let reader = TopicReader::open(kafka, topic, Start::Beginning)?;
    let mut ends = reader.high_watermarks()?;
    let total: u64 = ends
        .values()
        .map(|(low, high)| (high - low).max(0) as u64)
        .sum();
    ends.retain(|_, (low, high)| low < high);
    let (mut read, mut reported) = (0u64, Instant::now());
    while !ends.is_empty() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(ReadError::Timeout {
                topic: topic.to_string(),
                timeout_ms: timeout.as_millis() as u64,
                read,
                total,
            });
        };
        match reader.next(left.min(Duration::from_millis(POLL_SLICE_MS))) {
            Some(Ok(m)) => {
                let high = ends.get(&m.partition).map(|(_, high)| *high);
                if high.is_some_and(|high| m.offset < high) {
                    each(&m);
                    read += 1;
                }
                if high.is_some_and(|high| m.offset + 1 >= high) {
                    ends.remove(&m.partition);
                }
            }
            Some(Err(e)) => log::debug!("reading {topic}: {e}"),
            // Nothing came: a partition whose position passed its end (a gap in its offsets)
            // is done too.
            None => reader.drop_reached(&mut ends)?,
        }
        if reported.elapsed() >= Duration::from_millis(SCAN_PROGRESS_INTERVAL_MS) {
            progress(read, total);
            reported = Instant::now();
        }
    }
    Ok(read)
}

impl TopicReader {
    /// The (low, high) watermarks of every partition, now.
    pub fn high_watermarks(&self) -> Result<HashMap<i32, (i64, i64)>, ReadError> {
        let timeout = Duration::from_millis(kafka::ADMIN_TIMEOUT_MS);
        (0..self.partitions)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, timeout)
                    .map(|w| (p, w))
                    .map_err(kafka_error(format!("watermarks of {} [{p}]", self.topic)))
            })
            .collect()
    }

    /// Removes from `ends` the partitions this reader's position has reached.
    fn drop_reached(&self, ends: &mut HashMap<i32, (i64, i64)>) -> Result<(), ReadError> {
        let positions = self
            .consumer
            .position()
            .map_err(kafka_error(format!("positions in {}", self.topic)))?;
        for e in positions.elements() {
            if let Offset::Offset(at) = e.offset()
                && ends
                    .get(&e.partition())
                    .is_some_and(|(_, high)| at >= *high)
            {
                ends.remove(&e.partition());
            }
        }
        Ok(())
    }
}

/// Every partition at `start`, as explicit offsets: with [`Start::End`] the high watermarks
/// read now, so nothing published after this call can slip in before the assignment.
fn assignment(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    start: Start,
) -> Result<TopicPartitionList, ReadError> {
    let timeout = Duration::from_millis(kafka::ADMIN_TIMEOUT_MS);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let offset = match start {
            Start::Beginning => Offset::Beginning,
            Start::End => {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, timeout)
                    .map_err(kafka_error(format!("high watermark of {topic} [{p}]")))?;
                Offset::Offset(high)
            }
        };
        tpl.add_partition_offset(topic, p, offset)
            .map_err(kafka_error(format!("assignment of {topic} [{p}]")))?;
    }
    Ok(tpl)
}

/// Waits for the results of given transfers: start it before publishing their requests (it
/// reads from the end of the results topic), then [`ResultWatcher::wait_for`] them.
pub struct ResultWatcher {
    reader: TopicReader,
}

impl ResultWatcher {
    /// Assigns every partition of the results `topic` at its high watermark.
    pub fn start(kafka: &KafkaConfig, topic: &str) -> Result<ResultWatcher, ReadError> {
        Ok(ResultWatcher {
            reader: TopicReader::open(kafka, topic, Start::End)?,
        })
    }

    /// The results of every transfer in `ids` that arrive within `timeout` (the first one of
    /// each id). Messages that are not results, or results of other transfers, are skipped.
    pub fn wait_for_all(
        &self,
        ids: &HashSet<String>,
        timeout: Duration,
    ) -> Result<HashMap<String, TransferCompleted>, ReadError> {
        let mut found = HashMap::new();
        let deadline = Instant::now() + timeout;
        while found.len() < ids.len() {
            let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self
                .reader
                .next(wait.min(Duration::from_millis(POLL_SLICE_MS)))
            {
                None => {}
                Some(Err(e)) => log::debug!("polling {}: {e}", self.reader.topic()),
                Some(Ok(m)) => {
                    if let Ok(result) = m.result()
                        && ids.contains(&result.transfer_id)
                    {
                        found.entry(result.transfer_id.clone()).or_insert(result);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The first result with `transfer_id`, or `None` after `timeout`.
    pub fn wait_for(
        &self,
        transfer_id: &str,
        timeout: Duration,
    ) -> Result<Option<TransferCompleted>, ReadError> {
        let ids = HashSet::from([transfer_id.to_string()]);
        Ok(self.wait_for_all(&ids, timeout)?.remove(transfer_id))
    }
}
