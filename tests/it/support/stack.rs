//! A whole local stack for end-to-end tests: redis-server, tansu, and `wallet worker`
//! processes (the real binary), plus a Kafka client to publish requests and, through the
//! shared reader of `tools::results`, to collect what the workers publish.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::cluster::RedisCluster;
use super::{Proc, RedisServer, Tansu, free_port, log_to, wait_until};
use wallet_transfer::TransferCompleted;
use wallet_transfer::tools::results::{ReadMessage, Start, TopicReader};
use wallet_transfer::worker::kafka::{self, KafkaConfig, TopicSpec};

pub const WALLET_BIN: &str = env!("CARGO_BIN_EXE_wallet");

/// Topic names unique to one stack, so nothing leaks between tests.
/// The workers' `--session-timeout-ms` (unless a test gives its own).
const SESSION_TIMEOUT: &str = "6000";
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// How long past the session timeout a restarted worker may wait for its partitions.
pub const ASSIGNMENT_SLACK_MS: u64 = 4_000;
/// Starts of a worker that did not get its partitions, at most.
pub const RESTARTS_FOR_ASSIGNMENT_LIMIT: usize = 3;

pub struct Topics {
    pub requests: String,
    pub results: String,
    pub dlq: String,
    /// Created by the workers (with `retention.ms=-1`), not by the stack.
    pub ledger: String,
    pub group: String,
}

/// `R` is the Redis the stack runs on: a [`RedisServer`] (the default), or a
/// [`RedisCluster`] for [`Stack::start_on_cluster`] (workers then get `--redis-cluster`).
pub struct Stack<R = RedisServer> {
    pub redis: R,
    pub tansu: Tansu,
    pub topics: Topics,
    pub partitions: i32,
    /// The global flags that point the `wallet` binary at Redis: `--redis-url` with the plain
    /// URL, unless a test replaces them (with a `rediss://` URL and TLS files, say).
    pub redis_args: Vec<String>,
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
}

impl Stack {
    /// A stack on tansu's sqlite storage: its in-memory storage answers a fetch that starts
    /// inside a record batch with the batches after it, skipping the rest of that batch (or
    /// with nothing, stalling the consumer), which a consumer resuming from a committed offset
    /// hits at once. The sqlite storage serves such fetches correctly.
    pub fn start(partitions: i32) -> Stack {
        Stack::start_on(RedisServer::start(), Tansu::start_persistent(), partitions)
    }

    pub fn start_on(redis: RedisServer, tansu: Tansu, partitions: i32) -> Stack {
        let redis_args = vec!["--redis-url".into(), redis.url()];
        Stack::with_redis(redis, redis_args, tansu, partitions)
    }
}

impl Stack<RedisCluster> {
    /// A stack whose Redis is `cluster`: the `wallet` binary gets `--redis-cluster` with every
    /// node as a seed (a killed one is skipped by the client).
    pub fn start_on_cluster(cluster: RedisCluster, tansu: Tansu, partitions: i32) -> Self {
        let redis_args = vec![
            "--redis-cluster".into(),
            cluster.seeds().join(","),
            "--redis-url".into(),
            "redis://".into(),
        ];
        Stack::with_redis(cluster, redis_args, tansu, partitions)
    }
}

