# Two commands: `make demo` and `make test`. Both create .venv if missing and are
# idempotent (re-running the demo resumes the finished run and prints its summary).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp at install; skip the multimodal library we
# do not use (about 40% faster). pip caches the wheel afterwards.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
DEMO_COUNT ?= 12

.PHONY: demo test install install-train install-test install-bench system-deps gguf-converter github-issues lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# System packages the tests use for real: bubblewrap, setpriv and libseccomp (the
# code sandbox) and chromium (the HTML report in a real browser). Installed with apt-get when missing
# (as root, or through sudo).
system-deps:
	@missing=""; command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	{ /sbin/ldconfig -p 2>/dev/null || ldconfig -p; } | grep -q libseccomp.so.2 || missing="$$missing libseccomp2"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	    $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null \
	    || { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null; }; \
	fi

# The tests also cover the [embed] and [train] extras: pin torch's CPU build
# first, or pip resolves sentence-transformers to several GB of CUDA packages.
TORCH ?= torch==2.13.0
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,embed]"
	$(MAKE) gguf-converter
	touch $@

# `smolforge train` / `eval` only (make github-issues): torch CPU, TRL, PEFT.
$(VENV)/.installed-train: $(VENV)/.installed
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[train]"
	$(MAKE) gguf-converter
	touch $@

# llama.cpp's HF -> GGUF converter (ships in the llama-cpp-python source package):
# fetched once into ~/.cache/smolforge for `smolforge train --gguf`.
gguf-converter: $(VENV)/.installed
	$(BIN)/python -c "from smolforge.train.gguf import converter; print(converter())"

# The benchmarks' baselines (datatrove, datasketch, rensa, scikit-learn, ...).
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e ".[test,embed,bench]"
	touch $@

install: $(VENV)/.installed
install-train: $(VENV)/.installed-train
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench

demo: install
	$(BIN)/smolforge run textbooks --out runs/demo --set stages[0].count=$(DEMO_COUNT)
	@echo "data: runs/demo/data/  (inspect: $(BIN)/smolforge show runs/demo)"

test: system-deps install-test
	$(BIN)/python -m pytest -q --durations=15

# Close the loop on this machine: recipe -> train -> eval, base vs tuned with 95% CIs.
github-issues: install-train
	OMP_NUM_THREADS=1 $(BIN)/smolforge run github_issues --out runs/github_issues
	OMP_NUM_THREADS=1 $(BIN)/smolforge train runs/github_issues --out runs/github_issues-tuned \
	    --epochs 4 --lr 4e-4 --max-length 384 --gguf q8_0
	OMP_NUM_THREADS=1 $(BIN)/smolforge eval smollm2-135m runs/github_issues-tuned --data runs/github_issues \
	    --tasks json,fields,fields_constrained \
	    --fields type,priority,component,product_area,estimated_fix_time \
	    --schema src/smolforge/recipes/github_issues/issue.schema.json --out runs/github_issues-eval.json

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
