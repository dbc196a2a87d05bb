"""Recipes: YAML (or Python) -> a validated `Recipe`, checked before anything runs.

Every error names its YAML path and line (`textbooks.yaml:14: stages[2].max_tokens:
expected an integer, got "lots"`) and, for a typo, the closest valid name.
"""

from __future__ import annotations

import contextlib
import json
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from smolforge import remote
from smolforge.errors import RecipeError
from smolforge.paths import (
    PathNotAllowed,
    candidates,
    check_inside,
    default_roots,
    fixed_prefix,
    path_fields,
    path_role,
    value_kind,
)
from smolforge.registry import UnknownName, closest
from smolforge.registry import stages as stage_registry
from smolforge.stages.base import SourceStage, Stage
from smolforge.templates import TemplateError, template_variables

BUILTIN_DIR = Path(str(resources.files("smolforge") / "recipes"))
ALWAYS_COLUMNS = {"id", "meta"}


class Target(BaseModel):
    """`target: {records: N, max_candidates: M}`: generate in rounds until N records
    survive every stage, spending at most M source records (candidates); see
    docs/executors.md. The run exits 4 with the partial output when M runs out."""

    model_config = ConfigDict(extra="forbid")

    records: int = Field(ge=1, description="records the dataset must end with, exactly")
    max_candidates: int = Field(ge=1, description="most source records (candidates) to spend over all rounds")

    @model_validator(mode="after")
    def _budget(self):
        if self.max_candidates < self.records:
            raise ValueError(f"max_candidates ({self.max_candidates}) must be at least records ({self.records})")
        return self


class Recipe(BaseModel):
    """A pipeline: a source stage, then any stages. `engine` is the default engine
    for LLM stages (a type name, or a mapping with `type:` and the engine's fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    engine: str | dict[str, Any] = "llamacpp"
    seed: int = 0
    shard_size: int = Field(
        1000, ge=1,
        description="records per shard, the unit a CPU stage checkpoints (LLM stages also "
        "checkpoint every response in the cache, so a kill loses no paid-for work)")
    allow_paths: list[str] | None = Field(
        None, description="folders outside the recipe's folder and the working directory that "
        "files named in the recipe may come from (relative: to the recipe), and URL prefixes "
        "(`s3://bucket/prefix`) its URLs may name"
    )
    target: Target | None = Field(
        None, description="exactly this many records: generate in rounds until they survive every stage")
    stages: list[SerializeAsAny[Stage]] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _not_a_dot_path(cls, v: str) -> str:
        if v in (".", ".."):  # the default --out is runs/<name>
            raise ValueError("a recipe name names the default run directory (runs/<name>); not . or ..")
        return v

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str | None = PrivateAttr(None)
    _roots: tuple[Path | str, ...] = PrivateAttr(())

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the recipe (templates, data) resolve against."""
        return self._base_dir

    @property
    def allowed_roots(self) -> tuple[Path | str, ...]:
        """Folders files named in the recipe may lie in (resolved): its folder, the
        working directory when it was loaded, smolforge's package, `allow_paths`
        and `--allow-path`. Pass to `StageContext(allowed_roots=...)`."""
        return self._roots or default_roots(self._base_dir, self.allow_paths or ())

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
        cls,
        data: Any,
        *,
        base_dir: Path | None = None,
        source: str | None = None,
        overrides: list[str] | None = None,
        allow_paths: list[str | Path] | None = None,
    ) -> Recipe:
        """Validate a mapping (or a dumped Recipe); `overrides` are `--set` strings,
        `allow_paths` extra readable folders (like `--allow-path`)."""
        data, set_paths = _apply_overrides(data, overrides)
        return _validate(data, base_dir=base_dir or Path.cwd(), source=source, lines={},
                         set_paths=set_paths, allow_paths=allow_paths)

    def with_overrides(
        self, overrides: list[str] | None = None, allow_paths: list[str | Path] | None = None
    ) -> Recipe:
        """This recipe with `--set PATH=VALUE` overrides applied and validated again
        (a bad value names its `--set` argument), and `allow_paths` added."""
        if not overrides and not allow_paths:
            return self
        data = self.model_dump(mode="python", exclude_unset=True)
        # Only the fields that were set, so that `null` meaning "all" survives; `type` always.
        data["stages"] = [{"type": st.type, **st.model_dump(mode="python", exclude_unset=True)}
                          for st in self.stages]
        extra = [*self._cli_allow(), *(allow_paths or [])]
        return Recipe.from_dict(data, base_dir=self._base_dir, source=self._source,
                                overrides=overrides, allow_paths=extra)

    def _cli_allow(self) -> tuple[Path | str, ...]:
        """The allowed folders that came from outside the recipe (`--allow-path`)."""
        own = set(default_roots(self._base_dir, self.allow_paths or ()))
        return tuple(r for r in self.allowed_roots if r not in own)


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


