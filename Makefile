# vitalgate: `make demo` and `make test` do all set-up on a fresh Debian machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DURATION ?= 60

.PHONY: install demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml scripts/install-system-deps
	scripts/install-system-deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/vitalgate demo --duration $(DURATION)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest

test: lint typecheck pytest

bench: install
	scripts/install-system-deps bench
	$(PY) -m bench.proxy
	$(PY) -m bench.latency
	$(PY) -m bench.slo_engine --throughput
	$(PY) -m bench.alert_rules
	$(PY) -m bench.report_year

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts
