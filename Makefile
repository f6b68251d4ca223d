# Every target sets up .venv first if needed. torch comes from the local CPU wheel (pip install torch==2.13.0)
# before anything else, so pip never resolves a newer, multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The chat page's browser test drives Debian's Chromium through Playwright (never `playwright install`).
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests run beside other work: OpenMP's default spin-waiting collapses under contention, PASSIVE holds up.
# Benchmarks measure what a user gets, the default policy (PASSIVE halves tiny-model decoding speed).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: quickstart test test-all lint format bench setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# pyproject.toml holds compatible ranges; constraints.txt the exact versions make and CI install.
PIP := $(BIN)/pip install --quiet -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt $(VENV)/.installed
	$(PIP) -e ".[dev,hf,serve,recipes,browser,export,eval]"
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends chromium

setup: $(VENV)/.installed

# Train a tokenizer and a small GPT on the built-in corpus (Python's own docs), print samples, draw loss.png.
quickstart: $(VENV)/.installed
	rm -rf runs/quickstart
	$(BIN)/pocketgpt train --preset quickstart --out runs/quickstart

# POCKETGPT_REQUIRE_BROWSER=1: the browser test fails instead of skipping when Chromium or Playwright is missing.
test: $(VENV)/.installed-dev | $(CHROMIUM)
	POCKETGPT_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m "not slow"

# ruff: lint (pyflakes, pycodestyle, bugbear, pyupgrade, import order) and formatting, as configured in pyproject.toml
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check pocketgpt tests benchmarks recipes
	$(BIN)/ruff format --check pocketgpt tests benchmarks recipes

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix pocketgpt tests benchmarks recipes
	$(BIN)/ruff format pocketgpt tests benchmarks recipes

test-all: $(VENV)/.installed-dev | $(CHROMIUM)
	POCKETGPT_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q

# Needs ../shared/data and, for the training ones, a nanoGPT checkout: NANOGPT=path/to/nanoGPT make bench
NANOGPT ?= ../nanoGPT
bench: $(VENV)/.installed-dev
	env -u OMP_WAIT_POLICY $(BIN)/python benchmarks/tokenizer.py
	env -u OMP_WAIT_POLICY $(BIN)/python benchmarks/generate.py
	env -u OMP_WAIT_POLICY $(BIN)/python benchmarks/serve.py
	env -u OMP_WAIT_POLICY $(BIN)/python benchmarks/train_throughput.py --nanogpt $(NANOGPT)
	env -u OMP_WAIT_POLICY $(BIN)/python benchmarks/speedrun.py --nanogpt $(NANOGPT) --ablations

clean:
	rm -rf $(VENV) runs/quickstart .pytest_cache
