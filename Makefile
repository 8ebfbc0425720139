# Everything installs from nothing: `make test` and `make demo` create .venv when missing,
# install torch and torchvision first, as a matched pair (TORCH_SPEC and TORCH_INDEX, so a GPU user
# picks the build and nobody gets an unmatched one by accident: PyPI's torchvision does not import
# beside the CPU build of torch 2.13.0, and a broken torchvision breaks imports elsewhere), then
# losstune with its extras. torch 2.14.1 + torchvision 0.29.1 are CUDA 13 builds that also run on a CPU.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
EXTRAS ?= dev,cluster,vision
BIN := $(VENV)/bin
STAMP := $(VENV)/.losstune-installed

.PHONY: install demo test test-long lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/losstune tune --demo

lint: $(STAMP)
	$(BIN)/ruff check .

# Two workers (CI has two cores), each taking the next test as it frees up (tests/conftest.py says why).
# `long` tests (pyproject.toml) run a whole job twice to show a recovery path that a shorter test here
# also takes; `make test-long` runs them (about 3 minutes on two cores): before a release, and after a
# change to stopping, resuming or moving a job.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist load -m "not long"

test-long: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist load -m long

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
