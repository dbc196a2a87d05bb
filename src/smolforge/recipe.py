"""Recipes: YAML (or Python) -> a validated `Recipe`, checked before anything runs.

Every error names its YAML path and line (`textbooks.yaml:14: stages[2].max_tokens:
expected an integer, got "lots"`) and, for a typo, the closest valid name.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SerializeAsAny, ValidationError

from smolforge.registry import UnknownName, closest
from smolforge.registry import stages as stage_registry
from smolforge.stages.base import SourceStage, Stage

BUILTIN_DIR = Path(str(resources.files("smolforge") / "recipes"))
ALWAYS_COLUMNS = {"id", "meta"}


class RecipeError(ValueError):
    """A recipe that cannot run; `problems` is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Recipe(BaseModel):
    """A pipeline: a source stage, then any stages. `engine` is the default engine
    for LLM stages (a type name, or a mapping with `type:` and the engine's fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    engine: str | dict[str, Any] = "llamacpp"
    seed: int = 0
    shard_size: int = Field(32, ge=1, description="records per shard (the unit of resume)")
    stages: list[SerializeAsAny[Stage]] = Field(min_length=1)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str | None = PrivateAttr(None)

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the recipe (templates, data) resolve against."""
        return self._base_dir

    def stage_names(self) -> list[str]:
        names, seen = [], {}
        for st in self.stages:
            base = st.name or st.type
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
        return names

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    @classmethod
    def from_dict(
        cls, data: Any, *, base_dir: Path | None = None, source: str | None = None
    ) -> Recipe:
        return _validate(data, base_dir=base_dir or Path.cwd(), source=source, lines={})


# ---------------------------------------------------------------- loading


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise RecipeError([f"{p}: no such recipe file"])
        return p
    known = builtin_recipes()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    hint = closest(str(name_or_path), list(known))
    msg = f"unknown recipe {str(name_or_path)!r}"
    msg += f" (did you mean {hint!r}?)" if hint else f" (built-in: {', '.join(known)})"
    raise RecipeError([msg])


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file or built-in name, apply `--set PATH=VALUE` overrides, validate."""
    path = find_recipe(name_or_path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError([f"{where}: invalid YAML: {getattr(e, 'problem', e)}"]) from None
    for ov in overrides or []:
        data = apply_override(data, ov)
    return _validate(data, base_dir=path.parent.resolve(), source=str(path), lines=lines)


def _line_map(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """YAML path (tuple of keys and indexes) -> 1-based line, for error messages."""
    out: dict[tuple, int] = {}
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[(*path, k.value)] = k.start_mark.line + 1
            out.update({p: ln for p, ln in _line_map(v, (*path, k.value)).items() if p != (*path, k.value)})
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_line_map(v, (*path, i)))
    return out


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for m in _PATH_PART.finditer(path):
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    if not parts:
        raise RecipeError([f"--set {path!r}: empty path"])
    return parts


def apply_override(data: Any, override: str) -> Any:
    """`stages[0].count=8` -> data with that value set (the value is parsed as YAML)."""
    if "=" not in override:
        raise RecipeError([f"--set {override!r}: expected PATH=VALUE"])
    path, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = parse_path(path.strip())
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = format_path(parts[: i + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise RecipeError([f"--set {where}: no such item (the list has {size})"])
        elif not isinstance(node, dict):
            raise RecipeError([f"--set {where}: {format_path(parts[:i])} is not a mapping"])
        if last:
            node[part] = value
        else:
            if isinstance(part, str) and part not in node:
                node[part] = {}
            node = node[part]
    return data


def format_path(loc: list | tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------- validation

_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
}


def _describe_error(err: dict, model: type[BaseModel] | None) -> str:
    """pydantic error -> a short message a recipe author understands."""
    kind = err["type"]
    got = _show(err.get("input"))
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        hint = closest(str(err["loc"][-1]), list(model.model_fields) if model else [])
        return "unknown field" + (f" (did you mean {hint!r}?)" if hint else "")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        hint = closest(str(err.get("input")), re.findall(r"'([^']*)'", expected))
        return f"expected one of {expected}, got {got}" + (f" (did you mean {hint!r}?)" if hint else "")
    base = kind.split("_")[0]
    if base in _EXPECTED and kind.endswith(("_type", "_parsing", "_from_float")):
        return f"expected {_EXPECTED[base]}, got {got}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {got}"


def _show(value: Any) -> str:
    try:
        s = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union/validator tags (`str`, `function-after[...]`) from a loc."""
    return tuple(p for p in loc if isinstance(p, int) or not re.search(r"[\[\]-]|^(str|int|float|bool|dict|list)$", p))


