"""Text helpers shared by filters, dedup and the expression language."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)
_PUNCT_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Word tokens (runs of letters, digits and underscores)."""
    return _WORD.findall(text or "")


def normalize(text: str) -> str:
    """Lower-case, NFKC, punctuation and runs of whitespace folded to one space:
    two texts that differ only in case, spacing or punctuation normalise equal."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    return _PUNCT_SPACE.sub(" ", text).strip()


def flatten(value: Any) -> str:
    """Text of a field: lists (answer choices) and dicts joined with spaces, None empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(flatten(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(flatten(v) for v in value)
    return str(value)
