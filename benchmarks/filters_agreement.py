"""Benchmark: do our heuristic filters decide like datatrove's on real text?

Runs gopher_quality, gopher_repetition, c4_filter and fineweb_filter and
datatrove 0.10's GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter and
FineWebQualityFilter (their defaults; ours set to the same thresholds) on the same
documents, and prints per filter the agreement and the confusion counts (both
keep, both drop, only ours drops, only datatrove drops), with a few examples of
each disagreement, as one JSON object.

The corpus is real mixed text that every machine here has, no download: Python
standard library docstrings and whole source files, man pages (roff markup
stripped), README/LICENSE/METADATA files of installed packages and Debian
copyright files, plus deliberately bad pages (menus, lists, repeated lines,
boilerplate) built from those lines. Exits 1 if a datatrove filter crashes.

    python benchmarks/filters_agreement.py [--docs 3000] [--tokenizers rules,spacy]

Needs the bench extra (datatrove, spaCy).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from smolforge.stages.quality.c4 import C4Filter
from smolforge.stages.quality.fineweb import FineWebFilter
from smolforge.stages.quality.gopher import GopherQuality, GopherRepetition

MAX_CHARS = 20_000
_ROFF_ESCAPE = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\\*(?:\(..|\[[^\]]*\]|.)|\\\(..|\\[&|^%:]")
_ROFF_TEXT_MACROS = {".SH", ".SS", ".B", ".I", ".BR", ".IR", ".RB", ".RI", ".BI", ".IB", ".SM",
                     ".TP", ".IP", ".Nm", ".Nd", ".Sh", ".Ss", ".Pa", ".Ar", ".Fl", ".Em"}


def _clip(text: str) -> str:
    return text[:MAX_CHARS].strip()


def roff_to_text(src: str) -> str:
    """The words of a man page source: control lines dropped except those that
    carry text (headings, fonts), escapes removed."""
    out: list[str] = []
    for line in src.splitlines():
        if line.startswith((".", "'")):
            macro, _, rest = line.partition(" ")
            if macro not in _ROFF_TEXT_MACROS or not rest:
                if macro in (".PP", ".P", ".LP", ".Pp", ".sp"):
                    out.append("")
                continue
            line = rest.replace('"', "")
        line = _ROFF_ESCAPE.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        line = line.replace("\\ ", " ").replace("\\", "")
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out))


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def stdlib_docstrings(rng: random.Random, n: int) -> list[str]:
    docs: list[str] = []
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    docs.append(doc)
    return rng.sample(docs, min(n, len(docs)))


def stdlib_sources(rng: random.Random, n: int) -> list[str]:
    files = rng.sample(_stdlib_files(), n)
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def man_pages(rng: random.Random, n: int) -> list[str]:
    pages = sorted(Path("/usr/share/man").glob("man[1-8]/*.gz"))
    out: list[str] = []
    for p in rng.sample(pages, min(len(pages), 2 * n)):
        try:
            text = roff_to_text(gzip.decompress(p.read_bytes()).decode("utf-8", "replace"))
        except (OSError, EOFError):
            continue
        if len(text.split()) >= 20:
            out.append(text)
        if len(out) == n:
            break
    return out


def package_texts(rng: random.Random, n: int) -> list[str]:
    site = Path(sysconfig.get_paths()["purelib"])
    names = ("README*", "LICENSE*", "LICENCE*", "COPYING*", "METADATA", "NOTICE*")
    paths = sorted({p for pat in names for p in site.glob(f"*/{pat}") if p.is_file()})
    paths += sorted(Path("/usr/share/doc").glob("*/copyright"))
    paths += sorted(Path("/usr/share/doc").glob("*/README*"))
    out: list[str] = []
    for p in rng.sample(paths, len(paths)):
        data = p.read_bytes()
        if p.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                continue
        text = data.decode("utf-8", "replace")
        if len(text.split()) >= 20:
            out.append(text)
        if len(out) == n:
            break
    return out


def bad_pages(rng: random.Random, n: int, lines: list[str]) -> list[str]:
    """Pages the filters exist for, built from real lines."""
    menus = ["Home", "About us", "Contact", "Blog", "Shop", "Login", "Sign up", "FAQ", "Careers",
             "Privacy Policy", "Terms of Use", "Sitemap", "Press", "Help"]
    junk = ["Click here to subscribe to our newsletter!", "This website uses cookies.",
            "Please enable JavaScript to view this page.", "Copyright 2024. All rights reserved.",
            "Share on Facebook", "Tweet this", "Read more...", "Lorem ipsum dolor sit amet."]
    out: list[str] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:  # navigation menu
            out.append("\n".join(rng.choices(menus, k=rng.randint(8, 40))))
        elif kind == 1:  # a bulleted list
            bullet = rng.choice(["- ", "• ", "* ", ""])
            out.append("\n".join(bullet + rng.choice(lines)[:60] for _ in range(rng.randint(10, 50))))
        elif kind == 2:  # repeated lines
            base = rng.sample(lines, 3)
            out.append("\n".join(rng.choice(base) for _ in range(rng.randint(6, 40))))
        elif kind == 3:  # boilerplate around a little text
            body = rng.sample(lines, rng.randint(1, 6))
            out.append("\n".join(rng.sample(junk, 4) + body + rng.sample(junk, 3)))
        elif kind == 4:  # repeated paragraph
            para = " ".join(rng.sample(lines, 3))
            out.append("\n\n".join([para] * rng.randint(2, 6) + [rng.choice(lines)]))
        else:  # keyword spam
            words = rng.choice(lines).split()[:4] or ["buy", "now"]
            out.append(" ".join(rng.choices(words, k=rng.randint(60, 300))))
    return out


def build_corpus(n_docs: int = 3000, seed: int = 0) -> list[tuple[str, str]]:
    """(source, text) pairs of real mixed text, deterministic for a seed."""
    rng = random.Random(seed)
    share = {"stdlib_docstring": 0.3, "stdlib_source": 0.1, "man_page": 0.25, "package_text": 0.2}
    sources: dict[str, Callable[[random.Random, int], list[str]]] = {
        "stdlib_docstring": stdlib_docstrings, "stdlib_source": stdlib_sources,
        "man_page": man_pages, "package_text": package_texts,
    }
    corpus: list[tuple[str, str]] = []
    for name, fn in sources.items():
        corpus += [(name, _clip(t)) for t in fn(rng, int(n_docs * share[name]))]
    lines = [s for _, t in corpus for s in t.splitlines() if len(s.split()) >= 4]
    corpus += [("bad_page", _clip(t)) for t in bad_pages(rng, n_docs - len(corpus), lines)]
    return [(src, t) for src, t in corpus if t.strip()]


def datatrove_filters() -> dict:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {"gopher_quality": GopherQualityFilter(), "gopher_repetition": GopherRepetitionFilter(),
            "c4_filter": C4QualityFilter(), "fineweb_filter": FineWebQualityFilter()}


def our_filters(tokenizer: str) -> dict:
    """Ours with datatrove's thresholds (only fineweb's duplicated-char default differs)."""
    return {
        "gopher_quality": GopherQuality(tokenizer=tokenizer),
        "gopher_repetition": GopherRepetition(tokenizer=tokenizer),
        "c4_filter": C4Filter(tokenizer=tokenizer),
        "fineweb_filter": FineWebFilter(tokenizer=tokenizer, char_duplicates_ratio=0.01),
    }


def datatrove_decisions(texts: list[str]) -> tuple[dict, dict, dict]:
    """{filter: [(kept, reason)]}, {filter: seconds}, {filter: first error}."""
    from datatrove.data import Document

    decisions: dict = {}
    secs: dict = {}
    errors: dict = {}
    for name, f in datatrove_filters().items():
        out = []
        t0 = time.perf_counter()
        for i, text in enumerate(texts):
            try:
                res = f.filter(Document(text=text, id=str(i)))
            except Exception as e:  # a crashing baseline fails the benchmark
                errors.setdefault(name, f"doc {i}: {type(e).__name__}: {e}")
                res = (False, "crash")
            out.append((res, None) if isinstance(res, bool) else (bool(res[0]), res[1]))
        secs[name] = time.perf_counter() - t0
        decisions[name] = out
    return decisions, secs, errors


def compare(texts: list[str], sources: list[str], ours: dict, theirs: dict, examples: int) -> dict:
    result: dict = {}
    for name, f in ours.items():
        mine = [f.check({"text": t}) for t in texts]
        counts = {"both_keep": 0, "both_drop": 0, "only_ours_drops": 0, "only_datatrove_drops": 0}
        shown: dict[str, list] = {"only_ours_drops": [], "only_datatrove_drops": []}
        for i, (reason, (kept, their_reason)) in enumerate(zip(mine, theirs[name], strict=True)):
            we_keep = reason is None
            key = ("both_keep" if kept else "only_datatrove_drops") if we_keep else (
                "only_ours_drops" if kept else "both_drop")
            counts[key] += 1
            if key in shown and len(shown[key]) < examples:
                shown[key].append({"doc": i, "source": sources[i], "ours": reason,
                                   "datatrove": their_reason, "start": texts[i][:80]})
        agree = (counts["both_keep"] + counts["both_drop"]) / len(texts)
        result[name] = {"agreement": round(agree, 4), **counts, "examples": shown}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizers", default="rules,spacy", help="ours: rules, spacy, regex")
    ap.add_argument("--examples", type=int, default=3, help="disagreements shown per kind")
    args = ap.parse_args()

    corpus = build_corpus(args.docs, args.seed)
    sources = [s for s, _ in corpus]
    texts = [t for _, t in corpus]
    theirs, secs, errors = datatrove_decisions(texts)
    out: dict = {
        "benchmark": "filters_agreement",
        "documents": len(texts),
        "by_source": {s: sources.count(s) for s in sorted(set(sources))},
        "datatrove_seconds": {k: round(v, 2) for k, v in secs.items()},
        "datatrove_errors": errors,
    }
    for tok in args.tokenizers.split(","):
        out[f"ours_{tok}"] = compare(texts, sources, our_filters(tok), theirs, args.examples)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
