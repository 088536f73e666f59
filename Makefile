# Two entry points: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench mutate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.demo --workdir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check mtljax tests experiments

bench: $(STAMP)
	$(BIN)/python experiments/benchmark.py

# Plants curated bugs in a copy of the repo and checks the tests catch each (~2 min; not in CI).
mutate: $(STAMP)
	$(BIN)/python experiments/mutate.py

clean:
	rm -rf $(VENV) runs .pytest_cache
