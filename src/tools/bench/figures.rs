//! The figures a bench report is made of: latency percentiles ([`LatencySummary`]), the
//! engine's own costs ([`EngineFigures`]), the money check ([`BalanceCheck`]), what Redis
//! counted ([`RedisCost`]; on a cluster per primary, [`NodeCost`], and per transfer path,
//! [`PathFigures`], together [`ClusterFigures`]) and what the run left in Redis
//! ([`Retained`]), with the JSON and table rows of those that render themselves.
//!
//! Owns these types and their arithmetic (pure). A leaf shared with `tools::latency`, whose
//! legs are [`LatencySummary`]s: it imports nothing from the rest of the bench or from
//! `tools::latency`. Does not own the report that holds them (`report`), or how they are
//! measured (`cost`, `direct`, `e2e`).

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::engine::money::Amount;
use crate::engine::transfer::TransferOutcome;

/// Longest latency the histogram records exactly (one hour, in microseconds); longer ones
/// are recorded as this.
pub(super) const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Latency percentiles of a run, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub samples: u64,
    /// Their mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram_us(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What the engine reported about its own work (`TransferOutcome::stats`), summed over the
/// fresh (non-duplicate) outcomes. Only a mode that calls the engine in-process has these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineFigures {
    /// Outcomes produced by this run (not answered from an earlier record).
    pub fresh: u64,
    /// Fresh outcomes whose Redis lock was free at the first SET NX.
    pub lock_first_try: u64,
    /// Sum of the Redis lock waits, in microseconds.
    pub lock_wait_us: u64,
    /// Transactions aborted by a changed watched key and retried, in total.
    pub watch_retries: u64,
    /// Redis round trips, in total.
    pub round_trips: u64,
}

impl EngineFigures {
    /// Counts a fresh outcome's costs; a duplicate cost nothing and is skipped.
    pub fn add_outcome(&mut self, o: &TransferOutcome) {
        if o.duplicate {
            return;
        }
        self.fresh += 1;
        if o.stats.lock.attempts == 1 {
            self.lock_first_try += 1;
        }
        self.lock_wait_us += o.stats.lock.wait_us;
        self.watch_retries += u64::from(o.stats.watch_retries);
        self.round_trips += u64::from(o.stats.round_trips);
    }

    /// Adds another thread's figures.
    pub fn merge(&mut self, other: &EngineFigures) {
        self.fresh += other.fresh;
        self.lock_first_try += other.lock_first_try;
        self.lock_wait_us += other.lock_wait_us;
        self.watch_retries += other.watch_retries;
        self.round_trips += other.round_trips;
    }

    /// Share of fresh outcomes that got their lock on the first try, 0 to 1.
    pub fn lock_first_try_rate(&self) -> f64 {
        ratio(self.lock_first_try, self.fresh)
    }

    /// Mean lock wait of a fresh outcome, in milliseconds.
    pub fn lock_wait_mean_ms(&self) -> f64 {
        ratio(self.lock_wait_us, self.fresh) / 1000.0
    }

    /// Mean Redis round trips of a fresh outcome.
    pub fn round_trips_mean(&self) -> f64 {
        ratio(self.round_trips, self.fresh)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The sum of the run's wallet balances before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceCheck {
    /// Wallets of the run.
    pub wallets: u32,
    /// The sum of their balances before the run.
    pub before: Amount,
    /// The sum after (must equal `before`: transfers move money, never make it).
    pub after: Amount,
    /// Wallets whose balance ended below zero (must be 0).
    pub negative: u32,
}

impl BalanceCheck {
    /// True when the sum is unchanged and no balance went negative.
    pub fn ok(&self) -> bool {
        self.before == self.after && self.negative == 0
    }
}

/// Redis's own figures over a run, from `INFO commandstats` and `INFO memory` before and after:
/// every command any client sent (the bench is meant to be the only one), and the memory it
/// kept.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RedisCost {
    /// Commands Redis ran (INFO excluded).
    pub commands: u64,
    /// Change of `used_memory`.
    pub used_memory_delta_bytes: i64,
}

impl RedisCost {
    /// Commands and bytes kept per transfer.
    pub fn per_transfer(&self, transfers: u64) -> (f64, f64) {
        let n = transfers.max(1) as f64;
        (
            self.commands as f64 / n,
            self.used_memory_delta_bytes as f64 / n,
        )
    }
}

/// One transfer path's share of a run on a Redis Cluster: its requests and what the engine
/// reported about them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathFigures {
    /// Requests whose wallets took this path (by their slots), answered or not.
    pub transfers: u64,
    /// The engine's figures over the fresh outcomes of these requests.
    pub engine: EngineFigures,
}

/// One primary's costs over the transfer phase of a run, from its `INFO commandstats`,
/// `INFO cpu` and `INFO memory` before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCost {
    /// The primary, `host:port`.
    pub addr: String,
    /// Commands it ran (INFO excluded; commands inside scripts and transactions included).
    pub commands: u64,
    /// Microseconds it spent inside those commands (`usec=` of `INFO commandstats`).
    pub command_usec: u64,
    /// CPU it used, system plus user, in microseconds (`used_cpu_sys` + `used_cpu_user`):
    /// the commands and everything around them (reading, parsing, replying).
    pub cpu_us: u64,
    /// Change of its `used_memory`.
    pub used_memory_delta_bytes: i64,
}

/// What a direct run on a Redis Cluster measured per primary and per transfer path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    /// Every primary of the map at the start of the run, sorted by address.
    pub primaries: Vec<NodeCost>,
    /// Transfers whose wallets share a slot: one transaction on the slot's primary.
    pub same_slot: PathFigures,
    /// Transfers whose wallets are in different slots: the cross-slot steps.
    pub cross_slot: PathFigures,
}

impl ClusterFigures {
    /// (commands, command µs, cpu µs) summed over the primaries, per transfer of a run of
    /// `transfers`.
    pub fn per_transfer(&self, transfers: u64) -> (f64, f64, f64) {
        let n = transfers.max(1) as f64;
        let sum = |f: fn(&NodeCost) -> u64| self.primaries.iter().map(f).sum::<u64>() as f64 / n;
        (
            sum(|p| p.commands),
            sum(|p| p.command_usec),
            sum(|p| p.cpu_us),
        )
    }

    /// Whether the engine ran in this process (a direct run), so the paths have engine
    /// figures; an e2e run's engine is the worker's.
    fn engine_ran(&self) -> bool {
        self.same_slot.engine.fresh + self.cross_slot.engine.fresh > 0
    }

    /// The path every one of `transfers` requests took, when they all took one: then Redis's
    /// own counts per transfer are that path's.
    pub fn only_path(&self, transfers: u64) -> Option<&'static str> {
        if transfers == 0 {
            None
        } else if self.same_slot.transfers == transfers {
            Some("same-slot")
        } else if self.cross_slot.transfers == transfers {
            Some("cross-slot")
        } else {
            None
        }
    }

    pub(super) fn to_json(&self, transfers: u64) -> Value {
        let (commands, usec, cpu) = self.per_transfer(transfers);
        let only = self.only_path(transfers);
        let engine = self.engine_ran();
        let path = |name: &str, p: &PathFigures| {
            json!({
                "transfers": p.transfers,
                "fresh_outcomes": p.engine.fresh,
                "round_trips_per_transfer": engine.then(|| p.engine.round_trips_mean()),
                "watch_retries_total": p.engine.watch_retries,
                "commands_per_transfer": (only == Some(name)).then_some(commands),
                "cpu_us_per_transfer": (only == Some(name)).then_some(cpu),
            })
        };
        let primaries: Vec<Value> = self
            .primaries
            .iter()
            .map(|p| {
                json!({
                    "addr": p.addr,
                    "commands": p.commands,
                    "command_usec": p.command_usec,
                    "cpu_us": p.cpu_us,
                    "used_memory_delta_bytes": p.used_memory_delta_bytes,
                })
            })
            .collect();
        json!({
            "primaries": primaries,
            "commands_per_transfer": commands,
            "command_usec_per_transfer": usec,
            "cpu_us_per_transfer": cpu,
            "paths": {
                "same_slot": path("same-slot", &self.same_slot),
                "cross_slot": path("cross-slot", &self.cross_slot),
            },
        })
    }

    pub(super) fn rows(&self, transfers: u64) -> Vec<(String, String)> {
        let (commands, usec, cpu) = self.per_transfer(transfers);
        let mut rows = vec![("cluster primaries".into(), self.primaries.len().to_string())];
        for (name, p) in [
            ("same-slot", &self.same_slot),
            ("cross-slot", &self.cross_slot),
        ] {
            // An e2e run has no engine figures (the engine runs in the worker).
            let mut parts = Vec::new();
            if self.engine_ran() {
                parts.push(format!(
                    "{:.2} round trips each",
                    p.engine.round_trips_mean()
                ));
            }
            if self.only_path(transfers) == Some(name) {
                parts.push(format!("{commands:.2} redis commands"));
            }
            let mut text = p.transfers.to_string();
            if !parts.is_empty() {
                text.push_str(&format!(" ({})", parts.join(", ")));
            }
            rows.push((format!("{name} transfers"), text));
        }
        rows.push(("redis cpu us/transfer".into(), format!("{cpu:.1}")));
        rows.push(("redis command us/transfer".into(), format!("{usec:.1}")));
        for p in &self.primaries {
            let n = transfers.max(1) as f64;
            rows.push((
                format!("primary {}", p.addr),
                format!(
                    "{} commands, {:.1} cpu us/transfer",
                    p.commands,
                    p.cpu_us as f64 / n
                ),
            ));
        }
        rows
    }
}

