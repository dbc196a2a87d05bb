"""What flows between stages: a record is a plain dict of columns; a reject is a record
with the reason a stage dropped it. A leaf module, so the store and the stages share
these types without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


@dataclass
class Reject:
    record: Record
    reason: str
