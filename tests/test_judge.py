"""Judges: built-in rubrics, custom rubric files, several aspects and several
engines, on the real bundled model (few tokens)."""

from __future__ import annotations

import json

import pytest
from conftest import write_recipe

import smolforge as sf
from smolforge.recipe import Recipe, RecipeError, load_recipe
from smolforge.stages.judge import DEFAULT_SCORE_PATTERN, load_rubric, parse_score

DOCS = ["Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
        "BUY NOW cheap watches best price click here"]


def test_builtin_rubrics_load():
    edu = load_rubric("fineweb-edu")
    assert (edu.min_score, edu.max_score, edu.max_chars) == (0, 5, 2000)
    assert "Educational score: <total points>" in edu.aspects["educational_value"]
    uf = load_rubric("ultrafeedback")
    assert list(uf.aspects) == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert (uf.min_score, uf.max_score) == (1, 5)


def test_unknown_rubric_suggests(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"name": "j", "stages": [
        {"type": "items", "items": DOCS}, {"type": "judge", "rubric": "fineweb_edu"}]})
    with pytest.raises(RecipeError, match="stages\\[1\\].rubric: .*did you mean 'fineweb-edu'"):
        load_recipe(path)


def test_rubric_inputs_are_checked_against_columns(tmp_path):
    stages = [{"type": "items", "items": [{"prompt": "Say hi", "text": "hi"}]},
              {"type": "judge", "rubric": "ultrafeedback"}]
    with pytest.raises(RecipeError, match="column 'instruction' is used before any stage produces it"):
        Recipe.from_dict({"name": "j", "stages": stages})
    stages[1]["inputs"] = {"instruction": "prompt", "response": "text"}
    Recipe.from_dict({"name": "j", "stages": stages})  # valid now


def test_parse_score_patterns():
    assert parse_score("Fine.\nRating: 4", load_rubric("ultrafeedback").score_pattern, False) == (4.0, "Fine.")
    assert parse_score("Educational score: 6", DEFAULT_SCORE_PATTERN, False)[0] == 6.0


def test_fineweb_edu_structured_on_real_model(tmp_path):
    """JSON-constrained answers always parse; every score is in range."""
    recipe = Recipe.from_dict({"name": "edu", "stages": [
        {"type": "items", "items": DOCS},
        {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "structured": True, "max_tokens": 48},
    ]})
    run = sf.run(recipe, out=tmp_path / "edu")
    rows = run.data().to_pylist()
    rejects = run.rejects().to_pylist()
    assert len(rows) + len(rejects) == 2
    for r in rows:
        assert r["edu"] in {0, 1, 2, 3, 4, 5} and r["edu_spread"] == 0
        meta = json.loads(r["meta"])["judge"]
        assert meta["judges"][0]["aspect"] == "educational_value"
    for r in rejects:  # a JSON answer cut off by max_tokens is the only way to fail
        assert r["reason"].startswith("unparsable judge answer")


def test_custom_rubric_file_several_aspects_and_engines(tmp_path):
    (tmp_path / "rubric.yaml").write_text(
        "min_score: 1\nmax_score: 3\naspects:\n"
        "  clarity: 'Rate clarity 1-3 of: {{ text }}. Answer \"Score: <n>\".'\n"
        "  accuracy: 'Rate accuracy 1-3 of: {{ text }}. Answer \"Score: <n>\".'\n")
    path = write_recipe(tmp_path / "r.yaml", {"name": "multi", "stages": [
        {"type": "items", "items": DOCS[:1]},
        {"type": "judge", "rubric": "rubric.yaml", "column": "q", "max_tokens": 12, "structured": True,
         "engine": [{"type": "llamacpp", "n_ctx": 512}, {"type": "llamacpp", "n_ctx": 1024}]},
    ]})
    run = sf.run(path, out=tmp_path / "multi")
    rows, rejects = run.data().to_pylist(), run.rejects().to_pylist()
    assert len(rows) + len(rejects) == 1
    if rows:
        r = rows[0]
        assert r["q"] == pytest.approx((r["q_clarity"] + r["q_accuracy"]) / 2)
        assert set(json.loads(r["q_justification"])) == {"clarity", "accuracy"}
        judges = json.loads(r["meta"])["judge"]["judges"]
        assert len(judges) == 4  # 2 aspects x 2 engines
        assert r["q_spread"] >= 0
    else:
        assert "(clarity)" in rejects[0]["reason"] or "(accuracy)" in rejects[0]["reason"]


def test_sample_rate_judges_a_deterministic_share(tmp_path):
    """Unjudged records pass with an empty score (no LLM call for them)."""
    items = [f"Fact {i}: water boils at 100 degrees Celsius at sea level." for i in range(12)]
    recipe = {"name": "sample", "seed": 3, "stages": [
        {"type": "items", "items": items},
        {"type": "judge", "template": "Rate 0-5: {{ text }}\nScore:", "column": "s", "max_tokens": 4,
         "sample_rate": 0.25}]}
    run = sf.run(Recipe.from_dict(recipe), out=tmp_path / "s")
    rows = run.data().to_pylist()
    judged = [r for r in rows if r["s"] is not None] + run.rejects().to_pylist()
    unjudged = [r for r in rows if r["s"] is None]
    assert len(judged) + len(unjudged) == 12
    assert 1 <= len(judged) <= 7 and unjudged
    assert run.manifest["stages"][1]["generated"] == len(judged)
    again = sf.run(Recipe.from_dict(recipe), out=tmp_path / "s2")
    assert [r["id"] for r in again.data().to_pylist() if r["s"] is None] == [r["id"] for r in unjudged]
