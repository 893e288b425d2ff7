//! `wallet produce`: the six race scenarios against a real worker, twice on the same stack.

use crate::support::stack::Stack;
use wallet_transfer::EngineConfig;
use wallet_transfer::tools::ops;

#[test]
fn all_six_scenarios_pass_twice_on_the_same_stack_and_the_audit_stays_clean() {
    let stack = Stack::start(6);
    let _worker = stack.spawn_worker(&[]);
    for run in 1..=2 {
        let output = stack.wallet("produce", &["--timeout", "120"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "run {run}: exit {:?}\n{stdout}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            stdout.matches("verdict: PASS").count(),
            6,
            "run {run}:\n{stdout}"
        );
        assert!(stdout.contains("summary: 6 of 6 scenarios passed"));
    }
    let service = stack.redis.service(2, EngineConfig::default());
    let report = ops::audit(&service).expect("audit");
    assert!(report.is_ok(), "{:?}", report.violations);
}
