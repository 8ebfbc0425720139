# Everything installs from nothing: `make test` and `make demo` create .venv when missing,
# install torch first (TORCH_SPEC and TORCH_INDEX, so a GPU user can pick a CUDA build and nobody
# gets one by accident), then losstune with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,cluster
BIN := $(VENV)/bin
STAMP := $(VENV)/.losstune-installed

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/losstune tune --demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
