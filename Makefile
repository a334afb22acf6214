# Two commands a new user needs:  `make quickstart`  and  `make test`.
# Both install into ./.venv first when needed (idempotent; a stamp file makes reruns instant).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mertlab-installed

.PHONY: install quickstart test test-all docs gpu-check clean-venv browser system-deps

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned: every later step resolves against the same build.
	$(BIN)/python -m pip install torch==2.9.1 torchaudio==2.9.1
	$(BIN)/python -m pip install -c constraints.txt -e ".[test,docs]"
	$(BIN)/python -m pip check
	touch $(STAMP)

quickstart: install
	$(BIN)/mertlab train experiments/quickstart.yaml

test: install system-deps
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The documentation site on http://127.0.0.1:8000, rebuilt on every save (`python -m`: see mkdocs.yml).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

# On a CUDA machine: FSDP bf16 training with teachers on the fly + resume, the bf16 backbone step
# vs HubertModel, the CQT teacher vs librosa, peak GPU memory, the GPU tests; one table, < 10 min
# (bench/README.md). Without CUDA it says so in one line.
gpu-check: install
	$(BIN)/python bench/gpu_check.py

clean-venv:
	rm -rf $(VENV)

# Debian packages the tests use: Chromium for the real-browser test of the MLflow UI
# (tests/test_mlflow_ui.py). Instant when installed. As root (or with sudo) a failed install stops
# `make test`; without either it warns, and the tests that need a package skip (they fail instead
# where MERTLAB_REQUIRE_BROWSER=1).
SYSTEM_PACKAGES := chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] && echo "" || (command -v sudo >/dev/null && sudo -n true 2>/dev/null && echo sudo) || echo none)
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$(SUDO)" = none ]; then echo "warning: Debian packages missing ($$missing) and no root or sudo: the tests that need them skip"; exit 0; fi; \
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing

browser: system-deps
