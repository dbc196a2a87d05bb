"""Recipe validation: every error names the YAML path (and line) and, for typos,
the closest valid name; nothing runs before the recipe is valid."""

from __future__ import annotations

import pytest
from conftest import smolforge, tiny_recipe, write_recipe

from smolforge.recipe import Recipe, RecipeError, apply_override, load_recipe


def errors_of(tmp_path, data) -> str:
    path = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    return str(e.value)


def test_wrong_type_names_path_and_value(tmp_path):
    data = tiny_recipe()
    data["stages"][1]["max_tokens"] = "lots"
    msg = errors_of(tmp_path, data)
    assert 'stages[1].max_tokens: expected an integer, got "lots"' in msg
    # and the line of the YAML file it is on
    line = next(i for i, ln in enumerate((tmp_path / "r.yaml").read_text().splitlines(), 1) if "lots" in ln)
    assert f"r.yaml:{line}:" in msg


def test_unknown_stage_type_suggests_closest(tmp_path):
    data = tiny_recipe()
    data["stages"][2]["type"] = "filtr"
    msg = errors_of(tmp_path, data)
    assert "stages[2].type: unknown stage type 'filtr' (did you mean 'filter'?)" in msg


def test_unknown_field_suggests_closest(tmp_path):
    data = tiny_recipe()
    data["stages"][1]["temprature"] = 0.5
    msg = errors_of(tmp_path, data)
    assert "stages[1].temprature: unknown field (did you mean 'temperature'?)" in msg


def test_missing_required_field(tmp_path):
    data = tiny_recipe()
    del data["stages"][2]["where"]
    assert "stages[2].where: required field is missing" in errors_of(tmp_path, data)


def test_bad_literal_suggests(tmp_path):
    data = tiny_recipe()
    data["stages"][3]["method"] = "exakt"
    msg = errors_of(tmp_path, data)
    assert "stages[3].method:" in msg and "did you mean 'exact'" in msg


def test_column_used_before_produced(tmp_path):
    data = tiny_recipe()
    data["stages"][2]["where"] = "edu_score >= 3"
    msg = errors_of(tmp_path, data)
    assert "stages[2]: column 'edu_score' is used before any stage produces it" in msg


def test_template_column_typo(tmp_path):
    data = tiny_recipe()
    data["stages"][1]["template"] = "About {{ topik }}."
    assert "column 'topik' is used before any stage produces it (did you mean 'topic'?)" in errors_of(tmp_path, data)


def test_unsafe_filter_expression_rejected(tmp_path):
    data = tiny_recipe()
    data["stages"][2]["where"] = "text.__class__ == 1"
    assert "stages[2].where:" in errors_of(tmp_path, data)


def test_several_problems_reported_together(tmp_path):
    data = tiny_recipe()
    data["stages"][1]["max_tokens"] = "lots"
    data["stages"][3]["colum"] = "text"
    msg = errors_of(tmp_path, data)
    assert "stages[1].max_tokens" in msg and "stages[3].colum" in msg


def test_first_stage_must_be_source(tmp_path):
    data = tiny_recipe()
    data["stages"] = data["stages"][1:]
    assert "stages[0].type: the first stage must be a source" in errors_of(tmp_path, data)


def test_bad_engine_field(tmp_path):
    data = tiny_recipe(engine={"type": "llamacpp", "n_ctx": "big"})
    assert 'engine.n_ctx: expected an integer, got "big"' in errors_of(tmp_path, data)


def test_overrides_set_nested_fields():
    data = tiny_recipe()
    apply_override(data, "stages[1].max_tokens=3")
    apply_override(data, "seed=11")
    apply_override(data, "engine.model=other.gguf")
    assert data["stages"][1]["max_tokens"] == 3 and data["seed"] == 11
    assert data["engine"] == {"model": "other.gguf"}
    with pytest.raises(RecipeError, match=r"stages\[9\]: no such item"):
        apply_override(data, "stages[9].n=2")


def test_recipe_from_python_objects():
    from smolforge.stages.quality.filter import Filter
    from smolforge.stages.sources.read import Items

    r = Recipe(name="py", stages=[Items(items=["a", "b"]), Filter(where="chars(text) > 0")])
    again = Recipe.from_dict(r.model_dump(mode="json"))
    assert again.stages[1].where == "chars(text) > 0"
    assert r.stage_names() == ["items", "filter"]


