"""FineWeb's own rules (Penedo et al. 2024), as datatrove's FineWebQualityFilter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record
from smolforge.stages.quality.gopher import _duplicates
from smolforge.stages.quality.rules import column_text, fmt
from smolforge.text.tokenizers import _TERMINAL, _TOKENIZERS, Tokenizer


@stages.register
class FineWebFilter(FilterStage):
    """FineWeb's own rules (Penedo et al. 2024, "The FineWeb Datasets"), as
    datatrove's FineWebQualityFilter: on the non-blank lines, drop a page if fewer
    than 12% end in terminal punctuation (`stop_chars`: `.`, `!`, `?` and the other
    scripts' sentence ends; quotes do not count), more than 67% are at most 30
    characters, more than 10% of its characters are in duplicated lines, or it has
    more than 0.3 newlines per word. The paper's 0.1 duplicated-character threshold
    is the default (datatrove's code default is 0.01)."""

    type: Literal["fineweb_filter"] = "fineweb_filter"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="tokens for the newline ratio")
    line_punct_thr: float | None = Field(
        0.12, description="drop if the share of lines ending in punctuation is < this"
    )
    line_punct_exclude_zero: bool = Field(
        False, description="keep pages with no punctuated line at all"
    )
    stop_chars: list[str] | None = Field(
        None, description="line endings that count as punctuation (default: terminal punctuation)"
    )
    short_line_thr: float | None = Field(
        0.67, description="drop if the share of short lines is > this"
    )
    short_line_length: int = Field(30, description="a short line has at most this many chars")
    char_duplicates_ratio: float | None = Field(
        0.1, description="drop if the share of characters in duplicated lines is > this"
    )
    new_line_ratio: float | None = Field(
        0.3, description="drop if newlines per word is > this (lists)"
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = column_text(record, self.column)
        lines = [s for s in text.split("\n") if s.strip()]
        if not lines:
            return "fineweb_filter: no non-blank line"
        n_lines = len(lines)
        if self.line_punct_thr is not None:
            ends = tuple(self.stop_chars) if self.stop_chars is not None else tuple(_TERMINAL)
            ratio = sum(1 for s in lines if s.endswith(ends)) / n_lines
            if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
                return (
                    f"fineweb_filter: lines ending in punctuation {fmt(ratio)}"
                    f" < {self.line_punct_thr}"
                )
        if self.short_line_thr is not None:
            limit = self.short_line_length
            ratio = sum(1 for s in lines if len(s) <= limit) / n_lines
            if ratio > self.short_line_thr:
                return (
                    f"fineweb_filter: short lines (<= {limit} chars) {fmt(ratio)}"
                    f" > {self.short_line_thr}"
                )
        if self.char_duplicates_ratio is not None:
            n_chars = len(text) - text.count("\n")
            ratio = _duplicates(lines)[1] / n_chars
            if ratio > self.char_duplicates_ratio:
                return (
                    f"fineweb_filter: duplicated-line char fraction {fmt(ratio)}"
                    f" > {self.char_duplicates_ratio}"
                )
        if self.new_line_ratio is not None:
            n_words = len(_TOKENIZERS[self.tokenizer](text))
            ratio = text.count("\n") / n_words
            if ratio > self.new_line_ratio:
                return f"fineweb_filter: newlines per word {fmt(ratio)} > {self.new_line_ratio}"
        return None
