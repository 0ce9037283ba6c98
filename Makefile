# Developer and CI entry points. `make test` is the README's test command and what .ci/run runs.
PYTHON ?= python

.PHONY: install lint test bench accuracy

install:  ## CPU torch first (an unpinned torch would pull a multi-GB CUDA build), then the package
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[dev,api]'

lint:
	ruff check .
	mypy

test:
	ruff check . && mypy && $(PYTHON) -m pytest -q -p no:cacheprovider

bench:  ## speed figures: engine, CLI cold start, API latency/throughput
	$(PYTHON) benchmarks/bench_engine.py
	$(PYTHON) benchmarks/bench_cli.py
	$(PYTHON) benchmarks/bench_api.py

accuracy:  ## rewrite the accuracy report (validation/accuracy.py)
	$(PYTHON) -m validation.accuracy --write
