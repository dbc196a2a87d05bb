"""Where a recipe may read files from: its own folder, the working directory,
smolforge's package and the folders it allows (docs/recipes-safety.md). A leaf module:
recipe, context and templates all check paths, and none of them imports the others
for it."""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from smolforge import remote

# smolforge's own files (built-in recipes, templates, rubrics) are always readable.
PACKAGE_DIR = Path(str(resources.files("smolforge"))).resolve()


class PathNotAllowed(ValueError):
    """A file a recipe names lies outside every allowed folder."""


# An allowed place: a local folder (resolved) or a URL prefix (`s3://bucket/prefix`,
# normalised by remote.normalise), which only URLs can lie in.
Root = Path | str


def default_roots(recipe_dir: Path, extra: Iterable[str | Path] = ()) -> tuple[Root, ...]:
    """Folders a recipe may read from: its own folder, the working directory,
    smolforge's package, and any `allow_paths:` / `--allow-path` folders or URL
    prefixes (docs/storage.md)."""
    out: list[Root] = []
    for r in [Path(recipe_dir), Path.cwd(), PACKAGE_DIR, *extra]:
        if remote.is_remote(str(r)):
            try:
                root: Root = remote.normalise(str(r))
            except remote.RemoteError as e:
                raise PathNotAllowed(f"allow_paths: {e}") from None
        else:
            r = Path(remote.local_path(str(r))).expanduser()
            root = Path(os.path.realpath(r if r.is_absolute() else Path(recipe_dir) / r))
        if root not in out:
            out.append(root)
    return tuple(out)


def check_inside(path: Path | str, roots: Sequence[Root], shown: str | None = None) -> Path | str:
    """`path` with symlinks and `..` resolved, if it lies inside one of `roots`
    (resolved the same way); else PathNotAllowed, naming `shown` (the path as the
    recipe wrote it, quoted). Resolving first is what stops `data/../../etc/passwd` and a
    symlink pointing out of the folder. A URL (`s3://...`) must lie under an allowed
    URL prefix: the working directory and the recipe's folder never allow one."""
    if isinstance(path, str) and remote.is_remote(path):
        try:
            url = remote.normalise(path)
        except remote.RemoteError as e:
            raise PathNotAllowed(str(e)) from None
        if any(isinstance(r, str) and remote.inside(url, r) for r in roots):
            return url
        raise PathNotAllowed(
            f"{shown if shown is not None else repr(path)} is not under an allowed URL prefix; "
            "add the bucket or prefix to allow_paths or pass --allow-path (for example "
            f"--allow-path {remote.scheme(url)}://bucket/prefix)"
        )
    path = Path(remote.local_path(str(path)))
    real = Path(os.path.realpath(path))
    for root in roots:
        if isinstance(root, str):
            continue
        root = Path(os.path.realpath(root))
        if real == root or real.is_relative_to(root):
            return real
    label = shown if shown is not None else repr(str(path))
    if real != Path(os.path.normpath(os.path.abspath(path))):  # a symlink: say where it points
        label += f" -> {str(real)!r}"
    raise PathNotAllowed(
        f"{label} is outside the recipe folder and the working directory; "
        "add it to allow_paths or pass --allow-path"
    )

# A stage's name names its checkpoint directory (stages/NN-<name>), so it is an
# identifier: never a path that could lead out of the run directory.
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


# ---------------------------------------------------------------- file fields

@dataclass(frozen=True)
class PathRole:
    """Marks a stage field that names files, in its type (`Annotated[str, FILE]`), so
    the path policy (recipe.py) and the resume fingerprint (stages/base.py) apply to
    it whatever the field is called; `tests/test_stage_fields.py` fails on a field that
    is read as a file without the mark."""

    kind: Literal["file", "glob", "values", "run"]
    urls: bool = False  # may also be a URL (s3://, gs://, ...) read through fsspec


FILE = PathRole("file")  # a file, relative to the recipe (a built-in template or rubric as fallback)
GLOB = PathRole("glob")  # a file or glob, or a list of them
# A file or glob, or a URL or URL glob (`s3://bucket/data/*.parquet`): input read
# through fsspec (remote.py), checked against allowed URL prefixes, fingerprinted by
# the objects' names, sizes and ETags. Its kind is "url" where the value is a URL.
GLOB_OR_URL = PathRole("glob", urls=True)
VALUES = PathRole("values")  # name -> a list, or a file of values
RUN = PathRole("run")  # relative: inside the run directory (then the recipe's folder)


