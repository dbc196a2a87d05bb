"""Benchmark: the hash-feature classifier against the LLM judge it replaces.

Real text: docstrings of the Python standard library (parsed with `ast`, nothing
imported). Labels stand in for a judge's 0-5 score with a deterministic rule (how
many of eight common words a docstring uses, capped at 5), so the held-out F1
measures how well the classifier learns a score from text, not the quality of a
135M-parameter judge. The `train_classifier` stage trains on 80% and reports F1 at
the keep threshold 3 on the 20% held out; the `classify` stage then scores every
document on one core (documents / CPU seconds, so other load does not count).

Next to it: the real judge (`judge` stage, `fineweb-edu` rubric, the bundled
SmolLM2-135M through the llama.cpp engine, few new tokens) on a few documents.

    python benchmarks/classify.py [--repeat 5] [--judge-docs 6] [--judge-tokens 16]

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="score the corpus this many times")
    ap.add_argument("--judge-docs", type=int, default=6)
    ap.add_argument("--judge-tokens", type=int, default=16)
    args = ap.parse_args()

    from smolforge.context import EnginePool, StageContext
    from smolforge.registry import stages
    from smolforge.stages.classify import Classify, TrainClassifier

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

        # The judge on a few documents (real model, rubric prompt, few new tokens).
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
        pool.close()

    held = metrics["heldout"]
    cls_rate = n / cls_cpu
    judge_rate = n_judged / judge_cpu  # llama.cpp uses every core: count them all
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
            "heldout_precision": held["precision"],
            "heldout_recall": held["recall"],
            "heldout_pearson": held["pearson"],
            "heldout_spearman": held["spearman"],
        },
        "judge": {
            "model": "bundled SmolLM2-135M-Instruct (llamacpp)",
            "rubric": "fineweb-edu",
            "docs": n_judged,
            "max_new_tokens": args.judge_tokens,
            "docs_per_s_per_core": round(judge_rate, 3),
            "docs_per_s_wall": round(n_judged / judge_wall, 3),
            "wall_s": round(judge_wall, 2),
            "cpu_s": round(judge_cpu, 2),
            "threads": os.cpu_count(),
            "parsed_scores": len(jres.kept),
        },
        "classifier_vs_judge_speedup_per_core": round(cls_rate / judge_rate, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
