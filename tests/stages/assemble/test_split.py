"""`split` stage: seeded, layout-independent, and no near-duplicate crosses the split.

Near-duplicates are planted in real text (the standard library's docstrings): edited
copies and chains of edits (A -> A' -> A'', where A and A'' may be far apart). The
leak check uses the test's own exact word-3-gram Jaccard, not the stage's estimate;
a naive seeded shuffle of the same data is shown to leak, so the check can fail.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, write_recipe

from smolforge import corpora
from smolforge.context import EnginePool, StageContext
from smolforge.stages.assemble.split import Split
from smolforge.stages.base import Shards


def grams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga | gb else 0.0


def edit(text: str, rng: random.Random, share: float = 0.04) -> str:
    """Replace a few words (a light rewrite, exact 3-gram Jaccard ~0.6-0.85)."""
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(len(words) * share))):
        words[i] = rng.choice(["alpha", "beta", "gamma", "delta", "omega"])
    return " ".join(words)


class ListShards(Shards):
    def __init__(self, records: list[dict], shard_size: int):
        parts = [records[i : i + shard_size] for i in range(0, len(records), shard_size)]

        def load(i: int, columns: list[str] | None) -> list[dict]:
            recs = parts[i]
            return [dict(r) if columns is None else {c: r[c] for c in columns if c in r} for r in recs]

        super().__init__(load, len(parts))


def run_split(stage: Split, records: list[dict], tmp_path: Path, shard_size: int = 16) -> dict[str, str]:
    ctx = StageContext(recipe_name="t", recipe_dir=tmp_path, seed=0, default_engine="llamacpp",
                       pool=EnginePool(), cache=None, stage_name="split", run_dir=tmp_path)
    out = {}
    for _i, res in stage.process_all(ListShards(records, shard_size), ctx):
        assert not res.rejected  # a split drops nothing
        for r in res.records():
            out[r["id"]] = r["split"]
    assert len(out) == len(records)
    return out


@pytest.fixture(scope="module")
def planted() -> tuple[list[dict], list[list[str]]]:
    rng = random.Random(3)
    docs = [d for d in corpora.stdlib_docstrings("json/**/*.py") if 40 <= len(d.split()) <= 300]
    docs += [d for d in corpora.stdlib_docstrings("email/**/*.py") if 40 <= len(d.split()) <= 300]
    docs = docs[:160]
    records, groups = [], []
    for i, d in enumerate(docs):
        records.append({"id": f"d{i}", "text": d})
        if i % 5 == 0:  # a near-copy
            records.append({"id": f"d{i}-copy", "text": edit(d, rng)})
            groups.append([f"d{i}", f"d{i}-copy"])
        elif i % 9 == 0:  # a chain of two edits
            a1 = edit(d, rng)
            records += [{"id": f"d{i}-e1", "text": a1}, {"id": f"d{i}-e2", "text": edit(a1, rng)}]
            groups.append([f"d{i}", f"d{i}-e1", f"d{i}-e2"])
    rng.shuffle(records)
    return records, groups


def cross_max(records: list[dict], split: dict[str, str]) -> float:
    train = [r["text"] for r in records if split[r["id"]] == "train"]
    test = [r["text"] for r in records if split[r["id"]] == "test"]
    return max(jaccard(a, b) for a in test for b in train)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_near_duplicates_never_cross(planted, tmp_path, seed):
    records, groups = planted
    for _, g in zip(range(3), groups):  # the planted pairs really are near-duplicates
        assert 0.55 <= jaccard(*[r["text"] for r in records if r["id"] in g[:2]]) < 1.0
    split = run_split(Split(column="text", test_size=0.3, seed=seed), records, tmp_path)
    for g in groups:
        assert len({split[i] for i in g}) == 1, g
    assert cross_max(records, split) < 0.6
    n_test = sum(v == "test" for v in split.values())
    assert abs(n_test - 0.3 * len(records)) <= 3  # groups are at most 3 records


def test_a_naive_shuffle_would_leak(planted):
    records, groups = planted
    ids = [r["id"] for r in records]
    random.Random(0).shuffle(ids)
    test = set(ids[: int(0.3 * len(ids))])
    naive = {i: "test" if i in test else "train" for i in ids}
    assert any(len({naive[i] for i in g}) > 1 for g in groups)
    assert cross_max(records, naive) >= 0.6


def test_deterministic_and_independent_of_layout_and_order(planted, tmp_path):
    records, _ = planted
    a = run_split(Split(column="text", seed=5), records, tmp_path, shard_size=7)
    b = run_split(Split(column="text", seed=5), list(reversed(records)), tmp_path, shard_size=64)
    assert a == b
    c = run_split(Split(column="text", seed=6), records, tmp_path)
    assert c != a
    assert sum(v == "test" for v in a.values()) == sum(v == "test" for v in c.values())


def test_several_columns_count_and_empty_texts(tmp_path):
    recs = [{"id": f"r{i}", "q": f"question number {i} about item {i * 7}", "a": None} for i in range(20)]
    recs += [{"id": f"e{i}", "q": "", "a": None} for i in range(4)]  # no shingles: not one blob
    split = run_split(Split(column=["q", "a"], test_size=6, seed=0), recs, tmp_path)
    assert sum(v == "test" for v in split.values()) == 6
    with pytest.raises(ValueError):
        Split(test_size=2.5)


def test_split_in_a_run_then_train_reads_the_train_rows(tmp_path):
    items = [{"prompt": f"Say the number {i}.", "completion": str(i)} for i in range(12)]
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "split-demo", "seed": 1, "shard_size": 5,
        "stages": [{"type": "items", "items": items},
                   {"type": "split", "column": "prompt", "test_size": 0.25}],
    })
    out = tmp_path / "run"
    r = smolforge("run", str(recipe), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    table = pq.read_table(next((out / "data").glob("*.parquet"))).to_pylist()
    assert sorted(t["split"] for t in table) == ["test"] * 3 + ["train"] * 9
    manifest = json.loads((out / "manifest.json").read_text())
    stage = [s for s in manifest["stages"] if s.get("name", s.get("type")) == "split"][0]
    assert stage["summary"]["counts"] == {"train": 9, "test": 3}
    from smolforge.train.train import TrainConfig, load_examples

    train = load_examples(TrainConfig(data=str(out), out=str(tmp_path / "m")))
    assert len(train) == 9
    held = {t["prompt"] for t in table if t["split"] == "test"}
    assert not held & {e["prompt"][0]["content"] for e in train}
