# Two commands on a fresh machine with Python 3.11+:
#   make run    set up a venv and run the whole engine (`dunning dev`)
#   make test   set up a venv, run ruff and mypy, then every test (PostgreSQL lane included)
#   make chromium  install Debian's headless Chromium (the HTML report test draws with it; as root)
#   make bench  the engine against bare Temporal, every ratio in one table (about ten minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint clean chromium bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

run: setup
	$(BIN)/dunning dev

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q


bench: setup
	$(BIN)/python -m bench.run

chromium:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

clean:
	rm -rf $(VENV) .dunning .pytest_cache .hypothesis
