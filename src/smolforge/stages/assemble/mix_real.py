"""`mix_real`: keep the original text beside its rephrasings, at a chosen ratio.

WRAP (Maini et al. 2024) trains on real and rephrased web text mixed 1:1: the
rephrasings alone lose the noise and style of real text that the model will meet.
This stage runs after the rephrasings are generated and filtered. It groups the
records of a batch by their original text (`original` column; a record's
rephrasings always stay in the record's shard), marks each kept rephrasing
`source: synthetic`, and adds real records: per group of `s` rephrasings,
`real_ratio * s` copies of the original in expectation (the whole part always,
the fraction by a seeded coin flip per group). So:

- `real_ratio: 1` (default) with one rephrasing per chunk keeps every original once;
- `real_ratio: 0.5` keeps about half of the originals;
- `real_ratio: 0` keeps none (synthetic only);
- `real_ratio: 2` repeats each original twice per rephrasing (upsampling).

An original whose rephrasings were all dropped is not added, so the ratio holds in
the output. A real record is `<first rephrasing id>.real` (`.real1`, ... for
repeats), with the original in `column`, `source: real`, the columns listed in
`carry` copied from its rephrasing (document name, title ...) and every other
column empty; `meta.knobs.source` is set on every record, so `smolforge show`
prints the real/synthetic split. Run exact dedup before this stage, since repeated
originals are intended.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.stages.shape.vary import add_knobs

_PROVENANCE_KEYS = ("recipe", "seed", "created_by", "created_at")


@stages.register
class MixReal(MapStage):
    """Add the original texts as `source: real` records beside the synthetic ones,
    `real_ratio` real records per synthetic record (default 1, as in WRAP)."""

    type: Literal["mix_real"] = "mix_real"
    original: str = Field("original", description="column holding the original (real) text")
    column: str = Field("text", description="text column of the output; real records get the original here")
    real_ratio: float = Field(1.0, ge=0, description="real records per synthetic record")
    source_column: str = Field("source", description="column set to `real` or `synthetic`")
    carry: list[str] = Field(
        default_factory=list, description="columns copied from a rephrasing into its real record"
    )

    def requires(self) -> set[str]:
        return {self.original, self.column} | set(self.carry)

    def provides(self) -> set[str]:
        return {self.source_column}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        groups: dict[str, list[Record]] = {}
        for rec in batch:
            res.keep(add_knobs({**rec, self.source_column: "synthetic"}, {self.source_column: "synthetic"}))
            orig = rec.get(self.original)
            if isinstance(orig, str) and orig.strip():
                groups.setdefault(orig, []).append(rec)
        for orig, recs in groups.items():
            first = recs[0]
            expected = self.real_ratio * len(recs)
            copies = math.floor(expected)
            if ctx.rng(first["id"]).random() < expected - copies:
                copies += 1
            for k in range(copies):
                meta = {k2: v for k2, v in (first.get("meta") or {}).items() if k2 in _PROVENANCE_KEYS}
                meta[ctx.stage_name or "mix_real"] = {"real_ratio": self.real_ratio, "group_size": len(recs)}
                real = {
                    "id": f"{first['id']}.real{k or ''}",
                    "meta": meta,
                    self.column: orig,
                    self.original: orig,
                    self.source_column: "real",
                    **{c: first.get(c) for c in self.carry},
                }
                res.keep(add_knobs(real, {self.source_column: "real"}))
        return res
