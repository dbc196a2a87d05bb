"""End to end on the real bundled model: generate, judge, filter, dedup; the run
directory, provenance, the Python API, show and export, and loading the output
with datasets, pandas and pyarrow."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, tiny_recipe, write_recipe

import smolforge as sf
from smolforge.recipe import Recipe


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return sf.run(Recipe.from_dict(tiny_recipe()), out=out)


def test_every_input_accounted_for_exactly_once(tiny_run):
    data, rej = tiny_run.data(), tiny_run.rejects()
    ids = data.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    # 7 items in; "cats" appears twice and greedy decoding makes the same text,
    # so exact dedup must reject exactly that one, naming the id it kept.
    dup = [r for r in rej.to_pylist() if r["stage"] == "dedup"]
    assert len(dup) == 1 and dup[0]["reason"] == "exact duplicate of items-000000"
    assert dup[0]["id"] == "items-000004"
    assert len(ids) + rej.num_rows == 7
    assert set(ids).isdisjoint(r["id"] for r in rej.to_pylist())


def test_provenance_in_meta(tiny_run):
    row = tiny_run.data().to_pylist()[0]
    meta = json.loads(row["meta"])
    assert meta["recipe"] == "tiny" and meta["seed"] == 7 and meta["created_by"] == "items"
    g = meta["generate"]
    assert g["engine"] == "llamacpp" and g["model"] == "smollm2-135m"
    assert len(g["template_hash"]) == 16 and g["sampling"]["max_tokens"] == 8
    assert g["sampling"]["temperature"] == 0.0 and isinstance(g["sampling"]["seed"], int)
    assert g["created_at"] > 1.7e9 and g["finish_reason"] in ("stop", "length")
    assert row["prompt"] == f"Write one sentence about {row['topic']}."
    assert row["text"]


def test_manifest(tiny_run):
    m = tiny_run.manifest
    assert m["status"] == "done" and m["recipe"] == "tiny"
    assert m["versions"]["smolforge"] and m["versions"]["pyarrow"]
    eng = m["engines"][0]
    assert eng["type"] == "llamacpp" and len(eng["identity"]["sha256"]) == 64
    stages = {s["name"]: s for s in m["stages"]}
    assert stages["items"]["out"] == 7 and stages["generate"]["in"] == 7
    assert stages["generate"]["completion_tokens"] > 0 and stages["generate"]["generated"] == 6
    assert stages["generate"]["cache_hits"] == 1  # the repeated greedy prompt
    assert stages["dedup"]["rejected"] == 1
    assert (tiny_run.path / "recipe.yaml").read_text().startswith("name: tiny")


def test_loads_in_datasets_pandas_pyarrow(tiny_run):
    import datasets
    import pandas as pd

    files = [str(p) for p in sorted((tiny_run.path / "data").glob("*.parquet"))]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == tiny_run.data().num_rows and "text" in ds.column_names
    df = pd.read_parquet(tiny_run.path / "data")
    assert list(df["id"]) == tiny_run.data().column("id").to_pylist()
    rej = pd.read_parquet(tiny_run.path / "rejects")
    assert set(rej.columns) == {"id", "stage", "reason", "record"}


def test_show_and_export(tiny_run, tmp_path):
    p = smolforge("show", str(tiny_run.path), "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["data"]["rows"] == tiny_run.data().num_rows
    assert {"stage": "dedup", "reason": "exact duplicate of <id>", "count": 1} .items() <= s["rejects"][0].items()
    assert s["completion_tokens"] > 0 and s["tokens_per_s"] > 0
    human = smolforge("show", str(tiny_run.path))
    assert human.returncode == 0 and "rejects by reason" in human.stdout

    for fmt, name in [("jsonl", "d.jsonl"), ("parquet", "d.parquet"), ("chat", "chat.jsonl")]:
        p = smolforge("export", str(tiny_run.path), "--format", fmt, "--to", str(tmp_path / name))
        assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(rows) == tiny_run.data().num_rows
    assert pq.read_table(tmp_path / "d.parquet").num_rows == len(rows)
    chat = [json.loads(x) for x in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert [m["role"] for m in chat[0]["messages"]] == ["user", "assistant"]
    assert chat[0]["messages"][1]["content"] == rows[0]["text"]
    bad = smolforge("export", str(tiny_run.path), "--format", "chat", "--to", str(tmp_path / "x.jsonl"),
                    "--response-column", "nope")
    assert bad.returncode == 1 and "column 'nope' not in the data" in bad.stderr


def test_n_samples_fan_out_and_template_is_data(tmp_path):
    recipe = Recipe.from_dict({
        "name": "fan", "stages": [
            {"type": "items", "items": [{"topic": "{{ 7 * 7 }}"}]},
            {"type": "generate", "template": "Say: {{ topic }}", "n": 3, "max_tokens": 4, "temperature": 0.9},
        ]})
    run = sf.run(recipe, out=tmp_path / "fan")
    rows = run.data().to_pylist()
    assert [r["id"] for r in rows] == ["items-000000.0", "items-000000.1", "items-000000.2"]
    # record values are data, never template code
    assert all(r["prompt"] == "Say: {{ 7 * 7 }}" for r in rows)


def test_judge_parses_scores_and_rejects_unparsable(tmp_path):
    """A real judge run with a tiny budget: every record is either scored within
    range with its justification, or rejected with the raw answer as reason."""
    recipe = Recipe.from_dict({
        "name": "judged", "seed": 1, "stages": [
            {"type": "items", "items": ["Photosynthesis turns light into chemical energy in plants.",
                                        "buy now!!! cheap watches", "The mitochondria is the powerhouse of the cell."]},
            {"type": "judge", "column": "edu", "max_tokens": 24,
             "template": "Rate the educational value of this text from 0 to 5.\n{{ text }}\nAnswer with 'Score: <n>'."},
        ]})
    run = sf.run(recipe, out=tmp_path / "j")
    for r in run.data().to_pylist():
        assert 0 <= r["edu"] <= 5 and "edu_justification" in r
    for r in run.rejects().to_pylist():
        assert r["stage"] == "judge"
        assert r["reason"].startswith(("unparsable judge answer: ", "judge score "))
    assert run.data().num_rows + run.rejects().num_rows == 3


def test_parse_score_rules():
    from smolforge.stages.judge import DEFAULT_SCORE_PATTERN, parse_score

    assert parse_score("Clear and useful.\nEducational score: 4", DEFAULT_SCORE_PATTERN, False) == (
        4.0, "Clear and useful.")
    assert parse_score("score is 2 ... final Score: **3**", DEFAULT_SCORE_PATTERN, False)[0] == 3.0
    assert parse_score("3", DEFAULT_SCORE_PATTERN, False)[0] == 3.0
    assert parse_score("no idea", DEFAULT_SCORE_PATTERN, False)[0] is None
    assert parse_score('{"justification": "ok", "score": 5}', DEFAULT_SCORE_PATTERN, True) == (5.0, "ok")


def test_empty_source_and_all_rejected_do_not_crash(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "empty", "stages": [
            {"type": "read", "path": "empty.jsonl", "columns": {"text": "text"}},
            {"type": "filter", "where": "words(text) > 1"},
            {"type": "dedup"},
        ]})
    run = sf.run(recipe, out=tmp_path / "e")
    assert run.data().num_rows == 0 and run.manifest["status"] == "done"


def test_recipe_change_recomputes_only_from_changed_stage(tmp_path):
    out = tmp_path / "chg"
    first = sf.run(Recipe.from_dict(tiny_recipe()), out=out)
    gen_file = next((out / "stages").glob("01-generate/shard-00000.parquet"))
    mtime = gen_file.stat().st_mtime_ns
    changed = tiny_recipe()
    changed["stages"][2]["where"] = "words(text) >= 4"
    second = sf.run(Recipe.from_dict(changed), out=out)
    assert gen_file.stat().st_mtime_ns == mtime  # generate reused, not rewritten
    stages = {s["name"]: s for s in second.manifest["stages"]}
    assert second.manifest["attempts"][-1]["generated"] == 0  # no new LLM calls
    assert stages["filter"]["in"] == 7
    assert second.data().num_rows <= first.data().num_rows
    from smolforge.text import words

    assert all(len(words(r["text"])) >= 4 for r in second.data().to_pylist())
    changed["stages"][1]["max_tokens"] = 5
    third = sf.run(Recipe.from_dict(changed), out=out)
    assert third.manifest["attempts"][-1]["generated"] == 6  # 7 prompts, one repeated
