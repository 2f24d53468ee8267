# Quick start: `make reproduce` (default workflow) and `make test` (test suite).
# Both create .venv with the pinned environment first; nothing else is needed but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: reproduce test test-fast lint clean-venv

$(BIN)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	touch $@

reproduce: $(BIN)/.installed
	snakemake --cores $(CORES)

test: $(BIN)/.installed
	python -m pytest -v

test-fast: $(BIN)/.installed
	python -m pytest -v -m "not slow"

lint: $(BIN)/.installed
	snakemake --lint
	python -m ncil dvc-yaml --check

clean-venv:
	rm -rf $(VENV)
