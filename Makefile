# phiops developer entry points. `make demo` and `make test` set everything up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/devtools
export KUBECONFIG := $(CURDIR)/.dev/kubeconfig

.PHONY: setup demo test test-fast test-chaos cluster-up cluster-down crds lint format

setup:
	@bash hack/setup.sh

demo: setup
	@bash hack/demo.sh

test: setup
	$(PY) -m pytest

test-chaos: setup  ## the fault-injection tests alone (make test runs them too)
	$(PY) -m pytest -m chaos tests/integration

test-fast: setup  ## unit, contract and chart tests only (no control plane)
	$(PY) -m pytest tests/unit tests/contract tests/chart

cluster-up: setup
	@$(PY) -m phiops_devcluster up

cluster-down:
	@$(PY) -m phiops_devcluster down

crds:  ## regenerate crds/ from the models, and the chart's copies
	$(PY) -m phiops_operator.crdgen crds
	$(PY) -m tests.chart.sync

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
