//! [`BenchReport`]: the figures of one run, whatever its mode, as a two-column table or as one
//! JSON object; and the tally a run keeps while it goes (per thread, or in the e2e results
//! reader), with the names answers are counted under ([`outcome_name`]).
//!
//! Owns the report's shape (which figures, in which order, under which names and formats) and
//! the money check's verdict ([`BenchReport::check`]). Does not measure anything: the runs
//! (`direct`, `e2e`) and the Redis reads (`cost`) fill it in.

use std::collections::BTreeMap;
use std::time::Duration;

use comfy_table::{CellAlignment, Table};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::engine::message::{FailureReason, Status};
use crate::engine::transfer::TransferOutcome;
use crate::tools::bench::figures::{
    BalanceCheck, ClusterFigures, EngineFigures, LATENCY_US_MAX, LatencySummary, PathFigures,
    RedisCost, Retained,
};
use crate::tools::bench::workload::Pairs;
use crate::tools::latency::StageSummary;

/// Figures of one bench run, printed as a table or as one JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// `direct` (in-process engine calls) or `e2e` (through Kafka and a running worker).
    pub mode: &'static str,
    /// The wallet prefix of this run, `bench_<6 hex>` (direct) or `e2e_<6 hex>`.
    pub run: String,
    /// Threads calling the engine (direct), or the worker's (e2e: not known, 0).
    pub threads: usize,
    /// Wallets of the run.
    pub wallets: u32,
    /// Every transfer went between one hot pair.
    pub hot: bool,
    /// Which pairs the transfers were drawn from (e2e: always random).
    pub pairs: Pairs,
    /// Requests per second the e2e publisher was held to; `None`: all at once (or direct).
    pub publish_rate: Option<u32>,
    /// Requests finished (answered or given up).
    pub transfers: u64,
    /// Wall time of the transfer phase, without setup and verification.
    pub elapsed: Duration,
    /// Per request, from the first call until its final answer, bench retries included.
    pub latency: LatencySummary,
    /// The engine's own costs (direct mode).
    pub engine: Option<EngineFigures>,
    /// Answers by `STATUS` or `STATUS:reason`; answers taken from an earlier record (after a
    /// transient error whose write had landed) get a ` (duplicate)` suffix.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that ended in an error, by kind (see [`TransferError::kind`](crate::TransferError::kind)).
    pub errors: BTreeMap<String, u64>,
    /// Transient errors that the bench retried, by kind.
    pub transient_retries: BTreeMap<String, u64>,
    /// The money check over the run's wallets.
    pub balance: Option<BalanceCheck>,
    /// Keys deleted after the run, when cleanup was asked for.
    pub cleaned_keys: Option<u64>,
    /// What Redis itself counted over the transfer phase (direct mode).
    pub redis: Option<RedisCost>,
    /// What the run left in Redis (direct mode), summed over every primary on a cluster.
    pub retained: Option<Retained>,
    /// On a Redis Cluster (direct mode): each primary's costs and each transfer path's.
    pub cluster: Option<ClusterFigures>,
    /// Where the requests spent their time, from the messages' timestamps (e2e mode).
    pub stages: Option<StageSummary>,
    /// The broker's own latency for a plain message with the same client settings (e2e mode).
    pub broker_floor: Option<LatencySummary>,
}

/// `{"p50": .., "p99": ..}` of a summary, in ms.
fn p50_p99(l: &LatencySummary) -> Value {
    json!({"p50": l.p50_ms, "p99": l.p99_ms})
}

