//! `wallet top`: a live terminal view of running workers, read from their `/metrics` and
//! refreshed every second: transfers/s by status, p50/p99 per stage, lag, retries, dead letters,
//! lock waits. For the operator at a terminal without Grafana.
//!
//! Owns the endpoint argument, the scrape (a plain HTTP/1.0 GET with short timeouts, so one
//! stuck worker cannot freeze the view), the reading of the text exposition format, the
//! figures computed from two scrapes (rates and histogram quantiles over the interval between
//! them, as Prometheus's `rate` and `histogram_quantile` would), and the ratatui frame. An
//! endpoint that does not answer is a row marked down, never an error. Does not own the metric
//! names, their labels or their meaning: it queries the exporter's constants
//! (`worker::metrics::names`, `worker::metrics::labels`, `Stage`); nor anything the worker does.
//!
//! `--once` prints one frame as text (two scrapes one interval apart, rendered on ratatui's
//! test backend) and exits: for scripts, logs and the tests.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Args;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use wallet_transfer::Status;
use wallet_transfer::worker::metrics::{Stage, labels, names};

use crate::cli::worker::METRICS_ADDR_DEFAULT;
use crate::cli::{Failure, GlobalOpts, print_out};

/// Longest wait to connect to one endpoint, and then for its whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
const READ_TIMEOUT: Duration = Duration::from_millis(900);
/// Largest `/metrics` answer read (a worker's is about 30 KiB).
const RESPONSE_BYTES_LIMIT: u64 = 8 << 20;

#[derive(Debug, Args)]
#[command(
    after_help = "Keys: q, Esc or Ctrl-C quit. A worker that does not answer is shown \
                  as down with the reason, and comes back when it answers again. Rates and \
                  percentiles cover the last refresh interval; - means nothing happened in it.\n\
                  Examples:\n  wallet top\n  wallet top 10.0.0.5:9898 10.0.0.6:9898\n  \
                  wallet top --once http://127.0.0.1:9898/metrics"
)]
pub struct TopArgs {
    /// Metrics endpoints of the workers: HOST:PORT or http://HOST:PORT[/PATH] (path
    /// /metrics by default)
    #[arg(value_name = "ENDPOINT", default_value = METRICS_ADDR_DEFAULT, num_args = 1..)]
    pub endpoints: Vec<String>,

    /// Refresh period in milliseconds (250 to 60000)
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(250..=60_000))]
    pub interval_ms: u64,

    /// Print one frame as text (two scrapes one interval apart) and exit; needs no terminal
    #[arg(long)]
    pub once: bool,

    /// Width of the --once frame, in columns
    #[arg(long, value_name = "COLUMNS", default_value_t = 132,
          value_parser = clap::value_parser!(u16).range(60..=1000))]
    pub width: u16,
}

/// Runs the live view until q, or prints one frame with --once.
pub fn run(_global: &GlobalOpts, args: TopArgs) -> Result<(), Failure> {
    let targets = args
        .endpoints
        .iter()
        .map(|e| Target::parse(e).map_err(Failure::usage))
        .collect::<Result<Vec<_>, _>>()?;
    let interval = Duration::from_millis(args.interval_ms);
    let mut workers: Vec<Worker> = targets.into_iter().map(Worker::new).collect();
    if args.once {
        scrape_all(&mut workers);
        std::thread::sleep(interval);
        scrape_all(&mut workers);
        return print_out(&render_text(&workers, interval, args.width));
    }
    if !std::io::stdout().is_terminal() {
        return Err(Failure::usage(
            "wallet top needs a terminal; use --once to print one frame",
        ));
    }
    live(&mut workers, interval)
}

