# zapi-channel: one command to test, one to run the bot locally.
#
#   make test    create the virtual environment (Python 3.10), install, lint, run every test
#   make test-all the matrix (noxfile.py): lint, unit tests on Python 3.8, 3.9, 3.10, e2e on 3.10
#   make run     train the demo bot if needed and run it against the local Z-API emulator
#   make bench   measure against Rasa's channels; rewrites docs/benchmarks.md (needs wrk)
#   make dist    build the sdist and the wheel into dist/ and check them (twine check --strict)
#
# Secrets for a real Z-API instance live in .env (git-ignored; `zapi-channel connect` writes it).

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Values in .env reach every command below (rasa expands ${ZAPI_...} from the environment).
-include .env
export

export RASA_TELEMETRY_ENABLED := false
# Rasa's own chatter (tensorflow, sqlalchemy) on stderr helps nobody during tests.
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help venv lint test test-all test-unit test-e2e run reliability bench dist constraints clean

help:
	@sed -n '1,11p' Makefile

$(STAMP): pyproject.toml constraints.txt
	@set -e; \
	if [ ! -x $(BIN)/python ]; then \
		py=$$(scripts/find-python); \
		echo "Creating $(VENV) with $$py"; \
		"$$py" -m venv $(VENV); \
	fi; \
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2" wheel; \
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"; \
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/pytest -m "not e2e"

test-e2e: $(STAMP)
	$(BIN)/pytest -m e2e

test: lint
	$(BIN)/pytest

# nox runs in a virtual environment of its own (it needs a newer `packaging` than Rasa 3.6
# accepts) and finds each Python by name: build/pythons/ holds python3.8, python3.9 and
# python3.10 as links to what scripts/find-python finds, first on PATH for nox only.
# NOX_ARGS picks sessions: make test-all NOX_ARGS="-s unit-3.8 unit-3.9".
NOX_TOOLS := build/nox-tools
NOX_ARGS ?=
test-all:
	@set -e; \
	if [ ! -x $(NOX_TOOLS)/bin/python ]; then "$$(scripts/find-python)" -m venv $(NOX_TOOLS); fi; \
	$(NOX_TOOLS)/bin/python -m pip install --quiet "nox==2026.10.20"; \
	mkdir -p build/pythons; \
	for version in 3.8 3.9 3.10; do \
		ln -sf "$$(scripts/find-python $$version)" build/pythons/python$$version; \
	done; \
	PATH="$(CURDIR)/build/pythons:$$PATH" $(NOX_TOOLS)/bin/nox $(NOX_ARGS)

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

# Runs the fault-injection scenarios end to end and writes docs/reliability.md.
reliability: $(STAMP)
	$(BIN)/python scripts/reliability_report.py

# Benchmarks are measurements, never tests: see bench/README.md.
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk" >&2; exit 2; }
	$(BIN)/python -m bench.run

# The build tools get a virtual environment of their own: twine needs a newer `packaging` than
# Rasa 3.6 accepts, so they cannot live in .venv.
DIST ?= dist
DIST_TOOLS := build/dist-tools
dist:
	@set -e; \
	if [ ! -x $(DIST_TOOLS)/bin/python ]; then "$$(scripts/find-python)" -m venv $(DIST_TOOLS); fi; \
	$(DIST_TOOLS)/bin/python -m pip install --quiet "build==1.6.1" "twine==7.0.0"; \
	rm -rf "$(DIST)"; \
	$(DIST_TOOLS)/bin/python -m build --outdir "$(DIST)" .; \
	$(DIST_TOOLS)/bin/python -m twine check --strict "$(DIST)"/*

constraints: $(STAMP)
	@{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e'; } > constraints.new
	@mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache models/.demo-fingerprint build dist
