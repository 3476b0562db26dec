# ami-rcd: the two commands a newcomer needs are `make demo` and `make test`.
# The Makefile makes its own virtual environment (.venv) with the tested
# versions from constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test check lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ami-rcd needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## The main job end to end on embedded defaults.
demo: $(STAMP)
	$(BIN)/rcd demo $(DEMO_ARGS)

## Lint, type-check and the whole test suite.
test: check pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check shared edge_agent central firmware_sim ops tests bench

typecheck: $(STAMP)
	$(BIN)/mypy shared edge_agent central firmware_sim ops

# The suite in two passes: everything but the fault and HA suites in two worker
# processes (its tests mostly wait on brokers, agents and meters), then those two alone,
# since they kill processes against deadlines. PYTEST_ARGS runs one plain pass instead.
PYTEST_JOBS ?= 2
PARALLEL := not fault and not ha

pytest: $(STAMP)
ifeq ($(strip $(PYTEST_ARGS)),)
	@# both passes run whatever the first one found; the target fails if either failed
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadfile -m "$(PARALLEL)"; first=$$?; \
	$(BIN)/python -m pytest -m "not ($(PARALLEL))"; second=$$?; \
	test $$first -eq 0 && test $$second -eq 0
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
