//! The Kafka worker run inside your own program: its own settings, its own threads, and a
//! shutdown handle to stop it cleanly (in-flight transfers finish, results are flushed,
//! offsets committed).
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 KAFKA_BROKERS=127.0.0.1:9092 cargo run --example worker
//! ```
//!
//! Topic and group names come from `TOPIC_REQUESTS`, `TOPIC_RESULTS`, `TOPIC_DLQ`, `TOPIC_LEDGER` and
//! `KAFKA_GROUP` when set (else the defaults of `wallet worker`); the worker creates its
//! topics when they are missing. To show the worker at work, the program publishes one request
//! and waits for its result with the crate's tools (`wallet_transfer::tools`); in production,
//! requests come from your producers and results go to your consumers.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wallet_transfer::tools::ops;
use wallet_transfer::tools::ops::{ReadError, ResultWatcher};
use wallet_transfer::worker::{KafkaConfig, Metrics, Worker, WorkerConfig};
use wallet_transfer::{Amount, Currency, EngineConfig, NewWallet, TransferRequest, WalletService};

fn main() -> ExitCode {
    // Errors print with Display: they say what happened and what to do.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker example: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let redis_url = env("REDIS_URL", "redis://127.0.0.1:6379");
    let kafka = KafkaConfig::new(&env("KAFKA_BROKERS", "127.0.0.1:9092"));
    let defaults = WorkerConfig::default();
    // Settings from the defaults with the `with_*` setters: a setting added in a later
    // release does not break this code.
    let config = WorkerConfig::default()
        .with_kafka(kafka.clone())
        .with_requests_topic(env("TOPIC_REQUESTS", &defaults.requests_topic))
        .with_results_topic(env("TOPIC_RESULTS", &defaults.results_topic))
        .with_dlq_topic(env("TOPIC_DLQ", &defaults.dlq_topic))
        .with_ledger_topic(env("TOPIC_LEDGER", &defaults.ledger_topic))
        .with_group_id(env("KAFKA_GROUP", &defaults.group_id))
        .with_threads(2)
        .with_partitions(1);
    let (requests_topic, results_topic) =
        (config.requests_topic.clone(), config.results_topic.clone());

    // The engine the worker runs transfers on: one Redis connection per transfer thread.
    let service =
        WalletService::connect(&redis_url, config.threads as u32, EngineConfig::default())?;
    // As `wallet worker` does: fail now, naming what to grant, if the Redis user lacks a
    // permission the worker needs (rather than on the first transfer).
    service.check_permissions()?;
    let run = format!("{:x}", std::process::id());
    let (alice, bob) = (format!("alice_{run}"), format!("bob_{run}"));
    service.create_wallet(&NewWallet::new(
        &alice,
        Amount::parse("100.00")?,
        Currency::USD,
    ))?;
    service.create_wallet(&NewWallet::new(&bob, Amount::ZERO, Currency::USD))?;

    // Metrics count what the worker does; serve them with `worker::serve` to get
    // /metrics, /healthz and /readyz, or just read them, as here.
    let metrics = Metrics::new();
    let worker = Worker::new(config, service.clone(), metrics.clone())?;
    let stop = worker.shutdown_handle();
    let running = std::thread::spawn(move || worker.run());
    println!("worker started: {requests_topic} -> {results_topic}");

    // Listen for results before publishing (the reader starts at the end of the topic). The
    // worker creates the topics as it starts, so wait for them.
    let watcher = results_watcher(&kafka, &results_topic)?;
    let request = TransferRequest::new(&format!("tx_{run}"), &alice, &bob, "25.00", Currency::USD)?;
    ops::publish_request(&kafka, &requests_topic, &request, Duration::from_secs(30))?;
    let result = watcher
        .wait_for(&request.transfer_id, Duration::from_secs(60))?
        .ok_or("no result within 60 s")?;
    println!(
        "result {}: {} duplicate={}; balances {alice} {}, {bob} {}",
        result.transfer_id,
        result.status.as_str(),
        result.duplicate,
        service.balance(&alice)?,
        service.balance(&bob)?,
    );

    // Stop: polling stops, in-flight work finishes, results are flushed, offsets committed,
    // and `run` returns what the worker did.
    stop.store(true, Ordering::SeqCst);
    let report = running.join().map_err(|_| "the worker thread panicked")??;
    println!(
        "worker stopped: {} answered, {} dead-lettered, committed {:?}; summary {}",
        report.processed,
        report.dead_lettered,
        report.committed,
        metrics.summary()
    );
    Ok(())
}

/// A watcher of the results topic, once the worker has created it.
fn results_watcher(kafka: &KafkaConfig, topic: &str) -> Result<ResultWatcher, ReadError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ResultWatcher::start(kafka, topic) {
            Err(ReadError::NoSuchTopic { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}
