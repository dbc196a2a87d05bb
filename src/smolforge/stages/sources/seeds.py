"""`seeds`: Cosmopedia's seeds, from a topic list or from the user's own documents.

Cosmopedia (Ben Allal et al. 2024, https://huggingface.co/blog/cosmopedia) seeded
its prompts two ways: curated topics (course outlines, wikiHow titles) and web
samples, where the prompt quotes an extract of a web page and asks for content
"related to" it, naming the page's topic (its cluster label) in part of the prompts.
This source does both, crossed with the style lists (audience x style):

- `seeds: topics`: every topic of `topics` (a file, one a line, or a list);
  columns `topic`, `extract` (null), `document` (null), `topic_mentioned` (false).
- `seeds: documents`: every document read from `documents` (files or globs, any
  format `read` takes; plain-text files give one document each). `extract` is the
  first `extract_chars` characters (cut at a sentence end or a space). `document`
  is its title: the `title_column` value, else the first line of a plain-text file
  when it is short (a `# heading` or a line of at most 12 words, not ending with a
  period; it is then left out of the extract), else the file name. `topic` is that title in a `mention_topic` share of records (seeded coin
  flip per record, default 0.5, as Cosmopedia did half of the time) and null
  otherwise, with `topic_mentioned` true/false.

Then each seed is crossed with `lists` (`audience`, `style` ...); with `count`, that
many distinct (seed, combination) pairs are sampled with the recipe seed. Every
record's `meta.knobs` holds `seeds`, the list values, `topic` (topics mode) and
`topic_mentioned` (documents mode).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from smolforge.context import StageContext
from smolforge.paths import FILE, GLOB, VALUES
from smolforge.registry import stages
from smolforge.stages.base import Record, Reject, SourceStage
from smolforge.stages.shape.vary import add_knobs
from smolforge.stages.sources.read import Combine, InputError, Read

_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s")


def extract(text: str, chars: int = 1000) -> str:
    """The first ~`chars` characters of `text`, cut after the last sentence end in
    the second half of the window, else at the last space."""
    text = text.strip()
    if len(text) <= chars:
        return text
    window = text[: chars + 1]
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= chars // 2:
        return window[: ends[-1]].strip()
    cut = window.rfind(" ")
    return (window[:cut] if cut > chars // 2 else window[:chars]).strip()


def title_and_body(row: Record, text: str, title_column: str) -> tuple[str, str]:
    """(title, text without a title line): the title column, else a short first
    line (which is then cut from the body), else the file name."""
    value = row.get(title_column)
    if isinstance(value, str) and value.strip():
        return value.strip(), text
    first, _, rest = text.strip().partition("\n")
    first = first.strip()
    if rest.strip() and (first.startswith("#") or (len(first.split()) <= 12 and not first.endswith("."))):
        return first.lstrip("#").strip(), rest
    src = row.get("source") or row.get("document") or ""
    return (Path(str(src).split(":")[0]).stem.replace("_", " ").replace("-", " ") if src else ""), text


@stages.register
class Seeds(SourceStage):
    """Seeds for textbook-style generation: topics x lists, or document extracts x
    lists. Defaults: Cosmopedia's 1000-character extracts, topic named half of the time."""

    type: Literal["seeds"] = "seeds"
    seeds: Literal["topics", "documents"] = Field("topics", description="where seeds come from")
    topics: Annotated[list[str] | str, FILE] = Field(
        "textbooks/topics.txt", description="topics (a list, or a file with one per line)"
    )
    documents: Annotated[str | list[str], GLOB] = Field(
        "documents/*.txt", description="documents: files or globs, relative to the recipe"
    )
    text_column: str = Field("text", description="documents: the column with the document text")
    title_column: str = Field("title", description="documents: the column with the document title")
    extract_chars: int = Field(1000, ge=50, description="documents: characters in an extract")
    mention_topic: float = Field(
        0.5, ge=0, le=1, description="documents: share of prompts that name the document's topic"
    )
    lists: Annotated[dict[str, list[Any] | str], VALUES] = Field(
        default_factory=dict, description="column -> values (audience, style ...), crossed with every seed"
    )
    count: int | None = Field(None, ge=1, description="sample this many (seed, combination) pairs")

    def provides(self) -> set[str]:
        return {"topic", "extract", "document", "topic_mentioned"} | set(self.lists)

    def _lists(self, ctx: StageContext) -> dict[str, list[Any]]:
        return Combine(lists=self.lists).values(ctx) if self.lists else {}

    def _seed_rows(self, ctx: StageContext) -> Iterator[Record | Reject]:
        if self.seeds == "topics":
            for t in Combine(lists={"topic": self.topics}).values(ctx)["topic"]:
                yield {"topic": t, "extract": None, "document": None, "topic_mentioned": False}
            return
        reader = Read(path=self.documents, format="auto", on_error="reject")
        for row in reader.read(ctx):
            if isinstance(row, Reject):
                yield row
                continue
            text = row.get(self.text_column)
            if not isinstance(text, str) or not text.strip():
                yield Reject(row, f"seeds: document without text (column {self.text_column!r})")
                continue
            title, body = title_and_body(row, text, self.title_column)
            yield {"topic": None, "extract": extract(body, self.extract_chars),
                   "document": title, "topic_mentioned": False}

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        files = []
        if self.seeds == "documents":
            files = [(str(p), p.stat().st_mtime_ns, p.stat().st_size)
                     for p in Read(path=self.documents).files(ctx.recipe_dir)]
        return {"lists": self._lists(ctx), "files": files}

    def estimate_count(self, ctx: StageContext) -> int | None:
        if self.seeds == "documents":
            return self.count
        n = len(Combine(lists={"topic": self.topics}).values(ctx)["topic"])
        total = n * math.prod(len(v) for v in self._lists(ctx).values())
        return total if self.count is None else min(total, self.count)

    def read(self, ctx: StageContext) -> Iterator[Record | Reject]:
        seeds: list[Record] = []
        for row in self._seed_rows(ctx):
            if isinstance(row, Reject):
                yield row
            else:
                seeds.append(row)
        if not seeds:
            raise InputError(f"seeds: no {self.seeds} found ({self.topics if self.seeds == 'topics' else self.documents})")
        lists = self._lists(ctx)
        names = list(lists)
        sizes = [len(seeds)] + [len(lists[n]) for n in names]
        total = math.prod(sizes)
        if self.count is None or self.count >= total:
            picks = product(range(len(seeds)), *(range(s) for s in sizes[1:]))
        else:
            picks = (self._decode(i, sizes) for i in ctx.rng("seeds").sample(range(total), self.count))
        for n, (s, *ks) in enumerate(picks):
            rec = {**seeds[s], **{name: lists[name][k] for name, k in zip(names, ks)}}
            knobs: dict[str, Any] = {"seeds": self.seeds}
            if self.seeds == "topics":
                knobs["topic"] = rec["topic"]
            else:
                mention = ctx.rng("mention", n).random() < self.mention_topic and bool(rec["document"])
                rec["topic"] = rec["document"] if mention else None
                rec["topic_mentioned"] = mention
                knobs["topic_mentioned"] = "yes" if mention else "no"
            knobs.update({name: rec[name] for name in names})
            yield add_knobs(rec, knobs)

    @staticmethod
    def _decode(index: int, sizes: list[int]) -> tuple[int, ...]:
        out = []
        for size in reversed(sizes):
            index, k = divmod(index, size)
            out.append(k)
        return tuple(reversed(out))
