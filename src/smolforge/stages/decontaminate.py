"""Benchmark decontamination: drop documents that contain benchmark items.

Each benchmark item (its named fields joined) is normalised — NFKC, lower case,
punctuation and whitespace folded (`smolforge.text.normalize`) — and cut into word
n-grams (n=10 by default; an item shorter than n words is one gram of its whole
text). An index of 64-bit hashes of those grams finds the items a document may
contain; the overlap — the share of an item's distinct n-grams that occur in the
document — is then computed exactly on the words, and a document whose overlap
with some item reaches the threshold (0.5) is dropped, the reason naming the
benchmark, the item and the overlap: `contaminated: gsm8k item 17 (overlap 0.92)`.

This is the n-gram overlap test of GPT-3 (Brown et al. 2020, appendix C) and the
Llama 2 contamination analysis, measured per benchmark item rather than per
document, so that a long document that quotes one short question is still caught.
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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result

log = logging.getLogger(__name__)

# Odd 64-bit multiplier for the polynomial combination of word hashes, and its
# inverse modulo 2**64.
_MULT = 0x9E3779B97F4A7C15
_MULT_INV = pow(_MULT, -1, 1 << 64)
_ALNUM = re.compile(r"[^\W_]+")


class Benchmark(BaseModel):
    """One benchmark file: JSONL, JSON (a list of objects), Parquet or CSV/TSV,
    optionally gzipped (`.jsonl.gz`, `.csv.gz`)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the file (relative to the recipe)")
    name: str | None = Field(None, description="name in reasons (default: the file name)")
    fields: list[str] = Field(min_length=1, description="fields holding the benchmark text")
    id_field: str | None = Field(None, description="field naming an item (default: its row)")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "tsv"] = "auto"

    def label(self) -> str:
        if self.name:
            return self.name
        base = Path(self.path).name
        for suffix in (".gz", ".jsonl", ".json", ".parquet", ".csv", ".tsv"):
            base = base.removesuffix(suffix)
        return base


