# ekd — the two commands a fresh machine needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# the suite runs one pytest-xdist worker more than the CPUs this process may use (CI's 2 cores: 3 workers): a
# worker whose test runs 2-rank torchrun jobs or CLI subprocesses waits on them, and the extra worker keeps the
# cores busy (2026-12-03, 2 cores: 8:58 with 3 workers, 10:37-11:08 with 2; CPU 194% vs 163%). A test module
# per worker so its module-scoped fixtures (a cache, a run) are built once; at most 4 (each worker peaks near
# 1.2 GB); the longest modules first, in the order tests/conftest.py gives (LONGEST_FIRST), not xdist's by test
# count.
PYTEST_WORKERS ?= $(shell $(PY) -c 'import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) + 1)')

FUZZ_ROUNDS ?= 5
HYPOTHESIS_TESTS := tests/test_fuzz_inputs.py tests/test_fuzz_bytes.py tests/test_chat_data.py tests/test_hostile_data.py

.PHONY: demo demo-quick test fuzz bench lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and spelled exactly (torch==2.13.0): on these machines that picks the local CPU
# build; the constraints file pins every other tested version. pip would compile every installed module to
# bytecode one file at a time (~65 s of the install on 2 cores); compileall does it on every core (~20 s). Files
# written for a newer Python fail there as under pip (torch ships one) and stay source: -qq, its exit status set
# aside.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -c constraints.txt -e ".[dev,eval,lora,wandb]"
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ekd demo

demo-quick: $(STAMP)
	$(BIN)/ekd demo --quick

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The property tests with new random examples each round (make test draws the same ones every time:
# tests/conftest.py); a failing example is kept in .hypothesis/ and replayed first by the next round.
fuzz: $(STAMP)
	for round in $$(seq $(FUZZ_ROUNDS)); do \
		EKD_HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -rs -n $(PYTEST_WORKERS) --dist loadfile $(HYPOTHESIS_TESTS) || exit 1; \
	done

# Liger-Kernel and TRL are benchmark-only comparisons (the `bench` extra, pinned in constraints.txt): installed
# without their dependencies, which ekd[eval] already brings (TRL 1.16.0: accelerate, datasets, pandas, psutil).
bench: $(STAMP)
	$(BIN)/pip install -q --no-deps liger-kernel==0.8.5 || echo "liger-kernel unavailable: its rows are skipped"
	$(BIN)/pip install -q --no-deps trl==1.16.0 || echo "trl unavailable: the whole-step comparison is skipped"
	$(BIN)/python -m benchmarks.run --out docs/benchmarks.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
