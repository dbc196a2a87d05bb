"""A recipe cannot read files outside its folder, hang a run or exhaust memory
(issue #6 items 6, 7, 8 and 11): each bad input stops before anything runs with
exit 2 and the YAML path (or the `--set` argument) it came from."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import smolforge, write_recipe
from test_classify import classifier_recipe

import smolforge as sf
from smolforge.context import EnginePool, StageContext
from smolforge.recipe import Recipe, RecipeError, load_recipe
from smolforge.stages.base import Reject
from smolforge.stages.sources.read import MAX_COMBINATIONS, Read

OUTSIDE = "is outside the recipe folder and the working directory; add it to allow_paths or pass --allow-path"


def line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def project(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/proj/recipes (the recipe's folder and the cwd) and tmp/outside (neither)."""
    recipes, outside = tmp_path / "proj" / "recipes", tmp_path / "outside"
    recipes.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET line\n")
    (outside / "prompt.j2").write_text("From outside: {{ text }}")
    return recipes, outside


def items_then(stage: dict, **top) -> dict:
    return {"name": "safety", "stages": [{"type": "items", "items": ["hello world"]}, stage], **top}


# ---------------------------------------------------------------- item 6: paths


def test_template_file_escaping_with_dotdot_is_refused_naming_the_yaml_line(tmp_path):
    recipes, _ = project(tmp_path)
    path = write_recipe(recipes / "r.yaml", items_then(
        {"type": "generate", "template_file": "../../../../../../../../etc/passwd", "max_tokens": 4}))
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=recipes)
    assert p.returncode == 2, p.stderr
    line = line_of(path, "template_file")
    assert (f"r.yaml:{line}: stages[1].template_file: '../../../../../../../../etc/passwd' {OUTSIDE}"
            in p.stderr)
    assert not (tmp_path / "run").exists()  # refused before anything ran


@pytest.mark.parametrize("stage,loc", [
    ({"type": "render", "template_file": "ABS/prompt.j2", "output": "p"}, "stages[1].template_file"),
    ({"type": "vary", "lists": {"topic": "ABS/secret.txt"}}, "stages[1].lists.topic"),
    ({"type": "decontaminate", "benchmarks": [{"path": "ABS/secret.txt", "fields": ["text"]}]},
     "stages[1].benchmarks[0].path"),
    ({"type": "judge", "rubric": "ABS/secret.txt", "column": "s"}, "stages[1].rubric"),
    ({"type": "classify", "models": ["ABS/model.npz"]}, "stages[1].models[0]"),
])
def test_every_path_field_is_checked_at_load(tmp_path, stage, loc):
    recipes, outside = project(tmp_path)
    stage = json.loads(json.dumps(stage).replace("ABS", str(outside)))
    path = write_recipe(recipes / "r.yaml", items_then(stage))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert re.search(rf"r\.yaml:\d+: {re.escape(loc)}: '{re.escape(str(outside))}/[\w.]+' {OUTSIDE}",
                     str(e.value)), str(e.value)
    # the same folder allowed in the recipe: that problem is gone
    allowed = write_recipe(recipes / "ok.yaml", items_then(stage, allow_paths=[str(outside)]))
    try:
        load_recipe(allowed)
    except RecipeError as err:
        assert OUTSIDE not in str(err)