impl BenchReport {
    /// Requests finished per second of the transfer phase.
    pub fn transfers_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.transfers as f64 / s
        } else {
            0.0
        }
    }

    /// Fails when the run broke an invariant: the balance sum changed or went negative.
    pub fn check(&self) -> Result<(), String> {
        match &self.balance {
            Some(b) if !b.ok() => Err(format!(
                "balance check failed for {} wallets of {}: sum before {}, after {}, {} negative",
                b.wallets, self.run, b.before, b.after, b.negative
            )),
            _ => Ok(()),
        }
    }

    /// The figures as one JSON object. A run on one Redis with random pairs has neither
    /// `pairs` nor `cluster`, as before they existed.
    pub fn to_json(&self) -> Value {
        let mut value = self.base_json();
        if let Value::Object(map) = &mut value {
            if self.pairs != Pairs::Random || self.cluster.is_some() {
                map.insert("pairs".into(), self.pairs.as_str().into());
            }
            if let Some(c) = &self.cluster {
                map.insert("cluster".into(), c.to_json(self.transfers));
            }
        }
        value
    }

    fn base_json(&self) -> Value {
        let engine = self.engine.map(|e| {
            json!({
                "fresh_outcomes": e.fresh,
                "lock_first_try_rate": e.lock_first_try_rate(),
                "lock_wait_mean_ms": e.lock_wait_mean_ms(),
                "watch_retries_total": e.watch_retries,
                "round_trips_per_transfer": e.round_trips_mean(),
            })
        });
        let redis = self.redis.map(|r| {
            let (commands, bytes) = r.per_transfer(self.transfers);
            json!({
                "commands": r.commands,
                "commands_per_transfer": commands,
                "used_memory_delta_bytes": r.used_memory_delta_bytes,
                "bytes_per_transfer": bytes,
            })
        });
        let balance = self.balance.map(|b| {
            json!({
                "wallets": b.wallets,
                "sum_before": b.before.to_string(),
                "sum_after": b.after.to_string(),
                "negative_wallets": b.negative,
                "ok": b.ok(),
            })
        });
        json!({
            "mode": self.mode,
            "run": self.run,
            "threads": self.threads,
            "wallets": self.wallets,
            "hot": self.hot,
            "publish_rate": self.publish_rate,
            "transfers": self.transfers,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "transfers_per_s": self.transfers_per_s(),
            "latency_ms": {
                "mean": self.latency.mean_ms,
                "p50": self.latency.p50_ms,
                "p90": self.latency.p90_ms,
                "p99": self.latency.p99_ms,
                "max": self.latency.max_ms,
            },
            "engine": engine,
            "redis": redis,
            "retained": self.retained.map(|r| r.to_json(self.transfers)),
            "stages_ms": self.stages.map(|st| json!({
                "to_worker": p50_p99(&st.to_worker),
                "in_worker": p50_p99(&st.in_worker),
                "result_back": p50_p99(&st.result_back),
            })),
            "broker_floor_ms": self.broker_floor.as_ref().map(p50_p99),
            "worker_adds_p50_ms": self.broker_floor.map(|f| self.latency.p50_ms - f.p50_ms),
            "outcomes": self.outcomes,
            "errors": self.errors,
            "transient_retries": self.transient_retries,
            "balance": balance,
            "cleaned_keys": self.cleaned_keys,
        })
    }

    /// The figures as a two-column table.
    pub fn to_table(&self) -> Table {
        let mut t = Table::new();
        t.load_style(comfy_table::presets::ASCII_FULL_CONDENSED);
        t.set_header(vec!["figure", "value"]);
        for (name, value) in self.rows() {
            t.add_row(vec![name, value]);
        }
        if let Some(col) = t.column_mut(1) {
            col.set_cell_alignment(CellAlignment::Right);
        }
        t
    }

    /// The rows of [`BenchReport::to_table`], in order: (figure, value).
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = self.run_rows();
        rows.extend(self.latency_rows());
        rows.extend(self.split_rows());
        rows.extend(self.engine.iter().flat_map(engine_rows));
        if let Some(r) = self.redis {
            let (commands, bytes) = r.per_transfer(self.transfers);
            rows.push(("redis commands/transfer".into(), format!("{commands:.2}")));
            rows.push(("redis bytes kept/transfer".into(), format!("{bytes:.0}")));
        }
        if let Some(c) = &self.cluster {
            rows.extend(c.rows(self.transfers));
        }
        rows.extend(self.retained.iter().flat_map(Retained::rows));
        rows.extend(self.count_rows());
        rows.extend(self.balance.iter().flat_map(balance_rows));
        if let Some(n) = self.cleaned_keys {
            rows.push(("keys cleaned up".into(), n.to_string()));
        }
        rows
    }

    fn run_rows(&self) -> Vec<(String, String)> {
        let pairs = if self.hot {
            "one hot pair"
        } else {
            self.pairs.describe()
        };
        let mut rows = vec![
            ("mode".into(), format!("{}, {pairs}", self.mode)),
            ("run prefix".into(), self.run.clone()),
        ];
        if self.engine.is_some() {
            rows.push(("threads".into(), self.threads.to_string()));
        }
        rows.push(("wallets".into(), self.wallets.to_string()));
        if let Some(rate) = self.publish_rate {
            rows.push(("publish rate /s".into(), rate.to_string()));
        }
        rows.push(("transfers".into(), self.transfers.to_string()));
        rows
    }

    /// The legs and the broker floor as "p50 / p99 ms" rows (e2e mode).
    fn split_rows(&self) -> Vec<(String, String)> {
        let show = |l: &LatencySummary| format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms);
        let mut rows = Vec::new();
        if let Some(st) = &self.stages {
            rows.push(("to worker p50/p99 ms".into(), show(&st.to_worker)));
            rows.push(("in worker p50/p99 ms".into(), show(&st.in_worker)));
            rows.push(("result back p50/p99 ms".into(), show(&st.result_back)));
        }
        if let Some(floor) = &self.broker_floor {
            rows.push(("broker floor p50/p99 ms".into(), show(floor)));
            let adds = self.latency.p50_ms - floor.p50_ms;
            rows.push(("worker adds p50 ms".into(), format!("{adds:.1}")));
        }
        rows
    }

    fn latency_rows(&self) -> Vec<(String, String)> {
        let l = &self.latency;
        [
            ("elapsed s", self.elapsed.as_secs_f64()),
            ("transfers/s", self.transfers_per_s()),
            ("latency mean ms", l.mean_ms),
            ("latency p50 ms", l.p50_ms),
            ("latency p90 ms", l.p90_ms),
            ("latency p99 ms", l.p99_ms),
            ("latency max ms", l.max_ms),
        ]
        .into_iter()
        .map(|(name, v)| {
            let text = if name == "transfers/s" {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            };
            (name.to_string(), text)
        })
        .collect()
    }

    /// Outcomes, errors and retries by name; errors and retries show a 0 when there were none.
    fn count_rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = Vec::new();
        let counts = |rows: &mut Vec<_>, prefix: &str, map: &BTreeMap<String, u64>| {
            rows.extend(
                map.iter()
                    .map(|(k, n)| (format!("{prefix} {k}"), n.to_string())),
            );
        };
        counts(&mut rows, "outcome", &self.outcomes);
        if self.errors.is_empty() {
            rows.push(("errors".into(), "0".into()));
        }
        counts(&mut rows, "error", &self.errors);
        if self.transient_retries.is_empty() {
            rows.push(("transient retries".into(), "0".into()));
        }
        counts(&mut rows, "retried", &self.transient_retries);
        rows
    }
}

