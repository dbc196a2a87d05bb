"""What `dedup` was kept before: earlier run directories and persisted indexes.

A new dataset is deduplicated against an old one without its texts (users ask
for it of datatrove: huggingface/datatrove#370, #312): an earlier run's final
data is streamed from Parquet in batches and reduced to what dedup compares, the
16-byte digest of the normalised text (`exact`), the band keys and 16-bit
signature (`minhash`, the b-bit MinHash of Li & Koenig 2010) or the embedding
(`semantic`); an index file
holds exactly these, with each record's id and run, so the next generation
reads hashes only. The settings a hash depends on are stored in the index file
(Parquet key-value metadata) and checked when it is read.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.text import normalize

if TYPE_CHECKING:
    from smolforge.context import StageContext
    from smolforge.stages.curate.dedup import Dedup
    from smolforge.text.minhash import MinHashLSH

# How texts are folded before hashing (`smolforge.text.normalize`, which
# `minhash.Batch` reproduces): part of every index, so a changed folding can't
# silently mix two kinds of hashes.
NORMALIZATION = "nfkc-lower-alnum-v1"
INDEX_KEY = b"smolforge.dedup_index"
INDEX_FORMAT = 1
ROW_GROUP = 1 << 16
# Parquet read through a buffered stream, pages decoded as batches are asked for:
# a run's data file is often one row group, and reading it whole held about
# twice the memory (measured on 50k records of 2 KB: +98 MB whole, +54 MB buffered).
READ = {"buffer_size": 1 << 20, "pre_buffer": False}
# Settings a stored hash depends on, per method: an index is usable only when they match.
CHECKED = {"exact": ("method", "normalization"),
           "minhash": ("method", "normalization", "ngram", "unit", "bands", "rows", "seed"),
           "semantic": ("method", "normalization", "model")}


def settings(stage: Dedup) -> dict[str, Any]:
    """The stage's settings an index records (`column` for information only: an
    index of one column may be compared with another)."""
    out: dict[str, Any] = {"format": INDEX_FORMAT, "method": stage.method,
                           "normalization": NORMALIZATION, "column": stage.column}
    if stage.method == "minhash":
        out |= {"ngram": stage.ngram, "unit": stage.unit, "bands": stage.bands,
                "rows": stage.rows, "seed": stage.seed}
    elif stage.method == "semantic":
        out |= {"normalization": "none", "model": stage.model}  # texts are embedded as they are
    return out


def exact_digest(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


@dataclass
class Source:
    """One entry of `against`: a run directory or an index file."""

    shown: str  # as the recipe wrote it (a glob: the path it matched)
    path: Path
    is_run: bool


def sources(stage: Dedup, ctx: StageContext) -> list[Source]:
    """`against` resolved: globs expanded (sorted), each a run directory
    (manifest.json) or an index file, else an error naming the entry."""
    out: list[Source] = []
    own = Path(ctx.run_dir).resolve() if ctx.run_dir is not None else None
    for i, entry in enumerate(stage.against):
        p = ctx.resolve_path(entry)
        found = sorted(glob.glob(str(p))) if glob.has_magic(entry) else [str(p)]
        if not found:
            raise FileNotFoundError(f"dedup against[{i}]: nothing matches {entry!r}")
        for m in found:
            mp = Path(m)
            shown = m if glob.has_magic(entry) else entry
            if own is not None and (mp.resolve() == own or mp.resolve().is_relative_to(own)):
                raise ValueError(f"dedup against[{i}]: {shown!r} is this run's own directory or "
                                 "in it; `against` names what earlier runs kept")
            if (mp / "manifest.json").is_file():
                out.append(Source(shown, mp, True))
            elif mp.is_file():
                out.append(Source(shown, mp, False))
            else:
                raise FileNotFoundError(
                    f"dedup against[{i}]: {shown!r} is neither a smolforge run directory "
                    "(no manifest.json) nor a dedup index file")
    return out


def digest(stage: Dedup, ctx: StageContext) -> list[Any]:
    """What the runs in `against` hold now, for the resume fingerprint: the sha256
    of each final data file (a resumed run rewrites identical files, so an
    unchanged run does not re-run this stage; a changed one does). Index files are
    covered by the `GLOB` mark (size and time)."""
    from smolforge.store import data_files

    out: list[Any] = []
    try:
        found = sources(stage, ctx)
    except (OSError, ValueError) as e:  # reported when the stage runs
        return [str(e)]
    for src in found:
        if not src.is_run:
            continue
        files = []
        for f in data_files(src.path):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            files.append([f.name, h.hexdigest()])
        out.append([src.shown, files])
    return out


@dataclass
class OldRecords:
    """Ids and runs of the records kept before, in the order they were loaded
    (entry k); hashes live in `digests` (exact), the LSH (minhash) or an array of
    embeddings (semantic)."""

    runs: list[str] = field(default_factory=list)
    _run_of: list[np.ndarray] = field(default_factory=list)
    _ids: list[pa.Array] = field(default_factory=list)
    digests: dict[bytes, int] = field(default_factory=dict)  # exact: digest -> first entry
    n: int = 0
    _flat: tuple[np.ndarray, pa.ChunkedArray] | None = None

    def _add(self, run: str | np.ndarray, ids: pa.Array) -> None:
        if isinstance(run, str):
            if run not in self.runs:
                self.runs.append(run)
            run = np.full(len(ids), self.runs.index(run), dtype=np.int32)
        self._run_of.append(run)
        self._ids.append(ids.cast(pa.string()))
        self.n += len(ids)
        self._flat = None

    def _arrays(self) -> tuple[np.ndarray, pa.ChunkedArray]:
        if self._flat is None:
            runs = np.concatenate(self._run_of) if self._run_of else np.zeros(0, np.int32)
            self._flat = (runs, pa.chunked_array(self._ids, type=pa.string()))
        return self._flat

    def run_of(self, k: int) -> str:
        return self.runs[int(self._arrays()[0][k])]

    def id_of(self, k: int) -> str:
        return str(self._arrays()[1][k].as_py())

    def label(self, k: int) -> str:
        """How a reject names old record k: its id and its run."""
        return f"{self.id_of(k)} of earlier run {self.run_of(k)!r}"

    def run_ids(self, entries: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """(run, id) columns of `entries`, for writing an index."""
        runs, ids = self._arrays()
        names = pa.array(self.runs, type=pa.string())
        return names.take(pa.array(runs[entries])), ids.take(pa.array(entries)).combine_chunks()


def _check(path: str, meta: dict[str, Any], want: dict[str, Any]) -> None:
    if meta.get("format") != INDEX_FORMAT:
        raise ValueError(f"dedup index {path!r}: format {meta.get('format')!r}, this smolforge "
                         f"reads format {INDEX_FORMAT}")
    for key in CHECKED[want["method"]]:
        if meta.get(key) != want[key]:
            raise ValueError(
                f"dedup index {path!r} was built with {key}: {meta.get(key)!r}, this stage has "
                f"{key}: {want[key]!r}; its hashes can't be compared (rebuild the index, or set "
                f"{key}: {meta.get(key)!r})")


def index_meta(path: str, pf: pq.ParquetFile) -> dict[str, Any]:
    raw = (pf.schema_arrow.metadata or {}).get(INDEX_KEY)
    if raw is None:
        raise ValueError(f"dedup against: {path!r} is not a dedup index (a Parquet file written by "
                         "`save_index`) nor a run directory")
    return json.loads(raw)


def _run_batches(stage: Dedup, src: Source) -> Iterator[tuple[pa.Array, list[str]]]:
    """(ids, texts) of a run's final data, `batch_size` rows at a time."""
    from smolforge.store import data_files

    files = data_files(src.path)
    if not files:
        raise FileNotFoundError(f"dedup against: {src.shown!r}: the run has written no data")
    for f in files:
        pf = pq.ParquetFile(f, **READ)
        names = pf.schema_arrow.names
        missing = [c for c in ("id", stage.column) if c not in names]
        if missing:
            raise ValueError(f"dedup against: {src.shown!r} ({f.name}) has no column "
                             f"{missing[0]!r} (columns: {', '.join(names)})")
        for batch in pf.iter_batches(batch_size=stage.batch_size, columns=["id", stage.column]):
            texts = [str(t or "") for t in batch.column(1).to_pylist()]
            yield batch.column(0), texts


