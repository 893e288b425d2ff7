//! `wallet worker`: the flags of the Kafka worker (each with an environment fallback and its
//! default taken from [`WorkerConfig::default`]), turned into a checked [`WorkerConfig`].
//!
//! Owns flag names and help text. Does not own the settings' defaults or rules (the library's
//! `worker::config`) nor running the worker (`worker::command`).

use clap::Args;
use wallet_transfer::worker::WorkerConfig;
use wallet_transfer::worker::command::RedisTarget;
use wallet_transfer::worker::kafka::{self, KafkaConfig};

use crate::cli::{Failure, GlobalOpts, OutcomeTtl, flag_error};

/// Where the metrics endpoint listens when none is given.
pub const METRICS_ADDR_DEFAULT: &str = "127.0.0.1:9898";

fn defaults() -> WorkerConfig {
    WorkerConfig::default()
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Stops cleanly on SIGINT/SIGTERM: in-flight transfers finish, results are \
                  flushed and offsets committed; a second signal exits at once.\n\
                  Metrics: curl http://127.0.0.1:9898/metrics\n\
                  On a Redis Cluster: wallet worker --redis-cluster 10.0.0.5:7000,10.0.0.6:7000 \
                  --wait-replicas 1 (a replica per primary; see --wait-replicas for what 0 risks)\n\
                  Example: wallet worker --threads 8 --group wallet-transfer-worker"
)]
pub struct WorkerArgs {
    /// Transfer threads, and Redis connections in the pool (1-256)
    #[arg(long, env = "WORKER_THREADS", default_value_t = defaults().threads)]
    pub threads: usize,
    /// Consumer group id; workers with the same group share the partitions
    #[arg(long, env = "KAFKA_GROUP", default_value_t = defaults().group_id)]
    pub group: String,
    /// Topic the transfer requests are read from
    #[arg(long, env = "TOPIC_REQUESTS", default_value_t = defaults().requests_topic)]
    pub requests_topic: String,
    /// Topic the results are published to (key = transfer_id)
    #[arg(long, env = "TOPIC_RESULTS", default_value_t = defaults().results_topic)]
    pub results_topic: String,
    /// Topic for input that cannot be understood (dead letters), with the error in a header
    #[arg(long, env = "TOPIC_DLQ", default_value_t = defaults().dlq_topic)]
    pub dlq_topic: String,
    /// Topic every history entry of a completed transfer is published to (key = wallet id),
    /// created with retention.ms=-1: the durable ledger `wallet history` reads trimmed entries
    /// from. Written at least once: readers deduplicate by wallet and version
    #[arg(long, env = "TOPIC_LEDGER", default_value_t = defaults().ledger_topic)]
    pub ledger_topic: String,
    /// Partitions for the topics the worker creates when they are missing
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = defaults().partitions)]
    pub partitions: i32,
    /// Replication factor for the topics the worker creates
    #[arg(long, env = "TOPIC_REPLICATION", default_value_t = defaults().replication)]
    pub replication: i32,
    /// How often finished offsets are committed, in milliseconds
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = defaults().commit_interval_ms)]
    pub commit_interval_ms: u64,
    /// Consumer group session timeout in milliseconds: how long a dead worker keeps its
    /// partitions
    #[arg(long, env = "SESSION_TIMEOUT_MS", default_value_t = defaults().session_timeout_ms)]
    pub session_timeout_ms: u64,
    /// Rebalance timeout in milliseconds (librdkafka max.poll.interval.ms): how long a
    /// rebalance may wait for members; a join still unanswered after this plus the session
    /// timeout is retried as a new member (at least the session timeout, above 15000)
    #[arg(long, env = "MAX_POLL_INTERVAL_MS", default_value_t = defaults().max_poll_interval_ms)]
    pub max_poll_interval_ms: u64,
    /// Longest delay between retries of a job that hit a transient error (Redis down, lock
    /// timeout), in milliseconds
    #[arg(long, env = "RETRY_DELAY_MS_MAX", default_value_t = defaults().retry_delay_ms_max)]
    pub retry_delay_ms_max: u64,
    /// Time from the first SIGINT/SIGTERM until the worker has exited, in milliseconds, whatever
    /// is down: what can finish finishes, what is answered is committed, the rest is left
    /// uncommitted for the next owner (keep it under the orchestrator's kill timeout)
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = defaults().shutdown_timeout_ms)]
    pub shutdown_timeout_ms: u64,
    /// How much longer than the requests topic keeps a message an outcome record lives, in
    /// milliseconds: the longest consumer lag it covers. With --outcome-ttl-ms auto the ttl is
    /// the topic's retention.ms plus its segment.ms (Kafka deletes whole segments) plus this; a
    /// ttl set by hand must be at least that
    #[arg(long, env = "OUTCOME_TTL_MARGIN_MS", default_value_t = defaults().outcome_ttl_margin_ms)]
    pub outcome_ttl_margin_ms: u64,
    /// How often, in milliseconds, the worker reads the requests topic's retention.ms,
    /// segment.ms and cleanup.policy again (at most 3600000): a derived outcome ttl grows for
    /// new records when they need more (it never shrinks); a ttl set by hand that no longer
    /// covers them stops the worker with the error it would give at start
    #[arg(long, env = "OUTCOME_TTL_CHECK_INTERVAL_MS", default_value_t = defaults().outcome_ttl_check_interval_ms)]
    pub outcome_ttl_check_interval_ms: u64,
    /// On a Redis Cluster: how often, in milliseconds, the worker sweeps for cross-slot
    /// transfers a crash left half done (PENDING) and finishes them; 0 turns the sweep off
    /// (the next delivery of such a request still finishes it; `wallet recover` too). No
    /// sweep runs on one Redis
    #[arg(long, env = "RECOVER_INTERVAL_MS", default_value_t = defaults().recover_interval_ms)]
    pub recover_interval_ms: u64,
    /// Most PENDING transfers one recovery sweep finishes (1-100000)
    #[arg(long, env = "RECOVER_BATCH", default_value_t = defaults().recover_batch)]
    pub recover_batch: usize,
    /// Address of the Prometheus endpoint (`/metrics`); `off` disables it
    #[arg(long, env = "METRICS_ADDR", default_value = METRICS_ADDR_DEFAULT)]
    pub metrics_addr: String,
    /// Extra librdkafka property for every Kafka client, `key=value` (repeatable), e.g.
    /// `security.protocol=SASL_SSL`. Values of secret keys are never logged
    #[arg(long = "kafka-property", short = 'X', value_parser = kafka::parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

