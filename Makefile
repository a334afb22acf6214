# Two commands a new user needs:  `make quickstart`  and  `make test`.
# Both install into ./.venv first when needed (idempotent; a stamp file makes reruns instant).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mertlab-installed

.PHONY: install quickstart test test-all docs clean-venv browser

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

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The documentation site on http://127.0.0.1:8000, rebuilt on every save (`python -m`: see mkdocs.yml).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

clean-venv:
	rm -rf $(VENV)

# Debian's Chromium, for the real-browser check of the MLflow UI (tests/test_mlflow_ui.py, in `make test-all`).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
