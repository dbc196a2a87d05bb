"""Benchmark: smolforge's MinHash dedup against datatrove's MinHash pipeline and
datasketch's MinHashLSH, on one corpus with planted near-duplicates.

Real text only: documents are random selections of lines from the docstrings of
the Python standard library (parsed with `ast`, nothing imported). A share of the
documents get a planted variant: words replaced at random until the word-5-gram
Jaccard similarity with the original reaches a target level (1.0 down to 0.5);
then case and punctuation are changed, which normalisation ignores. Each pair's
true Jaccard is computed exactly on the shingle sets.

Every method runs in its own subprocess (so peak memory is its own) over the same
JSONL shards, single-threaded, with word 5-grams and 14 bands x 8 rows:
- smolforge: the `dedup` stage, `method: minhash` (defaults: 14x8, candidate
  pairs verified at estimated Jaccard >= 0.75).
- datatrove: MinhashDedupSignature -> Buckets -> Cluster -> Filter (its
  FineWeb configuration: MinhashConfig(n_grams=5, num_buckets=14,
  hashes_per_bucket=8), English spaCy word tokenizer) on a LocalPipelineExecutor
  with one task/worker per step, reading and writing JSONL.
- datasketch: MinHash(num_perm=112) per document, MinHashLSH(params=(14, 8)),
  query-then-insert (keep the first).

Reported per method: documents/s per core (documents / CPU seconds of the
process, reading included), wall seconds, peak RSS of the process, recall on
planted pairs with Jaccard >= 0.85 (a pair is found when one of its two documents
is removed), the share of planted pairs below 0.7 that were flagged (false
positives), and precision: the share of removed documents that belong to a
planted pair with Jaccard >= 0.7.

    python benchmarks/dedup.py [--docs 100000] [--methods smolforge,datatrove,datasketch]
    python benchmarks/dedup.py --docs 1000000 --short --methods smolforge   # memory target

Needs the `bench` extra (datatrove, datasketch, spacy) for the baselines. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEVELS = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5]
SHARD_DOCS = 10_000
NGRAM, BANDS, ROWS = 5, 14, 8

_WORDS = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Same folding as smolforge.text.normalize (kept here so the generator does
    not depend on the package under test)."""
    import unicodedata

    return _WORDS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingles(text: str) -> set[str]:
    w = normalize(text).split()
    return {" ".join(w[i : i + NGRAM]) for i in range(max(1, len(w) - NGRAM + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def stdlib_lines() -> list[str]:
    """Distinct docstring lines of >= 4 words from the whole standard library."""
    from smolforge.corpora import stdlib_docstrings

    seen: set[str] = set()
    out: list[str] = []
    for doc in stdlib_docstrings():
        for line in doc.splitlines():
            line = line.strip()
            key = normalize(line)
            if len(key.split()) >= 4 and key not in seen:
                seen.add(key)
                out.append(line)
    return out


def plant(text: str, target: float, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    """A variant whose shingle Jaccard with `text` is about `target`.

    Replacing word p breaks the shingles (windows) that cover p, so breaking d of
    the S windows gives J = (S - d) / (S + d): first isolated words (n windows
    each), then a run from the start (one more window per word). The exact
    Jaccard is measured afterwards."""
    words = text.split()
    n_win = max(1, len(words) - NGRAM + 1)
    want = round(n_win * (1 - target) / (1 + target))
    broken: set[int] = set()

    def windows(p: int) -> set[int]:
        return set(range(max(0, p - NGRAM + 1), min(p, n_win - 1) + 1))

    for p in rng.sample(range(len(words)), len(words)):
        new = windows(p) - broken
        if len(broken) + len(new) <= want and len(new) == min(NGRAM, len(windows(p))):
            broken |= new
            words[p] = rng.choice(vocab)
    for p in range(len(words)):
        if len(broken) >= want:
            break
        new = windows(p) - broken
        if len(broken) + len(new) <= want:
            broken |= new
            words[p] = rng.choice(vocab)
    out = " ".join(w.upper() if rng.random() < 0.05 else w for w in words)
    out = out.replace(".", " .").replace(",", ";")
    return out, jaccard(shingles(text), shingles(out))


def generate(n_docs: int, short: bool, planted_share: float, seed: int, out_dir: Path) -> dict:
    """Write JSONL shards; return the planted pairs with their true Jaccard."""
    rng = random.Random(seed)
    lines = stdlib_lines()
    vocab = sorted({w for line in lines[:20000] for w in line.split() if w.isalpha()})
    lo, hi = (2, 4) if short else (4, 12)
    n_pairs = int(n_docs * planted_share / 2)
    n_base = n_docs - n_pairs
    docs: list[str] = ["\n".join(rng.sample(lines, rng.randint(lo, hi))) for _ in range(n_base)]
    pairs = []
    # distinct originals long enough to reach every level
    bases = iter(rng.sample(range(n_base), n_base))
    for k in range(n_pairs):
        target = LEVELS[k % len(LEVELS)]
        i = next(bases)
        while len(docs[i].split()) < 3 * NGRAM:
            i = next(bases)
        variant, j = plant(docs[i], target, rng, vocab)
        docs.append(variant)
        pairs.append((i, n_base + k, j))
    order = list(range(n_docs))
    rng.shuffle(order)
    position = {doc: pos for pos, doc in enumerate(order)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in range(0, n_docs, SHARD_DOCS):
        with open(out_dir / f"shard-{s // SHARD_DOCS:05d}.jsonl", "w") as f:
            for pos in range(s, min(n_docs, s + SHARD_DOCS)):
                f.write(json.dumps({"id": f"doc{pos}", "text": docs[order[pos]]}) + "\n")
    words = sum(len(d.split()) for d in docs) / n_docs
    return {
        "pairs": [(position[a], position[b], j) for a, b, j in pairs],
        "mean_words": round(words, 1),
        "lines_pool": len(lines),
    }


# ---------------------------------------------------------------- workers


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _shard_files(data: Path) -> list[Path]:
    return sorted(data.glob("shard-*.jsonl"))


def run_smolforge(data: Path, work: Path) -> list[str]:
    from smolforge.context import EnginePool, StageContext
    from smolforge.stages.base import Shards
    from smolforge.stages.dedup import Dedup

    files = _shard_files(data)

    def load(i: int, columns: list[str] | None) -> list[dict]:
        with open(files[i]) as f:
            recs = [json.loads(line) for line in f]
        if columns is not None:
            recs = [{c: r[c] for c in columns if c in r} for r in recs]
        return recs

    ctx = StageContext(
        recipe_name="bench", recipe_dir=work, seed=0, default_engine="llamacpp",
        pool=EnginePool(), cache=None, stage_name="dedup",
    )
    removed: list[str] = []
    stage = Dedup(method="minhash", ngram=NGRAM, bands=BANDS, rows=ROWS)
    for _i, res in stage.process_all(Shards(load, len(files)), ctx):
        removed += [r.record["id"] for r in res.rejected]
    return removed


def run_datatrove(data: Path, work: Path) -> list[str]:
    import logging

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    logging.disable(logging.WARNING)
    from datatrove.utils.logging import logger

    logger.remove()
    config = MinhashConfig(
        n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, hash_config=HashConfig(precision=64)
    )
    n_files = len(_shard_files(data))

    def reader() -> JsonlReader:
        return JsonlReader(str(data), glob_pattern="shard-*.jsonl")

    def execute(pipeline: list, tasks: int, name: str) -> None:
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)
        ).run()

    execute([reader(), MinhashDedupSignature(str(work / "sigs"), config=config)], n_files, "sigs")
    execute(
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
        BANDS, "buckets",
    )
    execute(
        [MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config)],
        1, "clusters",
    )
    execute(
        [
            reader(),
            MinhashDedupFilter(
                str(work / "remove_ids"),
                exclusion_writer=JsonlWriter(str(work / "removed"), compression=None),
            ),
            JsonlWriter(str(work / "kept"), compression=None),
        ],
        n_files, "filter",
    )
    removed = []
    for path in sorted((work / "removed").glob("*.jsonl")):
        with open(path) as f:
            removed += [json.loads(line)["id"] for line in f]
    return removed


def run_datasketch(data: Path, work: Path) -> list[str]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    removed = []
    for path in _shard_files(data):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                m = MinHash(num_perm=BANDS * ROWS, seed=1)
                m.update_batch([s.encode() for s in shingles(rec["text"])])
                if lsh.query(m):
                    removed.append(rec["id"])
                else:
                    lsh.insert(rec["id"], m)
    return removed


RUNNERS = {"smolforge": run_smolforge, "datatrove": run_datatrove, "datasketch": run_datasketch}


def worker(method: str, data: Path, work: Path, out: Path) -> None:
    baseline_rss = _rss_mb()
    cpu0, wall0 = _cpu(), time.perf_counter()
    removed = RUNNERS[method](data, work)
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({
        "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": peak, "rss_at_start_mb": baseline_rss,
        "removed": removed,
    }))


# ---------------------------------------------------------------- driver


def evaluate(removed_ids: list[str], pairs: list[tuple[int, int, float]]) -> dict:
    removed = {int(r[3:]) for r in removed_ids}
    found = {"recall_ge_0.85": [], "flagged_lt_0.7": [], "gray_0.7_0.85": []}
    by_level: dict[str, list[bool]] = {}
    legit: set[int] = set()
    for a, b, j in pairs:
        hit = a in removed or b in removed
        if j >= 0.7:
            legit |= {a, b}
        key = "recall_ge_0.85" if j >= 0.85 else "flagged_lt_0.7" if j < 0.7 else "gray_0.7_0.85"
        found[key].append(hit)
        level = f"{min(LEVELS, key=lambda x: abs(x - j)):.2f}"
        by_level.setdefault(level, []).append(hit)

    def share(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "removed": len(removed),
        "precision": share([r in legit for r in removed]),
        "recall": share(found["recall_ge_0.85"]),
        "false_positive_rate_below_0.7": share(found["flagged_lt_0.7"]),
        "flagged_0.7_to_0.85": share(found["gray_0.7_0.85"]),
        "flagged_by_level": {k: share(v) for k, v in sorted(by_level.items(), reverse=True)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--short", action="store_true", help="2-4 lines per document (~30 words)")
    ap.add_argument("--planted", type=float, default=0.1, help="share of documents in planted pairs")
    ap.add_argument("--methods", default="smolforge,datatrove,datasketch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, Path(args.data), Path(args.work), Path(args.out))
        return

    with tempfile.TemporaryDirectory(prefix="smolforge-bench-dedup-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        truth = generate(args.docs, args.short, args.planted, args.seed, tmp_path / "data")
        report: dict = {
            "benchmark": "dedup",
            "docs": args.docs,
            "planted_pairs": len(truth["pairs"]),
            "mean_words_per_doc": truth["mean_words"],
            "ngram": NGRAM, "bands": BANDS, "rows": ROWS,
            "generate_s": round(time.perf_counter() - t0, 1),
            "cpu_count": os.cpu_count(),
            "methods": {},
        }
        for method in args.methods.split(","):
            work = tmp_path / f"work-{method}"
            work.mkdir()
            out = tmp_path / f"{method}.json"
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", method, "--data", str(tmp_path / "data"),
                 "--work", str(work), "--out", str(out)],
                capture_output=True, text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1"},
            )
            if proc.returncode != 0:
                report["methods"][method] = {"error": proc.stderr[-2000:]}
                continue
            res = json.loads(out.read_text())
            report["methods"][method] = {
                "docs_per_s_per_core": round(args.docs / res["cpu_s"], 1),
                "cpu_s": round(res["cpu_s"], 2),
                "wall_s": round(res["wall_s"], 2),
                "peak_rss_mb": round(res["peak_rss_mb"], 1),
                "rss_at_start_mb": round(res["rss_at_start_mb"], 1),
                **evaluate(res["removed"], truth["pairs"]),
            }
        ours = report["methods"].get("smolforge", {}).get("docs_per_s_per_core")
        for base in ("datatrove", "datasketch"):
            theirs = report["methods"].get(base, {}).get("docs_per_s_per_core")
            if ours and theirs:
                report[f"speedup_vs_{base}"] = round(ours / theirs, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
