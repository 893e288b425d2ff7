//! The worker as a process: signal handling and the metrics endpoint around a [`Worker`].
//!
//! Owns the process-level concerns of running a worker: SIGINT/SIGTERM (the first asks for a
//! clean stop, a second one exits at once), serving `/metrics`, `/healthz` and `/readyz`, the
//! Redis PING behind readiness, and the Redis permission check at start. Does not own flags
//! (the binary's `cli::worker` turns them into a [`WorkerConfig`]) nor the pipeline
//! (`worker::pipeline`), which reports the group and producer state to [`Metrics::health`].
//!
//! On a Redis Cluster (`RedisTarget::Cluster`, `--redis-cluster`) the service has one pool per
//! primary of `2 * threads + 2` connections (a cross-slot transfer holds one on each wallet's
//! primary; the sweep and the readiness check one more); readiness pings every primary
//! (`health::cluster_ping_check`, which reads the slot map again when one fails); the
//! permission check is skipped, and the worker says so; `--wait-replicas N` sets the engine's
//! `wait_replicas`, and without it the worker warns what a failover may cost. The pipeline
//! then runs the recovery sweep (`worker::sweep`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::engine::service::{EngineConfig, WalletService};
use crate::engine::store;
use crate::worker::health;
use crate::worker::kafka;
use crate::worker::metrics::{self, Metrics};
use crate::worker::{Worker, WorkerConfig};

/// Exit code when a second signal cuts the clean shutdown short.
pub const EXIT_FORCED: i32 = 130;

/// The Redis a worker runs on: one Redis, or a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis at this URL (`redis://`, `rediss://`, with AUTH).
    Single {
        /// The URL; logged without its password.
        url: String,
    },
    /// A Redis Cluster: its slot map is read from the first of `seeds` that answers.
    Cluster {
        /// `HOST:PORT` of some nodes of the cluster.
        seeds: Vec<String>,
        /// Scheme and credentials for every node (its host is not used).
        template_url: String,
    },
}

impl RedisTarget {
    /// How the target is named in logs: the URL without its password, or the seeds.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Single { url } => format!("redis {}", store::redact_url(url)),
            RedisTarget::Cluster { seeds, .. } => {
                format!("redis cluster (seeds {})", seeds.join(","))
            }
        }
    }
}

/// Runs a worker until SIGINT/SIGTERM. Errors are one-line messages for the user.
///
/// `metrics_addr` is where `/metrics`, `/healthz` and `/readyz` are served, `None` for nowhere. `config` must have passed
/// [`WorkerConfig::validate`] (the caller maps a [`crate::SettingError`] to its own names).
pub fn run(
    config: WorkerConfig,
    redis: &RedisTarget,
    engine: EngineConfig,
    metrics_addr: Option<&str>,
) -> Result<(), String> {
    for (key, value) in &config.kafka.properties {
        let shown = if kafka::is_secret_property(key) {
            "***"
        } else {
            value.as_str()
        };
        log::info!("librdkafka property {key}={shown}");
    }
    let metrics = Metrics::new();
    let service = connect(&config, redis, engine, &metrics)?;
    let _server = match metrics_addr {
        None => None,
        Some(addr) => {
            let server = metrics::serve(addr, metrics.clone()).map_err(|e| {
                format!("cannot serve metrics on --metrics-addr {addr}: {e} (use another address, or off)")
            })?;
            Some(server)
        }
    };
    let worker = Worker::new(config, service, metrics).map_err(|e| e.to_string())?;
    install_signals(worker.shutdown_handle())?;
    let result = worker.run();
    // The worker's final line is logged; what librdkafka's closing threads may still say
    // after it (brokers down) would only bury it.
    log::set_max_level(log::LevelFilter::Off);
    result.map(drop).map_err(|e| e.to_string())
}

/// Connects the engine to `redis`, checks the user's permissions (on one Redis) and installs
/// the readiness check: a PING to the Redis, or to every primary of the cluster.
fn connect(
    config: &WorkerConfig,
    redis: &RedisTarget,
    engine: EngineConfig,
    metrics: &Metrics,
) -> Result<WalletService, String> {
    let tls = engine.redis_tls.clone();
    let wait = engine.wait_replicas;
    let service = match redis {
        RedisTarget::Single { url } => WalletService::connect(url, config.threads as u32, engine),
        // A cross-slot transfer holds a connection to each wallet's primary (two to one
        // primary when both slots live there); the sweep and the readiness check one more.
        RedisTarget::Cluster {
            seeds,
            template_url,
        } => WalletService::connect_cluster(
            seeds,
            template_url,
            config.threads as u32 * 2 + 2,
            engine,
        ),
    }
    .map_err(|e| format!("{}: {e}", redis.describe()))?;
    match redis {
        RedisTarget::Single { url } => {
            // Before anything is consumed: a user missing a permission fails here, naming
            // it, not at the first transfer.
            service.check_permissions().map_err(|e| e.to_string())?;
            log::info!(
                "{}: connected, the user may run every command the worker sends",
                redis.describe()
            );
            let client = store::client(url, &tls).map_err(|e| e.to_string())?;
            let check = health::redis_ping_check_on(client);
            metrics.health().set_redis_check(check);
        }
        RedisTarget::Cluster { .. } => {
            let pools = service
                .cluster()
                .expect("connect_cluster gives a cluster service");
            log::info!(
                "{}: connected to {} primaries ({}); permissions are not checked on a cluster: grant the ACL of deploy/redis-acl.conf on every node, or a missing one shows at the first transfer that needs it",
                redis.describe(),
                pools.primaries().len(),
                pools.primaries().join(", ")
            );
            let check = health::cluster_ping_check(pools.clone());
            metrics.health().set_redis_check(check);
        }
    }
    log_durability(redis, wait);
    Ok(service)
}

/// Says what a failover may cost with the chosen `--wait-replicas`.
fn log_durability(redis: &RedisTarget, wait_replicas: Option<u32>) {
    match (redis, wait_replicas) {
        (_, Some(n)) => log::info!(
            "every write step waits for {n} replica(s) (WAIT) before the transfer goes on or is answered"
        ),
        (RedisTarget::Cluster { .. }, None) => log::warn!(
            "--wait-replicas 0: a primary failover can lose steps already answered; across shards that can credit a transfer twice or create money (set --wait-replicas 1 with a replica per primary)"
        ),
        (RedisTarget::Single { .. }, None) => {}
    }
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
