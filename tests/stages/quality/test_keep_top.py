"""`keep_top`: a threshold relative to the run's own scores, across shards, through
the real CLI; checked against numpy's quantile of the same values."""

from __future__ import annotations

import random

import numpy as np
from conftest import smolforge, write_recipe

import smolforge as sf


def _run(tmp_path, items, **stage):
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "top", "seed": 1, "shard_size": 7,
        "stages": [{"type": "items", "items": items}, {"type": "keep_top", "column": "score", **stage}],
    })
    out = tmp_path / "run"
    r = smolforge("run", str(recipe), "--out", str(out), "--quiet")
    return r, out


def test_keeps_the_top_fraction_over_every_shard_ties_and_unscored(tmp_path):
    rng = random.Random(3)
    scores = [round(rng.uniform(0, 5), 1) for _ in range(40)]  # one decimal: ties happen
    items = [{"k": i, "score": s} for i, s in enumerate(scores)]
    items += [{"k": 40, "score": None}, {"k": 41, "score": "high"}]  # unscored: dropped
    r, out = _run(tmp_path, items, fraction=0.3)
    assert r.returncode == 0, r.stderr
    run = sf.Run(out)
    kept = sorted(run.data().column("k").to_pylist())
    # the 12th highest of 40 (ceil(0.3 * 40)) is the cut-off; every tie with it stays
    cut = float(np.sort(scores)[::-1][11])
    assert kept == [i for i, s in enumerate(scores) if s >= cut]
    assert len(kept) >= 12 and cut >= np.quantile(scores, 0.7, method="lower")
    reasons = {rec["id"]: rec["reason"] for rec in run.rejects().to_pylist()}
    assert len(reasons) == 42 - len(kept)
    assert any("no numeric score ('high')" in v for v in reasons.values())
    assert any("no numeric score (None)" in v for v in reasons.values())
    below = [v for v in reasons.values() if "below the cut-off" in v]
    assert len(below) == 40 - len(kept) and all(f"cut-off {cut:.4g} (top 30% of 40 scored)" in v for v in below)
    summary = [s for s in run.manifest["stages"] if s["type"] == "keep_top"][0]["summary"]
    assert summary == {"column": "score", "fraction": 0.3, "kept": len(kept), "lowest_kept": cut}


def test_min_value_and_a_bad_fraction(tmp_path):
    items = [{"score": s} for s in (1.0, 2.0, 3.0, 4.0)]
    r, out = _run(tmp_path, items, fraction=1.0, min_value=2.5)
    assert r.returncode == 0, r.stderr
    assert sorted(sf.Run(out).data().column("score").to_pylist()) == [3.0, 4.0]
    (tmp_path / "bad").mkdir()
    r, _ = _run(tmp_path / "bad", items, fraction=1.5)
    assert r.returncode == 2
    assert "stages[1]" in r.stderr and "fraction" in r.stderr