def _role(model: type[BaseModel], name: str) -> PathRole | None:
    field = model.model_fields.get(name)
    return next((m for m in field.metadata if isinstance(m, PathRole)), None) if field else None


def path_role(model: type[BaseModel], name: str) -> str | None:
    """The kind of files field `name` of `model` names, if it is marked."""
    role = _role(model, name)
    return role.kind if role else None


def value_kind(model: type[BaseModel], name: str, value: Any) -> str | None:
    """The kind of `value` in field `name`: its mark's kind, or "url" for a URL in a
    field that reads URLs (a URL elsewhere keeps the field's kind, and `candidates`
    refuses it)."""
    role = _role(model, name)
    if role is None:
        return None
    return "url" if role.urls and remote.is_remote(value) else role.kind


def path_fields(model: BaseModel, loc: tuple = ()) -> list[tuple[tuple, str, str]]:
    """(YAML location, value, kind) for every file a model (a stage) names in a
    marked field, nested models (decontaminate's `benchmarks`) included."""
    out: list[tuple[tuple, str, str]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        kind = path_role(type(model), name)
        if kind == "values" and isinstance(value, dict):
            out += [((*loc, name, k), v, "file") for k, v in value.items() if isinstance(v, str)]
        elif kind is not None and isinstance(value, str):
            out.append(((*loc, name), value, value_kind(type(model), name, value)))
        elif kind in ("glob", "run") and isinstance(value, list):  # a list of `topics` is data
            out += [((*loc, name, j), v, value_kind(type(model), name, v))
                    for j, v in enumerate(value) if isinstance(v, str)]
        elif isinstance(value, BaseModel):
            out += path_fields(value, (*loc, name))
        elif isinstance(value, list):
            out += [x for j, v in enumerate(value) if isinstance(v, BaseModel)
                    for x in path_fields(v, (*loc, name, j))]
    return out


def fixed_prefix(p: Path) -> list[str]:
    """The parts of a glob before its first wildcard."""
    prefix = []
    for part in p.parts:
        if glob.has_magic(part):
            break
        prefix.append(part)
    return prefix


def candidates(value: str, kind: str, base_dir: Path) -> list[tuple[str, Path | str]]:
    """(as written, quoted; path) for every file a stage may open for `value`: relative to
    the recipe, and the built-in copies some stages fall back to. A glob: its fixed
    prefix and every file it matches now. A URL (kind "url"): the URL, or a URL glob's
    fixed prefix (the bucket is not listed to check a recipe; `read` checks each match)."""
    if kind == "url":
        try:
            return [(repr(value), remote.fixed_prefix(value) if remote.has_magic(value) else value)]
        except remote.RemoteError as e:
            raise PathNotAllowed(str(e)) from None
    if remote.is_remote(value):
        raise PathNotAllowed(f"{value!r}: this field does not read URLs yet; `read` paths, "
                             "`decontaminate` benchmarks and export targets do (docs/storage.md)")
    p = Path(remote.local_path(value)).expanduser()
    if kind == "run" and not p.is_absolute() and not os.path.normpath(p).startswith(".."):
        return []  # stays inside the run directory
    full = p if p.is_absolute() else base_dir / p
    out = [(repr(value), full)]
    if not p.is_absolute():  # built-in templates, rubrics (read only if they exist)
        out += [(repr(value), c) for c in (PACKAGE_DIR / "recipes" / p, PACKAGE_DIR / "rubrics" / f"{value}.yaml")
                if c.exists()]
    if kind == "glob" and glob.has_magic(str(full)):
        out = [(repr(value), Path(*fixed_prefix(full)))]
        out += [(f"{m!r} (matched by {value!r})", Path(m)) for m in glob.glob(str(full), recursive=True)]
    return out


def file_digests(model: BaseModel, base_dir: Path) -> list[Any]:
    """What the files a stage's marked fields name hold now, for its resume
    fingerprint: a file's sha256 (templates, rubrics, schemas, benchmarks), a glob's
    matches by name, size and modification time (inputs may be terabytes). A stage
    thus re-runs after a file it reads is edited, without remembering to say so."""
    out: list[Any] = []
    for loc, value, kind in path_fields(model):
        if kind == "url":  # objects by name, size and ETag / generation / mtime: one listing
            out += [[list(loc), o.url, o.size, o.version] for o in remote.listing(value)]
            continue
        for _shown, p in candidates(value, kind, base_dir):
            if not p.is_file():
                continue
            if kind == "glob":
                st = p.stat()
                out.append([list(loc), str(p), st.st_size, st.st_mtime_ns])
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out.append([list(loc), str(p), h.hexdigest()])
                break  # the first that exists is the one read
    return out
