# Two commands: `make demo` (set up and run the demo) and `make test` (set up and run every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser demo test lint bench docs

setup: $(VENV)/.installed

# Debian's chromium for the browser tests (only the test suite needs it).
browser:
	bash scripts/setup-browser.sh

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(PY) demo/run.py

test: setup browser
	VENV=$(VENV) bash scripts/test.sh $(ARGS)

lint: setup
	$(VENV)/bin/ruff check orchestrator tests bench demo

bench: setup
	$(PY) -m bench $(ARGS)

# The documentation site, into site/ (a broken link or anchor fails the build).
docs: setup
	$(PY) -m pip install --quiet -e '.[docs]'
	$(VENV)/bin/mkdocs build --strict