def load_recipe(
    name_or_path: str | Path,
    overrides: list[str] | None = None,
    allow_paths: list[str | Path] | None = None,
) -> Recipe:
    """Read a recipe file or built-in name, apply `--set PATH=VALUE` overrides, validate.
    `allow_paths` (the CLI's `--allow-path`) adds folders the recipe may read from."""
    path = find_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    _check_depth(text, path.name)
    try:
        data = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError([f"{where}: invalid YAML: {getattr(e, 'problem', e)}"]) from None
    data, set_paths = _apply_overrides(data, overrides)
    return _validate(data, base_dir=path.parent.resolve(), source=str(path), lines=lines,
                     set_paths=set_paths, allow_paths=allow_paths)


MAX_DEPTH = 64  # YAML nesting; real recipes use under 10 levels


def _check_depth(text: str, label: str, with_line: bool = True) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH before PyYAML's recursive loader
    sees it (100,000 levels is a RecursionError there). `yaml.parse` yields events
    without recursion, so the YAML path of the too-deep node can be named."""
    stack: list[list] = []  # per open collection: [is_sequence, key or index, expecting a key]
    starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    try:
        for ev in yaml.parse(text):
            if stack and isinstance(ev, (yaml.ScalarEvent, yaml.AliasEvent, *starts)):
                top = stack[-1]
                if top[0]:
                    top[1] += 1
                elif top[2] and isinstance(ev, yaml.ScalarEvent):
                    top[1], top[2] = ev.value, False  # a key; its value follows
                    continue
                else:
                    top[2] = True
            if isinstance(ev, starts):
                if len(stack) >= MAX_DEPTH:
                    loc = format_path([t[1] for t in stack])
                    where = f"{label}:{ev.start_mark.line + 1}" if with_line else label
                    raise RecipeError([f"{where}: {loc + ': ' if loc else ''}"
                                       f"nested more than {MAX_DEPTH} levels deep"])
                seq = isinstance(ev, yaml.SequenceStartEvent)
                stack.append([seq, -1 if seq else None, not seq])
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
    except yaml.YAMLError:
        return  # the real loader reports it with its line


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


def _apply_overrides(data: Any, overrides: list[str] | None) -> tuple[Any, dict[tuple, str]]:
    """Apply `--set` strings in order; also returns YAML path -> the `--set`
    argument that set it, so that a bad value is blamed on the argument."""
    set_paths: dict[tuple, str] = {}
    for ov in overrides or []:
        data = apply_override(data, ov)
        set_paths[tuple(parse_path(ov.split("=", 1)[0].strip()))] = ov
    return data, set_paths


def apply_override(data: Any, override: str) -> Any:
    """`stages[0].count=8` -> data with that value set (the value is parsed as YAML)."""
    if "=" not in override:
        raise RecipeError([f"--set {override!r}: expected PATH=VALUE"])
    path, raw = override.split("=", 1)
    _check_depth(raw, f"--set {override}", with_line=False)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError([f"--set {override}: invalid YAML value: {getattr(e, 'problem', e)}"]) from None
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
    def __init__(self, source: str | None, lines: dict[tuple, int], set_paths: dict[tuple, str] | None = None):
        self.source, self.lines, self.items = source, lines, []
        self.set_paths = set_paths or {}

    def add(self, loc: tuple, message: str) -> None:
        for n in range(len(loc), 0, -1):  # a value from `--set` is blamed on the argument
            if loc[:n] in self.set_paths:
                where = format_path(loc) if n < len(loc) else ""
                self.items.append(f"--set {self.set_paths[loc[:n]]}: {where + ': ' if where else ''}{message}")
                return
        # A check across the fields of a mapping (`target`'s max_candidates >= records)
        # that a `--set` changed: blamed on that argument, not on a recipe line.
        inside = [ov for p, ov in self.set_paths.items() if loc and loc[0] != "stages" and p[:len(loc)] == loc]
        if inside:
            self.items.append(f"--set {', --set '.join(inside)}: {format_path(loc)}: {message}")
            return
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                line = self.lines[loc[:n]]
                break
        prefix = f"{Path(self.source).name}:{line}: " if self.source and line else ""
        where = format_path(loc)
        self.items.append(f"{prefix}{where + ': ' if where else ''}{message}")

    def add_validation(self, prefix: tuple, e: ValidationError, model: type[BaseModel] | None,
                       skip: set[tuple] | frozenset = frozenset()) -> None:
        seen = set(skip)
        for err in e.errors():
            loc = prefix + _clean_loc(err["loc"])
            if loc in seen:  # a union reports the same place once per member
                continue
            seen.add(loc)
            self.add(loc, _describe_error(err, model))


def _validate(data: Any, *, base_dir: Path, source: str | None, lines: dict,
              set_paths: dict[tuple, str] | None = None,
              allow_paths: list[str | Path] | None = None) -> Recipe:
    from smolforge.context import build_engine

    probs = _Problems(source, lines, set_paths)
    if not isinstance(data, dict):
        raise RecipeError([f"{source or 'recipe'}: expected a mapping with name and stages"])
    own = data.get("allow_paths")
    own = [str(a) for a in own] if isinstance(own, list) else []
    cli = [a if remote.is_remote(str(a)) else Path(remote.local_path(str(a))).expanduser().absolute()
           for a in allow_paths or []]  # relative: to the cwd
    try:
        roots = default_roots(base_dir, [*own, *cli, *_set_dirs(data, set_paths or {}, base_dir)])
    except PathNotAllowed as e:  # a malformed URL prefix (credentials in it, `..`)
        probs.add(("allow_paths",), str(e))
        raise RecipeError(probs.items) from None
    raw_stages = data.get("stages")
    valid: list[tuple[int, Stage]] = []  # (index in the recipe, stage) of the stages that validated
    if isinstance(raw_stages, list):
        for i, raw in enumerate(raw_stages):
            st = _validate_stage(raw, i, probs, base_dir, roots)
            if st is not None:
                valid.append((i, st))
    stage_objs = [st for _, st in valid]
    top = {k: v for k, v in data.items() if k != "stages"}
    top["stages"] = stage_objs if isinstance(raw_stages, list) else raw_stages
    recipe = None
    stage_errors = isinstance(raw_stages, list) and len(valid) < len(raw_stages)
    try:
        recipe = Recipe.model_validate(top)
    except ValidationError as e:
        # "at least 1 stage" is noise when the stages are there but each had errors
        probs.add_validation((), e, Recipe, skip={("stages",)} if stage_errors else set())
    if recipe is not None:
        try:
            build_engine(recipe.engine)
        except ValidationError as e:
            probs.add_validation(("engine",), e, None)
        except UnknownName as e:
            probs.add(("engine", "type"), str(e))
    for _, st in valid:
        if "_recipe_dir" in type(st).__private_attributes__:
            st._recipe_dir = base_dir  # where its template files resolve, for requires()
    before = len(probs.items)
    _check_paths(valid, base_dir, roots, probs)
    paths_ok = len(probs.items) == before
    if isinstance(raw_stages, list) and not stage_errors:
        _check_stage_engines(stage_objs, probs)
        if paths_ok:  # never read a template file that is not allowed
            _check_order_and_columns(stage_objs, probs, base_dir)
    if probs.items:
        raise RecipeError(probs.items)
    assert recipe is not None
    recipe._base_dir = base_dir
    recipe._source = source
    recipe._roots = roots
    return recipe


# ---------------------------------------------------------------- paths

def _check_paths(stages: list[tuple[int, Stage]], base_dir: Path, roots: tuple[Path, ...],
                 probs: _Problems) -> None:
    """Every file a stage names resolves (symlinks and `..` included) inside an
    allowed folder, so `template_file: ../../../../etc/passwd` never reaches a
    dataset or a server. Checked here, before anything runs; `StageContext.
    resolve_path` and `read` check again when they open the files."""
    for i, st in stages:
        for loc, value, kind in path_fields(st, ("stages", i)):
            try:
                for shown, candidate in candidates(value, kind, base_dir):
                    check_inside(candidate, roots, shown)
            except PathNotAllowed as e:
                probs.add(loc, str(e))


def _role_by_name() -> dict[str, str]:
    """Field name -> the files it names, over every registered stage (a `--set` path
    names a field before any stage is validated)."""
    out: dict[str, str] = {}

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            if (kind := path_role(model, name)) is not None:
                out.setdefault(name, kind)
            for t in _models_in(field.annotation):
                walk(t)

    for name in stage_registry.names():
        walk(stage_registry.get(name))
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (`list[Benchmark]`, `MixInput | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _set_dirs(data: Any, set_paths: dict[tuple, str], base_dir: Path) -> list[Path | str]:
    """Folders of the files named on the command line with `--set` (`--set
    stages[0].path=/data/*.jsonl`): the user typed them, so they are allowed as
    if given with `--allow-path`; only a recipe's own paths are confined."""
    out: list[Path | str] = []

    def walk(value: Any, keys: tuple) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*keys, str(k)))
        elif isinstance(value, list):
            for v in value:
                walk(v, keys)
        elif isinstance(value, str) and keys:
            kind = _role_by_name().get(keys[-1]) or ("file" if "lists" in keys else None)
            if kind in ("glob", "file", "run") and remote.is_remote(value):
                with contextlib.suppress(remote.RemoteError):  # a bad URL: refused when checked
                    out.append(remote.fixed_prefix(value) if remote.has_magic(value) else value)
            elif kind in ("glob", "file", "run"):
                p = Path(remote.local_path(value)).expanduser()
                p = p if p.is_absolute() else base_dir / p
                fixed = fixed_prefix(p)
                out.append(Path(*fixed) if len(fixed) < len(p.parts) else p.parent)

    for loc in set_paths:
        node = data
        for part in loc:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        walk(node, tuple(str(p) for p in loc if isinstance(p, str)))
    return out


