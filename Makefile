# Two commands a new user needs:  `make quickstart`  and  `make test`.
# Both install into ./.venv first when needed (idempotent; a stamp file makes reruns instant).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mertlab-installed

.PHONY: install quickstart lint test test-fast docs gpu-check clean-venv browser system-deps dev-data dev-data-ci dev-data-packages

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

# Static checks (docs/development.md): ruff lint and format, mypy, and the import-linter contracts
# in pyproject.toml. mypy and import-linter read the package as it is installed (core/ as `mertlab`
# with plugins/ inside it as `mertlab.plugins`); an editable install keeps the two folders apart, so
# a tree of symbolic links under build/ lays that layout out.
LINT_PATHS := core plugins tests bench
INSTALLED_TREE := build/installed-layout
lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	rm -rf $(INSTALLED_TREE) && mkdir -p $(INSTALLED_TREE)/mertlab
	ln -s $(CURDIR)/core/* $(INSTALLED_TREE)/mertlab/ && ln -s $(CURDIR)/plugins $(INSTALLED_TREE)/mertlab/plugins
	MYPYPATH=$(INSTALLED_TREE) $(BIN)/mypy -p mertlab
	PYTHONPATH=$(INSTALLED_TREE) $(BIN)/lint-imports --no-cache

# The two test tiers (docs/development.md). `make test` is CI's command: lint, then every test,
# the 25 slowest named at the end. `make test-fast`, for iterating: the unit and contract tests,
# everything not marked `integration` (no lint, no Debian packages).
test: install lint system-deps
	$(REQUIRE_SYSTEM_DEPS) $(BIN)/python -m pytest -q --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -m "not integration"

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

# Debian packages. `make test` first installs the ones its tests use (instant when installed): the
# real-music dev set's recordings, soundfont and FluidSynth (docs/probing.md; the list is
# mertlab.data.devset.sources.APT_PACKAGES) and Chromium for the real-browser test of the MLflow
# UI. As root (or with passwordless sudo) a failed install stops `make test`, and the tests run
# with MERTLAB_REQUIRE_SYSTEM_DEPS=1, so a missing package fails them (CI); without either it
# warns and those tests skip.
DEV_DATA_PACKAGES := asc-music drascula-music planetblupi-music-ogg nexuiz-music timgm6mb-soundfont libfluidsynth3
SYSTEM_PACKAGES := chromium $(DEV_DATA_PACKAGES)
SUDO := $(shell [ "$$(id -u)" = 0 ] && echo "" || (command -v sudo >/dev/null && sudo -n true 2>/dev/null && echo sudo) || echo none)
REQUIRE_SYSTEM_DEPS := $(if $(filter none,$(SUDO)),,MERTLAB_REQUIRE_SYSTEM_DEPS=1)

define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$(SUDO)" = none ]; then echo "warning: Debian packages missing ($$missing) and no root or sudo: the tests that need them skip"; exit 0; fi; \
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing
endef

system-deps:
	$(call apt_install,$(SYSTEM_PACKAGES))

browser:
	$(call apt_install,chromium)

dev-data-packages:
	$(call apt_install,$(DEV_DATA_PACKAGES))

# The real-music development set (docs/probing.md): game soundtracks and a General MIDI soundfont.
dev-data: install dev-data-packages
	$(BIN)/mertlab dev-data data/dev

# The small slice (a few minutes of recordings, ~250 clips per task) for CI's learning-signal test.
dev-data-ci: install dev-data-packages
	$(BIN)/mertlab dev-data data/dev-ci --size ci