def test_read_glob_matching_a_symlink_out_of_the_folder_is_refused(tmp_path):
    recipes, outside = project(tmp_path)
    (recipes / "docs").mkdir()
    (recipes / "docs" / "ok.txt").write_text("fine")
    os.symlink(outside / "secret.txt", recipes / "docs" / "leak.txt")
    os.symlink(outside, recipes / "linked")  # a folder link: `linked/secret.txt` escapes too
    path = write_recipe(recipes / "r.yaml", {"name": "s", "stages": [
        {"type": "read", "path": ["docs/*.txt", "linked/secret.txt"]}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=recipes)
    assert p.returncode == 2, p.stderr
    line = line_of(path, "docs/*.txt")
    leak, real = str(recipes / "docs" / "leak.txt"), str(outside / "secret.txt")
    assert f"r.yaml:{line}: stages[0].path[0]: '{leak}' (matched by 'docs/*.txt') -> '{real}' {OUTSIDE}" in p.stderr
    assert f"stages[0].path[1]: 'linked/secret.txt' -> '{real}' {OUTSIDE}" in p.stderr
    assert "TOP SECRET" not in p.stderr + p.stdout


def test_allow_paths_in_the_recipe_lets_a_run_read_that_folder(tmp_path):
    recipes, outside = project(tmp_path)
    write_recipe(recipes / "r.yaml", {"name": "s", "allow_paths": ["../../outside"], "stages": [
        {"type": "read", "path": str(outside / "secret.txt"), "text_unit": "line"},
        {"type": "render", "template_file": str(outside / "prompt.j2"), "output": "prompt"}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), "--quiet", cwd=recipes)
    assert p.returncode == 0, p.stderr
    rows = pq.read_table(tmp_path / "run" / "data").to_pylist()
    assert [r["prompt"] for r in rows] == ["From outside: TOP SECRET line"]


def test_cli_allow_path_flag_allows_a_folder(tmp_path):
    recipes, outside = project(tmp_path)
    write_recipe(recipes / "r.yaml", items_then(
        {"type": "render", "template_file": str(outside / "prompt.j2"), "output": "prompt"}))
    refused = smolforge("run", "r.yaml", "--out", str(tmp_path / "no"), cwd=recipes)
    assert refused.returncode == 2 and OUTSIDE in refused.stderr
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), "--quiet",
                  "--allow-path", str(outside), cwd=recipes)
    assert p.returncode == 0, p.stderr
    rows = pq.read_table(tmp_path / "run" / "data").to_pylist()
    assert [r["prompt"] for r in rows] == ["From outside: hello world"]


def test_python_api_allow_paths_and_cwd_rule(tmp_path, monkeypatch):
    recipes, outside = project(tmp_path)
    path = write_recipe(recipes / "r.yaml", items_then(
        {"type": "render", "template_file": str(outside / "prompt.j2"), "output": "prompt"}))
    with pytest.raises(RecipeError, match="stages\\[1\\].template_file: .* is outside"):
        load_recipe(path)
    assert load_recipe(path, allow_paths=[outside]).stages[1].template_file.endswith("prompt.j2")
    monkeypatch.chdir(outside)  # the working directory is allowed too
    run = sf.run(path, out=tmp_path / "run")
    assert [r["prompt"] for r in run.data().to_pylist()] == ["From outside: hello world"]


def test_builtin_templates_stay_readable_from_a_recipe_elsewhere(tmp_path):
    """A user recipe naming a template shipped with smolforge (the package is allowed)."""
    recipes, _ = project(tmp_path)
    path = write_recipe(recipes / "r.yaml", {"name": "si", "stages": [
        {"type": "items", "items": [{"instruction": "Name a colour.", "output": "Red"}]},
        {"type": "self_instruct", "template_file": "self_instruct/generate.j2", "max_tokens": 4}]})
    assert load_recipe(path).stages[1].template_file == "self_instruct/generate.j2"


def test_a_symlink_planted_after_loading_is_caught_when_the_file_is_opened(tmp_path):
    recipes, outside = project(tmp_path)
    recipe = Recipe.from_dict({"name": "s", "stages": [{"type": "read", "path": "data/*.txt"}]},
                              base_dir=recipes)
    ctx = StageContext(recipe_name="s", recipe_dir=recipes, seed=0, default_engine="llamacpp",
                       pool=EnginePool(), cache=None, allowed_roots=recipe.allowed_roots)
    (recipes / "data").mkdir()
    os.symlink(outside / "secret.txt", recipes / "data" / "x.txt")
    with pytest.raises(RecipeError, match=f"-> '{re.escape(str(outside))}/secret.txt' is outside"):
        list(Read(path="data/*.txt").read(ctx))
    with pytest.raises(RecipeError, match="'data/x.txt' -> .* is outside"):
        ctx.resolve_path("data/x.txt")
    assert ctx.resolve_path("data/other.txt") == recipes / "data" / "other.txt"


# ---------------------------------------------------------------- item 7: bad input


def test_invalid_utf8_line_is_rejected_with_file_and_line(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"text": "good one"}\n{"text": "bad \xff byte"}\n{"text": "good two"}\n')
    write_recipe(tmp_path / "r.yaml", {"name": "u", "stages": [
        {"type": "read", "path": "in.jsonl", "on_error": "reject"}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert [r["text"] for r in pq.read_table(tmp_path / "run" / "data").to_pylist()] == ["good one", "good two"]
    rejects = pq.read_table(tmp_path / "run" / "rejects" / "rejects.parquet").to_pylist()
    assert [r["reason"] for r in rejects] == [
        f"{data}:2: invalid UTF-8 (byte 0xff at column 15: invalid start byte)"]


def test_invalid_utf8_without_reject_stops_with_file_line_not_a_byte_offset(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "ok"}\n{"text": "\xc3("}\n')
    write_recipe(tmp_path / "r.yaml", {"name": "u", "stages": [{"type": "read", "path": "in.jsonl"}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 1
    assert "in.jsonl:3: invalid UTF-8 (byte 0xc3 at column 11: invalid continuation byte)" in p.stderr
    assert "at byte" not in p.stderr


def test_catastrophic_regex_returns_at_once_through_the_cli(tmp_path):
    """`(a+)+$` on 40 a's and a `b` backtracks ~2**40 steps in Python's re; RE2 is linear."""
    write_recipe(tmp_path / "r.yaml", {"name": "re", "stages": [
        {"type": "items", "items": ["a" * 40 + "b", "a" * 40]},
        {"type": "filter", "where": "matches(text, '(a+)+$')"}]})
    start = time.monotonic()
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [r["text"] for r in pq.read_table(tmp_path / "run" / "data").to_pylist()] == ["a" * 40]
    reasons = [r["reason"] for r in pq.read_table(tmp_path / "run" / "rejects" / "rejects.parquet").to_pylist()]
    assert reasons == [f"filter \"matches(text, '(a+)+$')\" is false (text='{'a' * 36}...)"]
    assert time.monotonic() - start < 110  # (generous: the point is that it returns)


def test_regex_re2_cannot_run_is_a_recipe_error_naming_the_field(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", items_then({"type": "filter", "where": "matches(text, '(?=a)b')"}))
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2
    assert (f"r.yaml:{line_of(path, 'where')}: stages[1].where: value error, regex '(?=a)b' is not "
            "supported: invalid perl operator: (?=") in p.stderr


@pytest.mark.parametrize("where,fragment", [
    ("not " * 100_000 + "x", "is nested too deeply"),
    ("x + " * 100_000 + "x", "is nested too deeply"),
    ("-" * 200 + "x", "is nested more than 100 levels deep"),
])
def test_deeply_nested_where_is_exit_2_naming_the_field(tmp_path, where, fragment):
    write_recipe(tmp_path / "r.yaml", items_then({"type": "filter", "where": where}))
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-500:]
    assert "stages[1].where: value error, expression" in p.stderr and fragment in p.stderr
    assert "RecursionError" not in p.stderr and "MemoryError" not in p.stderr


def test_yaml_nested_100000_deep_is_exit_2_naming_the_path(tmp_path):
    text = yaml.safe_dump(items_then({"type": "filter", "where": "x"}), sort_keys=False)
    text = text.replace("where: x", "where: " + "[" * 100_000 + "]" * 100_000)
    (tmp_path / "r.yaml").write_text(text)
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-500:]
    line = line_of(tmp_path / "r.yaml", "where")
    assert f"r.yaml:{line}: stages[1].where{'[0]' * 61}: nested more than 64 levels deep" in p.stderr


def test_combine_count_too_large_is_exit_2_naming_the_field(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"name": "c", "stages": [
        {"type": "combine", "lists": {"a": list(range(100)), "b": list(range(100))}, "count": 10**12}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2
    assert (f"r.yaml:{line_of(path, 'count')}: stages[0].count: input should be less than or equal to "
            f"{MAX_COMBINATIONS}, got 1000000000000") in p.stderr


def test_combine_of_every_combination_too_many_is_exit_2(tmp_path):
    big = [f"v{i}" for i in range(1000)]
    write_recipe(tmp_path / "r.yaml", {"name": "c", "stages": [
        {"type": "combine", "lists": {"a": big, "b": big, "c": big}}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2
    assert "stages[0]: value error, 1000000000 combinations are more than a run can produce" in p.stderr
    # lists from files are only counted when read: the same error, at run time
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text("\n".join(big))
    write_recipe(tmp_path / "f.yaml", {"name": "c", "stages": [
        {"type": "combine", "lists": {"a": "a.txt", "b": "b.txt", "c": "c.txt"}}]})
    p = smolforge("run", "f.yaml", "--out", str(tmp_path / "run2"), cwd=tmp_path)
    assert p.returncode == 2
    assert "combine: 1000000000 combinations are more than a run can produce" in p.stderr


def test_bad_set_value_names_the_set_argument(tmp_path):
    write_recipe(tmp_path / "r.yaml", {"name": "c", "stages": [
        {"type": "combine", "lists": {"a": [1, 2, 3]}, "count": 2}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), "--set", "stages[0].count=lots",
                  "--set", "stages[0].cuont=3", "--set", "stages[0].lists={a: [1", cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert lines[0] == "recipe error"
    assert lines[1].startswith("  --set stages[0].lists={a: [1: invalid YAML value: ")
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), "--set", "stages[0].count=lots",
                  "--set", "stages[0].cuont=3", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.splitlines()[1:] == [
        '  --set stages[0].count=lots: expected an integer, got "lots"',
        "  --set stages[0].cuont=3: unknown field (did you mean 'count'?)",
    ]


# ---------------------------------------------------------------- item 8: template files


def test_template_file_typo_is_caught_before_the_run_with_did_you_mean(tmp_path):
    (tmp_path / "prompt.j2").write_text("Answer the question:\n{{ questoin }}\n")
    path = write_recipe(tmp_path / "r.yaml", {"name": "t", "stages": [
        {"type": "items", "items": [{"question": "Why is the sky blue?"}]},
        {"type": "generate", "template_file": "prompt.j2", "max_tokens": 4}]})
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert (f"r.yaml:{line_of(path, 'template_file')}: stages[1].template_file: column 'questoin' is "
            "used before any stage produces it (did you mean 'question'?)") in p.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- item 11: API overrides


def test_python_run_applies_overrides_to_a_recipe_object(tmp_path):
    recipe = Recipe.from_dict({"name": "o", "shard_size": 2, "stages": [
        {"type": "items", "items": ["a", "bb", "ccc", "dddd"]},
        {"type": "filter", "where": "chars(text) >= 1"}]})
    run = sf.run(recipe, out=tmp_path / "run", overrides=["stages[1].where=chars(text) >= 3"])
    assert [r["text"] for r in run.data().to_pylist()] == ["ccc", "dddd"]
    assert recipe.stages[1].where == "chars(text) >= 1"  # the object itself is unchanged
    as_dict = sf.run({"name": "o", "stages": [{"type": "items", "items": ["a", "bb"]}]},
                     out=tmp_path / "d", overrides=["stages[0].items=[x, yy, zzz]"])
    assert [r["text"] for r in as_dict.data().to_pylist()] == ["x", "yy", "zzz"]
    with pytest.raises(RecipeError, match=r"--set stages\[1\].where=wrods\(text\) > 1: value error, "
                                          r".*did you mean words\(\)"):
        sf.run(recipe, out=tmp_path / "bad", overrides=["stages[1].where=wrods(text) > 1"])
    assert not (tmp_path / "bad").exists()


def test_read_rejects_invalid_utf8_in_csv_and_text(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"text,n\nfine,1\nbro\xffken,2\nalso fine,3\n")
    (tmp_path / "t.txt").write_bytes(b"line one\nline \xfe two\nline three\n")
    ctx = StageContext(recipe_name="u", recipe_dir=tmp_path, seed=0, default_engine="llamacpp",
                       pool=EnginePool(), cache=None)
    out = list(Read(path="t.csv", on_error="reject").read(ctx))
    assert [r["text"] for r in out if not isinstance(r, Reject)] == ["fine", "also fine"]
    assert [r.reason for r in out if isinstance(r, Reject)] == [
        f"{tmp_path / 't.csv'}:3: invalid UTF-8 (byte 0xff at column 4: invalid start byte)"]
    out = list(Read(path="t.txt", text_unit="line", on_error="reject").read(ctx))
    assert [r["text"] for r in out if not isinstance(r, Reject)] == ["line one", "line three"]
    assert [r.reason for r in out if isinstance(r, Reject)] == [
        f"{tmp_path / 't.txt'}:2: invalid UTF-8 (byte 0xfe at column 6: invalid start byte)"]


# ---------------------------------------------------------------- issue 27: what a run may write


def test_stage_name_that_is_a_path_is_a_recipe_error_and_no_other_run_is_touched(tmp_path):
    other = tmp_path / "other-run"  # another run, its checkpoints under stages/01-s
    r = sf.run(items_then({"type": "filter", "name": "s", "where": "true"}), out=other)
    before = {str(p): p.read_bytes() for p in other.rglob("*") if p.is_file()}
    recipes, _ = project(tmp_path)
    path = write_recipe(recipes / "r.yaml", items_then(
        {"type": "filter", "name": "x/../../../../other-run/stages/01-s", "where": "false"}))
    p = smolforge("run", "r.yaml", "--out", str(tmp_path / "proj" / "run"), cwd=recipes)
    assert p.returncode == 2, p.stderr
    assert (f"r.yaml:{line_of(path, 'name: x/')}: stages[1].name: value error, a stage name is a "
            "letter or _ then letters, digits, _ or -") in p.stderr
    assert not (tmp_path / "proj" / "run").exists()
    assert {str(p): p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    assert r.data().num_rows == 1
    with pytest.raises(ValueError, match="a stage name is"):  # the Python API, also on assignment
        Recipe.from_dict(items_then({"type": "filter", "name": "../x", "where": "true"}))


@pytest.mark.parametrize("model_path,problem", [
    ("ABS/victim.npz", "must be a relative path inside the run directory"),
    ("../victim.npz", "must stay inside the run directory (no '..')"),
    ("models/../../victim.npz", "must stay inside the run directory (no '..')"),
    ("stages/01-train_classifier/x.npz", "'stages' is where the run keeps its own files"),
    ("clf.txt", "must end in .npz"),
])
def test_model_path_is_confined_to_the_run_directory(tmp_path, model_path, problem):
    recipes, _ = project(tmp_path)
    victim = recipes / "victim.npz"  # in the recipe's folder: a path the read policy allows
    victim.write_bytes(b"not yours")
    (recipes / "victim.metrics.json").write_text("{}")
    model_path = model_path.replace("ABS", str(recipes))
    path = write_recipe(recipes / "r.yaml", classifier_recipe(model_path))
    p = smolforge("run", "r.yaml", "--out", str(recipes / "run"), cwd=recipes)
    assert p.returncode == 2, p.stderr
    line = line_of(path, "model_path")
    assert f"r.yaml:{line}: stages[1].model_path: value error, model_path {problem}" in p.stderr
    assert victim.read_bytes() == b"not yours" and (recipes / "victim.metrics.json").read_text() == "{}"


def test_model_path_through_a_link_in_the_run_directory_is_refused(tmp_path):
    recipes, outside = project(tmp_path)
    out = recipes / "run"
    write_recipe(recipes / "r.yaml", classifier_recipe("models/clf.npz"))
    assert smolforge("run", "r.yaml", "--out", str(out), "--quiet", cwd=recipes).returncode == 0
    assert (out / "models" / "clf.npz").is_file() and (out / "models" / "clf.metrics.json").is_file()
    (out / "models" / "clf.npz").unlink()
    (out / "models" / "clf.metrics.json").unlink()
    (out / "models").rmdir()
    (out / "models").symlink_to(outside)
    (outside / "clf.npz").write_bytes(b"outside")
    p = smolforge("run", "r.yaml", "--out", str(out), "--quiet", cwd=recipes)
    assert p.returncode == 2, p.stderr
    assert f"{out / 'models'}: is a symbolic link" in p.stderr
    assert (outside / "clf.npz").read_bytes() == b"outside"
    assert not (outside / "clf.metrics.json").exists()


def test_recipe_name_dotdot_cannot_make_the_default_out_the_working_directory(tmp_path):
    recipes, _ = project(tmp_path)
    path = write_recipe(recipes / "r.yaml", {"name": "..", "stages": [{"type": "items", "items": ["a"]}]})
    p = smolforge("run", "r.yaml", cwd=recipes)
    assert p.returncode == 2
    assert f"r.yaml:{line_of(path, 'name:')}: name: value error, a recipe name names the default run" in p.stderr
