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

run: setup
	snakemake --cores $(CORES)

test: setup browser
	python -m pytest $(PYTEST_ARGS)

browser:
	bash scripts/install_browser.sh

lint: setup
	ruff check src tests benchmarks

# The documentation site (mkdocs.yml, docs/) into site/, every warning an error.
docs: setup
	mkdocs build --strict --site-dir site

# `make profile PROFILE=ci`: make config/ci.yaml the active params.yaml (what `dvc repro` and a plain
# `snakemake` read); `make profile PROFILE=default` switches back. Snakemake alone: --config profile=ci.
PROFILE ?= default
.PHONY: profile
profile:
	@test -f config/$(PROFILE).yaml || { echo "no such profile: config/$(PROFILE).yaml"; exit 2; }
	cp config/$(PROFILE).yaml params.yaml
	@echo "params.yaml <- config/$(PROFILE).yaml"
