"""The CLI as a user meets it: built-in recipes, dry runs, JSON output, errors."""

from __future__ import annotations

import json

from conftest import smolforge, tiny_recipe, write_recipe


def test_recipes_lists_builtins():
    p = smolforge("recipes", "--json")
    assert p.returncode == 0, p.stderr
    names = {r["name"]: r["description"] for r in json.loads(p.stdout)}
    assert "textbooks" in names and "Cosmopedia" in names["textbooks"]


def test_textbooks_recipe_is_valid_and_diverse():
    from smolforge.context import EnginePool, StageContext
    from smolforge.recipe import load_recipe

    r = load_recipe("textbooks")
    ctx = StageContext(recipe_name=r.name, recipe_dir=r.base_dir, seed=r.seed, default_engine=r.engine,
                       pool=EnginePool(), cache=None, stage_name="combine")
    seeds = r.stages[0]
    topics = [t for t in ctx.resolve_path(seeds.topics).read_text().splitlines() if t and not t.startswith("#")]
    assert len(topics) >= 60
    assert set(seeds.lists["audience"]) == {"young children", "middle school students", "college students", "professionals"}
    assert {"textbook (academic)", "blog post", "wikiHow", "children's story"} <= set(seeds.lists["style"])
    assert [s.type for s in r.stages] == ["seeds", "generate", "text_quality", "judge", "filter", "dedup"]


def test_dry_run_estimates_without_writing(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert [s["stage"] for s in report["stages"]] == ["items", "generate", "filter", "dedup"]
    gen = report["stages"][1]
    assert gen["in"] == 3 and gen["tokens_per_record"] > 0 and gen["seconds_per_record"] > 0
    est = report["estimate"]
    assert est["records"] == 7 and est["seconds"] > 0 and est["completion_tokens"] > 0
    assert not (tmp_path / "run").exists()


def test_run_json_and_limit(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--limit", "3", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["status"] == "done" and s["stages"][0]["out"] == 3
    assert s["data"]["rows"] + sum(g["count"] for g in s["rejects"]) == 3


def test_malformed_input_exit_1_names_file_line_and_keeps_nothing_half_done(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"text": \n')
    path = write_recipe(tmp_path / "r.yaml", {"name": "bad", "stages": [
        {"type": "read", "path": "in.jsonl"}, {"type": "filter", "where": "chars(text) > 0"}]})
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"))
    assert p.returncode == 1
    assert "in.jsonl:2: invalid JSON" in p.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "in.jsonl:2" in manifest["attempts"][-1]["error"]


def test_runtime_column_check_for_read_without_mapping(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"body": "a"}\n')
    path = write_recipe(tmp_path / "r.yaml", {"name": "cols", "stages": [
        {"type": "read", "path": "in.jsonl"}, {"type": "filter", "where": "chars(text) > 0"}]})
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"))
    assert p.returncode == 2
    assert "stages[1]: column 'text' is used before any stage produces it" in p.stderr
