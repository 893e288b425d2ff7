//! The worker under rebalances, stops, retries and long runs (issue 25): retries that back
//! off, a fetch that goes back, commits that survive a stop during a revoke, the final
//! commit's share of the stop deadline, stale jobs, thread panics and stalled partitions. Real
//! redis-server, real tansu, the real `wallet worker` binary; test hooks (feature
//! `test-hooks`) only where a fault cannot be caused from outside.

use crate::support::create_wallets;
use crate::support::stack::{Stack, result_of};
use crate::support::wait_until;
use wallet_transfer::{Currency, EngineConfig, Status, TransferRequest};

/// Issue 25, item 1: the transient retries of one stuck request back off. Its sender's wallet
/// is locked by another owner and the worker tries each lock once (`--lock-retries 0`), so
/// every try is one `lock_timeout` retry. The delays before tries 2..=8 are at least
/// 50, 100, ..., 1,600 and 2,000 ms (doubling from 50 ms, capped at `--retry-delay-ms-max`),
/// so the eighth try cannot come before 5,150 ms: a slower machine only makes it later.
/// Without the backoff (every delay 50 ms) eight tries came within half a second.
#[test]
fn the_retries_of_a_stuck_request_double_up_to_the_cap() {
    let stack = Stack::start(1);
    let service = stack.redis.service(2, EngineConfig::default());
    create_wallets(&service, &[("stuck_from", "100.00"), ("stuck_to", "0")]);
    let worker = stack.spawn_worker(&["--lock-retries", "0", "--retry-delay-ms-max", "2000"]);
    let mut conn = stack.redis.conn();
    redis::cmd("SET")
        .arg("lock:stuck_from")
        .arg("another-owner")
        .arg("PX")
        .arg(300_000)
        .query::<()>(&mut conn)
        .unwrap();
    let retries = || worker.metric(r#"wallet_retries_total{cause="lock_timeout"}"#) as u64;
    let started = std::time::Instant::now();
    let request = TransferRequest::new("stuck", "stuck_from", "stuck_to", "5", Currency::USD);
    stack.publish_requests(&[request.unwrap()]);
    let tries = 8;
    wait_until("eight tries of the stuck request", 120_000, || {
        retries() >= tries
    });
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let least_ms: u64 = [50, 100, 200, 400, 800, 1_600, 2_000].iter().sum();
    println!("{tries} tries of one stuck request took {elapsed_ms} ms (at least {least_ms})");
    assert!(
        elapsed_ms >= least_ms,
        "{tries} tries within {elapsed_ms} ms: the retries do not back off (at least {least_ms} ms)"
    );
    redis::cmd("DEL")
        .arg("lock:stuck_from")
        .query::<()>(&mut conn)
        .unwrap();
    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(1, 60_000).to_vec();
    assert_eq!(result_of(&read[0]).status, Status::Completed);
    wait_until("the stuck request's offset committed", 30_000, || {
        stack.committed().get(&0) == Some(&1)
    });
}

/// Issue 25, item 5: a fetch that goes back is taken as redeliveries, never as a crash. The
/// worker's consumer (hook `WALLET_FAILPOINT_SEEK_BACK`) seeks its partition back to offset 0
/// once it has polled the last request, while the first request (its sender's wallet locked
/// by another owner) is still in flight. Every message fetched again is skipped (in flight or
/// answered); once the lock is gone each request has exactly one result and the commit reaches
/// the end. Before: the consumer thread panicked in `OffsetTracker::start` ("starts must
/// increase") and the worker died.
#[test]
fn a_fetch_that_goes_back_while_jobs_are_in_flight_is_skipped_not_a_crash() {
    let stack = Stack::start(1);
    let service = stack.redis.service(2, EngineConfig::default());
    let mut wallets = vec![("held".to_string(), "100.00".to_string())];
    wallets.extend((0..10).map(|i| (format!("s{i}"), "100.00".to_string())));
    let pairs: Vec<(&str, &str)> = wallets
        .iter()
        .map(|(w, b)| (w.as_str(), b.as_str()))
        .collect();
    create_wallets(&service, &pairs);
    let mut conn = stack.redis.conn();
    redis::cmd("SET")
        .arg("lock:held")
        .arg("another-owner")
        .arg("PX")
        .arg(300_000)
        .query::<()>(&mut conn)
        .unwrap();
    let n: i64 = 20;
    let mut requests = vec![TransferRequest::new("rw0", "held", "s0", "1", Currency::USD).unwrap()];
    requests.extend((1..n).map(|i| {
        let (from, to) = (format!("s{}", i % 10), format!("s{}", (i + 1) % 10));
        TransferRequest::new(&format!("rw{i}"), &from, &to, "1", Currency::USD).unwrap()
    }));
    stack.publish_requests(&requests);
    let seek = format!("{}:0", n - 1);
    let mut worker = stack.spawn_worker_env(
        &["--lock-retries", "0"],
        &[("WALLET_FAILPOINT_SEEK_BACK", seek.as_str())],
    );
    wait_until("the messages fetched again skipped", 60_000, || {
        assert!(worker.is_running(), "the worker died:\n{}", worker.log());
        worker.metric("wallet_redeliveries_skipped_total") >= n as f64
    });
    assert!(
        worker.log().contains("failpoint: seeking partition 0 back"),
        "{}",
        worker.log()
    );
    assert_eq!(
        worker.metric("wallet_redeliveries_skipped_total"),
        n as f64,
        "every message from offset 0 to {} came again once",
        n - 1
    );
    assert!(
        stack.committed().get(&0).is_none_or(|c| *c == 0),
        "nothing committed past the held request at offset 0"
    );
    redis::cmd("DEL")
        .arg("lock:held")
        .query::<()>(&mut conn)
        .unwrap();
    wait_until("every offset committed", 60_000, || {
        stack.committed().get(&0) == Some(&n)
    });
    assert!(worker.is_running(), "{}", worker.log());
    let mut results = stack.reader(&stack.topics.results);
    let read = results.read_until(n as usize, 60_000).to_vec();
    let ids: std::collections::HashSet<String> =
        read.iter().map(|m| result_of(m).transfer_id).collect();
    assert_eq!(ids.len(), n as usize);
    assert_eq!(
        worker.metric("wallet_results_published_total"),
        n as f64,
        "one result per request: nothing fetched again was answered again"
    );
    assert!(
        read.iter()
            .all(|m| result_of(m).status == Status::Completed)
    );
}
