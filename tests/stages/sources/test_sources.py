"""Source stages on real files: every format, globs, column mapping, and malformed
input that stops with file:line or goes to the rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import stage_ctx

from smolforge.context import StageContext
from smolforge.stages.base import Reject
from smolforge.stages.sources.read import Combine, InputError, Items, Read


def ctx(base: Path, seed: int = 0) -> StageContext:
    return stage_ctx(base, stage="src", seed=seed)


def test_read_every_format(tmp_path):
    rows = [{"content": "alpha", "n": 1}, {"content": "beta", "n": 2}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "d.csv").write_text("content,n\nalpha,1\nbeta,2\n")
    for name in ["a.jsonl", "b.json", "c.parquet", "d.csv"]:
        got = list(Read(path=name, columns={"text": "content"}).read(ctx(tmp_path)))
        assert got == [{"text": "alpha"}, {"text": "beta"}], name


def test_read_glob_and_text_units(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "1.txt").write_text("First para.\n\nSecond para.\n")
    (tmp_path / "docs" / "2.txt").write_text("Only one.")
    files = list(Read(path="docs/*.txt").read(ctx(tmp_path)))
    assert [r["text"] for r in files] == ["First para.\n\nSecond para.\n", "Only one."]
    paras = list(Read(path="docs/*.txt", text_unit="paragraph").read(ctx(tmp_path)))
    assert [r["text"] for r in paras] == ["First para.", "Second para.", "Only one."]
    assert paras[1]["source"].endswith("1.txt:3")


def test_malformed_jsonl_line_stops_with_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "broken\n{"text": "fine"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: invalid JSON"):
        list(Read(path="bad.jsonl").read(ctx(tmp_path)))


def test_malformed_line_rejected_when_asked(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n[1, 2]\n{"text": "broken\n{"text": "fine"}\n')
    out = list(Read(path="bad.jsonl", on_error="reject").read(ctx(tmp_path)))
    kept = [r for r in out if not isinstance(r, Reject)]
    rejected = [r for r in out if isinstance(r, Reject)]
    assert [r["text"] for r in kept] == ["ok", "fine"]
    assert [r.reason.split(": ", 1)[0].rsplit("/", 1)[-1] for r in rejected] == ["bad.jsonl:2", "bad.jsonl:3"]
    assert "expected an object" in rejected[0].reason and "invalid JSON" in rejected[1].reason
    assert rejected[1].record["raw"] == '{"text": "broken'


def test_missing_mapped_column_names_file_line_and_columns(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"content": "a"}\n{"body": "b"}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: missing column 'content' \(columns: body\)"):
        list(Read(path="x.jsonl", columns={"text": "content"}).read(ctx(tmp_path)))


def test_csv_row_with_wrong_field_count(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(InputError, match=r"x\.csv:3: expected 2 fields, got 3"):
        list(Read(path="x.csv").read(ctx(tmp_path)))


def test_no_files_match(tmp_path):
    with pytest.raises(InputError, match="no files match"):
        list(Read(path="nothing/*.jsonl").read(ctx(tmp_path)))


def test_input_id_kept_as_source_id(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": 5, "text": "a"}\n')
    assert list(Read(path="x.jsonl").read(ctx(tmp_path))) == [{"source_id": 5, "text": "a"}]


def test_items_strings_and_mappings(tmp_path):
    got = list(Items(items=["a", {"text": "b", "k": 1}]).read(ctx(tmp_path)))
    assert got == [{"text": "a"}, {"text": "b", "k": 1}]


def test_combine_all_and_sampled(tmp_path):
    (tmp_path / "topics.txt").write_text("# comment\nalgebra\nbiology\n\nchemistry\n")
    c = Combine(lists={"topic": "topics.txt", "audience": ["kids", "adults"]})
    everything = list(c.read(ctx(tmp_path)))
    assert len(everything) == 6 and c.estimate_count(ctx(tmp_path)) == 6
    assert {(r["topic"], r["audience"]) for r in everything} == {
        (t, a) for t in ["algebra", "biology", "chemistry"] for a in ["kids", "adults"]}
    s = Combine(lists={"topic": "topics.txt", "audience": ["kids", "adults"]}, count=4)
    one, two = list(s.read(ctx(tmp_path, seed=1))), list(s.read(ctx(tmp_path, seed=1)))
    assert one == two and len(one) == 4
    assert len({(r["topic"], r["audience"]) for r in one}) == 4  # distinct combinations
    assert one[0]["meta"]["knobs"] == {"topic": one[0]["topic"], "audience": one[0]["audience"]}
    assert one != list(s.read(ctx(tmp_path, seed=2)))  # the seed matters


def test_a_deeply_nested_jsonl_line_is_rejected_not_a_recursion_error(tmp_path):
    """A line of 5,000 nested lists made Python's json raise RecursionError."""
    import smolforge as sf

    lines = ['{"text": "a"}', '{"text": ' + "[" * 5000 + "]" * 5000 + "}", '{"text": "b"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "deep", "seed": 1, "stages": [
        {"type": "read", "path": "in.jsonl", "on_error": "reject"}]}))
    run = sf.run(str(tmp_path / "r.yaml"), tmp_path / "run")
    assert [r["text"] for r in run.data().to_pylist()] == ["a", "b"]
    (rej,) = run.rejects().to_pylist()
    assert rej["reason"] == f"{tmp_path / 'in.jsonl'}:2: invalid JSON: nested deeper than 100 levels (at char 108)"