fn engine_rows(e: &EngineFigures) -> Vec<(String, String)> {
    let first_try = format!(
        "{:.2}% ({} of {})",
        e.lock_first_try_rate() * 100.0,
        e.lock_first_try,
        e.fresh
    );
    vec![
        ("lock first try".into(), first_try),
        (
            "lock wait mean ms".into(),
            format!("{:.3}", e.lock_wait_mean_ms()),
        ),
        ("WATCH retries total".into(), e.watch_retries.to_string()),
        (
            "round trips/transfer".into(),
            format!("{:.2}", e.round_trips_mean()),
        ),
    ]
}

fn balance_rows(b: &BalanceCheck) -> Vec<(String, String)> {
    let verdict = if b.ok() { "OK" } else { "FAILED" };
    vec![
        ("balance sum before".into(), b.before.to_string()),
        ("balance sum after".into(), b.after.to_string()),
        (
            "balance check".into(),
            format!("{verdict} ({} negative)", b.negative),
        ),
    ]
}

/// The key an answer is counted under in [`BenchReport::outcomes`].
pub fn outcome_name(o: &TransferOutcome) -> String {
    answer_name(o.status, o.reason, o.duplicate)
}

/// `STATUS`, `STATUS:reason`, with ` (duplicate)` for an answer taken from an earlier record.
pub(super) fn answer_name(
    status: Status,
    reason: Option<FailureReason>,
    duplicate: bool,
) -> String {
    let mut name = status.as_str().to_string();
    if let Some(reason) = reason {
        name.push(':');
        name.push_str(reason.as_str());
    }
    if duplicate {
        name.push_str(" (duplicate)");
    }
    name
}

