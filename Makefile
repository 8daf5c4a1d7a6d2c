# ironwatch: two commands for a newcomer, `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck test-system-deps clean

install: $(STAMP)

# Reinstall only when the project metadata changed; the package itself is installed editable.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(BIN)/ironwatch demo --data-dir demo-data

# The tests start their own Mosquitto and PostgreSQL on free loopback ports; install them when
# missing and we are root (Debian packages), else say which command to run.
SYSTEM_PACKAGES := mosquitto postgresql
test-system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing; run 'sudo apt-get install$$missing'" >&2; exit 1; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

# Two test processes, each taking whole files: most tests wait on servers, brokers and disks, so
# two halve the wall time on a 2-core machine (one process: ~700 s on a slow 2-core VM; two: ~420 s).
TEST_PROCESSES ?= 2
test: install test-system-deps lint typecheck
	$(BIN)/pytest -q -n $(TEST_PROCESSES) --dist loadfile

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
