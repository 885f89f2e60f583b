# Every target sets itself up: a project-local virtual environment with the CPU build of
# torch 2.13.0 installed first (override: make test TORCH_SPEC="torch==2.6.0").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# the versions the README's figures were measured with; CONSTRAINTS= resolves the ranges afresh
CONSTRAINTS ?= constraints/measured.txt
BIN := $(VENV)/bin

.PHONY: setup demo test test-lowest test-circuits circuits lint benchmark frontier notebooks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/mxd-saelens demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# the suite on the lowest declared versions of torch, SAELens and TransformerLens
test-lowest:
	$(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install --quiet --upgrade pip
	.venv-lowest/bin/python -m pip install --quiet -c constraints/lowest.txt torch
	.venv-lowest/bin/python -m pip install --quiet -c constraints/lowest.txt -e ".[dev]"
	.venv-lowest/bin/python -m pytest -q $(ARGS)

# attribution graphs (mxd_saelens.circuits) beside circuit-tracer, in their own environment
# (circuit-tracer holds transformers at 4.57.3 and so TransformerLens at 3.2.1)
CIRCUITS_VENV ?= .venv-circuits
CIRCUITS_TESTS ?= tests/test_circuits.py tests/test_zoo.py tests/test_mxd_math.py tests/test_splice.py \
	tests/test_saving_and_loading.py "tests/test_notebooks.py::test_notebook_runs[06_attribution_graph]"

$(CIRCUITS_VENV)/.installed: pyproject.toml constraints/circuits.txt
	$(PYTHON) -m venv $(CIRCUITS_VENV)
	$(CIRCUITS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CIRCUITS_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(CIRCUITS_VENV)/bin/python -m pip install --quiet -c constraints/circuits.txt -e ".[dev,circuits]"
	touch $@

test-circuits: $(CIRCUITS_VENV)/.installed
	$(CIRCUITS_VENV)/bin/python -m pytest -q $(or $(ARGS),$(CIRCUITS_TESTS))

circuits: $(CIRCUITS_VENV)/.installed
	$(CIRCUITS_VENV)/bin/python benchmarks/circuits.py $(ARGS)

lint: setup
	$(BIN)/ruff check mxd_saelens tests benchmarks scripts
	$(BIN)/ruff format --check mxd_saelens tests benchmarks scripts

# execute the example notebooks in place, figures stored as PNGs too (needs Chrome/Chromium)
notebooks: setup $(CIRCUITS_VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	$(BIN)/python scripts/run_notebooks.py
	$(CIRCUITS_VENV)/bin/python -m pip install --quiet -c constraints/circuits.txt -e ".[dev,circuits,notebooks]"
	$(CIRCUITS_VENV)/bin/python scripts/run_notebooks.py examples/06_attribution_graph.ipynb

benchmark: setup
	$(BIN)/python benchmarks/train_step.py $(ARGS)

frontier: setup
	$(BIN)/python benchmarks/frontier.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-lowest $(CIRCUITS_VENV) .pytest_cache .ruff_cache demo_output
