# Developer and CI entry points. `make test` is the README's test command and what .ci/run runs.
PYTHON ?= python

.PHONY: install lint test bench flood figures accuracy

install:  ## CPU torch first (an unpinned torch would pull a multi-GB CUDA build), then the package
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[dev,api]'

lint:
	ruff check .
	mypy

test:
	ruff check . && mypy && $(PYTHON) -m pytest -q -p no:cacheprovider

bench:  ## speed figures: engine, CLI cold start, API latency/throughput (the README's command)
	$(PYTHON) benchmarks/bench_engine.py
	$(PYTHON) benchmarks/bench_cli.py
	$(PYTHON) benchmarks/bench_api.py --workers 2 --concurrency 16 --duration 10

flood:  ## the service under a flood of costly requests and half-open connections (loopback)
	$(PYTHON) benchmarks/bench_flood.py

figures:  ## every figure the README quotes (test count and time, CLI, API, flood), with the machine
	$(PYTHON) benchmarks/readme_figures.py

accuracy:  ## rewrite the accuracy report (validation/accuracy.py)
	$(PYTHON) -m validation.accuracy --write
