"""How well does each judging method separate educational prose from the rest?

Scores benchmarks/data/judge_quality.jsonl (real text from this machine's docs,
licences, package metadata, configs and mail, plus deterministically corrupted prose;
every item names its source; see benchmarks/data/build_judge_quality.py) on the
bundled SmolLM2-135M through the real `judge` stage: the `textbooks` recipe's own
judge stage as shipped (`recipe`) and other methods. Prints ONE JSON object: per
method, ROC AUC and Spearman's rho of the score against the labels (1 educational,
0 not) on the dev and the holdout split, AUC against each kind of negative, seconds
and the load average.

    python benchmarks/judge_quality.py            # recipe, expected, criteria_unbalanced
    python benchmarks/judge_quality.py --quick    # 16 dev + 16 holdout items
    python benchmarks/judge_quality.py --methods recipe --data my.jsonl --scores s.jsonl

`--data` takes any JSONL with `text` and `label` (and optionally `split`), e.g. a
labelled set of your own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).parent
DATA = HERE / "data" / "judge_quality.jsonl"

# method name -> judge stage fields (rubric: fineweb-edu throughout); "recipe" is the
# textbooks recipe's own judge stage, as shipped
METHODS: dict[str, dict] = {
    "recipe": {},
    # the judge's default: the generated number, JSON-constrained
    "parse": {"method": "parse", "structured": True, "max_tokens": 128},
    # G-Eval: the expected score over the score token's probabilities (score asked first)
    "expected": {"method": "expected", "structured": True, "justify": False, "max_tokens": 8},
    # the decomposed rubric (yes/no questions, from P(yes)/P(no)) with and without its
    # reverse-keyed half, with the chat template and without it
    "criteria": {"method": "criteria"},
    "criteria_unbalanced": {"method": "criteria", "rubric": "UNBALANCED"},
    "criteria_raw": {"method": "criteria", "raw": True},
}


def recipe_judge() -> dict:
    """The textbooks recipe's judge stage, as shipped."""
    import yaml

    from smolforge.recipe import BUILTIN_DIR

    stages = yaml.safe_load((BUILTIN_DIR / "textbooks.yaml").read_text())["stages"]
    return next(s for s in stages if s["type"] == "judge")


def unbalanced_rubric(workdir: Path) -> str:
    """fineweb-edu without its reverse-keyed questions: FineWeb-Edu's three points only."""
    import yaml

    from smolforge.stages.judges.judge import RUBRIC_DIR

    rubric = yaml.safe_load((RUBRIC_DIR / "fineweb-edu.yaml").read_text())
    rubric["criteria"] = {k: q for k, q in rubric["criteria"].items() if isinstance(q, str)}
    path = workdir / "fineweb-edu-unbalanced.yaml"
    path.write_text(yaml.safe_dump(rubric, sort_keys=False))
    return str(path)


def auc(scores: list[float], labels: list[int]) -> float | None:
    """ROC AUC = P(score of a random positive > a random negative), ties count half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def pick(items: list[dict], quick: bool) -> list[dict]:
    if not quick:
        return items
    out = []
    for split in ("dev", "holdout"):  # balanced: 8 positives, 8 negatives of each split
        rows = [r for r in items if r.get("split", "dev") == split]
        for label in (1, 0):
            out += [r for r in rows if r["label"] == label][:8]
    return out


def score(method: str, items: list[dict], workdir: Path) -> tuple[list[float | None], float]:
    import smolforge as sf
    from smolforge.recipe import Recipe

    fields = recipe_judge() if method == "recipe" else dict(METHODS[method])
    if fields.get("rubric") == "UNBALANCED":
        fields["rubric"] = unbalanced_rubric(workdir)
    judge = {"type": "judge", "rubric": "fineweb-edu", **fields, "name": "judge", "column": "score",
             "on_fail": "keep"}
    recipe = Recipe.from_dict({
        "name": f"judge-quality-{method}", "engine": {"type": "llamacpp", "model": "smollm2-135m"},
        "shard_size": 1000, "allow_paths": [str(workdir)],
        "stages": [{"type": "items", "items": [{"text": r["text"], "key": r["id"]} for r in items]}, judge],
    })
    t0 = time.perf_counter()
    run = sf.run(recipe, out=workdir / method)
    seconds = time.perf_counter() - t0
    got = {row["key"]: row["score"] for row in run.data().to_pylist()}
    return [got.get(r["id"]) for r in items], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 dev + 16 holdout items")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--methods", default="recipe,expected,criteria_unbalanced",
                    help=f"comma-separated: {', '.join(METHODS)} (default: the recipe's judge and two others)")
    ap.add_argument("--scores", type=Path, help="also write every item's score per method here (JSONL)")
    args = ap.parse_args()
    from smolforge.stages.judges.judge import spearman

    items = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    items = pick(items, args.quick)
    result: dict = {"items": len(items), "data": str(args.data), "model": "smollm2-135m",
                    "load_average_start": round(os.getloadavg()[0], 2), "methods": {}}
    with tempfile.TemporaryDirectory(prefix="judge-quality-") as tmp:
        for method in args.methods.split(","):
            scores, seconds = score(method, items, Path(tmp))
            entry: dict = {"seconds": round(seconds, 1), "failed": sum(s is None for s in scores)}
            for split in ("dev", "holdout", "all"):
                rows = [(s, r["label"]) for s, r in zip(scores, items)
                        if split == "all" or r.get("split", "dev") == split]
                # an unscored item ranks lowest: a judge that fails on an item cannot keep it
                xs = [s if s is not None else -1.0 for s, _ in rows]
                ys = [y for _, y in rows]
                rho = spearman(xs, [float(y) for y in ys])
                a = auc(xs, ys)
                entry[split] = {"n": len(rows), "auc": None if a is None else round(a, 3),
                                "spearman": None if rho is None else round(rho, 3),
                                "distinct_scores": len(set(xs))}
            # which negatives fool the judge: AUC of the positives against each kind alone
            kinds = sorted({r.get("kind", "") for r in items if not r["label"]} - {""})
            pos = [s if s is not None else -1.0 for s, r in zip(scores, items) if r["label"]]
            entry["auc_by_kind"] = {}
            for kind in kinds:
                neg = [s if s is not None else -1.0 for s, r in zip(scores, items) if r.get("kind") == kind]
                a = auc(pos + neg, [1] * len(pos) + [0] * len(neg))
                entry["auc_by_kind"][kind] = None if a is None else round(a, 3)
            result["methods"][method] = entry
            if args.scores:
                with args.scores.open("a") as f:
                    for s, r in zip(scores, items):
                        f.write(json.dumps({"method": method, "id": r["id"], "label": r["label"],
                                            "kind": r.get("kind"), "split": r.get("split"), "score": s}) + "\n")
            print(f"{method}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
