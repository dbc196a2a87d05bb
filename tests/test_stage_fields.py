"""Stages register themselves and mark the fields that name files (issue #21): a file
field is found by its type, not its name, so the path policy and the resume
fingerprint apply to every one; a plugin package adds a stage through an entry point."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smolforge.errors import RecipeError
from smolforge.paths import path_role
from smolforge.recipe import Recipe
from smolforge.registry import stages

STAGES_DIR = Path(__file__).resolve().parents[1] / "src" / "smolforge" / "stages"
# Calls that open the file their arguments name (load_source: inline text, then the file).
READERS = {"load_template", "resolve_path", "load_source", "load_schema", "load_rubric",
           "check_rubric_file", "open", "Path", "read_text", "read_bytes"}
NOT_A_FILE = {"load_source": 0}  # the argument position that is text, not a path
NOT_READ = {("train_classifier", "model_path"),  # written inside the run directory, checked by its own validator
            ("magpie", "chat_template")}  # a template's name or inline Jinja text


def _fields_read_as_files() -> set[tuple[str, str]]:
    """(class name, field) for every `self.<field>` passed to a file reader in a stage module."""
    out = set()
    for path in STAGES_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for call in (n for n in ast.walk(cls) if isinstance(n, ast.Call)):
                f = call.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name not in READERS:
                    continue
                args = [a for j, a in enumerate(call.args) if NOT_A_FILE.get(name) != j]
                for arg in [*args, *(k.value for k in call.keywords)]:
                    if (isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name)
                            and arg.value.id == "self"):
                        out.add((cls.name, arg.attr))
    return out


def test_every_field_read_as_a_file_is_marked():
    classes = {cls.__name__: cls for name in stages.names() for cls in stages.get(name).__mro__}
    read = _fields_read_as_files()
    assert ("EvolInstruct", "depth_template") in read  # the scan sees the calls it must
    unmarked = [f"{c}.{f}" for c, f in sorted(read)
                if c in classes and f in classes[c].model_fields and path_role(classes[c], f) is None]
    assert unmarked == []


def test_fields_named_like_files_are_marked():
    unmarked = []
    for name in stages.names():
        cls = stages.get(name)
        for f in cls.model_fields:
            named_like_a_file = f.endswith(("_file", "_path", "_dir", "_template"))
            if named_like_a_file and (name, f) not in NOT_READ and path_role(cls, f) is None:
                unmarked.append(f"{name}.{f}")
    assert unmarked == []


def test_a_template_field_not_named_like_a_file_is_still_confined(tmp_path):
    """`evol_instruct`'s `depth_template` escaped the allow-list: only `*_file` names were checked."""
    outside = tmp_path / "outside.j2"
    outside.write_text("{{ instruction }}")
    recipe_dir = tmp_path / "recipe"
    recipe_dir.mkdir()
    data = {"name": "x", "stages": [{"type": "items", "items": [{"instruction": "hi"}]},
                                    {"type": "evol_instruct", "depth_template": str(outside)}]}
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict(data, base_dir=recipe_dir)
    assert "stages[1].depth_template" in str(e.value) and "outside" in str(e.value)


class _Ctx:
    def __init__(self, recipe_dir: Path):
        self.recipe_dir, self.seed = recipe_dir, 0


def test_fingerprint_follows_every_marked_file_without_fingerprint_extra(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "a"}\n')
    read = stages.get("read")(path="in.jsonl")
    before = read.fingerprint(_Ctx(tmp_path))
    assert read.fingerprint(_Ctx(tmp_path)) == before
    data.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert read.fingerprint(_Ctx(tmp_path)) != before

    (tmp_path / "t.j2").write_text("Say {{ text }}")
    render = stages.get("render")(template_file="t.j2", output="prompt")
    first = render.fingerprint(_Ctx(tmp_path))
    (tmp_path / "t.j2").write_text("Tell {{ text }}")
    assert render.fingerprint(_Ctx(tmp_path)) != first


def test_register_takes_the_name_from_the_type_field():
    from pydantic import BaseModel

    class NoType(BaseModel):
        x: int = 0

    with pytest.raises(TypeError, match="needs `type"):
        stages.register(NoType)
    with pytest.raises(ValueError, match="registered twice"):
        stages.register(type("Other", (stages.get("filter"),), {"__module__": __name__}))


def test_a_plugin_package_adds_a_stage_through_its_entry_point(tmp_path):
    """A real installed distribution (a dist-info with entry_points.txt on sys.path)."""
    (tmp_path / "sf_plugin_demo.py").write_text(textwrap.dedent('''
        from typing import Annotated, Literal
        from pydantic import Field
        from smolforge.paths import FILE
        from smolforge.registry import stages
        from smolforge.stages.base import MapStage

        @stages.register
        class Shout(MapStage):
            """Upper-case a column."""
            type: Literal["shout"] = "shout"
            column: str = Field("text", description="the column")
            words_file: Annotated[str | None, FILE] = Field(None, description="unused")

            def process(self, batch, ctx):
                from smolforge.stages.base import Result
                res = Result()
                for r in batch:
                    res.keep({**r, self.column: r[self.column].upper()})
                return res
    '''))
    dist = tmp_path / "sf_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sf-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[smolforge.stages]\nshout = sf_plugin_demo\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: p\nstages:\n  - {type: items, items: [{text: hi}]}\n  - {type: shout}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    r = subprocess.run([sys.executable, "-m", "smolforge.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted((tmp_path / "run" / "data").glob("*.parquet"))[0]).to_pylist()
    assert [row["text"] for row in rows] == ["HI"]
    r = subprocess.run([sys.executable, "-m", "smolforge.cli", "stages"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "shout" in r.stdout and "Upper-case a column." in r.stdout
