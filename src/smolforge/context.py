"""What a stage can reach while it runs: the recipe, its seed, engines, the cache.

Stages call `ctx.generate(engine, requests)`, never an engine directly, so every
LLM call goes through the response cache, the token counters and the progress bar.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smolforge.engines.base import Engine, Request, Response
from smolforge.engines.cache import CacheStats, ResponseCache, cached_generate
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
        self.run_dir = run_dir

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
        )

    def resolve_path(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.recipe_dir / p

    def rng(self, *parts: Any) -> random.Random:
        return random.Random(derive_seed(self.seed, self.stage_name, *parts))

    def engine(self, spec: EngineSpec | None = None) -> Engine:
        return self.pool.get(spec if spec is not None else self.default_engine)

    def generate(self, engine: Engine, requests: Sequence[Request]) -> list[Response]:
        def on_response(_i: int, resp: Response) -> None:
            if self.on_tokens and not resp.cached:
                self.on_tokens(resp.completion_tokens)

        return cached_generate(engine, self.cache, requests, self.stats, on_response)
