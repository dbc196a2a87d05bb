"""Judges that check themselves (issue #26): position bias (rating vs display
position; for pairwise, the side shown first winning), degenerate signals (one
constant score, ratings equal to their position, a score uncorrelated with every
criterion), and a panel's agreement (Spearman's rho per pair of judges,
Krippendorff's alpha). Reported in the manifest, `show`, the report and the card."""

from __future__ import annotations

import statistics
from typing import Any

from smolforge.stats import krippendorff_alpha_interval, spearman

# ------------------------------------------------------------------ self-checks

CHECK_MIN = 8  # ratings below this many say nothing about a judge
POSITION_RHO = 0.8  # |Spearman| of rating with display position that marks a degenerate judge
EQUAL_TO_POSITION = 0.9  # share of ratings equal to their display position (1, 2, 3...)
ONE_SIDE = 0.9  # share of comparisons won by the response shown first (or second)
UNCORRELATED = 0.1  # |Spearman| of the score with every criterion below this: unrelated


def judge_check(scores: list[float], positions: list[int] | None = None,
                criteria: dict[str, list[float]] | None = None,
                orders: list[tuple[float, float]] | None = None,
                overall: list[float] | None = None, alone: bool = False) -> dict[str, Any]:
    """What a judge's own output says about it: position bias and signs of a
    degenerate judge (Zheng et al., 2023, MT-Bench: position bias; a small model's
    listwise ratings often copy the display order).

    - `positions`: the display position (1-based) each score was given at: the
      mean rating by position, Spearman's rho of rating with position, and the
      share of ratings equal to their position.
    - `orders`: per compared pair, P(a better) with a shown first and with a shown
      second: the agreement between the two orders and the share of comparisons the
      first-shown response won.
    - `criteria`: per criterion (aspect, yes/no question) its value for each of
      `overall` (default: `scores`), the combined scores: Spearman's rho with each.
    - `alone`: each text was judged in a request of its own, so no display
      position can bias it (said in `position_bias`); the other signals still apply.

    `degenerate` lists the signals found (empty: none): one constant score, ratings
    that follow or equal the display position, one position winning nearly every
    comparison, a score uncorrelated with every criterion. Nothing is flagged below
    CHECK_MIN ratings."""
    out: dict[str, Any] = {"ratings": len(scores)}
    bad: list[str] = []
    enough = len(scores) >= CHECK_MIN
    if enough and len(set(scores)) == 1:
        bad.append(f"one constant score: all {len(scores)} ratings are {scores[0]:g}")
    if alone:
        out["position_bias"] = {"shown": "one text per request: no display position"}
    if positions:
        by: dict[int, list[float]] = {}
        for p, v in zip(positions, scores):
            by.setdefault(p, []).append(v)
        rho = spearman([float(p) for p in positions], scores)
        equal = sum(float(p) == v for p, v in zip(positions, scores)) / len(scores)
        out["position_bias"] = {
            "mean_rating_by_position": {str(p): round(statistics.fmean(v), 3) for p, v in sorted(by.items())},
            "spearman_rating_position": None if rho is None else round(rho, 3),
            "ratings_equal_to_position": round(equal, 3)}
        if enough and equal >= EQUAL_TO_POSITION:
            bad.append(f"ratings equal their display position ({equal:.0%} of {len(scores)})")
        elif enough and rho is not None and abs(rho) >= POSITION_RHO:
            bad.append(f"ratings follow the display position (Spearman {rho:.2f})")
    if orders:
        agree = sum((p1 > 0.5 and p2 > 0.5) or (p1 < 0.5 and p2 < 0.5) for p1, p2 in orders) / len(orders)
        # order 1 shows a first (a wins: p1 > 1/2); order 2 shows b first (b wins: p2 < 1/2)
        first = statistics.fmean([(p1 > 0.5) + (p2 < 0.5) for p1, p2 in orders]) / 2
        out["position_bias"] = {"pairs": len(orders), "order_agreement": round(agree, 3),
                                "first_shown_wins": round(first, 3)}
        if len(orders) >= CHECK_MIN and max(first, 1 - first) >= ONE_SIDE:
            side = "first" if first >= 0.5 else "second"
            bad.append(f"the {side}-shown response wins {max(first, 1 - first):.0%} of "
                       f"{2 * len(orders)} comparisons (the two orders agree on {agree:.0%} of pairs)")
    combined = scores if overall is None else overall
    if criteria and len(set(combined)) > 1:
        rhos = {name: spearman(vals, combined) for name, vals in criteria.items()}
        out["spearman_score_criterion"] = {k: None if r is None else round(r, 3) for k, r in rhos.items()}
        if len(combined) >= CHECK_MIN and len(criteria) > 1 and all(r is None or abs(r) < UNCORRELATED for r in rhos.values()):
            bad.append(f"the score is uncorrelated with every criterion ({', '.join(criteria)})")
    out["degenerate"] = bad
    return out


def panel_agreement(panel: list[list[float | None]], names: list[str]) -> dict[str, Any]:
    """A panel's agreement: Spearman's rho for every pair of judges (over the records
    both scored) and Krippendorff's alpha (interval) over all of them."""
    pairs = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            both = [(r[a], r[b]) for r in panel if r[a] is not None and r[b] is not None]
            rho = spearman([x for x, _ in both], [y for _, y in both])
            pairs[f"{names[a]} ~ {names[b]}"] = None if rho is None else round(rho, 4)
    alpha = krippendorff_alpha_interval(panel)
    return {"judges": names, "records": len(panel), "spearman": pairs,
            "krippendorff_alpha_interval": None if alpha is None else round(alpha, 4)}