/// The interactive loop: scrape, draw, wait for the next tick or a key.
fn live(workers: &mut [Worker], interval: Duration) -> Result<(), Failure> {
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::runtime(format!("cannot set up the terminal: {e}")))?;
    let result = (|| -> Result<(), Failure> {
        loop {
            let tick = Instant::now() + interval;
            scrape_all(workers);
            terminal
                .draw(|frame| draw(frame, frame.area(), workers, interval))
                .map_err(|e| Failure::runtime(format!("drawing: {e}")))?;
            while let Some(left) = tick.checked_duration_since(Instant::now()) {
                if !event::poll(left).map_err(|e| Failure::runtime(e.to_string()))? {
                    break;
                }
                if let Event::Key(key) =
                    event::read().map_err(|e| Failure::runtime(e.to_string()))?
                    && key.kind == KeyEventKind::Press
                    && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    result
}

// --- endpoints and scraping ---

/// Where one worker's metrics are: host, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// `HOST:PORT`, `http://HOST:PORT` or `http://HOST:PORT/PATH`.
    fn parse(text: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            format!("ENDPOINT {text:?}: {why} (expected HOST:PORT or http://HOST:PORT[/PATH])")
        };
        if text.starts_with("https://") {
            return Err(bad("https is not supported"));
        }
        let rest = text.strip_prefix("http://").unwrap_or(text);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        Ok(Target {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn label(&self) -> String {
        if self.path == "/metrics" {
            format!("{}:{}", self.host, self.port)
        } else {
            format!("{}:{}{}", self.host, self.port, self.path)
        }
    }

    /// GETs the path: the body of a 200 answer, or why there is none.
    fn fetch(&self) -> Result<String, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or("cannot resolve: no address")?;
        let mut stream =
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + READ_TIMEOUT;
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}:{}\r\nAccept: text/plain\r\n\r\n",
            self.path, self.host, self.port
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or("no complete answer in time")?;
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
            if response.len() as u64 > RESPONSE_BYTES_LIMIT {
                return Err("answer too large".into());
            }
        }
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
        let status = head.split_whitespace().nth(1).unwrap_or("?");
        if status != "200" {
            return Err(format!("HTTP {status}"));
        }
        Ok(body.to_string())
    }
}

/// One parsed scrape and when it was taken.
#[derive(Debug, Clone)]
struct Scrape {
    at: Instant,
    samples: Samples,
}

/// A worker as last seen: its previous and latest scrape, or why the latest failed.
#[derive(Debug)]
struct Worker {
    target: Target,
    previous: Option<Scrape>,
    latest: Result<Scrape, String>,
}

impl Worker {
    fn new(target: Target) -> Worker {
        Worker {
            target,
            previous: None,
            latest: Err("not scraped yet".into()),
        }
    }

    /// Records a scrape result; a failure forgets the earlier scrapes (rates start again).
    fn record(&mut self, result: Result<Scrape, String>) {
        match result {
            Ok(scrape) => {
                self.previous = std::mem::replace(&mut self.latest, Ok(scrape)).ok();
            }
            Err(e) => {
                self.previous = None;
                self.latest = Err(e);
            }
        }
    }

    fn view(&self) -> View {
        match &self.latest {
            Err(e) => View::Down(e.clone()),
            Ok(latest) => View::Up(Box::new(figures(self.previous.as_ref(), latest))),
        }
    }
}

/// Scrapes every worker at once (a thread each), so a slow one delays no other.
fn scrape_all(workers: &mut [Worker]) {
    let results: Vec<Result<Scrape, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter()
            .map(|w| {
                let target = &w.target;
                scope.spawn(move || {
                    let body = target.fetch()?;
                    Ok(Scrape {
                        at: Instant::now(),
                        samples: Samples::parse(&body)?,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("scrape panicked".into())))
            .collect()
    });
    for (worker, result) in workers.iter_mut().zip(results) {
        worker.record(result);
    }
}

// --- the exposition format ---

/// The samples of one scrape: name, labels (sorted), value.
#[derive(Debug, Clone, Default)]
struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    /// Reads the Prometheus text format; comments and blank lines are skipped.
    fn parse(text: &str) -> Result<Samples, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample =
                parse_line(line).ok_or_else(|| format!("bad metrics line {}: {line:?}", n + 1))?;
            samples.push(sample);
        }
        Ok(Samples(samples))
    }

    /// The samples named `name` whose labels include every pair of `with`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(_, labels, value)| (labels, *value))
    }

    /// Sum of the matching samples; `None` when there are none.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, with)
            .map(|(_, v)| v)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }

    /// Sum of the matching samples per value of `label`.
    fn sum_by(&self, name: &str, label: &str, with: &[(&str, &str)]) -> BTreeMap<String, f64> {
        let mut by = BTreeMap::new();
        for (labels, value) in self.matching(name, with) {
            let key = labels.get(label).cloned().unwrap_or_default();
            *by.entry(key).or_insert(0.0) += value;
        }
        by
    }
}

fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    Some((name.to_string(), labels, parse_value(value)?))
}

/// Labels up to the closing brace (values quoted, with `\\`, `\"`, `\n` escapes) and the rest.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, after) = s.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        s = &after[1 + end + 1..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

// --- figures ---

/// What a worker shows: down with a reason, or its figures.
#[derive(Debug, Clone)]
enum View {
    Down(String),
    Up(Box<Figures>),
}

/// A worker's figures. Rates and quantiles are over the interval since the previous scrape
/// (`None` before there is one, or when nothing was observed in it).
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    /// `Some(true)` ready; `Some(false)` not; `None` when the worker does not export it.
    ready: Option<bool>,
    failing_checks: Vec<String>,
    assigned_partitions: Option<f64>,
    /// A group join is in progress (`wallet_group_joining`).
    joining: bool,
    completed_per_s: Option<f64>,
    failed_per_s: Option<f64>,
    duplicates_per_s: Option<f64>,
    failed_by_reason_per_s: BTreeMap<String, f64>,
    /// (p50, p99) in seconds per stage, in [`Stage::ALL`] order.
    stages: Vec<(String, Option<(f64, f64)>)>,
    transfer_call: Option<(f64, f64)>,
    lock_wait: Option<(f64, f64)>,
    lag_by_partition: BTreeMap<String, f64>,
    in_flight: Option<f64>,
    parked: Option<f64>,
    retrying: Option<f64>,
    oldest_retry_s: Option<f64>,
    retries_per_s: Option<f64>,
    retries_by_cause_per_s: BTreeMap<String, f64>,
    dead_letters: Option<f64>,
    dead_letters_per_s: Option<f64>,
    lock_timeouts_per_s: Option<f64>,
    watch_conflicts_per_s: Option<f64>,
}

impl Figures {
    fn lag(&self) -> Option<f64> {
        (!self.lag_by_partition.is_empty()).then(|| self.lag_by_partition.values().sum())
    }

    fn transfers_per_s(&self) -> Option<f64> {
        Some(self.completed_per_s? + self.failed_per_s?)
    }
}

/// The figures from the latest scrape and, for rates and quantiles, the one before. Pure.
fn figures(previous: Option<&Scrape>, latest: &Scrape) -> Figures {
    let now = &latest.samples;
    let elapsed = previous.map(|p| latest.at.duration_since(p.at).as_secs_f64());
    let rate = |name: &str, with: &[(&str, &str)]| -> Option<f64> {
        let (previous, elapsed) = (previous?, elapsed.filter(|e| *e > 0.0)?);
        let delta = counter_delta(previous.samples.sum(name, with)?, now.sum(name, with)?);
        Some(delta / elapsed)
    };
    let rates_by = |name: &str, label: &str| -> BTreeMap<String, f64> {
        let (Some(previous), Some(elapsed)) = (previous, elapsed.filter(|e| *e > 0.0)) else {
            return BTreeMap::new();
        };
        let before = previous.samples.sum_by(name, label, &[]);
        now.sum_by(name, label, &[])
            .into_iter()
            .map(|(key, value)| {
                let delta = counter_delta(before.get(&key).copied().unwrap_or(0.0), value);
                (key, delta / elapsed)
            })
            .collect()
    };
    let quantiles = |name: &str, with: &[(&str, &str)]| -> Option<(f64, f64)> {
        let buckets = bucket_deltas(&previous?.samples, now, name, with);
        Some((quantile(0.5, &buckets)?, quantile(0.99, &buckets)?))
    };
    let by_status = |s: Status| rate(names::TRANSFERS_TOTAL, &[(labels::STATUS, s.as_str())]);
    let stage = |s: Stage| quantiles(names::STAGE_SECONDS, &[(labels::STAGE, s.as_str())]);
    let ready_checks = now.sum_by(names::READY_CHECK, labels::CHECK, &[]);
    let mut failed_by_reason_per_s = rates_by(names::TRANSFERS_TOTAL, labels::REASON);
    failed_by_reason_per_s.retain(|reason, rate| !reason.is_empty() && *rate > 0.0);
    let mut retries_by_cause_per_s = rates_by(names::RETRIES_TOTAL, labels::CAUSE);
    retries_by_cause_per_s.retain(|_, rate| *rate > 0.0);
    Figures {
        ready: now.sum(names::READY, &[]).map(|v| v >= 1.0),
        failing_checks: ready_checks
            .into_iter()
            .filter(|(_, ok)| *ok < 1.0)
            .map(|(check, _)| check)
            .collect(),
        assigned_partitions: now.sum(names::ASSIGNED_PARTITIONS, &[]),
        joining: now.sum(names::GROUP_JOINING, &[]).is_some_and(|v| v >= 1.0),
        completed_per_s: by_status(Status::Completed),
        failed_per_s: by_status(Status::Failed),
        duplicates_per_s: rate(names::DUPLICATES_TOTAL, &[]),
        failed_by_reason_per_s,
        stages: Stage::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), stage(*s)))
            .collect(),
        transfer_call: quantiles(names::TRANSFER_LATENCY_SECONDS, &[]),
        lock_wait: quantiles(names::LOCK_WAIT_SECONDS, &[]),
        lag_by_partition: now.sum_by(names::CONSUMER_LAG, labels::PARTITION, &[]),
        in_flight: now.sum(names::IN_FLIGHT_JOBS, &[]),
        parked: now.sum(names::PARKED_JOBS, &[]),
        retrying: now.sum(names::RETRYING_JOBS, &[]),
        oldest_retry_s: now.sum(names::RETRY_OLDEST_AGE_SECONDS, &[]),
        retries_per_s: rate(names::RETRIES_TOTAL, &[]),
        retries_by_cause_per_s,
        dead_letters: now.sum(names::DLQ_TOTAL, &[]),
        dead_letters_per_s: rate(names::DLQ_TOTAL, &[]),
        lock_timeouts_per_s: rate(names::LOCK_TIMEOUTS_TOTAL, &[]),
        watch_conflicts_per_s: rate(names::WATCH_CONFLICTS_TOTAL, &[]),
    }
}

