"""`--dry-run`: push one real shard through every stage, show it, extrapolate.

Like sdg_hub's dry run: before paying for a whole run, see that every stage works
on real records, what a record looks like after each stage, and how long the
whole run will take and how many tokens it will generate. Nothing is written to
the run directory.

What keeps the estimate honest (issue #6, item 10; three unbatched records were
25-70% off):
- The sample is what the real run sends to a stage at once: one shard
  (`shard_size` records, at most `MAX_SAMPLE`, at most `--limit`). Batched
  decoding makes a record's cost fall with the batch size, so a smaller sample
  overestimates and a larger one underestimates.
- Loading a model is a fixed cost: it is timed apart (one tiny request per
  engine before its first stage) and counted once, not per record.
- The real run's shards are costed one by one (`shard_sizes`), each at the
  sample's per-record cost; a stage's keep ratio (or growth: `chunk`, `n`)
  shrinks or grows them for the next stage, as in the real run.
- A global stage whose work does not grow with its input (`self_instruct` stops at
  `target`) is counted once, with its own output count (`dry_run_cost = "fixed"`).
- A global stage that needs more records than the sample holds
  (`train_classifier`: `min_labels` labelled records) is skipped and marked
  "skipped in dry run: needs N"; its records pass through, and a later stage that
  fails for want of its output is marked skipped too.
- The response cache: with `cache=`, requests the real run would answer from an
  existing cache are answered from it here too (read only; nothing is written).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smolforge.context import EnginePool, StageContext
from smolforge.engines.base import Request, Response
from smolforge.engines.cache import ResponseCache
from smolforge.recipe import Recipe
from smolforge.stages.base import GlobalStage, Record, Reject, Result, Shards, SourceStage, Stage
from smolforge.stages.llm import stage_engines

MAX_SAMPLE = 64  # records; past the engine's batch width (32 sequences) a record's cost is flat
SHOW_CHARS = 160  # characters of each column shown in a sample record
FIXED_COST_TYPES = {"self_instruct"}  # stages whose work ends at a target, not at the input


class ReadOnlyCache:
    """An existing response cache that answers but is never written: new responses
    stay in a scratch cache that is thrown away with the dry run."""

    def __init__(self, path: Path, scratch: ResponseCache):
        self._real = ResponseCache(path)
        self._scratch = scratch

    def get_many(self, keys: Sequence[str]) -> dict[str, Response]:
        return {**self._real.get_many(keys), **self._scratch.get_many(keys)}

    def put(self, key: str, response: Response) -> None:
        self._scratch.put(key, response)

    def close(self) -> None:
        self._real.close()


def dry_run(
    recipe: Recipe,
    *,
    sample: int | None = None,
    limit: int | None = None,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run `sample` records (default: one shard, within `limit`) through every stage;
    return per-stage figures, a sample record per stage and the whole run's estimate.
    `cache`: an existing response cache to answer from (read only)."""
    pool = EnginePool()
    with tempfile.TemporaryDirectory(prefix="smolforge-dry-") as tmp:
        scratch = ResponseCache(Path(tmp) / "cache.sqlite")
        reader = ReadOnlyCache(Path(cache), scratch) if cache and Path(cache).exists() else None
        base = StageContext(
            recipe_name=recipe.name, recipe_dir=recipe.base_dir, seed=recipe.seed,
            default_engine=recipe.engine, pool=pool, cache=reader or scratch,  # type: ignore[arg-type]
            run_dir=Path(tmp) / "run", allowed_roots=recipe.allowed_roots,
        )
        (Path(tmp) / "run").mkdir()
        try:
            return _DryRun(recipe, base, sample, limit).run()
        finally:
            pool.close()
            if reader is not None:
                reader.close()
            scratch.close()


def sample_size(recipe: Recipe, limit: int | None, sample: int | None = None) -> int:
    """Records the dry run reads: one shard, at most MAX_SAMPLE, at most `limit`."""
    n = sample if sample is not None else min(recipe.shard_size, MAX_SAMPLE)
    return max(min(n, limit), 0) if limit is not None else n


def needs(stage: Stage, records: list[Record]) -> tuple[int, str] | None:
    """(N, what) when a global stage cannot run on `records`: it needs N of what.

    A stage declares it with `dry_run_needs(records)`; `train_classifier` needs
    `min_labels` records with a numeric label."""
    declared = getattr(stage, "dry_run_needs", None)
    if callable(declared):
        return declared(records)
    min_labels = getattr(stage, "min_labels", None)
    label_column = getattr(stage, "label_column", None)
    if isinstance(min_labels, int) and isinstance(label_column, str):
        have = sum(_numeric(r.get(label_column)) for r in records)
        if have < min_labels:
            return min_labels, f"records with a numeric {label_column!r} (the sample has {have})"
    return None


