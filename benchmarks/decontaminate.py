"""Benchmark: the `decontaminate` stage against a naive per-document scan.

Real text only: the benchmark items and the documents are docstrings and comment
blocks of the Python standard library (parsed with `ast`, nothing imported), split
into two disjoint pools by normalised text. Leaks are benchmark items pasted into
documents with changed case, whitespace and punctuation (and full-width letters).

The baseline, on a subsample in the same process, computes the same overlap
measure without an index: for every document, the set intersection of its n-grams
with the n-grams of every benchmark item.

    python benchmarks/decontaminate.py [--items 10000 --docs 20000]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from smolforge.context import EnginePool, StageContext
from smolforge.stages.decontaminate import Decontaminate, word_grams
from smolforge.text import normalize

_FULLWIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in
                            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"})
_PIECES = re.compile(r"\w+|\s+|[^\w\s]")


def stdlib_passages(limit_files: int | None = None) -> list[str]:
    """Distinct (by normalised text) docstrings and comment blocks of the stdlib."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    seen: set[str] = set()
    out: list[str] = []

    def add(text: str) -> None:
        key = normalize(text)
        if key and key not in seen:
            seen.add(key)
            out.append(text)

    for path in files[:limit_files]:
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    add(doc)
        block: list[str] = []
        for line in src.splitlines():
            s = line.strip()
            if s.startswith("#") and not s.startswith("#!"):
                block.append(s.lstrip("#").strip())
            elif block:
                add(" ".join(block))
                block = []
    return out


def disguise(text: str, rng: random.Random) -> str:
    """The same words with other case, whitespace and punctuation; never joins words."""
    out = []
    for tok in _PIECES.findall(text):
        if tok.isspace():
            out.append(rng.choice([" ", "  ", "\n", "\t", " \n\n "]))
        elif tok[0].isalnum() or tok[0] == "_":
            out.append(rng.choice([tok.upper(), tok.lower(), tok.title(), tok,
                                   tok.translate(_FULLWIDTH)]))
        else:
            out.append(rng.choice([" ", ", ", "; ", " - ", "!", "...", f" {tok} "]))
    return "".join(out)


