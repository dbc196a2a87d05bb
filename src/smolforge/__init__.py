"""smolforge: build training data for small language models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

from smolforge import moved as _moved  # noqa: E402  (old module paths stay importable)

_moved.install()


def run(
    recipe: Any,
    out: str | Path,
    *,
    limit: int | None = None,
    overrides: list[str] | None = None,
    cache: str | Path | None = None,
    allow_paths: list[str | Path] | None = None,
    executor: Any = "local",
    address: str | None = None,
    allow_empty: bool = False,
):
    """Run a recipe (a `Recipe`, a dict, a YAML path or a built-in name) into `out`
    and return the `Run`; `.data()` gives the final pyarrow Table. Re-running
    with the same `out` resumes. `overrides` are `--set PATH=VALUE` strings and
    `allow_paths` extra folders the recipe may read from (`--allow-path`), for
    every kind of `recipe`. `executor` is `"local"`, `"ray"` (with `address`, as
    `--executor` / `--address`) or an executor object.

    What the CLI reports with a non-zero exit raises here, so it cannot pass
    unnoticed (each a `RunIncomplete` whose `.run` is the run): `EngineFailures`,
    `TargetMissed`, and `EmptyRun` unless `allow_empty`."""
    from smolforge.recipe import Recipe, load_recipe
    from smolforge.runner import Runner, check_outcome

    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe, overrides=overrides, allow_paths=allow_paths)
    elif isinstance(recipe, Recipe):
        recipe = recipe.with_overrides(overrides, allow_paths)
    else:
        recipe = load_recipe(recipe, overrides, allow_paths=allow_paths)
    if isinstance(executor, str):
        from smolforge.executors import make_executor

        executor = make_executor(executor, address=address)
    return check_outcome(Runner(recipe, out, limit=limit, cache=cache, executor=executor).run(),
                         allow_empty=allow_empty)


def __getattr__(name: str) -> Any:
    # Lazy, so `import smolforge` stays fast for the CLI.
    if name in ("Recipe", "load_recipe", "RecipeError"):
        from smolforge import recipe as _r

        return getattr(_r, name)
    if name in ("Run", "RunIncomplete", "EngineFailures", "EmptyRun", "TargetMissed"):
        from smolforge import runner as _run

        return getattr(_run, name)
    raise AttributeError(name)
