#!/usr/bin/env bash
# `make demo`: the whole system on this machine, from nothing, then gone again.
# Installs what is missing, builds, starts redis-server and tansu on free ports in a temporary
# folder, seeds users, starts a worker, sends transfers through Kafka (including the races the
# engine is built for), audits the ledger, and stops everything it started (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

scripts/install-deps.sh
step "building (release)"
cargo build --release --quiet
wallet=$PWD/target/release/wallet

dir=$(mktemp -d -t wallet-demo.XXXXXX)
cleanup() {
  status=$?
  if [ -f "$dir/worker.pid" ] && kill -0 "$(cat "$dir/worker.pid")" 2>/dev/null; then
    kill -TERM "$(cat "$dir/worker.pid")" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$(cat "$dir/worker.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  scripts/stack.sh down "$dir" >/dev/null 2>&1 || true
  if [ $status -ne 0 ]; then
    echo "demo failed (exit $status); logs kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting redis-server and tansu in $dir"
scripts/stack.sh up "$dir"
set -a; source "$dir/env"; set +a

step "seeding 20 users"
"$wallet" seed --users 20 --rng-seed 7

step "starting the worker"
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=info "$wallet" worker --threads 4 --metrics-addr "127.0.0.1:$metrics_port" \
  >"$dir/worker.log" 2>&1 &
echo $! >"$dir/worker.pid"
for _ in $(seq 1 300); do grep -q "assigned" "$dir/worker.log" && break; sleep 0.1; done
grep -q "assigned" "$dir/worker.log" || { echo "worker did not start:"; cat "$dir/worker.log"; exit 1; }
echo "worker running (log $dir/worker.log, metrics http://127.0.0.1:$metrics_port/metrics)"

if "$wallet" produce --help >/dev/null 2>&1; then
  step "the six race scenarios"
  "$wallet" produce
else
  step "transfers through Kafka"
  "$wallet" snapshot --prefix user_ | head -8
  "$wallet" transfer user_1 user_2 10.00 --id demo_ok --wait
  "$wallet" transfer user_1 user_2 10.00 --id demo_ok --wait   # the same request again
  "$wallet" transfer user_3 user_3 1.00 --id demo_same --wait || true
  "$wallet" transfer user_4 user_5 99999999.00 --id demo_broke --wait || true
  step "a burst of 500 random transfers end to end"
  "$wallet" bench --e2e --transfers 500 --wallets 50
fi

step "ledger audit"
"$wallet" audit

step "metrics (excerpt)"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^wallet_(transfers_total|dlq_total|results_published_total)' | head -12 || true
step "demo finished: everything it started is being stopped"
