//! The worker as a process: signal handling and the metrics endpoint around a [`Worker`].
//!
//! Owns the process-level concerns of running a worker: SIGINT/SIGTERM (the first asks for a
//! clean stop, a second one exits at once), serving `/metrics`, `/healthz` and `/readyz`, the
//! Redis PING behind readiness, and the Redis permission check at start. Does not own flags
//! (the binary's `cli::worker` turns them into a [`WorkerConfig`]) nor the pipeline
//! (`worker::pipeline`), which reports the group and producer state to [`Metrics::health`].

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

/// Runs a worker until SIGINT/SIGTERM. Errors are one-line messages for the user.
///
/// `metrics_addr` is where `/metrics`, `/healthz` and `/readyz` are served, `None` for nowhere. `config` must have passed
/// [`WorkerConfig::validate`] (the caller maps a [`crate::SettingError`] to its own names).
pub fn run(
    config: WorkerConfig,
    redis_url: &str,
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
    let tls = engine.redis_tls.clone();
    let service = WalletService::connect(redis_url, config.threads as u32, engine)
        .map_err(|e| e.to_string())?;
    // Before anything is consumed: a user missing a permission fails here, naming it, not at
    // the first transfer.
    service.check_permissions().map_err(|e| e.to_string())?;
    log::info!(
        "redis {}: connected, the user may run every command the worker sends",
        store::redact_url(redis_url)
    );
    let metrics = Metrics::new();
    let redis_client = store::client(redis_url, &tls).map_err(|e| e.to_string())?;
    metrics
        .health()
        .set_redis_check(health::redis_ping_check_on(redis_client));
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
