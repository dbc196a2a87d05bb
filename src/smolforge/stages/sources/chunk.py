"""`chunk`: split long documents into ~300-token passages at sentence boundaries.

WRAP (Maini et al. 2024, "Rephrasing the Web") rephrases web documents in pieces of
at most 300 tokens, because a small model rephrases a short passage faithfully and a
long one lossily; Nemotron-CC (Su et al. 2024) prompts with passages of similar size.

Sentences are packed greedily: a chunk takes sentences while it stays within
`target_tokens`; a sentence longer than that is cut at word boundaries; a last chunk
shorter than `min_tokens` is merged into the one before it (so a chunk may reach
`target_tokens + min_tokens`). A chunk is a span of the original text, so paragraph
breaks inside it are kept.

Each chunk becomes a record `<id>.<k>` (k from 0, even for a one-chunk document,
so ids do not depend on length) with columns `chunk_index` and `chunk_count` (the
document's number of chunks, before `max_chunks` keeps the first ones). An
empty document is rejected. Tokens are counted as in `text_quality` (words and
punctuation runs, no model tokenizer).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.text import count_tokens

# A sentence ends at . ! ? (and closing quotes/brackets) followed by whitespace and
# an upper-case letter, digit or opening quote; a blank line always ends one.
_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(\s+)(?=["'\u201c\u2018(\[]?[A-Z0-9])|(\n[ \t]*\n\s*)""")
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "eg", "ie", "e.g", "i.e",
    "no", "fig", "vol", "approx", "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "cf", "al", "ca",
}
_LAST_WORD = re.compile(r"([\w.]+)\.[\"'\u201d\u2019)\]]*$")
_WORD_SPAN = re.compile(r"\S+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, whitespace between sentences excluded."""
    spans, start = [], 0
    for m in _END.finditer(text):
        if m.group(1) is not None:
            cut, nxt = m.start(1), m.end(1)
            w = _LAST_WORD.search(text, start, cut)
            if w and (w.group(1).lower() in _ABBREV or len(w.group(1)) == 1):
                continue  # "Dr. Smith", "e.g. this", "J. Smith"
        else:
            cut, nxt = m.start(2), m.end(2)
        if text[start:cut].strip():
            spans.append(_strip(text, start, cut))
        start = nxt
    if text[start:].strip():
        spans.append(_strip(text, start, len(text)))
    return spans


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _cut_long(text: str, a: int, b: int, target: int) -> Iterator[tuple[int, int, int]]:
    """Cut an over-long sentence at word boundaries into pieces of <= target tokens."""
    piece_start, n = None, 0
    last_end = a
    for m in _WORD_SPAN.finditer(text, a, b):
        t = count_tokens(m.group(0))
        if piece_start is not None and n + t > target:
            yield piece_start, last_end, n
            piece_start, n = None, 0
        if piece_start is None:
            piece_start = m.start()
        n += t
        last_end = m.end()
    if piece_start is not None:
        yield piece_start, last_end, n


def chunk_spans(text: str, target_tokens: int = 300, min_tokens: int = 50) -> list[tuple[int, int]]:
    """(start, end) of each chunk of `text`; see the module docstring for the rules."""
    units: list[tuple[int, int, int]] = []
    for a, b in sentence_spans(text):
        n = count_tokens(text[a:b])
        units.extend(_cut_long(text, a, b, target_tokens) if n > target_tokens else [(a, b, n)])
    chunks: list[list[int]] = []  # [start, end, tokens]
    for a, b, n in units:
        if chunks and chunks[-1][2] + n <= target_tokens:
            chunks[-1][1], chunks[-1][2] = b, chunks[-1][2] + n
        else:
            chunks.append([a, b, n])
    if len(chunks) > 1 and chunks[-1][2] < min_tokens:
        tail = chunks.pop()
        chunks[-1][1], chunks[-1][2] = tail[1], chunks[-1][2] + tail[2]
    return [(a, b) for a, b, _ in chunks]


@stages.register
class Chunk(MapStage):
    """Split `column` into ~`target_tokens` chunks at sentence boundaries, one record
    per chunk (`<id>.<k>`). Defaults follow WRAP: 300 tokens."""

    type: Literal["chunk"] = "chunk"
    column: str = Field("text", description="the text column split")
    output: str | None = Field(
        None, description="column for the chunk (default: `column`; otherwise `column` is removed)"
    )
    target_tokens: int = Field(300, ge=8, description="most tokens per chunk (sentences are not cut)")
    min_tokens: int = Field(
        50, ge=0, description="a last chunk shorter than this is merged into the previous one"
    )
    max_chunks: int | None = Field(None, ge=1, description="keep at most this many chunks per document")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_tokens >= self.target_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be below target_tokens ({self.target_tokens})")
        return self

    @property
    def out_column(self) -> str:
        return self.output or self.column

    def requires(self) -> set[str]:
        return {self.column}

    def provides(self) -> set[str]:
        return {self.out_column, "chunk_index", "chunk_count"}

    def removes(self) -> set[str]:
        return {self.column} - {self.out_column}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        for rec in batch:
            text = rec.get(self.column)
            if not isinstance(text, str) or not text.strip():
                res.reject(rec, f"chunk: empty text (column {self.column!r})")
                continue
            spans = chunk_spans(text, self.target_tokens, self.min_tokens)
            base = {k: v for k, v in rec.items() if k != self.column}
            for k, (a, b) in enumerate(spans[: self.max_chunks]):
                res.keep({
                    **base,
                    "id": f"{rec['id']}.{k}",
                    self.out_column: text[a:b],
                    "chunk_index": k,
                    "chunk_count": len(spans),
                })
        return res
