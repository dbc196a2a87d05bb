"""Benchmark: documents/s of each heuristic filter on one core, on the corpus of
benchmarks/decontaminate.py (documents made of Python standard library docstrings
and comments), with the share kept and the most common drop rules.

    python benchmarks/heuristics.py [--docs 5000]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from decontaminate import build_corpus  # noqa: E402

from smolforge.stages.heuristics import (  # noqa: E402
    C4Filter,
    FineWebFilter,
    GopherQuality,
    GopherRepetition,
    Length,
)
from smolforge.stages.langid import Language  # noqa: E402


def rule(reason: str) -> str:
    """The rule of a reason, numbers replaced by N (so reasons group by rule)."""
    return re.sub(r"(?<![\w.])\d[\d.]*(?:e[+-]?\d+)?", "N", reason.split(";")[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    _, docs, _, _ = build_corpus(1000, args.docs, 0.0, args.seed)
    records = [{"id": str(i), "meta": {}, "text": t} for i, t in enumerate(docs)]
    filters = [GopherQuality(), GopherRepetition(), C4Filter(), FineWebFilter(),
               Length(min_words=50, max_words=100_000), Language()]
    out: dict = {"benchmark": "heuristics", "documents": len(docs),
                 "mean_doc_chars": round(sum(map(len, docs)) / len(docs)), "filters": {}}
    for f in filters:
        f.check(records[0])  # load models, compile patterns
        t0 = time.perf_counter()
        reasons = [f.check(r) for r in records]
        secs = time.perf_counter() - t0
        dropped = [r for r in reasons if r is not None]
        out["filters"][f.type] = {
            "documents_per_s": round(len(records) / secs),
            "kept": round(1 - len(dropped) / len(records), 3),
            "top_rules": dict(Counter(rule(r) for r in dropped).most_common(3)),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
