# Everything a fresh machine needs: `make test` and `make demo` create .venv, install,
# start embedded Redis/PostgreSQL when none answers, then run.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test test-fast test-cluster lint typecheck pytest demo bench chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "mmops needs Python >= 3.11 (python3, python3.11, ...): none found"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,embedded]'
	rm -f $(VENV)/.installed-*
	touch $@

test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test-cluster: install
	$(BIN)/pytest -q -m cluster

# the unit layer: no server, no process (tests/conftest.py marks it)
test-fast: install
	$(BIN)/pytest -q -m unit

demo: install
	$(BIN)/mmops demo

bench: install
	$(BIN)/python -m bench.coverage
	$(BIN)/python -m bench.migrate
	$(BIN)/python -m bench.sweep

# the long chaos run (docs/chaos.md): >= 50,000 events, >= 100 kills, >= 10 Redis restarts
chaos: install
	$(BIN)/python -m bench.chaos --full --seed $(or $(SEED),1)

clean:
	rm -rf $(VENV) .mmops .pytest_cache .mypy_cache .ruff_cache .chaos