/// A counter's increase; a drop means the worker restarted and counts from zero.
fn counter_delta(before: f64, now: f64) -> f64 {
    if now >= before { now - before } else { now }
}

/// `(upper bound, cumulative count)` of the histogram `name` observed between two scrapes,
/// ascending, `+Inf` last.
fn bucket_deltas(
    before: &Samples,
    now: &Samples,
    name: &str,
    with: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let before = before.sum_by(&bucket, "le", with);
    let mut buckets: Vec<(f64, f64)> = now
        .sum_by(&bucket, "le", with)
        .into_iter()
        .filter_map(|(le, count)| {
            let upper = parse_value(&le)?;
            let delta = counter_delta(before.get(&le).copied().unwrap_or(0.0), count);
            Some((upper, delta))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of cumulative buckets, interpolated linearly within the bucket as
/// Prometheus's `histogram_quantile` does; `None` when nothing was observed. Pure.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (i, &(upper, count)) in buckets.iter().enumerate() {
        if count >= rank {
            if upper.is_infinite() {
                // Above the highest finite bound: that bound is all that is known.
                return Some(if i == 0 { 0.0 } else { buckets[i - 1].0 });
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below) / in_bucket);
        }
        lower = upper;
        below = count;
    }
    None
}

// --- drawing ---

fn rate_text(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn count_text(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn seconds_text(s: f64) -> String {
    if s < 0.001 {
        format!("{:.0}us", s * 1e6)
    } else if s < 0.01 {
        format!("{:.2}ms", s * 1e3)
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

fn pair_text(v: Option<(f64, f64)>) -> String {
    v.map_or("-".into(), |(p50, p99)| {
        format!("{} / {}", seconds_text(p50), seconds_text(p99))
    })
}

fn state_cell(view: &View) -> Cell<'static> {
    match view {
        View::Down(reason) => Cell::from(format!("DOWN: {reason}"))
            .style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)),
        View::Up(f) => match f.ready {
            Some(true) => Cell::from("ready").style(Style::default().fg(Color::Green)),
            Some(false) => Cell::from(format!("NOT READY: {}", f.failing_checks.join(","))).style(
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
            ),
            None => Cell::from("up"),
        },
    }
}

const DASH: &str = "-";

fn throughput_row(label: String, view: &View) -> Row<'static> {
    let mut cells = vec![Cell::from(label), state_cell(view)];
    match view {
        View::Down(_) => cells.extend((0..10).map(|_| Cell::from(DASH))),
        View::Up(f) => cells.extend(
            [
                rate_text(f.transfers_per_s()),
                rate_text(f.completed_per_s),
                rate_text(f.failed_per_s),
                rate_text(f.duplicates_per_s),
                count_text(f.lag()),
                count_text(f.in_flight),
                count_text(f.parked),
                count_text(f.retrying),
                f.oldest_retry_s.map_or(DASH.into(), |s| {
                    if s > 0.0 { seconds_text(s) } else { "0".into() }
                }),
                format!(
                    "{} ({}/s)",
                    count_text(f.dead_letters),
                    rate_text(f.dead_letters_per_s)
                ),
            ]
            .map(Cell::from),
        ),
    }
    Row::new(cells)
}