def fixed_cost(stage: Stage) -> bool:
    """Whether the stage's work is independent of how many records it gets."""
    declared = getattr(stage, "dry_run_cost", None)
    if declared is not None:
        return declared == "fixed"
    return stage.type in FIXED_COST_TYPES


def shard_sizes(total: int, size: int) -> list[int]:
    """How the real run splits `total` records into shards of `size`."""
    if total <= 0:
        return []
    full, rest = divmod(total, size)
    return [size] * full + ([rest] if rest else [])


def show(record: Record, chars: int = SHOW_CHARS) -> dict[str, Any]:
    """A record as the dry run prints it: every column but `meta`, long text cut."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k == "meta":
            continue
        if isinstance(v, str) and len(v) > chars:
            v = v[:chars] + f"... ({len(v)} chars)"
        out[k] = v
    return out


class _DryRun:
    def __init__(self, recipe: Recipe, base: StageContext, sample: int | None, limit: int | None):
        self.recipe = recipe
        self.base = base
        self.n = sample_size(recipe, limit, sample)
        self.limit = limit
        self.loaded: dict[int, float] = {}  # id(engine) -> seconds to load it
        self.missing: dict[str, str] = {}  # column -> the skipped stage that would add it

    def run(self) -> dict[str, Any]:
        names = self.recipe.stage_names()
        batch, row, total = self._source(self.recipe.stages[0], names[0])  # type: ignore[arg-type]
        rows = [row]
        skipped: str | None = None
        for stage, name in zip(self.recipe.stages[1:], names[1:]):
            row, batch, skipped = self._stage(stage, name, batch, skipped)
            rows.append(row)
        report = {
            "sample": self.n,
            "shard_size": self.recipe.shard_size,
            "load_seconds": round(sum(self.loaded.values()), 3),
            "stages": rows,
            "estimate": self._estimate(rows, total),
            "samples": [show(r) for r in batch[:3]],
        }
        if self.recipe.target is not None:
            from smolforge.runner import target_forecast

            report["target"] = target_forecast(self.recipe.target, rows[0]["out"], rows[-1]["out"])
        return report

    # -- stages

    def _source(self, source: SourceStage, name: str) -> tuple[list[Record], dict, int | None]:
        ctx = self.base.for_stage(name)
        t0 = time.perf_counter()
        batch: list[Record] = []
        items = source.read(ctx) if self.n > 0 else iter(())
        for item in items:
            if isinstance(item, Reject):
                continue
            item["id"] = f"{name}-{len(batch):06d}"
            item["meta"] = {}
            batch.append(item)
            if len(batch) >= self.n:
                break
        secs = time.perf_counter() - t0
        total = source.estimate_count(ctx)
        counted = False
        if total is None:  # count what the real run will read (cheap next to generating)
            total, counted = len(batch), True
            if len(batch) >= self.n:
                for item in items:
                    if self.limit is not None and total >= self.limit:
                        break
                    total += not isinstance(item, Reject)
        if self.limit is not None:
            total = min(total, self.limit)
        row = {
            "stage": name, "type": source.type, "kind": source.kind, "in": None, "out": len(batch),
            "seconds": round(secs, 4), "seconds_per_record": secs / max(len(batch), 1),
            "tokens_per_record": 0.0, "requests": 0, "records_total": total,
            "counted": counted, "sample_record": show(batch[0]) if batch else None,
        }
        return batch, row, total

    def _stage(
        self, stage: Stage, name: str, batch: list[Record], skipped: str | None
    ) -> tuple[dict, list[Record], str | None]:
        ctx = self.base.for_stage(name)
        row: dict[str, Any] = {"stage": name, "type": stage.type, "kind": stage.kind, "in": len(batch)}
        need = needs(stage, batch) if isinstance(stage, GlobalStage) else None
        if need is not None:
            n, what = need
            row.update(out=len(batch), skipped=f"skipped in dry run: needs {n} {what}", needs=n)
            self._skip(stage, name)
            return self._skipped(row), batch, name
        lacking = sorted(stage.requires() & set(self.missing))
        if lacking:
            by = self.missing[lacking[0]]
            row.update(out=len(batch), skipped=f"skipped in dry run: needs {lacking[0]!r} from {by} (skipped)")
            self._skip(stage, name)
            return self._skipped(row), batch, skipped
        requests = _Counter()
        ctx.on_response = requests
        try:
            self._load_engines(stage, ctx)
            t0 = time.perf_counter()
            res = self._process(stage, batch, ctx)
            secs = time.perf_counter() - t0
        except Exception as e:
            if skipped is None:
                raise
            reason = f"skipped in dry run: needs the output of {skipped} ({type(e).__name__}: {e})"
            row.update(out=len(batch), skipped=reason[:300])
            self._skip(stage, name)
            return self._skipped(row), batch, skipped
        n_in = max(len(batch), 1)
        row.update(
            out=len(res.kept),
            seconds=round(secs, 4),
            seconds_per_record=secs / n_in,
            tokens_per_record=ctx.stats.completion_tokens / n_in,
            completion_tokens=ctx.stats.completion_tokens,
            requests=requests.n,
            cache_hits=ctx.stats.hits,
            fixed_cost=isinstance(stage, GlobalStage) and fixed_cost(stage),
            # Longest completion in the sample's batch: the decode steps its batch took.
            batch_steps=requests.max_tokens,
            rejects=[r.reason[:200] for r in res.rejected[:3]],
            rejected=len(res.rejected),
            sample_record=show(res.kept[0]) if res.kept else None,
        )
        return row, res.kept, skipped

    def _skip(self, stage: Stage, name: str) -> None:
        """The columns a skipped stage would have added are missing downstream."""
        for col in stage.provides() or ():
            self.missing.setdefault(col, name)

    @staticmethod
    def _skipped(row: dict) -> dict:
        row.update(seconds=None, seconds_per_record=None, tokens_per_record=None, requests=0,
                   sample_record=None, rejects=[], rejected=0)
        return row

    def _process(self, stage: Stage, batch: list[Record], ctx: StageContext) -> Result:
        if isinstance(stage, GlobalStage):
            res = Result()
            for _, r in stage.process_all(Shards(lambda j, cols, b=batch: _columns(b, cols), 1), ctx):
                res.kept += r.records()
                res.rejected += r.rejected
            return res
        return stage.process(batch, ctx) if batch else Result()  # type: ignore[attr-defined]

    def _load_engines(self, stage: Stage, ctx: StageContext) -> None:
        """Load every engine the stage uses before timing it; time the load apart."""
        for engine in stage_engines(stage, ctx):
            if id(engine) in self.loaded:
                continue
            t0 = time.perf_counter()
            engine.generate([Request(prompt="Hi", max_tokens=1)])
            self.loaded[id(engine)] = time.perf_counter() - t0

    # -- the estimate

    def _estimate(self, rows: list[dict], total: int | None) -> dict[str, Any]:
        est: dict[str, Any] = {"records": total, "sample": self.n}
        not_timed = [r["stage"] for r in rows if r.get("skipped")]
        if not_timed:
            est["not_timed"] = not_timed
        if total is None:
            return est
        size = self.recipe.shard_size
        shards = shard_sizes(total, size)  # records per shard entering the next stage
        secs = sum(self.loaded.values())
        toks = 0.0
        secs += rows[0]["seconds_per_record"] * total
        for r in rows[1:]:
            if r.get("skipped"):
                continue
            if r.get("fixed_cost"):
                secs += r["seconds"]
                toks += r["completion_tokens"]
                # its output is spread over its input's shards
                shards = [r["out"] / len(shards)] * len(shards) if shards else []
                continue
            secs += sum(_shard_seconds(r, s) for s in shards)
            toks += r["tokens_per_record"] * sum(shards)
            keep = r["out"] / r["in"] if r["in"] else 0.0
            shards = [s * keep for s in shards]
        est.update(
            seconds=round(secs, 1),
            load_seconds=round(sum(self.loaded.values()), 1),
            completion_tokens=int(round(toks)),
            output_records=int(round(sum(shards))),
        )
        return est


def _shard_seconds(row: dict, records: float) -> float:
    """Seconds for a shard of `records`, from the sample's one batch of `row['in']`.

    Linear in the records, at the per-record cost of a full batch. Measured here
    (SmolLM2-135M, 2 cores): a 4-record shard took 0.42 (generate) and 0.68 (judge,
    prefill-heavy) of an 8-record one, so a fixed per-batch part would not be better
    on average; the error that remains is the last short shard's."""
    n = row["in"]
    if not n or records <= 0:
        return 0.0
    return row["seconds"] * records / n


class _Counter:
    """Counts a stage's responses and the longest completion among them."""

    def __init__(self) -> None:
        self.n = 0
        self.max_tokens = 0

    def __call__(self, resp: Response) -> None:
        self.n += 1
        if not resp.cached:
            self.max_tokens = max(self.max_tokens, *(c.tokens for c in resp.completions), 0)


def _columns(batch: list[Record], columns: list[str] | None) -> list[Record]:
    if columns is None:
        return batch
    return [{k: r[k] for k in columns if k in r} for r in batch]


def _numeric(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
