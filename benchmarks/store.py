"""The run store's own cost: per-shard overhead and peak memory of the final write.

1. Per-shard overhead. The same CPU-only CLI run (read JSONL -> length filter ->
   dataset) over N documents at several `shard_size`s; the CPU seconds above the
   largest shard size, divided by the extra shard commits, is the cost of one
   (stage, shard) checkpoint. Reported as a share of the run at the default size.
2. Peak memory at 1M records. The whole CLI run, measured as the child's peak RSS,
   against the baseline the store used to be: read every shard of the last stage,
   concatenate, write once (run on the same checkpoints, in a child of its own).

    python benchmarks/store.py [--docs 100000] [--big 1000000]

Prints JSON. Each measurement runs in its own subprocess (peak RSS is per process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ["data", "model", "token", "small", "train", "judge", "filter", "text", "sample", "batch", "shard", "corpus", "web", "page", "quality", "score", "teacher", "student", "learn", "write", "read", "human", "machine"]


def make_docs(path: Path, n: int, words: int = 20) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"doc": i, "text": " ".join(rng.choices(WORDS, k=words))}) + "\n")


def recipe(path: Path, docs: Path, shard_size: int | None) -> Path:
    lines = ["name: store-bench"]
    if shard_size:
        lines.append(f"shard_size: {shard_size}")
    lines += ["stages:", "  - type: read", f"    path: {docs}", "  - type: length",
              "    min_words: 5"]
    path.write_text("\n".join(lines) + "\n")
    return path


def child(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time: its CPU seconds, wall seconds and peak RSS (MB)."""
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S %M", *cmd], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, user, sys_, rss = r.stderr.strip().splitlines()[-1].split()[1:]
    return {"cpu_s": round(float(user) + float(sys_), 2), "wall_s": float(wall),
            "peak_rss_mb": round(int(rss) / 1024, 1)}


def smolforge(rec: Path, out: Path) -> dict:
    return child([sys.executable, "-m", "smolforge.cli", "run", str(rec), "--out", str(out),
                  "--quiet", "--allow-empty"])


CONCAT_BASELINE = """
import sys, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
d = sorted(Path(sys.argv[1]).glob("stages/01-*/shard-*.parquet"))
t = pa.concat_tables([pq.read_table(p) for p in d], promote_options="permissive")
pq.write_table(t, sys.argv[2], compression="zstd")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="32,256,1000,10000")
    args = ap.parse_args()
    out: dict = {"load_average": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = tmp / "docs.jsonl"
        make_docs(docs, args.docs)
        sizes = [int(s) for s in args.sizes.split(",")]
        runs = {}
        for size in sizes:
            r = smolforge(recipe(tmp / f"r{size}.yaml", docs, size), tmp / f"run{size}")
            r["shards"] = -(-args.docs // size)
            runs[size] = r
        big = max(sizes)
        stages = 2
        per_shard = []
        for size in sizes:
            if size == big:
                continue
            extra = (runs[size]["shards"] - runs[big]["shards"]) * stages
            per_shard.append((runs[size]["cpu_s"] - runs[big]["cpu_s"]) / extra)
        overhead_ms = 1000 * max(0.0, sorted(per_shard)[len(per_shard) // 2])
        default = smolforge(recipe(tmp / "rdef.yaml", docs, None), tmp / "rdef")
        n_default = json.loads((tmp / "rdef" / "stages" / "00-read" / "_DONE").read_text())["shards"]
        out["shard_overhead"] = {
            "docs": args.docs,
            "runs": {str(k): v for k, v in runs.items()},
            "per_shard_commit_ms": round(overhead_ms, 3),
            "default_run": default,
            "default_shards": n_default,
            # upper bound: the per-commit cost measured on small shards, times the commits
            "overhead_share_at_default": round(overhead_ms / 1000 * n_default * stages / default["cpu_s"], 4),
            # direct: the default run against the largest shards (10x fewer commits)
            "cpu_ratio_default_over_largest": round(default["cpu_s"] / runs[big]["cpu_s"], 3),
        }

        docs_big = tmp / "big.jsonl"
        make_docs(docs_big, args.big, words=8)
        run_big = tmp / "big"
        ours = smolforge(recipe(tmp / "rbig.yaml", docs_big, None), run_big)
        base = child([sys.executable, "-c", CONCAT_BASELINE, str(run_big), str(tmp / "concat.parquet")])
        rows = json.loads((run_big / "manifest.json").read_text())["data"]["rows"]
        out["final_write_memory"] = {
            "records": rows,
            "smolforge_whole_run": ours,
            "baseline_concat_then_write_only": base,
            "ratio_peak_rss_ours_over_baseline": round(ours["peak_rss_mb"] / base["peak_rss_mb"], 3),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
