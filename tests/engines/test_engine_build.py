"""The llama.cpp build is part of a run's record: every attempt names it, and resuming on a
build whose greedy output can differ says so, naming both, and recomputes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
from conftest import smolforge, tiny_recipe, write_recipe

from smolforge.engines.llamacpp_build import PORTABLE_X86, build_info, describe, same_numerics


def test_the_installed_build_is_the_portable_one():
    """`make install` compiles x86-64-v3 (the Makefile's default): the features llama.cpp
    reports are exactly that set, and the module's check agrees (exit 0)."""
    info = build_info()
    assert info["portable"] and info["isa"] == "x86-64-v3"
    assert set(info["features"]) >= PORTABLE_X86
    assert not {"AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "AVX_VNNI"} & set(info["features"])
    p = subprocess.run([sys.executable, "-m", "smolforge.engines.llamacpp_build"],
                       capture_output=True, text=True, env={"SMOLFORGE_LLAMA_NATIVE": "0", "PATH": ""})
    assert p.returncode == 0 and json.loads(p.stdout) == info


def test_same_numerics_compares_version_and_instruction_set():
    a = {"llama_cpp_python": "0.3.36", "isa": "x86-64-v3"}
    assert same_numerics(a, dict(a, features=["X"]))
    assert not same_numerics(a, dict(a, isa="native:+AVX512"))
    assert not same_numerics(a, dict(a, llama_cpp_python="0.3.37"))
    assert describe(a) == "llama-cpp-python 0.3.36 (x86-64-v3)"


def test_resume_on_another_build_warns_naming_both_and_keeps_the_data(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    out = tmp_path / "run"
    first = smolforge("run", str(recipe), "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attempts"][-1]["llama_cpp_build"] == build_info()
    texts = {r["text"] for r in pq.read_table(out / "data").to_pylist()}
    shards = {f: f.stat().st_mtime_ns for f in (out / "stages").glob("01-*/shard-*")}
    assert shards

    # The run's earlier attempts were made by another build (as after moving the run
    # directory from a machine with a native AVX-512 build).
    other = dict(build_info(), isa="native:+AVX512,+AMX_INT8", portable=False)
    for attempt in manifest["attempts"]:
        attempt["llama_cpp_build"] = other
    (out / "manifest.json").write_text(json.dumps(manifest))
    # One more LLM stage, so that this build generates something.
    longer = tiny_recipe()
    longer["stages"].append({"type": "generate", "name": "word", "output": "word", "max_tokens": 4,
                             "template": "Say one word about {{ topic }}.", "temperature": 0.0})
    resumed = smolforge("run", str(write_recipe(tmp_path / "r2.yaml", longer)), "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"started with {describe(other)} and continues with {describe(build_info())}" in resumed.stderr
    after = json.loads((out / "manifest.json").read_text())
    assert after["attempts"][-1]["llama_cpp_build"] == build_info()
    assert any("continues with" in w for w in after["attempts"][-1]["warnings"])
    # What the earlier build generated is kept as it was, not recomputed.
    assert {f: f.stat().st_mtime_ns for f in shards} == shards
    rows = pq.read_table(out / "data").to_pylist()
    assert {r["text"] for r in rows} == texts and all(r["word"] is not None for r in rows)


def test_high_level_llama_processes_a_multi_token_prompt():
    """The crash of the native build on AVX-512/AMX Xeons (issue #20): llama-cpp-python's
    own `Llama`, default settings (repacked weights, extra buffer types on), a prompt of
    many tokens in one batch. In a child process, so a fault is a failed exit code and a
    message, not a dead test run; the server (`llama_server` fixture) takes this path too."""
    code = (
        "from llama_cpp import Llama\n"
        "from smolforge.engines.models import resolve_model_path\n"
        "llm = Llama(model_path=str(resolve_model_path('smollm2-135m')), n_ctx=1024, verbose=False)\n"
        "out = llm.create_completion('Hello there, how are you doing today my friend', max_tokens=4)\n"
        "print(out['usage']['prompt_tokens'], out['usage']['completion_tokens'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-2000:]}"
    prompt_tokens, completion_tokens = map(int, p.stdout.split())
    assert prompt_tokens > 8 and 1 <= completion_tokens <= 4
