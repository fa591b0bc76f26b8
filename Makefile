# Two commands do all the set-up: `make demo` and `make test` create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned CPU wheel first, so nothing pulls a multi-GB CUDA build; on a GPU machine set
# TORCH_SPEC to the torch build you want (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...").
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-slow test-all venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	# DeepSpeed without compiling its C++/CUDA ops: training uses torch optimizers.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aemg demo --out runs/demo

# One intra-op thread per process: tests run Ray workers side by side on few cores, and oversubscribed
# torch threads made the evaluation tests ~6x slower on 2 cores (3 min vs 31 s).
TEST_ENV := OMP_NUM_THREADS=1
# A skipped `claim` test (one that backs a claim of the README) fails `make test`; `make test AEMG_REQUIRE_CLAIMS=0`
# lets such skips pass (tests/claims.py).
AEMG_REQUIRE_CLAIMS ?= 1

# What CI (.ci/run) runs: every test but `gpu` ones, the slow ones included (25-40 min on 2 cores).
# `real_data` tests read ../shared/data and skip when it is absent. Two pytest processes, each with its own Ray:
# the killed-sweep-driver tests (slow) leave Ray Train placement-group cleaners in their Ray session, and a later
# Ray Train test in the same session waited for CPUs forever.
test: $(STAMP)
	$(TEST_ENV) AEMG_REQUIRE_CLAIMS=$(AEMG_REQUIRE_CLAIMS) $(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)
	$(TEST_ENV) AEMG_REQUIRE_CLAIMS=$(AEMG_REQUIRE_CLAIMS) $(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

# For development: the same without the slow tests (13-20 min on 2 cores).
test-fast: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

# Everything, `gpu` tests included (they need a CUDA GPU).
test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
