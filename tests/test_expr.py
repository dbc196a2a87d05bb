"""The filter expression language: useful, and closed to code execution."""

from __future__ import annotations

import pytest

from smolforge.expr import ExprError, Expression


@pytest.mark.parametrize(
    "src,record,expected",
    [
        ("edu_score >= 3 and words(text) >= 3", {"edu_score": 4, "text": "one two three"}, True),
        ("edu_score >= 3 and words(text) >= 3", {"edu_score": 4, "text": "one two"}, False),
        ("not contains(lower(text), 'lorem')", {"text": "Lorem ipsum"}, False),
        ("lang in ['en', 'fr']", {"lang": "fr"}, True),
        ("1 < x <= 3", {"x": 3}, True),
        ("1 < x <= 3", {"x": 4}, False),
        ("score > 2", {"score": None}, False),
        ("is_null(score)", {}, True),
        ("matches(text, '^[A-Z]')", {"text": "Hello"}, True),
        ("chars(text) / max(words(text), 1) > 3", {"text": "abcd efgh"}, True),
        ("x == true", {"x": True}, True),
    ],
)
def test_evaluates(src, record, expected):
    assert bool(Expression(src)(record)) is expected


def test_names_are_columns():
    assert Expression("edu_score >= 3 and words(text) > 1").names == {"edu_score", "text"}


@pytest.mark.parametrize(
    "src,fragment",
    [
        ("text.__class__", "attribute access"),
        ("__import__('os')", "__import__() is not an allowed function"),
        ("__import__('os').system('true')", "not an allowed function"),
        ("open('/etc/passwd')", "open() is not an allowed function"),
        ("[c for c in text]", "not allowed"),
        ("text[0]", "subscripts"),
        ("(lambda: 1)()", "not an allowed function"),
        ("wrods(text) > 3", "did you mean words()"),
        ("x >=", "invalid expression"),
    ],
)
def test_rejects_unsafe_or_invalid(src, fragment):
    with pytest.raises(ExprError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Expression(src)
