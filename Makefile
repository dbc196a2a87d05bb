# Two commands: `make demo` and `make test`. Both create .venv if missing and are
# idempotent (re-running the demo resumes the finished run and prints its summary).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp at install; skip the multimodal library we
# do not use (about 40% faster). pip caches the wheel afterwards.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
DEMO_COUNT ?= 16

.PHONY: demo test install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/smolforge run textbooks --out runs/demo --set stages[0].count=$(DEMO_COUNT)
	@echo "data: runs/demo/data/  (inspect: $(BIN)/smolforge show runs/demo)"

test: install-test
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