def _file_format(path: Path, declared: str) -> str:
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


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def read_rows(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of a benchmark file as dicts."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
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


def _flatten(value: Any) -> str:
    """Text of a field: lists (answer choices) and dicts are joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_flatten(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_flatten(v) for v in value)
    return str(value)


def words_of(text: str) -> list[str]:
    """`normalize(text).split()` in one pass: the runs of letters and digits of the
    NFKC, lower-cased text."""
    return _ALNUM.findall(unicodedata.normalize("NFKC", text).lower())


def word_hashes(words: list[str]) -> np.ndarray:
    """64-bit hashes of words (Python's string hash: stable within one process,
    which is where an index lives)."""
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def _power_table(base: int, size: int) -> np.ndarray:
    out = np.full(size, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)  # wraps modulo 2**64


_powers = _power_table(_MULT, 1 << 12)
_inverse_powers = _power_table(_MULT_INV, 1 << 12)


def prefix_hashes(wh: np.ndarray) -> np.ndarray:
    """H[i] = sum of wh[j] * M**-j for j < i (mod 2**64): any window's hash is then
    two array operations away (`window_hashes`)."""
    global _powers, _inverse_powers
    if len(wh) > len(_powers):
        size = max(len(wh), 2 * len(_powers))
        _powers, _inverse_powers = _power_table(_MULT, size), _power_table(_MULT_INV, size)
    h = np.zeros(len(wh) + 1, dtype=np.uint64)
    np.cumsum(wh * _inverse_powers[: len(wh)], out=h[1:])
    return h


def window_hashes(prefix: np.ndarray, k: int) -> np.ndarray:
    """Hash of every k-word window, sum of wh[i+j] * M**(k-1-j): the same value
    wherever the window sits, in a document or in a benchmark item."""
    m = len(prefix) - k
    return (prefix[k:] - prefix[:m]) * _powers[k - 1 : k - 1 + m]


def gram_hashes(wh: np.ndarray, k: int) -> np.ndarray:
    """Hashes of every k-word window of a text given its word hashes."""
    return window_hashes(prefix_hashes(wh), k)


def word_grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """Distinct n-grams of words; a text shorter than n words is one gram."""
    if len(words) < n:
        return {tuple(words)}
    return set(zip(*(words[i:] for i in range(n)), strict=False))


@dataclass
class _Item:
    bench: str
    label: str
    words: list[str]


class BenchmarkIndex:
    """Hashed n-grams of every benchmark item -> the items holding them.

    Stored as a sorted array of distinct gram hashes with, per hash, a slice of
    an item-id array (CSR layout): about 20 bytes per (gram, item) pair."""

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
        grams = np.unique(gram_hashes(word_hashes(words), min(self.n, len(words))))
        self._pending_keys.append(grams)
        self._pending_ids.append(np.full(len(grams), len(self.items), dtype=np.int32))
        self.items.append(_Item(bench, label, words))
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

    def candidates(self, words: list[str], threshold: float) -> list[int]:
        """Items whose hashed grams reach the threshold share in the words."""
        if not words or not len(self.keys):
            return []
        prefix = prefix_hashes(word_hashes(words))
        hits: list[np.ndarray] = []
        for k in (*self.short_lengths, self.n):
            if k > len(words):
                break
            g = window_hashes(prefix, k)
            pos = np.searchsorted(self.keys, g)
            pos[pos == len(self.keys)] = 0
            hits.extend(
                self.postings[self.offsets[p] : self.offsets[p + 1]]
                for p in np.unique(pos[self.keys[pos] == g]).tolist()
            )
        if not hits:
            return []
        ids, counts = np.unique(np.concatenate(hits), return_counts=True)
        return ids[counts >= threshold * self.gram_counts[ids] - 1e-9].tolist()

    def overlap(
        self, item: _Item, doc_grams: dict[int, set[tuple[str, ...]]], doc_words: list[str]
    ) -> float:
        """Exact share of the item's distinct n-grams present in the document."""
        k = min(self.n, len(item.words))
        if k not in doc_grams:
            doc_grams[k] = word_grams(doc_words, k) if len(doc_words) >= k else set()
        grams = word_grams(item.words, self.n)
        return sum(1 for g in grams if g in doc_grams[k]) / len(grams)


@stages.register("decontaminate")
class Decontaminate(MapStage):
    """Drop documents that contain benchmark items (n-gram overlap >= threshold)."""

    type: Literal["decontaminate"] = "decontaminate"
    column: str = Field("text", description="the text column checked")
    benchmarks: list[Benchmark] = Field(min_length=1, description="benchmark files")
    n: int = Field(10, ge=1, description="words per n-gram")
    threshold: float = Field(
        0.5, gt=0, le=1, description="drop when this share of an item's n-grams is in a document"
    )
    min_item_words: int = Field(
        3, ge=1, description="skip items with fewer normalised words (too short to tell a leak)"
    )

    _index: BenchmarkIndex | None = PrivateAttr(None)

    def requires(self) -> set[str]:
        return {self.column}

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return [_file_digest(ctx.resolve_path(b.path)) for b in self.benchmarks]

    def index(self, ctx: StageContext) -> BenchmarkIndex:
        """The benchmark index, built once per stage object."""
        if self._index is None:
            self._index = self.build_index(ctx)
        return self._index

    def build_index(self, ctx: StageContext) -> BenchmarkIndex:
        index = BenchmarkIndex(self.n)
        for bench in self.benchmarks:
            path = ctx.resolve_path(bench.path)
            name = bench.label()
            seen_fields: set[str] = set()
            skipped = 0
            for row_no, row in enumerate(read_rows(path, _file_format(path, bench.format))):
                seen_fields.update(row)
                text = " ".join(_flatten(row.get(f)) for f in bench.fields)
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
        hits: list[tuple[float, _Item]] = []
        doc_grams: dict[int, set[tuple[str, ...]]] = {}
        for item_id in index.candidates(words, self.threshold):
            item = index.items[item_id]
            score = index.overlap(item, doc_grams, words)
            if score >= self.threshold:
                hits.append((score, item))
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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
