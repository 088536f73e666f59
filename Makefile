# Two entry points: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-gpu mutate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.demo --workdir runs/demo

# Two worker processes, one test file each at a time (they share compiled programs on disk).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check mtljax tests experiments

bench: $(STAMP)
	$(BIN)/python experiments/benchmark.py

# The GPU tables of docs/benchmarks.md (hps-mlp T = 10 and 40 with both engines; IWRM), as JSON
# in $(BENCH_OUT) ($OUT when set). Needs no venv (the GPU image has jax, flax and optax); the
# torch peers run only where torch and torchjd are installed. Expected well under 8 min on an
# H100 (unmeasured; 45 s on 2 CPU cores with --quick --no-torch). CPU smoke test:
# make bench-gpu BENCH_FLAGS=--quick
BENCH_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
BENCH_OUT ?= $(or $(OUT),runs/bench-gpu)
BENCH_FLAGS ?=
BENCH_RUN := PYTHONPATH=$(CURDIR) $(BENCH_PYTHON) experiments/benchmark.py --repeats 10 --warmup 2

bench-gpu:
	mkdir -p $(BENCH_OUT)
	$(BENCH_RUN) --tasks 10,40 --methods mean,mgda,upgrad --engines jacobian,gramian \
		--agg-tasks "" --out $(BENCH_OUT)/bench_gpu_hps_mlp.json $(BENCH_FLAGS)
	$(BENCH_RUN) --workload iwrm --out $(BENCH_OUT)/bench_gpu_iwrm.json $(BENCH_FLAGS)

# Plants curated bugs in a copy of the repo and checks the tests catch each (~2 min; not in CI).
mutate: $(STAMP)
	$(BIN)/python experiments/mutate.py

clean:
	rm -rf $(VENV) runs .pytest_cache
