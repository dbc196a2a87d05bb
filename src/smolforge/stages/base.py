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

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from smolforge.context import StageContext

Record = dict[str, Any]


@dataclass
class Reject:
    record: Record
    reason: str


def is_engine_error(reason: str) -> bool:
    """Whether a reject was caused by an engine failure (server down, timeout, bad
    request) rather than the record's quality. Such rejects are not final: the
    runner retries them on the next run. LLM stages word them "engine error ..."."""
    return any(part.lstrip().startswith("engine error") for part in reason.split("; "))


@dataclass
class Result:
    kept: list[Record] = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)
    # Stage-specific counts for this shard (pairs made, ties dropped, ...): summed
    # over shards into the stage's entry in the manifest, beside in/out/rejected.
    counts: dict[str, float] = field(default_factory=dict)

    def keep(self, record: Record) -> None:
        self.kept.append(record)

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

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        """Figures about the stage's whole output that are not sums over shards
        (judge agreement, score distributions), computed from the committed output
        after the stage completes (also on resume). Stored in the manifest under the
        stage's `summary`; `show` prints it."""
        return None

    def fingerprint(self, ctx: StageContext) -> str:
        blob = json.dumps(
            [self.model_dump(mode="json"), self.fingerprint_extra(ctx)],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


class SourceStage(Stage):
    """Produces records. Yields records, or `Reject`s for unreadable input."""

    kind: ClassVar[str] = "source"

    def read(self, ctx: StageContext) -> Iterator[Record | Reject]:
        raise NotImplementedError

    def estimate_count(self, ctx: StageContext) -> int | None:
        """How many records `read` will produce, if cheap to know (for --dry-run)."""
        return None


class MapStage(Stage):
    """Processes one batch at a time; batches are independent (so shards can run
    in any order, or on different machines)."""

    kind: ClassVar[str] = "map"

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        raise NotImplementedError


class FilterStage(MapStage):
    """A MapStage whose logic is one check per record: `check` returns None to
    keep the record, or the reason it was dropped."""

    def check(self, record: Record) -> str | None:
        raise NotImplementedError

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

    def __init__(self, loader, n: int):
        self._loader = loader
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        return self._loader(i, None)

    def columns(self, i: int, columns: list[str]) -> list[Record]:
        return self._loader(i, columns)


class GlobalStage(Stage):
    """Sees all shards of its input; yields one Result per input shard, in any
    order, so outputs keep the shard layout."""

    kind: ClassVar[str] = "global"

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        raise NotImplementedError
