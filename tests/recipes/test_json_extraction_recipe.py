"""The built-in `json_extraction` recipe end to end through the CLI on the bundled
model (a few texts): generate under the recipe's JSON schema (a llama.cpp grammar)
-> verify_json. Every kept record is checked again with jsonschema directly; every
dropped one must carry a verifier reason. Then the same recipe with a max_tokens too
small for the object: every record is dropped as truncated, not as "invalid JSON"."""

from __future__ import annotations

import json

import jsonschema
import pyarrow.parquet as pq
import pytest
from conftest import smolforge

from smolforge.recipe import BUILTIN_DIR, load_recipe

SCHEMA = json.loads((BUILTIN_DIR / "json_extraction" / "schema.json").read_text())


def test_recipe_loads_and_names_its_files():
    r = load_recipe("json_extraction")
    gen, ver = r.stages[1], r.stages[2]
    assert gen.json_schema == ver.json_schema == "json_extraction/schema.json"
    assert ver.column == gen.output == "json" and ver.output == "data"


@pytest.mark.slow
def test_json_extraction_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = smolforge("run", "json_extraction", "--out", str(out), "--limit", "3", "--quiet",
                  "--allow-empty", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done"
    verify = manifest["stages"][-1]
    assert verify["in"] == 3 and verify["out"] + verify["rejected"] == 3
    assert verify["valid"] == verify["out"]
    rows = pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist() if verify["out"] else []
    check = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for row in rows:
        obj = json.loads(row["json"])
        assert check.is_valid(obj), row["json"]
        assert row["data"]["name"] == obj["name"] and row["data"]["open_days"] == obj["open_days"]
        prov = json.loads(row["meta"])["generate"]
        assert prov["json_mode"] == "grammar" and prov["finish_reason"] == "stop"
    rejects = pq.read_table(out / "rejects" / "rejects.parquet").to_pylist()
    assert len(rejects) == verify["rejected"]
    for rej in rejects:  # what the grammar cannot enforce (uniqueItems ...) is caught here
        assert rej["stage"] == "verify_json"
        assert rej["reason"].startswith(("schema: $", "truncated: ")), rej["reason"]
        rec = json.loads(rej["record"])
        if rej["reason"].startswith("schema: "):
            assert not check.is_valid(json.loads(rec["json"]))


@pytest.mark.slow
def test_json_extraction_truncated_answers_say_so(tmp_path):
    out = tmp_path / "cut"
    r = smolforge("run", "json_extraction", "--out", str(out), "--limit", "2", "--quiet",
                  "--set", "stages[1].max_tokens=6", cwd=tmp_path)
    assert r.returncode == 3, r.stderr  # nothing kept: the documented "empty" exit code
    rejects = pq.read_table(out / "rejects" / "rejects.parquet").to_pylist()
    assert len(rejects) == 2
    for rej in rejects:
        assert rej["reason"].startswith(
            "truncated: generation stopped at max_tokens (6 tokens, max_tokens 6)"), rej["reason"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][-1]["truncated"] == 2
