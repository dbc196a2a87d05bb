"""Choose the textbook judge's questions, weights and threshold on dev; measure them
on the holdout.

Two steps, so that the choice is offline (numpy only) and repeatable:

    python benchmarks/judge_select.py score    # the model: every candidate question
                                               # on every item -> data/judge_quality_probs.jsonl
    python benchmarks/judge_select.py select   # numpy: choose on dev, report holdout (JSON)

`score` asks every question of benchmarks/data/judge_candidates.yaml (the rubric's
questions as shipped plus the new candidates, written before measuring) about every
item of benchmarks/data/judge_quality.jsonl through the real `judge` stage
(`method: criteria`, the bundled SmolLM2-135M) and stores each P(yes).

`select` compares ways of combining the questions, each chosen or fitted on the dev
split only (its source groups never appear in the holdout;
benchmarks/data/build_judge_quality.py):

- `balanced/shipped-7`: the fixed balance (`Rubric.criteria_score`) over the rubric's
  7 questions as shipped before; `balanced/all-candidates`: over all of them;
- `balanced/best-on-dev`: over the subset (at least one plain and one reverse-keyed
  question) with the best AUC on dev, searched over every subset;
- `logistic/...`: L2-regularised logistic regression over the points (P(yes), P(no)
  for a reverse-keyed question), fitted on dev by Newton's method, the L2 strength
  chosen by leave-one-group-out on dev.

`dev_leave_one_group_out_auc` judges them on dev alone (every source group scored by
a combination chosen or fitted without it): `chosen_on_dev` is the best. For each it
prints the AUC on dev (in-sample) and on the holdout, the holdout AUC against each
kind of negative, the threshold chosen on dev (the score that keeps 80% of dev's
educational items) with the share it keeps of each split's positives and negatives,
and a bootstrap interval of the holdout AUC difference between the learned and the
fixed combinations.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).parent
DATA = HERE / "data" / "judge_quality.jsonl"
CANDIDATES = HERE / "data" / "judge_candidates.yaml"
PROBS = HERE / "data" / "judge_quality_probs.jsonl"
KEEP_POSITIVES = 0.8  # the threshold keeps this share of dev's educational items


def load_items(path: Path = DATA) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(items: list[dict], out: Path, threads: int, missing: bool = False) -> None:
    """Every candidate question's P(yes) on every item, through the real judge stage
    (`missing`: only on the items the file has none for; the others are kept)."""
    kept = load_probs(out) if missing and out.exists() else {}
    kept = {k: v for k, v in kept.items() if k in {r["id"] for r in items}}
    todo = [r for r in items if r["id"] not in kept]
    import smolforge as sf
    from smolforge.recipe import Recipe

    with tempfile.TemporaryDirectory(prefix="judge-select-") as tmp:
        recipe = Recipe.from_dict({
            "name": "judge-select", "shard_size": 1000,
            "engine": {"type": "llamacpp", "model": "smollm2-135m", "n_threads": threads},
            "allow_paths": [str(HERE)],
            "stages": [{"type": "items", "items": [{"text": r["text"], "key": r["id"]} for r in todo]},
                       {"type": "judge", "name": "judge", "rubric": str(CANDIDATES), "method": "criteria",
                        "column": "s", "on_fail": "keep"}],
        })
        rows = sf.run(recipe, out=Path(tmp) / "run").data().to_pylist()
    import yaml

    names = list(yaml.safe_load(CANDIDATES.read_text())["criteria"])
    got = {row["key"]: {n: None if row.get(f"s_{n}") is None else round(row[f"s_{n}"], 6) for n in names}
           for row in rows}
    got.update(kept)
    with out.open("w") as f:
        for r in items:
            f.write(json.dumps({"id": r["id"], "p_yes": got[r["id"]]}) + "\n")
    print(f"wrote {out} ({len(todo)} items asked, {len(kept)} kept; {len(names)} questions)", file=sys.stderr)



def load_probs(path: Path = PROBS) -> dict[str, dict[str, float]]:
    return {r["id"]: r["p_yes"] for r in map(json.loads, path.read_text().splitlines()) if r}


def candidates() -> tuple[list[str], np.ndarray]:
    """The candidate questions' names and which are reverse-keyed."""
    import yaml

    crit = yaml.safe_load(CANDIDATES.read_text())["criteria"]
    names = list(crit)
    return names, np.array([isinstance(c, dict) and bool(c.get("reverse")) for c in crit.values()])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U over average ranks: ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced(points: np.ndarray, reverse: np.ndarray) -> np.ndarray:
    """The judge's fixed balance (Rubric.criteria_score) on points (P(yes), or P(no)
    for a reverse-keyed question): n_plain x (mean plain + mean reverse) / 2."""
    plain, rev = points[:, ~reverse], points[:, reverse]
    if not rev.shape[1] or not plain.shape[1]:
        return points.sum(axis=1)
    return plain.shape[1] * (plain.mean(axis=1) + rev.mean(axis=1)) / 2


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (the intercept unpenalised), Newton's method."""
    a = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(a.shape[1])
    pen = np.full(a.shape[1], l2)
    pen[0] = 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) + pen * w
        hess = a.T @ (a * (p * (1 - p))[:, None]) + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[1:], float(w[0])


