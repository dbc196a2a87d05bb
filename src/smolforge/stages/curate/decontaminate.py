"""Benchmark decontamination: drop documents that contain benchmark items, whole
or in part.

Each benchmark item (its named fields joined; lists such as MMLU choices and dict
values included) is normalised — NFKC, lower case, punctuation and whitespace
folded (`smolforge.text.normalize`) — and cut into word n-grams (n=10 by default;
an item shorter than n words is one gram of its whole text). An index of stable
64-bit gram hashes (BLAKE2b word hashes, `smolforge.text.ngrams`: the same in every
process) finds the items a document shares n-grams with. Each candidate is then
aligned: its matched n-grams are grouped into runs along the document (a gap
longer than the item starts a new run), and a run's overlap is the share of the
item's words that its matched n-grams cover. A document is dropped when some run
covers at least `threshold` (0.3) of an item with at least `min_grams` (2)
matched n-grams, i.e. 11 words in a row at n=10; the reason names the benchmark,
the item and the overlap: `contaminated: gsm8k item 17 (overlap 0.92)`.

This is the n-gram overlap test of GPT-3 (Brown et al. 2020, appendix C) and the
Llama 2 contamination analysis, measured per benchmark item rather than per
document so that a long page quoting one short question is still caught, and
scored by the words covered rather than by "half the item's n-grams" so that a
leak of 40% of an item (a signature and half its docstring) or one with renamed
identifiers (whose docstring prose still aligns) is caught too. Requiring two
n-grams in a row and a third of the item keeps pages that merely share short
code (imports, `def add(a, b)`, licence headers, one quoted sentence).
benchmarks/decontaminate.py measures both against a 10-gram + difflib reference.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from smolforge.context import StageContext
from smolforge.paths import GLOB_OR_URL
from smolforge.registry import stages
from smolforge.remote import RemoteFile
from smolforge.stages.base import MapStage, Record, Result
from smolforge.text import flatten
from smolforge.text.ngrams import (
    gram_hashes,
    prefix_hashes,
    stable_word_hashes,
    window_hashes,
    word_grams,
)

log = logging.getLogger(__name__)

OVERLAP = 0.3
MIN_GRAMS = 2

_ALNUM = re.compile(r"[^\W_]+")
_HASHES: dict[str, int] = {}  # memo of stable word hashes (BLAKE2b is ~1 us a word)

__all__ = [
    "Benchmark", "BenchmarkIndex", "Decontaminate", "gram_hashes", "prefix_hashes",
    "read_rows", "window_hashes", "word_grams", "word_hashes", "words_of",
]


class Benchmark(BaseModel):
    """One benchmark file: JSONL, JSON (a list of objects), Parquet or CSV/TSV,
    optionally gzipped (`.jsonl.gz`, `.csv.gz`)."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, GLOB_OR_URL] = Field(
        description="the file (relative to the recipe), or a URL (`s3://bucket/mmlu.jsonl`, docs/storage.md)")
    name: str | None = Field(None, description="name in reasons (default: the file name)")
    fields: list[str] = Field(min_length=1, description="fields holding the benchmark text")
    id_field: str | None = Field(None, description="field naming an item (default: its row)")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "tsv"] = "auto"

    def label(self) -> str:
        if self.name:
            return self.name
        base = Path(self.path.rstrip("/")).name
        for suffix in (".gz", ".jsonl", ".json", ".parquet", ".csv", ".tsv"):
            base = base.removesuffix(suffix)
        return base


