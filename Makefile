# bltjax developer entry points. `make test` and `make demo` are all a newcomer needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= data

.PHONY: venv test lint data demo bench clean

venv: $(STAMP)

# The stamp makes re-runs a no-op until the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test,oracle,eval,dev]"
	@touch $@

# Test modules go to TEST_WORKERS processes whole (--dist loadfile: a module's compiled programs
# are shared by its tests and dropped at its end, tests/conftest.py).
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: venv
	$(VENV)/bin/ruff check .

# Assembles the default real-text corpus (docs/data.md) into $(DATA_DIR); idempotent.
data: venv
	PYTHON=$(PY) bash scripts/materialize_data.sh $(DATA_DIR)

demo: venv data
	$(PY) -m bltjax.demo

# Runs every benchmarks/*.py script (helpers start with `_`) with its default arguments.
bench: venv
	@set -e; for f in benchmarks/[!_]*.py; do \
	  [ -e "$$f" ] || { echo "no benchmarks/*.py yet"; break; }; \
	  echo "== $$f"; $(PY) "$$f"; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
