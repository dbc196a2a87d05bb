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
    from smolforge.stages.filters import Filter
    from smolforge.stages.sources import Items

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
