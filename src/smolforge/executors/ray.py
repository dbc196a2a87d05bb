"""The Ray executor: shards as Ray tasks, engines as actor pools.

- A CPU map stage (filters, minhash signatures ...): one Ray task per shard
  (`num_cpus=1`), each committing its own shard with `StageDir.write_shard`.
- An LLM map stage: its engines live in a pool of `replicas` actors (each asking
  the engine config's `num_cpus` / `num_gpus`), so a model loads once per replica,
  not once per shard; the actors stay up for the whole run, and a later stage with
  the same engines reuses them. One shard at a time per actor, so the engine batches
  a whole shard, as in the local executor.
- A global stage (dedup, classifier training, pairs): one task over the shard files
  (on an engine actor when it generates), running the same code as the local
  executor, so the results are identical.

The response cache stays one SQLite file, written by one process: a `CacheServer`
actor pinned to the driver's node owns the connection; workers ask it for hits and
send it each fresh response as soon as it arrives (a synchronous call: when a shard
is committed, its responses are in the cache). One writer means no lock contention,
and the cache need not be on shared storage. A worker killed mid-shard has cached
every response that finished before the kill; Ray retries the shard's task (on a
restarted actor), which finds them in the cache and commits the shard once: the
commit is atomic (temporary names, the marker last), so a half-written attempt is
never read.

The run directory must be on storage every node sees at the same path (one
machine, or NFS / a parallel filesystem on a cluster): workers read their input
shards and commit their output there. smolforge must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

from smolforge.context import EnginePool, StageContext
from smolforge.engines.base import Response
from smolforge.executors.local import (
    Advance,
    ContextSpec,
    add_stats,
    compute_global,
    compute_map_shard,
)
from smolforge.stages.base import GlobalStage, MapStage
from smolforge.stages.llm import stage_engines
from smolforge.store import StageDir

RETRIES = 3  # a shard whose worker died is retried this many times (then the run fails)
RESUME = "the shards committed so far are kept: run the same command again to resume"


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'smolforge[ray]'") from None
    return ray


class RemoteCache:
    """The worker side of the response cache: the `ResponseCache` calls that
    `cached_generate` makes, answered by the driver's `CacheServer` actor (named,
    so that a restarted engine actor finds it again)."""

    def __init__(self, server_name: str):
        self._name = server_name
        self._handle: Any = None

    @property
    def _server(self) -> Any:
        if self._handle is None:
            self._handle = _ray().get_actor(self._name)
        return self._handle

    def get_many(self, keys: Sequence[str]) -> dict[str, Response]:
        found = self._call("get_many", list(keys))
        return {k: Response.from_json(v) for k, v in found.items()}

    def put(self, key: str, response: Response) -> None:
        self._call("put", key, response.to_json())

    def _call(self, method: str, *args: Any) -> Any:
        """A call to the cache actor. Ray restarts a dead one (it reopens the SQLite
        file) and retries the call; past its restarts, an error that says what to do
        instead of Ray's ActorDiedError."""
        ray = _ray()
        try:
            return ray.get(getattr(self._server, method).remote(*args))
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"the run's response-cache actor (CacheServer, on the driver's node) died "
                               f"and Ray could not restart it ({type(e).__name__}); {RESUME}") from None


class CacheServer:
    """Owns the run's SQLite response cache (the only connection workers use)."""

    def __init__(self, path: str):
        from smolforge.engines.cache import ResponseCache

        self._cache = ResponseCache(path)

    def get_many(self, keys: list[str]) -> dict[str, str]:
        return {k: r.to_json() for k, r in self._cache.get_many(keys).items()}

    def put(self, key: str, response_json: str) -> None:
        self._cache.put(key, Response.from_json(response_json))

    def close(self) -> None:
        self._cache.close()


