# The README's commands. Each target sets up what it needs: a fresh clone needs only python3.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.catalens-installed
PYTEST_ARGS ?=

.PHONY: install demo test fuzz lint typecheck format docs clean

$(PY):
	python3 -m venv $(VENV)

# Reinstalls only when the dependency declarations change, so repeated runs are fast.
# constraints.txt pins the local CPU torch: nothing may swap in a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/catalens demo --serve

lint: install
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(VENV)/bin/lint-imports

typecheck: install
	$(PY) -m mypy

test: install lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

# `make test` fuzzes every API operation briefly (tests/fuzz); this explores further.
FUZZ_EXAMPLES ?= 200
fuzz: install
	CATALENS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -p no:cacheprovider --timeout=3600 tests/fuzz

format: install
	$(PY) -m ruff format src tests bench
	$(PY) -m ruff check --fix src tests bench

docs: install
	$(VENV)/bin/typer catalens.cli.commands utils docs --name catalens --title "catalens CLI reference" --output docs/cli.md

clean:
	rm -rf $(VENV) demo-data test-artifacts .mypy_cache .ruff_cache .pytest_cache
