"""Benchmark: smolforge's MinHash dedup against rensa, datatrove and datasketch,
whole runs with output written for every side, on one corpus with planted
near-duplicates.

Real text only: documents are random selections of lines from the docstrings of
the Python standard library. A share of the documents get a planted variant made
by one of five mutation kinds, at several strengths: `substitute` (random words
replaced), `insert_delete` (words inserted and deleted), `reorder` (the lines
shuffled), `truncate` (the end cut off) and `boilerplate` (a footer appended);
then case and punctuation are changed, which normalisation ignores. Each pair's
true word-5-gram Jaccard is computed exactly here, with this script's own
normalisation (a character table built from `str.isalnum`, not smolforge's).

Every method runs in its own subprocess (so peak memory is its own), reads the
same JSONL files and writes the records it keeps, single-threaded, with word
5-grams and 14 bands x 8 rows:
- smolforge_cli: the real CLI, `smolforge run` on a recipe `read` (the JSONL) ->
  `dedup` (method: minhash, defaults: keep-first, estimated Jaccard >= 0.75),
  writing its run directory and dataset (Parquet): the whole run, timed as one.
- smolforge_stage: the `dedup` stage alone over the JSONL files, the kept records
  written to Parquet (what the MinHash code costs without the run store).
- rensa (Rust MinHash + LSH): RMinHash(112) per document from this script's
  shingles, RMinHashLSH(threshold 0.75, 112, 14 bands) query-then-insert (keep
  the first), kept records written to JSONL.
- datatrove: MinhashDedupSignature -> Buckets -> Cluster -> Filter (FineWeb's
  MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)) on a
  LocalPipelineExecutor, one task/worker per step, reading and writing JSONL.
- datasketch: MinHash(num_perm=112) per document, MinHashLSH(params=(14, 8)),
  query-then-insert, kept records written to JSONL.

Reported per method: documents per CPU second (documents / CPU seconds of the
process and its children, reading and writing included), wall seconds, peak RSS,
recall on planted pairs with Jaccard >= 0.85 (found when one of the two is
removed), per mutation kind too, the share of planted pairs below 0.7 flagged,
and precision (removed documents that belong to a planted pair with J >= 0.7).
The headline ratios are smolforge's documents per CPU second over rensa's, for
the whole CLI run and for the stage alone. Any method that fails makes the
script exit 1 after printing the report.

    python benchmarks/dedup.py [--docs 100000] [--methods smolforge_cli,smolforge_stage,rensa,datatrove,datasketch]
    python benchmarks/dedup.py --docs 1000000 --short --methods smolforge_cli   # memory target

Needs the `bench` extra (rensa, datatrove, datasketch, spacy). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

LEVELS = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5]
KINDS = ["substitute", "insert_delete", "reorder", "truncate", "boilerplate"]
SHARD_DOCS = 10_000
NGRAM, BANDS, ROWS = 5, 14, 8
BOILERPLATE = (
    "Copyright the authors. All rights reserved. This page was generated automatically "
    "from the source; subscribe to the newsletter for updates, read the privacy policy "
    "and the terms of use, and report problems to the maintainers of this site. "
)
_FOLD = {c: " " for c in range(0x10000) if not chr(c).isalnum()}


def words_of(text: str) -> list[str]:
    """This benchmark's own normalisation: NFKC, lower case, every character that is
    not a letter or digit is a separator."""
    return unicodedata.normalize("NFKC", text).lower().translate(_FOLD).split()


def shingles(text: str) -> set[str]:
    w = words_of(text)
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
            key = " ".join(words_of(line))
            if len(key.split()) >= 4 and key not in seen:
                seen.add(key)
                out.append(line)
    return out


def mutate(text: str, kind: str, strength: float, rng: random.Random, vocab: list[str]) -> str:
    """One mutation of `text`; strength in (0, 1) is how much is changed."""
    if kind == "reorder":
        lines = text.split("\n")
        rng.shuffle(lines)
        return "\n".join(lines)
    words = text.split()
    n = len(words)
    if kind == "substitute":
        for p in rng.sample(range(n), max(1, round(n * strength / NGRAM))):
            words[p] = rng.choice(vocab)
    elif kind == "insert_delete":
        for _ in range(max(1, round(n * strength / NGRAM))):
            p = rng.randrange(len(words))
            if rng.random() < 0.5 and len(words) > NGRAM:
                del words[p]
            else:
                words.insert(p, rng.choice(vocab))
    elif kind == "truncate":
        words = words[: max(NGRAM, round(n * (1 - strength)))]
    elif kind == "boilerplate":
        foot = BOILERPLATE.split()
        extra = max(1, round(n * strength))
        words = words + (foot * (extra // len(foot) + 1))[:extra]
    return " ".join(words)


def plant(text: str, kind: str, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    strength = rng.choice([0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45])
    out = mutate(text, kind, strength, rng, vocab) if strength or kind == "reorder" else text
    out = " ".join(w.upper() if rng.random() < 0.05 else w for w in out.split(" "))
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
    bases = iter(rng.sample(range(n_base), n_base))
    for k in range(n_pairs):
        kind = KINDS[k % len(KINDS)]
        i = next(bases)
        while len(docs[i].split()) < 3 * NGRAM or (kind == "reorder" and "\n" not in docs[i]):
            i = next(bases)
        variant, j = plant(docs[i], kind, rng, vocab)
        docs.append(variant)
        pairs.append((i, n_base + k, j, kind))
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
        "pairs": [(position[a], position[b], j, kind) for a, b, j, kind in pairs],
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


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def run_smolforge_cli(data: Path, work: Path) -> list[str]:
    """The whole CLI run: `smolforge run` on read -> dedup minhash, timed by the
    worker as its child process; removed ids read back afterwards."""
    import yaml

    recipe = {
        "name": "bench-dedup",
        "stages": [
            {"type": "read", "path": f"{data.name}/shard-*.jsonl"},
            {"type": "dedup", "method": "minhash", "ngram": NGRAM, "bands": BANDS, "rows": ROWS},
        ],
    }
    path = data.parent / f"recipe-{work.name}.yaml"  # next to the data it reads
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cli = Path(sys.executable).with_name("smolforge")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "smolforge.cli"]
    subprocess.run([*cmd, "run", str(path), "--out", str(work / "run"), "--quiet"],
                   check=True, cwd=data.parent)
    return []


def removed_by_cli(work: Path) -> list[str]:
    """Input ids of the records the run dropped (`read` keeps them as `source_id`)."""
    import pyarrow.parquet as pq

    removed = []
    for f in sorted((work / "run" / "rejects").glob("*.parquet")):
        for rec in pq.read_table(f, columns=["record"]).column("record").to_pylist():
            removed.append(json.loads(rec)["source_id"])
    return removed


def run_smolforge_stage(data: Path, work: Path) -> list[str]:
    """The dedup stage alone over the JSONL files; kept records to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smolforge.context import EnginePool, StageContext
    from smolforge.stages.base import Shards
    from smolforge.stages.curate.dedup import Dedup

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
    (work / "kept").mkdir()
    for i, res in stage.process_all(Shards(load, len(files)), ctx):
        removed += [r.record["id"] for r in res.rejected]
        kept = res.kept if isinstance(res.kept, pa.Table) else pa.Table.from_pylist(res.kept)
        pq.write_table(kept, work / "kept" / f"part-{i:05d}.parquet")
    return removed