def _validate_stage(raw: Any, i: int, probs: _Problems, base_dir: Path, roots: tuple[Path, ...]) -> Stage | None:
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
    # Some validators read their file (a judge's rubric): check the raw paths first,
    # so that a file outside the allowed folders is never opened, even for an error.
    before = len(probs.items)
    for key, value in raw.items():
        kind = value_kind(cls, str(key), value)
        if kind is not None and kind != "values" and isinstance(value, str):
            try:
                for shown, candidate in candidates(value, kind, base_dir):
                    check_inside(candidate, roots, shown)
            except PathNotAllowed as e:
                probs.add(("stages", i, key), str(e))
    if len(probs.items) > before:
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        probs.add_validation(("stages", i), e, cls)
        return None


def _check_stage_engines(stage_objs: list[Stage], probs: _Problems) -> None:
    from smolforge.context import build_engine

    for i, st in enumerate(stage_objs):
        for field in ("engine", "user_engine"):  # user_engine: the simulated user of `conversations`
            specs = getattr(st, field, None)
            if specs is None:
                continue
            for j, spec in enumerate(specs if isinstance(specs, list) else [specs]):
                loc = ("stages", i, field) + ((j,) if isinstance(specs, list) else ())
                try:
                    build_engine(spec)
                except ValidationError as e:
                    probs.add_validation(loc, e, None)
                except UnknownName as e:
                    probs.add((*loc, "type"), str(e))