class StageWorker:
    """An engine replica: keeps its `EnginePool` (loaded models) across shards and
    stages; computes map shards and whole global stages that generate."""

    def __init__(self, cache_server: Any):
        self._pool = EnginePool()
        self._cache = RemoteCache(cache_server) if cache_server else None

    def map_shard(self, spec: ContextSpec, stage: MapStage, name: str, sdir: StageDir,
                  prev: StageDir, j: int) -> tuple[int, int, dict]:
        ctx = spec.build(self._pool, self._cache)
        n, d = compute_map_shard(stage, name, sdir, prev, j, ctx)
        return j, n, d

    def global_stage(self, spec: ContextSpec, stage: GlobalStage, name: str, sdir: StageDir,
                     prev: StageDir, n_in: int) -> dict:
        return compute_global(stage, name, sdir, prev, n_in, spec.build(self._pool, self._cache))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self._pool.close()


def _map_task(spec: ContextSpec, stage: MapStage, name: str, sdir: StageDir, prev: StageDir,
              j: int, cache_server: Any) -> tuple[int, int, dict]:
    ctx = spec.build(EnginePool(), RemoteCache(cache_server) if cache_server else None)
    n, d = compute_map_shard(stage, name, sdir, prev, j, ctx)
    return j, n, d


def _global_task(spec: ContextSpec, stage: GlobalStage, name: str, sdir: StageDir, prev: StageDir,
                 n_in: int, cache_server: Any) -> dict:
    ctx = spec.build(EnginePool(), RemoteCache(cache_server) if cache_server else None)
    return compute_global(stage, name, sdir, prev, n_in, ctx)


def pool_resources(engines: list) -> dict[str, Any]:
    """One actor holds all of a stage's engines: replicas = the most any of them
    asks for; CPUs and GPUs per actor = their sums."""
    return {
        "replicas": max(getattr(e, "replicas", 1) for e in engines),
        "num_cpus": sum(getattr(e, "num_cpus", 1.0) for e in engines),
        "num_gpus": sum(getattr(e, "num_gpus", 0.0) for e in engines),
    }


