# segstream developer / CI entry points. Run `make` (or `make help`) for a list.
#
# Everything downloaded (Kafka jars, the ONNX Runtime library) lives under
# $(SEGSTREAM_CACHE); Maven keeps its own repository in ~/.m2 and pip its
# HTTP cache in ~/.cache/pip. The local broker is managed by
# deploy/local/kafka.sh; its data dir is deploy/local/.data (gitignored).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

SEGSTREAM_CACHE ?= $(HOME)/.cache/segstream
ORT_VERSION := 1.31.1
KAFKA_BOOTSTRAP ?= 127.0.0.1:19092
PARTITIONS ?= 3

CARGO ?= cargo
PYTHON ?= python3
KAFKA := deploy/local/kafka.sh

# kafka.sh reads these; keep the broker port in sync with KAFKA_BOOTSTRAP.
export SEGSTREAM_CACHE
export KAFKA_PORT := $(lastword $(subst :, ,$(KAFKA_BOOTSTRAP)))

# ONNX Runtime shared library, taken from the official PyPI wheel (the wheel
# bundles libonnxruntime.so; the Python bindings are not used). The Rust code
# loads it at run time through ORT_DYLIB_PATH, exported to every recipe.
ORT_DIR := $(SEGSTREAM_CACHE)/onnxruntime-$(ORT_VERSION)
ORT_LIB := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
# The wheel's tag does not matter for the native library; pin one so the
# download does not depend on the local Python version.
ORT_WHEEL_PLATFORM := manylinux_2_28_x86_64
ORT_WHEEL_PYTHON := 3.11
export ORT_DYLIB_PATH := $(ORT_LIB)

# A Python venv with the same onnxruntime from PyPI, for the parity test
# (segstream's outputs equal the Python package's on the same model file).
ONNX_VERSION := 1.23.2
PYENV := $(SEGSTREAM_CACHE)/pyenv-ort-$(ORT_VERSION)-onnx-$(ONNX_VERSION)
export SEGSTREAM_TEST_PYTHON := $(PYENV)/bin/python

# Prometheus and promtool from Debian's `prometheus` package, unpacked with
# dpkg -x (no service, no root needed once the .deb is here). The tests in
# tests/observability.rs run promtool on /metrics and on the alert rules, and
# start a real Prometheus that scrapes a running pipeline.
PROMETHEUS_DIR := $(SEGSTREAM_CACHE)/prometheus-deb12
PROMTOOL := $(PROMETHEUS_DIR)/usr/bin/promtool
export SEGSTREAM_TEST_PROMTOOL := $(PROMTOOL)
export SEGSTREAM_TEST_PROMETHEUS := $(PROMETHEUS_DIR)/usr/bin/prometheus

# kubernetes-validate (PyPI; bundles the Kubernetes OpenAPI schemas, so it
# works without a cluster) for the manifests in deploy/k8s/.
K8S_VALIDATE_VERSION := 1.37.0
K8SENV := $(SEGSTREAM_CACHE)/pyenv-k8s-validate-$(K8S_VALIDATE_VERSION)
export SEGSTREAM_TEST_K8S_VALIDATE := $(K8SENV)/bin/kubernetes-validate

# confluent-kafka (PyPI; the wheel bundles librdkafka) for the consumer
# example in deploy/examples/, which a test runs against a live pipeline.
CONFLUENT_KAFKA_VERSION := 2.16.1
CLIENTENV := $(SEGSTREAM_CACHE)/pyenv-confluent-kafka-$(CONFLUENT_KAFKA_VERSION)
export SEGSTREAM_TEST_CLIENT_PYTHON := $(CLIENTENV)/bin/python

# Debian's Chromium, headless, for the test that renders the live quality
# report (`segstream report`) and finds its figures.
CHROMIUM := /usr/bin/chromium
export SEGSTREAM_TEST_CHROMIUM := $(CHROMIUM)

.PHONY: help check tools pyenv client-pyenv onnxruntime kafka-jars kafka-up kafka-down kafka-status \
        topics build test bench lint demo clean-kafka prometheus k8s-validate \
        observability-tools dashboard-configmap fuzz browser

help: ## List targets
	@echo "Usage: make <target> [VAR=value ...]"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN { FS = ":.*## " } { printf "  %-13s %s\n", $$1, $$2 }'
	@echo
	@echo "Variables: SEGSTREAM_CACHE=$(SEGSTREAM_CACHE)"
	@echo "           KAFKA_BOOTSTRAP=$(KAFKA_BOOTSTRAP) PARTITIONS=$(PARTITIONS) ORT_VERSION=$(ORT_VERSION)"

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

tools: onnxruntime kafka-jars ## Download ONNX Runtime and the Kafka jars (cached)

onnxruntime: $(ORT_LIB) ## Download libonnxruntime.so into the cache

