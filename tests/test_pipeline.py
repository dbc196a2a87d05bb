"""End to end on the real bundled model: generate, judge, filter, dedup; the run
directory, provenance, the Python API, show and export, and loading the output
with datasets, pandas and pyarrow."""

from __future__ import annotations

import json
from importlib import metadata

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, tiny_recipe, write_recipe
from faultproxy import canned_server, user_text

import smolforge as sf
from smolforge.recipe import Recipe
from smolforge.text import words


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
    assert g["created_at"] > 1.7e9
    # at most max_tokens; cut off exactly when the budget ran out
    assert 1 <= g["tokens"] <= 8 and (g["finish_reason"] == "length") == (g["tokens"] == 8)
    assert row["prompt"] == f"Write one sentence about {row['topic']}."
    assert len(words(row["text"])) >= 2 and row["text"] == row["text"].strip()  # passed the filter


def test_manifest(tiny_run):
    m = tiny_run.manifest
    assert m["status"] == "done" and m["recipe"] == "tiny"
    assert m["versions"]["smolforge"] == metadata.version("smolforge")
    assert m["versions"]["pyarrow"] == metadata.version("pyarrow")
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
    assert bad.returncode == 2 and "--response-column nope: no such column" in bad.stderr


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
    """Every record is either scored within range with its justification, or
    rejected with the raw answer as reason (canned answers over HTTP)."""
    texts = ["Photosynthesis turns light into chemical energy in plants.",
             "buy now!!! cheap watches", "The mitochondria is the powerhouse of the cell."]
    answers = dict(zip(texts, ["Explains a process.\nScore: 4", "Score: 9", "hard to say"]))
    with canned_server(lambda b: answers[user_text(b).split("\n")[1]]) as server:
        recipe = Recipe.from_dict({
            "name": "judged", "seed": 1, "stages": [
                {"type": "items", "items": texts},
                {"type": "judge", "column": "edu", "max_tokens": 8,
                 "engine": {"type": "openai", "base_url": server.url, "model": "m"},
                 "template": "Rate the educational value of this text from 0 to 5.\n{{ text }}\n"
                             "Answer with 'Score: <n>'."},
            ]})
        run = sf.run(recipe, out=tmp_path / "j")
    assert [(r["text"], r["edu"], r["edu_justification"]) for r in run.data().to_pylist()] == [
        (texts[0], 4.0, "Explains a process.")]
    assert {r["id"]: (r["stage"], r["reason"]) for r in run.rejects().to_pylist()} == {
        "items-000001": ("judge", "judge score 9 outside [0, 5]: 'Score: 9'"),
        "items-000002": ("judge", "unparsable judge answer: 'hard to say'")}


def test_parse_score_rules():
    from smolforge.stages.judges.judge import DEFAULT_SCORE_PATTERN, parse_score

    assert parse_score("Clear and useful.\nEducational score: 4", DEFAULT_SCORE_PATTERN, False) == (
        4.0, "Clear and useful.")
    assert parse_score("score is 2 ... final Score: **3**", DEFAULT_SCORE_PATTERN, False)[0] == 3.0
    assert parse_score("3", DEFAULT_SCORE_PATTERN, False)[0] == 3.0
    assert parse_score("no idea", DEFAULT_SCORE_PATTERN, False)[0] is None
    assert parse_score('{"justification": "ok", "score": 5}', DEFAULT_SCORE_PATTERN, True) == (5.0, "ok")


def test_empty_source_finishes_with_no_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "empty", "stages": [
            {"type": "read", "path": "empty.jsonl", "columns": {"text": "text"}},
            {"type": "filter", "where": "words(text) > 1"},
            {"type": "dedup"},
        ]})
    run = sf.run(recipe, out=tmp_path / "e", allow_empty=True)  # an empty result raises EmptyRun otherwise
    assert run.manifest["status"] == "done"
    assert run.data().num_rows == 0 and run.rejects().num_rows == 0
    assert [(s["name"], s.get("in", 0), s.get("out", 0)) for s in run.manifest["stages"]] == [
        ("read", 0, 0), ("filter", 0, 0), ("dedup", 0, 0)]


def test_all_rejected_finishes_with_every_record_in_the_rejects(tmp_path):
    """A filter that drops everything leaves later stages with empty shards: the run
    still finishes, and each record is in the rejects with the filter's reason."""
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "none", "shard_size": 2, "stages": [
            {"type": "items", "items": ["one", "two", "three"]},
            {"type": "filter", "where": "words(text) > 1"},
            {"type": "dedup"},
        ]})
    run = sf.run(recipe, out=tmp_path / "n", allow_empty=True)
    assert run.manifest["status"] == "done" and run.data().num_rows == 0
    rej = run.rejects().to_pylist()
    assert [(r["id"], r["stage"], r["reason"]) for r in rej] == [
        (f"items-00000{i}", "filter", f"filter 'words(text) > 1' is false (text={t!r})")
        for i, t in enumerate(["one", "two", "three"])]


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


def test_generate_with_two_engines_raw_and_system(tmp_path):
    """Several engines: one record per completion, `<id>.<k>` in engine order, each
    with its own engine in the provenance. `system` becomes the first chat message;
    `raw` sends the bare prompt to the completions endpoint instead."""
    with canned_server(lambda b: f"{b['model']} says hi") as server:
        engines = [{"type": "openai", "base_url": server.url, "model": m} for m in ("a", "b")]
        chat = sf.run(Recipe.from_dict({"name": "two", "stages": [
            {"type": "items", "items": [{"topic": "cats"}]},
            {"type": "generate", "template": "About {{ topic }}.", "system": "You like {{ topic }}.",
             "max_tokens": 4, "temperature": 0.0, "engine": engines}]}), out=tmp_path / "chat")
        bodies = [s.body for s in server.seen]
        server.reset(server.rule)
        raw = sf.run(Recipe.from_dict({"name": "raw", "stages": [
            {"type": "items", "items": [{"topic": "cats"}]},
            {"type": "generate", "template": "About {{ topic }}.", "raw": True,
             "max_tokens": 4, "temperature": 0.0, "engine": engines[0]}]}), out=tmp_path / "raw")
        raw_seen = list(server.seen)
    rows = chat.data().to_pylist()
    assert [(r["id"], r["text"]) for r in rows] == [("items-000000.0", "a says hi"),
                                                    ("items-000000.1", "b says hi")]
    assert [json.loads(r["meta"])["generate"]["model"] for r in rows] == ["a", "b"]
    assert [b["messages"] for b in bodies] == [[
        {"role": "system", "content": "You like cats."},
        {"role": "user", "content": "About cats."}]] * 2
    (req,) = raw_seen
    assert req.body["prompt"] == "About cats." and "messages" not in req.body
    assert [(r["id"], r["text"]) for r in raw.data().to_pylist()] == [("items-000000", "a says hi")]