def _index_batches(stage: Dedup, src: Source) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(src.path, **READ)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"dedup against: {src.shown!r} is not a dedup index nor a run directory "
                         f"({e})") from None
    _check(src.shown, index_meta(src.shown, pf), settings(stage))
    cols = {"exact": ["run", "id", "digest"], "minhash": ["run", "id", "keys", "sig16"],
            "semantic": ["run", "id", "embedding"]}[stage.method]
    yield from pf.iter_batches(batch_size=stage.batch_size, columns=cols)


def _runs_of(batch: pa.RecordBatch, old: OldRecords) -> np.ndarray:
    names = batch.column(0).to_pylist()
    for r in dict.fromkeys(names):
        if r not in old.runs:
            old.runs.append(r)
    pos = {r: j for j, r in enumerate(old.runs)}
    return np.fromiter((pos[r] for r in names), dtype=np.int32, count=len(names))


def load_exact(stage: Dedup, ctx: StageContext) -> OldRecords:
    """Digests of every old record (the first entry of each digest is the one named)."""
    old = OldRecords()
    for src in sources(stage, ctx):
        if src.is_run:
            for ids, texts in _run_batches(stage, src):
                base = old.n
                old._add(src.shown, ids)
                for j, t in enumerate(texts):
                    old.digests.setdefault(exact_digest(t), base + j)
        else:
            for batch in _index_batches(stage, src):
                base = old.n
                old._add(_runs_of(batch, old), batch.column(1))
                for j, d in enumerate(batch.column(2).to_pylist()):
                    old.digests.setdefault(d, base + j)
    return old


