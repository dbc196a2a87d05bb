"""`vary`: give every record knob values (style, task, skill ...) from lists.

`combine` makes the diversity of a source (topics x audiences); `vary` adds the same
kind of diversity to records that already exist (document chunks, transformed
passages): per record it samples `per_record` distinct combinations of the lists,
or takes all of them (`per_record: null`), and writes each value into its column
and into `meta.knobs`, so `smolforge show` prints each knob's distribution.

Sampling is seeded by the recipe seed, the stage and the record id, so a re-run
picks the same values. With one combination per record the id is kept; with more,
each copy is `<id>.<k>`.

```yaml
- type: vary
  lists:
    task: [easy, wikipedia, hard, qa]   # or a file of values, relative to the recipe
  per_record: 1
```
"""

from __future__ import annotations

import json
import math
from itertools import product
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from smolforge.context import StageContext
from smolforge.paths import VALUES
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.stages.sources.read import Combine


def add_knobs(record: Record, knobs: dict[str, Any]) -> Record:
    """A copy of `record` with `knobs` merged into `meta.knobs` (scalars as is,
    anything else as JSON), for stages that pick a knob themselves."""
    meta = dict(record.get("meta") or {})
    merged = dict(meta.get("knobs") or {})
    for k, v in knobs.items():
        merged[k] = v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)
    meta["knobs"] = merged
    return {**record, "meta": meta}


@stages.register
class Vary(MapStage):
    """Add knob columns to every record: `per_record` sampled combinations of
    `lists` (default 1), or all of them with `per_record: null`."""

    type: Literal["vary"] = "vary"
    lists: Annotated[dict[str, list[Any] | str], VALUES] = Field(description="column -> values, or a file of values")
    per_record: int | None = Field(
        1, ge=1, description="combinations per record (null: all, one record each)"
    )

    @field_validator("lists")
    @classmethod
    def _non_empty(cls, v: dict) -> dict:
        return Combine._non_empty(v)

    def _values(self, ctx: StageContext) -> dict[str, list[Any]]:
        return Combine(lists=self.lists).values(ctx)

    def provides(self) -> set[str]:
        return set(self.lists)

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return self._values(ctx)

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        values = self._values(ctx)
        names = list(values)
        sizes = [len(values[n]) for n in names]
        total = math.prod(sizes)
        res = Result()
        for rec in batch:
            if self.per_record is None or self.per_record >= total:
                combos = [dict(zip(names, c)) for c in product(*(values[n] for n in names))]
            else:
                combos = []
                for index in ctx.rng(rec["id"]).sample(range(total), self.per_record):
                    combo = {}
                    for name, size in zip(reversed(names), reversed(sizes)):
                        index, k = divmod(index, size)
                        combo[name] = values[name][k]
                    combos.append({n: combo[n] for n in names})
            for k, combo in enumerate(combos):
                new = add_knobs({**rec, **combo}, combo)
                if len(combos) > 1:
                    new["id"] = f"{rec['id']}.{k}"
                res.keep(new)
        return res
