//! `wallet bench --e2e` against a real stack: redis-server, tansu and a `wallet worker`.

use crate::support::stack::Stack;

#[test]
fn e2e_bench_waits_for_every_result_and_reports_json() {
    let stack = Stack::start(2);
    let worker = stack.spawn_worker(&[]);
    let out = stack.wallet(
        "bench",
        &[
            "--e2e",
            "--transfers",
            "300",
            "--wallets",
            "50",
            "--json",
            "--timeout-s",
            "240",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}\nworker log:\n{}",
        out.status.code(),
        worker.log()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["mode"], "e2e", "{report}");
    assert_eq!(report["transfers"], 300, "{report}");
    assert!(
        report["transfers_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["engine"].is_null(), "{report}");
    assert_eq!(report["balance"]["ok"], true, "{report}");
    let answered: u64 = report["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, 300, "{report}");
}

#[test]
fn e2e_bench_without_results_times_out_with_exit_1() {
    // No worker: nothing answers, so the run must give up at its warm-up request, before the
    // clock starts, and say what to check.
    let stack = Stack::start(1);
    let out = stack.wallet(
        "bench",
        &[
            "--e2e",
            "--transfers",
            "5",
            "--wallets",
            "2",
            "--timeout-s",
            "3",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("warm-up request got no result") && stderr.contains("is a worker running"),
        "stderr: {stderr}"
    );
}
