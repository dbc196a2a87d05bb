"""`target: {records: N, max_candidates: M}`: exactly N records, generated in rounds.

The first round reads up to `max_candidates` source records (or `--limit`); each later
round reads more of the source, sized from the acceptance observed so far (plus
`ROUND_MARGIN`), until N records survive every stage or the budget is spent; a
`TargetCut` keeps the first N. `target_forecast` is what `--dry-run` says about it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from smolforge.context import StageContext, derive_seed
from smolforge.recipe import Recipe
from smolforge.stages.base import GlobalStage, Result, Shards
from smolforge.store import StageDir

ROUND_MARGIN = 1.2  # a round asks for 20% more candidates than the observed rate needs
STALL_ROUNDS = 3  # rounds in a row that keep nothing: the source gives nothing new


class TargetCut(GlobalStage):
    """The run's last step under `target:`: keeps the first `records` records in
    shard order (earlier rounds first) and drops the surplus with its reason."""

    type: str = "target"
    records: int

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        left = self.records
        for j in range(len(shards)):
            res = Result()
            for rec in shards[j]:
                if left > 0:
                    res.keep(rec)
                    left -= 1
                else:
                    res.reject(rec, f"surplus: target of {self.records} records already reached")
            yield j, res


class Rounds:
    """The round plan of a `target:` run, kept in the manifest (`target.rounds`) so a
    resumed run replays the same rounds: round 0 reads the source as written (at
    most `max_candidates`, and `--limit`); each later round reads it again with a
    fresh seed (`derive_seed(seed, "target-round", r)`; a source with a `count`
    samples that many), sized from the acceptance observed so far, until `records`
    survive every stage or `max_candidates` are spent. Each round's records are
    shards of their own after the earlier rounds', so map stages compute only the
    new shards and global stages (dedup) see everything kept before."""

    def __init__(self, recipe: Recipe, manifest: dict, limit: int | None):
        assert recipe.target is not None
        self.seed = recipe.seed
        self.records = recipe.target.records
        self.max_candidates = recipe.target.max_candidates
        self.manifest = manifest
        old = manifest.get("target") or {}
        self.fingerprint: str | None = old.get("source_fingerprint")
        self.plan: list[dict] = [dict(r) for r in old.get("rounds", [])]
        self.limit = limit
        self.stopped: str | None = None
        if not self.plan:
            self._reset()

    def _reset(self) -> None:
        first = self.max_candidates if self.limit is None else min(self.limit, self.max_candidates)
        self.plan = [{"round": 0, "seed": self.seed, "budget": first}]

    def source_stale(self, fp: str, sdir: StageDir) -> bool:
        """Whether the source must be read again: its fingerprint changed (the plan
        starts over), or a round was added (or not yet recorded) since it last ran."""
        if fp != self.fingerprint:
            if self.fingerprint is not None:
                self._reset()
            self.fingerprint = fp
            self._save()
        done = sdir.done or {}
        return done.get("rounds", 1) != len(self.plan) or any("shards" not in r for r in self.plan)

    def plan_next(self, last: StageDir, n_shards: int) -> bool:
        """After a pass: plan another round (True) or stop (False, with the reason)."""
        kept = last.records_out(n_shards)
        spent = sum(r.get("produced", 0) for r in self.plan)
        self._save(last, n_shards)
        if kept >= self.records:
            self.stopped = "reached"
            return False
        if spent >= self.max_candidates:
            self.stopped = "max_candidates spent"
            return False
        if self.plan[-1].get("produced", 0) == 0:
            self.stopped = "the source produced no new candidates"
            return False
        recent = self._kept_by_round(last, n_shards)[-STALL_ROUNDS:]
        if len(recent) == STALL_ROUNDS and not any(recent):
            self.stopped = f"{STALL_ROUNDS} rounds in a row kept nothing"
            return False
        rate = kept / spent if spent else 0.0
        if rate > 0:
            size = math.ceil((self.records - kept) / rate * ROUND_MARGIN)
        else:
            size = 2 * self.plan[-1]["produced"]
        size = max(1, min(size, self.max_candidates - spent))
        r = len(self.plan)
        self.plan.append({"round": r, "seed": derive_seed(self.seed, "target-round", r), "budget": size})
        self._save(last, n_shards)
        return True

    def _kept_by_round(self, last: StageDir | None, n_shards: int) -> list[int]:
        out = []
        for r in self.plan:
            a, b = r.get("shards", [0, 0])
            ok = last is not None and b <= n_shards
            out.append(sum(last.shard_stats(j).get("out", 0) for j in range(a, b)) if ok else 0)
        return out

    def report(self, last: StageDir | None, cut: StageDir | None, n_shards: int) -> dict:
        """The manifest's `target` section (what `show` prints)."""
        rounds = []
        kept_by = self._kept_by_round(last, n_shards) if last is not None else [None] * len(self.plan)
        for r, k in zip(self.plan, kept_by):
            row = {k2: r[k2] for k2 in ("round", "seed", "budget", "produced", "shards") if k2 in r}
            row["candidates"] = r.get("produced")
            if k is not None:
                row["kept"] = k
                row["acceptance"] = round(k / r["produced"], 4) if r.get("produced") else None
            rounds.append(row)
        spent = sum(r.get("produced", 0) for r in self.plan)
        out: dict[str, Any] = {"records": self.records, "max_candidates": self.max_candidates,
                               "source_fingerprint": self.fingerprint, "candidates": spent,
                               "rounds": rounds}
        if last is not None:
            kept = last.records_out(n_shards)
            rate = kept / spent if spent else 0.0
            out.update(kept=min(kept, self.records), survivors=kept, acceptance=round(rate, 4),
                       reached=kept >= self.records, stopped=self.stopped)
            if kept < self.records:
                out["more_candidates_needed"] = _ceil_div((self.records - kept) * spent, kept) if kept else None
        return out

    def _save(self, last: StageDir | None = None, n_shards: int = 0) -> None:
        self.manifest["target"] = self.report(last, None, n_shards) if last is not None else {
            **(self.manifest.get("target") or {}), "records": self.records,
            "max_candidates": self.max_candidates, "source_fingerprint": self.fingerprint,
            "rounds": [dict(r) for r in self.plan]}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def target_forecast(target: Any, pilot_candidates: int, pilot_kept: int) -> dict[str, Any]:
    """`--dry-run` under `target:`: the candidates N records need at the pilot's
    acceptance (records out of the last stage per source record). The pilot dedups
    only within itself, so a long run that meets more duplicates needs more."""
    out: dict[str, Any] = {"records": target.records, "max_candidates": target.max_candidates,
                           "pilot_candidates": pilot_candidates, "pilot_kept": pilot_kept,
                           "pilot_acceptance": round(pilot_kept / pilot_candidates, 4) if pilot_candidates else None}
    need = _ceil_div(target.records * pilot_candidates, pilot_kept) if pilot_kept else None
    out["candidates_needed"] = need
    out["within_budget"] = need is not None and need <= target.max_candidates
    return out