def build_corpus(
    n_items: int,
    n_docs: int,
    leak_rate: float,
    seed: int,
    n: int = 10,
    partial_rate: float = 0.0,
    min_item_words: int = 12,
):
    """(items, docs, planted, partial) from stdlib text; planted and partial map a
    document's index to the index of the item (fully or partly) pasted into it."""
    rng = random.Random(seed)
    passages = stdlib_passages()
    rng.shuffle(passages)
    # Items first (long passages), the rest of the passages after them.
    long = [p for p in passages if len(normalize(p).split()) >= min_item_words]
    if len(long) < n_items:
        raise SystemExit(f"only {len(long)} stdlib passages of >= {min_item_words} words")
    chosen = set(long[:n_items])
    passages = long[:n_items] + [p for p in passages if p not in chosen]
    items = long[:n_items]
    # Documents are built from passages that share no n-gram with any item (the
    # stdlib repeats itself: near-identical docstrings live in several modules),
    # so a clean document that gets flagged is a false positive.
    item_grams: set[tuple[str, ...]] = set()
    for t in items:
        item_grams |= word_grams(normalize(t).split(), n)
    pool = [p for p in passages[n_items:] if item_grams.isdisjoint(word_grams(normalize(p).split(), n))]
    docs: list[str] = []
    planted: dict[int, int] = {}
    partial: dict[int, int] = {}
    for d in range(n_docs):
        parts: list[str] = []
        words = 0
        while words < 150:
            p = rng.choice(pool)
            parts.append(p)
            words += len(p.split())
        roll = rng.random()
        if roll < leak_rate:
            k = rng.randrange(n_items)
            parts.insert(rng.randrange(len(parts) + 1), disguise(items[k], rng))
            planted[d] = k
        elif roll < leak_rate + partial_rate:
            # a quoted fragment: the first 30% of an item's words, overlap < 0.3
            k = rng.randrange(n_items)
            words = items[k].split()
            fragment = " ".join(words[: max(1, int(len(words) * 0.3))])
            parts.insert(rng.randrange(len(parts) + 1), disguise(fragment, rng))
            partial[d] = k
        docs.append("\n\n".join(parts))
    return items, docs, planted, partial


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--leak-rate", type=float, default=0.1, help="documents with a whole item")
    ap.add_argument("--partial-rate", type=float, default=0.05,
                    help="documents with 30%% of an item (must be kept)")
    ap.add_argument("--naive-docs", type=int, default=200, help="subsample for the baseline")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    items, docs, planted, partial = build_corpus(
        args.items, args.docs, args.leak_rate, args.seed, args.n, args.partial_rate
    )
    corpus_s = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="smolforge-decon-"))
    bench_path = tmp / "stdlib_bench.jsonl"
    with open(bench_path, "w") as f:
        for i, text in enumerate(items):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    ctx = StageContext(recipe_name="bench", recipe_dir=tmp, seed=0, default_engine="llamacpp",
                       pool=EnginePool(), cache=None)
    stage = Decontaminate(
        benchmarks=[{"path": str(bench_path), "name": "stdlib", "fields": ["text"], "id_field": "id"}],
        n=args.n, threshold=args.threshold,
    )

    t0 = time.perf_counter()
    index = stage.index(ctx)
    build_s = time.perf_counter() - t0

    records = [{"id": str(i), "meta": {}, "text": t} for i, t in enumerate(docs)]
    flagged: set[int] = set()
    t0 = time.perf_counter()
    for start in range(0, len(records), 1000):
        res = stage.process(records[start : start + 1000], ctx)
        flagged.update(int(r.record["id"]) for r in res.rejected)
    run_s = time.perf_counter() - t0

    # Recall: every planted document dropped, and the planted item among its matches.
    caught = [d for d in planted if d in flagged]
    named = sum(
        1 for d in caught
        if any(it.label == str(planted[d]) for _, it in stage.match(docs[d], index))
    )
    clean_flagged = sorted(flagged - set(planted) - set(partial))
    partial_flagged = sorted(flagged & set(partial))

    # Baseline: the same measure without an index, on a subsample.
    t0 = time.perf_counter()
    item_words = [normalize(t).split() for t in items]
    item_grams = [word_grams(w, args.n) for w in item_words]
    item_k = [min(args.n, len(w)) for w in item_words]
    naive_build_s = time.perf_counter() - t0
    rng = random.Random(args.seed + 1)
    sample = rng.sample(range(len(docs)), min(args.naive_docs, len(docs)))

    def naive_flags(d: int) -> bool:
        words = normalize(docs[d]).split()
        grams = {k: word_grams(words, k) if len(words) >= k else set() for k in set(item_k)}
        return any(
            len(g & grams[k]) >= args.threshold * len(g) - 1e-9
            for g, k in zip(item_grams, item_k, strict=True)
        )

    t0 = time.perf_counter()
    naive = {d for d in sample if naive_flags(d)}
    naive_s = time.perf_counter() - t0
    ours_on_sample = {d for d in sample if d in flagged}
    # Clean documents that the baseline also flags contain real overlaps in the text.
    clean_confirmed = sum(1 for d in clean_flagged + partial_flagged if naive_flags(d))

    docs_per_s = len(docs) / run_s
    naive_docs_per_s = len(sample) / naive_s
    print(json.dumps({
        "benchmark": "decontaminate",
        "items": len(items),
        "index_grams": int(len(index.keys)),
        "index_mb": round((index.keys.nbytes + index.postings.nbytes + index.offsets.nbytes) / 2**20, 1),
        "documents": len(docs),
        "mean_doc_words": round(sum(len(d.split()) for d in docs) / len(docs)),
        "n": args.n,
        "threshold": args.threshold,
        "index_build_s": round(build_s, 2),
        "documents_per_s": round(docs_per_s),
        "planted_leaks": len(planted),
        "recall": round(len(caught) / max(1, len(planted)), 4),
        "recall_named_item": round(named / max(1, len(planted)), 4),
        "partial_leaks_30pct": len(partial),
        "partial_leaks_flagged": len(partial_flagged),
        "clean_documents": len(docs) - len(planted) - len(partial),
        "clean_flagged": len(clean_flagged),
        "flagged_clean_or_partial_confirmed_by_baseline": clean_confirmed,
        "false_positives": len(clean_flagged) + len(partial_flagged) - clean_confirmed,
        "baseline": "per-document n-gram set intersection with every item, no index",
        "baseline_sample_docs": len(sample),
        "baseline_build_s": round(naive_build_s, 2),
        "baseline_documents_per_s": round(naive_docs_per_s, 1),
        "baseline_agrees_on_sample": naive == ours_on_sample,
        "speedup_vs_baseline": round(docs_per_s / naive_docs_per_s, 1),
        "corpus_build_s": round(corpus_s, 1),
        "python": sys.version.split()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
