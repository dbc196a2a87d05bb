"""Benchmark: the ROUGE-L novelty filter of `self_instruct` against the naive loop.

Self-Instruct keeps a new instruction only if its ROUGE-L F1 against every kept
instruction is below 0.7. The original code tokenises each new instruction and
calls `rouge_score`'s `_score_lcs` against every kept one (a pure-Python
dynamic-programming LCS per pair) and takes the max. Here the same decisions come
from `smolforge.text.rouge.NoveltyFilter` (integer tokens, an overlap upper bound from
an inverted index, bit-parallel LCS in numpy on the survivors).

Real text: the first sentences of Python standard-library docstrings (parsed with
`ast`, nothing imported), 5 to 40 words, exact duplicates removed, with planted
near-duplicates (a few words dropped, replaced or added; a polite prefix) of
earlier instructions, shuffled with a fixed seed.

Baselines, in the same process and on the same instructions:
- `rouge_score`: the package's `_score_lcs` on pre-tokenised pairs, max over all
  kept instructions (Self-Instruct's loop; needs the `bench` extra);
- `python_dp`: a plain-Python LCS per pair that stops at the first similar kept
  instruction (a stronger naive baseline).
The baselines are quadratic, so they run on the first `--naive-n` instructions;
smolforge runs on those and on all `--n`. Times are CPU seconds of this process
(`time.process_time`), so other load on the machine does not count.

    python benchmarks/rouge.py [--n 4000] [--naive-n 2000] [--threshold 0.7]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time

from smolforge.corpora import stdlib_docstrings
from smolforge.text.rouge import NoveltyFilter, f_measure, lcs_length_dp, tokenize

_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)
FILLERS = ["carefully", "quickly", "the", "given", "new", "each", "all", "simple", "small", "first"]
PREFIXES = ["Please ", "Now ", "Try to ", "Briefly "]


def first_sentences(min_words: int = 5, max_words: int = 40) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for doc in stdlib_docstrings(modules=False):
        m = _SENTENCE.match(" ".join(doc.split()))
        s = m.group(1) if m else ""
        key = " ".join(tokenize(s))
        if min_words <= len(s.split()) <= max_words and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def perturb(text: str, rng: random.Random) -> str:
    """A near-duplicate: 1-3 word edits and sometimes a prefix."""
    w = text.split()
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["drop", "replace", "insert"])
        i = rng.randrange(len(w))
        if op == "drop" and len(w) > 3:
            del w[i]
        elif op == "replace":
            w[i] = rng.choice(FILLERS)
        else:
            w.insert(i, rng.choice(FILLERS))
    out = " ".join(w)
    return rng.choice(PREFIXES) + out[0].lower() + out[1:] if rng.random() < 0.3 else out


def build(n: int, planted_share: float, seed: int) -> tuple[list[str], int]:
    rng = random.Random(seed)
    base = first_sentences()
    rng.shuffle(base)
    n_planted = int(n * planted_share)
    originals = base[: n - n_planted]
    items = list(originals)
    for _ in range(n_planted):
        items.append(perturb(rng.choice(originals), rng))
    rng.shuffle(items)
    return items, n_planted


def run_smolforge(items: list[str], threshold: float) -> tuple[list[bool], float, dict]:
    t0 = time.process_time()
    nf = NoveltyFilter(threshold)
    keep = [nf.add_if_novel(s) is None for s in items]
    secs = time.process_time() - t0
    return keep, secs, {"pairs_bounded": nf.pairs_bounded, "pairs_exact_lcs": nf.pairs_lcs}


def run_rouge_score(items: list[str], threshold: float) -> tuple[list[bool], float]:
    from rouge_score import rouge_scorer

    t0 = time.process_time()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[list[str]] = []
    keep = []
    for s in items:
        toks = scorer._tokenizer.tokenize(s)
        best = max((rouge_scorer._score_lcs(toks, k).fmeasure for k in kept), default=0.0)
        keep.append(best < threshold)
        if best < threshold:
            kept.append(toks)
    return keep, time.process_time() - t0


def run_python_dp(items: list[str], threshold: float) -> tuple[list[bool], float]:
    t0 = time.process_time()
    kept: list[list[str]] = []
    keep = []
    for s in items:
        toks = tokenize(s)
        novel = all(f_measure(lcs_length_dp(toks, k), len(toks), len(k)) < threshold for k in kept)
        keep.append(novel)
        if novel:
            kept.append(toks)
    return keep, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000, help="instructions for smolforge")
    ap.add_argument("--naive-n", type=int, default=2000, help="instructions for the baselines")
    ap.add_argument("--planted", type=float, default=0.15, help="share of planted near-duplicates")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-python-dp", action="store_true", help="skip the plain-Python baseline")
    args = ap.parse_args()

    items, planted = build(args.n, args.planted, args.seed)
    sub = items[: args.naive_n]
    fast_all, secs_all, counts = run_smolforge(items, args.threshold)
    fast_sub, secs_sub, _ = run_smolforge(sub, args.threshold)
    out: dict = {
        "instructions": len(items),
        "planted_near_duplicates": planted,
        "threshold": args.threshold,
        "smolforge": {"cpu_seconds": round(secs_all, 3), "kept": sum(fast_all), **counts},
        "baseline_instructions": len(sub),
        "smolforge_on_baseline_set": {"cpu_seconds": round(secs_sub, 3), "kept": sum(fast_sub)},
        "baselines": {},
    }
    runs = []
    try:
        import rouge_score  # noqa: F401

        runs.append(("rouge_score", run_rouge_score))
    except ImportError:
        out["baselines"]["rouge_score"] = "not installed (pip install -e '.[bench]')"
    if not args.no_python_dp:
        runs.append(("python_dp", run_python_dp))
    for name, fn in runs:
        keep, secs = fn(sub, args.threshold)
        differ = sum(a != b for a, b in zip(keep, fast_sub))
        out["baselines"][name] = {
            "cpu_seconds": round(secs, 3),
            "kept": sum(keep),
            "speedup": round(secs / secs_sub, 1) if secs_sub else None,
            "decisions_differing": differ,
            "same_kept_set": differ == 0,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
