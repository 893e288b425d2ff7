//! What operators look at and get paged by (`monitoring/`, the health endpoints, `wallet top`),
//! checked against real processes: promtool on the alert rules and their tests, a real
//! Prometheus scraping a real worker under load and answering every query of every dashboard
//! panel, `/readyz` following a Redis outage while `/healthz` stays up, and `wallet top`
//! rendering a frame from a live worker and a down one.
//!
//! `prometheus` and `promtool` come from `PROMETHEUS_BIN` / `PROMTOOL_BIN`, else from PATH; a
//! missing one fails the test with the command that installs it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wallet_transfer::{Amount, Currency, EngineConfig, TransferRequest};

use crate::support::stack::{Stack, WALLET_BIN, WorkerProcess};
use crate::support::{Proc, create_wallets, free_port, http_get, log_to, wait_until};

/// The job name the alert rules and the dashboard select (`job="wallet-worker"`).
const JOB: &str = "wallet-worker";
/// The datasource uid every panel names, provisioned for Grafana.
const DATASOURCE_UID: &str = "prometheus";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// `env`'s file, else `name` on PATH; panics with how to install it.
fn tool(env: &str, name: &str) -> PathBuf {
    const INSTALL: &str = "scripts/install-deps.sh (or: apt-get install -y prometheus)";
    if let Ok(path) = std::env::var(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not name a file; install it with: {INSTALL}",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found on PATH (or set {env}); install it with: {INSTALL}")
        })
}

