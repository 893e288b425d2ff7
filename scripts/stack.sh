#!/usr/bin/env bash
# A local stack of plain processes: redis-server and the tansu broker on free loopback ports.
#   scripts/stack.sh up DIR     start both, write DIR/env (REDIS_URL, KAFKA_BROKERS) and pid files
#   scripts/stack.sh down DIR   stop what DIR/*.pid names
#   scripts/stack.sh status DIR
#   scripts/stack.sh up DIR --cluster
#       also a Redis Cluster of 3 primaries on fixed ports (CLUSTER_PORT, default 7000, and the
#       next two; the cluster bus on each port + 10000), in DIR/cluster/PORT, created with
#       `redis-cli --cluster create` and kept across down/up (AOF and nodes.conf in its folder;
#       delete DIR/cluster to start empty). DIR/env gets REDIS_CLUSTER=127.0.0.1:7000,... beside
#       REDIS_URL; every `wallet` command reads REDIS_CLUSTER and then runs on the cluster
#       (REDIS_URL gives only the scheme). `make up CLUSTER=1`.
# Logs go to DIR/redis.log and DIR/tansu.log (DIR/cluster/PORT/redis.log). Used by `make
# up/down` (DIR=.dev) and `make demo`.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
usage="usage: stack.sh up|down|status DIR [--cluster]"
cmd=${1:?$usage}
dir=${2:?$usage}
cluster=no
case "${3:-}" in
  "") ;;
  --cluster) cluster=yes ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
cluster_base=${CLUSTER_PORT:-7000}
cluster_ports=("$cluster_base" "$((cluster_base + 1))" "$((cluster_base + 2))")
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

# The names of the cluster nodes' pid files that exist (cluster-7000, ...), for down and status.
cluster_names() {
  for f in "$dir"/cluster-*.pid; do [ -e "$f" ] && basename "$f" .pid; done
  return 0
}

cluster_field() { # port field: a field of CLUSTER INFO on the node
  redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

cluster_ok() { # every node says cluster_state:ok with all 16384 slots assigned
  local port
  for port in "${cluster_ports[@]}"; do
    [ "$(cluster_field "$port" cluster_state)" = ok ] || return 1
    [ "$(cluster_field "$port" cluster_slots_assigned)" = 16384 ] || return 1
  done
}

cluster_ports_free() { # the ports of the nodes not running yet, and their bus ports, are free
  local port
  for port in "${cluster_ports[@]}"; do
    running "cluster-$port" && continue
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then
      echo "stack: port $port or $((port + 10000)) is taken; pick other cluster ports with CLUSTER_PORT=N" >&2
      return 1
    fi
  done
}

cluster_up() {
  local port addrs=()
  cluster_ports_free
  for port in "${cluster_ports[@]}"; do
    addrs+=("127.0.0.1:$port")
    running "cluster-$port" && continue
    mkdir -p "$dir/cluster/$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/cluster/$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --appendonly yes --appendfsync everysec --save '' --stream-node-max-bytes 1024 \
      --daemonize no >"$dir/cluster/$port/redis.log" 2>&1 &
    echo $! >"$dir/cluster-$port.pid"
  done
  for port in "${cluster_ports[@]}"; do
    wait_for "cluster node $port" 20 redis-cli -p "$port" ping
  done
  # A node that kept its nodes.conf rejoins by itself; only a new cluster is created.
  if [ "$(cluster_field "${cluster_ports[0]}" cluster_slots_assigned)" = 0 ]; then
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
      >"$dir/cluster/create.log" 2>&1 || { cat "$dir/cluster/create.log" >&2; return 1; }
  fi
  wait_for "the Redis Cluster (cluster_state:ok)" 30 cluster_ok
  (IFS=,; echo "REDIS_CLUSTER=${addrs[*]}" >>"$dir/env")
  echo "cluster up: 3 primaries on ${cluster_ports[*]} (REDIS_CLUSTER in $dir/env)"
}

case "$cmd" in
  up)
    if running redis && running tansu; then
      if [ "$cluster" = yes ] && ! grep -q '^REDIS_CLUSTER=' "$dir/env"; then
        cluster_up; exit 0
      fi
      echo "stack already up ($dir/env):"; cat "$dir/env"; exit 0
    fi
    if [ "$cluster" = yes ]; then cluster_ports_free; fi
    redis_port=$(free_port)
    kafka_port=$(free_port)
    # stream-node-max-bytes 1024: ~1.1 KB instead of ~4.3 KB per wallet whose history is still
    # an older stream (histories are lists now; docs/measurements.md,
    # "Redis memory").
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
      --appendfsync everysec --save '' --stream-node-max-bytes 1024 --daemonize no \
      >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    (cd "$dir" && exec tansu broker --listener-url "tcp://127.0.0.1:$kafka_port" \
      --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
      --storage-engine sqlite://tansu.db >"$dir/tansu.log" 2>&1) &
    echo $! >"$dir/tansu.pid"
    wait_for "redis-server" 20 redis-cli -p "$redis_port" ping
    wait_for "tansu" 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$kafka_port"
    printf 'REDIS_URL=redis://127.0.0.1:%s\nKAFKA_BROKERS=127.0.0.1:%s\n' "$redis_port" "$kafka_port" >"$dir/env"
    echo "stack up: redis-server on $redis_port, tansu on $kafka_port (settings in $dir/env)"
    if [ "$cluster" = yes ]; then cluster_up; fi
    ;;
  down)
    for name in worker tansu redis $(cluster_names); do
      if running "$name"; then
        kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
        # The worker stops within its --shutdown-timeout-ms (10 s by default); then SIGKILL.
        for _ in $(seq 1 150); do running "$name" || break; sleep 0.1; done
        running "$name" && kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null || true
        echo "stopped $name"
      fi
      rm -f "$dir/$name.pid"
    done
    if [ -f "$dir/env" ]; then sed -i '/^REDIS_CLUSTER=/d' "$dir/env"; fi
    ;;
  status)
    for name in redis tansu worker $(cluster_names); do
      if running "$name"; then echo "$name: running (pid $(cat "$dir/$name.pid"))"; else echo "$name: stopped"; fi
    done
    [ -f "$dir/env" ] && cat "$dir/env"
    ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
