"""`text_quality`: the generic checks every generation recipe runs on its outputs.

One stage, each rule a field (`None` or `false` switches a rule off):

```yaml
- type: text_quality
  column: text            # or a list: [instruction, response]
  min_words: 20           # fewest words (runs of letters/digits)
  min_tokens: 50          # fewest tokens (see below); WRAP/Nemotron-CC drop < 50
  refusal: true           # drop refusals ("I'm sorry", "As an AI", "I cannot" ...)
  refusal_phrases: [...]  # replaces the built-in list
  extra_refusal_phrases: [...]  # added to it
  refusal_window: 200     # only the first N characters are searched
```

Rules run in this order and the first that fails names itself and the measured
value in the drop reason:
- `text_quality: empty text (column 'text')` — missing, not a string, or only
  whitespace. Always on.
- `text_quality: 12 words < 20 (column 'text')`.
- `text_quality: 31 tokens < 50 (column 'text')`.
- `text_quality: refusal 'as an ai' (column 'text')`.

Tokens: words and runs of punctuation counted by one regular expression (the
heuristics filters' `tokenizer: regex`), so no model tokenizer is needed; for English
prose a BPE tokenizer gives about 1.1-1.3 times as many, so a bound in these
tokens is a slightly stricter bound in model tokens.

Refusals: the built-in phrases are the common openings of a model declining
(`REFUSAL_PHRASES`). They are matched case-insensitively, with curly apostrophes
folded, at the start of the text or of a sentence, and only in the first
`refusal_window` characters, because a refusal comes first, while prose may say
"he said I cannot go" or use the phrase later on. A text whose second sentence
opens with "I cannot ..." is still dropped: raise the bar with `refusal_window`. `is_refusal()` is importable for stages that need the same test.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator

from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record
from smolforge.text import count_tokens, words

REFUSAL_PHRASES: tuple[str, ...] = (
    "I'm sorry",
    "I am sorry",
    "I apologize",
    "My apologies",
    "Sorry, but",
    "Sorry, I",
    "As an AI",
    "As a language model",
    "As an assistant",
    "I'm an AI",
    "I am an AI",
    "I cannot",
    "I can't",
    "I can not",
    "I'm not able to",
    "I am not able to",
    "I'm unable to",
    "I am unable to",
    "I won't be able to",
    "I will not be able to",
    "I do not have access",
    "I don't have access",
    "I'm not comfortable",
    "I must decline",
    "I'm afraid I can't",
    "It is not appropriate",
    "It's not appropriate",
    "I cannot fulfill",
    "I can't assist",
    "I can't help with",
)


def _fold(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


@lru_cache(maxsize=32)
def _refusal_regex(phrases: tuple[str, ...]) -> re.Pattern:
    alts = sorted({_fold(p).strip() for p in phrases if p.strip()}, key=len, reverse=True)
    body = "|".join(re.escape(a) for a in alts)
    # At the start of the text or of a sentence (after . ! ? : or a line break),
    # optionally after an opening quote or bullet.
    return re.compile(rf"(?:^|[.!?:]\s+|\n)[\s\"'*>-]*({body})(?!\w)")


def is_refusal(text: str, phrases: tuple[str, ...] = REFUSAL_PHRASES, window: int | None = 200) -> str | None:
    """The refusal phrase found at the start of `text` (lower case), or None."""
    head = _fold(text if window is None else text[:window])
    m = _refusal_regex(tuple(phrases)).search(head)
    return m.group(1) if m else None


@stages.register
class TextQuality(FilterStage):
    """Drop empty, too short and refused outputs of a generation stage, each drop
    naming the rule and the measured value. Defaults: empty and refusal checks on,
    no length bound (recipes set `min_words` or `min_tokens`)."""

    type: Literal["text_quality"] = "text_quality"
    column: str | list[str] = Field("text", description="the text column(s) checked")
    min_words: int | None = Field(None, ge=0, description="fewest words")
    min_tokens: int | None = Field(
        None, ge=0, description="fewest tokens (words and punctuation runs)"
    )
    refusal: bool = Field(True, description="drop texts that open with a refusal phrase")
    refusal_phrases: list[str] | None = Field(
        None, description="refusal phrases (default: the built-in list, REFUSAL_PHRASES)"
    )
    extra_refusal_phrases: list[str] = Field(
        default_factory=list, description="phrases added to the refusal list"
    )
    refusal_window: int | None = Field(
        200, ge=1, description="search refusals in the first N characters (null: everywhere)"
    )

    _phrases: tuple[str, ...] = PrivateAttr(default=REFUSAL_PHRASES)

    @field_validator("column")
    @classmethod
    def _some_column(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("needs at least one column")
        return v

    def model_post_init(self, __context) -> None:
        base = tuple(self.refusal_phrases) if self.refusal_phrases is not None else REFUSAL_PHRASES
        self._phrases = base + tuple(self.extra_refusal_phrases)

    def columns(self) -> list[str]:
        return [self.column] if isinstance(self.column, str) else list(self.column)

    def requires(self) -> set[str]:
        return set(self.columns())

    def check(self, record: Record) -> str | None:
        for col in self.columns():
            reason = self.check_text(record.get(col))
            if reason is not None:
                return f"text_quality: {reason} (column {col!r})"
        return None

    def check_text(self, text: object) -> str | None:
        if not isinstance(text, str) or not text.strip():
            return "empty text"
        if self.min_words is not None:
            n = len(words(text))
            if n < self.min_words:
                return f"{n} words < {self.min_words}"
        if self.min_tokens is not None:
            n = count_tokens(text)
            if n < self.min_tokens:
                return f"{n} tokens < {self.min_tokens}"
        if self.refusal and self._phrases:
            phrase = is_refusal(text, self._phrases, self.refusal_window)
            if phrase is not None:
                return f"refusal {phrase!r}"
        return None
