"""Where a recipe may read files from: its own folder, the working directory,
smolforge's package and the folders it allows (docs/recipes-safety.md). A leaf module:
recipe, context and templates all check paths, and none of them imports the others
for it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

# smolforge's own files (built-in recipes, templates, rubrics) are always readable.
PACKAGE_DIR = Path(str(resources.files("smolforge"))).resolve()


class PathNotAllowed(ValueError):
    """A file a recipe names lies outside every allowed folder."""


def default_roots(recipe_dir: Path, extra: Iterable[str | Path] = ()) -> tuple[Path, ...]:
    """Folders a recipe may read from: its own folder, the working directory,
    smolforge's package, and any `allow_paths:` / `--allow-path` folders."""
    roots = [Path(recipe_dir), Path.cwd(), PACKAGE_DIR, *(Path(e).expanduser() for e in extra)]
    out: list[Path] = []
    for r in roots:
        r = Path(os.path.realpath(r if r.is_absolute() else Path(recipe_dir) / r))
        if r not in out:
            out.append(r)
    return tuple(out)


def check_inside(path: Path, roots: Sequence[Path], shown: str | None = None) -> Path:
    """`path` with symlinks and `..` resolved, if it lies inside one of `roots`
    (resolved the same way); else PathNotAllowed, naming `shown` (the path as the
    recipe wrote it, quoted). Resolving first is what stops `data/../../etc/passwd` and a
    symlink pointing out of the folder."""
    real = Path(os.path.realpath(path))
    for root in roots:
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
