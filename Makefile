# Two entry points for a new user: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CAPTURES ?= $(abspath ../shared/captures)

INTEROP_VENV ?= .venv-interop
INTEROP_STATUS := $(INTEROP_VENV)/.status

.PHONY: install demo test lint typecheck unit model perf-report clean interop-env interop

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cyncsim needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tools.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# cync-lan's own Python 3.12 venv for the interop test; never fails the build
# (.venv-interop/.status holds the reason when it cannot be made, and the test skips with it).
$(INTEROP_STATUS): tools/interop_env.sh
	bash tools/interop_env.sh $(INTEROP_VENV)

interop-env:
	bash tools/interop_env.sh $(INTEROP_VENV)

interop: $(STAMP) $(INTEROP_STATUS)
	CYNCSIM_INTEROP_VENV=$(abspath $(INTEROP_VENV)) $(BIN)/pytest -q -rs -m interop tests/interop

# The bench tests (one `cyncsim bench all --quick`, about 1.5 min) run first and alone, so the
# suites are not squeezed by the other tests; the rest then runs on 2 workers, its coverage
# appended to theirs.
TEST_ENV := CYNCSIM_CAPTURES=$(CAPTURES) CYNCSIM_INTEROP_VENV=$(abspath $(INTEROP_VENV))
COV := --cov=replay --cov=simulator

unit: $(STAMP) $(INTEROP_STATUS)
	$(TEST_ENV) $(BIN)/pytest -q -m bench $(COV) --cov-report= tests/unit/test_bench_quick.py
	$(TEST_ENV) $(BIN)/pytest -q -n 2 -m "not bench" $(COV) --cov-append \
	  --cov-report=term:skip-covered --cov-fail-under=90

test: lint typecheck unit

model: $(STAMP)
	$(BIN)/python -m tools.build_default_model $(CAPTURES)

# One full benchmark run (about 15 minutes on 2 cores): docs/bench.json, then the plots in
# docs/img and the generated tables of docs/performance.md (tools/bench/report.py rewrites
# only the <!-- bench:NAME --> blocks; the prose around them stays).
perf-report: $(STAMP)
	CYNCSIM_CAPTURES=$(CAPTURES) $(BIN)/cyncsim bench all --profile --json docs/bench.json
	$(BIN)/python -m tools.bench.report docs/bench.json --doc docs/performance.md --img docs/img

clean:
	rm -rf $(VENV) $(INTEROP_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