class _Problems:
    def __init__(self, source: str | None, lines: dict[tuple, int]):
        self.source, self.lines, self.items = source, lines, []

    def add(self, loc: tuple, message: str) -> None:
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                line = self.lines[loc[:n]]
                break
        prefix = f"{Path(self.source).name}:{line}: " if self.source and line else ""
        where = format_path(loc)
        self.items.append(f"{prefix}{where + ': ' if where else ''}{message}")

    def add_validation(self, prefix: tuple, e: ValidationError, model: type[BaseModel] | None) -> None:
        seen = set()
        for err in e.errors():
            loc = prefix + _clean_loc(err["loc"])
            if loc in seen:  # a union reports the same place once per member
                continue
            seen.add(loc)
            self.add(loc, _describe_error(err, model))


def _validate(data: Any, *, base_dir: Path, source: str | None, lines: dict) -> Recipe:
    from smolforge.context import build_engine

    probs = _Problems(source, lines)
    if not isinstance(data, dict):
        raise RecipeError([f"{source or 'recipe'}: expected a mapping with name and stages"])
    raw_stages = data.get("stages")
    stage_objs: list[Stage] = []
    if isinstance(raw_stages, list):
        for i, raw in enumerate(raw_stages):
            st = _validate_stage(raw, i, probs)
            if st is not None:
                stage_objs.append(st)
    top = {k: v for k, v in data.items() if k != "stages"}
    top["stages"] = stage_objs if isinstance(raw_stages, list) else raw_stages
    recipe = None
    try:
        recipe = Recipe.model_validate(top)
    except ValidationError as e:
        probs.add_validation((), e, Recipe)
    if recipe is not None:
        try:
            build_engine(recipe.engine)
        except ValidationError as e:
            probs.add_validation(("engine",), e, None)
        except UnknownName as e:
            probs.add(("engine", "type"), str(e))
    if isinstance(raw_stages, list) and len(stage_objs) == len(raw_stages):
        _check_stage_engines(stage_objs, probs)
        _check_order_and_columns(stage_objs, probs)
    if probs.items:
        raise RecipeError(probs.items)
    assert recipe is not None
    recipe._base_dir = base_dir
    recipe._source = source
    return recipe


def _validate_stage(raw: Any, i: int, probs: _Problems) -> Stage | None:
    if isinstance(raw, Stage):
        return raw
    if not isinstance(raw, dict):
        probs.add(("stages", i), f"expected a mapping with a `type:`, got {_show(raw)}")
        return None
    if "type" not in raw:
        probs.add(("stages", i, "type"), "required field is missing")
        return None
    try:
        cls = stage_registry.get(str(raw["type"]))
    except UnknownName as e:
        probs.add(("stages", i, "type"), str(e))
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        probs.add_validation(("stages", i), e, cls)
        return None


def _check_stage_engines(stage_objs: list[Stage], probs: _Problems) -> None:
    from smolforge.context import build_engine

    for i, st in enumerate(stage_objs):
        specs = getattr(st, "engine", None)
        if specs is None:
            continue
        for j, spec in enumerate(specs if isinstance(specs, list) else [specs]):
            loc = ("stages", i, "engine") + ((j,) if isinstance(specs, list) else ())
            try:
                build_engine(spec)
            except ValidationError as e:
                probs.add_validation(loc, e, None)
            except UnknownName as e:
                probs.add((*loc, "type"), str(e))


def _check_order_and_columns(stage_objs: list[Stage], probs: _Problems) -> None:
    """Sources come first; every column a stage reads exists by the time it runs."""
    if not isinstance(stage_objs[0], SourceStage):
        probs.add(("stages", 0, "type"), f"the first stage must be a source (read, items, combine), got {stage_objs[0].type!r}")
        return
    available: set[str] | None = set(ALWAYS_COLUMNS)
    for i, st in enumerate(stage_objs):
        if i > 0 and isinstance(st, SourceStage):
            probs.add(("stages", i, "type"), f"{st.type!r} is a source stage; only the first stage may be a source")
            continue
        if available is not None:
            for col in sorted(st.requires() - available):
                hint = closest(col, sorted(available))
                msg = f"column {col!r} is used before any stage produces it"
                msg += f" (did you mean {hint!r}?)" if hint else f" (available: {', '.join(sorted(available))})"
                probs.add(("stages", i), msg)
        provided = st.provides()
        available = None if provided is None or available is None else (available | provided) - st.removes()
