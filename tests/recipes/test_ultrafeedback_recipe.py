"""The built-in `ultrafeedback` recipe end to end on the bundled model through the
CLI (2 prompts, 4 candidates each from two sampling configs, tiny token budgets),
then `export --format dpo / kto`: every prompt is either paired or rejected with
a reason, candidates carry their teacher, the judge (method `criteria`) saw each
alone and its per-question probabilities are in meta, and the exports hold exactly
the pairs."""

from __future__ import annotations

import json

import pytest
from conftest import smolforge

import smolforge as sf


@pytest.mark.slow
def test_ultrafeedback_recipe_end_to_end(tmp_path):
    out = tmp_path / "uf"
    p = smolforge("run", "ultrafeedback", "--limit", "2", "--out", str(out), "--quiet", "--allow-empty",
                  "--set", "stages[1].max_tokens=12", "--set", "stages[2].max_tokens=48",
                  "--set", "stages[3].min_margin=0", timeout=900)
    assert p.returncode == 0, p.stderr
    run = sf.Run(out)
    m = run.manifest
    assert m["status"] == "done"
    st = {s["name"]: s for s in m["stages"]}
    assert st["candidates"]["out"] == 2 and st["candidates"]["candidates"] == 8
    assert st["candidates"]["summary"]["candidates_per_teacher"] == {"careful": 4, "creative": 4}
    assert st["rate"]["candidates_rated"] + st["rate"]["candidates_unrated"] == 8
    pairs = st["pairs"]
    assert pairs["prompts_paired"] + pairs["dropped_tie"] + pairs["dropped_margin"] + pairs["dropped_unrated"] \
        + pairs.get("dropped_truncated", 0) == 2
    assert pairs["pairs"] == pairs["prompts_paired"] == pairs["out"]  # random_lower: one pair per prompt
    s = pairs["summary"]
    assert sum(s["chosen_score_hist"].values()) == pairs["pairs"]
    assert sum(v["chosen"] for v in s["teacher_wins"].values()) == pairs["pairs"]

    # the judge's view: each candidate alone (method: criteria), every question's P(yes)
    # recorded in meta, the score computed from them
    import glob

    import pyarrow.parquet as pq

    from smolforge.stages.judges.judge import load_rubric

    recipe_rate = next(s for s in sf.load_recipe("ultrafeedback").stages if s.type == "rate")
    assert recipe_rate.method == "criteria"
    rubric = load_rubric("ultrafeedback").model_copy(update={"criteria": {
        q: load_rubric("ultrafeedback").criteria[q] for q in recipe_rate.criteria}})
    rated = [r for f in sorted(glob.glob(str(out / "stages" / "*-rate" / "shard-*.parquet")))
             if not f.endswith(".rejects.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(rated) == 2
    for r in rated:
        meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"]
        assert meta["rate"]["method"] == "criteria" and "order" not in meta["rate"]
        for c, p_yes in zip(r["candidates"], meta["rate"]["p_yes"], strict=True):
            assert set(p_yes) == set(recipe_rate.criteria) and c["rate_error"] is None
            assert c["score"] == pytest.approx(rubric.criteria_score(p_yes), abs=1e-5)

    rejects = [r for r in run.rejects().to_pylist() if r["stage"] == "pairs"]
    assert len(rejects) == 2 - pairs["prompts_paired"]
    assert all(r["reason"].startswith(("tie:", "margin:", "truncated:", "0 rated", "1 rated")) for r in rejects)
    check = st["rate"]["summary"]["judge_check"]  # the judge's self-check, in the manifest
    assert check["position_bias"] == {"shown": "one text per request: no display position"}
    assert check["ratings"] == 8 and isinstance(check["degenerate"], list)

    rows = run.data().to_pylist() if pairs["pairs"] else []
    for r in rows:
        assert r["chosen_score"] > r["rejected_score"] and r["chosen"] != r["rejected"]
        assert r["chosen_teacher"] in ("careful", "creative") and r["prompt"] == r["instruction"]
    for fmt in ("dpo", "kto"):
        path = tmp_path / f"{fmt}.jsonl"
        e = smolforge("export", str(out), "--format", fmt, "--to", str(path))
        assert e.returncode == 0, e.stderr
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert len(lines) == (len(rows) if fmt == "dpo" else 2 * len(rows))
        if rows:
            assert lines[0]["prompt"][-1] == {"role": "user", "content": rows[0]["instruction"]}
    print(json.dumps({"pairs": pairs["pairs"], "rejects": [r["reason"] for r in rejects]}))
