# Two entry points for a fresh machine: `make run` (set up, then run the product on the bundled model)
# and `make test` (set up, then lint and test). Everything else is a helper of those two.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, on its own. On a standard index `torch==X` is the CUDA build (with ~16 nvidia
# packages, several GB): the CPU wheels' index is added by default for torch alone (its `X+cpu` wins; the
# dependencies then come from the configured index, so no other lookup waits on that host). For CUDA:
# `make run TORCH_INDEX=https://download.pytorch.org/whl/cu128` (any PyTorch wheel index), or `TORCH_INDEX=`
# for whatever the configured index gives.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: run test test-ray setup lint browser-setup redis-setup

$(BIN)/att3d: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-deps torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install -q torch==$(TORCH_VERSION)  # its dependencies, from the configured index only
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/att3d

# Node tools for the tests (Khronos glTF validator), pinned by tools/package-lock.json.
tools/node_modules/.package-lock.json: tools/package.json tools/package-lock.json
	npm --prefix tools ci --no-audit --no-fund --loglevel=error

# Browser test of the viewer page: playwright-core (pinned by tools/browser/package-lock.json) drives
# Debian's chromium, installed here when missing; without it the test is skipped with that reason.
tools/browser/node_modules/.package-lock.json: tools/browser/package.json tools/browser/package-lock.json
	npm --prefix tools/browser ci --no-audit --no-fund --loglevel=error

browser-setup: tools/browser/node_modules/.package-lock.json
	@command -v chromium >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "warning: could not install chromium; the browser test will be skipped"

# The shared result cache is tested against a real redis-server (Debian's), started by the tests on a
# loopback port; without it those tests are skipped with that reason.
redis-setup:
	@command -v redis-server >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || \
		echo "warning: could not install redis-server; the Redis cache tests will be skipped"

setup: $(BIN)/att3d

run: setup
	$(BIN)/att3d serve --host 127.0.0.1 --port 8000

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint tools/node_modules/.package-lock.json browser-setup redis-setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest

# The Ray backend's tests (a local Ray cluster on 127.0.0.1): the optional `ray` extra, then only the tests
# marked `ray`. CI runs it after `make test`; the plain install and `make test` never need Ray.
$(VENV)/.ray-extra: $(BIN)/att3d pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,ray]"
	touch $@

test-ray: $(VENV)/.ray-extra redis-setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 $(BIN)/pytest -m ray