# Download the wheel, pull the library out with Python's zipfile (no unzip
# needed), then move it into place atomically so the target is idempotent.
$(ORT_LIB):
	@echo "onnxruntime: fetching onnxruntime==$(ORT_VERSION) wheel"
	rm -rf "$(ORT_DIR)/wheel"
	mkdir -p "$(ORT_DIR)/wheel"
	$(PYTHON) -m pip download --quiet --disable-pip-version-check \
	  --no-deps --only-binary=:all: --implementation cp \
	  --python-version $(ORT_WHEEL_PYTHON) --platform $(ORT_WHEEL_PLATFORM) \
	  --dest "$(ORT_DIR)/wheel" "onnxruntime==$(ORT_VERSION)"
	$(PYTHON) -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
	  "$$(ls "$(ORT_DIR)"/wheel/onnxruntime-$(ORT_VERSION)-*.whl)" \
	  "onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)" "$@.tmp"
	chmod 0755 "$@.tmp"
	mv "$@.tmp" "$@"
	rm -rf "$(ORT_DIR)/wheel"
	@echo "onnxruntime: $@"

pyenv: $(PYENV)/.ok ## Python venv with onnxruntime and onnx (parity and checker tests)

$(PYENV)/.ok:
	rm -rf "$(PYENV)"
	$(PYTHON) -m venv "$(PYENV)"
	"$(PYENV)/bin/pip" install --quiet --disable-pip-version-check \
	  "onnxruntime==$(ORT_VERSION)" "onnx==$(ONNX_VERSION)" numpy
	touch "$@"

client-pyenv: $(CLIENTENV)/.ok ## Python venv with confluent-kafka (consumer example test)

$(CLIENTENV)/.ok:
	rm -rf "$(CLIENTENV)"
	$(PYTHON) -m venv "$(CLIENTENV)"
	"$(CLIENTENV)/bin/pip" install --quiet --disable-pip-version-check \
	  "confluent-kafka==$(CONFLUENT_KAFKA_VERSION)"
	touch "$@"

prometheus: $(PROMTOOL) ## Unpack Debian's prometheus package (promtool, server) into the cache

