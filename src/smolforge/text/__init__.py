"""Text helpers shared by filters, dedup, the expression language and the parsers
of model output."""

from __future__ import annotations

import json
import math
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


MAX_JSON_DEPTH = 100  # nesting of JSON read from models or data; real answers use under 10
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


class JSONTooDeep(ValueError):
    """JSON nested deeper than the limit (a ValueError, as json's own errors are)."""

    def __init__(self, limit: int, pos: int):
        super().__init__(f"nested deeper than {limit} levels (at char {pos})")
        self.limit, self.pos = limit, pos


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> int | None:
    """Where `text` opens its (limit+1)-th nested `[` or `{` outside strings, else
    None. One linear pass; Python's json would recurse once per level and abort the
    whole run with RecursionError past about 1,000."""
    if text.count("[") + text.count("{") <= limit:
        return None
    depth, in_string, skip = 0, False, -1
    for m in _JSON_SPECIAL.finditer(text):
        i, c = m.start(), m.group()
        if i == skip:  # the character after a backslash in a string
            continue
        if in_string:
            if c == "\\":
                skip = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                return i
        elif c in "]}":
            depth -= 1
    return None


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` for text a model wrote or a dataset holds: nesting deeper than
    `max_depth` raises JSONTooDeep (a ValueError naming where) instead of recursing."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    pos = json_too_deep(text, max_depth)
    if pos is not None:
        raise JSONTooDeep(max_depth, pos)
    return json.loads(text)


def count_tokens(text: str) -> int:
    """Tokens without a model tokenizer: words and punctuation runs (the `regex`
    tokenizer of `smolforge.text.tokenizers`)."""
    from smolforge.text.tokenizers import all_tokens

    return len(all_tokens(text))


def approx_tokens(text: Any) -> int:
    """The usual rough count, a token per 4 characters (what `mix` by tokens and the
    reports use when no model tokenizer is at hand)."""
    text = text if isinstance(text, str) else "" if text is None else str(text)
    return math.ceil(len(text) / 4)
