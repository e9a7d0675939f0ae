# The two commands of the README's quick start:
#   make run    set up .venv, then run the whole default (CPU-sized) pipeline with Snakemake
#   make test   set up .venv, then run the test suite
VENV ?= .venv
CORES ?= 2
PYTEST_ARGS ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

run: setup
	snakemake --cores $(CORES)

test: setup
	python -m pytest $(PYTEST_ARGS)

lint: setup
	ruff check src tests benchmarks
