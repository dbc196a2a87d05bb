"""`target: {records: N, max_candidates: M}`: exactly N records, generated in rounds.

A CPU-only recipe where acceptance is controlled by a filter: `combine` samples
numbers 0..299, a filter keeps multiples of 3 (about a third), exact dedup drops a
number already kept in an earlier round (fresh seeds resample overlapping numbers).
Checked against what the rules say, computed from the run's own candidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, write_recipe

from smolforge.recipe import Recipe, RecipeError


def recipe(tmp: Path, records: int, max_candidates: int, count: int = 12) -> Path:
    return write_recipe(tmp / "t.yaml", {
        "name": "t", "seed": 3, "shard_size": 5,
        "target": {"records": records, "max_candidates": max_candidates},
        "stages": [
            {"type": "combine", "lists": {"n": list(range(300))}, "count": count},
            {"type": "filter", "where": "n % 3 == 0"},
            {"type": "dedup", "method": "exact", "column": "n"},
        ]})


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def candidates(out: Path) -> list[dict]:
    """Every source record of the run, in shard order (all rounds)."""
    src = sorted((out / "stages").glob("00-combine/shard-*.parquet"))
    return [r for p in src for r in pq.read_table(p).to_pylist()]


def test_exactly_n_records_in_rounds(tmp_path):
    out = tmp_path / "run"
    r = smolforge("run", str(recipe(tmp_path, 10, 400)), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    data = pq.read_table(out / "data").to_pylist()
    assert len(data) == 10
    t = manifest(out)["target"]
    assert t["reached"] and t["kept"] == 10 and len(t["rounds"]) >= 2
    # the reference: walk the candidates in order, keep new multiples of 3, first 10
    kept, seen = [], set()
    for c in candidates(out):
        if c["n"] % 3 == 0 and c["n"] not in seen:
            seen.add(c["n"])
            kept.append(c["id"])
    assert [d["id"] for d in data] == kept[:10]
    assert len({d["n"] for d in data}) == 10
    # rounds: sizes and acceptance as recorded; each round after the first has its own seed
    cands = candidates(out)
    assert t["candidates"] == len(cands) == sum(rd["candidates"] for rd in t["rounds"])
    assert t["rounds"][0]["candidates"] == 12
    assert len({rd["seed"] for rd in t["rounds"]}) == len(t["rounds"])
    assert sum(rd["kept"] for rd in t["rounds"]) == t["survivors"] == len(kept)
    for rd in t["rounds"]:
        assert rd["acceptance"] == round(rd["kept"] / rd["candidates"], 4)
    later = [json.loads(c["meta"]) for c in cands[12:]]
    assert later and all(m["round"] >= 1 for m in later)
    # surplus beyond the target goes to the rejects with its reason
    rej = pq.read_table(out / "rejects").to_pylist()
    surplus = [x for x in rej if x["stage"] == "target"]
    assert len(surplus) == len(kept) - 10
    assert all("surplus" in x["reason"] for x in surplus)
    # a re-run computes nothing again
    marks = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*/shard-*.done")}
    r = smolforge("run", str(recipe(tmp_path, 10, 400)), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*/shard-*.done")} == marks


def test_budget_spent_exits_4_with_partial_output_then_resumes(tmp_path):
    out = tmp_path / "run"
    r = smolforge("run", str(recipe(tmp_path, 30, 40)), "--out", str(out), "--quiet")
    assert r.returncode == 4, r.stderr
    t = manifest(out)["target"]
    assert not t["reached"] and t["candidates"] == 40 and t["stopped"] == "max_candidates spent"
    data = pq.read_table(out / "data").to_pylist()
    assert 0 < len(data) == t["kept"] < 30
    need = t["more_candidates_needed"]
    assert need == -(-(30 - len(data)) * 40 // len(data))  # ceil(missing / observed rate)
    assert f"about {need} more candidates" in r.stderr and "target not reached" in r.stderr
    shown = smolforge("show", str(out), env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert (f"target 30 records: kept {len(data)}, not reached (max_candidates spent); "
            f"40 of 40 candidates") in shown.stdout
    assert f"about {need} more candidates needed" in shown.stdout
    assert len([ln for ln in shown.stdout.splitlines() if ln.split()[:1] in (["0"], ["1"])]) \
        == len(t["rounds"])
    first = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("00-combine/shard-*.done")}

    # a bigger budget continues the same rounds: earlier candidates are not redrawn
    r = smolforge("run", str(recipe(tmp_path, 30, 1000)), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    after = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("00-combine/shard-*.done")}
    assert all(after[p] == m for p, m in first.items()) and len(after) > len(first)
    data = pq.read_table(out / "data").to_pylist()
    assert len(data) == 30 and all(d["n"] % 3 == 0 for d in data) and len({d["n"] for d in data}) == 30


def test_the_python_api_raises_what_the_cli_exits_non_zero_for(tmp_path):
    """`smolforge.run` with a missed target raises TargetMissed (the CLI's exit 4)
    carrying the run; an empty result raises EmptyRun (exit 3) unless allow_empty;
    `executor=` takes the CLI's names."""
    import smolforge as sf

    with pytest.raises(sf.TargetMissed, match="target not reached: .* of 30 records") as e:
        sf.run(recipe(tmp_path, 30, 40), tmp_path / "run", executor="local")
    assert e.value.exit_code == 4 and not e.value.run.manifest["target"]["reached"]
    assert 0 < e.value.run.data().num_rows < 30
    empty = {"name": "e", "stages": [{"type": "items", "items": [{"n": 1}]}, {"type": "filter", "where": "n > 1"}]}
    with pytest.raises(sf.EmptyRun, match="kept no records") as e:
        sf.run(empty, tmp_path / "empty")
    assert isinstance(e.value, sf.RunIncomplete) and e.value.exit_code == 3
    assert sf.run(empty, tmp_path / "empty", allow_empty=True).manifest["status"] == "done"
    with pytest.raises(ValueError, match="unknown executor 'nope'"):
        sf.run(empty, tmp_path / "x", executor="nope")


def test_a_source_that_gives_nothing_new_stops(tmp_path):
    """`items` has no seed to vary: later rounds repeat it, dedup drops every record,
    and the run stops after three empty rounds instead of spending the whole budget."""
    path = write_recipe(tmp_path / "i.yaml", {
        "name": "i", "target": {"records": 5, "max_candidates": 10_000},
        "stages": [{"type": "items", "items": [{"text": "a"}, {"text": "b"}]},
                   {"type": "dedup", "method": "exact", "column": "text"}]})
    r = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 4, r.stderr
    t = manifest(tmp_path / "run")["target"]
    assert t["kept"] == 2 and "kept nothing" in t["stopped"] and t["candidates"] < 100
    # the budget was not the limit: no advice to raise it (it said "raise ... to 20")
    assert "raise target.max_candidates" not in r.stderr
    assert (f"target.max_candidates (10000) was not the limit, {t['candidates']} were used: the source "
            "gives no new records that survive") in r.stderr
    shown = smolforge("show", str(tmp_path / "run"), env={"COLUMNS": "250"})
    assert "more candidates needed" not in shown.stdout
    assert "the budget was not the limit: the source gives no new records that survive" in shown.stdout


def test_a_resumed_run_that_adds_a_round_says_so(tmp_path):
    """Every stage of the earlier rounds is done, but a bigger budget adds a round: the
    resume line names that round instead of "every stage is done"."""
    out = tmp_path / "run"
    assert smolforge("run", str(recipe(tmp_path, 30, 40)), "--out", str(out), "--quiet").returncode == 4
    rounds = len(manifest(out)["target"]["rounds"])
    r = smolforge("run", str(recipe(tmp_path, 30, 1000)), "--out", str(out), env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    assert "every stage is done" not in r.stderr
    assert "done (" in r.stderr and f"continuing at target round {rounds} (30 records wanted)" in r.stderr
    # a re-run of the finished run is what "every stage is done" means
    r = smolforge("run", str(recipe(tmp_path, 30, 1000)), "--out", str(out), env={"COLUMNS": "250"})
    assert r.returncode == 0 and "every stage is done, writing the output" in r.stderr


def test_target_validation_and_dry_run_forecast(tmp_path):
    with pytest.raises(RecipeError, match="max_candidates"):
        Recipe.from_dict({"name": "x", "target": {"records": 10, "max_candidates": 5},
                          "stages": [{"type": "items", "items": ["a"]}]})
    with pytest.raises(RecipeError, match="target"):
        Recipe.from_dict({"name": "x", "target": {"records": 0, "max_candidates": 5},
                          "stages": [{"type": "items", "items": ["a"]}]})
    r = smolforge("run", str(recipe(tmp_path, 50, 1000, count=60)), "--dry-run", "--json",
                  "--set", "shard_size=60")
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)["target"]
    pilot = f["pilot_candidates"]
    assert pilot == 60 and 0 < f["pilot_acceptance"] < 1
    assert f["candidates_needed"] == -(-50 * pilot // f["pilot_kept"])
    assert f["within_budget"] is True
