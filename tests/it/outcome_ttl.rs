//! The outcome ttl against the requests topic's configs on a real tansu broker: what the
//! brokers report (`retention.ms`, `segment.ms`, `cleanup.policy`), the refusal of a compacted
//! topic, and a retention raised while the worker runs (a derived ttl grows for new records; a
//! ttl set by hand that no longer covers the topic stops the worker).
//!
//! Owns `alter_topic_config`, an IncrementalAlterConfigs call through librdkafka's C API: tansu
//! 0.6 answers only that API, and rdkafka 0.39 offers only the older AlterConfigs.

use std::ffi::{CStr, CString};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::faults::{self, wait_recorded};
use crate::support::stack::Stack;
use crate::support::wait_until;
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use wallet_transfer::worker::kafka::{self, KafkaConfig, TopicSpec};
use wallet_transfer::worker::metrics::Metrics;
use wallet_transfer::worker::outcome_ttl::TopicRetention;
use wallet_transfer::worker::{Worker, WorkerConfig, WorkerError};
use wallet_transfer::{Currency, EngineConfig, TransferRequest};

/// Sets `configs` on `topic` with IncrementalAlterConfigs (op SET); panics on any error.
fn alter_topic_config(kafka: &KafkaConfig, topic: &str, configs: &[(&str, &str)]) {
    let client: BaseConsumer = kafka.client_config().create().expect("client");
    let rk = client.client().native_ptr();
    let name = CString::new(topic).unwrap();
    // SAFETY: every pointer passed is live for the call; the resource is handed to librdkafka
    // by IncrementalAlterConfigs and freed with the options, queue and event afterwards.
    unsafe {
        let resource = rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            name.as_ptr(),
        );
        for (key, value) in configs {
            let (key, value) = (CString::new(*key).unwrap(), CString::new(*value).unwrap());
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                key.as_ptr(),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                value.as_ptr(),
            );
            assert!(error.is_null(), "add config {key:?}");
        }
        let queue = rd::rd_kafka_queue_new(rk);
        let mut resources = [resource];
        rd::rd_kafka_IncrementalAlterConfigs(
            rk,
            resources.as_mut_ptr(),
            1,
            std::ptr::null(),
            queue,
        );
        let event = rd::rd_kafka_queue_poll(queue, 30_000);
        assert!(
            !event.is_null(),
            "no IncrementalAlterConfigs answer within 30 s"
        );
        let error = rd::rd_kafka_event_error(event);
        let text = CStr::from_ptr(rd::rd_kafka_event_error_string(event))
            .to_string_lossy()
            .into_owned();
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
        let mut count = 0usize;
        let answered = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        let resource_error = (count == 1).then(|| rd::rd_kafka_ConfigResource_error(*answered));
        rd::rd_kafka_event_destroy(event);
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_ConfigResource_destroy(resource);
        assert_eq!(
            error,
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "{text}"
        );
        assert_eq!(
            resource_error,
            Some(rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR),
            "altering {topic}"
        );
    }
}

/// A requests topic of its own with `configs`, set as the stack's requests topic.
fn requests_topic(stack: &mut Stack, suffix: &str, configs: &[(&str, &str)]) -> String {
    let topic = format!("{}_{suffix}", stack.topics.requests);
    let spec = configs
        .iter()
        .fold(TopicSpec::new(&topic), |spec, (k, v)| spec.with(k, v));
    kafka::ensure_topics(&stack.kafka(), &[spec], 1, 1).unwrap();
    stack.topics.requests = topic.clone();
    topic
}

/// The PTTL of `request`'s outcome record.
fn record_pttl_ms(stack: &Stack, request: &TransferRequest) -> i64 {
    redis::cmd("PTTL")
        .arg(format!("transfer:{}", request.idempotency_key))
        .query(&mut stack.redis.conn())
        .unwrap()
}

#[test]
fn a_topic_reports_its_segment_ms_and_a_cleanup_policy_that_only_compacts() {
    let mut stack = Stack::start(1);
    let configs = [
        ("retention.ms", "60000"),
        ("segment.ms", "1000"),
        ("cleanup.policy", "compact"),
    ];
    let topic = requests_topic(&mut stack, "compact", &configs);
    assert_eq!(
        kafka::topic_retention(&stack.kafka(), &topic).unwrap(),
        TopicRetention {
            retention_ms: Some(60_000),
            segment_ms: Some(1_000),
            compact_only: true,
        }
    );
    alter_topic_config(
        &stack.kafka(),
        &topic,
        &[("cleanup.policy", "compact,delete")],
    );
    let altered = kafka::topic_retention(&stack.kafka(), &topic).unwrap();
    assert!(!altered.compact_only, "{altered:?}");
}