/// What the run left in Redis, read after its transfer phase: the outcome records of its
/// requests (and how many of them expire), the history entries its wallets keep, the entries
/// trimmed into their checkpoints, and `used_memory` before and after (direct mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Outcome records of the run's requests that exist (`transfer:{id}`).
    pub outcome_records: u64,
    /// Those of them with a ttl (`EngineConfig::outcome_ttl_ms`).
    pub outcome_records_with_ttl: u64,
    /// History entries kept in Redis: the sum of the history lengths over the run's wallets.
    pub history_entries: u64,
    /// What one wallet of the run with history holds in Redis after it: the mean `MEMORY
    /// USAGE` (exact, `SAMPLES 0`) of its hash and history keys, over those with history among
    /// up to [`WALLET_BYTES_SAMPLE`](crate::tools::bench::WALLET_BYTES_SAMPLE) of the run's
    /// wallets.
    pub wallet_bytes: u64,
    /// History entries trimmed into checkpoints: the sum of `hc` over the run's wallets.
    pub history_trimmed: u64,
    /// `used_memory` before the transfer phase, in bytes.
    pub used_memory_before: i64,
    /// `used_memory` after it, in bytes.
    pub used_memory_after: i64,
}

impl Retained {
    /// The figures as JSON, with the bytes kept per transfer of a run of `transfers`.
    pub(super) fn to_json(self, transfers: u64) -> Value {
        let delta = self.used_memory_after - self.used_memory_before;
        json!({
            "outcome_records": self.outcome_records,
            "outcome_records_with_ttl": self.outcome_records_with_ttl,
            "history_entries": self.history_entries,
            "history_trimmed": self.history_trimmed,
            "wallet_bytes": self.wallet_bytes,
            "used_memory_before": self.used_memory_before,
            "used_memory_after": self.used_memory_after,
            "bytes_per_transfer": delta as f64 / transfers.max(1) as f64,
        })
    }

    pub(super) fn rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "outcome records kept".into(),
                format!(
                    "{} ({} with ttl)",
                    self.outcome_records, self.outcome_records_with_ttl
                ),
            ),
            (
                "history entries kept".into(),
                self.history_entries.to_string(),
            ),
            (
                "history entries trimmed".into(),
                self.history_trimmed.to_string(),
            ),
            (
                "bytes per wallet with history".into(),
                self.wallet_bytes.to_string(),
            ),
            (
                "redis used_memory before".into(),
                self.used_memory_before.to_string(),
            ),
            (
                "redis used_memory after".into(),
                self.used_memory_after.to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_in_ms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = LatencySummary::from_histogram_us(&h);
        assert_eq!(s.samples, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(
            LatencySummary::from_histogram_us(&Histogram::new(3).unwrap()),
            LatencySummary::default()
        );
    }

    #[test]
    fn empty_engine_figures_do_not_divide_by_zero() {
        let e = EngineFigures::default();
        assert_eq!(e.lock_first_try_rate(), 0.0);
        assert_eq!(e.round_trips_mean(), 0.0);
    }
}
