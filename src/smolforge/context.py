"""What a stage can reach while it runs: the recipe, its seed, engines, the cache.

Stages call `ctx.generate(engine, requests)`, never an engine directly, so every
LLM call goes through the response cache, the token counters and the progress bar.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from smolforge import remote
from smolforge.engines.base import Engine, Request, Response
from smolforge.engines.cache import CacheStats, ResponseCache, cached_generate
from smolforge.paths import PACKAGE_DIR, PathNotAllowed, check_inside, default_roots  # noqa: F401 - re-exported
from smolforge.registry import engines as engine_registry

EngineSpec = str | dict[str, Any] | Engine

def build_engine(spec: EngineSpec) -> Engine:
    """`"llamacpp"` or `{"type": "llamacpp", "model": ...}` -> a validated Engine."""
    if isinstance(spec, Engine):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    cls = engine_registry.get(spec.get("type", "llamacpp"))
    return cls.model_validate({"type": spec.get("type", "llamacpp"), **spec})


class EnginePool:
    """One live engine per distinct configuration, shared by all stages of a run,
    so that two stages using the same model load it once."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}

    def get(self, spec: EngineSpec) -> Engine:
        engine = build_engine(spec)
        key = json.dumps(engine.model_dump(mode="json"), sort_keys=True)
        return self._engines.setdefault(key, engine)

    def close(self) -> None:
        for e in self._engines.values():
            e.close()
        self._engines.clear()


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (recipe seed, stage, record id...)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


class StageContext:
    def __init__(
        self,
        *,
        recipe_name: str,
        recipe_dir: Path,
        seed: int,
        default_engine: EngineSpec,
        pool: EnginePool,
        cache: ResponseCache | None,
        stage_name: str = "",
        on_tokens: Callable[[int], None] | None = None,
        run_dir: Path | None = None,
        allowed_roots: Sequence[Path | str] | None = None,
        on_response: Callable[[Response], None] | None = None,
    ):
        self.recipe_name = recipe_name
        self.recipe_dir = recipe_dir
        self.seed = seed
        self.default_engine = default_engine
        self.pool = pool
        self.cache = cache
        self.stage_name = stage_name
        self.stats = CacheStats()
        self.on_tokens = on_tokens
        self.on_response = on_response
        self.run_dir = run_dir
        # Where `resolve_path` may point: the recipe's `allowed_roots`. None: not
        # checked again here (the recipe's paths were checked when it was loaded).
        self.allowed_roots = tuple(allowed_roots) if allowed_roots is not None else None

    def for_stage(self, name: str) -> StageContext:
        return StageContext(
            recipe_name=self.recipe_name,
            recipe_dir=self.recipe_dir,
            seed=self.seed,
            default_engine=self.default_engine,
            pool=self.pool,
            cache=self.cache,
            stage_name=name,
            on_tokens=self.on_tokens,
            run_dir=self.run_dir,
            allowed_roots=self.allowed_roots,
            on_response=self.on_response,
        )

    def resolve_path(self, path: str | Path) -> Path:
        """A file the recipe names, relative to the recipe's folder. The recipe was
        checked when it was loaded; with `allowed_roots` this is the backstop for
        files that changed since (a new symlink): outside them is a RecipeError."""
        p = Path(remote.local_path(str(path))).expanduser()
        p = p if p.is_absolute() else self.recipe_dir / p
        if self.allowed_roots is None:
            return p
        roots = self.allowed_roots + ((Path(self.run_dir),) if self.run_dir is not None else ())
        try:
            check_inside(p, roots, repr(str(path)))
        except PathNotAllowed as e:
            from smolforge.errors import RecipeError

            raise RecipeError([str(e)]) from None
        return p

    def resolve_input(self, path: str) -> Path | remote.RemoteFile:
        """An input file the recipe names in a field that reads URLs (`decontaminate`'s
        benchmarks): a URL under an allowed prefix as a RemoteFile, else `resolve_path`."""
        if not remote.is_remote(path):
            return self.resolve_path(path)
        if self.allowed_roots is not None:
            try:
                check_inside(path, self.allowed_roots, repr(path))
            except PathNotAllowed as e:
                from smolforge.errors import RecipeError

                raise RecipeError([str(e)]) from None
        return remote.RemoteFile(path)

    def rng(self, *parts: Any) -> random.Random:
        return random.Random(derive_seed(self.seed, self.stage_name, *parts))

    def engine(self, spec: EngineSpec | None = None) -> Engine:
        engine = self.pool.get(spec if spec is not None else self.default_engine)
        if self.run_dir is not None:  # a managed server logs into the run directory
            engine.attach_run_dir(Path(self.run_dir))
        return engine

    def generate(self, engine: Engine, requests: Sequence[Request]) -> list[Response]:
        """Answer `requests` through the cache; report every response as it arrives.

        `on_response` hears each request once, as soon as it is answered (cache hits
        first, then fresh ones as the engine finishes them), so progress moves per
        request, not per shard; `on_tokens` hears the fresh completion tokens."""
        reported: set[int] = set()

        def on_response(i: int, resp: Response) -> None:
            reported.add(i)
            if self.on_tokens and not resp.cached:
                self.on_tokens(resp.completion_tokens)
            if self.on_response:
                self.on_response(resp)

        out = cached_generate(engine, self.cache, requests, self.stats, on_response)
        if self.on_response:  # a request repeated within the batch is answered by its first copy
            for i, resp in enumerate(out):
                if i not in reported:
                    self.on_response(replace(resp, cached=True))
        return out
