#!/usr/bin/env bash
# A local stack of plain processes: redis-server and the tansu broker on free loopback ports.
#   scripts/stack.sh up DIR     start both, write DIR/env (REDIS_URL, KAFKA_BROKERS) and pid files
#   scripts/stack.sh down DIR   stop what DIR/*.pid names
#   scripts/stack.sh status DIR
# Logs go to DIR/redis.log and DIR/tansu.log. Used by `make up/down` (DIR=.dev) and `make demo`.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cmd=${1:?usage: stack.sh up|down|status DIR}
dir=${2:?usage: stack.sh up|down|status DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "stack: $what did not come up within ${secs}s; see the logs in $dir" >&2
  return 1
}

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

case "$cmd" in
  up)
    if running redis && running tansu; then
      echo "stack already up ($dir/env):"; cat "$dir/env"; exit 0
    fi
    redis_port=$(free_port)
    kafka_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
      --appendfsync everysec --save '' --daemonize no >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    (cd "$dir" && exec tansu broker --listener-url "tcp://127.0.0.1:$kafka_port" \
      --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
      --storage-engine sqlite://tansu.db >"$dir/tansu.log" 2>&1) &
    echo $! >"$dir/tansu.pid"
    wait_for "redis-server" 20 redis-cli -p "$redis_port" ping
    wait_for "tansu" 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$kafka_port"
    printf 'REDIS_URL=redis://127.0.0.1:%s\nKAFKA_BROKERS=127.0.0.1:%s\n' "$redis_port" "$kafka_port" >"$dir/env"
    echo "stack up: redis-server on $redis_port, tansu on $kafka_port (settings in $dir/env)"
    ;;
  down)
    for name in worker tansu redis; do
      if running "$name"; then
        kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
        # The worker stops within its --shutdown-timeout-ms (10 s by default); then SIGKILL.
        for _ in $(seq 1 150); do running "$name" || break; sleep 0.1; done
        running "$name" && kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null || true
        echo "stopped $name"
      fi
      rm -f "$dir/$name.pid"
    done
    ;;
  status)
    for name in redis tansu worker; do
      if running "$name"; then echo "$name: running (pid $(cat "$dir/$name.pid"))"; else echo "$name: stopped"; fi
    done
    [ -f "$dir/env" ] && cat "$dir/env"
    ;;
  *) echo "usage: stack.sh up|down|status DIR" >&2; exit 2 ;;
esac
