# One entry point for people and CI alike: CI runs `make lint` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_MODULES := tests/node/node_modules/.installed

.PHONY: install protos protos-check run reset test lint format bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	scripts/install_browser.sh
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

## Start both services and the console on SQLite files under ./var/, with development tokens.
run: $(INSTALLED) protos
	PYTHON=$(BIN)/python scripts/run_local.sh

## Start the walk-through over: delete the SQLite databases under ./var/ (not the tokens
## or signing keys). Refuses while `make run` is running; stops nothing.
reset: $(INSTALLED)
	PYTHON=$(BIN)/python scripts/reset_local.sh

## The whole suite: unit, integration (SQLite and PostgreSQL), contracts, the console in Chromium.
test: $(INSTALLED) $(NODE_MODULES)
	$(BIN)/pytest

## Every benchmark under bench/: each prints our figure next to the raw limit of the same run.
bench: $(INSTALLED)
	$(BIN)/python bench/contracts_validation.py
	$(BIN)/python bench/details_parsing.py
	$(BIN)/python bench/signing_rate.py
	$(BIN)/python bench/http_post_rate.py --rounds 3
	$(BIN)/python bench/dispatcher_rates.py --events 8000 --rounds 3
	$(BIN)/python bench/delivery_ceiling.py --events 10000 --rounds 3
	$(BIN)/python bench/blackhole_endpoint.py --events 1000 --rounds 3
	$(BIN)/python bench/dead_endpoint_backlog.py --backlog 50000 --events 5000 --rounds 3
	$(BIN)/python bench/backlog.py --rounds 3
	$(BIN)/python bench/steady_rate.py --rates 100,500,half --seconds 20 --rounds 3
	$(BIN)/python bench/peers.py --events 8000 --rounds 3
	$(BIN)/python bench/soak.py --minutes 3

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
