"""C4's line and page rules (Raffel et al. 2020, section 2.2), as datatrove's
C4QualityFilter."""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import Field

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record, Result
from smolforge.stages.quality.rules import column_text
from smolforge.text.tokenizers import _TOKENIZERS, Tokenizer, count_sentences

_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
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




@stages.register
class C4Filter(FilterStage):
    """C4 rules (Raffel et al. 2020, section 2.2; TFDS `c4_utils`), as datatrove's
    C4QualityFilter: a line survives if it ends in terminal punctuation (`. ? ! " '`,
    not an ellipsis), has at least 3 words, no word over 1,000 characters, and
    mentions neither "javascript" nor a cookie/terms-of-use policy; a page is
    dropped if a surviving line contains "lorem ipsum" or a curly bracket, or if
    its surviving lines hold fewer than 5 sentences (counted as spaCy's sentencizer
    does). With `remove_lines` the kept record's text becomes its surviving lines
    (as C4 does); by default the text is left as it is and only the page decision
    is made."""

    type: Literal["c4_filter"] = "c4_filter"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="tokens for the sentence count")
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

    def _sentences(self, line: str) -> int:
        if self.tokenizer == "regex":
            return max(1, len(_SENTENCE_END.findall(line)))
        return count_sentences(_TOKENIZERS[self.tokenizer](line))

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
            if self.min_sentences is not None:
                sentences += self._sentences(line)
            kept.append(line)
        if self.min_sentences is not None and sentences < self.min_sentences:
            why = ", ".join(f"{n} {k}" for k, n in dropped.most_common())
            lines = f"; lines dropped: {why}" if why else ""
            return f"c4_filter: {sentences} sentences < {self.min_sentences}{lines}", kept
        return None, kept

    def check(self, record: Record) -> str | None:
        return self.clean(column_text(record, self.column))[0]

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        if not self.remove_lines:
            return super().process(batch, ctx)
        res = Result()
        for rec in batch:
            reason, kept = self.clean(column_text(rec, self.column))
            if reason is None:
                res.keep({**rec, self.column: "\n".join(kept)})
            else:
                res.reject(rec, reason)
        return res
