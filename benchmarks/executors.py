"""Local vs Ray executor on the same recipes, in one process; prints one JSON object.

- cpu: N documents (stdlib docstrings, numbered variants; default 200k, --quick 20k)
  -> gopher_quality (a map stage: one Ray task per shard) -> minhash dedup (a global
  stage: one task over the shard files). Local, Ray with 1 CPU, Ray with 2 CPUs.
- llm: 8 greedy generations (16 tokens) on the bundled model; local, Ray with one
  engine replica, Ray with two (each replica loads the model once).
- overhead: a pass-through filter over 200 one-record shards vs 20, under each
  executor (Ray with 1 CPU); (t200 - t20) / 180 is the cost of one more shard, and Ray's minus the
  local one is Ray's overhead per shard.

Ratios are Ray time / local time (wall, whole run, Ray start-up included), so > 1
means Ray is slower. Ray runs in its own network namespace (`unshare -n`, only
loopback) and PID namespace; the script re-executes itself there. Quote the load
average with the figures (`load_avg` in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def in_namespace() -> None:
    """Re-run this script inside fresh net + PID namespaces with only `lo` up."""
    if os.environ.get("SMOLFORGE_BENCH_NS") == "1":
        return
    cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c",
           'ip link set lo up && exec "$@"', "bash", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env={**os.environ, "SMOLFORGE_BENCH_NS": "1"}))


def docs(n: int) -> list[dict]:
    from smolforge.corpora import stdlib_docstrings

    base = [d for d in stdlib_docstrings() if len(d.split()) >= 50]
    return [{"text": f"{base[i % len(base)]}\n\nVariant {i // len(base)}."} for i in range(n)]


def run(recipe_dict: dict, base: Path, tag: str, executor) -> float:
    from smolforge.progress import StageProgress
    from smolforge.recipe import Recipe
    from smolforge.runner import Runner

    recipe = Recipe.from_dict(recipe_dict, base_dir=base)
    out = base / tag
    t0 = time.perf_counter()
    Runner(recipe, out, progress=StageProgress(), executor=executor).run()
    secs = time.perf_counter() - t0
    shutil.rmtree(out)
    return secs


def ray_exec(cpus: int):
    from smolforge.executors.ray import RayExecutor

    return RayExecutor(num_cpus=cpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="20k documents instead of 200k")
    ap.add_argument("--docs", type=int)
    args = ap.parse_args()
    in_namespace()
    from smolforge.executors.local import LocalExecutor

    n = args.docs or (20_000 if args.quick else 200_000)
    out: dict = {"docs": n, "load_avg_start": os.getloadavg()[0], "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="sf-bench-exec-") as tmp:
        base = Path(tmp)
        with open(base / "docs.jsonl", "w") as f:
            for d in docs(n):
                f.write(json.dumps(d) + "\n")
        cpu = {"name": "cpu", "shard_size": max(n // 20, 1), "stages": [
            {"type": "read", "path": "docs.jsonl"}, {"type": "gopher_quality"},
            {"type": "dedup", "method": "minhash", "column": "text"}]}
        t_local = run(cpu, base, "l", LocalExecutor())
        t_r1 = run(cpu, base, "r1", ray_exec(1))
        t_r2 = run(cpu, base, "r2", ray_exec(2))
        out["cpu"] = {"local_s": round(t_local, 2), "ray1_over_local": round(t_r1 / t_local, 3),
                      "ray2_over_local": round(t_r2 / t_local, 3), "ray2_over_ray1": round(t_r2 / t_r1, 3)}

        def llm(replicas: int) -> dict:
            return {"name": "llm", "shard_size": 2, "engine": {"type": "llamacpp", "replicas": replicas},
                    "stages": [{"type": "items", "items": [{"topic": t} for t in
                                ["cats", "rivers", "salt", "stars", "bread", "rain", "maps", "bees"]]},
                               {"type": "generate", "template": "Write one sentence about {{ topic }}.",
                                "max_tokens": 16, "temperature": 0.0}]}

        t_local = run(llm(1), base, "ll", LocalExecutor())
        t_r1 = run(llm(1), base, "lr1", ray_exec(2))
        t_r2 = run(llm(2), base, "lr2", ray_exec(2))
        out["llm"] = {"local_s": round(t_local, 2), "ray_1_replica_over_local": round(t_r1 / t_local, 3),
                      "ray_2_replicas_over_local": round(t_r2 / t_local, 3)}

        def passthrough(k: int) -> dict:
            return {"name": "pass", "shard_size": 1, "stages": [
                {"type": "items", "items": [{"text": f"t{i}"} for i in range(k)]},
                {"type": "filter", "where": "true"}]}

        loc = [run(passthrough(k), base, f"p{k}", LocalExecutor()) for k in (20, 200)]
        ray_t = [run(passthrough(k), base, f"q{k}", ray_exec(1)) for k in (20, 200)]  # 1 CPU: no parallelism
        per_local = (loc[1] - loc[0]) / 180
        per_ray = (ray_t[1] - ray_t[0]) / 180
        out["per_shard"] = {"local_ms": round(per_local * 1000, 2), "ray_ms": round(per_ray * 1000, 2),
                            "ray_overhead_ms": round((per_ray - per_local) * 1000, 2)}
    out["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
