# One-command set-up, tests, demo and benchmarks. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := airflow_provider_ibflex tests example_dags scripts $(wildcard benchmarks/*.py)

.PHONY: install anchors packages lint typecheck dist compat test demo bench clean

# The provider with every public extra, and the development tools of the dev dependency group
# (pip 25.1 or later reads dependency groups).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[tables,redis,postgres]" --group dev -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

# The benchmarks' anchors live in their own environment: they are never dependencies of the provider,
# and ib_async pins a tzdata older than Airflow's.
ANCHORS := .venv-anchors
$(ANCHORS)/.installed:
	$(PYTHON) -m venv $(ANCHORS)
	$(ANCHORS)/bin/python -m pip install --quiet --upgrade pip
	$(ANCHORS)/bin/python -m pip install --quiet "ibflex==1.1" "ib_async==2.1.0" requests pandas
	touch $(ANCHORS)/.installed

anchors: $(ANCHORS)/.installed

# Debian packages the tests run for real: Chromium (Airflow's UI, driven by Playwright, which never
# downloads a browser here), PostgreSQL (the system test's Airflow) and redis-server (the budget store).
packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

# The release artefacts: the sdist and wheel build, twine accepts them, and scripts/check_dist.py checks
# what they hold (the wheel's files and metadata; the sdist's test suite, run once extracted).
dist: $(STAMP)
	rm -rf dist build
	$(BIN)/python -m build --outdir dist . >/dev/null
	$(BIN)/twine check --strict dist/*
	$(BIN)/python scripts/check_dist.py dist

# The built wheel on every supported Airflow minor, each in a clean venv from the constraints file kept
# for it in tests/compat/constraints (scripts/compat.py; venvs are kept in .compat between runs).
compat: $(STAMP)
	$(BIN)/python scripts/compat.py

test: $(STAMP) anchors packages lint typecheck dist compat
	$(BIN)/python -m pytest -q -p no:cacheprovider
	# Once more with every simulator answer gzip-encoded, as a compressing service or proxy sends it
	# (the chaos test is about processes and stores, not encodings: once is enough).
	IBFLEX_SIMULATOR_COMPRESS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not chaos"

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP) anchors packages
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(ANCHORS) .compat .demo .mypy_cache .ruff_cache .pytest_cache .hypothesis dist build \
	  *.egg-info
