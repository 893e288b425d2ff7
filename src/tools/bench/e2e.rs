//! `wallet bench --e2e`: [`run_e2e`] publishes requests to a running worker through Kafka,
//! waits for their results on the results topic and fills in the figures it can see:
//! throughput, publish-to-result latency and its legs, the broker's own floor, outcomes, the
//! money check, and on a cluster each primary's costs (the worker's). The engine figures stay
//! empty: the engine runs in the worker.
//!
//! Owns the e2e run's settings ([`E2eConfig`]), its producer, the warm-up request, the paced
//! publisher and the results reader's bookkeeping. Does not own how a topic is read
//! (`tools::results`), the split into legs and the broker floor (`tools::latency`), or the
//! report (`report`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::engine::cluster;
use crate::engine::message::TransferRequest;
use crate::engine::money::Currency;
use crate::engine::service::WalletService;
use crate::engine::setting::{SettingError, setters};
use crate::tools::bench::cost::{Counters, node_costs, node_counters};
use crate::tools::bench::direct::{DirectConfig, progress_bar};
use crate::tools::bench::error::BenchError;
use crate::tools::bench::figures::{ClusterFigures, LatencySummary, PathFigures};
use crate::tools::bench::report::{BenchReport, Tally, answer_name, count};
use crate::tools::bench::workload::{Pairs, Run};
use crate::tools::latency::{self, StageSplit, WallClock};
use crate::tools::results::{ReadError, ReadMessage, Start, TopicReader};
use crate::worker::kafka::{self, KafkaConfig};

/// Settings of an end-to-end run through Kafka and a running worker. `Default` plus the
/// `with_*` setters (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct E2eConfig {
    /// Brokers and extra librdkafka properties.
    pub kafka: KafkaConfig,
    /// Where the worker reads requests.
    pub requests_topic: String,
    /// Where the worker publishes results.
    pub results_topic: String,
    /// Requests published, and results waited for.
    pub transfers: u64,
    /// Wallets created for the run.
    pub wallets: u32,
    /// Every transfer goes from the first wallet to the second: one hot pair.
    pub hot: bool,
    /// How long to wait for all results, counted from the first publish.
    pub timeout: Duration,
    /// Requests per second to publish at; `None` publishes all at once.
    pub rate: Option<u32>,
    /// Draws a progress bar on stderr.
    pub progress: bool,
    /// Deletes the run's wallets, users, histories and outcome records afterwards.
    pub cleanup: bool,
}

impl Default for E2eConfig {
    fn default() -> Self {
        E2eConfig {
            kafka: KafkaConfig::new("127.0.0.1:9092"),
            requests_topic: kafka::TOPIC_REQUESTS.to_string(),
            results_topic: kafka::TOPIC_RESULTS.to_string(),
            transfers: 10_000,
            wallets: 10_000,
            hot: false,
            timeout: Duration::from_secs(300),
            rate: None,
            progress: false,
            cleanup: false,
        }
    }
}

setters!(E2eConfig {
    with_kafka => kafka: KafkaConfig,
    with_requests_topic => requests_topic: String,
    with_results_topic => results_topic: String,
    with_transfers => transfers: u64,
    with_wallets => wallets: u32,
    with_hot => hot: bool,
    with_timeout => timeout: Duration,
    with_rate => rate: Option<u32>,
    with_progress => progress: bool,
    with_cleanup => cleanup: bool,
});

impl E2eConfig {
    /// Checks the settings against their limits; the error names the setting and the rule.
    pub fn validate(&self) -> Result<(), SettingError> {
        DirectConfig {
            threads: 1,
            transfers: self.transfers,
            wallets: self.wallets,
            ..DirectConfig::default()
        }
        .validate()?;
        for (setting, topic) in [
            ("requests_topic", &self.requests_topic),
            ("results_topic", &self.results_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(SettingError::new(setting, "must not be empty"));
            }
        }
        if self.requests_topic == self.results_topic {
            return Err(SettingError::new(
                "results_topic",
                format!(
                    "must differ from requests_topic, both are {:?}",
                    self.requests_topic
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(SettingError::new("timeout_s", "must be at least 1 s"));
        }
        Ok(())
    }
}

/// Counts the messages the broker refused for good (after librdkafka's own retries).
#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().get_or_insert_with(|| e.to_string());
        }
    }
}

