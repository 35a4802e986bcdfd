# The only commands: make install | lint | test | demo | bench (see README.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
SHARED ?= ../shared/data

.PHONY: install lint test demo demo-down bench bench-quality bench-serve serve clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[train,serve,dev,scale]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check core training export service bench tests demo
	$(BIN)/mypy core service demo/serve.py demo/cli.py
	$(BIN)/lint-imports

test: install
	$(BIN)/python -m pytest -q tests

DEMO_OUT ?= demo-out
DEMO_PORT ?= 8000

# demo/ (python -m demo): training half (torch, demo.train): data -> SASRec -> evaluation; serving half
# (torch-free, demo.serve): export, verify, Redis, seed,
# serve, refresh, HTTP answers. Leaves Redis and the service running: `make demo-down` stops them.
demo: install
	$(BIN)/python -m demo up $(if $(DATA),--data $(DATA),) --out $(DEMO_OUT) --port $(DEMO_PORT) $(DEMO_ARGS)

demo-down:
	$(BIN)/python -m demo down --out $(DEMO_OUT)

bench: bench-quality

bench-quality: install
	$(BIN)/python -m bench.quality --data-root $(SHARED)

# needs Debian's wrk (apt-get install -y wrk); loopback only, a few minutes
bench-serve: install
	$(BIN)/python -m bench.serve $(SERVE_BENCH_ARGS)

serve: install
	$(BIN)/cdrec serve $(SERVE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
