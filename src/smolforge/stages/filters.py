"""`filter`: keep records whose condition holds.

`where: "edu_score >= 3 and words(text) >= 120"` in the safe expression language of
`smolforge.expr` (column names, literals, and/or/not, comparisons, arithmetic and
a fixed list of helpers such as words(), chars(), lines(), contains(), matches()).
The drop reason shows the condition and the values of the columns it read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, field_validator

from smolforge.expr import ExprError, Expression
from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record


@stages.register("filter")
class Filter(FilterStage):
    """Keep records for which `where` is true."""

    type: Literal["filter"] = "filter"
    where: str = Field(description="condition, e.g. `edu_score >= 3 and words(text) >= 120`")

    _expr: Expression = PrivateAttr()

    @field_validator("where")
    @classmethod
    def _parses(cls, v: str) -> str:
        try:
            Expression(v)
        except ExprError as e:
            raise ValueError(str(e)) from None
        return v

    def model_post_init(self, __context) -> None:
        self._expr = Expression(self.where)

    def requires(self) -> set[str]:
        return set(self._expr.names)

    def check(self, record: Record) -> str | None:
        try:
            ok = self._expr(record)
        except Exception as e:  # e.g. comparing a string with a number
            return f"filter {self.where!r} failed: {type(e).__name__}: {e}"
        if ok:
            return None
        shown = ", ".join(f"{n}={_short(record.get(n))}" for n in sorted(self._expr.names))
        return f"filter {self.where!r} is false ({shown})"


def _short(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
