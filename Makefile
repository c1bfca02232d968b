# The two commands: `make demo` and `make test`. Both set everything up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-deps test-real real-servers lint demo bench bench-workers bench-actors \
	bench-real bench-cache bench-vectors bench-scale bench-profile bench-deps mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) test-deps
	$(BIN)/python -m pytest

# The real-server tier: llama-cpp-python's server and llama.cpp's llama-server, built once
# per machine into a cache outside the checkout (the first build takes 10-30 minutes).
REAL_SERVERS ?= $(HOME)/.cache/citadel-gateway/real-servers
# A real embedding model (all-MiniLM-L6-v2 on torch, CPU) for the semantic cache's tests.
EMBEDDINGS ?= $(HOME)/.cache/citadel-gateway/embedding-server

real-servers:
	PYTHON=$(PYTHON) ops/real_servers/install "$(REAL_SERVERS)"
	PYTHON=$(PYTHON) ops/real_servers/install_embeddings "$(EMBEDDINGS)"

test-real: $(STAMP) real-servers
	CITADEL_REAL_SERVERS="$(REAL_SERVERS)" CITADEL_EMBEDDINGS="$(EMBEDDINGS)" \
		$(BIN)/python -m pytest -m real tests/real

# The Redis tests start private redis-servers (outages are never staged on the shared one);
# the admin console's tests drive Debian's Chromium.
test-deps:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Mutation testing of the decision-making modules against the fast tests that cover them
# (pyproject.toml [tool.mutmut]); the score per module, failing below 85% killed.
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run > /dev/null
	$(BIN)/python -m ops.mutation_score --mutmut $(BIN)/mutmut

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

# Streams at scale: 6,000 held at once through the passthrough and the gateway (peak memory,
# first-token times, every stream completed).
bench-scale: $(STAMP)
	$(BIN)/python -m ops.bench.streamscale

# The response cache: a hit against a miss and the upstream; the lookup's own cost.
bench-cache: $(STAMP) bench-deps
	$(BIN)/python -m ops.bench.cache

# The semantic cache's candidate vector stores: latency and recall at 10k and 100k entries.
bench-vectors: $(STAMP)
	$(BIN)/python -m ops.bench.vectors

bench-actors: $(STAMP)
	$(BIN)/python -m ops.bench.actors

# Where the gateway's CPU goes at c=100: py-spy samples it under wrk, summed by function.
bench-profile: $(STAMP) bench-deps
	@test -x $(BIN)/py-spy || $(BIN)/pip install -q py-spy
	$(BIN)/python -m ops.bench.profile

bench-real: $(STAMP) real-servers
	CITADEL_REAL_SERVERS="$(REAL_SERVERS)" $(BIN)/python -m ops.bench.real

bench-deps:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
