"""Benchmark: the hash-feature classifier against the LLM judge it replaces.

Real text: docstrings of the Python standard library (parsed with `ast`, nothing
imported). Labels stand in for a judge's 0-5 score with a deterministic rule (how
many of eight common words a docstring uses, capped at 5), so the held-out F1
measures how well the classifier learns a score from text, not the quality of a
135M-parameter judge. The `train_classifier` stage trains on 80% and reports F1 at
the keep threshold 3 on the 20% held out; the `classify` stage then scores every
document on one core (documents / CPU seconds, so other load does not count).

Baseline, on the same documents, the same train/held-out split and the same
feature recipe: scikit-learn's HashingVectorizer (word uni+bigrams, 2^20 buckets,
no sign flipping), log(1 + count), L2 norm, then `Ridge(alpha=1)` (the same head:
ridge with an unpenalised intercept) and `LogisticRegression` on `score >= 3`.
Both sides are scored on the same held-out predictions with sklearn's `f1_score`
and timed the same way (featurise + predict, CPU seconds, every document
`--repeat` times).

Next to it: the real judge (`judge` stage, `fineweb-edu` rubric, the bundled
SmolLM2-135M through the llama.cpp engine, few new tokens) on a few documents.

    python benchmarks/classify.py [--repeat 5] [--judge-docs 6] [--judge-tokens 16] [--no-judge]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

KEYWORDS = ["if", "return", "be", "this", "or", "with", "not", "from"]


def stdlib_docstrings(min_words: int = 15) -> list[str]:
    from smolforge.corpora import stdlib_docstrings as docstrings

    return [d for d in docstrings() if len(d.split()) >= min_words]


def rule_score(text: str) -> int:
    from smolforge.text import words

    present = {w.lower() for w in words(text)}
    return min(5, sum(k in present for k in KEYWORDS))


def shards_of(records: list[dict], size: int):
    from smolforge.stages.base import Shards

    parts = [records[i : i + size] for i in range(0, len(records), size)]

    def load(i: int, columns: list[str] | None) -> list[dict]:
        if columns is None:
            return [dict(r) for r in parts[i]]
        return [{c: r[c] for c in columns if c in r} for r in parts[i]]

    return Shards(load, len(parts))


def holdout_split(n: int, seed: int, stage: str, share: float = 0.2):
    """train_classifier's split: a permutation seeded by (seed, stage, "holdout")."""
    import numpy as np

    from smolforge.context import derive_seed

    perm = np.random.default_rng(derive_seed(seed, stage, "holdout")).permutation(n)
    n_test = int(round(n * share))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def sklearn_features():
    """The same recipe as smolforge's `hash` features, in scikit-learn."""
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.preprocessing import normalize

    vec = HashingVectorizer(ngram_range=(1, 2), n_features=1 << 20, alternate_sign=False,
                            norm=None, lowercase=True, token_pattern=r"(?u)\b\w+\b")

    def featurize(texts):
        X = vec.transform(texts)
        X.data = np.log1p(X.data)
        return normalize(X)

    return featurize


