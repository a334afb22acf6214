# Two commands a new user needs:  `make quickstart`  and  `make test`.
# Both install into ./.venv first when needed (idempotent; a stamp file makes reruns instant).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mertlab-installed

.PHONY: install quickstart test test-all docs gpu-check clean-venv browser dev-data dev-data-ci dev-data-packages

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

# On a CUDA machine: FSDP bf16 training with teachers on the fly + resume, the bf16 backbone step
# vs HubertModel, the CQT teacher vs librosa, peak GPU memory, the GPU tests; one table, < 10 min
# (bench/README.md). Without CUDA it says so in one line.
gpu-check: install
	$(BIN)/python bench/gpu_check.py

clean-venv:
	rm -rf $(VENV)

# Debian's Chromium, for the real-browser check of the MLflow UI (tests/test_mlflow_ui.py, in `make test-all`).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# The real-music development set (docs/probing.md): game soundtracks and a General MIDI soundfont
# from Debian (the list is mertlab.data.devset.sources.APT_PACKAGES), FluidSynth's library.
DEV_DATA_PACKAGES := asc-music drascula-music planetblupi-music-ogg nexuiz-music timgm6mb-soundfont libfluidsynth3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

dev-data-packages:
	dpkg -s $(DEV_DATA_PACKAGES) >/dev/null 2>&1 || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(DEV_DATA_PACKAGES))

dev-data: install dev-data-packages
	$(BIN)/mertlab dev-data data/dev

# The small slice (a few minutes of recordings, ~250 clips per task) for CI's learning-signal test.
dev-data-ci: install dev-data-packages
	$(BIN)/mertlab dev-data data/dev-ci --size ci