fn latency_row(label: String, view: &View) -> Row<'static> {
    let mut cells = vec![Cell::from(label)];
    match view {
        View::Down(_) => cells.extend((0..8).map(|_| Cell::from(DASH))),
        View::Up(f) => {
            cells.extend(f.stages.iter().map(|(_, v)| Cell::from(pair_text(*v))));
            cells.extend(
                [
                    pair_text(f.transfer_call),
                    pair_text(f.lock_wait),
                    rate_text(f.lock_timeouts_per_s),
                    rate_text(f.watch_conflicts_per_s),
                    rate_text(f.retries_per_s),
                ]
                .map(Cell::from),
            );
        }
    }
    Row::new(cells)
}

/// One line per worker: partitions and their lag, retries by cause, failures by reason.
fn detail_line(label: String, view: &View) -> Line<'static> {
    let mut spans = vec![Span::styled(
        label,
        Style::default().add_modifier(Modifier::BOLD),
    )];
    let f = match view {
        View::Up(f) => f,
        View::Down(reason) => {
            spans.push(Span::raw(format!("  down: {reason}")));
            return Line::from(spans);
        }
    };
    let list = |map: &BTreeMap<String, f64>, text: fn(f64) -> String| -> String {
        if map.is_empty() {
            return "none".into();
        }
        map.iter()
            .map(|(k, v)| format!("{k}={}", text(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let partitions = if f.joining {
        "joining".to_string()
    } else {
        count_text(f.assigned_partitions)
    };
    spans.push(Span::raw(format!(
        "  partitions {partitions}  lag {}  retries/s {}  failed/s {}",
        list(&f.lag_by_partition, |v| format!("{v:.0}")),
        list(&f.retries_by_cause_per_s, |v| rate_text(Some(v))),
        list(&f.failed_by_reason_per_s, |v| rate_text(Some(v))),
    )));
    Line::from(spans)
}

/// The whole frame for these workers.
fn draw(frame: &mut ratatui::Frame<'_>, area: Rect, workers: &[Worker], interval: Duration) {
    let views: Vec<(String, View)> = workers
        .iter()
        .map(|w| (w.target.label(), w.view()))
        .collect();
    let n = views.len() as u16;
    let [header, throughput, latency, details] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(n + 3),
        Constraint::Length(n + 3),
        Constraint::Min(n + 2),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_lines(&views, interval)), header);
    frame.render_widget(throughput_table(&views), throughput);
    frame.render_widget(latency_table(&views), latency);
    let lines: Vec<Line<'static>> = views
        .iter()
        .map(|(l, v)| detail_line(l.clone(), v))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" per worker ")),
        details,
    );
}

/// Transfers per second by status, lag and what each worker holds.
fn throughput_table(views: &[(String, View)]) -> Table<'static> {
    let widths = [
        Constraint::Min(16),
        Constraint::Min(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(14),
    ];
    let header = [
        "worker",
        "state",
        "tx/s",
        "ok/s",
        "failed/s",
        "dup/s",
        "lag",
        "in flight",
        "parked",
        "retrying",
        "oldest",
        "dead letters",
    ];
    Table::new(
        views.iter().map(|(l, v)| throughput_row(l.clone(), v)),
        widths,
    )
    .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
    .block(Block::bordered().title(" transfers and backlog "))
}

/// p50/p99 per stage, lock waits, timeouts, WATCH conflicts and retries per worker.
fn latency_table(views: &[(String, View)]) -> Table<'static> {
    let widths = [
        Constraint::Min(16),
        Constraint::Length(15),
        Constraint::Length(15),
        Constraint::Length(15),
        Constraint::Length(15),
        Constraint::Length(15),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(10),
    ];
    let header = [
        "worker",
        "queue_wait",
        "transfer",
        "ack",
        "transfer call",
        "lock wait",
        "lock t/o/s",
        "WATCH/s",
        "retries/s",
    ];
    Table::new(views.iter().map(|(l, v)| latency_row(l.clone(), v)), widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(" latency p50 / p99, locks, retries "))
}

