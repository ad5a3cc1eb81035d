# lungexp — `make run` trains the demo experiment, `make test` runs the test suite.
# Both set up .venv first (torch pinned first, so pip never resolves a multi-GB CUDA build by accident).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.install-stamp
MLFLOW_PORT ?= 5000
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: install run test lint mlflow-ui browser postgres bench clean

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check lungexp scripts tests

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# Headless Chromium for the MLflow UI browser test (tests/test_sweep_ui.py skips without it).
# Debian/Ubuntu: installs the `chromium` package; does nothing when a Chromium is already there.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
		echo "Chromium present: $$(command -v chromium || command -v chromium-browser)"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	else \
		echo "No apt-get: install Chromium yourself; the browser test skips until then."; \
	fi

# PostgreSQL for the team tracking server and its test (tests/test_team_server.py skips without it).
# Debian/Ubuntu: installs the `postgresql` package; does nothing when its binaries are already there.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
		echo "PostgreSQL present: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null || dirname $$(command -v initdb))"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; \
	else \
		echo "No apt-get: install PostgreSQL yourself; the team-server test skips until then."; \
	fi

bench: install
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_models.py

clean:
	rm -rf logs mlartifacts mlflow.db data/cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
