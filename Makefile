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

.PHONY: demo test install install-test install-bench lint bench clean

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

# The benchmarks' baselines (datatrove, datasketch, rensa, scikit-learn, ...).
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e ".[test,embed,bench]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench

demo: install
	$(BIN)/smolforge run textbooks --out runs/demo --set stages[0].count=$(DEMO_COUNT) \
	    --set "stages[4].where=edu_score >= $(DEMO_MIN_SCORE)"
	@echo "data: runs/demo/data/  (inspect: $(BIN)/smolforge show runs/demo)"

test: install-test
	$(BIN)/python -m pytest -q --durations=15

lint: install-test
	$(BIN)/ruff check src tests benchmarks

# Every benchmark in benchmarks/, one after another (each prints one JSON object):
# benchmarks/results/<name>.json (+ .log for stderr) and one summary.json with the
# machine's load. A failing benchmark fails the rule, after the summary is written.
BENCH_OUT ?= benchmarks/results
bench: install-bench
	@mkdir -p $(BENCH_OUT); fail=0; \
	for b in benchmarks/*.py; do \
	    n=$$(basename $$b .py); echo "== $$n"; \
	    $(BIN)/python $$b > $(BENCH_OUT)/$$n.json 2> $(BENCH_OUT)/$$n.log; \
	    rc=$$?; echo $$rc > $(BENCH_OUT)/$$n.rc; \
	    if [ $$rc -ne 0 ]; then echo "benchmark $$n FAILED (see $(BENCH_OUT)/$$n.log)"; fail=1; fi; \
	done; \
	$(BIN)/python -c 'import json, os, pathlib, platform, time; \
	out = pathlib.Path("$(BENCH_OUT)"); \
	names = sorted(p.stem for p in pathlib.Path("benchmarks").glob("*.py")); \
	load = lambda n: json.loads((out / f"{n}.json").read_text()); \
	tail = lambda n: (out / f"{n}.log").read_text()[-2000:]; \
	rc = lambda n: int((out / f"{n}.rc").read_text()); \
	res = {n: {"rc": rc(n), "result": load(n)} if rc(n) == 0 else {"rc": rc(n), "error": tail(n)} for n in names}; \
	s = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), \
	     "loadavg_at_end": os.getloadavg(), "python": platform.python_version(), "benchmarks": res}; \
	(out / "summary.json").write_text(json.dumps(s, indent=2)); print(f"wrote {out}/summary.json")'; \
	exit $$fail

clean:
	rm -rf runs .pytest_cache
