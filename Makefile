# cargohold: `make run` serves the registry, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: help run test check fmt migrate bench bench-auth bench-scale bench-memory bench-gc bench-production bench-quick system-deps clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	bash scripts/bootstrap-python.sh $(PYTHON) $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP) ## serve the registry on http://127.0.0.1:5000 (SQLite + ./var)
	$(BIN)/cargohold serve

system-deps: ## install the Debian packages the tests use (registry clients, servers)
	bash scripts/install-system-deps.sh

test: $(STAMP) system-deps ## install everything, check the code, run every test
	$(MAKE) check
	$(BIN)/pytest

check: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: $(STAMP) ## format the code
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

migrate: $(STAMP) ## bring the database schema up to date
	$(BIN)/cargohold migrate

bench: $(STAMP) system-deps ## benchmark against CNCF Distribution; writes docs/benchmarks.md
	$(BIN)/python bench/compare.py

bench-auth: $(STAMP) system-deps ## the same with auth on both sides (token flow vs htpasswd); writes docs/benchmarks-auth.md
	$(BIN)/python bench/compare.py --auth

bench-scale: $(STAMP) ## tags/catalog pages at scale (SQLite and PostgreSQL); writes docs/benchmarks-scale.md
	$(BIN)/python bench/scale.py --database sqlite --database postgresql://postgres@127.0.0.1:5432/postgres

bench-memory: $(STAMP) ## server memory while pushing and pulling a 4 GiB blob; writes docs/benchmarks-memory.md
	$(BIN)/python bench/memory.py

bench-gc: $(STAMP) ## GC throughput on 100,000 blobs, push/pull latency with GC on and off (SQLite and PostgreSQL); writes docs/benchmarks.md's GC section
	$(BIN)/python bench/gcbench.py --database sqlite --database postgresql://postgres@127.0.0.1:5432/postgres

bench-production: $(STAMP) system-deps ## production mode (PostgreSQL + S3 + Redis; 1 and 3 replicas) vs Distribution on the same S3; writes docs/benchmarks.md's production section
	$(BIN)/python bench/production.py

bench-quick: $(STAMP) system-deps ## a short benchmark run that checks the harness works
	$(BIN)/python bench/compare.py --quick

clean: ## remove the virtual environment and local data
	rm -rf $(VENV) var