/// What one thread (or the e2e results reader) saw.
pub(super) struct Tally {
    pub(super) latency_us: Histogram<u64>,
    pub(super) engine: EngineFigures,
    /// By path: same-slot, cross-slot (by the wallets' slots; one Redis too).
    pub(super) paths: [PathFigures; 2],
    pub(super) outcomes: BTreeMap<String, u64>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) retries: BTreeMap<String, u64>,
    pub(super) finished: u64,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            engine: EngineFigures::default(),
            paths: [PathFigures::default(); 2],
            outcomes: BTreeMap::new(),
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            finished: 0,
        }
    }

    /// Records one request's latency, capped at [`LATENCY_US_MAX`], at least 1 µs.
    pub(super) fn latency(&mut self, took: Duration) {
        let us = took.as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
        self.latency_us.saturating_record(us.max(1));
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.engine.merge(&other.engine);
        for (mine, theirs) in self.paths.iter_mut().zip(other.paths) {
            mine.transfers += theirs.transfers;
            mine.engine.merge(&theirs.engine);
        }
        for (target, source) in [
            (&mut self.outcomes, other.outcomes),
            (&mut self.errors, other.errors),
            (&mut self.retries, other.retries),
        ] {
            for (k, n) in source {
                *target.entry(k).or_default() += n;
            }
        }
        self.finished += other.finished;
    }
}