impl WorkerArgs {
    /// The worker settings from the flags, checked; an error names the flag and the rule.
    pub fn to_config(&self, brokers: &str) -> Result<WorkerConfig, Failure> {
        let config = WorkerConfig::default()
            .with_kafka(KafkaConfig::new(brokers).with_properties(self.kafka_properties.clone()))
            .with_group_id(self.group.clone())
            .with_requests_topic(self.requests_topic.clone())
            .with_results_topic(self.results_topic.clone())
            .with_dlq_topic(self.dlq_topic.clone())
            .with_ledger_topic(self.ledger_topic.clone())
            .with_threads(self.threads)
            .with_partitions(self.partitions)
            .with_replication(self.replication)
            .with_commit_interval_ms(self.commit_interval_ms)
            .with_session_timeout_ms(self.session_timeout_ms)
            .with_max_poll_interval_ms(self.max_poll_interval_ms)
            .with_retry_delay_ms_max(self.retry_delay_ms_max)
            .with_shutdown_timeout_ms(self.shutdown_timeout_ms)
            .with_outcome_ttl_margin_ms(self.outcome_ttl_margin_ms)
            .with_outcome_ttl_check_interval_ms(self.outcome_ttl_check_interval_ms)
            .with_recover_interval_ms(self.recover_interval_ms)
            .with_recover_batch(self.recover_batch);
        config.validate().map_err(flag_error)?;
        Ok(config)
    }
}

/// Runs the worker until SIGINT/SIGTERM.
pub fn run(global: &GlobalOpts, args: WorkerArgs) -> Result<(), Failure> {
    let engine = global.engine_config()?;
    let config = args
        .to_config(&global.brokers)?
        .with_outcome_ttl_auto(global.outcome_ttl == OutcomeTtl::Auto);
    let metrics_addr = (args.metrics_addr != "off").then_some(args.metrics_addr.as_str());
    let redis = match &global.redis_cluster {
        None => RedisTarget::Single {
            url: global.redis_url.clone(),
        },
        Some(seeds) => RedisTarget::Cluster {
            seeds: seeds.0.clone(),
            template_url: global.redis_url.clone(),
        },
    };
    wallet_transfer::worker::command::run(config, &redis, engine, metrics_addr)
        .map_err(Failure::runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    fn worker_args(flags: &[&str]) -> WorkerArgs {
        let argv: Vec<&str> = std::iter::once("worker")
            .chain(flags.iter().copied())
            .collect();
        match parse(&argv).unwrap().command {
            Command::Worker(args) => args,
            other => panic!("not worker: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        let config = worker_args(&[]).to_config("127.0.0.1:9092").unwrap();
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", WorkerConfig::default())
        );
    }

    #[test]
    fn flags_reach_the_config() {
        let args = worker_args(&[
            "--threads",
            "3",
            "--group",
            "g",
            "--commit-interval-ms",
            "250",
            "--ledger-topic",
            "ledger_1",
            "-X",
            "client.id=w1",
        ]);
        let config = args.to_config("k:1").unwrap();
        assert_eq!((config.threads, config.group_id.as_str()), (3, "g"));
        assert_eq!(config.commit_interval_ms, 250);
        assert_eq!(config.ledger_topic, "ledger_1");
        assert_eq!(config.kafka.brokers, "k:1");
        assert_eq!(
            config.kafka.properties,
            [("client.id".to_string(), "w1".to_string())]
        );
    }

    #[test]
    fn a_broken_setting_names_its_flag() {
        let e = worker_args(&["--threads", "0"])
            .to_config("k:1")
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "--threads must be between 1 and 256, got 0");
        let e = worker_args(&["--max-poll-interval-ms", "12000"])
            .to_config("k:1")
            .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "--max-poll-interval-ms must be at least --session-timeout-ms (10000) and \
                 above the built-in revoke_timeout_ms"
            ),
            "{e}"
        );
    }

    #[test]
    fn help_names_the_default_metrics_address() {
        let (_, help) = crate::cli::subcommand_help("worker");
        assert!(help.contains(METRICS_ADDR_DEFAULT), "{help}");
    }
}