def sklearn_baseline(docs: list[str], y, train, test, repeat: int, threshold: float = 3.0) -> dict:
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import f1_score

    featurize = sklearn_features()
    t0 = time.process_time()
    X = featurize(docs)
    ridge = Ridge(alpha=1.0).fit(X[train], y[train])
    logreg = LogisticRegression(max_iter=1000).fit(X[train], y[train] >= threshold)
    train_cpu = time.process_time() - t0
    out: dict = {"train_cpu_s": round(train_cpu, 2)}
    truth = y[test] >= threshold
    for name, model in (("ridge", ridge), ("logreg", logreg)):
        corpus = docs * repeat
        c0 = time.process_time()
        for i in range(0, len(corpus), 10_000):
            pred = model.predict(featurize(corpus[i : i + 10_000]))
        cpu = time.process_time() - c0
        held = model.predict(X[test])
        guess = held >= threshold if name == "ridge" else held.astype(bool)
        out[name] = {
            "docs_scored": len(corpus),
            "docs_per_s_per_core": round(len(corpus) / cpu, 1),
            "heldout_f1_at_3": round(float(f1_score(truth, guess)), 4),
        }
        if name == "ridge":
            out[name]["heldout_spearman"] = round(float(spearmanr(held, y[test]).statistic), 4)
        del pred
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="score the corpus this many times")
    ap.add_argument("--judge-docs", type=int, default=6)
    ap.add_argument("--judge-tokens", type=int, default=16)
    ap.add_argument("--no-judge", action="store_true", help="skip the LLM judge (fast)")
    args = ap.parse_args()

    from smolforge.context import EnginePool, StageContext
    from smolforge.stages.judges.classify import Classify, TrainClassifier

    docs = stdlib_docstrings()
    records = [{"id": f"d{i}", "text": t, "edu_score": rule_score(t), "meta": {}}
               for i, t in enumerate(docs)]
    with tempfile.TemporaryDirectory(prefix="smolforge-bench-classify-") as tmp:
        pool = EnginePool()
        ctx = StageContext(
            recipe_name="bench", recipe_dir=Path(tmp), seed=0, default_engine="llamacpp",
            pool=pool, cache=None, stage_name="train", run_dir=Path(tmp),
        )
        t0 = time.perf_counter()
        train = TrainClassifier(label_column="edu_score", model_path="edu.npz")
        for _ in train.process_all(shards_of(records, 5000), ctx):
            pass
        train_s = time.perf_counter() - t0
        metrics = json.loads((Path(tmp) / "edu.metrics.json").read_text())

        # Score: the classify stage over unlabelled copies, on one core.
        plain = [{"id": r["id"], "text": r["text"], "meta": {}} for r in records] * args.repeat
        classify = Classify(models=["edu.npz"], score_column="edu_pred")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        n = 0
        for _i, res in classify.process_all(shards_of(plain, 10_000), ctx):
            n += len(res.kept)
        cls_cpu, cls_wall = time.process_time() - cpu0, time.perf_counter() - wall0

        # Our held-out predictions, scored by sklearn's f1_score like the baseline.
        import numpy as np
        from sklearn.metrics import f1_score

        from smolforge.classifier import Classifier

        y = np.array([r["edu_score"] for r in records], dtype=np.float64)
        train_idx, test_idx = holdout_split(len(docs), 0, "train")
        assert len(test_idx) == metrics["heldout"]["n"]
        ours_held = Classifier.load(Path(tmp) / "edu.npz").predict([docs[i] for i in test_idx])
        ours_f1 = float(f1_score(y[test_idx] >= 3, ours_held >= 3))
        baseline = sklearn_baseline(docs, y, train_idx, test_idx, args.repeat)

        if args.no_judge:
            pool.close()
            judge_report = None
        else:
            judge_report = run_judge(records, ctx, args)
            pool.close()

    held = metrics["heldout"]
    cls_rate = n / cls_cpu
    report = {
        "benchmark": "classify",
        "corpus_docs": len(docs),
        "mean_words_per_doc": round(sum(len(d.split()) for d in docs) / len(docs), 1),
        "labels": "rule: distinct words of " + "/".join(KEYWORDS) + " used, capped at 5",
        "train_s": round(train_s, 2),
        "classifier": {
            "docs_scored": n,
            "docs_per_s_per_core": round(cls_rate, 1),
            "cpu_s": round(cls_cpu, 2),
            "wall_s": round(cls_wall, 2),
            "heldout_n": held["n"],
            "heldout_f1_at_3": held["f1"],
            "heldout_f1_at_3_sklearn_metric": round(ours_f1, 4),
            "heldout_precision": held["precision"],
            "heldout_recall": held["recall"],
            "heldout_pearson": held["pearson"],
            "heldout_spearman": held["spearman"],
        },
        "sklearn_baseline": baseline,
        "side_by_side": {
            "docs_per_s_per_core": {"smolforge": round(cls_rate, 1),
                                    "sklearn_ridge": baseline["ridge"]["docs_per_s_per_core"],
                                    "sklearn_logreg": baseline["logreg"]["docs_per_s_per_core"]},
            "heldout_f1_at_3": {"smolforge": round(ours_f1, 4),
                                "sklearn_ridge": baseline["ridge"]["heldout_f1_at_3"],
                                "sklearn_logreg": baseline["logreg"]["heldout_f1_at_3"]},
        },
    }
    if judge_report is not None:
        report["judge"] = judge_report
        report["classifier_vs_judge_speedup_per_core"] = round(
            cls_rate / judge_report["docs_per_s_per_core"], 1)
    print(json.dumps(report, indent=2))


def run_judge(records: list[dict], ctx, args) -> dict:
    """The judge on a few documents (real model, rubric prompt, few new tokens)."""
    from smolforge.registry import stages

    judge = stages.get("judge").model_validate({
        "type": "judge", "rubric": "fineweb-edu", "inputs": {"text": "text"},
        "column": "judge_score", "max_tokens": args.judge_tokens,
    })
    sample = [dict(r) for r in records[: args.judge_docs]]
    jctx = ctx.for_stage("judge")
    judge.process(sample[:1], jctx)  # load the model outside the timing
    cpu0, wall0 = time.process_time(), time.perf_counter()
    jres = judge.process(sample[1:], jctx)
    judge_cpu, judge_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n_judged = len(sample) - 1
    return {
        "model": "bundled SmolLM2-135M-Instruct (llamacpp)",
        "rubric": "fineweb-edu",
        "docs": n_judged,
        "max_new_tokens": args.judge_tokens,
        "docs_per_s_per_core": round(n_judged / judge_cpu, 3),  # llama.cpp uses every core
        "docs_per_s_wall": round(n_judged / judge_wall, 3),
        "wall_s": round(judge_wall, 2),
        "cpu_s": round(judge_cpu, 2),
        "threads": os.cpu_count(),
        "parsed_scores": len(jres.kept),
    }


if __name__ == "__main__":
    main()
