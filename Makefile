# One entry point for people and CI alike: CI runs `make lint` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_MODULES := tests/node/node_modules/.installed

.PHONY: install protos protos-check run test lint format bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(NODE_MODULES): tests/node/package.json tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
	touch $@

## Regenerate the Python stubs of protos/ (committed under webhooks/v1/).
protos: $(INSTALLED)
	PYTHON=$(BIN)/python scripts/generate_protos.sh

## Fail when the committed stubs differ from what protos/ generates.
protos-check: $(INSTALLED)
	@tmp=$$(mktemp -d) && PYTHON=$(BIN)/python scripts/generate_protos.sh $$tmp && \
	  diff -r -x __pycache__ webhooks $$tmp/webhooks && rm -rf $$tmp && echo "generated stubs are current"

## Start both services on SQLite files under ./var/, with development tokens.
run: $(INSTALLED) protos
	PYTHON=$(BIN)/python scripts/run_local.sh

## The whole suite: unit, integration (SQLite and PostgreSQL), contracts.
test: $(INSTALLED) $(NODE_MODULES)
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(MAKE) --no-print-directory protos-check

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
