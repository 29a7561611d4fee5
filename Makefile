# Two entry points for a new user: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINKED := $(VENV)/.linked
# The package is installed in setuptools' strict editable mode: build/__editable__.* holds a
# tree of links named cyncsim/..., so mypy, coverage and the tests see the installed names.
# A new or removed module needs the tree rebuilt, which `link` does when the file list changes.
SOURCES := $(sort $(shell find replay simulator tools captures -name '*.py' -o -name '*.msgpack' -o -name py.typed))
EDITABLE := --config-settings editable_mode=strict -e
CAPTURES ?= $(abspath ../shared/captures)

INTEROP_VENV ?= .venv-interop
INTEROP_STATUS := $(INTEROP_VENV)/.status

.PHONY: install link demo test lint typecheck contracts unit model perf-report clean interop-env interop

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cyncsim needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(EDITABLE) '.[dev]'
	touch $(STAMP)
	echo "$(SOURCES)" > $(LINKED)

link: $(STAMP)
	@test "$$(cat $(LINKED) 2>/dev/null)" = "$(SOURCES)" || { \
	  $(BIN)/pip install -q --no-deps $(EDITABLE) . && echo "$(SOURCES)" > $(LINKED); }

install: link

demo: link
	$(BIN)/python -m cyncsim.tools.demo

lint: link
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: link
	$(BIN)/mypy

contracts: link
	$(BIN)/lint-imports --no-cache

# cync-lan's own Python 3.12 venv for the interop test; never fails the build
# (.venv-interop/.status holds the reason when it cannot be made, and the test skips with it).
$(INTEROP_STATUS): tools/interop_env.sh
	bash tools/interop_env.sh $(INTEROP_VENV)

interop-env:
	bash tools/interop_env.sh $(INTEROP_VENV)

interop: link $(INTEROP_STATUS)
	CYNCSIM_INTEROP_VENV=$(abspath $(INTEROP_VENV)) $(BIN)/pytest -q -rs -m interop tests/interop

# The bench tests (one `cyncsim bench all --quick`, about 1.5 min) run first and alone, so the
# suites are not squeezed by the other tests; the rest then runs on 2 workers, its coverage
# appended to theirs.
TEST_ENV := CYNCSIM_CAPTURES=$(CAPTURES) CYNCSIM_INTEROP_VENV=$(abspath $(INTEROP_VENV))
COV := --cov=cyncsim.replay --cov=cyncsim.simulator

unit: link $(INTEROP_STATUS)
	$(TEST_ENV) $(BIN)/pytest -q -m bench $(COV) --cov-report= tests/bench
	$(TEST_ENV) $(BIN)/pytest -q -n 2 -m "not bench" $(COV) --cov-append \
	  --cov-report=term:skip-covered --cov-fail-under=90

test: lint typecheck contracts unit

model: link
	$(BIN)/python -m cyncsim.tools.build_default_model $(CAPTURES)

# One full benchmark run (about 15 minutes on 2 cores): docs/bench.json, then the plots in
# docs/img and the generated tables of docs/performance.md (tools/bench/report.py rewrites
# only the <!-- bench:NAME --> blocks; the prose around them stays).
perf-report: link
	CYNCSIM_CAPTURES=$(CAPTURES) $(BIN)/cyncsim bench all --profile --json docs/bench.json
	$(BIN)/python -m cyncsim.tools.bench.report docs/bench.json --doc docs/performance.md --img docs/img

clean:
	rm -rf $(VENV) $(INTEROP_VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