class RayExecutor:
    """Runs shards on a Ray cluster: `address` joins one (`ray start --head`; `auto`
    finds a local one); without it, a local cluster lives for this run only."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self._started = False
        self._cache: Any = None
        self._cache_name = ""
        self._pools: dict[str, list[Any]] = {}  # engines key -> actors
        self._pool_info: dict[str, dict] = {}
        self._remote: dict[str, Any] = {}
        self.shards = 0  # shards computed (for the manifest)

    # ---------------------------------------------------------------- lifetime

    def open(self, runner: Any) -> None:
        ray = _ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kw.update(include_dashboard=False, num_cpus=self.num_cpus)
            ray.init(address=self.address, **kw)
            self._started = True
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._remote = {
            "map": ray.remote(max_retries=RETRIES, num_cpus=1)(_map_task),
            "global": ray.remote(max_retries=RETRIES, num_cpus=1)(_global_task),
            "worker": ray.remote(StageWorker),
        }
        cache_path = str(runner.cache_path.resolve())
        self._cache_name = f"smolforge-cache-{uuid.uuid4().hex[:12]}"
        # A dead cache actor is restarted (it reopens the file; every committed response
        # is in it) and the calls it missed are retried.
        self._cache = ray.remote(CacheServer).options(
            name=self._cache_name, num_cpus=0, scheduling_strategy=here,
            max_restarts=RETRIES, max_task_retries=RETRIES).remote(cache_path)

    def close(self) -> None:
        if not self._remote:
            return
        ray = _ray()
        for actors in self._pools.values():
            for a in actors:
                with contextlib.suppress(Exception):  # a dead actor has nothing to release
                    ray.get(a.close.remote(), timeout=30)
                ray.kill(a)
        self._pools.clear()
        if self._cache is not None:
            try:
                with contextlib.suppress(ray.exceptions.RayActorError):  # dead: nothing to close
                    ray.get(self._cache.close.remote(), timeout=30)
            finally:
                ray.kill(self._cache)
                self._cache = None
        if self._started:
            ray.shutdown()
            self._started = False
        self._remote = {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "engine_pools": list(self._pool_info.values()),
                "shards": self.shards}

    # ---------------------------------------------------------------- pools

    def _actors(self, engines: list) -> list[Any]:
        key = json.dumps([e.model_dump(mode="json") for e in engines], sort_keys=True)
        if key not in self._pools:
            res = pool_resources(engines)
            opts = {"num_cpus": res["num_cpus"], "num_gpus": res["num_gpus"],
                    "max_restarts": RETRIES, "max_task_retries": RETRIES}
            self._pools[key] = [self._remote["worker"].options(**opts).remote(self._cache_name)
                                for _ in range(res["replicas"])]
            self._pool_info[key] = {"engines": [e.describe().get("model") or e.type for e in engines], **res}
        return self._pools[key]

    def _make_room(self) -> None:
        """Idle engine actors hold their CPUs for the whole run; when they leave no
        CPU for a CPU stage's tasks, release them (a later LLM stage starts new ones)."""
        ray = _ray()
        if self._pools and ray.available_resources().get("CPU", 0) < 1:
            for actors in self._pools.values():
                for a in actors:
                    with contextlib.suppress(Exception):
                        ray.get(a.close.remote(), timeout=30)
                    ray.kill(a)
            self._pools.clear()

    def actor_pids(self) -> list[int]:
        """Process ids of the engine actors (tests kill one)."""
        ray = _ray()
        return [ray.get(a.pid.remote()) for actors in self._pools.values() for a in actors]

    # ---------------------------------------------------------------- stages

    def run_map(self, stage: MapStage, name: str, ctx: StageContext, sdir: StageDir,
                prev: StageDir, todo: Sequence[int], advance: Advance) -> None:
        ray = _ray()
        spec = ContextSpec.of(ctx)
        engines = stage_engines(stage, ctx)
        pending: dict[Any, Any] = {}  # object ref -> actor (None: a task)
        if engines:
            # One shard in flight per replica: each engine batches a whole shard.
            actors = self._actors(engines)
            free = list(actors)
            queue = list(todo)
            while queue or pending:
                while queue and free:
                    a = free.pop()
                    pending[a.map_shard.remote(spec, stage, name, sdir, prev, queue.pop(0))] = a
                ready, _ = ray.wait(list(pending), num_returns=1)
                a = pending.pop(ready[0])
                free.append(a)
                self._finish(ready[0], ctx, advance)
        else:
            self._make_room()
            for j in todo:
                pending[self._remote["map"].remote(spec, stage, name, sdir, prev, j, self._cache_name)] = None
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                pending.pop(ready[0])
                self._finish(ready[0], ctx, advance)

    def _finish(self, ref: Any, ctx: StageContext, advance: Advance) -> None:
        _, n, d = _get(ref)
        add_stats(ctx, d)
        self.shards += 1
        advance(n)

    def run_global(self, stage: GlobalStage, name: str, ctx: StageContext, sdir: StageDir,
                   prev: StageDir, n_in: int, advance: Advance) -> None:
        spec = ContextSpec.of(ctx)
        engines = stage_engines(stage, ctx)
        if engines:
            ref = self._actors(engines)[0].global_stage.remote(spec, stage, name, sdir, prev, n_in)
        else:
            self._make_room()
            ref = self._remote["global"].remote(spec, stage, name, sdir, prev, n_in, self._cache_name)
        add_stats(ctx, _get(ref))
        self.shards += n_in
        advance(sum(prev.shard_stats(j)["out"] for j in range(n_in)))


def _get(ref: Any) -> Any:
    """`ray.get`, raising a stage's own exception (not Ray's wrapper), so errors read
    the same with either executor."""
    ray = _ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else None
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as e:  # an engine actor died more often than it is restarted
        raise RuntimeError(f"a Ray engine actor died {RETRIES + 1} times ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}); {RESUME}") from None
