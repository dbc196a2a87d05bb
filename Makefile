# Two commands: `make demo` and `make test`. Both create .venv if missing and are
# idempotent (re-running the demo resumes the finished run and prints its summary).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp at install; skip the multimodal library we
# do not use (about 40% faster). pip caches the wheel afterwards.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
DEMO_COUNT ?= 12
# The bundled 135M model is a weak judge: on FineWeb-Edu's 0-5 scale it gives
# almost everything 1, so the recipe's own threshold (3) would keep nothing. The
# demo keeps score >= 1 to show data flowing; with a real teacher
# (--set engine.model=/path/to/model.gguf) use the recipe as it is.
DEMO_MIN_SCORE ?= 1

.PHONY: demo test install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# The tests also cover the [embed] extra (semantic dedup): pin torch's CPU build
# first, or pip resolves sentence-transformers to several GB of CUDA packages.
TORCH ?= torch==2.13.0
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,embed]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/smolforge run textbooks --out runs/demo --set stages[0].count=$(DEMO_COUNT) \
	    --set "stages[4].where=edu_score >= $(DEMO_MIN_SCORE)"
	@echo "data: runs/demo/data/  (inspect: $(BIN)/smolforge show runs/demo)"

test: install-test
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
