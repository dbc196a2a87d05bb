# Two commands: `make demo` and `make test`. Both create .venv if missing and are
# idempotent (re-running the demo resumes the finished run and prints its summary).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_COUNT ?= 12

# llama.cpp, compiled once per flavour into a wheel kept outside pip's cache (pip's
# cache keys a built wheel by version only, so it would hand a native build to every
# later install whatever CMAKE_ARGS say). The default is ONE portable instruction-set
# baseline, x86-64-v3 (AVX2, FMA, F16C, BMI2; no AVX-512, no AMX, no -march=native):
# every x86-64 machine from 2015 on runs the same kernels, so greedy output and judge
# scores are the same on every CPU (tests/golden/) and no CPU-specific path can crash
# (issue #20: the native build dies on AVX-512/AMX Xeons). SMOLFORGE_LLAMA_NATIVE=1
# builds for this CPU instead (faster on some CPUs; output then depends on the CPU).
# LLAVA_BUILD=OFF skips the multimodal library we do not use (about 40% faster).
LLAMA_CPP_VERSION := 0.3.36
SMOLFORGE_LLAMA_NATIVE ?= 0
LLAMA_PORTABLE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
ifeq ($(SMOLFORGE_LLAMA_NATIVE),1)
LLAMA_FLAVOUR := native-$(shell grep -m1 '^flags' /proc/cpuinfo | cksum | cut -d' ' -f1)
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON
else
LLAMA_FLAVOUR := x86-64-v3
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF $(LLAMA_PORTABLE_ARGS)
endif
SMOLFORGE_WHEELS ?= $(HOME)/.cache/smolforge/wheels
LLAMA_WHEEL_DIR := $(SMOLFORGE_WHEELS)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(LLAMA_FLAVOUR)

.PHONY: demo test test-fast llama-cpp llama-native-site native-wheel install install-train install-test install-bench system-deps gguf-converter github-issues lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(LLAMA_WHEEL_DIR)/.built: | $(BIN)/python
	@echo "compiling llama.cpp ($(LLAMA_FLAVOUR)) once into $(LLAMA_WHEEL_DIR) (about 8 min on 2 cores)"
	mkdir -p $(LLAMA_WHEEL_DIR)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(LLAMA_WHEEL_DIR)
	touch $@

# The venv's llama-cpp-python is the flavour asked for (switching flavours reinstalls).
$(VENV)/.llama-$(LLAMA_FLAVOUR): $(LLAMA_WHEEL_DIR)/.built
	rm -f $(VENV)/.llama-*
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	touch $@
llama-cpp: $(VENV)/.llama-$(LLAMA_FLAVOUR)

# A native build beside the portable one, for benchmarks/generation.py --native-site.
LLAMA_NATIVE_SITE := $(VENV)/llama-native
llama-native-site: | $(BIN)/python
	$(MAKE) SMOLFORGE_LLAMA_NATIVE=1 native-wheel
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(LLAMA_NATIVE_SITE) \
	    $$(ls $(SMOLFORGE_WHEELS)/llama-cpp-python-$(LLAMA_CPP_VERSION)-native-*/llama_cpp_python-*.whl | head -1)
	@echo "native llama.cpp: $(LLAMA_NATIVE_SITE)"
native-wheel: $(LLAMA_WHEEL_DIR)/.built

$(VENV)/.installed: $(BIN)/python pyproject.toml $(VENV)/.llama-$(LLAMA_FLAVOUR)
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m smolforge.engines.llamacpp_build
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

# The suite without the `slow` tests (recipes and CLI runs end to end).
test-fast: system-deps install-test
	$(BIN)/python -m pytest -q -m "not slow"

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
	$(BIN)/python -m smolforge.cli stages --markdown | diff -u docs/stages.md - \
	  || (echo 'docs/stages.md is stale: smolforge stages --markdown > docs/stages.md'; exit 1)

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
