# Wallet transfer worker. `make demo` runs the whole system locally; `make test` proves it.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help test deps fmt lint ci

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

test: ## run every test: unit, property, doc, and integration against real redis-server and tansu
	$(CARGO) test --all-targets
	$(CARGO) test --doc

deps: ## install redis-server and tansu when missing
	scripts/install-deps.sh

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## formatting check and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

ci: ## what CI runs
	bash .ci/run
