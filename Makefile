# The two commands: `make demo` and `make test`. Both set everything up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-deps lint demo bench bench-workers bench-actors bench-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) test-deps
	$(BIN)/python -m pytest

# The Redis tests start private redis-servers (outages are never staged on the shared one).
test-deps:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Four mock model services on 11400-11403 and the gateway on 127.0.0.1:8000. Ctrl-C stops all.
demo: $(STAMP)
	$(BIN)/citadel-gateway demo

# The side-by-side benchmark (upstream alone, bare passthrough, gateway). Needs wrk.
bench: $(STAMP) bench-deps
	$(BIN)/python -m ops.bench.run

bench-workers: $(STAMP) bench-deps
	$(BIN)/python -m ops.bench.workers

bench-actors: $(STAMP)
	$(BIN)/python -m ops.bench.actors

bench-deps:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
