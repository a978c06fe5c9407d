# One-command set-up, tests, demo and benchmarks. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := airflow_provider_ibflex tests example_dags scripts $(wildcard benchmarks/*.py)

.PHONY: install anchors browser lint typecheck test demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]" -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

# The benchmarks' anchors live in their own environment: they are never dependencies of the provider,
# and ib_async pins a tzdata older than Airflow's.
ANCHORS := .venv-anchors
$(ANCHORS)/.installed:
	$(PYTHON) -m venv $(ANCHORS)
	$(ANCHORS)/bin/python -m pip install --quiet --upgrade pip
	$(ANCHORS)/bin/python -m pip install --quiet "ibflex==1.1" "ib_async==2.1.0" requests
	touch $(ANCHORS)/.installed

anchors: $(ANCHORS)/.installed

# The system test drives Airflow's UI in Debian's Chromium (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (sudo apt-get install chromium)"; fi; }

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) anchors browser lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP) anchors
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(ANCHORS) .demo .mypy_cache .ruff_cache .pytest_cache
