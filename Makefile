# The two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both create or reuse .venv and install what they need; nothing else must be pre-installed.
SHELL := /bin/bash
# The first interpreter that actually runs and is 3.11/3.12 (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(not (3,11) <= sys.version_info[:2] <= (3,12))' 2>/dev/null && { command -v $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint typecheck install clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "ticktape needs Python 3.11 or 3.12 (bytewax 0.21.1 has no wheels for newer); set PYTHON=/path/to/python3.12" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ticktape up --demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/bench -o addopts="" -s

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .ticktape .pytest_cache .mypy_cache .ruff_cache
