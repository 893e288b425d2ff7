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
