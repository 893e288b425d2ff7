//! The Kafka plumbing against a real tansu broker: topic creation and committed offsets.

use crate::support::Tansu;
use wallet_transfer::worker::kafka::{self, KafkaConfig, TopicSpec};

#[test]
fn topics_are_created_once_with_the_asked_partitions() {
    let tansu = Tansu::start();
    let config = KafkaConfig::new(&tansu.brokers());
    let topics = [TopicSpec::new("t.one"), TopicSpec::new("t.two")];
    kafka::ensure_topics(&config, &topics, 6, 1).expect("create topics");
    // A second call finds them and changes nothing.
    kafka::ensure_topics(&config, &topics[..1], 3, 1).expect("existing topics are fine");
    assert_eq!(kafka::partition_count(&config, "t.one").unwrap(), 6);
    assert_eq!(kafka::partition_count(&config, "t.two").unwrap(), 6);
    let committed = kafka::committed_offsets(&config, "nobody", "t.one", 6).unwrap();
    assert_eq!(committed.len(), 6);
    assert!(committed.iter().all(|(_, o)| o.is_none()), "{committed:?}");
}

#[test]
fn a_topic_created_with_a_retention_reports_it() {
    let tansu = Tansu::start();
    let config = KafkaConfig::new(&tansu.brokers());
    let topic = TopicSpec::new("t.kept").with("retention.ms", "3600000");
    kafka::ensure_topics(&config, &[topic], 1, 1).expect("create topic");
    assert_eq!(
        kafka::topic_retention_ms(&config, "t.kept").expect("describe configs"),
        Some(3_600_000)
    );
}
