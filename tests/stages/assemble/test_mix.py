"""`mix`, `accumulate` and `anneal`: real runs (one with the bundled model as the
teacher), ratios checked against counts made here, provenance followed back to
the original records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, write_recipe
from test_report_stats import paragraphs

import smolforge as sf
from smolforge.text import approx_tokens


def _run(tmp: Path, name: str, stages: list[dict], **kw) -> Path:
    recipe = write_recipe(tmp / f"{name}.yaml", {"name": name, "seed": 3, "shard_size": 8, "stages": stages, **kw})
    return sf.run(str(recipe), tmp / name).path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    real = _run(tmp, "real", [{"type": "items", "items": paragraphs()[:30]}])
    synth = _run(tmp, "synth", [
        {"type": "items", "items": [{"topic": t} for t in ["tides", "bees", "maps", "salt", "ice", "bread"]]},
        {"type": "generate", "template": "Write one sentence about {{ topic }}.", "max_tokens": 12,
         "temperature": 0.0},
    ])
    return tmp, real, synth


def _data(run: Path) -> list[dict]:
    rows = pq.read_table(run / "data").to_pylist()
    for r in rows:
        r["meta"] = json.loads(r["meta"])
    return rows


def test_mix_one_to_one_by_records_keeps_provenance(runs):
    tmp, real, synth = runs
    out = _run(tmp, "wrap", [{"type": "mix", "inputs": [
        {"run_dir": str(real), "label": "real"}, {"run_dir": str(synth), "label": "synthetic"}]}])
    rows = _data(out)
    labels = Counter(r["origin"] for r in rows)
    assert labels == {"real": 6, "synthetic": 6}  # the scarce input (6 generations) is used whole
    src = {r["id"]: r for r in _data(synth)}
    real_ids = {r["id"] for r in _data(real)}
    for r in rows:
        assert r["meta"]["mix"]["label"] == r["origin"] == r["meta"]["knobs"]["origin"]
        if r["origin"] == "synthetic":
            orig = src[r["meta"]["mix"]["source_id"]]
            assert r["text"] == orig["text"]
            # the teacher's provenance and licence travel with the record
            assert r["meta"]["generate"]["model"] == "smollm2-135m"
            assert r["meta"]["generate"]["licence"] == "apache-2.0"
        else:
            assert r["meta"]["mix"]["source_id"] in real_ids
    # both runs call their records items-NNNNNN: (input, original id) names each one, none twice
    assert len({(r["meta"]["mix"]["input"], r["meta"]["mix"]["source_id"]) for r in rows}) == 12
    # show names the teacher and its licence in the mixed run too
    s = json.loads(smolforge("show", str(out), "--json").stdout)
    assert [(t["model"], t["licence"], t["records"]) for t in s["teachers"]] == [("smollm2-135m", "apache-2.0", 6)]
    assert s["licence_warnings"] == []


def test_mix_by_tokens_and_ratios(runs):
    tmp, real, synth = runs
    out = _run(tmp, "tok", [{"type": "mix", "by": "tokens", "inputs": [
        {"run_dir": str(real), "label": "real", "ratio": 2}, {"run_dir": str(synth), "label": "synthetic"}]}])
    rows = _data(out)
    tok = Counter()
    for r in rows:
        tok[r["origin"]] += approx_tokens(r["text"])
    synth_all = sum(approx_tokens(r["text"]) for r in _data(synth))
    assert tok["synthetic"] == synth_all  # the scarce input, whole
    longest = max(approx_tokens(r["text"]) for r in _data(real))
    assert 2 * synth_all <= tok["real"] < 2 * synth_all + longest  # 2:1, overshooting by under one record


def test_mix_total_needs_repeat(runs):
    tmp, real, synth = runs
    stages = [{"type": "mix", "total": 20, "inputs": [
        {"run_dir": str(real), "label": "real"}, {"run_dir": str(synth), "label": "synthetic"}]}]
    path = write_recipe(tmp / "over.yaml", {"name": "over", "stages": stages})
    p = smolforge("run", str(path), "--out", str(tmp / "over"))
    assert p.returncode == 1 and "needs repeats" in p.stderr and "at most 12" in p.stderr
    stages[0]["repeat"] = True
    rows = _data(_run(tmp, "over2", stages))
    assert Counter(r["origin"] for r in rows) == {"real": 10, "synthetic": 10}
    repeats = [r for r in rows if r["origin"] == "synthetic" and r["meta"]["mix"].get("repeat")]
    assert len(repeats) == 4 and all(r["meta"]["mix"]["repeat"] == 1 for r in repeats)


def test_accumulate_keeps_every_generation(runs):
    tmp, real, _ = runs
    (tmp / "gens").mkdir()
    for k in range(3):  # generation k: k + 2 records
        _run(tmp / "gens", f"gen-{k}", [{"type": "items", "items": [f"gen {k} text {i}" for i in range(k + 2)]}])
    out = _run(tmp, "acc", [{"type": "accumulate", "real": [{"run_dir": str(real), "label": "real"}],
                             "generations": [str(tmp / "gens" / "gen-*")]}])
    rows = _data(out)
    assert Counter(r["origin"] for r in rows) == {"real": 30, "synthetic": 2 + 3 + 4}
    by_gen = Counter(r["meta"]["mix"]["generation"] for r in rows if r["origin"] == "synthetic")
    assert by_gen == {0: 2, 1: 3, 2: 4}
    for r in rows:
        if r["origin"] == "synthetic":
            assert r["text"].startswith(f"gen {r['meta']['mix']['generation']} ")
    assert len({r["id"] for r in rows}) == len(rows)


def test_anneal_holds_out_the_top_slice_and_export_writes_splits(tmp_path):
    rows = [{"text": f"doc {i}", "score": (i * 7) % 10, "split": "test" if i % 10 == 0 else None}
            for i in range(40)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = _run(tmp_path, "ann", [{"type": "read", "path": "in.jsonl"},
                                 {"type": "anneal", "score": "score", "fraction": 0.25}])
    data = _data(run)
    splits = Counter(r["split"] for r in data)
    assert splits == {"test": 4, "anneal": 9, "train": 27}  # 25% of the 36 non-test records
    held = [r["score"] for r in data if r["split"] == "anneal"]
    rest = [r["score"] for r in data if r["split"] == "train"]
    assert min(held) >= max(rest)
    # the records the split stage had put in `test` stay there, whatever their score
    assert {r["text"] for r in data if r["split"] == "test"} == {f"doc {i}" for i in range(0, 40, 10)}
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"][1]["summary"]["splits"] == {"test": 4, "anneal": 9, "train": 27}
    # export: one split at a time, and the hf folder has one file per split
    p = smolforge("export", str(run), "--format", "jsonl", "--split", "anneal", "--to", str(tmp_path / "a.jsonl"))
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads(x)["score"] for x in (tmp_path / "a.jsonl").read_text().splitlines()) == sorted(held)
    p = smolforge("export", str(run), "--format", "hf", "--to", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr
    import datasets

    ds = datasets.load_dataset(str(tmp_path / "hf"))
    assert {k: v.num_rows for k, v in ds.items()} == {"anneal": 9, "test": 4, "train": 27}
    assert "split" not in ds["train"].column_names
    assert sorted(ds["anneal"]["score"]) == sorted(held)
