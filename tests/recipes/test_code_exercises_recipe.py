"""The `code_exercises` recipe end to end through the CLI.

1. Over HTTP from a canned OpenAI-compatible server on 127.0.0.1 (tests/faultproxy.py),
   whose answers are known: one exercise gets a right solution, one a wrong one,
   one a solution that never returns. The real sandbox must split them: only the
   right one reaches the dataset, the others are rejected with the failed assert
   and the CPU limit.
2. On the bundled SmolLM2-135M with few tokens (it rarely writes passing code):
   every record ends either in the dataset or in the rejects, and each verdict is
   re-checked by running the record's code and tests again in a fresh sandbox."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge
from faultproxy import canned_server, user_text

from smolforge.sandbox import Job, Limits, open_sandbox

TOPICS = ["reversing a string", "the factorial of a number", "the largest number in a list"]
ITEMS = "stages[0].items=" + json.dumps([{"topic": t} for t in TOPICS])

EXERCISE = {
    "reversing a string": ("Write a function `rev(s)` that returns the string s reversed.",
                           "def rev(s):\n    return s[::-1]", "assert rev('ab') == 'ba'\nassert rev('') == ''"),
    "the factorial of a number": ("Write a function `fact(n)` that returns n factorial.",
                                  "def fact(n):\n    return n", "assert fact(1) == 1\nassert fact(3) == 6"),
    "the largest number in a list": ("Write a function `big(xs)` that returns the largest number in xs.",
                                     "def big(xs):\n    while True:\n        pass",
                                     "assert big([1, 3, 2]) == 3"),
}


def canned(body: dict) -> str:
    prompt = user_text(body)
    for topic, (problem, solution, tests) in EXERCISE.items():
        if prompt.startswith("Write a short Python programming exercise") and topic in prompt:
            return problem
        if problem in prompt and prompt.startswith("Solve"):
            return f"Here is the solution:\n```python\n{solution}\n```\nExample:\n```python\nprint(1)\n```"
        if problem in prompt and prompt.startswith("Write tests"):
            return f"```python\n{tests}\n```"
    return "no idea"


def run(out: Path, *sets: str) -> subprocess.CompletedProcess:
    args = ["run", "code_exercises", "--out", str(out), "--quiet", "--allow-empty"]
    for s in sets:
        args += ["--set", s]
    return smolforge(*args, timeout=900)


def load(out: Path) -> tuple[list[dict], list[dict]]:
    data = pq.read_table(out / "data").to_pylist()
    rejects = pq.read_table(out / "rejects" / "rejects.parquet").to_pylist()
    return data, rejects


def test_recipe_keeps_only_code_that_passes(tmp_path):
    with canned_server(canned) as server:
        engine = json.dumps({"type": "openai", "base_url": server.url, "model": "canned", "max_retries": 0})
        p = run(tmp_path / "run", f"engine={engine}", ITEMS, "stages[4].limits.cpu_s=1")
    assert p.returncode == 0, p.stderr[-3000:]
    data, rejects = load(tmp_path / "run")
    assert [r["topic"] for r in data] == ["reversing a string"]
    assert data[0]["exec_code"] == "def rev(s):\n    return s[::-1]\n"  # the example block is left out
    assert [t["passed"] for t in json.loads(data[0]["exec_tests"])] == [True, True]
    why = {json.loads(r["record"])["topic"]: r for r in rejects}
    assert set(why) == {"the factorial of a number", "the largest number in a list"}
    assert all(r["stage"] == "verify_code" for r in rejects)
    assert why["the factorial of a number"]["reason"] == (
        "verify_code: failed 1/2 test(s): line 2: assert fact(3) == 6: AssertionError (test_solution.py:2)")
    assert why["the largest number in a list"]["reason"].startswith("verify_code: cpu_time")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    st = next(s for s in manifest["stages"] if s.get("name") == "verify_code" or s.get("type") == "verify_code")
    assert st["passed"] == 1 and st["failed"] == 2


@pytest.mark.slow  # the bundled model writes 3 x 3 short answers: ~1-2 min on a loaded 2-core machine
def test_recipe_on_the_bundled_model_verdicts_recheck(tmp_path):
    p = run(tmp_path / "run", ITEMS, "stages[1].max_tokens=40", "stages[2].max_tokens=64",
            "stages[3].max_tokens=64", "stages[1].temperature=0", "stages[2].temperature=0",
            "stages[3].temperature=0")
    assert p.returncode == 0, p.stderr[-3000:]
    data, rejects = load(tmp_path / "run")
    at_verify = [r for r in rejects if r["stage"] == "verify_code"]
    verified = [json.loads(r["record"]) for r in at_verify if "exec_code" in json.loads(r["record"])]
    no_code = [r for r in at_verify if "exec_code" not in json.loads(r["record"])]
    others = [r for r in rejects if r["stage"] != "verify_code"]
    # every topic went through: kept, run and rejected, rejected for holding no code,
    # or (empty output) by a generate stage
    assert len(data) + len(at_verify) + len(others) == len(TOPICS)
    assert all(r["reason"] == "empty output" for r in others)
    assert all(r["reason"].startswith(("verify_code: no code", "verify_code: no tests")) for r in no_code)
    assert all(r["reason"].startswith("verify_code: ") for r in rejects if r["stage"] == "verify_code")
    assert verified or data  # the model's code really reached the sandbox
    # re-run every record's code + tests in a fresh sandbox: the same verdict
    with open_sandbox("bwrap", limits=Limits(wall_s=10, cpu_s=5), workers=2) as sb:
        again = sb.run([Job(r["exec_code"], _tests(r)) for r in data + verified])
    assert [a.passed for a in again] == [True] * len(data) + [False] * len(verified)
    assert [a.reason for a in again] == [r["exec_reason"] for r in data + verified]


def _tests(rec: dict) -> str:
    from smolforge.stages.verify.code import extract_code

    return extract_code(rec["tests"])
