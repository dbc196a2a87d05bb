"""`pairs`: rated candidates binarised into chosen/rejected pairs, as the cleaned
UltraFeedback sets do (Argilla's `ultrafeedback-binarized-preferences-cleaned`)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result, Shards
from smolforge.stats import value_counts


def _choice(rng, items: list[int]) -> int:
    return items[0] if len(items) == 1 else rng.choice(items)


def make_pairs(scores: list[float | None], strategy: str, min_margin: float, rng,
               max_pairs: int | None = None, cut: list[bool] | None = None,
               ) -> tuple[list[tuple[int, int]], str | None, dict[str, int]]:
    """(chosen, rejected) index pairs for one prompt, or the reason there are none.

    `random_lower` (default; cleaned UltraFeedback): chosen = the best score (a
    seeded pick among equal best), rejected = a seeded pick among those at least
    `min_margin` below it and strictly lower. `best_worst`: the best against the
    worst. `all_pairs`: every pair with a margin > 0 and >= min_margin (equal
    scores are skipped and counted). `cut`: candidates cut off at max_tokens;
    while a complete one is rated, a cut one is never chosen (it may be rejected).
    Counts: `equal_pairs_skipped`, `cut_best_passed_over` (a prompt whose best
    score went to a cut candidate)."""
    counts = {"equal_pairs_skipped": 0, "cut_best_passed_over": 0}
    rated = [k for k, s in enumerate(scores) if s is not None]
    unrated = len(scores) - len(rated)
    if len(rated) < 2:
        return [], f"{len(rated)} rated candidate(s), need 2" + (f" ({unrated} unrated)" if unrated else ""), counts
    sc = {k: float(scores[k]) for k in rated}  # type: ignore[arg-type]
    best = max(sc.values())
    worst = min(sc.values())
    if best == worst:
        return [], f"tie: all {len(rated)} rated candidates scored {best:g}", counts
    complete = [k for k in rated if not (cut and cut[k])]
    choosable = complete or rated  # every one cut: none is preferred over a complete one
    if max(sc[k] for k in choosable) < best:
        counts["cut_best_passed_over"] = 1
        best = max(sc[k] for k in choosable)
        if best == worst:
            return [], (f"truncated: the best-scored candidate(s) were cut at max_tokens and every "
                        f"complete one scored the lowest ({best:g})"), counts
    if strategy == "all_pairs":
        pairs = []
        for a in rated:
            for b in rated:
                if a < b and sc[a] == sc[b]:
                    counts["equal_pairs_skipped"] += 1
                if a in choosable and sc[a] > sc[b] and sc[a] - sc[b] >= min_margin:
                    pairs.append((a, b))
        pairs.sort(key=lambda p: (-(sc[p[0]] - sc[p[1]]), p))
        if not pairs:
            return [], f"margin: no pair differs by >= min_margin {min_margin:g} (best {best:g}, worst {worst:g})", counts
        if max_pairs is not None and len(pairs) > max_pairs:
            pairs = sorted(rng.sample(pairs, max_pairs), key=lambda p: (-(sc[p[0]] - sc[p[1]]), p))
        return pairs, None, counts
    chosen = _choice(rng, [k for k in choosable if sc[k] == best])
    if strategy == "best_worst":
        if best - worst < min_margin:
            return [], f"margin: best {best:g} - worst {worst:g} = {best - worst:g} < min_margin {min_margin:g}", counts
        return [(chosen, _choice(rng, [k for k in rated if sc[k] == worst]))], None, counts
    lower = [k for k in rated if sc[k] < best and best - sc[k] >= min_margin]
    if not lower:
        below = max(v for v in sc.values() if v < best)
        return [], (f"margin: best {best:g}, next {below:g}: none is >= min_margin {min_margin:g} lower"), counts
    return [(chosen, rng.choice(lower))], None, counts


@stages.register
class Pairs(MapStage):
    """Binarise rated candidates into preference pairs, one record per pair
    (`prompt`, `chosen`, `rejected`, `chosen_score`, `rejected_score`,
    `margin`, `chosen_teacher`, `rejected_teacher`, `chosen_model`,
    `rejected_model`). A prompt that yields no pair (ties, too small a margin,
    fewer than two rated candidates) is rejected with that reason."""

    type: Literal["pairs"] = "pairs"
    strategy: Literal["random_lower", "best_worst", "all_pairs"] = "random_lower"
    min_margin: float = Field(0.0, ge=0, description="least score difference between chosen and rejected (ties: always dropped)")
    max_pairs: int | None = Field(None, ge=1, description="all_pairs: at most this many pairs per prompt (a seeded sample)")
    candidates_column: str = "candidates"
    keep_candidates: bool = Field(False, description="keep the candidates list in each pair record")
    allow_truncated: bool = Field(
        False, description="let a candidate cut off at max_tokens (finish_reason length) be chosen over a "
        "complete one (default: a cut candidate is only ever the rejected side, unless every one is cut)")

    def requires(self) -> set[str]:
        return {self.candidates_column}

    def provides(self) -> set[str]:
        return {"chosen", "rejected", "chosen_score", "rejected_score", "margin", "chosen_teacher",
                "rejected_teacher", "chosen_model", "rejected_model"}

    def removes(self) -> set[str]:
        return set() if self.keep_candidates else {self.candidates_column}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        counts: Counter = Counter()
        for rec in batch:
            cands = rec.get(self.candidates_column) or []
            scores = [c.get("score") for c in cands]
            cut = None if self.allow_truncated else [c.get("finish_reason") == "length" for c in cands]
            pairs, why, extra = make_pairs(scores, self.strategy, self.min_margin, ctx.rng(rec["id"]),
                                           self.max_pairs, cut)
            counts.update(extra)
            if why is not None:
                counts["dropped_tie" if why.startswith("tie") else "dropped_truncated" if why.startswith("truncated")
                       else "dropped_margin" if why.startswith("margin") else "dropped_unrated"] += 1
                errs = [f"{c.get('teacher')}: {c.get('rate_error')}" for c in cands if c.get("score") is None]
                res.reject(rec, why + (f"; unrated: {' | '.join(errs)[:400]}" if errs and not why.startswith("tie") else ""))
                continue
            counts["prompts_paired"] += 1
            base = {k: v for k, v in rec.items() if self.keep_candidates or k != self.candidates_column}
            for p, (a, b) in enumerate(pairs):
                ca, cb = cands[a], cands[b]
                res.keep({**base, "id": f"{rec['id']}.p{p}", "chosen": ca["text"], "rejected": cb["text"],
                          "chosen_score": float(ca["score"]), "rejected_score": float(cb["score"]),
                          "margin": float(ca["score"]) - float(cb["score"]),
                          "chosen_teacher": ca.get("teacher"), "rejected_teacher": cb.get("teacher"),
                          "chosen_model": ca.get("model"), "rejected_model": cb.get("model"),
                          "meta": {**rec.get("meta", {}), ctx.stage_name: {
                              "strategy": self.strategy, "chosen": a, "rejected": b, "scores": scores}}})
                counts["pairs"] += 1
        res.counts.update({k: float(v) for k, v in counts.items()})
        for k in ("pairs", "prompts_paired", "dropped_tie", "dropped_margin", "dropped_unrated"):
            res.counts.setdefault(k, 0.0)
        return res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        chosen, rejected, margins = [], [], []
        wins: Counter = Counter()
        losses: Counter = Counter()
        for j in range(len(out)):
            for r in out.columns(j, ["chosen_score", "rejected_score", "margin", "chosen_teacher", "rejected_teacher"]):
                chosen.append(r["chosen_score"])
                rejected.append(r["rejected_score"])
                margins.append(r["margin"])
                wins[r["chosen_teacher"]] += 1
                losses[r["rejected_teacher"]] += 1
        teachers = sorted(set(wins) | set(losses), key=str)
        return {
            "pairs": len(chosen),
            "chosen_score_hist": value_counts(chosen),
            "rejected_score_hist": value_counts(rejected),
            "margin_hist": value_counts(margins),
            "teacher_wins": {str(t): {"chosen": wins[t], "rejected": losses[t],
                                      "win_rate": round(wins[t] / (wins[t] + losses[t]), 3)} for t in teachers},
        }