def run_rensa(data: Path, work: Path) -> list[str]:
    """rensa's documented dedup loop: RMinHash per document, LSH query-then-insert."""
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(0.75, BANDS * ROWS, BANDS)
    removed: list[str] = []
    kept: list[dict] = []
    key = 0
    (work / "kept").mkdir()
    for path in _shard_files(data):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                m = RMinHash(BANDS * ROWS, 42)
                m.update(list(shingles(rec["text"])))
                if lsh.query(m):
                    removed.append(rec["id"])
                else:
                    lsh.insert(key, m)
                    key += 1
                    kept.append(rec)
        _write_jsonl(work / "kept" / path.name, kept)
        kept = []
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
    (work / "kept").mkdir()
    for path in _shard_files(data):
        kept = []
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                m = MinHash(num_perm=BANDS * ROWS, seed=1)
                m.update_batch([s.encode() for s in shingles(rec["text"])])
                if lsh.query(m):
                    removed.append(rec["id"])
                else:
                    lsh.insert(rec["id"], m)
                    kept.append(rec)
        _write_jsonl(work / "kept" / path.name, kept)
    return removed


RUNNERS = {
    "smolforge_cli": run_smolforge_cli,
    "smolforge_stage": run_smolforge_stage,
    "rensa": run_rensa,
    "datatrove": run_datatrove,
    "datasketch": run_datasketch,
}


