"""Deduplication: exact, MinHash near-duplicates, semantic (embedding) duplicates.

`exact`: records whose normalised text (NFKC, lower case, punctuation and
whitespace folded; see `smolforge.text.normalize`) is identical. The first record
in input order is kept; each reject names the id it duplicates.

`minhash`: near-duplicates by MinHash LSH (Broder 1997; bands as in Leskovec et
al., Mining of Massive Datasets ch. 3; defaults as in FineWeb's 14 bands x 8 rows
on word 5-grams) with each candidate pair verified by its estimated Jaccard
(`threshold`, default 0.75). With these defaults a pair is dropped with
probability ~0.13 at Jaccard 0.7, ~0.5 at 0.75, ~0.87 at 0.8, ~0.99 at 0.85 and
1.0 from 0.9 on; below 0.65 almost never (docs/curation-dedup.md has the curve).
`clusters: keep_first` (default) takes records in input order and drops one when
its estimated Jaccard with a record already kept (sharing an LSH bucket) reaches
the threshold, as a query-then-insert LSH index does (datasketch, rensa): the
reject names that kept record and their similarity. `clusters: components`
drops every record of a connected component of verified pairs but its first, as
datatrove's MinhashDedupCluster does; through a chain A~B~C a reject may then
name a record it is far less similar to (the reason says via which record).
Only 16-bit signatures and band keys are held, never texts.

`semantic`: embeddings from all-MiniLM-L6-v2 (the `[embed]` extra), cosine
`threshold` (default 0.95, as SemDeDup-style pipelines use for near-identical
meaning); greedy keep-first: a record is dropped when it is that similar to a
record already kept, which the reject names.

`against`: earlier run directories (their final data) and index files, loaded
as hashes only (`dedup_index`; embeddings for `semantic`), count as kept before
every new record; a new record that duplicates one of them is dropped, its reason
naming the old record's id and run, and old records are never output (the
datatrove users' request, huggingface/datatrove#370 and #312). `save_index`
writes those hashes plus the new kept records' to a file in the run directory,
so generation k+1 deduplicates against all of 0..k through one file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from smolforge.context import StageContext
from smolforge.paths import GLOB, RUN
from smolforge.registry import stages
from smolforge.stages.base import GlobalStage, Record, Result, Shards
from smolforge.stages.curate import dedup_index

log = logging.getLogger(__name__)

MINHASH_THRESHOLD = 0.75
SEMANTIC_THRESHOLD = 0.95


@stages.register
class Dedup(GlobalStage):
    """Drop duplicate records, keeping the first of each group (input order)."""

    type: Literal["dedup"] = "dedup"
    column: str = Field("text", description="the column compared")
    method: Literal["exact", "minhash", "semantic"] = Field(
        "exact",
        description="exact: identical normalised text; minhash: near-duplicates by "
        "shingle Jaccard; semantic: embedding cosine similarity",
    )
    ngram: int = Field(5, ge=1, description="minhash: shingle size in `unit`s")
    unit: Literal["word", "char"] = Field("word", description="minhash: shingle unit")
    bands: int = Field(14, ge=1, description="minhash: LSH bands")
    rows: int = Field(8, ge=1, description="minhash: signature rows per band")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"minhash: estimated Jaccard a candidate pair must reach (default "
        f"{MINHASH_THRESHOLD}; 0 keeps every LSH candidate); semantic: cosine (default "
        f"{SEMANTIC_THRESHOLD})",
    )
    clusters: Literal["keep_first", "components"] = Field(
        "keep_first",
        description="minhash: keep_first: drop a record similar to one already kept "
        "(the reject names it); components: drop all but the first of each connected "
        "component of similar pairs (chains allowed)",
    )
    seed: int = Field(0, description="minhash: seed of the hash permutations")
    batch_size: int = Field(2048, ge=1, description="records hashed or embedded together")
    model: str = Field("all-MiniLM-L6-v2", description="semantic: sentence-transformers model")
    device: str = Field("cpu", description="semantic: torch device")
    against: Annotated[list[str], GLOB] = Field(
        default_factory=list,
        description="earlier run directories (their final data) and index files "
        "(`save_index`); a new record duplicating one of theirs is dropped, naming it",
    )
    save_index: Annotated[str | None, RUN] = Field(
        None,
        description="write the hashes (semantic: embeddings) of `against` and of the kept "
        "records to this .parquet file in the run directory, for a later run's `against`",
    )

    @field_validator("save_index")
    @classmethod
    def _index_inside_the_run(cls, v: str | None) -> str | None:
        from smolforge.store import run_path_problem

        if v is None:
            return v
        problem = run_path_problem(v)
        if problem is None and not v.endswith(".parquet"):
            problem = "must end in .parquet"
        if problem is not None:
            raise ValueError(f"save_index {problem} (the index is written in the run directory)")
        return v

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def requires(self) -> set[str]:
        return {self.column}

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return dedup_index.digest(self, ctx) if self.against else None

    def artefacts(self, ctx: StageContext) -> list[Path]:
        return [self._index_path(ctx)] if self.save_index else []

    def _index_path(self, ctx: StageContext) -> Path:
        from smolforge.store import run_path

        if ctx.run_dir is None or self.save_index is None:
            raise ValueError("save_index: a stage writes files only inside a run directory")
        return run_path(Path(ctx.run_dir), self.save_index)

    def _run_label(self, ctx: StageContext) -> str:
        """How a saved index names this run's records: the run directory."""
        return str(ctx.run_dir)

    def _threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return SEMANTIC_THRESHOLD if self.method == "semantic" else MINHASH_THRESHOLD

    def _texts(self, records: list[Record]) -> list[str]:
        return [str(r.get(self.column) or "") for r in records]

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        if self.method == "minhash":
            yield from self._minhash(shards, ctx)
        elif self.method == "semantic":
            yield from self._semantic(shards, ctx)
        else:
            yield from self._exact(shards, ctx)

    def _exact(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        # Only 16-byte digests and ids are held, never the texts.
        old = dedup_index.load_exact(self, ctx)
        seen: dict[bytes, str] = {}
        for i in range(len(shards)):
            reasons: dict[int, str] = {}
            for j, rec in enumerate(shards.columns(i, ["id", self.column])):
                digest = dedup_index.exact_digest(str(rec.get(self.column) or ""))
                if (k := old.digests.get(digest)) is not None:
                    reasons[j] = f"exact duplicate of {old.label(k)}"
                    continue
                first = seen.setdefault(digest, rec["id"])
                if first != rec["id"]:
                    reasons[j] = f"exact duplicate of {first}"
            yield i, Result.select(shards.table(i), reasons)
        if self.save_index:
            self._save_exact(old, seen, ctx)

    def _save_exact(self, old: dedup_index.OldRecords, seen: dict[bytes, str],
                    ctx: StageContext) -> None:
        """The first entry of each old digest, then the new kept records in order."""
        import pyarrow as pa

        def parts() -> Iterator[list[pa.Array]]:
            step = dedup_index.ROW_GROUP
            firsts = list(old.digests.items())
            for s in range(0, len(firsts), step):
                part = firsts[s : s + step]
                runs, ids = old.run_ids(np.array([k for _, k in part], dtype=np.int64))
                yield [runs, ids, pa.array([d for d, _ in part], type=pa.binary(16))]
            new = [(d, rid) for d, rid in seen.items() if d not in old.digests]
            label = self._run_label(ctx)
            for s in range(0, len(new), step):
                part = new[s : s + step]
                yield [pa.array([label] * len(part), type=pa.string()),
                       pa.array([str(r) for _, r in part], type=pa.string()),
                       pa.array([d for d, _ in part], type=pa.binary(16))]

        dedup_index.write_index(self._index_path(ctx), self, parts())

    def _minhash(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        from smolforge.text.minhash import MinHasher, MinHashLSH, estimated_jaccard

        hasher = MinHasher(num_perm=self.num_perm, ngram=self.ngram, unit=self.unit, seed=self.seed)
        lsh = MinHashLSH(self.bands, self.rows, hasher)
        # The old records come first (entries 0..n_old-1), as hashes only.
        old = dedup_index.load_minhash(self, ctx, lsh)
        n_old = old.n
        ids: list[str] = []
        sizes: list[int] = []
        # Pass 1: signatures only (ids and the compared column, one shard at a time),
        # texts hashed in batches of `batch_size` whatever the shard size.
        pending: list[str] = []
        for i in range(len(shards)):
            recs = shards.columns(i, ["id", self.column])
            ids.extend(str(r["id"]) for r in recs)
            sizes.append(len(recs))
            pending += self._texts(recs)
            del recs
            while len(pending) >= self.batch_size:
                lsh.add(pending[: self.batch_size])
                del pending[: self.batch_size]
        if pending:
            lsh.add(pending)
        threshold = self._threshold()
        dups = lsh.duplicates(threshold, self.clusters, fixed=n_old)
        new_root = dups.root[n_old:]
        n_drop = int((new_root != np.arange(n_old, n_old + len(ids))).sum())
        log.info(
            "minhash dedup (%s): %d records (%d kept before), %d candidate pairs, %d verified, "
            "%d dropped", self.clusters, len(ids), n_old, dups.candidates, dups.edges, n_drop,
        )

        def name(k: int) -> str:
            return ids[k - n_old] if k >= n_old else old.label(k)

        unit = f"{self.ngram}-{self.unit} shingles"
        rule = f">= {threshold:g}" if threshold > 0 else "LSH band match"
        sig16 = lsh.signatures16() if self.clusters == "components" else None  # a copy
        # Pass 2: each shard minus its duplicates, one shard at a time.
        offset = n_old
        for i in range(len(shards)):
            table = shards.table(i)
            if table.num_rows != sizes[i]:
                raise RuntimeError(f"shard {i} changed between passes")
            g = np.arange(offset, offset + table.num_rows)
            dropped = np.flatnonzero(dups.root[g] != g)
            reasons: dict[int, str] = {}
            for j in dropped.tolist():
                d = int(g[j])
                root, link = int(dups.root[d]), int(dups.link[d])
                if link == root:
                    reasons[j] = (
                        f"near-duplicate of {name(root)} (minhash: estimated Jaccard "
                        f"{dups.sim[d]:.2f} {rule}, {unit})"
                    )
                else:
                    assert sig16 is not None  # links exist only with components
                    sl = float(estimated_jaccard(sig16, np.array([d]), np.array([link]))[0])
                    reasons[j] = (
                        f"near-duplicate of {name(root)} via {name(link)} (minhash: estimated "
                        f"Jaccard {sl:.2f} {rule} with {name(link)}, {dups.sim[d]:.2f} with "
                        f"{name(root)}, {unit})"
                    )
            offset += table.num_rows
            yield i, Result.select(table, reasons)
        if self.save_index:
            self._save_minhash(lsh, dups.root, old, ids, ctx)

    def _save_minhash(self, lsh: Any, root: np.ndarray, old: dedup_index.OldRecords,
                      ids: list[str], ctx: StageContext) -> None:
        """Every old entry, then the new kept records, in order (those with shingles:
        a record without any is never a near-duplicate)."""
        import pyarrow as pa

        n_old = old.n
        has = lsh.has_shingles()
        everything = np.arange(len(root))
        keep = np.flatnonzero(((everything < n_old) | (root == everything)) & has)
        label = self._run_label(ctx)

        def parts() -> Iterator[list[pa.Array]]:
            for s in range(0, len(keep), dedup_index.ROW_GROUP):
                part = keep[s : s + dedup_index.ROW_GROUP]
                keys, sig, _ = lsh.entries(part)
                is_old = part < n_old
                runs, old_ids = old.run_ids(part[is_old])
                new = part[~is_old] - n_old
                yield [pa.concat_arrays([runs, pa.array([label] * len(new), type=pa.string())]),
                       pa.concat_arrays([old_ids, pa.array([ids[k] for k in new.tolist()],
                                                           type=pa.string())]),
                       dedup_index.fixed_lists(keys.T, self.bands, pa.uint64()),
                       dedup_index.fixed_lists(sig, self.num_perm, pa.uint16())]

        dedup_index.write_index(self._index_path(ctx), self, parts())

    def _semantic(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        from smolforge.embed import embed

        threshold = self._threshold()
        kept = _Matrix()
        kept_ids: list[str] = []
        old, old_vecs = dedup_index.load_semantic(self, ctx)
        kept.extend(old_vecs)  # kept before every new record, as rows 0..old.n-1

        def name(k: int) -> str:
            return kept_ids[k - old.n] if k >= old.n else old.label(k)

        for i in range(len(shards)):
            recs = shards[i]
            res = Result()
            for s in range(0, len(recs), self.batch_size):
                part = recs[s : s + self.batch_size]
                vecs = embed(self._texts(part), self.model, device=self.device)
                for rec, (k, sim) in zip(part, _greedy(vecs, kept, threshold)):
                    if k < 0:
                        kept_ids.append(str(rec["id"]))
                        res.keep(rec)
                    else:
                        res.reject(
                            rec,
                            f"semantic duplicate of {name(k)} "
                            f"(cosine {sim:.3f} >= {threshold:g}, {self.model})",
                        )
            yield i, res
        if self.save_index:
            self._save_semantic(kept, kept_ids, old, ctx)

    def _save_semantic(self, kept: _Matrix, new_ids: list[str], old: dedup_index.OldRecords,
                       ctx: StageContext) -> None:
        """Every old embedding, then the new kept records', in order."""
        import pyarrow as pa

        vecs = kept.view()
        dim = vecs.shape[1] if len(vecs) else 0
        label = self._run_label(ctx)

        def parts() -> Iterator[list[pa.Array]]:
            step = dedup_index.ROW_GROUP
            for s in range(0, old.n, step):
                runs, ids = old.run_ids(np.arange(s, min(old.n, s + step)))
                yield [runs, ids, dedup_index.fixed_lists(vecs[s : s + len(ids)], dim, pa.float32())]
            for s in range(0, len(new_ids), step):
                part = new_ids[s : s + step]
                rows = vecs[old.n + s : old.n + s + len(part)]
                yield [pa.array([label] * len(part), type=pa.string()),
                       pa.array(part, type=pa.string()),
                       dedup_index.fixed_lists(rows, dim, pa.float32())]

        dedup_index.write_index(self._index_path(ctx), self, parts(), dim=dim)


class _Matrix:
    """Rows appended over time (kept embeddings), stored with doubling capacity."""

    def __init__(self) -> None:
        self._data = np.zeros((0, 0), dtype=np.float32)
        self.n = 0

    def view(self) -> np.ndarray:
        return self._data[: self.n]

    def extend(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        need = self.n + len(rows)
        if need > len(self._data):
            grown = np.zeros((max(64, 2 * self.n, need), rows.shape[1]), dtype=np.float32)
            if self.n:
                grown[: self.n] = self.view()
            self._data = grown
        self._data[self.n : need] = rows
        self.n = need

    def append(self, row: np.ndarray) -> None:
        if self.n == len(self._data):
            grown = np.zeros((max(64, 2 * self.n), len(row)), dtype=np.float32)
            if self.n:
                grown[: self.n] = self.view()
            self._data = grown
        self._data[self.n] = row
        self.n += 1


def _greedy(vecs: np.ndarray, kept: _Matrix, threshold: float) -> list[tuple[int, float]]:
    """For each row in order: (-1, 0) if kept (and appended to `kept`), else
    (index of the most similar kept row, its cosine)."""
    out: list[tuple[int, float]] = []
    prior = kept.n
    if prior:
        sims = vecs @ kept.view().T
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(len(vecs)), best]
    inner = vecs @ vecs.T
    batch_kept: list[int] = []  # rows of this batch kept so far
    for r in range(len(vecs)):
        cand_k, cand_sim = -1, -1.0
        if prior and best_sim[r] >= threshold:
            cand_k, cand_sim = int(best[r]), float(best_sim[r])
        if batch_kept:
            row = inner[r, batch_kept]
            j = int(row.argmax())
            if row[j] >= threshold and row[j] > cand_sim:
                cand_k, cand_sim = prior + j, float(row[j])
        if cand_k >= 0:
            out.append((cand_k, cand_sim))
        else:
            batch_kept.append(r)
            kept.append(vecs[r])
            out.append((-1, 0.0))
    return out
