# The two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both create or reuse .venv and install what they need; nothing else must be pre-installed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint typecheck install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if (3,11)<=v<=(3,12) else "ticktape needs Python 3.11 or 3.12 (bytewax 0.21.1 has no wheels for %d.%d); set PYTHON=/path/to/python3.12" % v)'
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
