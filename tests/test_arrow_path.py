"""The Arrow path of a CPU-only run: `read` hands JSONL/Parquet to the store as Arrow
tables, filters read only their columns, dedup keeps the input's own rows. Each
run here is compared with the same run through the record-by-record path (the
Arrow reader switched off), on input planted with what Arrow reads differently
from `json`: date-like strings, a column whose type changes, NaN, invalid lines,
nested objects, missing keys, an `id` column, blank lines, rows with their own
`meta`, and files whose columns differ."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_recipe

import smolforge as sf
from smolforge.stages.sources import read as sources


def _rows(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    for r in rows:
        if isinstance(r.get("meta"), str):
            r["meta"] = json.loads(r["meta"])
        if isinstance(r.get("record"), str):  # a reject's record
            r["record"] = json.loads(r["record"])
            r["record"].get("meta", {}).pop("created_at", None)
        if isinstance(r.get("meta"), dict):
            r["meta"].pop("created_at", None)
    return rows


def _normalize(v):
    """NaN != NaN: compare it as a marker."""
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, dict):
        return {k: _normalize(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_normalize(x) for x in v]
    return v


def _both_paths(tmp_path, monkeypatch, recipe: dict):
    path = write_recipe(tmp_path / "r.yaml", recipe)
    fast = sf.run(path, out=tmp_path / "fast")
    calls = []

    def off(path, fmt):
        calls.append(path)
        yield 0

    monkeypatch.setattr(sources, "_arrow_batches", off)
    slow = sf.run(path, out=tmp_path / "slow")
    assert calls, "the record path was not taken"
    return fast, slow


def _same(fast, slow):
    assert fast.manifest["status"] == slow.manifest["status"] == "done"
    assert _normalize(_rows(fast.data())) == _normalize(_rows(slow.data()))
    rf, rs = _rows(fast.rejects()), _rows(slow.rejects())
    key = lambda r: (r["stage"], r["id"])  # noqa: E731
    assert _normalize(sorted(rf, key=key)) == _normalize(sorted(rs, key=key))
    counts = lambda run: [(s["name"], s["in"], s["out"], s["rejected"])  # noqa: E731
                          for s in run.manifest["stages"]]
    assert counts(fast) == counts(slow)


def _write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")


def _text(tag: str) -> str:
    """A sentence of its own per tag, so only planted duplicates are near-duplicates."""
    return " ".join(f"{tag}{k}" for k in range(80)) + "."


@pytest.fixture
def planted(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    plain = [{"id": i, "text": _text(f"p{i}x") + f" Note {i % 7}.", "n": i, "tags": ["a", "b"][: i % 3],
              "info": {"src": "web", "depth": i}} for i in range(40)]
    _write_jsonl(d / "a.jsonl", plain[:25], extra_lines=[""])  # a blank line at the end
    near = _text("p1x").replace("p1x5 ", "changed ") + " Note 1."
    _write_jsonl(d / "b.jsonl", plain[25:] + [{"text": plain[1]["text"], "n": 99},  # exact dup
                                              {"text": near, "n": 98}])  # near dup
    # Arrow would read these as timestamps, and a type change inside one file.
    _write_jsonl(d / "c.jsonl", [{"text": _text("dated") + " Dated.", "when": "2024-01-01", "n": 1},
                                 {"text": _text("later") + " Later.", "when": "2024-02-01", "n": "two"}])
    (d / "d.jsonl").write_text('{"text": "' + _text("odd") + ' Odd.", "x": NaN}\n')  # json reads NaN
    _write_jsonl(d / "e.jsonl", [{"text": _text("own") + " Own meta.", "meta": {"origin": "crawl"}}])
    pq.write_table(pa.Table.from_pylist([{"text": _text(f"pq{i}x"), "n": i} for i in range(5)]),
                   d / "f.parquet")
    return d


def test_read_filter_dedup_equal_on_both_paths(tmp_path, monkeypatch, planted):
    recipe = {
        "name": "arrow-path", "shard_size": 7,
        "stages": [
            {"type": "read", "path": ["in/*.jsonl", "in/*.parquet"]},
            {"type": "filter", "where": "not contains(text, 'Note 3')"},
            {"type": "language", "column": "text", "languages": [], "min_score": 0.0},
            {"type": "dedup", "method": "exact", "column": "text"},
            {"type": "dedup", "method": "minhash", "column": "text"},
        ],
    }
    fast, slow = _both_paths(tmp_path, monkeypatch, recipe)
    _same(fast, slow)
    data = _rows(fast.data())
    # The planted cases survived as the record path reads them.
    dated = [r for r in data if r["text"].endswith("Dated.")]
    assert dated and dated[0]["when"] == "2024-01-01"
    assert any(r.get("meta", {}).get("origin") == "crawl" for r in data)
    assert {r["source_id"] for r in data if r.get("source_id") is not None} <= set(range(40))
    rejected = fast.rejects().column("reason").to_pylist()
    assert any("Note 3" in r for r in rejected)
    assert any(r.startswith("exact duplicate") for r in rejected)
    assert any(r.startswith("near-duplicate") for r in rejected)


def test_invalid_line_reported_with_its_line_after_arrow_rows(tmp_path, monkeypatch):
    """Rows before a bad line come through Arrow; the bad line is still named by
    file and line (a reject here), and nothing before or after it is lost."""
    d = tmp_path / "in"
    d.mkdir()
    good = [json.dumps({"text": f"row {i}"}) for i in range(10)]
    (d / "a.jsonl").write_text("\n".join(good[:6] + ["{not json"] + good[6:]) + "\n")
    recipe = {"name": "bad-line", "shard_size": 4,
              "stages": [{"type": "read", "path": "in/a.jsonl", "on_error": "reject"}]}
    fast, slow = _both_paths(tmp_path, monkeypatch, recipe)
    _same(fast, slow)
    assert sorted(r["text"] for r in _rows(fast.data())) == sorted(f"row {i}" for i in range(10))
    (reason,) = fast.rejects().column("reason").to_pylist()
    assert reason.startswith(f"{d / 'a.jsonl'}:7:")


def test_limit_and_shards_cut_arrow_tables_like_records(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for k in range(3):
        _write_jsonl(d / f"p{k}.jsonl", [{"text": f"file {k} row {i}"} for i in range(11)])
    recipe = {"name": "cut", "shard_size": 5,
              "stages": [{"type": "read", "path": "in/*.jsonl"}]}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    fast = sf.run(path, out=tmp_path / "fast", limit=23)
    ids = fast.data().column("id").to_pylist()
    assert ids == [f"read-{i:06d}" for i in range(23)]
    assert fast.data().column("text").to_pylist()[11] == "file 1 row 0"
    # Full shards of 5 across file boundaries, as the record path cuts them.
    assert [s["out"] for s in fast.manifest["stages"]] == [23]
    monkeypatch.setattr(sources, "_arrow_batches", lambda path, fmt: iter([0]))
    slow = sf.run(path, out=tmp_path / "slow", limit=23)
    _same(fast, slow)
    shard_rows = lambda run: sorted(  # noqa: E731
        pq.read_metadata(p).num_rows for p in (run.path / "stages").glob("*/*[0-9].parquet"))
    assert shard_rows(fast) == shard_rows(slow) == [3, 5, 5, 5, 5]