/// Title and the totals over the workers that answered.
fn header_lines(views: &[(String, View)], interval: Duration) -> Vec<Line<'static>> {
    let ups: Vec<&Figures> = views
        .iter()
        .filter_map(|(_, v)| match v {
            View::Up(f) => Some(f.as_ref()),
            View::Down(_) => None,
        })
        .collect();
    let ready = ups.iter().filter(|f| f.ready != Some(false)).count();
    let total = |get: fn(&Figures) -> Option<f64>| -> Option<f64> {
        ups.iter()
            .filter_map(|f| get(f))
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    };
    let title = format!(
        "wallet top  {} worker{}: {} up, {} ready, {} down   every {} ms   q quits",
        views.len(),
        if views.len() == 1 { "" } else { "s" },
        ups.len(),
        ready,
        views.len() - ups.len(),
        interval.as_millis()
    );
    let totals = format!(
        "all workers: {} transfers/s ({} completed, {} failed, {} duplicates)  lag {}  retries/s {}  dead letters/s {}",
        rate_text(total(Figures::transfers_per_s)),
        rate_text(total(|f| f.completed_per_s)),
        rate_text(total(|f| f.failed_per_s)),
        rate_text(total(|f| f.duplicates_per_s)),
        count_text(total(Figures::lag)),
        rate_text(total(|f| f.retries_per_s)),
        rate_text(total(|f| f.dead_letters_per_s)),
    );
    vec![
        Line::styled(title, Style::default().add_modifier(Modifier::BOLD)),
        Line::raw(totals),
    ]
}

/// Rows the frame needs for `workers` workers.
fn frame_height(workers: usize) -> u16 {
    let n = u16::try_from(workers).unwrap_or(u16::MAX / 4);
    2 + (n + 3) * 2 + (n + 2)
}

/// One frame drawn on ratatui's test backend, as text lines without trailing blanks.
fn render_text(workers: &[Worker], interval: Duration, width: u16) -> String {
    let height = frame_height(workers.len());
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    terminal
        .draw(|frame| draw(frame, frame.area(), workers, interval))
        .expect("drawing on the test backend");
    buffer_text(terminal.backend())
}

