//! `wallet worker`: its flags (with environment fallbacks), signal handling and the metrics
//! endpoint around a [`Worker`].
//!
//! Owns the process-level concerns of running a worker: SIGINT/SIGTERM (the first asks for a
//! clean stop, a second one exits at once), serving `/metrics`, and turning flags into a
//! [`WorkerConfig`]. The pipeline itself is `worker::pipeline`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::kafka::{self, KafkaConfig};
use crate::metrics::{self, Metrics};
use crate::service::{EngineConfig, WalletService};
use crate::worker::{Worker, WorkerConfig};

/// Exit code when a second signal cuts the clean shutdown short.
pub const EXIT_FORCED: i32 = 130;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Transfer threads, and Redis connections in the pool (1-256).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 8)]
    pub threads: usize,
    /// Consumer group id; workers with the same group share the partitions.
    #[arg(long, env = "KAFKA_GROUP", default_value = "wallet-transfer-worker")]
    pub group: String,
    /// Topic the transfer requests are read from.
    #[arg(long, env = "TOPIC_REQUESTS", default_value = kafka::TOPIC_REQUESTS)]
    pub requests_topic: String,
    /// Topic the results are published to (key = transfer_id).
    #[arg(long, env = "TOPIC_RESULTS", default_value = kafka::TOPIC_RESULTS)]
    pub results_topic: String,
    /// Topic for input that cannot be understood (dead letters), with the error in a header.
    #[arg(long, env = "TOPIC_DLQ", default_value = kafka::TOPIC_DLQ)]
    pub dlq_topic: String,
    /// Partitions for the topics the worker creates when they are missing.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor for the topics the worker creates.
    #[arg(long, env = "TOPIC_REPLICATION", default_value_t = 1)]
    pub replication: i32,
    /// How often finished offsets are committed, in milliseconds.
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 1_000)]
    pub commit_interval_ms: u64,
    /// Consumer group session timeout in milliseconds: how long a dead worker keeps its
    /// partitions.
    #[arg(long, env = "SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Rebalance timeout in milliseconds (librdkafka max.poll.interval.ms): how long a
    /// rebalance may wait for members; a join still unanswered after this plus the session
    /// timeout is retried as a new member (at least the session timeout, above 15000).
    #[arg(long, env = "MAX_POLL_INTERVAL_MS", default_value_t = 30_000)]
    pub max_poll_interval_ms: u64,
    /// Longest delay between retries of a job that hit a transient error (Redis down, lock
    /// timeout), in milliseconds.
    #[arg(long, env = "RETRY_DELAY_MS_MAX", default_value_t = 2_000)]
    pub retry_delay_ms_max: u64,
    /// Address of the Prometheus endpoint (`/metrics`); `off` disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: String,
    /// Extra librdkafka property for every Kafka client, `key=value` (repeatable), e.g.
    /// `security.protocol=SASL_SSL`. Values of secret keys are never logged.
    #[arg(long = "kafka-property", short = 'X', value_parser = kafka::parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

impl WorkerArgs {
    pub fn to_config(&self, brokers: &str) -> WorkerConfig {
        WorkerConfig {
            kafka: KafkaConfig {
                brokers: brokers.to_string(),
                properties: self.kafka_properties.clone(),
            },
            group_id: self.group.clone(),
            requests_topic: self.requests_topic.clone(),
            results_topic: self.results_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            threads: self.threads,
            partitions: self.partitions,
            replication: self.replication,
            commit_interval_ms: self.commit_interval_ms,
            session_timeout_ms: self.session_timeout_ms,
            max_poll_interval_ms: self.max_poll_interval_ms,
            retry_delay_ms_max: self.retry_delay_ms_max,
            ..WorkerConfig::default()
        }
    }
}

/// Runs a worker until SIGINT/SIGTERM. Errors are one-line messages for the user.
pub fn run(
    args: &WorkerArgs,
    redis_url: &str,
    brokers: &str,
    engine: EngineConfig,
) -> Result<(), String> {
    let config = args.to_config(brokers);
    config.validate().map_err(|e| format!("--{e}"))?;
    for (key, value) in &config.kafka.properties {
        let shown = if kafka::is_secret_property(key) {
            "***"
        } else {
            value.as_str()
        };
        log::info!("librdkafka property {key}={shown}");
    }
    let service = WalletService::connect(redis_url, config.threads as u32, engine)
        .map_err(|e| e.to_string())?;
    let metrics = Metrics::new();
    let _server = match args.metrics_addr.as_str() {
        "off" => None,
        addr => {
            let server = metrics::serve(addr, metrics.clone()).map_err(|e| {
                format!("cannot serve metrics on --metrics-addr {addr}: {e} (use another address, or off)")
            })?;
            Some(server)
        }
    };
    let worker = Worker::new(config, service, metrics).map_err(|e| e.to_string())?;
    install_signals(worker.shutdown_handle())?;
    worker.run().map(drop).map_err(|e| e.to_string())
}

/// First SIGINT/SIGTERM sets `shutdown`; a second one exits at once with [`EXIT_FORCED`].
fn install_signals(shutdown: Arc<AtomicBool>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let forced = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, EXIT_FORCED, forced.clone())
            .and_then(|_| signal_hook::flag::register(signal, forced.clone()))
            .and_then(|_| signal_hook::flag::register(signal, shutdown.clone()))
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    // Log the request to stop once, from a plain thread (nothing to do in a signal handler).
    std::thread::Builder::new()
        .name("signal-log".into())
        .spawn(move || {
            while !shutdown.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            log::info!("stop requested: finishing in-flight work (signal again to exit at once)");
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
