#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine, skipping what is there:
#   redis-server, prometheus (Debian packages: prometheus and promtool run the monitoring
#   tests) and iptables (the partition tests), the tansu broker (crates.io, pinned) and the
#   AsyncAPI tooling that validates and renders asyncapi.yaml (npm, pinned in
#   contracts/package-lock.json).
# A cold build of tansu takes 20-25 minutes on 2 cores; it is skipped when a tansu binary is
# already on PATH, in ~/.cargo/bin, or named by TANSU_BIN.
# `scripts/install-deps.sh contracts` installs only the AsyncAPI tooling (make contracts).
set -euo pipefail

TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

# The AsyncAPI CLI and HTML template, exactly as locked, into contracts/node_modules (about
# 1.5 GB, 2 minutes). Install scripts are not run: none is needed, and puppeteer's would
# download a browser. Skipped when the lockfile it was installed from is the committed one.
install_contracts() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-deps: installing nodejs and npm (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  local stamp=contracts/node_modules/.installed-package-lock.json
  if cmp -s contracts/package-lock.json "$stamp" && [ -x contracts/node_modules/.bin/asyncapi ]; then
    echo "install-deps: AsyncAPI tooling already installed in contracts/node_modules"
  else
    echo "install-deps: installing the AsyncAPI tooling (npm ci in contracts/)"
    (cd contracts && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp contracts/package-lock.json "$stamp"
  fi
}
if [ "${1:-}" = contracts ]; then
  install_contracts
  exit 0
fi

# Build dependencies of the crate itself: librdkafka is compiled with TLS (SASL_SSL/SSL) support.
missing=()
# iptables: the partition tests (tests/it/partition.rs) cut node-to-node traffic with it.
for pkg in pkg-config libssl-dev openssl iptables; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -n "${REDIS_SERVER_BIN:-}" ] && [ -x "$REDIS_SERVER_BIN" ]; then
  echo "install-deps: redis-server from REDIS_SERVER_BIN=$REDIS_SERVER_BIN"
elif command -v redis-server >/dev/null 2>&1; then
  echo "install-deps: $(redis-server --version | cut -d' ' -f1-3) already installed"
else
  echo "install-deps: installing redis-server (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # The package starts a system service on 6379; the tests do not use it.
  (systemctl stop redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true)
fi

have() { # have ENV_VAR command: the file named by ENV_VAR, or the command on PATH
  if [ -n "${!1:-}" ]; then [ -x "${!1}" ]; else command -v "$2" >/dev/null 2>&1; fi
}
if have PROMETHEUS_BIN prometheus && have PROMTOOL_BIN promtool; then
  echo "install-deps: prometheus and promtool already installed (or named by PROMETHEUS_BIN, PROMTOOL_BIN)"
else
  echo "install-deps: installing prometheus and promtool (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a system service on 9090; the tests start their own Prometheus.
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true)
fi

if [ -n "${TANSU_BIN:-}" ] && [ -x "$TANSU_BIN" ]; then
  echo "install-deps: tansu from TANSU_BIN=$TANSU_BIN"
elif command -v tansu >/dev/null 2>&1; then
  echo "install-deps: tansu already installed at $(command -v tansu)"
else
  echo "install-deps: building tansu $TANSU_VERSION from crates.io (20-25 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

install_contracts
