# lungexp — `make run` trains the demo experiment, `make test` runs the test suite (`make test-fast`: all but the
# end-to-end runs, servers and browser, to run between two changes), `make docs` builds the documentation site.
# Both set up .venv first (torch pinned first, so pip never resolves a multi-GB CUDA build by accident).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.install-stamp
DOCS_STAMP := $(VENV)/.docs-stamp
DOCS_PORT ?= 8000
MLFLOW_PORT ?= 5000
PYTEST_ARGS ?=
# One pytest worker per core (pytest-xdist); a test file stays on one worker, so its module fixtures are made once.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile
RUN_ARGS ?=

.PHONY: install run test test-fast lint docs docs-serve docs-examples mlflow-ui browser postgres bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changed (or the venv is new).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/python -m lungexp.run experiment=demo $(RUN_ARGS)

test: install
	$(PYTEST) $(PYTEST_ARGS)

# The markers are defined in pyproject.toml; CI runs `make test`, which runs them all.
test-fast: install
	$(PYTEST) -m "not slow and not server and not browser" $(PYTEST_ARGS)

# Style, the layer contract (no import up the floors) and the types, configured in pyproject.toml; then the
# strict docs build (a broken link or anchor, a docstring mkdocstrings cannot read, a stale generated table).
lint: install $(DOCS_STAMP)
	$(BIN)/ruff check lungexp scripts tests docs/hooks
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(MKDOCS_BUILD)

# The docs extra (MkDocs, Material, mkdocstrings) only for docs and lint, so that `make install` stays lean.
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	@touch $(DOCS_STAMP)

MKDOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The documentation site, built strictly (every warning is an error) into site/: open site/index.html.
docs: $(DOCS_STAMP)
	$(MKDOCS_BUILD)

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

# The console outputs on the pages, printed anew by running their commands in a fresh workspace (about 25 min on
# 2 cores; EXAMPLES_ARGS="--only evaluate" for one example, "--check" to compare only; docs/architecture.md).
EXAMPLES_ARGS ?=
docs-examples: install
	$(BIN)/python scripts/docs_examples.py $(EXAMPLES_ARGS)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# $(call apt_package,PACKAGE,SHELL TEST THAT IT IS THERE,WHICH TEST NEEDS IT): Debian/Ubuntu packages that tests
# use; apt-get installs PACKAGE unless the test finds it (sudo unless root). Without apt-get that test skips.
define apt_package
	@if $(2); then \
		echo "$(1) present"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(1); \
	else \
		echo "No apt-get: install $(1) yourself; $(3) skips until then."; \
	fi
endef

# Headless Chromium for the MLflow UI browser test (tests/test_sweep_ui.py).
browser:
	$(call apt_package,chromium,command -v chromium >/dev/null || command -v chromium-browser >/dev/null,the browser test)

# PostgreSQL for the team tracking server and its test (tests/test_team_server.py); Debian keeps its
# binaries in /usr/lib/postgresql/<version>/bin.
postgres:
	$(call apt_package,postgresql,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null,the team-server test)

bench: install
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_models.py

clean:
	rm -rf logs mlartifacts mlflow.db data/cache site .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
