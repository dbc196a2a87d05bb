"""Benchmark: documents per CPU-second of each heuristic filter against its baseline
on the same documents, one process, one core.

Baselines: datatrove 0.10's GopherQualityFilter, GopherRepetitionFilter,
C4QualityFilter and FineWebQualityFilter (with spaCy, datatrove's English
tokenizer) for our four filters; py3langid's `classify` alone, in a loop, for the
`language` stage (the stage must run at >= 0.9x the library). The corpus is the
real mixed text of benchmarks/filters_agreement.py (stdlib docstrings and sources,
man pages, package READMEs/licences, bad pages). For each filter: docs/CPU-s for
both sides, the ratio, our share kept and our most common drop rules.

    python benchmarks/heuristics.py [--docs 3000] [--repeat 1]

Prints one JSON object; exits 1 if a baseline crashes. Needs the bench extra.
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

from filters_agreement import build_corpus, datatrove_filters  # noqa: E402

from smolforge.context import EnginePool, StageContext  # noqa: E402
from smolforge.stages.quality.c4 import C4Filter  # noqa: E402
from smolforge.stages.quality.fineweb import FineWebFilter  # noqa: E402
from smolforge.stages.quality.gopher import GopherQuality, GopherRepetition  # noqa: E402
from smolforge.stages.quality.language import Language, _load_identifier  # noqa: E402
from smolforge.stages.quality.length import Length  # noqa: E402
from smolforge.text import tokenizers  # noqa: E402


def rule(reason: str) -> str:
    """The rule of a reason, numbers replaced by N (so reasons group by rule)."""
    return re.sub(r"(?<![\w.])\d[\d.]*(?:e[+-]?\d+)?", "N", reason.split(";")[0])


def timed(fn, n: int, repeat: int):
    """(documents per CPU-second of `fn()`, best of `repeat`; its result). CPU time,
    not wall time, because the machine is shared."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    return n / best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    from datatrove.data import Document

    texts = [t for _, t in build_corpus(args.docs, args.seed)]
    records = [{"id": str(i), "meta": {}, "text": t} for i, t in enumerate(texts)]
    n = len(records)
    out: dict = {"benchmark": "heuristics", "documents": n,
                 "mean_doc_chars": round(sum(map(len, texts)) / n), "filters": {}}
    theirs = datatrove_filters()
    ours = {"gopher_quality": GopherQuality(), "gopher_repetition": GopherRepetition(),
            "c4_filter": C4Filter(), "fineweb_filter": FineWebFilter(char_duplicates_ratio=0.01)}
    failed = False
    for name, f in ours.items():
        tokenizers._chunk_cache.clear()  # no filter profits from another's token cache
        ours_rate, reasons = timed(lambda f=f: [f.check(r) for r in records], n, args.repeat)
        dt = theirs[name]
        try:
            dt_rate, _ = timed(lambda dt=dt: [dt.filter(Document(text=t, id="0")) for t in texts],
                               n, args.repeat)
        except Exception as e:  # a crashing baseline fails the benchmark
            failed = True
            out["filters"][name] = {"error": f"datatrove: {type(e).__name__}: {e}"}
            continue
        dropped = [r for r in reasons if r is not None]
        out["filters"][name] = {
            "docs_per_cpu_s": round(ours_rate), "datatrove_docs_per_cpu_s": round(dt_rate),
            "speedup_vs_datatrove": round(ours_rate / dt_rate, 2),
            "kept": round(1 - len(dropped) / n, 3),
            "top_rules": dict(Counter(rule(r) for r in dropped).most_common(3)),
        }

    length = Length(min_words=50, max_words=100_000)
    out["filters"]["length"] = {
        "docs_per_cpu_s": round(timed(lambda: [length.check(r) for r in records], n,
                                      args.repeat)[0])}

    ctx = StageContext(recipe_name="bench", recipe_dir=Path("."), seed=0,
                       default_engine="llamacpp", pool=EnginePool(), cache=None)
    lang = Language()
    lang.process(records[:2], ctx)  # load the model
    ident = _load_identifier()
    stage_rate, _ = timed(lambda: lang.process(records, ctx), n, args.repeat)
    lib_rate, _ = timed(lambda: [ident.classify(t.replace("\n", " ")) for t in texts], n,
                        args.repeat)
    out["filters"]["language"] = {
        "docs_per_cpu_s": round(stage_rate), "py3langid_alone_docs_per_cpu_s": round(lib_rate),
        "ratio_vs_library": round(stage_rate / lib_rate, 2),
    }
    print(json.dumps(out, indent=2))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