def load_minhash(stage: Dedup, ctx: StageContext, lsh: MinHashLSH) -> OldRecords:
    """Band keys and 16-bit signatures of every old record, added to `lsh` first
    (entries 0..n-1); texts are hashed a batch at a time and dropped."""
    old = OldRecords()
    for src in sources(stage, ctx):
        if src.is_run:
            for ids, texts in _run_batches(stage, src):
                old._add(src.shown, ids)
                lsh.add(texts)
        else:
            for batch in _index_batches(stage, src):
                n = batch.num_rows
                keys = batch.column(2).flatten().to_numpy().reshape(n, stage.bands)
                sig = batch.column(3).flatten().to_numpy().reshape(n, stage.num_perm)
                old._add(_runs_of(batch, old), batch.column(1))
                lsh.add_signatures(np.ascontiguousarray(keys.T), sig, np.ones(n, dtype=bool))
    return old


def load_semantic(stage: Dedup, ctx: StageContext) -> tuple[OldRecords, np.ndarray]:
    """Embeddings of every old record [n, dim] (float32, unit length): a run's
    texts are embedded a batch at a time; an index holds them."""
    from smolforge.embed import embed

    old = OldRecords()
    parts: list[np.ndarray] = []
    for src in sources(stage, ctx):
        if src.is_run:
            for ids, texts in _run_batches(stage, src):
                old._add(src.shown, ids)
                parts.append(np.asarray(embed(texts, stage.model, device=stage.device), np.float32))
        else:
            for batch in _index_batches(stage, src):
                col = batch.column(2)
                dim = col.type.list_size
                old._add(_runs_of(batch, old), batch.column(1))
                parts.append(col.flatten().to_numpy().reshape(batch.num_rows, dim).astype(np.float32))
    vecs = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return old, vecs


def write_index(path: Path, stage: Dedup, parts: Iterable[list[pa.Array]], dim: int = 0) -> None:
    """An index file of (run, id, hashes...) columns, one row group per part at
    most, written under a temporary name and renamed into place when complete
    (a kill leaves no half index)."""
    from smolforge.store import atomic_file

    fields = [pa.field("run", pa.string()), pa.field("id", pa.string())]
    if stage.method == "exact":
        fields.append(pa.field("digest", pa.binary(16)))
    elif stage.method == "semantic":
        fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    else:
        fields += [pa.field("keys", pa.list_(pa.uint64(), stage.bands)),
                   pa.field("sig16", pa.list_(pa.uint16(), stage.num_perm))]
    schema = pa.schema(fields, metadata={INDEX_KEY: json.dumps(settings(stage), sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)  # `run_path` checked it holds no link
    with atomic_file(path) as f, pq.ParquetWriter(f, schema) as w:
        for arrays in parts:
            if len(arrays[1]):
                w.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=ROW_GROUP)


def fixed_lists(values: np.ndarray, size: int, kind: pa.DataType) -> pa.Array:
    """Rows of a 2-D array as a fixed-size list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=kind), size)