def _file_format(path: Path | RemoteFile, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    fmt = {
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "json",
        ".parquet": "parquet",
        ".csv": "csv",
        ".tsv": "tsv",
    }.get(ext)
    if fmt is None:
        raise ValueError(f"benchmark {path}: cannot tell the format from {ext!r}; set `format`")
    return fmt


def _open_text(path: Path | RemoteFile) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        # an object: gzip reads the fsspec file (closed with it by the garbage collector)
        src = path if isinstance(path, Path) else path.open("rb")
        return gzip.open(src, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return path.open("r", encoding="utf-8", newline="")  # type: ignore[return-value]


def read_rows(path: Path | RemoteFile, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of a benchmark file (local or an object by URL) as dicts."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if isinstance(path, Path):
            yield from pq.read_table(path).to_pylist()
        else:
            with path.open("rb") as f:
                yield from pq.read_table(f).to_pylist()
        return
    with _open_text(path) as f:
        if fmt == "jsonl":
            for line in f:
                if line.strip():
                    yield json.loads(line)
        elif fmt == "json":
            data = json.load(f)
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            yield from data
        else:
            yield from csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")




def words_of(text: str) -> list[str]:
    """`normalize(text).split()` in one pass: the runs of letters and digits of the
    NFKC, lower-cased text."""
    return _ALNUM.findall(unicodedata.normalize("NFKC", text).lower())


def word_hashes(words: list[str]) -> np.ndarray:
    """64-bit word hashes that are the same in every process and on every run
    (`ngrams.stable_word_hashes`, BLAKE2b), memoised per word: an index built in
    one process can be queried from another (Ray workers, a saved index)."""
    new = [w for w in dict.fromkeys(words) if w not in _HASHES]
    if new:
        if len(_HASHES) > 2_000_000:
            _HASHES.clear()
            new = list(dict.fromkeys(words))
        _HASHES.update(zip(new, stable_word_hashes(new).tolist(), strict=True))
    return np.fromiter(map(_HASHES.__getitem__, words), dtype=np.uint64, count=len(words))


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """[0..c0), [0..c1), ... concatenated."""
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum()), dtype=np.int64) - offsets


@dataclass
class _Item:
    bench: str
    label: str
    words: list[str]
    grams: np.ndarray  # hash of the k-word window at each position, k = min(n, len(words))
    _order: np.ndarray | None = None

    def positions(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into `hashes`, item position) of every occurrence of each hash
        among the item's grams."""
        if self._order is None:
            self._order = np.argsort(self.grams, kind="stable")
        sorted_grams = self.grams[self._order]
        left = np.searchsorted(sorted_grams, hashes, side="left")
        right = np.searchsorted(sorted_grams, hashes, side="right")
        counts = right - left
        which = np.repeat(np.arange(len(hashes)), counts)
        return which, self._order[np.repeat(left, counts) + _ragged_arange(counts)]


@dataclass
class Match:
    """The best aligned run of an item's n-grams found in a document."""

    overlap: float  # share of the item's words covered by matched n-grams
    grams: int  # matched n-gram windows (item positions)
    span: int  # item words from the first to the last covered word


class BenchmarkIndex:
    """Hashed n-grams of every benchmark item -> the items holding them.

    Stored as a sorted array of distinct gram hashes with, per hash, a slice of
    an item-id array (CSR layout), plus each item's gram hashes by position for
    aligning a match: about 28 bytes per (gram, item) pair."""

    def __init__(self, n: int):
        self.n = n
        self.items: list[_Item] = []
        self._pending_keys: list[np.ndarray] = []
        self._pending_ids: list[np.ndarray] = []
        self.keys = np.zeros(0, dtype=np.uint64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.postings = np.zeros(0, dtype=np.int32)
        self.gram_counts = np.zeros(0, dtype=np.int64)
        self.short_lengths: list[int] = []

    def add(self, bench: str, label: str, text: str) -> bool:
        words = words_of(text)
        if not words:
            return False
        grams = gram_hashes(word_hashes(words), min(self.n, len(words)))
        distinct = np.unique(grams)
        self._pending_keys.append(distinct)
        self._pending_ids.append(np.full(len(distinct), len(self.items), dtype=np.int32))
        self.items.append(_Item(bench, label, words, grams))
        return True

    def finish(self) -> None:
        """Sort the added grams into the lookup arrays."""
        sizes = [len(k) for k in self._pending_keys]
        keys = np.concatenate(self._pending_keys) if sizes else self.keys
        ids = np.concatenate(self._pending_ids) if sizes else self.postings
        self._pending_keys, self._pending_ids = [], []
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order]
        self.keys, starts = np.unique(keys, return_index=True)
        self.offsets = np.append(starts, len(keys)).astype(np.int64)
        self.postings = ids
        self.gram_counts = np.array(sizes, dtype=np.int64)
        self.short_lengths = sorted({len(it.words) for it in self.items if len(it.words) < self.n})

    def doc_grams(self, words: list[str]) -> dict[int, np.ndarray]:
        """The document's window hashes for every window size the items use."""
        prefix = prefix_hashes(word_hashes(words))
        return {k: window_hashes(prefix, k) for k in (*self.short_lengths, self.n)
                if k <= len(words)}

    def candidates(self, grams: dict[int, np.ndarray], min_grams: int) -> list[int]:
        """Items sharing at least `min_grams` distinct n-grams with the document
        (all of them, for an item with fewer)."""
        if not len(self.keys):
            return []
        hits: list[np.ndarray] = []
        for g in grams.values():
            pos = np.searchsorted(self.keys, g)
            pos[pos == len(self.keys)] = 0
            hits.extend(
                self.postings[self.offsets[p] : self.offsets[p + 1]]
                for p in np.unique(pos[self.keys[pos] == g]).tolist()
            )
        if not hits:
            return []
        ids, counts = np.unique(np.concatenate(hits), return_counts=True)
        return ids[counts >= np.minimum(min_grams, self.gram_counts[ids])].tolist()

    def align(self, item: _Item, grams: dict[int, np.ndarray]) -> Match:
        """The item's best-covered aligned run in the document.

        Matched n-grams are grouped into runs along the document: a gap longer
        than the item itself starts a new run, so scattered common phrases of a
        long page do not add up. A run's overlap is the share of the item's words
        that its matched n-grams cover, each n-gram covering its n words."""
        size = len(item.words)
        k = min(self.n, size)
        doc = grams.get(k)
        if doc is None or not len(doc):
            return Match(0.0, 0, 0)
        q = np.flatnonzero(np.isin(doc, item.grams))
        if not len(q):
            return Match(0.0, 0, 0)
        which, p = item.positions(doc[q])
        q = q[which]  # (q, p): document and item position of each matched window
        cut = np.flatnonzero(np.diff(q) > size + k) + 1
        best = Match(0.0, 0, 0)
        for run in np.split(np.arange(len(q)), cut):
            starts = np.unique(p[run])
            edge = np.zeros(size + 1, dtype=np.int32)
            np.add.at(edge, starts, 1)
            np.add.at(edge, starts + k, -1)
            covered = np.cumsum(edge[:-1]) > 0
            m = Match(float(covered.sum()) / size, len(starts), int(starts[-1] + k - starts[0]))
            if (m.overlap, m.grams) > (best.overlap, best.grams):
                best = m
        return best


@stages.register
class Decontaminate(MapStage):
    """Drop documents containing benchmark items (aligned n-gram coverage >= threshold)."""

    type: Literal["decontaminate"] = "decontaminate"
    column: str = Field("text", description="the text column checked")
    benchmarks: list[Benchmark] = Field(min_length=1, description="benchmark files")
    n: int = Field(10, ge=1, description="words per n-gram")
    threshold: float = Field(
        OVERLAP, gt=0, le=1,
        description="drop when an aligned run of matched n-grams covers this share of an "
        "item's words",
    )
    min_grams: int = Field(
        MIN_GRAMS, ge=1,
        description="matched n-grams a run needs (all of an item's, if it has fewer)",
    )
    min_item_words: int = Field(
        3, ge=1, description="skip items with fewer normalised words (too short to tell a leak)"
    )

    _index: BenchmarkIndex | None = PrivateAttr(None)

    def requires(self) -> set[str]:
        return {self.column}

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return [_file_digest(ctx.resolve_input(b.path)) for b in self.benchmarks]

    def index(self, ctx: StageContext) -> BenchmarkIndex:
        """The benchmark index, built once per stage object."""
        if self._index is None:
            self._index = self.build_index(ctx)
        return self._index

    def build_index(self, ctx: StageContext) -> BenchmarkIndex:
        index = BenchmarkIndex(self.n)
        for bench in self.benchmarks:
            path = ctx.resolve_input(bench.path)
            name = bench.label()
            seen_fields: set[str] = set()
            skipped = 0
            for row_no, row in enumerate(read_rows(path, _file_format(path, bench.format))):
                seen_fields.update(row)
                text = " ".join(flatten(row.get(f)) for f in bench.fields)
                if len(words_of(text)) < self.min_item_words:
                    skipped += 1
                    continue
                label = str(row.get(bench.id_field, row_no)) if bench.id_field else str(row_no)
                index.add(name, label, text)
            missing = [f for f in [*bench.fields, bench.id_field] if f and f not in seen_fields]
            if missing:
                raise ValueError(
                    f"benchmark {name} ({path}): no field {missing[0]!r};"
                    f" fields: {', '.join(sorted(seen_fields)) or 'none (empty file)'}"
                )
            if skipped:
                log.warning(
                    "benchmark %s: %d items with < %d words skipped",
                    name,
                    skipped,
                    self.min_item_words,
                )
        index.finish()
        return index

    def match(self, text: str, index: BenchmarkIndex) -> list[tuple[float, _Item]]:
        """(overlap, item) for every item at or above the threshold, best first."""
        words = words_of(text)
        if not words:
            return []
        grams = index.doc_grams(words)
        hits: list[tuple[float, _Item]] = []
        for item_id in index.candidates(grams, self.min_grams):
            item = index.items[item_id]
            m = index.align(item, grams)
            need = min(self.min_grams, int(index.gram_counts[item_id]))
            if m.overlap >= self.threshold - 1e-9 and m.grams >= need:
                hits.append((m.overlap, item))
        hits.sort(key=lambda h: (-h[0], h[1].bench, h[1].label))
        return hits

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        index = self.index(ctx)
        res = Result()
        for rec in batch:
            value = rec.get(self.column)
            hits = self.match("" if value is None else str(value), index)
            if not hits:
                res.keep(rec)
                continue
            score, item = hits[0]
            reason = f"contaminated: {item.bench} item {item.label} (overlap {score:.2f})"
            if len(hits) > 1:
                also = [f"{it.bench} item {it.label} ({sc:.2f})" for sc, it in hits[1:4]]
                more = f", +{len(hits) - 4} more" if len(hits) > 4 else ""
                reason += f"; also {', '.join(also)}{more}"
            res.reject(rec, reason)
        return res


def _file_digest(path: Path | RemoteFile) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
