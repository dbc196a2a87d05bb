"""The statistics smolforge reports, defined once: ranks and rank correlation (judge
agreement, classifier quality), Krippendorff's alpha (judge panels), the percentile
bootstrap (eval), and histograms (show, report, stage summaries)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Average ranks, 1-based (ties share the mean of their positions), as scipy's
    `rankdata`."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]] if len(x) else np.zeros(0, bool)
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    out = np.empty(len(x))
    out[order] = ((starts + ends - 1) / 2.0 + 1)[group]
    return out


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | None:
    """Pearson's r; None when either side is constant or there are fewer than 2 pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rho: Pearson's correlation of the average ranks (scipy's definition).
    None when either side is constant or there are fewer than 2 pairs."""
    if len(x) != len(y) or len(x) < 2:
        return None
    return pearson(ranks(x), ranks(y))


def krippendorff_alpha_interval(units: list[list[float | None]]) -> float | None:
    """Krippendorff's alpha with the interval metric (squared differences), for
    `units[u][c]` = coder c's value for unit u (None: missing). Units with fewer than
    two values are not pairable and left out (Krippendorff, 2011, "Computing
    Krippendorff's Alpha-Reliability"). None if nothing is pairable or there is
    no variation at all."""
    values = [[v for v in u if v is not None] for u in units]
    values = [u for u in values if len(u) >= 2]
    n = sum(len(u) for u in values)
    if n < 2:
        return None
    d_o = sum(sum((a - b) ** 2 for i, a in enumerate(u) for j, b in enumerate(u) if i != j) / (len(u) - 1)
              for u in values) / n
    pooled = [v for u in values for v in u]
    d_e = sum((a - b) ** 2 for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1 - d_o / d_e


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples` x `n` indices drawn with replacement (seeded: the same CI every run)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(scores: np.ndarray, idx: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over resample indices `idx`
    (Efron & Tibshirani 1993); the same `idx` for two models pairs their resamples."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) == 0:
        return float("nan"), float("nan"), float("nan")
    means = scores[idx].mean(axis=1)
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [a, 100 - a])
    return float(scores.mean()), float(lo), float(hi)


def histogram(values: list[float], bins: int = 10, rejected: list[float] | None = None) -> dict:
    """Counts per value for small integer ranges (judge scores), else `bins` equal bins.
    With `rejected` (the scores of dropped records), the bins span both and each bin
    also counts the rejected ones (`rejected`), so a chart shows where a threshold cut;
    n, mean, median, min and max stay those of `values`."""

    def clean(vs: list[float]) -> list[float]:
        return [float(v) for v in vs if v is not None and not (isinstance(v, float) and math.isnan(v))]

    vals, rej = clean(values), clean(rejected or [])
    both = vals + rej
    if not both:
        return {"n": 0, "bins": []}
    out: dict[str, Any] = {"n": len(vals)}
    if vals:
        out.update({"min": min(vals), "max": max(vals), "mean": round(statistics.fmean(vals), 4),
                    "median": statistics.median(vals)})
    if rejected is not None:
        out["rejected_n"] = len(rej)
    lo, hi = min(both), max(both)
    if all(v.is_integer() for v in both) and hi - lo <= 20:
        edges = [(lo + k, lo + k, f"{lo + k:g}") for k in range(int(hi - lo) + 1)]

        def slot(v: float) -> int:
            return int(v - lo)
    else:
        width = (hi - lo) / bins or 1.0
        edges = [(round(lo + k * width, 4), round(lo + (k + 1) * width, 4),
                  f"{lo + k * width:.3g}-{lo + (k + 1) * width:.3g}") for k in range(bins)]

        def slot(v: float) -> int:
            return min(int((v - lo) / width), bins - 1)
    kept_n, rej_n = Counter(slot(v) for v in vals), Counter(slot(v) for v in rej)
    out["bins"] = [{"lo": a, "hi": b, "label": label, "count": kept_n[k],
                    **({"rejected": rej_n[k]} if rejected is not None else {})}
                   for k, (a, b, label) in enumerate(edges)]
    return out


def value_counts(values: list[float], bins: int = 10) -> dict[str, int]:
    """A compact histogram for stage summaries (`show` prints it on one line): counts
    per value when scores sit on a 0.25 grid (means of 1-5 ratings), else `bins`
    equal-width bins labelled by their lower edge."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {}
    if all(abs(v * 4 - round(v * 4)) < 1e-9 for v in vals):
        return {f"{v:g}": n for v, n in sorted(Counter(vals).items())}
    lo, hi = min(vals), max(vals)
    width = (hi - lo) / bins or 1.0
    c = Counter(min(int((v - lo) / width), bins - 1) for v in vals)
    return {f"{lo + b * width:.3g}": c[b] for b in sorted(c)}
