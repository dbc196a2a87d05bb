"""smolforge: build training data for small language models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def run(
    recipe: Any,
    out: str | Path,
    *,
    limit: int | None = None,
    overrides: list[str] | None = None,
    cache: str | Path | None = None,
    allow_paths: list[str | Path] | None = None,
):
    """Run a recipe (a `Recipe`, a dict, a YAML path or a built-in name) into `out`
    and return the `Run`; `.data()` gives the final pyarrow Table. Re-running
    with the same `out` resumes. `overrides` are `--set PATH=VALUE` strings and
    `allow_paths` extra folders the recipe may read from (`--allow-path`), for
    every kind of `recipe`."""
    from smolforge.recipe import Recipe, load_recipe
    from smolforge.runner import Runner

    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe, overrides=overrides, allow_paths=allow_paths)
    elif isinstance(recipe, Recipe):
        recipe = recipe.with_overrides(overrides, allow_paths)
    else:
        recipe = load_recipe(recipe, overrides, allow_paths=allow_paths)
    return Runner(recipe, out, limit=limit, cache=cache).run()


def __getattr__(name: str) -> Any:
    # Lazy, so `import smolforge` stays fast for the CLI.
    if name in ("Recipe", "load_recipe", "RecipeError"):
        from smolforge import recipe as _r

        return getattr(_r, name)
    if name == "Run":
        from smolforge.runner import Run

        return Run
    raise AttributeError(name)