# `apt-get download` needs the package lists; on a fresh machine (CI) they
# may be missing, so update them once and retry.
$(PROMTOOL):
	rm -rf "$(PROMETHEUS_DIR)" "$(PROMETHEUS_DIR).tmp"
	mkdir -p "$(PROMETHEUS_DIR).tmp"
	cd "$(PROMETHEUS_DIR).tmp" && { apt-get download prometheus 2>/dev/null \
	  || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg -x "$$(ls "$(PROMETHEUS_DIR)".tmp/prometheus_*.deb)" "$(PROMETHEUS_DIR).tmp"
	rm -f "$(PROMETHEUS_DIR)".tmp/prometheus_*.deb
	"$(PROMETHEUS_DIR).tmp/usr/bin/promtool" --version
	mv "$(PROMETHEUS_DIR).tmp" "$(PROMETHEUS_DIR)"

k8s-validate: $(K8SENV)/.ok ## Python venv with kubernetes-validate (manifest test)

$(K8SENV)/.ok:
	rm -rf "$(K8SENV)"
	$(PYTHON) -m venv "$(K8SENV)"
	"$(K8SENV)/bin/pip" install --quiet --disable-pip-version-check \
	  "kubernetes-validate==$(K8S_VALIDATE_VERSION)"
	touch "$@"

observability-tools: prometheus k8s-validate ## promtool, Prometheus and kubernetes-validate

browser: $(CHROMIUM) ## Debian's Chromium (headless report test)

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	"$(CHROMIUM)" --version

# The dashboard ConfigMap embeds deploy/grafana/segstream.json; a test checks
# that they agree.
dashboard-configmap: ## Regenerate deploy/k8s/grafana-dashboard.yaml from deploy/grafana/
	SEGSTREAM_UPDATE_DASHBOARD=1 $(CARGO) test --locked --release --test observability -- dashboard

kafka-jars: ## Download the Kafka broker/tools jars (Maven)
	$(KAFKA) fetch

# ---------------------------------------------------------------------------
# Local Kafka
# ---------------------------------------------------------------------------

kafka-up: kafka-jars ## Start the local broker (no-op if running)
	$(KAFKA) up

kafka-down: ## Stop the local broker
	$(KAFKA) down

kafka-status: ## Show broker state and topics
	$(KAFKA) status

topics: kafka-up ## Create the default topics (PARTITIONS=3)
	$(KAFKA) topic events.browse $(PARTITIONS)
	$(KAFKA) topic events.purchase $(PARTITIONS)
	$(KAFKA) topic events.review $(PARTITIONS)
	$(KAFKA) topic customer-segments $(PARTITIONS)
	$(KAFKA) topic customer-segments.current $(PARTITIONS) cleanup.policy=compact
	$(KAFKA) topic customer-risk $(PARTITIONS)
	$(KAFKA) topic segstream-dlq $(PARTITIONS)
	$(KAFKA) topic segstream-state-changelog $(PARTITIONS) cleanup.policy=compact

clean-kafka: ## Stop the broker and delete its data dir
	$(KAFKA) down --purge

# ---------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------

build: ## cargo build --release
	$(CARGO) build --locked --release

# with-kafka.sh starts the broker, runs the command, always stops the broker
# (also on failure or Ctrl-C) and exits with the command's status.
# SEGSTREAM_TEST_REQUIRE_TOOLS: tests that need an external tool fail when it
# is missing instead of skipping (they skip only when run by hand).
test: tools pyenv client-pyenv observability-tools browser ## Run all tests against a fresh local broker
	SEGSTREAM_TEST_REQUIRE_TOOLS=1 \
	SEGSTREAM_TEST_BOOTSTRAP=$(KAFKA_BOOTSTRAP) deploy/local/with-kafka.sh \
	  $(CARGO) test --locked --release --all-targets

# The fast loop: the library's and the binary's unit tests (pure logic,
# property tests) with no broker, ONNX Runtime or tools; seconds after a
# build (the same release profile as `make build` and `make test`).
check: ## Unit tests only: no broker, no tools (the fast loop)
	$(CARGO) test --locked --release --lib --bins

# The benchmark suite (`segstream bench all`): ingest, state (memory at 100k
# and 1M customers, restore), scoring, end to end, training. Writes
# BENCHMARKS.md and target/bench/all.json. QUICK=1: small sizes, written to
# target/bench/ only (BENCHMARKS.md is left alone). BENCH_CONDITIONS: a
# sentence on the machine's load, written under its description.
# BENCH_FLAGS: more flags for `segstream bench all` (see --help).
BENCH_CONDITIONS ?=
BENCH_FLAGS ?=
BENCH_OUT = $(if $(QUICK),--quick --markdown target/bench/BENCHMARKS.quick.md --json target/bench/quick.json,--markdown BENCHMARKS.md --json target/bench/all.json)

bench: build kafka-up onnxruntime ## Benchmark suite vs same-run baselines → BENCHMARKS.md (QUICK=1: small sizes)
	mkdir -p target/bench
	SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS=$(KAFKA_BOOTSTRAP) target/release/segstream bench all \
	  $(BENCH_OUT) --conditions "$(BENCH_CONDITIONS)" $(BENCH_FLAGS)

# Coverage-guided fuzzing (libFuzzer through libfuzzer-sys, on the stable
# toolchain: rustc's sanitizer-coverage passes are stable codegen flags) of
# record decoding in every framing and of the changelog codec. Seeds come
# from the reference corpus (fuzz/harness.rs); each target runs FUZZ_RUNS
# executions; crashes land in fuzz/target/artifacts/<target>/ (copy them to
# fuzz/regressions/<target>/ to keep them as tests). Not part of CI.
FUZZ_RUNS ?= 5000000
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks --cfg fuzzing
# An explicit --target keeps the instrumentation off build scripts and
# proc macros (they run on the host, without libFuzzer's runtime).
FUZZ_HOST = $(shell rustc -vV | sed -n 's/^host: //p')
fuzz: ## Bounded fuzzing campaign of the decoders and the changelog codec (FUZZ_RUNS per target; not in CI)
	cd fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --locked --release --bins --target $(FUZZ_HOST)
	rm -rf fuzz/target/seeds
	SEGSTREAM_FUZZ_SEEDS=fuzz/target/seeds fuzz/target/$(FUZZ_HOST)/release/decode
	set -e; for t in decode changelog; do \
	  mkdir -p fuzz/target/corpus/$$t fuzz/target/artifacts/$$t; \
	  echo "fuzz: $$t, $(FUZZ_RUNS) executions"; \
	  fuzz/target/$(FUZZ_HOST)/release/$$t -runs=$(FUZZ_RUNS) -print_final_stats=1 -max_len=4096 \
	    -artifact_prefix=fuzz/target/artifacts/$$t/ fuzz/target/corpus/$$t fuzz/target/seeds/$$t \
	    fuzz/regressions/$$t > fuzz/target/$$t.log 2>&1 \
	    || { tail -n 40 fuzz/target/$$t.log; exit 1; }; \
	  grep -E "^#[0-9]+ +DONE|^stat::" fuzz/target/$$t.log; \
	done

lint: ## rustfmt check, clippy (warnings are errors), no import cycle among the modules of src/ or of any module directory
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	@python3 .ci/test_module_cycles.py
	@for d in src src/*/; do python3 .ci/module_cycles.py $${d%/} --strict || exit 1; done

demo: tools ## Start the broker, run the demo, stop the broker
	deploy/local/with-kafka.sh deploy/local/demo.sh
