# Entry points for working on Meridian. `make` alone lists the targets.
#
# The scripts in infra/ do the work; see the comment at the top of each for its settings.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
DEMO_FILE := data/ais/nyharbor_2020_06_30_first_hour.csv
# Node packages of the end-to-end tests (socket.io-client, playwright-core).
JS_DIR := e2e/js

# When infra/stack.sh runs a server on another port, point the services and tests at it too,
# unless the client setting is given explicitly.
ifdef MERIDIAN_KAFKA_PORT
export MERIDIAN_KAFKA_BROKERS ?= 127.0.0.1:$(MERIDIAN_KAFKA_PORT)
endif
ifdef MERIDIAN_MONGODB_PORT
export MERIDIAN_MONGODB_URL ?= mongodb://127.0.0.1:$(MERIDIAN_MONGODB_PORT)/?directConnection=true
endif
ifdef MERIDIAN_MOTO_PORT
export MERIDIAN_KMS_ENDPOINT ?= http://127.0.0.1:$(MERIDIAN_MOTO_PORT)
endif

.PHONY: help up down demo import test lint status reset bench-live bench

help: ## List the targets
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F ':.*## ' '{ printf "  make %-10s %s\n", $$1, $$2 }'

up: ## Build the release binaries, start the local stack and the services
	$(CARGO) build --release --workspace --bins
	infra/stack.sh start
	infra/services.sh start --profile release

down: ## Stop the services and the servers that infra/stack.sh started
	infra/services.sh stop
	infra/stack.sh stop

demo: up ## Run `make up`, import an hour of AIS data, print a summary, serve until Ctrl-C
	infra/demo.sh $(or $(FILE),$(DEMO_FILE))

import: ## Import FILE=path.csv into the running services with the release importer, as the admin
	infra/import.sh "$(FILE)"

test: ## Start the local stack, build the debug binaries, run every test
	infra/stack.sh start
	@if [[ ! -d $(JS_DIR)/node_modules || $(JS_DIR)/package-lock.json -nt $(JS_DIR)/node_modules ]]; then \
		echo "cd $(JS_DIR) && npm ci --no-audit --no-fund"; \
		(cd $(JS_DIR) && npm ci --no-audit --no-fund); \
	fi
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace"; \
		$(CARGO) nextest run --workspace; \
	else \
		echo "cargo-nextest is not installed; running cargo test instead" >&2; \
		$(CARGO) test --workspace; \
	fi

lint: ## Check formatting and run clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

status: ## Show the state of the local stack and of the services
	-infra/stack.sh status
	-infra/services.sh status

reset: ## Stop everything and delete all data: the stack's data and the meridian database
	infra/services.sh stop
	infra/stack.sh reset

# Addresses of the running services that `make bench-live` measures, as the services read them.
BENCH_COMMAND_ADDR := $(or $(MERIDIAN_COMMAND_ADDR),127.0.0.1:8080)
BENCH_QUERY_ADDR := $(or $(MERIDIAN_QUERY_ADDR),127.0.0.1:8081)
BENCH_SOCKET_ADDR := $(or $(MERIDIAN_SOCKET_ADDR),127.0.0.1:8091)
LIVE_BENCH := $(or $(CARGO_TARGET_DIR),target)/release/meridian-live-bench
# The benchmarks log in as the admin that infra/services.sh set up, unless these are set.
# Exported for bench-live only: exported globally they would reach the CLI tests that
# `make test` runs and check that a login is required.
bench-live: export MERIDIAN_BENCH_EMAIL ?= $(or $(MERIDIAN_ADMIN_EMAIL),admin@meridian.local)
bench-live: export MERIDIAN_BENCH_PASSWORD_FILE ?= $(or $(MERIDIAN_ADMIN_PASSWORD_FILE),$(or $(MERIDIAN_STACK_DIR),.stack)/keys/admin-password)

bench-live: ## Measure live-update latency and idle-socket memory of the running services
	$(CARGO) build --release -p meridian-live-bench
	$(LIVE_BENCH) latency --command-url http://$(BENCH_COMMAND_ADDR) \
		--query-url http://$(BENCH_QUERY_ADDR) --socket-url http://$(BENCH_SOCKET_ADDR) \
		$(LATENCY_ARGS)
	$(LIVE_BENCH) sockets --command-url http://$(BENCH_COMMAND_ADDR) \
		--socket-url http://$(BENCH_SOCKET_ADDR) \
		--pid-file $(or $(MERIDIAN_STACK_DIR),.stack)/run/query-service.pid $(SOCKETS_ARGS)

RELEASE_DIR := $(or $(CARGO_TARGET_DIR),target)/release

bench: ## Start services of its own on the local stack and measure ingest, lag, rebuild, memory
	$(CARGO) build --release --workspace --bins
	infra/stack.sh start
	$(RELEASE_DIR)/meridian-bench --bin-dir $(RELEASE_DIR) $(BENCH_ARGS)
