"""Mixing real and synthetic data, accumulating generations, and the annealing split.

- `mix` (source): records from other runs (`run_dir`) and datasets (`path`, any
  format `read` takes, e.g. an exported `data/*.parquet`) at target ratios, by
  records or by tokens. WRAP (Maini et al. 2024) trains on real and rephrased text
  1:1; `mix_real` does that inside one rephrasing run, `mix` across runs and
  datasets. Without `total`, the mix is the largest one the ratios allow without
  repeating a record (the scarcest input is used whole); with `total` above that,
  `repeat: true` cycles through the scarce inputs (upsampling), else it is an error.
- `accumulate` (source): iteration k's training set is the real data plus every
  earlier synthetic generation, all of them kept, never replaced (Gerstgrasser et
  al. 2024, "Is Model Collapse Inevitable?": accumulating avoids the collapse that
  replacing data with each new generation causes).
- `anneal` (global): the top-scored `fraction` (by a judge or classifier score
  column) gets `split: anneal`, held out for the end of training, when the learning
  rate decays (the annealing phase of MiniCPM and Llama 3 training on the best
  data); the rest keeps its `split` (from the `split` stage) or gets `train`.
  `export` writes one file per split.

Each mixed record keeps its columns and its origin's provenance (`meta`, teacher
and licence included); `meta.mix` says where it came from (label, input, original
id, generation), `label_column` and `meta.knobs.<label_column>` carry the label, so
`show` prints the split. Inputs are read into memory (ids and token counts, then
the records): mixes of millions of records need a Ray job, not this stage.
"""

from __future__ import annotations

import glob as globlib
import itertools
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smolforge.context import StageContext
from smolforge.paths import FILE, GLOB
from smolforge.registry import stages
from smolforge.stages.base import GlobalStage, Record, Result, Shards, SourceStage
from smolforge.stages.shape.vary import add_knobs
from smolforge.text import approx_tokens


class MixInput(BaseModel):
    """One input of a mix: a run directory or files, with its label and ratio."""

    model_config = ConfigDict(extra="forbid")
    run_dir: Annotated[str | None, FILE] = Field(None, description="a smolforge run directory (its final data)")
    path: Annotated[str | list[str] | None, GLOB] = Field(None, description="files or globs (any format `read` takes)")
    label: str = Field(description="provenance label, e.g. real or synthetic")
    ratio: float = Field(1.0, gt=0, description="target share, relative to the other inputs")
    columns: dict[str, str] | None = Field(None, description="path: output column -> input column")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.run_dir is None) == (self.path is None):
            raise ValueError("set exactly one of `run_dir` or `path`")
        return self

    def where(self) -> str:
        return self.run_dir if self.run_dir is not None else str(self.path)


def read_input(inp: MixInput, ctx: StageContext) -> list[Record]:
    """The records of one input, in order; an input `id` becomes `source_id`."""
    if inp.run_dir is not None:
        import pyarrow.parquet as pq

        from smolforge.records import table_to_records
        from smolforge.store import data_files

        root = ctx.resolve_path(inp.run_dir)
        if not (root / "manifest.json").exists():
            raise FileNotFoundError(f"{inp.run_dir}: not a smolforge run directory (no manifest.json)")
        files = data_files(root)
        if not files:
            raise FileNotFoundError(f"{inp.run_dir}: the run has written no data yet")
        rows: list[Record] = []
        for f in files:
            rows += table_to_records(pq.read_table(f))
    else:
        from smolforge.stages.sources.read import Read

        reader = Read(type="read", path=inp.path, columns=inp.columns)
        rows = [r for r in reader.read(ctx) if isinstance(r, dict)]
    for r in rows:
        if "id" in r:
            r["source_id"] = r.pop("id")
        if not isinstance(r.get("meta"), dict):
            r["meta"] = {}
    return rows


