# Layerwise — every target installs what it needs into .venv first (once).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# nbgrader shells out to `alembic`: the venv's bin/ must be on PATH for every call.
export PATH := $(CURDIR)/$(BIN):$(PATH)
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
PROFILE ?= auto
# pytest workers for `make test` (tests are grouped so costly fixtures stay on one worker).
TEST_WORKERS ?= 2
# chapters `make book` executes at a time (on a CPU the fast profile runs each on one torch thread).
BOOK_WORKERS ?= 2

.PHONY: all install book test exercises zoo bench clean

all: test

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || (command -v $(PYTHON) >/dev/null && $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV))
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[book,grade,models,dev]"
	@touch $@

## make book: execute every chapter (papermill, PROFILE=auto), write the results dashboard, build the HTML book.
book: $(STAMP)
	rm -rf _build/src
	$(BIN)/python -m layerwise.course execute --profile $(PROFILE) --out _build/src --workers $(BOOK_WORKERS)
	$(BIN)/python -m layerwise.course dashboard --book _build/src
	$(BIN)/jupyter-book build _build/src --path-output . -W -n --keep-going
	@echo "Book: _build/html/index.html"

## make test: library tests, chapters in the fast profile, nbgrader round trips, book build.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=40

## make exercises: regenerate exercises/ (student release) from solutions/.
exercises: $(STAMP)
	$(BIN)/python -m layerwise.course release

## make zoo: retrain every zoo model from scratch (seeded) and rewrite lib/layerwise/zoo/manifest.json.
zoo: $(STAMP)
	LAYERWISE_PROGRESS=0 $(BIN)/python -m layerwise.zoo train --all

bench: $(STAMP)
	$(BIN)/python -m layerwise.bench

clean:
	rm -rf _build .pytest_cache gradebook.db autograded feedback submitted grades.csv
	find . -name __pycache__ -prune -exec rm -rf {} +