/// The error for a topic the run needs but the brokers do not have.
fn missing_topic(config: &E2eConfig, topic: &str) -> BenchError {
    BenchError::Setup(format!(
        "topic {topic} does not exist at {} (start the worker first: it creates its topics; or \
         check --requests-topic / --results-topic)",
        config.kafka.brokers
    ))
}

/// A reader of the results topic that sees only what is published after it was opened (see
/// [`Start::End`]), answering fetches promptly: it is the run's stopwatch. Checks first that
/// the requests topic exists too.
fn results_reader(config: &E2eConfig) -> Result<TopicReader, BenchError> {
    let requests = &config.requests_topic;
    let partitions = kafka::partition_count(&config.kafka, requests)
        .map_err(|e| BenchError::Kafka(format!("metadata of topic {requests}: {e}")))?;
    if partitions == 0 {
        return Err(missing_topic(config, requests));
    }
    TopicReader::open_prompt(&config.kafka, &config.results_topic, Start::End).map_err(
        |e| match e {
            ReadError::NoSuchTopic { topic, .. } => missing_topic(config, &topic),
            ReadError::Kafka { what, source } => BenchError::Kafka(format!("{what}: {source}")),
            other @ ReadError::Timeout { .. } => BenchError::Kafka(other.to_string()),
        },
    )
}

/// Nanoseconds since `origin`, plus one so that 0 means "not sent yet".
fn stamp(origin: Instant) -> u64 {
    (origin.elapsed().as_nanos().min(u128::from(u64::MAX - 1)) as u64) + 1
}

