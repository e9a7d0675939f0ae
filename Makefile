# The two commands of the README's quick start:
#   make run    set up .venv, then run the whole default (CPU-sized) pipeline with Snakemake
#   make test   set up .venv (and Chromium for the HTML report's test), then run the test suite
VENV ?= .venv
CORES ?= 2
PYTEST_ARGS ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test lint browser docs
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

# `make run PROFILE=ci`: the same DAG on config/ci.yaml (snakemake --config profile=ci; the Snakefile refuses a
# name that is not a plain word or names no file). params.yaml, the default, is never overwritten; `dvc repro`
# reads params.yaml only: under DVC, vary it by experiment (`dvc exp run -S train.steps=20`) instead.
PROFILE ?=
export PROFILE
run: setup
	snakemake --cores $(CORES) $(if $(PROFILE),--config "profile=$$PROFILE")

test: setup browser
	python -m pytest $(PYTEST_ARGS)

browser:
	bash scripts/install_browser.sh

lint: setup
	ruff check src tests benchmarks

# The documentation site (mkdocs.yml, docs/) into site/, every warning an error.
docs: setup
	mkdocs build --strict --site-dir site