def _tag(rec: Record, label: str, label_column: str, mix: dict) -> Record:
    meta = dict(rec.get("meta") or {})
    meta["mix"] = mix
    return add_knobs({**rec, label_column: label, "meta": meta}, {label_column: label})


class _MixBase(SourceStage):
    label_column: str = Field("origin", description="column holding each record's input label")

    def provides(self) -> set[str] | None:
        return None  # the inputs' columns are known once they are read


@stages.register
class Mix(_MixBase):
    """Records from runs and datasets at target ratios (by records or tokens)."""

    type: Literal["mix"] = "mix"
    inputs: list[MixInput] = Field(min_length=1)
    by: Literal["records", "tokens"] = Field("records", description="what the ratios count")
    column: str = Field("text", description="by tokens: the text column counted (approx. chars / 4)")
    total: int | None = Field(None, ge=1, description="records (or tokens) in the mix (default: the most "
                                                     "the ratios allow without repeating a record)")
    repeat: bool = Field(False, description="allow repeating records of a scarce input to reach `total`")

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return [_input_digest(i, ctx) for i in self.inputs]

    def read(self, ctx: StageContext) -> Iterator[Record]:
        data = [read_input(i, ctx) for i in self.inputs]
        weight = sum(i.ratio for i in self.inputs)
        size = [[1] * len(d) if self.by == "records" else [approx_tokens(r.get(self.column)) for r in d]
                for d in data]
        avail = [sum(s) for s in size]
        for inp, a in zip(self.inputs, avail):
            if a == 0:
                raise ValueError(f"mix: input {inp.where()!r} ({inp.label}) has no {self.by}")
        most = min(a / (i.ratio / weight) for a, i in zip(avail, self.inputs))
        total = self.total if self.total is not None else most
        if total > most + 1e-9 and not self.repeat:
            raise ValueError(f"mix: total {self.total} {self.by} needs repeats (without them at most "
                             f"{math.floor(most)}); set `repeat: true` or lower `total`")
        picked: list[Record] = []
        for k, (inp, recs, sz) in enumerate(zip(self.inputs, data, size)):
            budget = total * inp.ratio / weight
            order = list(range(len(recs)))
            ctx.rng("mix", k).shuffle(order)
            # the input's records in a seeded order, cycled only when repeats are allowed
            stream = (order[m % len(order)] for m in itertools.count()) if self.repeat else iter(order)
            got = 0.0
            for m, j in enumerate(stream):
                if self.by == "records" and m >= round(budget):
                    break
                if self.by == "tokens" and got >= budget:
                    break
                rec = recs[j]
                mix = {"label": inp.label, "input": inp.where(), "source_id": rec.get("source_id"),
                       "by": self.by, "ratio": inp.ratio}
                if m >= len(recs):
                    mix["repeat"] = m // len(recs)
                picked.append(_tag(rec, inp.label, self.label_column, mix))
                got += sz[j]
        ctx.rng("mix", "order").shuffle(picked)  # interleaved, so every shard holds the mix
        yield from picked


@stages.register
class Accumulate(_MixBase):
    """Real data plus every earlier synthetic generation, all kept (Gerstgrasser et al. 2024)."""

    type: Literal["accumulate"] = "accumulate"
    real: list[MixInput] = Field(default_factory=list, description="the real data (label: real)")
    generations: Annotated[list[str], GLOB] = Field(
        min_length=1, description="run directories of generations 0..k-1, in order (globs are expanded and sorted)")

    def _generation_dirs(self, ctx: StageContext) -> list[str]:
        out: list[str] = []
        for g in self.generations:
            p = str(ctx.resolve_path(g))
            # a glob picks the run directories it matches (other files beside them are skipped)
            matches = (sorted((m for m in globlib.glob(p) if (Path(m) / "manifest.json").is_file()),
                              key=_natural)
                       if globlib.has_magic(g) else [p])
            if not matches:
                raise FileNotFoundError(f"accumulate: no run matches {g!r}")
            out += matches
        return out

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        gens = [MixInput(run_dir=g, label="synthetic") for g in self._generation_dirs(ctx)]
        return [_input_digest(i, ctx) for i in [*self.real, *gens]]

    def read(self, ctx: StageContext) -> Iterator[Record]:
        for inp in self.real:
            for rec in read_input(inp, ctx):
                yield _tag(rec, inp.label, self.label_column,
                           {"label": inp.label, "input": inp.where(), "source_id": rec.get("source_id")})
        for k, g in enumerate(self._generation_dirs(ctx)):
            inp = MixInput(run_dir=g, label="synthetic")
            for rec in read_input(inp, ctx):
                yield _tag(rec, "synthetic", self.label_column,
                           {"label": "synthetic", "input": g, "source_id": rec.get("source_id"),
                            "generation": k})


