# The README's two commands: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PORT ?= 8000
# `make run` answers on this machine only (it prints a demo password); HOST=0.0.0.0 opens it up.
HOST ?= 127.0.0.1
REDIS_URL ?= redis://127.0.0.1:6379/0
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
PYTEST_ARGS ?=
export REDIS_URL PORT HOST

.PHONY: run test test-sqlite test-postgres lint format bench clean

$(VENV)/.run-deps: requirements.txt
	scripts/setup-venv.sh $(PYTHON) requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt
	scripts/setup-venv.sh $(PYTHON) requirements-dev.txt
	touch $(VENV)/.run-deps $@

## Run the whole service (web, worker, scheduler) on SQLite, with Redis started if needed.
run: $(VENV)/.run-deps
	scripts/ensure-redis.sh $(BIN)/python
	$(BIN)/flask --app app db upgrade
	$(BIN)/flask --app app demo
	PATH="$(BIN):$$PATH" $(BIN)/honcho start -f Procfile -p $(PORT) web worker worker_slow scheduler

## Run the whole test suite on SQLite, then on PostgreSQL when one answers.
test: $(VENV)/.dev-deps
	scripts/ensure-redis.sh $(BIN)/python
	scripts/ensure-chromium.sh
	scripts/ensure-go.sh
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

test-sqlite:
	@echo "== tests on SQLite =="
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-postgres:
	@if scripts/ensure-postgres.sh $(BIN)/python "$(TEST_DATABASE_URL)"; then \
		echo "== tests on PostgreSQL ($(TEST_DATABASE_URL)) =="; \
		TEST_DATABASE_URL="$(TEST_DATABASE_URL)" $(BIN)/pytest -q $(PYTEST_ARGS); \
	elif [ -n "$$REQUIRE_POSTGRES" ]; then \
		echo "PostgreSQL is required (REQUIRE_POSTGRES is set) but does not answer at $(TEST_DATABASE_URL)"; exit 1; \
	else \
		echo "== PostgreSQL run SKIPPED: nothing answers at $(TEST_DATABASE_URL) (set TEST_DATABASE_URL) =="; \
	fi

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev-deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Benchmark against the raw ceiling (bench/README.md), e.g. BENCH_ARGS="--only throughput".
bench: $(VENV)/.run-deps
	bench/ensure-tools.sh
	test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy==0.4.3
	-scripts/ensure-postgres.sh $(BIN)/python "$${BENCH_DATABASE_URL:-$(TEST_DATABASE_URL)}"
	BENCH_DATABASE_URL="$${BENCH_DATABASE_URL:-$(TEST_DATABASE_URL)}" $(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