/// Runs promtool with `args` in `monitoring/`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let output = Command::new(tool("PROMTOOL_BIN", "promtool"))
        .args(args)
        .current_dir(repo_path("monitoring"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

// --- a plain HTTP client ---

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- a real Prometheus ---

/// A `prometheus` server on a free port scraping one worker every second with the alert rules
/// of `monitoring/alerts.yml`; killed on drop.
struct Prometheus {
    /// First: killed before the folder goes.
    _child: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(worker_metrics_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("temporary folder for prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"127.0.0.1:{worker_metrics_port}\"]\n",
            rules = repo_path("monitoring/alerts.yml").display(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let mut cmd = Command::new(tool("PROMETHEUS_BIN", "prometheus"));
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        log_to(&mut cmd, &dir.path().join("prometheus.log"));
        let prometheus = Prometheus {
            _child: Proc::spawn(&mut cmd, "prometheus"),
            port,
            dir,
        };
        wait_until("prometheus to be ready", 30_000, || {
            matches!(http_get(port, "/-/ready"), Ok((200, _)))
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` of a `success` answer.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: HTTP {status}, not JSON ({e}): {body}"));
        assert_eq!(json["status"], "success", "{path}: HTTP {status}: {body}");
        json["data"].clone()
    }

    /// An instant query now: the result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        assert_eq!(data["resultType"], "vector", "{promql}");
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

// --- the dashboard ---

/// One query of a dashboard panel.
#[derive(Debug)]
struct PanelQuery {
    panel: String,
    expr: String,
    legend: String,
}

/// Every target of every panel (rows' nested panels included) of the dashboard JSON, after
/// checking that each panel names the provisioned datasource.
fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            let Some(targets) = panel["targets"].as_array() else {
                continue;
            };
            assert_eq!(panel["datasource"]["uid"], DATASOURCE_UID, "{title}");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], DATASOURCE_UID, "{title}");
                out.push(PanelQuery {
                    panel: title.clone(),
                    expr: target["expr"].as_str().expect("target expr").to_string(),
                    legend: target["legendFormat"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The expression as Grafana sends it with every worker selected.
fn grafana_substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$instance", ".*")
}

/// Label names a legend uses (`{{status}} {{reason}}`).
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(name, _)| name.trim().to_string()))
        .collect()
}

/// Metric names a query reads (`wallet_*` and `up`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("wallet_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    if expr.contains("up{") {
        names.insert("up".into());
    }
    names
}

// --- load ---

fn seed_wallets(stack: &Stack, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "1000.00")).collect();
    create_wallets(&stack.redis.service(2, EngineConfig::default()), &pairs);
    ids
}

/// `count` transfers among `ids` with ids `{prefix}{i}`; every tenth asks for more than any
/// balance (an insufficient_funds answer).
fn requests(ids: &[String], prefix: &str, count: usize) -> Vec<TransferRequest> {
    (0..count)
        .map(|i| {
            let from = &ids[i % ids.len()];
            let to = &ids[(i * 7 + 1) % ids.len()];
            let amount = if i % 10 == 9 {
                "999999.00".to_string()
            } else {
                Amount::from_minor(100 + (i as i64 % 500)).to_string()
            };
            TransferRequest::new(&format!("{prefix}{i}"), from, to, &amount, Currency::USD)
                .expect("valid request")
        })
        .collect()
}

/// The value of `name` (exactly as rendered, labels included) in a worker's /metrics.
fn metric(worker: &WorkerProcess, name: &str) -> Option<f64> {
    let (_, body) = http_get(worker.metrics_port, "/metrics").ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// How many samples of the series `selector` Prometheus holds from the last minute.
fn scrapes(prometheus: &Prometheus, selector: &str) -> f64 {
    prometheus
        .query(&format!("count_over_time({selector}[1m])"))
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// --- the tests ---

#[test]
fn promtool_checks_the_rules_and_their_tests_cover_every_alert() {
    let started = Instant::now();
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a test in which it fires and one in which it stays silent, and every
    // alert says what to do and has a runbook entry in docs/operations.md.
    let rules = read_repo_file("monitoring/alerts.yml");
    let tests = read_repo_file("monitoring/alerts_test.yml");
    let runbook = read_repo_file("docs/operations.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 13, "{alerts:?}");
    for alert in &alerts {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert}: no test where it fires"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no test where it stays silent"
        );
        let anchor = format!("docs/operations.md#{}", alert.to_ascii_lowercase());
        assert!(rules.contains(&anchor), "{alert}: no runbook link {anchor}");
        assert!(
            runbook.contains(&format!("#### {alert}\n")),
            "{alert}: no runbook section in docs/operations.md"
        );
    }
    // Per-instance firing cases must list only the failing instance: an expected list is
    // exact, so the healthy w2 in the same input proves the alert silent for it.
    assert!(
        !tests.contains("instance: \"w2:9898\""),
        "w2 is the healthy one"
    );
    println!(
        "promtool: {} alerts checked in {:?}",
        alerts.len(),
        started.elapsed()
    );
}

#[test]
fn prometheus_scrapes_a_worker_under_load_and_every_dashboard_query_returns_data() {
    let stack = Stack::start(3);
    let ids = seed_wallets(&stack, 40);
    let worker = stack.spawn_worker(&[]);
    let prometheus = Prometheus::start(worker.metrics_port);
    // Scraped before the load too, so that rates and percentiles (two samples in their
    // window, as in Grafana) see it arrive.
    wait_until("two scrapes before the load", 30_000, || {
        scrapes(&prometheus, &format!("up{{job=\"{JOB}\"}}")) >= 2.0
    });

    // A short load: good transfers, insufficient funds, and two messages for the dead-letter
    // topic; then wait until the worker has answered everything and Prometheus has seen it.
    let load = requests(&ids, "p", 1_500);
    stack.publish_requests(&load);
    stack.publish(&[
        (Some("x".into()), b"not json".to_vec()),
        (None, b"{\"no\":\"transfer id\"}".to_vec()),
    ]);
    let answered = (load.len() + 2) as f64;
    wait_until("the worker to answer the load", 120_000, || {
        metric(&worker, "wallet_results_published_total").unwrap_or(0.0)
            + metric(&worker, "wallet_dlq_total").unwrap_or(0.0)
            >= answered
    });
    wait_until("prometheus to scrape the answered load", 30_000, || {
        let result = prometheus.query(&format!(
            "sum(wallet_results_published_total{{job=\"{JOB}\"}}) + sum(wallet_dlq_total{{job=\"{JOB}\"}})"
        ));
        result.first().and_then(|s| s["value"][1].as_str()) == Some(&answered.to_string())
    });
    wait_until(
        "the worker to report lag and committed offsets",
        30_000,
        || {
            !prometheus.query("wallet_consumer_lag").is_empty()
                && !prometheus.query("wallet_committed_offset").is_empty()
        },
    );

    // Every metric a panel reads exists, every query answers at least one series, and every
    // label a legend prints is on the series.
    let dashboard: Value =
        serde_json::from_str(&read_repo_file("monitoring/grafana/wallet-transfer.json"))
            .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let known: BTreeSet<String> = prometheus
        .api("/api/v1/label/__name__/values")
        .as_array()
        .expect("metric names")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let mut failures = Vec::new();
    for q in &queries {
        for name in metric_names(&q.expr) {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            if !known.contains(&name) && !known.contains(base) {
                failures.push(format!("{}: metric {name} does not exist", q.panel));
            }
        }
        let result = prometheus.query(&grafana_substitute(&q.expr));
        if result.is_empty() {
            failures.push(format!("{}: no data for {}", q.panel, q.expr));
            continue;
        }
        // A label with an empty value is absent from its series (reason="" of COMPLETED), so
        // a legend's label must be on some series, not on all.
        for label in legend_labels(&q.legend) {
            if result.iter().all(|s| s["metric"].get(&label).is_none()) {
                failures.push(format!(
                    "{}: no series has label {label}: {}",
                    q.panel, q.expr
                ));
            }
        }
        // NaN is what a percentile or a ratio of nothing observed gives: the load must show.
        if result
            .iter()
            .all(|s| s["value"][1].as_str().is_none_or(|v| v == "NaN"))
        {
            failures.push(format!("{}: only NaN for {}", q.panel, q.expr));
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries:\n{}",
        failures.join("\n")
    );
    println!("{} dashboard queries answered with data", queries.len());

    // The template variable lists the worker.
    let instances = prometheus.api(&format!(
        "/api/v1/label/instance/values?match[]={}",
        url_encode(&format!("up{{job=\"{JOB}\"}}"))
    ));
    let instance = format!("127.0.0.1:{}", worker.metrics_port);
    assert!(
        instances.as_array().unwrap().iter().any(|v| v == &instance),
        "{instances}"
    );
    // Every alert rule evaluates without error against the real series, and none fires.
    let rules = prometheus.api("/api/v1/rules");
    let mut evaluated = 0;
    for group in rules["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            evaluated += 1;
            assert_eq!(rule["health"], "ok", "{rule}\n{}", prometheus.log());
        }
    }
    assert_eq!(evaluated, 13);
    let firing = prometheus.api("/api/v1/alerts");
    let firing: Vec<&Value> = firing["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] != "WalletDeadLetters")
        .collect();
    assert!(firing.is_empty(), "a healthy worker fires {firing:?}");
    drop(prometheus);

    // wallet top renders a frame from the live worker during more load, and shows an endpoint
    // nobody listens on as down.
    let more = requests(&ids, "t", 3_000);
    let publisher = std::thread::scope(|scope| {
        let publishing = scope.spawn(|| {
            for chunk in more.chunks(150) {
                stack.publish_requests(chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let dead = format!("127.0.0.1:{}", free_port());
        let output = Command::new(WALLET_BIN)
            .args(["top", "--once", "--interval-ms", "1500", &instance, &dead])
            .output()
            .expect("run wallet top");
        publishing.join().expect("publisher");
        (output, dead)
    });
    let (output, dead) = publisher;
    let frame = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wallet top: {:?}\n{frame}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{frame}");
    let line = |needle: &str| -> String {
        frame
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{frame}"))
            .to_string()
    };
    assert!(
        line("wallet top").contains("2 workers: 1 up, 1 ready, 1 down"),
        "{frame}"
    );
    let row: Vec<String> = line(&format!("{instance} "))
        .split('│')
        .nth(1)
        .expect("a table row")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(row[1], "ready", "{row:?}");
    let transfers_per_s: f64 = row[2].parse().unwrap_or_else(|_| panic!("tx/s in {row:?}"));
    assert!(
        transfers_per_s > 0.0,
        "transfers/s under load: {row:?}\n{frame}"
    );
    assert!(line(&format!("{dead} ")).contains("DOWN:"), "{frame}");
    assert!(
        line(&format!("{dead}  down:")).contains("refused"),
        "{frame}"
    );
}

#[test]
fn readyz_follows_a_redis_outage_while_healthz_stays_up() {
    let mut stack = Stack::start(2);
    let mut worker = stack.spawn_worker(&[]);
    let port = worker.metrics_port;
    let readyz = || http_get(port, "/readyz");
    let healthz_ok = || matches!(http_get(port, "/healthz"), Ok((200, ref body)) if body == "ok\n");
    wait_until(
        "the worker to be ready",
        60_000,
        || matches!(readyz(), Ok((200, ref body)) if body == "ready\n"),
    );
    assert!(healthz_ok());
    assert_eq!(metric(&worker, "wallet_ready"), Some(1.0));

    let started = Instant::now();
    stack.redis.stop();
    let mut reason = String::new();
    wait_until("/readyz to answer 503 with Redis stopped", 15_000, || {
        assert!(healthz_ok(), "/healthz failed while Redis is down");
        match readyz() {
            Ok((503, body)) => {
                reason = body;
                true
            }
            _ => false,
        }
    });
    println!("Redis stopped: 503 after {:?}: {reason}", started.elapsed());
    assert!(reason.starts_with("not ready: redis: "), "{reason}");
    assert!(!reason.contains("group:"), "{reason}");
    assert_eq!(metric(&worker, "wallet_ready"), Some(0.0));
    assert_eq!(
        metric(&worker, "wallet_ready_check{check=\"redis\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&worker, "wallet_ready_check{check=\"producer\"}"),
        Some(1.0)
    );
    assert!(worker.is_running(), "the worker survives the outage");

    let restarted = Instant::now();
    stack.redis.start_again();
    wait_until("/readyz to answer 200 with Redis back", 15_000, || {
        assert!(healthz_ok(), "/healthz failed while Redis comes back");
        matches!(readyz(), Ok((200, _)))
    });
    println!("Redis back: 200 after {:?}", restarted.elapsed());

    // A Redis that accepts connections but does not answer (SIGSTOP) is not ready either: the
    // PING times out.
    stack.redis.pause();
    let mut reason = String::new();
    wait_until("/readyz to answer 503 with Redis paused", 15_000, || {
        assert!(healthz_ok());
        match readyz() {
            Ok((503, body)) => {
                reason = body;
                true
            }
            _ => false,
        }
    });
    println!("Redis paused: {reason}");
    assert!(reason.starts_with("not ready: redis: "), "{reason}");
    stack.redis.resume();
    wait_until("/readyz to answer 200 with Redis resumed", 15_000, || {
        matches!(readyz(), Ok((200, _)))
    });
    assert!(worker.is_running());
    assert!(healthz_ok());
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(30_000), Some(0), "{}", worker.log());
}

#[test]
fn wallet_top_shows_an_unreachable_endpoint_as_down() {
    let port = free_port();
    let output = Command::new(WALLET_BIN)
        .args(["top", "--once", "--interval-ms", "250"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("run wallet top");
    let frame = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{frame}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(frame.contains("1 worker: 0 up, 0 ready, 1 down"), "{frame}");
    assert!(
        frame.contains(&format!("127.0.0.1:{port}  down: ")),
        "{frame}"
    );

    // Without a terminal and without --once it says what to do instead of drawing.
    let output = Command::new(WALLET_BIN)
        .args(["top", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .expect("run wallet top");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--once"));
}
