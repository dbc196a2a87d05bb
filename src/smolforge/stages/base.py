"""Stage base classes: a stage is its config (pydantic fields) plus its logic.

Three kinds:
- `SourceStage` produces records (`read`, `items`, `combine`).
- `MapStage` sees one batch (a shard) at a time and returns kept and rejected
  records; `FilterStage` is a MapStage whose logic is one `check` per record.
- `GlobalStage` sees every shard of its input (dedup, classifier training).

The runner owns the loop, ids, provenance, counting, timing and the rejects; a
concrete stage is only its logic. Every dropped record carries a reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from smolforge.engines.base import UNSERVABLE
from smolforge.paths import STAGE_NAME, file_digests  # noqa: F401 - re-exported
from smolforge.records import Record, Reject, records_to_table, table_to_records  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from pathlib import Path

    from smolforge.context import StageContext

def is_engine_error(reason: str) -> bool:
    """Whether a reject was caused by an engine failure (server down, timeout, bad
    request) rather than the record's quality. Such rejects are not final: the
    runner retries them on the next run. LLM stages word them "engine error ...";
    one whose every failure is an unservable request (engines.base.UNSERVABLE: a
    prompt longer than the context, a schema with no grammar) is final."""
    parts = reason.split("; ")
    start = next((k for k, part in enumerate(parts) if part.lstrip().startswith("engine error")), None)
    return start is not None and any(UNSERVABLE not in part for part in parts[start:])


@dataclass
class Result:
    # The kept records: dicts, or (see `select`) the input shard's own Arrow rows,
    # which the store writes without converting them to Python and back.
    kept: list[Record] | pa.Table = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)
    # Stage-specific counts for this shard (pairs made, ties dropped, ...): summed
    # over shards into the stage's entry in the manifest, beside in/out/rejected.
    counts: dict[str, float] = field(default_factory=dict)

    def keep(self, record: Record) -> None:
        self.kept.append(record)  # type: ignore[union-attr]

    def records(self) -> list[Record]:
        """The kept records as dicts, whichever form `kept` has."""
        if isinstance(self.kept, pa.Table):
            return table_to_records(self.kept)
        return self.kept

    @classmethod
    def select(cls, table: pa.Table, reasons: dict[int, str],
               added: dict[str, list[Any]] | None = None) -> Result:
        """The input shard minus the rows in `reasons` (row index -> reason), plus
        columns the stage `added` (one value per input row). The kept rows stay
        Arrow; only the rejected ones become records. Most of a cheap stage's cost
        was decoding and re-encoding every kept record's provenance."""
        if added:
            for name, values in added.items():
                col = pa.array(values)
                if name in table.column_names:
                    table = table.set_column(table.column_names.index(name), name, col)
                else:
                    table = table.append_column(name, col)
        res = cls()
        if reasons:
            drop = sorted(reasons)
            mask = np.ones(table.num_rows, dtype=bool)
            mask[drop] = False
            rows = table_to_records(table.take(pa.array(drop, type=pa.int64())))
            res.rejected = [Reject(r, reasons[i]) for i, r in zip(drop, rows)]
            table = table.filter(pa.array(mask))
        res.kept = table
        return res

    def reject(self, record: Record, reason: str) -> None:
        self.rejected.append(Reject(record, reason))


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: str
    name: str | None = Field(
        None, description="name in reports and the run directory (default: the type)"
    )

    kind: ClassVar[str] = "map"
    # Columns a stage reads / adds; used to check a recipe before anything runs.
    # `None` from `provides()` means "not known until the data is read".

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str | None) -> str | None:
        if v is not None and not STAGE_NAME.fullmatch(v):
            raise ValueError("a stage name is a letter or _ then letters, digits, _ or - "
                             "(at most 64; it names the stage's directory in the run)")
        return v

    def requires(self) -> set[str]:
        return set()

    def provides(self) -> set[str] | None:
        return set()

    def removes(self) -> set[str]:
        return set()

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        """Anything beyond the fields that changes the output (template file
        contents, engine identity). Part of the stage's resume fingerprint."""
        return None

    def artefacts(self, ctx: StageContext) -> list[Path]:
        """Files the stage writes besides its shards (a trained model), all inside
        the run directory. The runner keeps their sha256 in the stage's `_DONE`
        marker, as it does for shards, and recomputes the stage when one is
        missing or no longer matches."""
        return []

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        """Figures about the stage's whole output that are not sums over shards
        (judge agreement, score distributions), computed from the committed output
        after the stage completes (also on resume). Stored in the manifest under the
        stage's `summary`; `show` prints it."""
        return None

    def fingerprint(self, ctx: StageContext) -> str:
        """The stage's fields, `fingerprint_extra`, and what every file its marked
        fields name holds now (`paths.file_digests`): a change to any re-runs it."""
        blob = json.dumps(
            [self.model_dump(mode="json"), self.fingerprint_extra(ctx), file_digests(self, ctx.recipe_dir)],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


class SourceStage(Stage):
    """Produces records. Yields records, or `Reject`s for unreadable input."""

    kind: ClassVar[str] = "source"

    def read(self, ctx: StageContext) -> Iterator[Record | Reject]:
        raise NotImplementedError

    def read_batches(self, ctx: StageContext) -> Iterator[Record | Reject | pa.Table]:
        """What the runner reads: `read`'s items, or whole Arrow tables of rows
        that are stored as they are (`read` of JSONL and Parquet)."""
        return self.read(ctx)

    def estimate_count(self, ctx: StageContext) -> int | None:
        """How many records `read` will produce, if cheap to know (for --dry-run)."""
        return None


class MapStage(Stage):
    """Processes one batch at a time; batches are independent (so shards can run
    in any order, or on different machines)."""

    kind: ClassVar[str] = "map"

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        raise NotImplementedError

    def process_table(self, table: pa.Table, ctx: StageContext) -> Result:
        """The runner's entry point: one shard as Arrow. By default every record,
        provenance included, goes to `process` as a dict."""
        batch = table_to_records(table)
        return self.process(batch, ctx) if batch else Result()


class FilterStage(MapStage):
    """A MapStage whose logic is one check per record: `check` returns None to
    keep the record, or the reason it was dropped."""

    def check(self, record: Record) -> str | None:
        raise NotImplementedError

    def process_table(self, table: pa.Table, ctx: StageContext) -> Result:
        """A filter reads only the columns it `requires()` (and `id`): it gets
        partial records, and the kept rows are taken from the shard as they are.
        Columns it sets on a record (a language score) are added to the shard."""
        cols = [c for c in table.column_names if c in self.requires() | {"id"}]
        batch = table_to_records(table.select(cols))
        if not batch:
            return Result()
        res = self.process(batch, ctx)
        index = {id(rec): i for i, rec in enumerate(batch)}
        reasons = {index[id(r.record)]: r.reason for r in res.rejected}
        if len(reasons) + len(res.kept) != len(batch):
            raise RuntimeError(f"{self.type}: a filter must keep or reject each record once")
        new = sorted({k for rec in batch for k in rec} - set(cols))
        added = {k: [rec.get(k) for rec in batch] for k in new}
        return Result.select(table, reasons, added)

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        for rec in batch:
            reason = self.check(rec)
            if reason is None:
                res.keep(rec)
            else:
                res.reject(rec, reason)
        return res


class Shards(Sequence):
    """Read access to every shard of a global stage's input, one shard at a time,
    optionally only some columns (so memory holds what the stage needs)."""

    def __init__(self, loader, n: int, tables=None):
        self._loader = loader
        self._n = n
        self._tables = tables

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        return self._loader(i, None)

    def columns(self, i: int, columns: list[str]) -> list[Record]:
        return self._loader(i, columns)

    def table(self, i: int) -> pa.Table:
        """Shard `i` as Arrow, for `Result.select`."""
        if self._tables is not None:
            return self._tables(i)
        return records_to_table(self[i])


class GlobalStage(Stage):
    """Sees all shards of its input; yields one Result per input shard, in any
    order, so outputs keep the shard layout."""

    kind: ClassVar[str] = "global"

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        raise NotImplementedError
