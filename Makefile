# Two commands a newcomer needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# 1: `make test` sets up the single-node Slurm test cluster (tests/infra/setup_cluster.sh, as
# root) before the tests that need it; where that is impossible they are skipped with a reason.
CLUSTER ?= 1
STAMP  := $(VENV)/.installed

.PHONY: venv system-packages test test-cluster lint unit demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml hpc/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -e './hpc[modules]'
	touch $(STAMP)

system-packages:
	@tests/infra/install_packages.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck --shell=sh dasscod/cluster/direct/*.sh
	$(VENV)/bin/lint-imports --no-cache

test: lint system-packages
	DASSCOD_TEST_CLUSTER=$(CLUSTER) $(VENV)/bin/pytest $(PYTEST_ARGS)

test-cluster:
	tests/infra/setup_cluster.sh

unit: venv
	$(VENV)/bin/pytest tests/unit hpc/tests $(PYTEST_ARGS)

demo: venv system-packages
	$(PY) -m dasscod.devstack.demo

bench: venv
	$(PY) -m dasscod.devstack.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
