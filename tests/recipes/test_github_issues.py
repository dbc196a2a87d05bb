"""The github_issues recipe: fields first, text second. Its consistency check on planted
complaints, its target against its own schema, and a tiny real run on the bundled
model in which every kept record's reference is exactly the sampled fields."""

from __future__ import annotations

import json

import jsonschema
import pyarrow.parquet as pq
import pytest
from conftest import smolforge

from smolforge.recipe import BUILTIN_DIR, load_recipe
from smolforge.stages.quality.filter import Filter
from smolforge.templates import render

FOLDER = BUILTIN_DIR / "github_issues"
FIELDS = ("type", "priority", "component", "product_area", "estimated_fix_time")


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("github_issues")


def problems() -> list[dict]:
    return [json.loads(line) for line in (FOLDER / "problems.jsonl").read_text().splitlines()]


def test_problems_fit_the_schema_and_target(recipe):
    schema = json.loads((FOLDER / "issue.schema.json").read_text())
    target = (FOLDER / "target.j2").read_text()
    ps = problems()
    assert len({p["title"] for p in ps}) == len(ps) >= 40
    for p in ps:
        for priority in ("low", "critical"):
            out = json.loads(render(target, {**p, "priority": priority}))
            jsonschema.validate(out, schema)
            assert out == {k: ({**p, "priority": priority})[k] for k in ("title", *FIELDS)}
    # Every problem's consistency cue matches its own title (the text the teacher paraphrases).
    import re2

    for p in ps:
        assert re2.search(p["cue"], p["title"].lower()), p
    # The student's prompt lists every legal value of every field.
    task = (FOLDER / "task.j2").read_text()
    for name in ("type", "priority", "component", "product_area", "estimated_fix_time"):
        for v in schema["properties"][name]["enum"]:
            assert v in task, (name, v)


def test_consistency_check_on_planted_complaints(recipe):
    (stage,) = [s for s in recipe.stages if getattr(s, "name", None) == "consistent"]
    f = Filter(where=stage.where)
    login = {"cue": "log(ged|s)? ?(out|in)|sign(ed)? ?(out|in)|session"}
    ok = [("critical", "Hi, I keep getting logged out every few minutes, this blocks my work, please help asap"),
          ("low", "small thing: my session ends now and then, no rush at all"),
          ("medium", "Annoying: I get logged out a lot. My workaround is to keep two tabs open.")]
    bad = [("critical", "I keep getting logged out every few minutes, whatever"),  # no urgency
           ("low", "Priority: low. Component: auth. I get logged out."),  # copies field names
           ("high", "The export button is broken and it is important"),  # not this problem
           ("medium", "logged out")]  # too short
    for pr, text in ok:
        assert f.check({**login, "priority": pr, "complaint": text}) is None, text
    for pr, text in bad:
        reason = f.check({**login, "priority": pr, "complaint": text})
        assert reason and reason.startswith("filter"), text


@pytest.mark.slow
def test_tiny_run_labels_by_construction(tmp_path):
    out = tmp_path / "gi"
    r = smolforge("run", "github_issues", "--out", str(out), "--limit", "4", "--quiet", "--allow-empty",
                  "--set", "stages[1].per_record=2", "--set", "stages[2].max_tokens=60", timeout=480)
    assert r.returncode == 0, r.stderr
    rows = pq.read_table(next((out / "data").glob("*.parquet"))).to_pylist()
    rejects = pq.read_table(out / "rejects" / "rejects.parquet").to_pylist()
    assert len(rows) + len(rejects) == 8  # 4 problems x 2 sampled field sets, none lost
    for rej in rejects:
        assert rej["reason"]
    by_title = {p["title"]: p for p in problems()}
    for row in rows:
        p = by_title[row["title"]]
        assert row["reference"] == {"title": p["title"], "priority": row["priority"],
                                    **{k: p[k] for k in FIELDS if k != "priority"}}
        assert json.loads(row["completion"]) == row["reference"]
        assert row["complaint"] in row["prompt"] and row["split"] in ("train", "test")
        low = row["complaint"].lower()
        assert "priority" not in low and "component" not in low
