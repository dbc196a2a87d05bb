"""The local executor, and the shard jobs every executor runs.

`compute_map_shard` and `compute_global` are the whole of "computing a stage":
read the input shard(s) from the previous stage's checkpoint, run the stage,
commit each output shard atomically (`StageDir.write_shard`). The local executor
calls them in this process; the Ray executor calls the very same functions inside
tasks and actors, which is why both give the same data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from smolforge.context import EnginePool, EngineSpec, StageContext
from smolforge.stages.base import GlobalStage, MapStage, Result, Shards
from smolforge.store import StageDir, fingerprint_hash

Advance = Callable[[int], None]  # records of a finished shard, for the progress bar

STAT_FIELDS = ("generated", "cache_hits", "failed_requests", "prompt_tokens", "completion_tokens")


@dataclass(frozen=True)
class ContextSpec:
    """What a worker needs to rebuild a stage's `StageContext` (picklable: no engine
    pool, no cache connection; a worker brings its own)."""

    recipe_name: str
    recipe_dir: Path
    seed: int
    default_engine: EngineSpec
    stage_name: str
    run_dir: Path | None
    allowed_roots: tuple[Path | str, ...] | None = field(default=None)  # str: a URL prefix

    @classmethod
    def of(cls, ctx: StageContext) -> ContextSpec:
        return cls(ctx.recipe_name, Path(ctx.recipe_dir).resolve(), ctx.seed, ctx.default_engine,
                   ctx.stage_name, Path(ctx.run_dir).resolve() if ctx.run_dir else None,
                   ctx.allowed_roots)

    def build(self, pool: EnginePool, cache: Any) -> StageContext:
        return StageContext(
            recipe_name=self.recipe_name, recipe_dir=self.recipe_dir, seed=self.seed,
            default_engine=self.default_engine, pool=pool, cache=cache,
            stage_name=self.stage_name, run_dir=self.run_dir, allowed_roots=self.allowed_roots,
        )


def snapshot(ctx: StageContext) -> dict[str, int]:
    s = ctx.stats
    return {
        "generated": s.generated,
        "cache_hits": s.hits,
        "failed_requests": s.failed,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
    }


def delta(ctx: StageContext, before: dict[str, int]) -> dict[str, int]:
    after = snapshot(ctx)
    return {k: after[k] - before[k] for k in after}


def add_stats(ctx: StageContext, d: dict[str, int]) -> None:
    """Fold a worker's counters into the driver's context (the manifest's totals)."""
    s = ctx.stats
    s.generated += d.get("generated", 0)
    s.hits += d.get("cache_hits", 0)
    s.failed += d.get("failed_requests", 0)
    s.prompt_tokens += d.get("prompt_tokens", 0)
    s.completion_tokens += d.get("completion_tokens", 0)


def empty_schema(stage: Any, input_schema: pa.Schema) -> pa.Schema:
    """The columns of a stage's output when it keeps nothing: its input's, plus the
    ones it adds (typed null, so any later shard's type wins), minus the ones it
    removes. An empty dataset keeps its columns this way."""
    provided = stage.provides() or set()
    fields = [f for f in input_schema if f.name not in stage.removes()]
    names = {f.name for f in fields}
    fields += [pa.field(c, pa.null()) for c in sorted(provided - names)]
    return pa.schema(fields)


def commit(sdir: StageDir, j: int, res: Result, name: str, n_in: int, seconds: float,
           ctx: StageContext, before: dict, input_digest: str | None = None,
           schema: pa.Schema | None = None) -> None:
    """Write shard `j` with its stats (the marker last: the commit point)."""
    stats = {"in": n_in, "out": len(res.kept), "rejected": len(res.rejected), "seconds": round(seconds, 4)}
    stats.update(delta(ctx, before))
    stats.update(res.counts)
    sdir.write_shard(j, res.kept, res.rejected, name, stats, input_digest=input_digest, schema=schema)


def compute_map_shard(stage: MapStage, name: str, sdir: StageDir, prev: StageDir, j: int,
                      ctx: StageContext) -> tuple[int, dict[str, int]]:
    """Compute and commit shard `j` of a map stage; (records in, counter deltas)."""
    table = prev.read_table(j)
    t0 = time.perf_counter()
    before = snapshot(ctx)
    res = stage.process_table(table, ctx)  # a filter reads only its columns (stages/base.py)
    commit(sdir, j, res, name, table.num_rows, time.perf_counter() - t0, ctx, before,
           prev.digest(j), empty_schema(stage, table.schema))
    return table.num_rows, delta(ctx, before)


def input_digest(prev: StageDir, n_in: int) -> str:

    return fingerprint_hash([prev.digest(j) for j in range(n_in)])


def compute_global(stage: GlobalStage, name: str, sdir: StageDir, prev: StageDir, n_in: int,
                   ctx: StageContext, advance: Advance | None = None) -> dict[str, int]:
    """Run a global stage over every input shard and commit each output shard
    (also the empty ones a stage skipped); returns the counter deltas."""
    shards = Shards(lambda j, cols: prev.read_shard(j, cols), n_in, tables=prev.read_table)
    digest = input_digest(prev, n_in)
    start = snapshot(ctx)
    t0 = time.perf_counter()
    before = start
    written = set()

    def schema(j: int) -> pa.Schema:
        return empty_schema(stage, prev.schema(j))

    for j, res in stage.process_all(shards, ctx):
        n_batch = prev.shard_stats(j)["out"]  # records in, whatever the stage creates
        commit(sdir, j, res, name, n_batch, time.perf_counter() - t0, ctx, before, digest, schema(j))
        t0, before = time.perf_counter(), snapshot(ctx)
        written.add(j)
        if advance:
            advance(n_batch)
    for j in sorted(set(range(n_in)) - written):  # a stage may skip empty shards
        commit(sdir, j, Result(), name, prev.shard_stats(j)["out"], 0.0, ctx, before, digest, schema(j))
    return delta(ctx, start)


class LocalExecutor:
    """Every shard in this process, in order; one engine per configuration for the
    whole run (the runner's `EnginePool`)."""

    name = "local"

    def open(self, runner: Any) -> None:
        pass

    def run_map(self, stage: MapStage, name: str, ctx: StageContext, sdir: StageDir,
                prev: StageDir, todo: Sequence[int], advance: Advance) -> None:
        for j in todo:
            n, _ = compute_map_shard(stage, name, sdir, prev, j, ctx)
            advance(n)

    def run_global(self, stage: GlobalStage, name: str, ctx: StageContext, sdir: StageDir,
                   prev: StageDir, n_in: int, advance: Advance) -> None:
        compute_global(stage, name, sdir, prev, n_in, ctx, advance)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def close(self) -> None:
        pass