def _reads_rubric(st: Stage) -> bool:
    """A stage whose columns come from its rubric's variables, mapped by `inputs:`."""
    return isinstance(getattr(st, "rubric", None), str) and isinstance(getattr(st, "inputs", None), dict)


def _file_names(st: Stage, base_dir: Path) -> frozenset[str]:
    """The names a stage's template file reads (to blame a missing column on it)."""
    if _reads_rubric(st):  # a judge: its rubric's variables
        return frozenset(st.requires())
    tf = getattr(st, "template_file", None)
    if not isinstance(tf, str) or getattr(st, "template", None) is not None:
        return frozenset()
    try:
        return template_variables(None, tf, base_dir)
    except TemplateError:
        return frozenset()


def _check_order_and_columns(stage_objs: list[Stage], probs: _Problems, base_dir: Path) -> None:
    """Sources come first; every column a stage reads exists by the time it runs."""
    if not isinstance(stage_objs[0], SourceStage):
        probs.add(("stages", 0, "type"), f"the first stage must be a source (read, items, combine), got {stage_objs[0].type!r}")
        return
    available: set[str] | None = set(ALWAYS_COLUMNS)
    for i, st in enumerate(stage_objs):
        if i > 0 and isinstance(st, SourceStage):
            probs.add(("stages", i, "type"), f"{st.type!r} is a source stage; only the first stage may be a source")
            continue
        try:
            required = st.requires()
        except TemplateError as e:  # a template or rubric file that is missing or does not parse
            probs.add(("stages", i, e.field), str(e))
            required = set()
        if available is not None:
            missing = sorted(required - available)
            in_file = _file_names(st, base_dir) if missing else frozenset()
            field = "rubric" if _reads_rubric(st) else "template_file"
            inputs = getattr(st, "inputs", None) or {}
            for col in missing:
                hint = closest(col, sorted(available))
                msg = f"column {col!r} is used before any stage produces it"
                msg += f" (did you mean {hint!r}?)" if hint else f" (available: {', '.join(sorted(available))})"
                if field == "rubric" and col not in inputs.values():
                    msg += f"; a rubric variable: map it to a column with `inputs: {{{col}: COLUMN}}`"
                where = ("inputs", next(k for k, v in inputs.items() if v == col)) \
                    if field == "rubric" and col in inputs.values() else (field,)
                probs.add(("stages", i, *where) if col in in_file else ("stages", i), msg)
        provided = st.provides()
        available = None if provided is None or available is None else (available | provided) - st.removes()