pub(super) fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::money::Amount;
    use crate::tools::bench::figures::NodeCost;

    fn report() -> BenchReport {
        BenchReport {
            mode: "direct",
            run: "bench_abcdef".into(),
            publish_rate: None,
            threads: 8,
            wallets: 10,
            hot: false,
            pairs: Pairs::Random,
            transfers: 4,
            elapsed: Duration::from_secs(2),
            latency: LatencySummary::default(),
            engine: Some(EngineFigures {
                fresh: 4,
                lock_first_try: 3,
                lock_wait_us: 8_000,
                watch_retries: 1,
                round_trips: 16,
            }),
            outcomes: BTreeMap::from([("COMPLETED".to_string(), 4)]),
            errors: BTreeMap::new(),
            transient_retries: BTreeMap::new(),
            balance: Some(BalanceCheck {
                wallets: 10,
                before: Amount::from_minor(1000),
                after: Amount::from_minor(1000),
                negative: 0,
            }),
            cleaned_keys: None,
            redis: Some(RedisCost {
                commands: 1_400,
                used_memory_delta_bytes: 40_000,
            }),
            retained: Some(Retained {
                outcome_records: 4,
                outcome_records_with_ttl: 3,
                history_entries: 6,
                history_trimmed: 2,
                wallet_bytes: 300,
                used_memory_before: 1_000_000,
                used_memory_after: 1_040_000,
            }),
            cluster: None,
            stages: None,
            broker_floor: None,
        }
    }

    #[test]
    fn report_figures() {
        let r = report();
        assert_eq!(r.transfers_per_s(), 2.0);
        let e = r.engine.unwrap();
        assert_eq!(e.lock_first_try_rate(), 0.75);
        assert_eq!(e.lock_wait_mean_ms(), 2.0);
        assert_eq!(e.round_trips_mean(), 4.0);
        assert!(r.check().is_ok());
        let j = r.to_json();
        assert_eq!(j["transfers_per_s"], 2.0);
        assert_eq!(j["engine"]["round_trips_per_transfer"], 4.0);
        assert_eq!(j["redis"]["commands_per_transfer"], 350.0);
        assert_eq!(j["retained"]["outcome_records_with_ttl"], 3);
        assert_eq!(j["retained"]["history_trimmed"], 2);
        assert_eq!(j["retained"]["wallet_bytes"], 300);
        assert_eq!(j["retained"]["used_memory_after"], 1_040_000);
        assert_eq!(j["retained"]["bytes_per_transfer"], 10_000.0);
        assert_eq!(j["outcomes"]["COMPLETED"], 4);
        assert_eq!(j["balance"]["ok"], true);
        let table = r.to_table().to_string();
        assert!(table.contains("75.00% (3 of 4)"), "{table}");
    }

    #[test]
    fn a_changed_sum_fails_the_check() {
        let mut r = report();
        r.balance.as_mut().unwrap().after = Amount::from_minor(999);
        assert!(
            r.check()
                .unwrap_err()
                .contains("sum before 10.00, after 9.99")
        );
        assert_eq!(r.to_json()["balance"]["ok"], false);
    }

    #[test]
    fn the_table_lists_every_figure_in_order() {
        let mut r = report();
        r.errors.insert("redis".into(), 2);
        r.cleaned_keys = Some(7);
        let names: Vec<String> = r.rows().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "mode",
                "run prefix",
                "threads",
                "wallets",
                "transfers",
                "elapsed s",
                "transfers/s",
                "latency mean ms",
                "latency p50 ms",
                "latency p90 ms",
                "latency p99 ms",
                "latency max ms",
                "lock first try",
                "lock wait mean ms",
                "WATCH retries total",
                "round trips/transfer",
                "redis commands/transfer",
                "redis bytes kept/transfer",
                "outcome records kept",
                "history entries kept",
                "history entries trimmed",
                "bytes per wallet with history",
                "redis used_memory before",
                "redis used_memory after",
                "outcome COMPLETED",
                "error redis",
                "transient retries",
                "balance sum before",
                "balance sum after",
                "balance check",
                "keys cleaned up",
            ]
        );
        let rows: BTreeMap<String, String> = r.rows().into_iter().collect();
        assert_eq!(rows["mode"], "direct, uniform random pairs");
        assert_eq!(rows["transfers/s"], "2");
        assert_eq!(rows["elapsed s"], "2.000");
        assert_eq!(rows["round trips/transfer"], "4.00");
        assert_eq!(rows["balance check"], "OK (0 negative)");
        assert_eq!(rows["outcome records kept"], "4 (3 with ttl)");
        assert_eq!(rows["redis used_memory after"], "1040000");
    }

    #[test]
    fn an_e2e_table_shows_the_publish_rate_and_no_engine_figures() {
        let r = BenchReport {
            mode: "e2e",
            engine: None,
            publish_rate: Some(500),
            hot: true,
            ..report()
        };
        let rows: BTreeMap<String, String> = r.rows().into_iter().collect();
        assert_eq!(rows["mode"], "e2e, one hot pair");
        assert_eq!(rows["publish rate /s"], "500");
        assert!(!rows.contains_key("threads") && !rows.contains_key("lock first try"));
    }

    #[test]
    fn a_cluster_report_splits_the_paths_and_names_each_primary() {
        let path = |transfers, round_trips| PathFigures {
            transfers,
            engine: EngineFigures {
                fresh: transfers,
                round_trips,
                ..EngineFigures::default()
            },
        };
        let node = |addr: &str, commands, cpu_us| NodeCost {
            addr: addr.into(),
            commands,
            command_usec: commands,
            cpu_us,
            used_memory_delta_bytes: 0,
        };
        let mut r = BenchReport {
            pairs: Pairs::CrossSlot,
            cluster: Some(ClusterFigures {
                primaries: vec![node("h:1", 60, 400), node("h:2", 20, 400)],
                same_slot: path(0, 0),
                cross_slot: path(4, 24),
            }),
            ..report()
        };
        let j = r.to_json();
        assert_eq!(j["pairs"], "cross-slot");
        assert_eq!(j["cluster"]["cpu_us_per_transfer"], 200.0);
        assert_eq!(
            j["cluster"]["paths"]["cross_slot"]["round_trips_per_transfer"],
            6.0
        );
        assert_eq!(
            j["cluster"]["paths"]["cross_slot"]["commands_per_transfer"],
            20.0
        );
        assert_eq!(
            j["cluster"]["paths"]["same_slot"]["commands_per_transfer"],
            Value::Null
        );
        assert_eq!(j["cluster"]["primaries"][1]["addr"], "h:2");
        let rows: BTreeMap<String, String> = r.rows().into_iter().collect();
        assert_eq!(rows["mode"], "direct, cross-slot pairs");
        assert_eq!(
            rows["cross-slot transfers"],
            "4 (6.00 round trips each, 20.00 redis commands)"
        );
        assert_eq!(rows["same-slot transfers"], "0 (0.00 round trips each)");
        assert_eq!(rows["primary h:1"], "60 commands, 100.0 cpu us/transfer");
        // Mixed paths: Redis's count cannot be split, so no path gets it.
        r.cluster.as_mut().unwrap().same_slot = path(1, 2);
        r.cluster.as_mut().unwrap().cross_slot = path(3, 18);
        assert_eq!(
            r.to_json()["cluster"]["paths"]["cross_slot"]["commands_per_transfer"],
            Value::Null
        );
        // One Redis with random pairs: the JSON is what it was before pairs and clusters.
        let plain = report().to_json();
        assert!(plain.get("pairs").is_none() && plain.get("cluster").is_none());
    }
}