fn buffer_text(backend: &TestBackend) -> String {
    let buffer = backend.buffer();
    let width = usize::from(buffer.area.width);
    let mut text = String::new();
    for row in buffer.content().chunks(width) {
        let line: String = row.iter().map(|cell| cell.symbol()).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// What a worker exports, abridged, after `n` transfers (`n` of them took 3 ms in the
    /// transfer stage).
    fn exposition(n: u64, ready: bool) -> String {
        // A worker that is not ready is also rejoining its group, here.
        let joining = u8::from(!ready);
        let ready = u8::from(ready);
        format!(
            r#"# HELP wallet_transfers_total Transfer outcomes.
# TYPE wallet_transfers_total counter
wallet_transfers_total{{reason="",status="COMPLETED"}} {completed}
wallet_transfers_total{{reason="insufficient_funds",status="FAILED"}} {failed}
wallet_transfers_total{{reason="same_user",status="FAILED"}} 0
wallet_duplicates_total 2
wallet_dlq_total {dlq}
wallet_retries_total{{cause="redis"}} {redis}
wallet_retries_total{{cause="lock_timeout"}} 0
wallet_consumer_lag{{partition="0"}} 12
wallet_consumer_lag{{partition="3"}} 5
wallet_in_flight_jobs 7
wallet_parked_jobs 1
wallet_retrying_jobs 0
wallet_retry_oldest_age_seconds 0
wallet_lock_timeouts_total 0
wallet_watch_conflicts_total {conflicts}
wallet_ready {ready}
wallet_ready_check{{check="group"}} 1
wallet_ready_check{{check="redis"}} {ready}
wallet_ready_check{{check="producer"}} 1
wallet_assigned_partitions 2
wallet_group_joining {joining}
wallet_stage_seconds_bucket{{stage="transfer",le="0.001"}} 0
wallet_stage_seconds_bucket{{stage="transfer",le="0.005"}} {n}
wallet_stage_seconds_bucket{{stage="transfer",le="+Inf"}} {n}
wallet_stage_seconds_sum{{stage="transfer"}} 0.3
wallet_stage_seconds_count{{stage="transfer"}} {n}
wallet_stage_seconds_bucket{{stage="ack",le="0.001"}} 0
wallet_stage_seconds_bucket{{stage="ack",le="+Inf"}} 0
"#,
            completed = n * 9 / 10,
            failed = n / 10,
            dlq = n / 100,
            redis = n / 50,
            conflicts = n / 20,
        )
    }

    fn scrape(at: Instant, n: u64, ready: bool) -> Scrape {
        Scrape {
            at,
            samples: Samples::parse(&exposition(n, ready)).unwrap(),
        }
    }

    #[test]
    fn endpoints_parse_with_or_without_scheme_and_path() {
        let t = Target::parse("127.0.0.1:9898").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9898, "/metrics")
        );
        let t = Target::parse("http://worker-1:9100/custom").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("worker-1", 9100, "/custom")
        );
        assert_eq!(t.label(), "worker-1:9100/custom");
        let t = Target::parse("[::1]:9898").unwrap();
        assert_eq!(t.host, "::1");
        for bad in ["localhost", ":9898", "host:port", "https://h:1", "h:70000"] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.starts_with("ENDPOINT"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_parser_reads_labels_escapes_and_special_values() {
        let text = "# comment\n\nm{a=\"x\\\"y\",b=\"1\\\\2\\n\"} 3 1700000000\nn +Inf\no NaN\np{} -1.5e-3\n";
        let samples = Samples::parse(text).unwrap();
        let (labels, value) = samples.matching("m", &[]).next().unwrap();
        assert_eq!(labels["a"], "x\"y");
        assert_eq!(labels["b"], "1\\2\n");
        assert_eq!(value, 3.0);
        assert_eq!(samples.sum("n", &[]), Some(f64::INFINITY));
        assert!(samples.sum("o", &[]).unwrap().is_nan());
        assert_eq!(samples.sum("p", &[]), Some(-0.0015));
        assert_eq!(samples.sum("absent", &[]), None);
        assert!(Samples::parse("m{a=\"unclosed} 1").is_err());
        assert!(Samples::parse("m notanumber").is_err());
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        // 100 observations: 50 at or below 1, 40 in (1, 2], 10 in (2, 4].
        let buckets = [
            (1.0, 50.0),
            (2.0, 90.0),
            (4.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &buckets), Some(1.0));
        assert_eq!(quantile(0.7, &buckets), Some(1.5));
        assert!((quantile(0.99, &buckets).unwrap() - 3.8).abs() < 1e-9);
        // Beyond the last finite bound: that bound.
        let beyond = [(1.0, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &beyond), Some(1.0));
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn figures_are_rates_over_the_interval_and_a_restart_counts_from_zero() {
        let t0 = Instant::now();
        let before = scrape(t0, 1_000, true);
        let after = scrape(t0 + Duration::from_secs(2), 3_000, true);
        let f = figures(Some(&before), &after);
        assert_eq!(f.completed_per_s, Some(900.0));
        assert_eq!(f.failed_per_s, Some(100.0));
        assert_eq!(f.transfers_per_s(), Some(1_000.0));
        assert_eq!(f.duplicates_per_s, Some(0.0));
        assert_eq!(f.failed_by_reason_per_s["insufficient_funds"], 100.0);
        assert!(
            !f.failed_by_reason_per_s.contains_key("same_user"),
            "zero rates hidden"
        );
        assert_eq!(
            f.retries_by_cause_per_s.keys().collect::<Vec<_>>(),
            ["redis"]
        );
        assert_eq!(f.dead_letters, Some(30.0));
        assert_eq!(f.dead_letters_per_s, Some(10.0));
        assert_eq!(f.lag(), Some(17.0));
        assert_eq!(f.ready, Some(true));
        let transfer = f.stages.iter().find(|(s, _)| s == "transfer").unwrap().1;
        let (p50, p99) = transfer.unwrap();
        assert!(
            (p50 - 0.003).abs() < 1e-9 && (p99 - 0.00496).abs() < 1e-9,
            "{p50} {p99}"
        );
        let ack = f.stages.iter().find(|(s, _)| s == "ack").unwrap().1;
        assert_eq!(ack, None, "nothing observed");

        let first = figures(None, &before);
        assert_eq!(first.completed_per_s, None, "no rate from one scrape");
        assert_eq!(first.lag(), Some(17.0));

        let restarted = scrape(t0 + Duration::from_secs(4), 200, false);
        let f = figures(Some(&after), &restarted);
        assert_eq!(
            f.completed_per_s,
            Some(90.0),
            "counted from zero after a restart"
        );
        assert_eq!(f.ready, Some(false));
        assert_eq!(f.failing_checks, ["redis"]);
    }

    fn worker(label: &str, previous: Option<Scrape>, latest: Result<Scrape, String>) -> Worker {
        Worker {
            target: Target::parse(label).unwrap(),
            previous,
            latest,
        }
    }

    #[test]
    fn a_frame_shows_live_workers_and_down_ones() {
        let t0 = Instant::now();
        let workers = [
            worker(
                "10.0.0.1:9898",
                Some(scrape(t0, 1_000, true)),
                Ok(scrape(t0 + Duration::from_secs(1), 2_000, true)),
            ),
            worker(
                "10.0.0.2:9898",
                Some(scrape(t0, 0, false)),
                Ok(scrape(t0 + Duration::from_secs(1), 0, false)),
            ),
            worker(
                "10.0.0.3:9898",
                None,
                Err("Connection refused (os error 111)".into()),
            ),
        ];
        let text = render_text(&workers, Duration::from_secs(1), 132);
        let line = |needle: &str| -> &str {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
        };
        assert!(
            line("wallet top").contains("3 workers: 2 up, 1 ready, 1 down"),
            "{text}"
        );
        assert!(
            line("all workers:").contains("1000.0 transfers/s (900.0 completed, 100.0 failed"),
            "{text}"
        );
        let first = line("10.0.0.1:9898 ");
        assert!(
            first.contains("ready") && first.contains("1000.0") && first.contains("900.0"),
            "{first}"
        );
        assert!(first.contains("20 (10.0/s)"), "dead letters: {first}");
        assert!(line("10.0.0.2:9898").contains("NOT READY: redis"), "{text}");
        assert!(line("10.0.0.3:9898").contains("DOWN: Connection"), "{text}");
        assert!(
            line("10.0.0.3:9898  down:").contains("down: Connection refused (os error 111)"),
            "the whole reason in the details: {text}"
        );
        let latency = text
            .lines()
            .filter(|l| l.contains("10.0.0.1:9898"))
            .nth(1)
            .expect("a latency row");
        assert!(latency.contains("3.00ms / 4.96ms"), "{latency}");
        assert!(line("partitions 2").contains("lag 0=12 3=5"), "{text}");
        assert!(
            line("10.0.0.2:9898  partitions joining").contains("lag 0=12"),
            "{text}"
        );
        assert!(text.lines().count() <= usize::from(frame_height(3)));
    }

    #[test]
    fn an_unreachable_endpoint_is_down_not_an_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut workers = vec![Worker::new(
            Target::parse(&format!("127.0.0.1:{port}")).unwrap(),
        )];
        scrape_all(&mut workers);
        assert!(
            matches!(workers[0].view(), View::Down(_)),
            "{:?}",
            workers[0]
        );
        let text = render_text(&workers, Duration::from_secs(1), 100);
        assert!(text.contains("DOWN:"), "{text}");
    }

    #[test]
    fn a_non_200_answer_or_garbage_is_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.0 503 Service Unavailable\r\n\r\nnot ready\n",
                "HTTP/1.0 200 OK\r\n\r\nthis is not { the format\n",
            ] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                    request.push(byte[0]);
                }
                assert!(request.starts_with(b"GET /metrics HTTP/1.0\r\n"));
                stream.write_all(answer.as_bytes()).unwrap();
            }
        });
        let mut workers = vec![Worker::new(Target::parse(&addr.to_string()).unwrap())];
        scrape_all(&mut workers);
        assert!(
            matches!(&workers[0].latest, Err(e) if e == "HTTP 503"),
            "{:?}",
            workers[0]
        );
        scrape_all(&mut workers);
        assert!(
            matches!(&workers[0].latest, Err(e) if e.starts_with("bad metrics line 1")),
            "{:?}",
            workers[0]
        );
        server.join().unwrap();
    }
}
