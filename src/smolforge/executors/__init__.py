"""Executors: who computes a (stage, shard).

The runner decides *what* is left to compute (from the run directory: fingerprints,
commit markers, hashes) and asks an executor to compute it; the executor only
computes and commits shards through `StageDir.write_shard`. So the store stays the
single source of truth, and a run started with one executor resumes with the other.

- `local` (default): every shard in this process, one after another; engines batch
  internally (`executors.local`).
- `ray`: map shards as Ray tasks, LLM stages on actor pools of engines, global
  stages as one task over the shard files (`executors.ray`, extra `[ray]`).
"""

from __future__ import annotations

from typing import Any

EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", *, address: str | None = None, **options: Any):
    """An executor by name: `local`, or `ray` (`address`: an existing cluster,
    e.g. `127.0.0.1:6379` or `auto`; none: a local cluster for this run)."""
    if name == "local":
        if address is not None:
            raise ValueError("--address is only for --executor ray")
        from smolforge.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from smolforge.executors.ray import RayExecutor

        return RayExecutor(address=address, **options)
    raise ValueError(f"unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")


EXIT_TARGET_MISSED = 4  # `target:` not reached within max_candidates; partial output kept


def add_run_arguments(parser: Any) -> None:
    """`smolforge run --executor local|ray [--address ADDR]`."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="who computes the shards: this process (local, default) or a Ray "
                        "cluster (ray; needs the [ray] extra)")
    parser.add_argument("--address", help="--executor ray: join this cluster (host:port of "
                        "`ray start --head`, or auto); default: a local cluster for this run")


def target_missed(manifest: dict, err: Any) -> int | None:
    """When a recipe's `target:` was not reached: say by how much and how many more
    candidates the observed acceptance rate needs; EXIT_TARGET_MISSED. Else None."""
    t = manifest.get("target")
    if not t or t.get("reached", True):
        return None
    more = t.get("more_candidates_needed")
    rate = t.get("acceptance") or 0.0
    budget = t.get("max_candidates") or 0
    if t.get("stopped") not in (None, "max_candidates spent"):
        # the budget was not the limit: more of it cannot help
        hint = (f"target.max_candidates ({budget}) was not the limit, {t['candidates']} were used: "
                "the source gives no new records that survive (add input, a `count`, "
                "more `lists` values or sampling variety)")
    elif more:
        hint = (f"about {more} more candidates would be needed at the observed acceptance rate "
                f"({rate:.1%}); raise target.max_candidates to {max(t['candidates'] + more, budget + 1)} "
                "and re-run (rounds resume)")
    else:
        hint = "no candidate survived: the acceptance rate is 0"
    err.print(f"[red]target not reached[/red]: {t.get('kept', 0)} of {t['records']} records after "
              f"{t['candidates']} candidates ({t.get('stopped')}); {hint}")
    return EXIT_TARGET_MISSED