def test_cli_exit_code_2_and_message(tmp_path):
    data = tiny_recipe()
    data["stages"][1]["max_tokens"] = "lots"
    path = write_recipe(tmp_path / "bad.yaml", data)
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"))
    assert p.returncode == 2
    assert 'stages[1].max_tokens: expected an integer, got "lots"' in p.stderr
    assert not (tmp_path / "run").exists()  # nothing ran


def test_cli_set_override_is_validated_and_blamed_on_the_argument(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--set", "stages[1].n=many")
    assert p.returncode == 2
    assert '--set stages[1].n=many: expected an integer, got "many"' in p.stderr
    assert "r.yaml:" not in p.stderr  # the value is not on any line of the file


def test_builtin_recipe_typo(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'textbooks'"):
        load_recipe("textbook")


RUBRIC_Q = "aspects:\n  relevance: 'Question: {{ q }}\\nAnswer: {{ answer }}\\nScore 0-5:'\n"


def judge_recipe(tmp_path, **judge) -> dict:
    return {"name": "r", "stages": [
        {"type": "items", "items": [{"question": "Why?", "answer": "Because."}]},
        {"type": "judge", "rubric": "my_rubric.yaml", **judge}]}


def test_rubric_file_is_checked_before_anything_runs(tmp_path):
    """A typo in a rubric file's name, a rubric variable no column feeds, a mapping to a
    column that does not exist, a rubric that does not parse: each is a recipe error
    naming the YAML path, not a failure after generation (or every record rejected
    with "'q' is undefined")."""
    (tmp_path / "my_rubric.yaml").write_text(RUBRIC_Q)
    msg = errors_of(tmp_path, judge_recipe(tmp_path, rubric="my_rubrc.yaml"))
    assert "stages[1].rubric: unknown rubric 'my_rubrc.yaml'" in msg
    msg = errors_of(tmp_path, judge_recipe(tmp_path))
    assert ("stages[1].rubric: column 'q' is used before any stage produces it (available: answer, id, meta, "
            "question); a rubric variable: map it to a column with `inputs: {q: COLUMN}`") in msg
    line = next(i for i, ln in enumerate((tmp_path / "r.yaml").read_text().splitlines(), 1) if "my_rubric" in ln)
    assert f"r.yaml:{line}: stages[1].rubric" in msg
    msg = errors_of(tmp_path, judge_recipe(tmp_path, inputs={"q": "questoin"}))
    assert "stages[1].inputs.q: column 'questoin' is used before any stage produces it (did you mean 'question'?)" in msg
    load_recipe(write_recipe(tmp_path / "ok.yaml", judge_recipe(tmp_path, inputs={"q": "question"})))
    (tmp_path / "my_rubric.yaml").write_text("aspect:\n  relevance: x\n")
    msg = errors_of(tmp_path, judge_recipe(tmp_path))
    assert "stages[1].rubric: rubric file 'my_rubric.yaml': aspects: Field required" in msg
    (tmp_path / "my_rubric.yaml").write_text("aspects:\n  relevance: '{{ q '\n")
    assert "stages[1].rubric: rubric file 'my_rubric.yaml': template line 1" in errors_of(tmp_path, judge_recipe(tmp_path))
    # `rate` reads a rubric file too
    rate = {"name": "r", "stages": [{"type": "items", "items": [{"prompt": "p", "candidates": []}]},
                                    {"type": "rate", "rubric": "uf.yaml"}]}
    assert "stages[1].rubric: unknown rubric 'uf.yaml'" in errors_of(tmp_path, rate)
    rate["stages"][1].update(rubric="ultrafeedback", aspects=["helpfulnes"])
    assert "stages[1].aspects: rubric 'ultrafeedback' has no aspect(s) ['helpfulnes']" in errors_of(tmp_path, rate)
    del rate["stages"][1]["aspects"]
    rate["stages"][0]["items"] = [{"instruction": "p", "candidates": []}]
    msg = errors_of(tmp_path, rate)  # a missing column of `rate` is not blamed on its rubric
    assert "stages[1]: column 'prompt' is used before any stage produces it" in msg and "inputs" not in msg


def test_bad_set_on_target_names_the_set(tmp_path):
    data = tiny_recipe()
    data["target"] = {"records": 4, "max_candidates": 10}
    path = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["target.max_candidates=2"])
    assert str(e.value).startswith("--set target.max_candidates=2: target: value error, max_candidates (2) "
                                   "must be at least records (4)")
