# Wallet transfer worker. `make demo` runs the whole system locally; `make test` proves it.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)
DEV := .dev
WALLET := target/release/wallet
# Commands run against the local stack of `make up` when it exists, else against the
# REDIS_URL / KAFKA_BROKERS of the environment (defaults: 127.0.0.1:6379 and :9092).
WITH_STACK = set -a; [ -f $(DEV)/env ] && source $(DEV)/env; set +a;
USERS ?= 100
ARGS ?=
# The pinned AsyncAPI CLI (contracts/package.json), with its usage metrics off: a config file
# of our own instead of ~/.asyncapi-analytics, so nothing is sent and nothing is written home.
ASYNCAPI := ASYNCAPI_METRICS_CONFIG_PATH=$(CURDIR)/contracts/asyncapi-analytics.json contracts/node_modules/.bin/asyncapi

.PHONY: help public-api test fault-test simulate mutants demo deps contracts contracts-check build up down status seed run-worker run-producer bench fmt lint package ci

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

test: ## every test: unit, property, doc, and integration against real redis-server and tansu
	$(CARGO) build --examples # tests/it/examples.rs runs the built examples
	$(CARGO) test --all-targets
	$(CARGO) test --doc

fault-test: ## the fault suite at full size (faults, shutdown, memory, cluster_worker, partition, simulation, the worker's long steady run; `make test` runs them short); FAULT_SEED=n replays; needs root for iptables
	FAULT_SCALE=full $(CARGO) test --release --test it -- faults:: shutdown:: memory:: cluster_worker:: partition:: simulation:: lifecycle::a_long_steady_load --test-threads 1 --nocapture

simulate: ## replay one seed of the seeded simulation (SEED=n; TOPOLOGY=one-redis|same-slot|cross-slot for one topology; OPS=n operations; SIM_TRACE=1 prints every operation)
	@test -n "$(SEED)" || { echo "usage: make simulate SEED=n [TOPOLOGY=one-redis|same-slot|cross-slot] [OPS=n]"; exit 2; }
	SIM_SEED=$(SEED) SIM_TOPOLOGY=$(TOPOLOGY) SIM_OPS=$(OPS) $(CARGO) test --test it -- simulation:: --nocapture

mutants: ## mutation testing of the guarantee-bearing files (hours; FILE=src/engine/transfer.rs for one; TESTS='engine:: semantics::' to narrow the tests; RE='PoolThread::send' for some of its mutants)
	$(CARGO) install cargo-mutants --locked --version 27.1.0 --quiet 2>/dev/null || true
	@# With cargo-nextest a mutant's run stops at its first failing test, and the tests still
	@# running are stopped too (1:immediate), so a caught mutant costs seconds, not the whole
	@# test set; libtest runs every test.
	if command -v cargo-nextest >/dev/null; then \
	  $(CARGO) mutants -j 1 --test-tool nextest --output target/mutants $(if $(FILE),--no-config --file $(FILE) --timeout-multiplier 3,) $(if $(RE),-F '$(RE)',) -- --max-fail 1:immediate --lib --test it $(TESTS); \
	else \
	  $(CARGO) mutants -j 1 --output target/mutants $(if $(FILE),--no-config --file $(FILE) --timeout-multiplier 3,) $(if $(RE),-F '$(RE)',) -- --lib --test it $(if $(TESTS),-- $(TESTS),); \
	fi
	@echo "report: target/mutants/mutants.out/outcomes.json; missed mutants: target/mutants/mutants.out/missed.txt"

demo: ## the whole system on this machine: install, start, seed, work, audit, stop
	scripts/demo.sh

deps: ## install redis-server and tansu when missing
	scripts/install-deps.sh

contracts: contracts-check ## render asyncapi.yaml to contracts/html/index.html: one file, open it in a browser, no server
	$(ASYNCAPI) generate fromTemplate asyncapi.yaml contracts/node_modules/@asyncapi/html-template \
	  -o contracts/html --force-write -p singleFile=true \
	  -p 'config={"show":{"sidebar":true},"expand":{"messageExamples":true}}'
	@echo "contracts: open contracts/html/index.html"

contracts-check: ## validate asyncapi.yaml with the AsyncAPI CLI (installs it first when missing)
	scripts/install-deps.sh contracts
	$(ASYNCAPI) validate asyncapi.yaml --fail-severity warn

build:
	$(CARGO) build --release --quiet

up: build ## keep a local redis-server + tansu running (pids, logs and env under .dev/); CLUSTER=1 adds a 3-primary Redis Cluster on ports 7000-7002
	scripts/stack.sh up $(DEV) $(if $(filter 1 yes true,$(CLUSTER)),--cluster,)

down: ## stop the local stack (and a worker started by run-worker, and the cluster of CLUSTER=1)
	scripts/stack.sh down $(DEV)

status: ## what of the local stack is running
	scripts/stack.sh status $(DEV)

seed: build ## create users user_1..user_$(USERS) (USERS=N)
	$(WITH_STACK) $(WALLET) seed --users $(USERS) $(ARGS)

run-worker: build ## run the worker in the foreground (Ctrl-C stops it cleanly; `make down` stops it too)
	@mkdir -p $(DEV)
	$(WITH_STACK) echo $$$$ > $(DEV)/worker.pid; exec $(WALLET) worker $(ARGS)

run-producer: build ## run the six race scenarios through Kafka against a running worker
	$(WITH_STACK) $(WALLET) produce $(ARGS)

bench: build ## engine benchmark (ARGS="--direct" by default)
	$(WITH_STACK) $(WALLET) bench $(if $(ARGS),$(ARGS),--direct)

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## formatting check, clippy, the docs and the documents' links, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	python3 scripts/check-links.py
	python3 scripts/public-api.py --check

public-api: ## write api/public-api.txt, the public API listing CI compares with (commit it with an intended API change)
	python3 scripts/public-api.py --write

package: ## the crate as it would be published: cargo publish --dry-run (packs, builds the package alone; uploads nothing)
	$(CARGO) publish --dry-run --allow-dirty

ci: ## what CI runs
	bash .ci/run