#[test]
fn a_compacted_requests_topic_is_refused_unless_records_are_kept_for_ever() {
    let mut stack = Stack::start(1);
    let topic = requests_topic(&mut stack, "compacted", &[("cleanup.policy", "compact")]);
    let config = WorkerConfig::default()
        .with_kafka(stack.kafka())
        .with_requests_topic(topic)
        .with_results_topic(stack.topics.results.clone())
        .with_dlq_topic(stack.topics.dlq.clone())
        .with_group_id(stack.topics.group.clone());
    let service = stack.redis.service(2, EngineConfig::default());
    let worker = Worker::new(config, service, Metrics::new()).unwrap();
    let stop = worker.shutdown_handle();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || done_tx.send(worker.run()));
    // A worker that wrongly starts runs until stopped: stop it and fail.
    let result = done_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            stop.store(true, Ordering::SeqCst);
            panic!("the worker started on a compacted requests topic")
        });
    match result {
        Err(WorkerError::Config(e)) => {
            assert_eq!(e.setting, "outcome_ttl_ms");
            assert!(e.rule.contains("cleanup.policy is compact"), "{e}");
            assert!(e.rule.contains("set the ttl to forever"), "{e}");
        }
        other => panic!("want a refused derivation, got {other:?}"),
    }
}

#[test]
fn a_retention_raised_while_running_raises_the_ttl_of_new_records() {
    let mut stack = Stack::start(1);
    let topic = requests_topic(
        &mut stack,
        "raised",
        &[("retention.ms", "60000"), ("segment.ms", "1000")],
    );
    let ids = faults::wallets(&stack, "rr", 2, "100.00");
    let request = |n: usize| {
        TransferRequest::new(&format!("rr_{n}"), &ids[0], &ids[1], "1.00", Currency::USD).unwrap()
    };
    let (before, after) = (request(1), request(2));
    let worker = stack.spawn_worker(&[
        "--outcome-ttl-margin-ms",
        "0",
        "--outcome-ttl-check-interval-ms",
        "200",
    ]);
    stack.publish_requests(std::slice::from_ref(&before));
    wait_recorded(&stack, std::slice::from_ref(&before), 1, 60_000);
    let pttl_ms = record_pttl_ms(&stack, &before);
    assert!(pttl_ms <= 61_000 && pttl_ms > 30_000, "{pttl_ms}");
    alter_topic_config(&stack.kafka(), &topic, &[("retention.ms", "600000")]);
    wait_until("the ttl raised", 30_000, || {
        worker
            .log()
            .contains("outcome ttl raised from 61000 ms to 601000 ms")
    });
    stack.publish_requests(std::slice::from_ref(&after));
    wait_recorded(&stack, std::slice::from_ref(&after), 1, 60_000);
    let pttl_ms = record_pttl_ms(&stack, &after);
    assert!(pttl_ms <= 601_000 && pttl_ms > 570_000, "{pttl_ms}");
}

#[test]
fn a_hand_set_ttl_the_topic_outgrows_while_running_stops_the_worker() {
    let mut stack = Stack::start(1);
    let topic = requests_topic(
        &mut stack,
        "outgrown",
        &[("retention.ms", "60000"), ("segment.ms", "1000")],
    );
    let mut worker = stack.spawn_worker(&[
        "--outcome-ttl-ms",
        "70000",
        "--outcome-ttl-margin-ms",
        "0",
        "--outcome-ttl-check-interval-ms",
        "200",
    ]);
    wait_until("the worker's partition", 60_000, || {
        worker.metric("wallet_assigned_partitions") >= 1.0
    });
    alter_topic_config(&stack.kafka(), &topic, &[("retention.ms", "600000")]);
    let code = worker.wait_exit(30_000);
    let log = worker.log();
    assert!(matches!(code, Some(c) if c != 0), "{code:?}\n{log}");
    // The error a start with these settings gives.
    for part in [
        "invalid worker setting: outcome_ttl_ms must cover",
        "at least 601000 ms",
        "got 70000",
        "move the money again",
    ] {
        assert!(log.contains(part), "{part}:\n{log}");
    }
}
