# Two commands set up everything: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp

.PHONY: run test bench lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

HOST ?= 127.0.0.1
PORT ?= 8000

run: $(STAMP)  ## start the API with an in-process worker (embedded Postgres when DATABASE_URL is unset): make run HOST=0.0.0.0 PORT=9000
	$(BIN)/confluence-vectors serve --host $(HOST) --port $(PORT)

test: $(STAMP)  ## the whole test suite
	$(BIN)/pytest

$(BENCH_STAMP): $(STAMP) pyproject.toml  ## the `bench` extra (pgqueuer, for bench/queue_choice.py) on top of dev
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## benchmarks; each prints a table, all recorded in bench/RESULTS.md
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check app tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .data .pytest_cache
