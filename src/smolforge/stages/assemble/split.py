"""`split`: a seeded train / held-out split that near-duplicates cannot cross.

A random split of synthetic data leaks: a teacher asked for many items from the same
seed lists writes near-copies, and a held-out item whose near-twin is in the train
split measures memorisation, not generalisation (Lee et al. 2022, "Deduplicating
Training Data Makes Language Models Better", https://arxiv.org/abs/2107.06499, found
such train/test overlap in standard splits). So the split is made over *groups*:
records are linked when their MinHash-estimated Jaccard (word n-gram shingles, the
same `smolforge.text.minhash` LSH that `dedup` uses) reaches `threshold`, the connected
components are the groups, and whole groups go to one side. No verified similar pair
is split across, also through chains (A~B~C all land together).

Groups are ordered by a hash of (seed, the group's smallest record id), so the split
is a pure function of the ids, the texts and the seed (it does not depend on shard
layout or record order), and test groups are taken in that order until `test_size` records
are held out. Nothing is dropped: each record gets a `split` column ("train" or
"test", names configurable), which `export`, `smolforge train` and `smolforge eval`
honour. Defaults: 10% held out, threshold 0.5 on word 3-grams (short texts such as
complaints share few 5-grams even when they are rewrites of each other), 56 bands x 2
rows so that a pair at Jaccard 0.5 is a candidate with probability ~1.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import GlobalStage, Record, Result, Shards
from smolforge.text import flatten

log = logging.getLogger(__name__)




def group_order(seed: int, group_ids: list[str]) -> list[int]:
    """Order of the groups: by sha256(seed, the group's smallest id)."""
    keys = [hashlib.sha256(f"{seed}\0{i}".encode()).digest() for i in group_ids]
    return sorted(range(len(group_ids)), key=lambda g: (keys[g], group_ids[g]))


def assign(ids: list[str], texts: list[str], *, test_size: float, seed: int, threshold: float,
           ngram: int, unit: Literal["word", "char"], bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(is_test bool [n], group label [n]: the index of a record of the group)."""
    from smolforge.text.minhash import MinHasher, MinHashLSH

    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    lsh = MinHashLSH(bands, rows, MinHasher(num_perm=bands * rows, ngram=ngram, unit=unit, seed=0))
    for s in range(0, n, 4096):
        lsh.add(texts[s : s + 4096])
    root = lsh.duplicates(threshold, "components").root
    # Records with no shingle (empty or shorter than `ngram` words) are linked only to
    # exact copies of themselves (normalised), so empty texts do not form one blob.
    has = np.array([len(t.split()) >= (ngram if unit == "word" else 1) for t in texts])
    if not has.all():
        from smolforge.text import normalize

        first_of: dict[str, int] = {}
        for i in np.flatnonzero(~has).tolist():
            root[i] = first_of.setdefault(normalize(texts[i]), i)
    labels, inverse = np.unique(root, return_inverse=True)
    sizes = np.bincount(inverse)
    target = test_size if test_size >= 1 else round(test_size * n)
    target = int(min(max(target, 1 if n > 1 else 0), n - 1 if n > 1 else 0))
    is_test_group = np.zeros(len(labels), dtype=bool)
    held = 0
    # A group's key is its smallest id, so the order does not depend on input order.
    key: list[str | None] = [None] * len(labels)
    for i, g in enumerate(inverse.tolist()):
        if key[g] is None or ids[i] < key[g]:  # type: ignore[operator]
            key[g] = ids[i]
    for g in group_order(seed, [str(k) for k in key]):
        if held >= target:
            break
        if held + sizes[g] > target and held > 0 and sizes[g] > 1:
            continue  # a big group would overshoot: try smaller ones
        is_test_group[g] = True
        held += int(sizes[g])
    return is_test_group[inverse], root


@stages.register
class Split(GlobalStage):
    """Add a `split` column: seeded train / test, near-duplicates kept on one side."""

    type: Literal["split"] = "split"
    column: str | list[str] = Field("text", description="column(s) compared for near-duplicates")
    test_size: float = Field(0.1, gt=0, description="held-out share (< 1) or count (>= 1) of records")
    seed: int = Field(0, description="seed of the split")
    threshold: float = Field(0.5, gt=0, le=1, description="estimated Jaccard that links two records")
    ngram: int = Field(3, ge=1, description="shingle size in `unit`s")
    unit: Literal["word", "char"] = Field("word", description="shingle unit")
    bands: int = Field(56, ge=1, description="LSH bands")
    rows: int = Field(2, ge=1, description="signature rows per band")
    output: str = Field("split", description="the column written")
    train_name: str = Field("train", description="value for the training split")
    test_name: str = Field("test", description="value for the held-out split")

    @model_validator(mode="after")
    def _check(self) -> Split:
        if self.test_size >= 1 and self.test_size != int(self.test_size):
            raise ValueError("test_size: a share below 1 or a whole count")
        if self.train_name == self.test_name:
            raise ValueError("train_name and test_name must differ")
        return self

    def _columns(self) -> list[str]:
        return [self.column] if isinstance(self.column, str) else list(self.column)

    def requires(self) -> set[str]:
        return set(self._columns())

    def provides(self) -> set[str]:
        return {self.output}

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        cols = self._columns()
        ids: list[str] = []
        texts: list[str] = []
        sizes: list[int] = []
        for i in range(len(shards)):
            recs = shards.columns(i, ["id", *cols])
            sizes.append(len(recs))
            ids += [str(r["id"]) for r in recs]
            texts += ["\n".join(flatten(r.get(c)) for c in cols) for r in recs]
        is_test, root = assign(ids, texts, test_size=self.test_size, seed=self.seed,
                               threshold=self.threshold, ngram=self.ngram, unit=self.unit,
                               bands=self.bands, rows=self.rows)
        del texts
        log.info("split: %d records, %d held out, %d groups", len(ids), int(is_test.sum()),
                 len(np.unique(root)))
        linked = np.bincount(root, minlength=len(ids))[root] > 1
        offset = 0
        for i in range(len(shards)):
            recs: list[Record] = shards[i]
            if len(recs) != sizes[i]:
                raise RuntimeError(f"shard {i} changed between passes")
            res = Result()
            for j, rec in enumerate(recs):
                k = offset + j
                rec[self.output] = self.test_name if is_test[k] else self.train_name
                res.keep(rec)
            n_test = int(is_test[offset : offset + len(recs)].sum())
            res.counts = {"train": len(recs) - n_test, "test": n_test,
                          "linked": int(linked[offset : offset + len(recs)].sum())}
            offset += len(recs)
            yield i, res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        n = {self.train_name: 0, self.test_name: 0}
        for i in range(len(out)):
            for r in out.columns(i, [self.output]):
                n[r[self.output]] = n.get(r[self.output], 0) + 1
        total = sum(n.values())
        return {"counts": n, "test_share": round(n[self.test_name] / total, 4) if total else 0.0}
