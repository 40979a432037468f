# vitalgate: `make demo` and `make test` do all set-up on a fresh Debian machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.compiled
# The request path setup.py compiles with mypyc: every module of the data-plane folder.
HOT_PATH := $(wildcard gateway/dataplane/*.py)
DURATION ?= 60

.PHONY: install demo test lint typecheck pytest bench clean pure

# The dependencies first, uncompiled; then the request path is compiled against them (below),
# so mypyc reads the same types mypy checks.
$(STAMP): pyproject.toml setup.py gateway/native.py scripts/install-system-deps
	scripts/install-system-deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check 'setuptools>=68' wheel
	VITALGATE_PURE_PYTHON=1 $(VENV)/bin/pip install -q --disable-pip-version-check --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# Compile the request path; again whenever one of its modules changed (an old extension would
# shadow the new source).
$(NATIVE): $(STAMP) $(HOT_PATH) gateway/dataplane/_memscan.c
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(NATIVE)

install: $(STAMP) $(NATIVE)

demo: install
	$(VENV)/bin/vitalgate demo --duration $(DURATION)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# The prometheus-operator CRD schemas the deployment tests validate against (npm registry).
SCHEMAS := tests/k8s/node_modules/.installed
$(SCHEMAS): tests/k8s/package.json tests/k8s/package-lock.json
	npm ci --prefix tests/k8s --no-audit --no-fund --loglevel=error
	touch $(SCHEMAS)

pytest: install $(SCHEMAS)
	$(VENV)/bin/pytest

test: lint typecheck pytest

bench: install
	scripts/install-system-deps bench
	$(PY) -m bench.proxy
	$(PY) -m bench.instructions
	$(PY) -m bench.latency
	$(PY) -m bench.slo_engine --throughput
	$(PY) -m bench.alert_rules
	$(PY) -m bench.report_year

# Run the request path from its .py sources (for debugging); `make install` compiles it again.
pure:
	rm -f gateway/dataplane/*.so vitalgate_native*.so $(NATIVE)

clean: pure
	rm -rf tests/k8s/node_modules $(VENV) build var .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts
