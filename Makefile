# Two commands set up a fresh machine: `make run` (the service) and `make test` (lint + the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The suite runs in this many processes (pytest-xdist), each with its own database, Redis db and stack.
TEST_PROCESSES ?= 2

.PHONY: install services run demo test docs docs-serve lint typecheck bench-limits bench-priority bench-throughput bench-webhooks bench-intake bench-prune bench-soak bench-sizing chaos partition clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wadispatch needs Python >= 3.11 (set PYTHON=python3.12, for example)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

services:
	@bash scripts/ensure-services.sh

# `make run RUN_ARGS=--flower` also runs Flower; `RUN_ARGS=--no-sandbox` talks to the real Meta.
RUN_ARGS ?=
run: install services
	$(BIN)/wadispatch run $(RUN_ARGS)

demo: install services
	$(BIN)/wadispatch migrate
	$(BIN)/wadispatch demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-limits: install services
	$(BIN)/python bench/limits.py

bench-priority: install services
	$(BIN)/python bench/priority.py $(PRIORITY_ARGS)

bench-throughput: install services
	$(BIN)/python bench/throughput.py

bench-webhooks: install services
	$(BIN)/python bench/webhooks.py

bench-intake: install services
	$(BIN)/python bench/intake.py

bench-prune: install services
	$(BIN)/python bench/prune.py $(PRUNE_ARGS)

bench-soak: install services
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Its own Postgres and Redis (their counters then see nothing else).
bench-sizing: install
	$(BIN)/python bench/sizing.py $(SIZING_ARGS)

# Its own Postgres and Redis (it restarts and flushes them): the shared services are not needed.
chaos: install
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

# Hosts as network namespaces (needs root), each service private to them: the shared ones are not needed.
partition: install
	$(BIN)/python bench/partition.py $(PARTITION_ARGS)

typecheck: install
	$(BIN)/mypy --ignore-missing-imports models intake api_shim worker meta_sandbox cli bench wadispatch

# The Node producer of tests/worker/test_broker_intake.py: celery-node at the version
# tests/node/package-lock.json pins, installed once here (again only when the lock changes), so
# the test itself needs no registry. Node.js and npm come from Debian's packages when missing on
# CI (root, apt), as scripts/ensure-services.sh does for Postgres and Redis.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if ! command -v npm >/dev/null; then \
	  if [ "$${CI:-}" = "true" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Node.js and npm (CI)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else \
	    echo "make test needs Node.js and npm (Debian/Ubuntu: sudo apt-get install nodejs npm)" >&2; exit 1; \
	  fi; \
	fi
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

test: install services $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile

# The documentation site (docs/, mkdocs.yml) into site/. Strict: a broken link or anchor, or a page
# missing from the nav, fails the build (CI runs it after the tests).
docs: install
	$(BIN)/mkdocs build --strict --clean

# Serves it on 127.0.0.1:8001 (the API has :8000), rebuilding on every change.
DOCS_ADDRESS ?= 127.0.0.1:8001
docs-serve: install
	$(BIN)/mkdocs serve --strict --dev-addr $(DOCS_ADDRESS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
