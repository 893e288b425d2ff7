//! Kafka plumbing shared by the worker, the producer commands and the tests: client settings,
//! topic creation, reading a topic's retention configs, and reading a group's committed offsets.
//!
//! Owns the librdkafka properties every client gets (and the pass-through of extra ones for
//! SASL/SSL), and the one place where an rdkafka future is waited on (the admin API is only
//! offered as futures; [`wait`] parks the thread until the future's own background thread
//! completes it, so no async runtime is involved). Does not consume or dispatch; that is
//! `worker::pipeline`.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::worker::outcome_ttl::TopicRetention;

/// Default bootstrap servers: one broker on this machine.
pub const BROKERS_DEFAULT: &str = "127.0.0.1:9092";
/// Default requests topic, the original system's.
pub const TOPIC_REQUESTS: &str = "wallet.transfer.requested";
/// Default results topic, the original system's.
pub const TOPIC_RESULTS: &str = "wallet.transfer.completed";
/// Default dead-letter topic.
pub const TOPIC_DLQ: &str = "wallet.transfer.dlq";
/// Default ledger topic: every history entry a transfer made, key = wallet id, kept for ever
/// (`worker::ledger`).
pub const TOPIC_LEDGER: &str = "wallet.ledger";

/// Where the brokers are and what extra librdkafka properties every client gets:
/// `KafkaConfig::new("host:9092").with_property("security.protocol", "SASL_SSL")`.
/// Its `Debug` shows secret values (see [`is_secret_property`]) as `***`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`
    pub brokers: String,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`, ...), applied last.
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| match is_secret_property(k) {
                true => (k.as_str(), "***"),
                false => (k.as_str(), v.as_str()),
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &shown)
            .finish()
    }
}

impl KafkaConfig {
    /// The brokers (`host:port[,host:port...]`), no extra properties.
    pub fn new(brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            properties: Vec::new(),
        }
    }

    /// Adds an extra librdkafka property (`sasl.username`, `ssl.ca.location`, ...), applied
    /// after the worker's own. Secret values (see [`is_secret_property`]) are never logged.
    #[must_use]
    pub fn with_property(mut self, key: &str, value: &str) -> KafkaConfig {
        self.properties.push((key.to_string(), value.to_string()));
        self
    }

    /// Replaces the extra librdkafka properties.
    #[must_use]
    pub fn with_properties(mut self, properties: Vec<(String, String)>) -> KafkaConfig {
        self.properties = properties;
        self
    }

    /// Whether an extra property sets `key`.
    pub fn has_property(&self, key: &str) -> bool {
        self.properties.iter().any(|(k, _)| k == key)
    }

    /// A librdkafka configuration with the brokers and the extra properties set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "wallet-transfer");
        config.set("log_level", "4");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Parses `key=value` as given to `--kafka-property`.
pub fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected a librdkafka property as key=value (e.g. security.protocol=SASL_SSL), got {text:?}"
        )),
    }
}

/// Whether a librdkafka property holds a secret that must never be logged.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

/// Waits for a future by parking this thread until its waker fires, up to `timeout`.
/// rdkafka's admin futures are completed by rdkafka's own polling thread; nothing else drives
/// them, so this is all the "executor" they need. Returns `None` on timeout.
pub fn wait<F: Future>(future: F, timeout: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// Why creating topics or reading their settings failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The client could not be made, or a request failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The brokers refused to create a topic (other than "it exists").
    #[error("creating topic {topic}: {code}")]
    Topic {
        /// The topic.
        topic: String,
        /// The brokers' error code.
        code: RDKafkaErrorCode,
    },
    /// A topic's config could not be read.
    #[error("reading the config of topic {topic}: {detail}")]
    Config {
        /// The topic.
        topic: String,
        /// What went wrong.
        detail: String,
    },
    /// No answer within the admin timeout.
    #[error(
        "the brokers at {brokers} did not answer within {timeout_ms} ms (is the broker running? check --brokers / KAFKA_BROKERS)"
    )]
    Timeout {
        /// The bootstrap servers asked.
        brokers: String,
        /// How long they were given.
        timeout_ms: u64,
    },
}

/// Time allowed for admin requests.
pub const ADMIN_TIMEOUT_MS: u64 = 30_000;

/// A topic to create when missing, with topic configs to set at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec<'a> {
    /// The topic name.
    pub name: &'a str,
    /// Topic configs set at creation (`max.message.bytes`, `retention.ms`, ...).
    pub configs: Vec<(&'a str, &'a str)>,
}

impl<'a> TopicSpec<'a> {
    /// A topic with the brokers' default configs.
    pub fn new(name: &'a str) -> TopicSpec<'a> {
        TopicSpec {
            name,
            configs: Vec::new(),
        }
    }

    /// Adds a topic config, such as `max.message.bytes`.
    pub fn with(mut self, key: &'a str, value: &'a str) -> TopicSpec<'a> {
        self.configs.push((key, value));
        self
    }
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[TopicSpec<'_>],
    partitions: i32,
    replication: i32,
) -> Result<(), AdminError> {
    assert!(partitions > 0 && replication > 0);
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(t.name, partitions, TopicReplication::Fixed(replication)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(Duration::from_millis(ADMIN_TIMEOUT_MS)));
    let timeout = Duration::from_millis(ADMIN_TIMEOUT_MS + 5_000);
    let results =
        wait(admin.create_topics(&new, &options), timeout).ok_or(AdminError::Timeout {
            brokers: kafka.brokers.clone(),
            timeout_ms: ADMIN_TIMEOUT_MS,
        })??;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    Ok(())
}

/// The `retention.ms` of `topic` as the brokers report it (`-1`: kept for ever); `None` when
/// they do not report it (tansu, for a topic created without it).
pub fn topic_retention_ms(kafka: &KafkaConfig, topic: &str) -> Result<Option<i64>, AdminError> {
    Ok(topic_retention(kafka, topic)?.retention_ms)
}

/// What bounds how long `topic` keeps a message, as the brokers report it: `retention.ms`,
/// `segment.ms` and whether `cleanup.policy` compacts without deleting
/// (`worker::outcome_ttl`). A config the brokers leave out is `None` (tansu reports only the
/// configs a topic was created or altered with).
pub fn topic_retention(kafka: &KafkaConfig, topic: &str) -> Result<TopicRetention, AdminError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let options =
        AdminOptions::new().request_timeout(Some(Duration::from_millis(ADMIN_TIMEOUT_MS)));
    let resource = ResourceSpecifier::Topic(topic);
    let timeout = Duration::from_millis(ADMIN_TIMEOUT_MS + 5_000);
    let results = wait(admin.describe_configs([&resource], &options), timeout).ok_or(
        AdminError::Timeout {
            brokers: kafka.brokers.clone(),
            timeout_ms: ADMIN_TIMEOUT_MS,
        },
    )??;
    let config_error = |detail: String| AdminError::Config {
        topic: topic.to_string(),
        detail,
    };
    let described = results
        .into_iter()
        .next()
        .ok_or_else(|| config_error("no answer for the topic".into()))?
        .map_err(|code| config_error(code.to_string()))?;
    let value = |key: &str| described.get(key).and_then(|e| e.value.clone());
    let number = |key: &str| -> Result<Option<i64>, AdminError> {
        value(key)
            .map(|v| {
                v.parse()
                    .map_err(|e| config_error(format!("{key} {v:?}: {e}")))
            })
            .transpose()
    };
    Ok(TopicRetention {
        retention_ms: number("retention.ms")?,
        segment_ms: number("segment.ms")?,
        compact_only: value("cleanup.policy")
            .is_some_and(|p| TopicRetention::compact_only_policy(&p)),
    })
}

/// The offsets `group` has committed on each partition of `topic` (`None` where it has none).
pub fn committed_offsets(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_millis(ADMIN_TIMEOUT_MS))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// The number of partitions of `topic` as the brokers report it.
pub fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = kafka.client_config().create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_millis(ADMIN_TIMEOUT_MS))?;
    Ok(metadata
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_as_key_value() {
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".to_string(), "a=b".to_string())
        );
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
        assert!(is_secret_property("sasl.password"));
        let config = KafkaConfig::new("b:9092")
            .with_property("sasl.password", "s3cret")
            .with_property("security.protocol", "SASL_SSL");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");
        assert!(!is_secret_property("security.protocol"));
    }

    #[test]
    fn wait_returns_ready_futures_and_times_out_pending_ones() {
        assert_eq!(wait(async { 7 }, Duration::from_millis(10)), Some(7));
        assert_eq!(
            wait(std::future::pending::<()>(), Duration::from_millis(20)),
            None
        );
    }
}
