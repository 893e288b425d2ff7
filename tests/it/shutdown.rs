//! Stops on time whatever is down: a worker under a burst loses the broker, Redis or both, then
//! gets SIGTERM; it must exit 0 within its shutdown timeout plus 2 s, every time. Afterwards the
//! servers come back with a new worker, and every request has one effect and its result, with a
//! clean audit. Also: a long broker outage under load costs few log lines and little CPU.
//!
//! Tries per scenario: 1 in `make test`, 5 under `FAULT_SCALE=full` (`make fault-test`); each
//! try's seed is printed and `FAULT_SEED` replays it.

use std::time::Instant;

use crate::support::faults::{self, check, rng, size, wait_for_outcomes, wait_recorded};
use crate::support::stack::Stack;
use crate::support::{RedisServer, Tansu, ms};
use rand::RngExt;

/// The worker's shutdown timeout in these tests (its default).
const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// What the exit may take beyond the timeout.
const EXIT_SLACK_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy)]
enum Away {
    Both,
    Broker,
    Redis,
}

/// One try: burst, take `away`, SIGTERM, time the exit; then recover and check.
fn stop_with_servers_away(away: Away, seed: u64) {
    println!("shutdown with {away:?} away: seed {seed} (FAULT_SEED={seed} replays it)");
    let mut rng = rng(seed);
    let mut stack = Stack::start_on(RedisServer::start(), Tansu::start_persistent(), 4);
    let ids = faults::wallets(&stack, "sd", 50, "1000000000.00");
    let n = size(1_500, 20_000);
    let requests = faults::requests(&ids, n, "sd", 1..50_000, &mut rng);
    stack.publish_requests(&requests);
    let mut worker = stack.spawn_worker(&["--threads", "8"]);
    wait_recorded(&stack, &requests, rng.random_range(n / 20..n / 5), 120_000);
    match away {
        Away::Both => {
            stack.tansu.stop();
            stack.redis.stop();
        }
        Away::Broker => stack.tansu.stop(),
        Away::Redis => stack.redis.stop(),
    }
    std::thread::sleep(ms(rng.random_range(2_000..size(5_000, 15_000) as u64)));
    let signalled = Instant::now();
    worker.signal("TERM");
    let code = worker.wait_exit(SHUTDOWN_TIMEOUT_MS + EXIT_SLACK_MS + 5_000);
    let took = signalled.elapsed();
    println!(
        "{away:?} away: exit {code:?} {:.1} s after SIGTERM",
        took.as_secs_f64()
    );
    assert!(
        took <= ms(SHUTDOWN_TIMEOUT_MS + EXIT_SLACK_MS),
        "{away:?} away: exited {:.1} s after SIGTERM, over the {} s deadline plus {} s",
        took.as_secs_f64(),
        SHUTDOWN_TIMEOUT_MS / 1000,
        EXIT_SLACK_MS / 1000
    );
    assert_eq!(code, Some(0), "{away:?} away: a clean exit");
    let log = worker.log();
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("jobs abandoned"),
        "last line says what was left: {last}"
    );

    if matches!(away, Away::Both | Away::Broker) {
        stack.tansu.start_again();
    }
    if matches!(away, Away::Both | Away::Redis) {
        stack.redis.start_again();
    }
    // Restarted until it holds the partitions (the stopped member's session: see
    // `spawn_worker_assigned`).
    let _worker = stack.spawn_worker_assigned(&[]);
    let mut results = stack.reader(&stack.topics.results);
    let recovery = wait_for_outcomes(&stack, &mut results, &requests, 180_000);
    results.drain_tolerant(1_000);
    let fault = format!("{away:?} away, SIGTERM");
    check(
        &stack,
        &fault,
        1,
        &requests,
        &results.messages,
        recovery,
        true,
    )
    .print_and_assert();
}

fn tries(away: Away, base: &str) {
    let first = faults::seed(base);
    for i in 0..size(1, 5) as u64 {
        stop_with_servers_away(away, first.wrapping_add(i));
    }
}

#[test]
fn a_worker_stops_on_time_when_the_broker_and_redis_are_gone() {
    tries(Away::Both, "shutdown-both");
}

#[test]
fn a_worker_stops_on_time_when_the_broker_is_gone() {
    tries(Away::Broker, "shutdown-broker");
}

#[test]
fn a_worker_stops_on_time_when_redis_is_gone() {
    tries(Away::Redis, "shutdown-redis");
}

/// CPU seconds a process has used (utime + stime from /proc).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

#[test]
fn a_long_broker_outage_under_load_costs_few_log_lines_and_little_cpu() {
    let mut rng = rng(faults::seed("outage-quiet"));
    let mut stack = Stack::start_on(RedisServer::start(), Tansu::start_persistent(), 4);
    let ids = faults::wallets(&stack, "oq", 50, "1000000000.00");
    let n = size(3_000, 20_000);
    let requests = faults::requests(&ids, n, "oq", 1..50_000, &mut rng);
    stack.publish_requests(&requests);
    let flags = ["--threads", "8", "--session-timeout-ms", "60000"];
    let flags = [&flags[..], &["--max-poll-interval-ms", "90000"]].concat();
    let worker = stack.spawn_worker(&flags);
    wait_recorded(&stack, &requests, n / 10, 120_000);
    stack.tansu.stop();
    let lines_before = worker.log().lines().count();
    let cpu_before = cpu_s(worker.pid());
    let outage_ms = size(10_000, 30_000) as u64;
    std::thread::sleep(ms(outage_ms));
    let lines = worker.log().lines().count() - lines_before;
    let cpu = (cpu_s(worker.pid()) - cpu_before) / (outage_ms as f64 / 1000.0);
    println!(
        "broker away {} s under load: {lines} log lines, worker CPU {:.1}% of a core",
        outage_ms / 1000,
        cpu * 100.0
    );
    assert!(lines < 100, "{lines} log lines during the outage");
    // A retry loop that spins costs a whole core (100%); a quiet worker finishing what it had
    // fetched while librdkafka reconnects measured 12-22%, more on a machine busy with other
    // work. Half a core tells the two apart whatever the load (issue 22: no assertion on the
    // machine's speed).
    assert!(
        cpu < 0.50,
        "worker CPU {:.1}% of a core during the outage: something spins",
        cpu * 100.0
    );
    stack.tansu.start_again();
    let mut results = stack.reader(&stack.topics.results);
    let recovery = wait_for_outcomes(&stack, &mut results, &requests, 180_000);
    results.drain_tolerant(1_000);
    check(
        &stack,
        "broker away, quiet",
        1,
        &requests,
        &results.messages,
        recovery,
        true,
    )
    .print_and_assert();
}