def worker(method: str, data: Path, work: Path, out: Path) -> None:
    baseline_rss = _rss_mb()
    cpu0, wall0 = _cpu(), time.perf_counter()
    removed = RUNNERS[method](data, work)
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    if method == "smolforge_cli":
        removed = removed_by_cli(work)
    out.write_text(json.dumps({
        "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": peak, "rss_at_start_mb": baseline_rss,
        "removed": removed,
    }))


# ---------------------------------------------------------------- driver


def evaluate(removed_ids: list[str], pairs: list) -> dict:
    removed = {int(r[3:]) for r in removed_ids}
    found: dict[str, list[bool]] = {"recall_ge_0.85": [], "flagged_lt_0.7": [], "gray": []}
    by_level: dict[str, list[bool]] = {}
    by_kind: dict[str, list[bool]] = {}
    legit: set[int] = set()
    for a, b, j, kind in pairs:
        hit = a in removed or b in removed
        if j >= 0.7:
            legit |= {a, b}
        key = "recall_ge_0.85" if j >= 0.85 else "flagged_lt_0.7" if j < 0.7 else "gray"
        found[key].append(hit)
        if j >= 0.85:
            by_kind.setdefault(kind, []).append(hit)
        level = f"{min(LEVELS, key=lambda x: abs(x - j)):.2f}"
        by_level.setdefault(level, []).append(hit)

    def share(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "removed": len(removed),
        "precision": share([r in legit for r in removed]),
        "recall": share(found["recall_ge_0.85"]),
        "recall_by_kind": {k: share(v) for k, v in sorted(by_kind.items())},
        "false_positive_rate_below_0.7": share(found["flagged_lt_0.7"]),
        "flagged_0.7_to_0.85": share(found["gray"]),
        "flagged_by_level": {k: share(v) for k, v in sorted(by_level.items(), reverse=True)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--short", action="store_true", help="2-4 lines per document (~30 words)")
    ap.add_argument("--planted", type=float, default=0.1, help="share of documents in planted pairs")
    ap.add_argument("--methods", default=",".join(RUNNERS))
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
            "planted_pairs_by_kind": {k: sum(1 for p in truth["pairs"] if p[3] == k)
                                      for k in KINDS},
            "mean_words_per_doc": truth["mean_words"],
            "ngram": NGRAM, "bands": BANDS, "rows": ROWS,
            "generate_s": round(time.perf_counter() - t0, 1),
            "cpu_count": os.cpu_count(),
            "methods": {},
        }
        failed: list[str] = []
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
                failed.append(method)
                continue
            res = json.loads(out.read_text())
            report["methods"][method] = {
                "docs_per_cpu_s": round(args.docs / res["cpu_s"], 1),
                "cpu_s": round(res["cpu_s"], 2),
                "wall_s": round(res["wall_s"], 2),
                "peak_rss_mb": round(res["peak_rss_mb"], 1),
                "rss_at_start_mb": round(res["rss_at_start_mb"], 1),
                **evaluate(res["removed"], truth["pairs"]),
            }
        rates = {m: r.get("docs_per_cpu_s") for m, r in report["methods"].items()}
        for ours in ("smolforge_cli", "smolforge_stage"):
            for base in ("rensa", "datatrove", "datasketch"):
                if rates.get(ours) and rates.get(base):
                    report[f"ratio_{ours}_vs_{base}"] = round(rates[ours] / rates[base], 3)
    print(json.dumps(report, indent=2))
    if failed:
        print(f"benchmark failed for: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
