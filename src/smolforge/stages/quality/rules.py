"""Helpers every heuristic filter shares: the text of a record's column, and numbers
in drop reasons."""

from __future__ import annotations

from smolforge.records import Record


def column_text(record: Record, column: str) -> str:
    value = record.get(column)
    return value if isinstance(value, str) else ("" if value is None else str(value))


def fmt(x: float) -> str:
    return f"{x:.3g}"
