"""`length`: bounds on characters and words."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record
from smolforge.stages.quality.rules import column_text

_WORD = re.compile(r"\w+")


@stages.register
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
        text = column_text(record, self.column)
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
