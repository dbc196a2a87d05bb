"""Heuristic quality filters: Gopher quality and repetition, C4, FineWeb, length.

Each rule follows its paper, with datatrove's reading of the paper where the paper
leaves a detail open (tokens, line splitting, denominators). The defaults are the
published thresholds; every threshold is a field, and `None` switches a rule off.
Every drop reason names the rule and the measured value, for example
`gopher_quality: mean word length 2.1 < 3`.

Tokens: one regular expression stands in for NLTK's word tokenizer (which datatrove
uses): a word is a run of letters/digits, possibly joined by `'`, `.`, `,` or `-`
(`don't`, `3.14`, `state-of-the-art`); every other run of non-space characters is a
symbol token (`,`, `...`, `#`).
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import accumulate, islice
from typing import Literal

import numpy as np
from pydantic import Field, PrivateAttr

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record, Result
from smolforge.stages.decontaminate import prefix_hashes, window_hashes, word_hashes

_WORD_PATTERN = r"\w+(?:['’.,\-]\w+)*"
# With a group, findall gives the word, or "" for a symbol token.
_TOKEN = re.compile(rf"({_WORD_PATTERN})|[^\w\s]+")
_ANY_TOKEN = re.compile(rf"{_WORD_PATTERN}|[^\w\s]+")
_ALPHA = re.compile(r"[^\W\d_]")
_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINES_SPLIT = re.compile(r"\n+")


def tokens_and_words(text: str) -> tuple[list[str], list[str]]:
    """(all tokens, word tokens): symbols count as tokens, not as words."""
    groups = _TOKEN.findall(text)
    return groups, [g for g in groups if g]


def all_tokens(text: str) -> list[str]:
    """Every token, words and symbol runs alike (for n-gram statistics)."""
    return _ANY_TOKEN.findall(text)


def _text(record: Record, column: str) -> str:
    value = record.get(column)
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


@stages.register("gopher_quality")
class GopherQuality(FilterStage):
    """Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A,
    MassiveText quality filter): 50..100,000 words, mean word length 3..10,
    hash and ellipsis symbol-to-word ratio <= 0.1, <= 90% of lines starting with a
    bullet, <= 30% of lines ending with an ellipsis, >= 80% of tokens containing a
    letter, >= 2 stop words. Stop words are matched case-insensitively (datatrove
    matches them case-sensitively)."""

    type: Literal["gopher_quality"] = "gopher_quality"
    column: str = Field("text", description="the text column checked")
    min_words: int | None = Field(50, description="fewest words (symbols excluded)")
    max_words: int | None = Field(100_000, description="most words")
    min_mean_word_length: float | None = Field(3, description="shortest mean word length")
    max_mean_word_length: float | None = Field(10, description="longest mean word length")
    max_symbol_word_ratio: float | None = Field(
        0.1, description="most '#' or '...' per token (each symbol on its own)"
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, description="largest share of lines starting with a bullet"
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, description="largest share of lines ending with an ellipsis"
    )
    min_alpha_words_ratio: float | None = Field(
        0.8, description="smallest share of tokens containing a letter"
    )
    min_stop_words: int | None = Field(2, description="fewest stop-word occurrences")
    stop_words: list[str] = Field(
        ["the", "be", "to", "of", "and", "that", "have", "with"],
        description="the stop words counted",
    )
    bullets: list[str] = Field(
        ["•", "●", "◦", "▪", "‣", "-", "*"], description="line starts counted as bullets"
    )

    _stop_re: re.Pattern | None = PrivateAttr(None)

    def requires(self) -> set[str]:
        return {self.column}

    def _stop_pattern(self) -> re.Pattern:
        if self._stop_re is None:
            alts = "|".join(sorted((re.escape(w) for w in self.stop_words), key=len, reverse=True))
            self._stop_re = re.compile(rf"\b(?:{alts or '(?!)'})\b", re.IGNORECASE)
        return self._stop_re

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        tokens, words = tokens_and_words(text)
        n_tokens, n_words = len(tokens), len(words)
        if self.min_words is not None and n_words < self.min_words:
            return f"gopher_quality: {n_words} words < {self.min_words}"
        if self.max_words is not None and n_words > self.max_words:
            return f"gopher_quality: {n_words} words > {self.max_words}"
        if n_words == 0:
            return "gopher_quality: no words"

        mean_len = sum(map(len, words)) / n_words
        if self.min_mean_word_length is not None and mean_len < self.min_mean_word_length:
            return (
                f"gopher_quality: mean word length {_fmt(mean_len)} < {self.min_mean_word_length}"
            )
        if self.max_mean_word_length is not None and mean_len > self.max_mean_word_length:
            return (
                f"gopher_quality: mean word length {_fmt(mean_len)} > {self.max_mean_word_length}"
            )

        if self.max_symbol_word_ratio is not None:
            ratio = text.count("#") / n_tokens
            if ratio > self.max_symbol_word_ratio:
                return f"gopher_quality: hash-to-word ratio {_fmt(ratio)} > {self.max_symbol_word_ratio}"
            ratio = (text.count("...") + text.count("…")) / n_tokens
            if ratio > self.max_symbol_word_ratio:
                return (
                    f"gopher_quality: ellipsis-to-word ratio {_fmt(ratio)}"
                    f" > {self.max_symbol_word_ratio}"
                )

        if self.max_bullet_lines_ratio is not None or self.max_ellipsis_lines_ratio is not None:
            lines = text.splitlines() or [""]
            if self.max_bullet_lines_ratio is not None:
                bullets = tuple(self.bullets)
                ratio = sum(1 for s in lines if s.lstrip().startswith(bullets)) / len(lines)
                if ratio > self.max_bullet_lines_ratio:
                    return (
                        f"gopher_quality: bullet lines {_fmt(ratio)}"
                        f" > {self.max_bullet_lines_ratio}"
                    )
            if self.max_ellipsis_lines_ratio is not None:
                ratio = sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines)
                if ratio > self.max_ellipsis_lines_ratio:
                    return (
                        f"gopher_quality: ellipsis-ending lines {_fmt(ratio)}"
                        f" > {self.max_ellipsis_lines_ratio}"
                    )

        if self.min_alpha_words_ratio is not None:
            n_alpha = sum(1 for w in words if w.isalpha() or _ALPHA.search(w))
            ratio = n_alpha / n_tokens
            if ratio < self.min_alpha_words_ratio:
                return (
                    f"gopher_quality: tokens with a letter {_fmt(ratio)}"
                    f" < {self.min_alpha_words_ratio}"
                )

        if self.min_stop_words:
            matches = self._stop_pattern().finditer(text)
            found = sum(1 for _ in islice(matches, self.min_stop_words))
            if found < self.min_stop_words:
                return f"gopher_quality: {found} stop words < {self.min_stop_words}"
        return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, their characters): the first of each is not counted."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


@stages.register("gopher_repetition")
class GopherRepetition(FilterStage):
    """Gopher repetition rules (Rae et al. 2021, table A1): duplicate line fraction
    0.30 and line character fraction 0.20, duplicate paragraph fraction 0.30 and
    character fraction 0.20, top 2/3/4-gram character fractions 0.20/0.18/0.16,
    duplicated 5..10-gram character fractions 0.15..0.10. Character fractions are
    over the whole text, as in datatrove. A "top n-gram" must occur at least twice
    (datatrove also counts a single occurrence, which rejects very short texts)."""

    type: Literal["gopher_repetition"] = "gopher_repetition"
    column: str = Field("text", description="the text column checked")
    dup_line_frac: float | None = Field(0.3, description="largest share of duplicate lines")
    dup_para_frac: float | None = Field(0.3, description="largest share of duplicate paragraphs")
    dup_line_char_frac: float | None = Field(
        0.2, description="largest share of characters in duplicate lines"
    )
    dup_para_char_frac: float | None = Field(
        0.2, description="largest share of characters in duplicate paragraphs"
    )
    top_ngrams: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> largest character share of the most frequent n-gram",
    )
    dup_ngrams: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> largest character share of duplicated n-grams",
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        n_chars = len(text)
        if n_chars == 0:
            return None

        paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
        n_dup, dup_chars = _duplicates(paragraphs)
        frac = n_dup / len(paragraphs)
        if self.dup_para_frac is not None and frac > self.dup_para_frac:
            return f"gopher_repetition: duplicate paragraph fraction {_fmt(frac)} > {self.dup_para_frac}"
        frac = dup_chars / n_chars
        if self.dup_para_char_frac is not None and frac > self.dup_para_char_frac:
            return (
                f"gopher_repetition: duplicate paragraph char fraction {_fmt(frac)}"
                f" > {self.dup_para_char_frac}"
            )

        lines = _LINES_SPLIT.split(text)
        n_dup, dup_chars = _duplicates(lines)
        frac = n_dup / len(lines)
        if self.dup_line_frac is not None and frac > self.dup_line_frac:
            return f"gopher_repetition: duplicate line fraction {_fmt(frac)} > {self.dup_line_frac}"
        frac = dup_chars / n_chars
        if self.dup_line_char_frac is not None and frac > self.dup_line_char_frac:
            return (
                f"gopher_repetition: duplicate line char fraction {_fmt(frac)}"
                f" > {self.dup_line_char_frac}"
            )

        if not self.top_ngrams and not self.dup_ngrams:
            return None
        return self._ngram_rules(all_tokens(text), n_chars)

    def _ngram_rules(self, tokens: list[str], n_chars: int) -> str | None:
        # n-grams are compared by 64-bit hashes of their tokens (numpy), and only
        # the positions of n-grams that occur more than once are walked in Python.
        if not tokens:
            return None
        cum = list(accumulate(map(len, tokens), initial=0))
        prefix = prefix_hashes(word_hashes(tokens))

        for n, limit in sorted(self.top_ngrams.items()):
            if len(tokens) < n:
                continue
            _, first, counts = np.unique(
                window_hashes(prefix, n), return_index=True, return_counts=True
            )
            best = int(counts.max())
            if best < 2:
                continue
            p = int(first[counts == best].min())  # the first of the most frequent
            frac = best * (cum[p + n] - cum[p] + n - 1) / n_chars
            if frac > limit:
                return f"gopher_repetition: top {n}-gram char fraction {_fmt(frac)} > {limit}"

        for n, limit in sorted(self.dup_ngrams.items()):
            if len(tokens) < n:
                continue
            grams = window_hashes(prefix, n)
            _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
            repeated = np.flatnonzero(counts[inverse] > 1)
            if not len(repeated):
                break  # no n-gram repeats, so no longer one does either
            frac = _duplicated_chars(repeated.tolist(), grams[repeated].tolist(), cum, n) / n_chars
            if frac > limit:
                return (
                    f"gopher_repetition: duplicated {n}-gram char fraction {_fmt(frac)} > {limit}"
                )
        return None


def _duplicated_chars(positions: list[int], grams: list[int], cum: list[int], n: int) -> int:
    """Characters (spaces excluded) of n-grams that repeat an earlier one, scanning
    left to right and jumping past each repeat, so overlapping repeats count once
    (datatrove's `find_all_duplicate`). Only positions of n-grams that occur more
    than once are given: the others never repeat and do not change the scan."""
    seen: set[int] = set()
    chars = resume = 0
    for p, gram in zip(positions, grams, strict=True):
        if p < resume:
            continue
        if gram in seen:
            chars += cum[p + n] - cum[p]
            resume = p + n
        else:
            seen.add(gram)
    return chars


_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_C4_END = (".", "?", "!", '"', "'")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


@stages.register("c4_filter")
class C4Filter(FilterStage):
    """C4 rules (Raffel et al. 2020, section 2.2; TFDS `c4_utils`, as in datatrove):
    a line survives if it ends in terminal punctuation (not an ellipsis), has at
    least 3 words, no word over 1,000 characters, and mentions neither "javascript"
    nor a cookie/terms-of-use policy; a page is dropped if a surviving line contains
    "lorem ipsum" or a curly bracket, or if fewer than 5 sentences survive.
    With `remove_lines` the kept record's text becomes its surviving lines (as C4
    does); by default the text is left as it is and only the page decision is made."""

    type: Literal["c4_filter"] = "c4_filter"
    column: str = Field("text", description="the text column checked")
    remove_citations: bool = Field(True, description="strip [1], [edit], [citation needed]")
    filter_no_terminal_punct: bool = Field(True, description="drop lines without . ? ! \" '")
    min_sentences: int | None = Field(5, description="fewest sentences in surviving lines")
    min_words_per_line: int | None = Field(3, description="drop lines with fewer words")
    max_word_length: int | None = Field(1000, description="drop lines with a longer word")
    filter_lorem_ipsum: bool = Field(True, description="drop pages containing lorem ipsum")
    filter_javascript: bool = Field(True, description="drop lines mentioning javascript")
    filter_curly_bracket: bool = Field(True, description="drop pages containing '{'")
    filter_policy: bool = Field(True, description="drop lines about cookies/terms of use")
    remove_lines: bool = Field(False, description="rewrite kept texts to their surviving lines")

    def requires(self) -> set[str]:
        return {self.column}

    def clean(self, text: str) -> tuple[str | None, list[str]]:
        """(reason or None, surviving lines)."""
        kept: list[str] = []
        dropped: Counter[str] = Counter()
        sentences = 0
        min_words = self.min_words_per_line or 0
        for raw in text.splitlines():
            line = raw.strip()
            words = line.split()
            if self.max_word_length is not None and any(
                len(w) > self.max_word_length for w in words
            ):
                dropped[f"word > {self.max_word_length} chars"] += 1
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (
                not line.endswith(_C4_END) or line.endswith("...")
            ):
                dropped["no terminal punctuation"] += 1
                continue
            if len(words) < min_words:
                dropped[f"< {min_words} words"] += 1
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return 'c4_filter: contains "lorem ipsum"', kept
            if self.filter_javascript and "javascript" in lower:
                dropped["javascript"] += 1
                continue
            if self.filter_curly_bracket and "{" in line:
                return 'c4_filter: contains a curly bracket "{"', kept
            if self.filter_policy and any(p in lower for p in _POLICY):
                dropped["policy"] += 1
                continue
            sentences += max(1, len(_SENTENCE_END.findall(line)))
            kept.append(line)
        if self.min_sentences is not None and sentences < self.min_sentences:
            why = ", ".join(f"{n} {k}" for k, n in dropped.most_common())
            lines = f"; lines dropped: {why}" if why else ""
            return f"c4_filter: {sentences} sentences < {self.min_sentences}{lines}", kept
        return None, kept

    def check(self, record: Record) -> str | None:
        return self.clean(_text(record, self.column))[0]

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        if not self.remove_lines:
            return super().process(batch, ctx)
        res = Result()
        for rec in batch:
            reason, kept = self.clean(_text(rec, self.column))
            if reason is None:
                res.keep({**rec, self.column: "\n".join(kept)})
            else:
                res.reject(rec, reason)
        return res


_FINEWEB_END = (".", "'", '"', "!", "?")


@stages.register("fineweb_filter")
class FineWebFilter(FilterStage):
    """FineWeb's own rules (Penedo et al. 2024, "The FineWeb Datasets"): drop a
    page if <= 12% of its lines end in punctuation, >= 67% of its lines are at most
    30 characters, >= 10% of its characters are in duplicated lines, or it has more
    than 0.3 newlines per word. The paper's 0.1 duplicated-character threshold is
    the default (datatrove's code default is 0.01)."""

    type: Literal["fineweb_filter"] = "fineweb_filter"
    column: str = Field("text", description="the text column checked")
    line_punct_thr: float | None = Field(
        0.12, description="drop if the share of lines ending in punctuation is <= this"
    )
    line_punct_exclude_zero: bool = Field(
        False, description="keep pages with no punctuated line at all"
    )
    short_line_thr: float | None = Field(
        0.67, description="drop if the share of short lines is >= this"
    )
    short_line_length: int = Field(30, description="a short line has at most this many chars")
    char_duplicates_ratio: float | None = Field(
        0.1, description="drop if the share of characters in duplicated lines is >= this"
    )
    new_line_ratio: float | None = Field(
        0.3, description="drop if newlines per word is > this (lists)"
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        lines = text.split("\n")
        n_lines = len(lines)
        if self.line_punct_thr is not None:
            ratio = sum(1 for s in lines if s.endswith(_FINEWEB_END)) / n_lines
            if ratio <= self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
                return (
                    f"fineweb_filter: lines ending in punctuation {_fmt(ratio)}"
                    f" <= {self.line_punct_thr}"
                )
        if self.short_line_thr is not None:
            limit = self.short_line_length
            ratio = sum(1 for s in lines if len(s) <= limit) / n_lines
            if ratio >= self.short_line_thr:
                return (
                    f"fineweb_filter: short lines (<= {limit} chars) {_fmt(ratio)}"
                    f" >= {self.short_line_thr}"
                )
        if self.char_duplicates_ratio is not None:
            n_chars = len(text) - (n_lines - 1)
            if n_chars > 0:
                dup_chars = _duplicates([s for s in lines if s.strip()])[1]
                ratio = dup_chars / n_chars
                if ratio >= self.char_duplicates_ratio:
                    return (
                        f"fineweb_filter: duplicated-line char fraction {_fmt(ratio)}"
                        f" >= {self.char_duplicates_ratio}"
                    )
        if self.new_line_ratio is not None:
            n_tokens = len(_ANY_TOKEN.findall(text))
            ratio = (n_lines - 1) / n_tokens if n_tokens else float(n_lines - 1)
            if ratio > self.new_line_ratio:
                return f"fineweb_filter: newlines per word {_fmt(ratio)} > {self.new_line_ratio}"
        return None


_WORD = re.compile(r"\w+")


@stages.register("length")
class Length(FilterStage):
    """Length bounds on characters and/or words (`\\w+` runs). No bound by default."""

    type: Literal["length"] = "length"
    column: str = Field("text", description="the text column checked")
    min_chars: int | None = Field(None, description="fewest characters")
    max_chars: int | None = Field(None, description="most characters")
    min_words: int | None = Field(None, description="fewest words")
    max_words: int | None = Field(None, description="most words")

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        n = len(text)
        if self.min_chars is not None and n < self.min_chars:
            return f"length: {n} chars < {self.min_chars}"
        if self.max_chars is not None and n > self.max_chars:
            return f"length: {n} chars > {self.max_chars}"
        if self.min_words is not None or self.max_words is not None:
            w = sum(1 for _ in _WORD.finditer(text))
            if self.min_words is not None and w < self.min_words:
                return f"length: {w} words < {self.min_words}"
            if self.max_words is not None and w > self.max_words:
                return f"length: {w} words > {self.max_words}"
        return None
