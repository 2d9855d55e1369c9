# rainstorm: `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m rainstorm.samples --mb 20 --out data/sample
	$(BIN)/rainstorm run examples/wordcount.yaml --input data/sample --workers 2

test: $(STAMP)
	$(BIN)/ruff check rainstorm tests experiments examples
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check rainstorm tests experiments examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python experiments/bench_wordcount.py --mb 100

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
