# Every target sets itself up: a project-local virtual environment with the CPU build of
# torch 2.13.0 installed first (override: make test TORCH_SPEC="torch==2.6.0").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# the versions the README's figures were measured with; CONSTRAINTS= resolves the ranges afresh
CONSTRAINTS ?= constraints/measured.txt
BIN := $(VENV)/bin

.PHONY: setup demo test test-lowest lint benchmark frontier notebooks clean

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

lint: setup
	$(BIN)/ruff check mxd_saelens tests benchmarks scripts
	$(BIN)/ruff format --check mxd_saelens tests benchmarks scripts

# execute the example notebooks in place, figures stored as PNGs too (needs Chrome/Chromium)
notebooks: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	$(BIN)/python scripts/run_notebooks.py

benchmark: setup
	$(BIN)/python benchmarks/train_step.py $(ARGS)

frontier: setup
	$(BIN)/python benchmarks/frontier.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-lowest .pytest_cache .ruff_cache demo_output
