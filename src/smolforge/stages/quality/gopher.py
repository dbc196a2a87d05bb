"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models",
appendix A), as datatrove 0.10 implements them (the code behind FineWeb): the same
tokens, line splitting, denominators and comparisons, so that with datatrove's
thresholds a page gets the same decision (`benchmarks/filters_agreement.py` measures
it). Every threshold is a field (`None` switches a rule off) and every drop reason
names the rule and the measured value, e.g. `gopher_quality: mean word length 2.1 < 3`."""

from __future__ import annotations

from itertools import accumulate
from typing import Literal

import numpy as np
from pydantic import Field

from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record
from smolforge.stages.quality.rules import column_text, fmt
from smolforge.text.ngrams import prefix_hashes, window_hashes, word_hashes
from smolforge.text.tokenizers import (
    _LINES_SPLIT,
    _PARAGRAPH_SPLIT,
    _TOKENIZERS,
    Tokenizer,
    _is_symbol,
)

_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@stages.register
class GopherQuality(FilterStage):
    """Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A,
    MassiveText quality filter), as datatrove's GopherQualityFilter: 50..100,000
    words, mean word length 3..10, `#` and ellipsis counts <= 0.1 per token, <= 90%
    of lines starting with a bullet (`•` or `-`), <= 30% of lines ending with an
    ellipsis, >= 80% of tokens containing a letter, >= 2 of the 8 stop words
    (distinct, matched as whole tokens, case-sensitive). A word is a token that is
    not made only of punctuation; ratios are per token."""

    type: Literal["gopher_quality"] = "gopher_quality"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="rules (spaCy's, built in), spacy, regex")
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
    min_stop_words: int | None = Field(2, description="fewest distinct stop words")
    stop_words: list[str] = Field(_STOP_WORDS, description="the stop words counted")
    stop_words_ignore_case: bool = Field(
        False, description="match stop words in any case (datatrove: exact case only)"
    )
    bullets: list[str] = Field(
        ["•", "-"], description="line starts counted as bullets (datatrove: • and -)"
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = column_text(record, self.column)
        tokens = _TOKENIZERS[self.tokenizer](text)
        words = [t for t in tokens if not _is_symbol(t)]
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
                f"gopher_quality: mean word length {fmt(mean_len)} < {self.min_mean_word_length}"
            )
        if self.max_mean_word_length is not None and mean_len > self.max_mean_word_length:
            return (
                f"gopher_quality: mean word length {fmt(mean_len)} > {self.max_mean_word_length}"
            )

        if self.max_symbol_word_ratio is not None:
            ratio = text.count("#") / n_tokens
            if ratio > self.max_symbol_word_ratio:
                return f"gopher_quality: hash-to-word ratio {fmt(ratio)} > {self.max_symbol_word_ratio}"
            ratio = (text.count("...") + text.count("…")) / n_tokens
            if ratio > self.max_symbol_word_ratio:
                return (
                    f"gopher_quality: ellipsis-to-word ratio {fmt(ratio)}"
                    f" > {self.max_symbol_word_ratio}"
                )

        if self.max_bullet_lines_ratio is not None or self.max_ellipsis_lines_ratio is not None:
            lines = text.splitlines() or [""]
            if self.max_bullet_lines_ratio is not None:
                bullets = tuple(self.bullets)
                ratio = sum(1 for s in lines if s.lstrip().startswith(bullets)) / len(lines)
                if ratio > self.max_bullet_lines_ratio:
                    return (
                        f"gopher_quality: bullet lines {fmt(ratio)}"
                        f" > {self.max_bullet_lines_ratio}"
                    )
            if self.max_ellipsis_lines_ratio is not None:
                ratio = sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines)
                if ratio > self.max_ellipsis_lines_ratio:
                    return (
                        f"gopher_quality: ellipsis-ending lines {fmt(ratio)}"
                        f" > {self.max_ellipsis_lines_ratio}"
                    )

        if self.min_alpha_words_ratio is not None:
            n_alpha = sum(1 for t in tokens if any(c.isalpha() for c in t))
            ratio = n_alpha / n_tokens
            if ratio < self.min_alpha_words_ratio:
                return (
                    f"gopher_quality: tokens with a letter {fmt(ratio)}"
                    f" < {self.min_alpha_words_ratio}"
                )

        if self.min_stop_words:
            if self.stop_words_ignore_case:
                wanted = {w.lower() for w in self.stop_words}
                found = len(wanted.intersection(t.lower() for t in tokens))
            else:
                found = len(set(self.stop_words).intersection(tokens))
            if found < self.min_stop_words:
                return f"gopher_quality: {found} distinct stop words < {self.min_stop_words}"
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


@stages.register
class GopherRepetition(FilterStage):
    """Gopher repetition rules (Rae et al. 2021, table A1), as datatrove's
    GopherRepetitionFilter: duplicate line fraction 0.30 and line character fraction
    0.20, duplicate paragraph fraction 0.30 and character fraction 0.20, top
    2/3/4-gram character fractions 0.20/0.18/0.16, duplicated 5..10-gram character
    fractions 0.15..0.10. Character fractions are over the whole text. The top
    n-gram counts even when it occurs once, as in datatrove (so a text of a few
    words is dropped); `top_ngram_min_count: 2` counts only repeated n-grams."""

    type: Literal["gopher_repetition"] = "gopher_repetition"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="rules (spaCy's, built in), spacy, regex")
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
    top_ngram_min_count: int = Field(
        1, ge=1, description="the most frequent n-gram counts only if it occurs this often"
    )
    dup_ngrams: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> largest character share of duplicated n-grams",
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = column_text(record, self.column)
        n_chars = len(text)
        if n_chars == 0:
            return None

        paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
        n_dup, dup_chars = _duplicates(paragraphs)
        frac = n_dup / len(paragraphs)
        if self.dup_para_frac is not None and frac > self.dup_para_frac:
            return f"gopher_repetition: duplicate paragraph fraction {fmt(frac)} > {self.dup_para_frac}"
        frac = dup_chars / n_chars
        if self.dup_para_char_frac is not None and frac > self.dup_para_char_frac:
            return (
                f"gopher_repetition: duplicate paragraph char fraction {fmt(frac)}"
                f" > {self.dup_para_char_frac}"
            )

        lines = _LINES_SPLIT.split(text)
        n_dup, dup_chars = _duplicates(lines)
        frac = n_dup / len(lines)
        if self.dup_line_frac is not None and frac > self.dup_line_frac:
            return f"gopher_repetition: duplicate line fraction {fmt(frac)} > {self.dup_line_frac}"
        frac = dup_chars / n_chars
        if self.dup_line_char_frac is not None and frac > self.dup_line_char_frac:
            return (
                f"gopher_repetition: duplicate line char fraction {fmt(frac)}"
                f" > {self.dup_line_char_frac}"
            )

        if not self.top_ngrams and not self.dup_ngrams:
            return None
        return self._ngram_rules(_TOKENIZERS[self.tokenizer](text), n_chars)

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
            if best < self.top_ngram_min_count:
                continue
            p = int(first[counts == best].min())  # the first of the most frequent
            frac = best * (cum[p + n] - cum[p] + n - 1) / n_chars
            if frac > limit:
                return f"gopher_repetition: top {n}-gram char fraction {fmt(frac)} > {limit}"

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
                    f"gopher_repetition: duplicated {n}-gram char fraction {fmt(frac)} > {limit}"
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
