# Everything a fresh machine needs: `make test` and `make demo` create .venv, install,
# start embedded Redis/PostgreSQL when none answers, then run.
PYTHON ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test lint typecheck pytest demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mmops needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,embedded]'
	rm -f $(VENV)/.installed-*
	touch $@

test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

demo: install
	$(BIN)/mmops demo

bench: install
	$(BIN)/python -m bench.coverage
	$(BIN)/python -m bench.migrate
	$(BIN)/python -m bench.sweep

clean:
	rm -rf $(VENV) .mmops .pytest_cache .mypy_cache .ruff_cache
