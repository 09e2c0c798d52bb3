PYTHON ?= python3
VENV ?= .venv

.PHONY: install test test-gpu demo bench bench-cpu bench-gpu bench-multigpu clean

install:
	$(PYTHON) -m pip install -e '.[dev]'

test:
	$(PYTHON) -m pytest -q -m "not gpu" tests

test-gpu:
	$(PYTHON) -m pytest -q -m gpu tests

demo:
	$(PYTHON) -m llmc.cli.demo

bench: bench-cpu

bench-cpu:
	$(PYTHON) -m tests.bench.bench_cpu

bench-gpu:
	$(PYTHON) -m tests.bench.bench_gpu

bench-multigpu:
	$(PYTHON) -m tests.bench.bench_multigpu

clean:
	rm -rf build *.egg-info .pytest_cache out