/// Publishes `config.transfers` requests to the requests topic of a running worker (keyed by
/// from_user), waits for their results on the results topic, and reports throughput and
/// end-to-end latency (publish to result received). The worker must share `service`'s Redis:
/// the run creates its wallets there and checks their balance sum afterwards.
pub fn run_e2e(service: &WalletService, config: &E2eConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let run = Run::create(service, "e2e", config.wallets, Pairs::Random)?;
    // Requests are built up front so that publishing measures Kafka, not request building.
    let mut rng = rand::rng();
    let requests: Vec<TransferRequest> = (0..config.transfers)
        .map(|n| {
            run.request(&mut rng, n, config.hot)
                .map_err(|e| BenchError::Setup(format!("bench request {n} is invalid: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let reader = results_reader(config)?;
    let producer = bench_producer(config)?;
    log::info!(
        "{}: {} wallets ready in {:.2}s; publishing {} requests to {}, reading {}",
        run.name,
        run.ids.len(),
        run.created_at.elapsed().as_secs_f64(),
        config.transfers,
        config.requests_topic,
        config.results_topic
    );
    // Before the clock starts: connections, metadata and assignment warmed by one real
    // request through the worker, then the broker's own floor with the same settings.
    warm_up(&producer, &reader, config, &run)?;
    let floor_rate = config.rate.unwrap_or(FLOOR_RATE_DEFAULT);
    let floor_messages = config.transfers.min(FLOOR_MESSAGES_DEFAULT);
    let floor = latency::broker_floor(
        &config.kafka,
        &producer,
        floor_messages,
        floor_rate,
        config.timeout,
    )?;
    // On a cluster, each primary's counters around the transfer phase (the worker's work).
    let before = service
        .cluster()
        .map(|_| node_counters(service))
        .transpose()?;
    let read = publish_and_read(&producer, &reader, config, &run, &requests)?;
    refresh_map(service);
    let cluster = e2e_cluster_figures(service, before, &requests)?;
    let end = run.end(service, config.cleanup)?;
    let total = read.tally;
    Ok(BenchReport {
        mode: "e2e",
        run: end.name,
        threads: 0,
        wallets: config.wallets,
        hot: config.hot,
        pairs: Pairs::Random,
        publish_rate: config.rate,
        transfers: total.finished,
        elapsed: read.last.saturating_duration_since(read.origin),
        latency: LatencySummary::from_histogram_us(&total.latency_us),
        engine: None,
        outcomes: total.outcomes,
        errors: total.errors,
        transient_retries: total.retries,
        balance: Some(end.balance),
        cleaned_keys: end.cleaned_keys,
        redis: None,
        retained: None,
        cluster,
        stages: Some(read.stages.summary()),
        broker_floor: Some(floor),
    })
}

/// On a cluster, reads the slot map again: a primary may have failed over during the run, so
/// the counters and the balance sum go to the primaries of now (a failed node's counters
/// count nothing, see `node_costs`).
fn refresh_map(service: &WalletService) {
    if let Err(e) = service.topology().refresh() {
        log::warn!("reading the slot map again after the run: {e}");
    }
}

/// The e2e run's producer: a short linger, idempotent, counting failed deliveries.
fn bench_producer(config: &E2eConfig) -> Result<ThreadedProducer<DeliveryCounter>, BenchError> {
    config
        .kafka
        .client_config()
        .set("linger.ms", BENCH_LINGER_MS)
        .set("enable.idempotence", "true")
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| BenchError::Kafka(format!("producer: {e}")))
}

/// On a Redis Cluster (`before` holds each primary's counters from the start of the
/// transfer phase): each primary's costs over that phase, which are the worker's (and
/// whatever else ran there meanwhile), and the requests split by path from their wallets'
/// slots. The engine figures stay empty: the engine runs in the worker.
fn e2e_cluster_figures(
    service: &WalletService,
    before: Option<Vec<(String, Counters)>>,
    requests: &[TransferRequest],
) -> Result<Option<ClusterFigures>, BenchError> {
    let Some(before) = before else {
        return Ok(None);
    };
    let slot = cluster::keys::wallet_slot;
    let cross = requests
        .iter()
        .filter(|r| slot(&r.from_user) != slot(&r.to_user))
        .count() as u64;
    let path = |transfers| PathFigures {
        transfers,
        ..PathFigures::default()
    };
    Ok(Some(ClusterFigures {
        primaries: node_costs(&before, &node_counters(service)?),
        same_slot: path(requests.len() as u64 - cross),
        cross_slot: path(cross),
    }))
}

/// The bench producer's `linger.ms`: short, so the publish leg is the broker's, not batching's.
const BENCH_LINGER_MS: &str = "1";

/// Messages of the broker floor measurement, at most.
const FLOOR_MESSAGES_DEFAULT: u64 = 300;
/// Publish rate of the floor measurement when the run itself has none (a burst).
const FLOOR_RATE_DEFAULT: u32 = 1_000;

/// Sends one request that is not part of the run (`<run>_warmup`, 0.01 between the run's first
/// two wallets) and waits for its result: afterwards the producer, the reader and the worker's
/// path are connected, so the run's clock measures transfers, not connection setup.
fn warm_up(
    producer: &ThreadedProducer<DeliveryCounter>,
    reader: &TopicReader,
    config: &E2eConfig,
    run: &Run,
) -> Result<(), BenchError> {
    let id = format!("{}_warmup", run.name);
    let request = TransferRequest::new(&id, &run.ids[0], &run.ids[1], "0.01", Currency::USD)
        .map_err(|e| BenchError::Setup(format!("warm-up request: {e}")))?;
    let payload = request.to_json();
    producer
        .send(
            BaseRecord::to(&config.requests_topic)
                .key(request.from_user.as_str())
                .payload(payload.as_str()),
        )
        .map_err(|(e, _)| BenchError::Kafka(format!("publishing the warm-up request: {e}")))?;
    let deadline = Instant::now() + config.timeout;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = reader.next(Duration::from_millis(100))
            && m.result().is_ok_and(|r| r.transfer_id == id)
        {
            return Ok(());
        }
    }
    Err(BenchError::Timeout(format!(
        "the warm-up request got no result on {} within {} s (is a worker running on {}?)",
        config.results_topic,
        config.timeout.as_secs(),
        config.requests_topic
    )))
}

/// Publishes `requests` on one thread while reading their results on this one, until every
/// result is in, the timeout passes, or publishing fails. Fails when a request was not
/// delivered or a result is missing.
fn publish_and_read(
    producer: &ThreadedProducer<DeliveryCounter>,
    reader: &TopicReader,
    config: &E2eConfig,
    run: &Run,
    requests: &[TransferRequest],
) -> Result<ReadResults, BenchError> {
    let origin = Instant::now();
    let sent: Vec<AtomicU64> = requests.iter().map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let bar = progress_bar(config.transfers, config.progress);
    let mut read = ReadResults::new(run.transfer_prefix(), requests.len(), origin);
    let publish = std::thread::scope(|scope| {
        let publisher =
            scope.spawn(|| publish_requests(producer, config, requests, &sent, origin, &stop));
        read_results(reader, config, &mut read, &sent, &bar, &stop);
        stop.store(true, Ordering::SeqCst);
        publisher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    bar.finish_and_clear();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer.context().first_error.lock().clone();
        return Err(BenchError::Kafka(format!(
            "{failed} of {} requests were not delivered to {}: {}",
            config.transfers,
            config.requests_topic,
            first.unwrap_or_default()
        )));
    }
    publish?;
    check_read(&read, config, &run.name)?;
    Ok(read)
}

/// Logs repeated results; fails when results are missing.
fn check_read(read: &ReadResults, config: &E2eConfig, run: &str) -> Result<(), BenchError> {
    if read.repeated > 0 {
        log::info!(
            "{run}: {} repeated results (redelivery) were not counted again",
            read.repeated
        );
    }
    if read.tally.finished < config.transfers {
        return Err(BenchError::Timeout(format!(
            "{} of {} results arrived on {} within {} s (is a worker running on {} with the \
             same Redis?)",
            read.tally.finished,
            config.transfers,
            config.results_topic,
            config.timeout.as_secs(),
            config.requests_topic
        )));
    }
    Ok(())
}

/// Sends every request, recording its send time just before handing it to librdkafka, then
/// flushes. Stops early when `stop` is set (the reader gave up).
fn publish_requests(
    producer: &ThreadedProducer<DeliveryCounter>,
    config: &E2eConfig,
    requests: &[TransferRequest],
    sent: &[AtomicU64],
    origin: Instant,
    stop: &AtomicBool,
) -> Result<(), BenchError> {
    for (i, (request, sent_at)) in requests.iter().zip(sent).enumerate() {
        if let Some(rate) = config.rate {
            // Request i leaves at origin + i / rate.
            let due = origin + Duration::from_secs_f64(i as f64 / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let payload = request.to_json();
        let mut record = Some(
            BaseRecord::to(&config.requests_topic)
                .key(request.from_user.as_str())
                .payload(payload.as_str()),
        );
        sent_at.store(stamp(origin), Ordering::SeqCst);
        while let Some(r) = record.take() {
            match producer.send(r) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    record = Some(r);
                }
                Err((e, _)) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(BenchError::Kafka(format!(
                        "publishing {} to {}: {e}",
                        request.transfer_id, config.requests_topic
                    )));
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
    let left = config.timeout.saturating_sub(origin.elapsed());
    producer
        .flush(left.max(Duration::from_secs(1)))
        .map_err(|e| {
            stop.store(true, Ordering::SeqCst);
            BenchError::Kafka(format!(
                "flushing requests to {}: {e}",
                config.requests_topic
            ))
        })
}

/// What the results reader saw.
struct ReadResults {
    /// Transfer ids of this run are this prefix and the request's number.
    prefix: String,
    tally: Tally,
    /// Which requests have had a result.
    seen: Vec<bool>,
    /// When publishing started.
    origin: Instant,
    /// When the last awaited result arrived.
    last: Instant,
    /// Results of this run seen more than once (a redelivered request answered again).
    repeated: u64,
    /// Wall-clock view of `origin`, for the legs.
    clock: WallClock,
    stages: StageSplit,
}

impl ReadResults {
    fn new(prefix: String, requests: usize, origin: Instant) -> ReadResults {
        ReadResults {
            prefix,
            tally: Tally::new(),
            seen: vec![false; requests],
            origin,
            last: origin,
            repeated: 0,
            clock: WallClock::now(),
            stages: StageSplit::default(),
        }
    }

    /// Counts one message: the first result of one of this run's requests is tallied, with its
    /// latency from `sent` (send stamps, see [`stamp`]) to when it was received. Returns whether
    /// it was; other messages and repeated results are not.
    fn record(&mut self, m: &ReadMessage, sent: &[AtomicU64]) -> bool {
        let Ok(result) = m.result() else {
            return false;
        };
        let Some(n) = result
            .transfer_id
            .strip_prefix(&self.prefix)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < self.seen.len())
        else {
            return false;
        };
        if std::mem::replace(&mut self.seen[n], true) {
            self.repeated += 1;
            return false;
        }
        let sent_at = sent[n].load(Ordering::SeqCst);
        if sent_at > 0 {
            let sent_at = self.origin + Duration::from_nanos(sent_at - 1);
            self.tally
                .latency(m.received.saturating_duration_since(sent_at));
            if let Some(produced_ms) = m.timestamp_ms {
                let processed_ms = (result.processed_at * 1000.0).round() as i64;
                let received_ms = self.clock.ms(m.received);
                let sent_ms = self.clock.ms(sent_at);
                self.stages.record(latency::legs(
                    sent_ms,
                    processed_ms,
                    produced_ms,
                    received_ms,
                ));
            }
        }
        let name = answer_name(result.status, result.reason, result.duplicate);
        count(&mut self.tally.outcomes, name);
        self.tally.finished += 1;
        self.last = m.received;
        true
    }
}

/// Reads the results topic until every request of this run has its result, the deadline
/// passes, or the publisher fails. Results of other runs are skipped.
fn read_results(
    reader: &TopicReader,
    config: &E2eConfig,
    read: &mut ReadResults,
    sent: &[AtomicU64],
    bar: &ProgressBar,
    stop: &AtomicBool,
) {
    let deadline = read.origin + config.timeout;
    while read.tally.finished < config.transfers
        && Instant::now() < deadline
        && !stop.load(Ordering::SeqCst)
    {
        match reader.next(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => bar.suspend(|| log::warn!("reading {}: {e}", config.results_topic)),
            Some(Ok(m)) if read.record(&m, sent) => bar.inc(1),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::engine::message::{FailureReason, Status};

    fn result_message(transfer_id: &str, duplicate: bool, received: Instant) -> ReadMessage {
        let result = crate::engine::message::TransferCompleted {
            transfer_id: transfer_id.into(),
            status: Status::Failed,
            processed_at: 0.0,
            from_user: "a".into(),
            to_user: "b".into(),
            amount: "1.00".into(),
            currency: "USD".into(),
            idempotency_key: transfer_id.into(),
            reason: Some(FailureReason::InsufficientFunds),
            duplicate,
        };
        ReadMessage {
            partition: 0,
            offset: 0,
            key: None,
            payload: serde_json::to_vec(&result).unwrap(),
            headers: Default::default(),
            received,
            timestamp_ms: None,
        }
    }

    #[test]
    fn the_reader_counts_the_first_result_of_each_request_of_its_run() {
        let origin = Instant::now();
        let sent: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        // Request 1 left 2 ms after the origin, its result came 5 ms after the origin.
        sent[1].store(2_000_000 + 1, Ordering::SeqCst);
        let at = origin + Duration::from_millis(5);
        let mut read = ReadResults::new("e2e_abc_t".into(), 3, origin);
        assert!(read.record(&result_message("e2e_abc_t1", false, at), &sent));
        assert!(!read.record(&result_message("e2e_abc_t1", true, at), &sent));
        assert!(!read.record(&result_message("e2e_xyz_t2", false, at), &sent));
        assert!(!read.record(&result_message("e2e_abc_t3", false, at), &sent));
        let mut junk = result_message("e2e_abc_t0", false, at);
        junk.payload = b"not a result".to_vec();
        assert!(!read.record(&junk, &sent));
        assert!(read.record(&result_message("e2e_abc_t0", true, at), &sent));
        assert_eq!((read.tally.finished, read.repeated), (2, 1));
        assert_eq!(read.last, at);
        assert_eq!(
            read.tally.outcomes,
            BTreeMap::from([
                ("FAILED:insufficient_funds".to_string(), 1),
                ("FAILED:insufficient_funds (duplicate)".to_string(), 1),
            ])
        );
        // Only request 1 had a send stamp: one latency of 3 ms.
        let latency = LatencySummary::from_histogram_us(&read.tally.latency_us);
        assert_eq!(latency.samples, 1);
        assert!((latency.max_ms - 3.0).abs() < 0.01, "{latency:?}");
    }
}
