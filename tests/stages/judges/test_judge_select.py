"""The judge's labelled set and the figures docs/judges.md quotes from it.

benchmarks/data/judge_quality.jsonl is split by source family (no family in both
splits); benchmarks/data/judge_quality_probs.jsonl holds every candidate question's
P(yes) from the bundled model; benchmarks/judge_select.py chooses on dev. Checked
here without the model: the split, that the stored probabilities give the shipped
judge's own score, and that the quoted held-out figures come out of the stored data.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import judge_select as js  # noqa: E402

from smolforge.stages.judges.rubrics import load_rubric  # noqa: E402


def test_split_is_by_source_family_and_every_kind_is_on_both_sides():
    items = js.load_items()
    assert len({r["id"] for r in items}) == len(items)
    split_of: dict[str, set[str]] = defaultdict(set)
    sides: dict[str, set[str]] = defaultdict(set)
    for r in items:
        assert r["source"] and r["kind"] and r["label"] in (0, 1)
        split_of[r["group"]].add(r["split"])
        sides[r["kind"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of.values()), {g: s for g, s in split_of.items() if len(s) > 1}
    assert all(s == {"dev", "holdout"} for s in sides.values()), sides
    assert {r["kind"] for r in items if r["label"]} == {"educational"}


def test_stored_probabilities_cover_every_item_and_give_the_shipped_score():
    """The candidates hold the shipped rubric's questions word for word, so the stored
    P(yes) give the `textbooks` judge's own score (Rubric.criteria_score)."""
    rubric = load_rubric("fineweb-edu")
    names, reverse = js.candidates()

    crit = yaml.safe_load(js.CANDIDATES.read_text())["criteria"]
    for name in js.SHIPPED:
        c = crit[name]
        assert (c if isinstance(c, str) else c["question"]) == rubric.criteria[name].question
        assert reverse[names.index(name)] == rubric.criteria[name].reverse
    assert list(rubric.criteria) == js.SHIPPED
    probs = js.load_probs()
    items = js.load_items()
    assert set(probs) == {r["id"] for r in items}
    assert all(p is not None for r in probs.values() for p in r.values())
    idx = [names.index(n) for n in js.SHIPPED]
    for r in items[:20]:
        p = probs[r["id"]]
        points = [[(1 - p[n]) if rev else p[n] for n, rev in zip(names, reverse)]]
        got = js.balanced(np.array(points)[:, idx], reverse[idx])[0]
        assert got == pytest.approx(rubric.criteria_score({n: p[n] for n in js.SHIPPED}), rel=1e-12)


def test_quoted_held_out_figures_come_from_the_stored_data():
    out = js.select(js.load_items(), js.load_probs())
    assert out["chosen_on_dev"] == "balanced/shipped-7"  # the rubric as shipped
    shipped = out["methods"]["balanced/shipped-7"]
    docs = (ROOT / "docs" / "judges.md").read_text()
    assert f"**{shipped['auc_holdout']}**" in docs and shipped["auc_holdout"] == 0.769
    assert f"{out['methods']['logistic/all-candidates']['auc_holdout']}" in docs
    assert shipped["auc_holdout_by_kind"]["records"] == 0.48