def _natural(name: str) -> list:
    """gen-2 before gen-10: numbers in a name compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _input_digest(inp: MixInput, ctx: StageContext) -> Any:
    """What the mix read: a run's data hashes (from its manifest) or the files' sizes and times."""
    import json

    if inp.run_dir is not None:
        root = ctx.resolve_path(inp.run_dir)
        try:
            m = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError):
            return [inp.model_dump(), None]
        return [inp.model_dump(), m.get("finished_at"), m.get("data", {}).get("rows")]
    paths = [inp.path] if isinstance(inp.path, str) else inp.path
    files = []
    for pattern in paths or []:
        for f in sorted(globlib.glob(str(ctx.resolve_path(pattern)), recursive=True)):
            st = Path(f).stat()
            files.append([f, st.st_size, st.st_mtime_ns])
    return [inp.model_dump(), files]


@stages.register
class Anneal(GlobalStage):
    """Hold out the top-scored `fraction` as `split: anneal` for the end of training."""

    type: Literal["anneal"] = "anneal"
    score: str = Field(description="the score column (a judge's or classifier's)")
    fraction: float = Field(0.1, gt=0, lt=1, description="share of the scored records held out")
    split_name: str = Field("anneal", description="the split the top slice goes to")
    split_column: str = Field("split", description="the split column (shared with the `split` stage)")
    default_split: str = Field("train", description="the split of every other record without one")
    only_from: str | None = Field("train", description="take the top slice only from this split "
                                                       "(null: from any); held-out splits stay as they are")

    def requires(self) -> set[str]:
        return {self.score}

    def provides(self) -> set[str]:
        return {self.split_column}

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        cand: list[tuple[float, str]] = []
        for i in range(len(shards)):
            for rec in shards.columns(i, ["id", self.score, self.split_column]):
                split = rec.get(self.split_column) or self.default_split
                v = rec.get(self.score)
                if isinstance(v, (int, float)) and not math.isnan(v) and (
                        self.only_from is None or split == self.only_from):
                    cand.append((float(v), rec["id"]))
        cand.sort(key=lambda c: (-c[0], c[1]))  # ties: by id, so the split is deterministic
        top = {rid for _, rid in cand[:round(len(cand) * self.fraction)]}
        for i in range(len(shards)):
            res = Result()
            for rec in shards[i]:
                split = rec.get(self.split_column) or self.default_split
                res.keep({**rec, self.split_column: self.split_name if rec["id"] in top else split})
            res.counts = {"held_out": sum(r["id"] in top for r in res.kept)}
            yield i, res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        from collections import Counter

        splits: Counter = Counter()
        lowest = None
        for i in range(len(out)):
            for rec in out.columns(i, [self.split_column, self.score]):
                splits[rec.get(self.split_column)] += 1
                if rec.get(self.split_column) == self.split_name and isinstance(rec.get(self.score), (int, float)):
                    lowest = rec[self.score] if lowest is None else min(lowest, rec[self.score])
        return {"splits": dict(splits), "lowest_held_out_score": lowest}
