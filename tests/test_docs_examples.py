"""The examples in README and docs/ are what the code does: README's recipe snippet
is the shipped `textbooks` recipe, abridged (every field it shows has the shipped
value); the rubric file of docs/judges.md and the `combine` recipe of docs/recipes.md
load and behave as those pages say. No model: rubrics and sources only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, write_recipe

import smolforge as sf
from smolforge.recipe import RecipeError, load_recipe
from smolforge.stages.judges.judge import load_rubric


def _blocks(doc: str, lang: str = "yaml") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / doc).read_text(), re.S)


def _subset(shown: object, shipped: object, where: str) -> list[str]:
    """Where `shown` differs from `shipped` (fields `shown` leaves out are fine)."""
    if isinstance(shown, dict) and isinstance(shipped, dict):
        return [p for k, v in shown.items()
                for p in (_subset(v, shipped[k], f"{where}.{k}") if k in shipped else [f"{where}.{k}: not in the recipe"])]
    if isinstance(shown, list) and isinstance(shipped, list) and shown and isinstance(shown[0], dict):
        if len(shown) != len(shipped):
            return [f"{where}: {len(shown)} items, the recipe has {len(shipped)}"]
        return [p for k, (a, b) in enumerate(zip(shown, shipped)) for p in _subset(a, b, f"{where}[{k}]")]
    return [] if shown == shipped else [f"{where}: README {shown!r}, recipe {shipped!r}"]


def test_readme_textbooks_snippet_matches_the_shipped_recipe():
    blocks = [b for b in _blocks("README.md") if b.startswith("name: textbooks")]
    assert len(blocks) == 1
    shown = yaml.safe_load(blocks[0])
    shipped = yaml.safe_load((ROOT / "src" / "smolforge" / "recipes" / "textbooks.yaml").read_text())
    assert [s["type"] for s in shown["stages"]] == [s["type"] for s in shipped["stages"]]
    assert _subset(shown, shipped, "textbooks") == []


@pytest.fixture()
def rubric_example(tmp_path: Path) -> Path:
    """docs/judges.md's example rubric file and judge stage, in a recipe folder."""
    rubric = next(b for b in _blocks("docs/judges.md") if b.startswith("description: Is the answer correct"))
    stage = next(b for b in _blocks("docs/judges.md") if "rubric: my_rubric.yaml" in b)
    (tmp_path / "my_rubric.yaml").write_text(rubric)
    return write_recipe(tmp_path / "r.yaml", {"name": "rubric-doc", "stages": [
        {"type": "items", "items": [{"q": "What is 2+2?", "answer": "4"}]}, *yaml.safe_load(stage)]})


def test_judges_md_rubric_example_loads_as_documented(rubric_example: Path):
    judge = load_recipe(str(rubric_example)).stages[1]
    assert judge.requires() == {"q", "answer"}  # `instruction` mapped by `inputs:`
    assert {"quality", "quality_correct", "quality_complete", "quality_off_topic",
            "quality_entropy"} <= judge.provides()
    rubric = load_rubric("my_rubric.yaml", str(rubric_example.parent))
    assert (rubric.min_score, rubric.max_score, rubric.max_chars, rubric.criteria_max_chars) == (1, 5, 1500, 600)
    assert rubric.criteria["off_topic"].reverse and not rubric.criteria["correct"].reverse
    assert rubric.criteria_score({"correct": 1.0, "complete": 0.5, "off_topic": 0.2}) == pytest.approx(1.55)
    # the error the page quotes, for a misspelt field
    path = rubric_example.parent / "my_rubric.yaml"
    path.write_text(path.read_text().replace("max_chars: 1500", "max_char: 1500"))
    with pytest.raises(RecipeError) as e:
        load_recipe(str(rubric_example))
    said = "stages[1].rubric: rubric file 'my_rubric.yaml': max_char: Extra inputs are not permitted"
    assert re.search(r"r\.yaml:\d+: " + re.escape(said), str(e.value))
    assert said in " ".join((ROOT / "docs" / "judges.md").read_text().split())


def test_recipes_md_combine_example_gives_what_it_says(tmp_path: Path):
    block = next(b for b in _blocks("docs/recipes.md") if "type: combine" in b)
    recipe = yaml.safe_load(block)
    recipe["stages"] = recipe["stages"][:1]  # the source alone: no model
    (tmp_path / "topics.txt").write_text("# topics\nphotosynthesis\n\n  tides  \nvolcanoes\n")
    run = sf.run(str(write_recipe(tmp_path / "c.yaml", {"name": "combos", **recipe})), out=tmp_path / "run")
    rows = run.data().to_pylist()
    assert len(rows) == 5 and len({(r["topic"], r["audience"], r["level"]) for r in rows}) == 5
    assert {r["topic"] for r in rows} <= {"photosynthesis", "tides", "volcanoes"}
    first = rows[0]
    assert {k: first[k] for k in ("topic", "audience", "level", "id")} == {
        "topic": "volcanoes", "audience": "children", "level": 1, "id": "combine-000000"}
    assert json.loads(first["meta"])["knobs"] == {"topic": "volcanoes", "audience": "children", "level": 1}
