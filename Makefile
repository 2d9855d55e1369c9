# rainstorm: `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test quick check chaos lint docs bench clean

$(STAMP): pyproject.toml setup.py $(wildcard rainstorm/native/*.c rainstorm/native/*.h)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# bytecode, as a wheel install has it (an editable install has none, and
	# with PYTHONDONTWRITEBYTECODE set every process would compile every module)
	$(BIN)/python -m compileall -q rainstorm
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m rainstorm.samples --mb 20 --out data/sample
	$(BIN)/rainstorm run examples/wordcount.yaml --input data/sample --workers 2

# everything: lint, types, every test (unit, integration, e2e, slow, chaos), in
# $(JOBS) pytest processes (the e2e tests mostly wait on processes they spawn)
JOBS ?= 2
test: lint
	$(BIN)/pytest -q -n $(JOBS)

# everyday work (under a minute): lint, types, unit and in-process integration tests
quick: lint
	$(BIN)/pytest -q -m "(unit or integration) and not slow"

# before a push: lint, types, and every test but the slow and chaos ones
check: lint
	$(BIN)/pytest -q -n $(JOBS) -m "not slow and not chaos"

# the fault tests alone: processes and servers killed on purpose
chaos: $(STAMP)
	$(BIN)/pytest -q -m chaos

lint: $(STAMP)
	$(BIN)/ruff check rainstorm tests experiments examples tools
	$(BIN)/mypy
	$(BIN)/mypy --strict tools

# regenerate README.md's module map (tests/unit/test_module_map.py checks it)
docs: $(STAMP)
	$(BIN)/python tools/module_map.py --write

bench: $(STAMP)
	$(BIN)/python experiments/bench_wordcount.py --mb 100

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