impl<R> Stack<R> {
    fn with_redis(redis: R, redis_args: Vec<String>, tansu: Tansu, partitions: i32) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let topics = Topics {
            requests: format!("req_{suffix}"),
            results: format!("res_{suffix}"),
            dlq: format!("dlq_{suffix}"),
            ledger: format!("ledger_{suffix}"),
            group: format!("group_{suffix}"),
        };
        let config = KafkaConfig::new(&tansu.brokers());
        kafka::ensure_topics(
            &config,
            &[
                TopicSpec::new(&topics.requests),
                TopicSpec::new(&topics.results),
                TopicSpec::new(&topics.dlq),
            ],
            partitions,
            1,
        )
        .expect("create topics");
        let producer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", "10000000")
            .create()
            .expect("test producer");
        Stack {
            redis_args,
            redis,
            tansu,
            topics,
            partitions,
            producer,
        }
    }

    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new(&self.tansu.brokers())
    }

    /// The arguments that point the `wallet` binary at this stack.
    pub fn global_args(&self) -> Vec<String> {
        let mut args = self.redis_args.clone();
        args.extend(["--brokers".into(), self.tansu.brokers()]);
        args
    }

    /// Runs `wallet COMMAND ARGS... --requests-topic .. --results-topic ..` against this stack
    /// and returns its output.
    pub fn wallet(&self, command: &str, args: &[&str]) -> std::process::Output {
        self.wallet_command(command, args)
            .output()
            .unwrap_or_else(|e| panic!("run wallet {command}: {e}"))
    }

    /// `wallet COMMAND ARGS...` with this stack's Redis, brokers and topics.
    fn wallet_command(&self, command: &str, args: &[&str]) -> Command {
        let mut wallet = Command::new(WALLET_BIN);
        wallet
            .args(self.global_args())
            .arg(command)
            .args(args)
            .args(["--requests-topic", &self.topics.requests])
            .args(["--results-topic", &self.topics.results]);
        wallet
    }

    /// Starts `wallet COMMAND ARGS... --requests-topic .. --results-topic ..` against this
    /// stack in the background, its output in files; see [`WalletProcess::wait`].
    pub fn spawn_wallet(&self, command: &str, args: &[&str]) -> WalletProcess {
        let dir = tempfile::tempdir().expect("folder for the command's output");
        let file = |name: &str| std::fs::File::create(dir.path().join(name)).expect(name);
        let child = Proc::spawn(
            self.wallet_command(command, args)
                .stdin(Stdio::null())
                .stdout(Stdio::from(file("stdout")))
                .stderr(Stdio::from(file("stderr"))),
            &format!("wallet {command}"),
        );
        WalletProcess { child, dir }
    }

    /// Starts a worker process; `extra` are more `worker` flags.
    pub fn spawn_worker(&self, extra: &[&str]) -> WorkerProcess {
        self.spawn_worker_env(extra, &[])
    }

    /// Starts a worker after another member of its group died, and waits until it holds every
    /// partition (its `wallet_assigned_partitions`), instead of sleeping past the dead
    /// member's session. tansu evicts a dead member lazily and does not rebalance when it
    /// does, so a worker that joined beside a not-yet-expired dead one can keep an empty
    /// assignment for good: one that has no partitions after the session timeout plus
    /// [`ASSIGNMENT_SLACK_MS`] is started again, at most [`RESTARTS_FOR_ASSIGNMENT_LIMIT`]
    /// times. (Apache Kafka rebalances on expiry.)
    pub fn spawn_worker_assigned(&self, extra: &[&str]) -> WorkerProcess {
        for _ in 0..RESTARTS_FOR_ASSIGNMENT_LIMIT {
            let worker = self.spawn_worker(extra);
            let deadline =
                Instant::now() + Duration::from_millis(SESSION_TIMEOUT_MS + ASSIGNMENT_SLACK_MS);
            while Instant::now() < deadline {
                if worker.metric("wallet_assigned_partitions") == f64::from(self.partitions) {
                    return worker;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!(
            "no worker got the {} partitions in {RESTARTS_FOR_ASSIGNMENT_LIMIT} starts",
            self.partitions
        );
    }

    /// Starts a worker process with more `worker` flags and environment variables.
    pub fn spawn_worker_env(&self, extra: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
        let metrics_port = free_port();
        let mut args = self.global_args();
        args.push("worker".to_string());
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let defaults = [
            ("--threads", "4"),
            ("--requests-topic", self.topics.requests.as_str()),
            ("--results-topic", self.topics.results.as_str()),
            ("--dlq-topic", self.topics.dlq.as_str()),
            ("--ledger-topic", self.topics.ledger.as_str()),
            ("--group", self.topics.group.as_str()),
            ("--session-timeout-ms", SESSION_TIMEOUT),
            ("--metrics-addr", metrics_addr.as_str()),
        ];
        // A flag in `extra` replaces its default (clap refuses a flag given twice).
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        // The log lives as long as the worker (which may outlive the stack): no logs pile up
        // in /tmp.
        let log_dir = tempfile::tempdir().expect("folder for the worker's log");
        let log_path = log_dir.path().join(format!(
            "wallet-worker-{}-{metrics_port}.log",
            self.topics.group
        ));
        let mut cmd = Command::new(WALLET_BIN);
        cmd.args(&args)
            .env(
                "RUST_LOG",
                std::env::var("WORKER_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied());
        log_to(&mut cmd, &log_path);
        let child = Proc::spawn(&mut cmd, "wallet worker");
        WorkerProcess {
            child,
            metrics_port,
            log_path,
            _log_dir: log_dir,
        }
    }

    /// The kill and restart of the fault tests: SIGKILL for `worker` at once, its exit awaited
    /// (10 s), `while_down()` run while no worker runs (to report what the kill left), then a
    /// new worker with `flags` in its place, started until it holds every partition
    /// ([`Stack::spawn_worker_assigned`]).
    pub fn kill_and_restart(
        &self,
        worker: &mut WorkerProcess,
        flags: &[&str],
        while_down: impl FnOnce(),
    ) {
        worker.signal("KILL");
        worker.wait_exit(10_000);
        while_down();
        *worker = self.spawn_worker_assigned(flags);
    }

    /// Publishes raw payloads to the requests topic, keyed by `key`, and waits until the
    /// broker has them.
    pub fn publish(&self, messages: &[(Option<String>, Vec<u8>)]) {
        self.publish_on(None, messages);
    }

    /// [`Stack::publish`] to one partition (`None`: the partitioner picks, by key).
    pub fn publish_on(&self, partition: Option<i32>, messages: &[(Option<String>, Vec<u8>)]) {
        for (key, payload) in messages {
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topics.requests).payload(payload.as_slice());
            if let Some(k) = key {
                record = record.key(k.as_bytes());
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            let mut record = Some(record);
            while let Some(r) = record.take() {
                if let Err((e, r)) = self.producer.send(r) {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "publish: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                    record = Some(r);
                }
            }
        }
        self.producer
            .flush(Duration::from_secs(60))
            .expect("requests delivered to the broker");
    }

    /// Publishes JSON requests keyed by their from_user.
    pub fn publish_requests(&self, requests: &[wallet_transfer::TransferRequest]) {
        self.publish_on(None, &request_messages(requests));
    }

    /// [`Stack::publish_requests`] to one partition.
    pub fn publish_requests_on(
        &self,
        partition: i32,
        requests: &[wallet_transfer::TransferRequest],
    ) {
        self.publish_on(Some(partition), &request_messages(requests));
    }

    /// A reader of a topic from its beginning.
    pub fn reader(&self, topic: &str) -> TopicLog {
        let reader = TopicReader::open(&self.kafka(), topic, Start::Beginning)
            .unwrap_or_else(|e| panic!("reader of {topic}: {e}"));
        TopicLog {
            reader,
            messages: Vec::new(),
        }
    }

    /// Reads the results topic from its beginning until every id in `ids` has at least `per_id`
    /// results; returns them by id. Panics on a message that is not a result, and after
    /// `timeout_ms`.
    pub fn wait_results_by_id(
        &self,
        ids: &[String],
        per_id: usize,
        timeout_ms: u64,
    ) -> HashMap<String, Vec<TransferCompleted>> {
        let mut log = self.reader(&self.topics.results);
        let mut by_id: HashMap<String, Vec<TransferCompleted>> = HashMap::new();
        wait_until("every result", timeout_ms, || {
            log.drain_tolerant(100);
            let mut not_results = Vec::new();
            by_id = results_by_id(&log.messages, &mut not_results);
            assert!(not_results.is_empty(), "{not_results:?}");
            ids.iter()
                .all(|id| by_id.get(id).is_some_and(|r| r.len() >= per_id))
        });
        by_id
    }

    /// The offsets the workers' group has committed, per partition.
    pub fn committed(&self) -> HashMap<i32, i64> {
        kafka::committed_offsets(
            &self.kafka(),
            &self.topics.group,
            &self.topics.requests,
            self.partitions,
        )
        .expect("committed offsets")
        .into_iter()
        .filter_map(|(p, o)| o.map(|o| (p, o)))
        .collect()
    }
}

/// Every message of one topic read so far, from its beginning: the shared reader of
/// `tools::results`, collecting what it reads for the test's assertions.
pub struct TopicLog {
    reader: TopicReader,
    pub messages: Vec<ReadMessage>,
}

impl TopicLog {
    /// Reads until at least `count` messages are in, or panics after `timeout_ms` (or on a
    /// consumer error).
    pub fn read_until(&mut self, count: usize, timeout_ms: u64) -> &[ReadMessage] {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while self.messages.len() < count {
            assert!(
                Instant::now() < deadline,
                "read {} of {count} messages within {timeout_ms} ms",
                self.messages.len()
            );
            if let Some(m) = self.reader.next(Duration::from_millis(100)) {
                self.messages.push(m.expect("read message"));
            }
        }
        &self.messages
    }

    /// Reads whatever arrives within `ms`, skipping consumer errors (a broker being restarted
    /// reports transport failures).
    pub fn drain_tolerant(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = self.reader.next(Duration::from_millis(50)) {
                self.messages.push(m);
            }
        }
    }
}

/// The result message `m` carries; panics with the payload when it is not one.
pub fn result_of(m: &ReadMessage) -> TransferCompleted {
    m.result().unwrap_or_else(|e| {
        panic!(
            "result is not a TransferCompleted ({e}): {}",
            String::from_utf8_lossy(&m.payload)
        )
    })
}

/// The result messages per transfer id, in the order read; a message that is not a result is
/// added to `not_results` (partition, offset, the error and the payload).
pub fn results_by_id(
    messages: &[ReadMessage],
    not_results: &mut Vec<String>,
) -> HashMap<String, Vec<TransferCompleted>> {
    let mut by_id: HashMap<String, Vec<TransferCompleted>> = HashMap::new();
    for m in messages {
        match m.result() {
            Ok(r) => by_id.entry(r.transfer_id.clone()).or_default().push(r),
            Err(e) => not_results.push(format!(
                "result at partition {} offset {} is not a result ({e}): {}",
                m.partition,
                m.offset,
                String::from_utf8_lossy(&m.payload)
            )),
        }
    }
    by_id
}

/// A `wallet` command running in the background ([`Stack::spawn_wallet`]); killed on drop.
pub struct WalletProcess {
    child: Proc,
    dir: tempfile::TempDir,
}

/// How a background `wallet` command ended.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl WalletProcess {
    /// Waits for the exit, or panics after `timeout_ms` (the process is then killed).
    pub fn wait(&mut self, timeout_ms: u64) -> Finished {
        let dir = self.dir.path().to_path_buf();
        let code = self.child.wait_exit(timeout_ms, "wallet command", || {
            format!("stderr:\n{}", read_output(&dir, "stderr"))
        });
        Finished {
            code,
            stdout: self.output("stdout"),
            stderr: self.output("stderr"),
        }
    }

    fn output(&self, name: &str) -> String {
        read_output(self.dir.path(), name)
    }
}

/// The file `name` in `dir`, empty when absent.
fn read_output(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// A running `wallet worker` process; killed on drop.
pub struct WorkerProcess {
    child: Proc,
    pub metrics_port: u16,
    pub log_path: std::path::PathBuf,
    /// Removed with the worker (after its child is killed).
    _log_dir: tempfile::TempDir,
}

impl WorkerProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn signal(&self, sig: &str) {
        self.child.signal(sig);
    }

    /// Waits for the process to exit; returns its exit code, or panics after `timeout_ms`.
    pub fn wait_exit(&mut self, timeout_ms: u64) -> Option<i32> {
        let log_path = self.log_path.clone();
        self.child.wait_exit(timeout_ms, "worker", || {
            format!(
                "log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        })
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// The body of GET /metrics, waiting for the endpoint to come up.
    pub fn metrics(&self) -> String {
        let mut body = String::new();
        wait_until("the metrics endpoint", 20_000, || {
            match super::http_get(self.metrics_port, "/metrics") {
                Ok((_, text)) => {
                    body = text;
                    true
                }
                Err(_) => false,
            }
        });
        body
    }

    /// The value of one metric line (`name{labels}` exactly as rendered), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().expect("metric value"))
            .unwrap_or(0.0)
    }
}

/// Requests as messages keyed by their from_user.
fn request_messages(
    requests: &[wallet_transfer::TransferRequest],
) -> Vec<(Option<String>, Vec<u8>)> {
    requests
        .iter()
        .map(|r| (Some(r.from_user.clone()), r.to_json().into_bytes()))
        .collect()
}
