# The few commands a newcomer types. `make train` and `make test` set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the CPU wheel the project's machines keep on disk; on your own machine
# any recent torch works, e.g. `make train TORCH_SPEC=torch` or a CUDA build of your choice.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= export,plots,dev
RUN_DIR ?= runs/default
STAMP := $(VENV)/.installed

.PHONY: setup train test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

train: setup
	$(BIN)/lenet5 train --out $(RUN_DIR) --overwrite
	$(BIN)/lenet5 evaluate $(RUN_DIR)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: lint
	$(BIN)/python -m pytest

# The benchmarks: every figure beside its target, then their table (bench/bench.py --help).
# `make bench QUICK=1` runs the short versions; BENCH_ARGS="--device cuda" passes options on.
bench: setup
	$(BIN)/python bench/bench.py $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
