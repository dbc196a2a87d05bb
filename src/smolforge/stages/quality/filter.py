"""`filter` and `keep_top`: keep records whose condition holds, or the best share.

`filter`: `where: "edu_score >= 3 and words(text) >= 120"` in the safe expression
language of `smolforge.expr` (column names, literals, and/or/not, comparisons,
arithmetic and a fixed list of helpers such as words(), chars(), lines(), contains(),
matches()). The drop reason shows the condition and the values of the columns it read.

`keep_top`: a threshold relative to the run's own scores, for a judge whose scale is
not calibrated (a small model's expected score clusters in a narrow band that moves
with the prompt and the model). `fraction: 0.6` keeps the records scoring in the top
60% of `column` over the whole stage input; records tied with the cut-off are all
kept. The cut-off is recorded in the stage summary and in every drop reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, field_validator

from smolforge.context import StageContext
from smolforge.expr import ExprError, Expression
from smolforge.registry import stages
from smolforge.stages.base import FilterStage, GlobalStage, Record, Result, Shards


@stages.register
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


@stages.register
class KeepTop(GlobalStage):
    """Keep the records whose `column` is in the top `fraction` of the stage input."""

    type: Literal["keep_top"] = "keep_top"
    column: str = Field(description="the numeric column ranked, e.g. a judge's score")
    fraction: float = Field(gt=0, le=1, description="share of the scored records kept, e.g. 0.6")
    min_value: float | None = Field(None, description="also drop records below this value")

    def requires(self) -> set[str]:
        return {self.column}

    def _value(self, rec: Record) -> float | None:
        v = rec.get(self.column)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return None
        return float(v)

    def cutoff(self, values: list[float]) -> float | None:
        """The lowest kept value: the ceil(fraction * n)-th highest."""
        if not values:
            return None
        k = math.ceil(self.fraction * len(values))
        cut = float(np.sort(np.asarray(values))[::-1][k - 1])
        return max(cut, self.min_value) if self.min_value is not None else cut

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        values = [v for i in range(len(shards)) for rec in shards.columns(i, ["id", self.column])
                  if (v := self._value(rec)) is not None]
        cut = self.cutoff(values)
        share = f"top {self.fraction:.0%} of {len(values)} scored"
        for i in range(len(shards)):
            reasons: dict[int, str] = {}
            for j, rec in enumerate(shards.columns(i, ["id", self.column])):
                v = self._value(rec)
                if v is None:
                    reasons[j] = f"keep_top: no numeric {self.column} ({_short(rec.get(self.column))})"
                elif cut is not None and v < cut:
                    reasons[j] = f"keep_top: {self.column}={v:.4g} below the cut-off {cut:.4g} ({share})"
            yield i, Result.select(shards.table(i), reasons)

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        values = [v for i in range(len(out)) for rec in out.columns(i, ["id", self.column])
                  if (v := self._value(rec)) is not None]
        return {"column": self.column, "fraction": self.fraction, "kept": len(values),
                "lowest_kept": min(values) if values else None}
