"""`--dry-run`: push a few records through every stage and extrapolate.

Like sdg_hub's dry run: before paying for a whole run, see that every stage works
on real records and how long the whole run will take and how many tokens it will
generate. Nothing is written to the run directory.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from smolforge.context import EnginePool, StageContext
from smolforge.engines.base import Request
from smolforge.engines.cache import ResponseCache
from smolforge.recipe import Recipe
from smolforge.stages.base import GlobalStage, Reject, Result, Shards, SourceStage
from smolforge.stages.generate import LLMStage


def dry_run(recipe: Recipe, *, sample: int = 3, limit: int | None = None) -> dict[str, Any]:
    pool = EnginePool()
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(f"{tmp}/cache.sqlite")
        base = StageContext(
            recipe_name=recipe.name, recipe_dir=recipe.base_dir, seed=recipe.seed,
            default_engine=recipe.engine, pool=pool, cache=cache,
        )
        try:
            return _dry_run(recipe, base, sample, limit)
        finally:
            pool.close()
            cache.close()


def _dry_run(recipe: Recipe, base: StageContext, sample: int, limit: int | None) -> dict[str, Any]:
    names = recipe.stage_names()
    source: SourceStage = recipe.stages[0]  # type: ignore[assignment]
    ctx = base.for_stage(names[0])
    batch = []
    for item in source.read(ctx):
        if not isinstance(item, Reject):
            item["id"] = f"{names[0]}-{len(batch):06d}"
            item["meta"] = {}
            batch.append(item)
        if len(batch) >= sample:
            break
    total = source.estimate_count(ctx)
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    rows = [{"stage": names[0], "in": None, "out": len(batch), "seconds_per_record": 0.0, "tokens_per_record": 0.0}]
    for stage, name in zip(recipe.stages[1:], names[1:]):
        ctx = base.for_stage(name)
        if isinstance(stage, LLMStage):  # load models before timing
            for engine in stage.engines(ctx):
                engine.generate([Request(prompt="Hi", max_tokens=1)])
        t0 = time.perf_counter()
        if isinstance(stage, GlobalStage):
            res = Result()
            for _, r in stage.process_all(Shards(lambda j, cols, b=batch: b, 1), ctx):
                res.kept += r.kept
                res.rejected += r.rejected
        else:
            res = stage.process(batch, ctx) if batch else Result()
        secs = time.perf_counter() - t0
        n_in = max(len(batch), 1)
        rows.append({
            "stage": name,
            "in": len(batch),
            "out": len(res.kept),
            "seconds_per_record": secs / n_in,
            "tokens_per_record": ctx.stats.completion_tokens / n_in,
            "rejects": [r.reason[:200] for r in res.rejected[:3]],
        })
        batch = res.kept
    estimate: dict[str, Any] = {"records": total}
    if total is not None:
        n, secs, toks = float(total), 0.0, 0.0
        for r in rows[1:]:
            secs += n * r["seconds_per_record"]
            toks += n * r["tokens_per_record"]
            n *= r["out"] / r["in"] if r["in"] else 0.0
        estimate.update(seconds=round(secs, 1), completion_tokens=int(toks), output_records=int(n))
    return {"sample": sample, "stages": rows, "estimate": estimate, "samples": batch[:sample]}
