"""Sandboxed test runs per second against a bare subprocess with no isolation.

Jobs: small Python functions with 3 asserts each (HumanEval-sized), half passing.
Sides, each with 2 runs at once (2 threads / 2 workers), in one process:
- `bare`: one `/usr/bin/python3 -I -S -c <code + tests>` subprocess per run, no
  isolation, no limits (the naive baseline);
- `bwrap_pool` (smolforge's default): 2 warm bubblewrap sandboxes, each run a fresh
  forked child with its own empty work dir, rlimits, seccomp, kill(-1) after;
- `bwrap_fresh` (`pool=False`): a new bubblewrap sandbox + interpreter per run.
Prints one JSON object: runs/s per side, ratios to bare, the load average.

    python benchmarks/sandbox.py [--quick] [--runs 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from smolforge.sandbox import Job, Limits, open_sandbox  # noqa: E402


def jobs(n: int) -> list[Job]:
    out = []
    for i in range(n):
        k = i % 7
        code = f"def f(xs):\n    total = {k}\n    for x in xs:\n        total += x * x\n    return total\n"
        want = k + 14 if i % 2 == 0 else k + 15  # every other job fails its last assert
        tests = f"assert f([]) == {k}\nassert f([1]) == {k + 1}\nassert f([1, 2, 3]) == {want}\n"
        out.append(Job(code=code, tests=tests))
    return out


def bare(job: Job) -> bool:
    p = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", job.code + "\n" + job.tests],
                       capture_output=True, timeout=60)
    return p.returncode == 0


def timed(fn, n):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    return out, n / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 runs per side")
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n = 100 if args.quick else args.runs
    js = jobs(n)
    expect = [i % 2 == 0 for i in range(n)]
    res: dict = {"runs": n, "workers": args.workers, "load_avg_before": os.getloadavg()[0]}

    with ThreadPoolExecutor(args.workers) as ex:
        got, res["bare_runs_per_s"] = timed(lambda: list(ex.map(bare, js)), n)
    assert got == expect, "bare verdicts wrong"

    limits = Limits(wall_s=10, cpu_s=5)
    t0 = time.perf_counter()
    sb = open_sandbox("bwrap", limits=limits, workers=args.workers)
    res["bwrap_pool_start_s"] = round(time.perf_counter() - t0, 3)
    with sb:
        got, res["bwrap_pool_runs_per_s"] = timed(lambda: [r.passed for r in sb.run(js)], n)
        res["seccomp"] = bool(sb._all[0].info.get("seccomp"))
        res["cgroups"] = sb.describe().get("cgroups")
    assert got == expect, "sandbox verdicts wrong"

    fresh_n = max(20, n // 4)
    with open_sandbox("bwrap", limits=limits, workers=args.workers, pool=False) as sb:
        got, res["bwrap_fresh_runs_per_s"] = timed(lambda: [r.passed for r in sb.run(js[:fresh_n])], fresh_n)
    assert got == expect[:fresh_n], "fresh-sandbox verdicts wrong"

    for k in ("bare_runs_per_s", "bwrap_pool_runs_per_s", "bwrap_fresh_runs_per_s"):
        res[k] = round(res[k], 1)
    res["pool_vs_bare"] = round(res["bwrap_pool_runs_per_s"] / res["bare_runs_per_s"], 2)
    res["fresh_vs_bare"] = round(res["bwrap_fresh_runs_per_s"] / res["bare_runs_per_s"], 2)
    res["pool_vs_fresh"] = round(res["bwrap_pool_runs_per_s"] / res["bwrap_fresh_runs_per_s"], 2)
    res["target_25_per_s_met"] = res["bwrap_pool_runs_per_s"] >= 25
    res["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