def choose_l2(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """The L2 strength with the best leave-one-group-out AUC on dev (a source group is
    scored by a model fitted without it, as the holdout will be)."""
    best, best_auc = 1.0, -1.0
    for l2 in (0.01, 0.1, 1.0, 10.0, 100.0):
        pred = np.empty(len(y))
        for g in np.unique(groups):
            out = groups == g
            w, b = fit_logistic(x[~out], y[~out], l2)
            pred[out] = x[out] @ w + b
        a = auc(pred, y)
        if a > best_auc + 1e-9:
            best, best_auc = l2, a
    return best


def threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The lowest score that still keeps KEEP_POSITIVES of these positives."""
    return float(np.quantile(scores[labels == 1], 1 - KEEP_POSITIVES, method="lower"))


def report(score_dev: np.ndarray, score_hold: np.ndarray, dev: list[dict], hold: list[dict]) -> dict:
    ydev = np.array([r["label"] for r in dev])
    yhold = np.array([r["label"] for r in hold])
    cut = threshold(score_dev, ydev)
    kinds = sorted({r["kind"] for r in hold if not r["label"]})
    by_kind = {}
    for k in kinds:
        m = np.array([r["label"] == 1 or r["kind"] == k for r in hold])
        by_kind[k] = round(auc(score_hold[m], yhold[m]), 3)
    keep = {f"{split}_{side}": round(float((s[y == lab] >= cut).mean()), 3)
            for split, s, y in (("dev", score_dev, ydev), ("holdout", score_hold, yhold))
            for side, lab in (("positives", 1), ("negatives", 0))}
    return {"auc_dev": round(auc(score_dev, ydev), 3), "auc_holdout": round(auc(score_hold, yhold), 3),
            "auc_holdout_by_kind": by_kind, "threshold": round(cut, 4), "kept": keep}


def bootstrap_diff(a: np.ndarray, b: np.ndarray, y: np.ndarray, n: int = 2000) -> list[float]:
    """95% interval of AUC(a) - AUC(b) on the holdout, items resampled within each label."""
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(auc(a[idx], y[idx]) - auc(b[idx], y[idx]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return [round(float(lo), 3), round(float(hi), 3)]


def auc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of every column of `scores` at once (ranks without tie correction: for
    the search over subsets, whose scores are continuous)."""
    ranks = scores.argsort(axis=0).argsort(axis=0) + 1.0
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def subsets(idx: np.ndarray) -> list[np.ndarray]:
    return [np.array(c) for k in range(1, len(idx) + 1) for c in itertools.combinations(idx, k)]


def best_subset(points: np.ndarray, reverse: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The subset of questions (at least one plain, one reverse-keyed) whose balanced
    score has the best AUC on these items. The balance ranks as mean plain point +
    mean reverse point (its factor n_plain / 2 is the same for every item)."""
    plain = subsets(np.flatnonzero(~reverse))
    rev = subsets(np.flatnonzero(reverse))
    mp = np.stack([points[:, c].mean(axis=1) for c in plain], axis=1)
    mr = np.stack([points[:, c].mean(axis=1) for c in rev], axis=1)
    scores = (mp[:, :, None] + mr[:, None, :]).reshape(len(points), -1)
    k = int(np.argmax(auc_columns(scores, labels)))
    return np.concatenate([plain[k // len(rev)], rev[k % len(rev)]])


def leave_one_group_out(points: np.ndarray, reverse: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                        shipped: np.ndarray, l2: dict[str, float]) -> dict[str, float]:
    """Each way of combining, judged on dev alone: every source group is scored by a
    combination chosen (subset) or fitted (logistic) without it; the AUC of the pooled
    predictions. This is how the dev split chooses between them."""
    every = np.arange(points.shape[1])
    pred = {k: np.empty(len(labels)) for k in ("balanced/shipped-7", "balanced/all-candidates",
                                               "balanced/best-on-dev", "logistic/all-candidates",
                                               "logistic/shipped-7")}
    for g in np.unique(groups):
        out, keep = groups == g, groups != g
        pred["balanced/shipped-7"][out] = balanced(points[out][:, shipped], reverse[shipped])
        pred["balanced/all-candidates"][out] = balanced(points[out], reverse)
        b = best_subset(points[keep], reverse, labels[keep])
        pred["balanced/best-on-dev"][out] = balanced(points[out][:, b], reverse[b])
        for name, idx in (("logistic/all-candidates", every), ("logistic/shipped-7", shipped)):
            w, c = fit_logistic(points[keep][:, idx], labels[keep], l2[name])
            pred[name][out] = points[out][:, idx] @ w + c
    return {k: round(auc(v, labels), 3) for k, v in pred.items()}


SHIPPED = ["basic_information", "key_concepts", "textbook_quality", "advertisement", "raw_data", "garbled",
           "legal_text"]


def select(items: list[dict], probs: dict[str, dict[str, float]]) -> dict:
    """Everything chosen on dev; the holdout only measured."""
    names, reverse = candidates()
    items = [r for r in items if all(probs[r["id"]].get(n) is not None for n in names)]
    dev = [r for r in items if r["split"] == "dev"]
    hold = [r for r in items if r["split"] == "holdout"]
    assert not {r["group"] for r in dev} & {r["group"] for r in hold}, "a source group is in both splits"

    def matrix(rows: list[dict]) -> np.ndarray:
        return np.array([[probs[r["id"]][n] for n in names] for r in rows])

    pdev, phold = matrix(dev), matrix(hold)
    points_dev = np.where(reverse, 1 - pdev, pdev)
    points_hold = np.where(reverse, 1 - phold, phold)
    ydev = np.array([r["label"] for r in dev])
    yhold = np.array([r["label"] for r in hold])
    out: dict = {"items": {"dev": len(dev), "holdout": len(hold)},
                 "groups": {"dev": sorted({r["group"] for r in dev}), "holdout": sorted({r["group"] for r in hold})},
                 "methods": {}}

    def cols(subset: list[str]) -> np.ndarray:
        return np.array([names.index(n) for n in subset])

    shipped = cols(SHIPPED)
    out["methods"]["balanced/shipped-7"] = report(balanced(points_dev[:, shipped], reverse[shipped]),
                                                  balanced(points_hold[:, shipped], reverse[shipped]), dev, hold)
    out["methods"]["balanced/all-candidates"] = report(balanced(points_dev, reverse), balanced(points_hold, reverse),
                                                       dev, hold)
    best = best_subset(points_dev, reverse, ydev)
    chosen = [names[i] for i in best]
    out["methods"]["balanced/best-on-dev"] = {
        "questions": chosen,
        **report(balanced(points_dev[:, best], reverse[best]), balanced(points_hold[:, best], reverse[best]), dev, hold)}
    # logistic regression over the P(yes), fitted on dev (L2 chosen by leave-one-group-out on dev)
    gdev = np.array([r["group"] for r in dev])
    fits = {}
    for label, idx in (("logistic/all-candidates", np.arange(len(names))), ("logistic/shipped-7", shipped)):
        l2 = choose_l2(points_dev[:, idx], ydev, gdev)
        w, b = fit_logistic(points_dev[:, idx], ydev, l2)
        fits[label] = (idx, w, b)
        out["methods"][label] = {"l2": l2, "bias": round(b, 4),
                                 "weights": {names[i]: round(float(x), 4) for i, x in zip(idx, w)},
                                 **report(points_dev[:, idx] @ w + b, points_hold[:, idx] @ w + b, dev, hold)}
    out["dev_leave_one_group_out_auc"] = logo = leave_one_group_out(points_dev, reverse, ydev, gdev, shipped, {
        k: v["l2"] for k, v in out["methods"].items() if k.startswith("logistic/")})
    out["chosen_on_dev"] = max(logo, key=lambda k: logo[k])
    out["single_questions"] = {
        n: {"reverse": bool(reverse[i]), "auc_dev": round(auc(points_dev[:, i], ydev), 3),
            "auc_holdout": round(auc(points_hold[:, i], yhold), 3)} for i, n in enumerate(names)}
    # is the learned combination better on the holdout than the fixed balance?
    idx, w, b = fits["logistic/all-candidates"]
    lr_hold = points_hold[:, idx] @ w + b
    out["holdout_auc_difference_95ci"] = {
        "logistic/all-candidates - balanced/best-on-dev":
            bootstrap_diff(lr_hold, balanced(points_hold[:, best], reverse[best]), yhold),
        "logistic/all-candidates - balanced/shipped-7":
            bootstrap_diff(lr_hold, balanced(points_hold[:, shipped], reverse[shipped]), yhold)}
    return out

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["score", "select"])
    ap.add_argument("--threads", type=int, default=1, help="score: llama.cpp threads")
    ap.add_argument("--missing", action="store_true", help="score: only the items without stored probabilities")
    args = ap.parse_args()
    items = load_items()
    if args.step == "score":
        score(items, PROBS, args.threads, args.missing)
        return
    print(json.dumps(select(items, load_probs()), indent=1))


if __name__ == "__main__":
    main()
