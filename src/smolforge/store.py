"""The run directory: per-stage shard checkpoints, written atomically.

    run_dir/
      recipe.yaml, manifest.json, cache.sqlite
      stages/NN-<name>/FINGERPRINT          what produced this stage's output
      stages/NN-<name>/shard-00003.parquet  kept records of input shard 3
      stages/NN-<name>/shard-00003.rejects.parquet
      stages/NN-<name>/shard-00003.done     JSON stats; written last = shard done
      stages/NN-<name>/_DONE                the whole stage is done
      data/*.parquet, rejects/rejects.parquet   the final dataset and every drop

Every file is written to a temporary name, fsynced and renamed, so a `kill -9`
leaves either the old state or the new one. A stage directory whose FINGERPRINT
differs from the current recipe's is wiped and recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.stages.base import Record, Reject


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def records_to_table(records: list[Record]) -> pa.Table:
    """Records -> Arrow. `meta` is stored as a JSON string (its keys differ from
    stage to stage); a column whose values have mixed types is stored as JSON."""
    columns: dict[str, list[Any]] = {}
    for rec in records:
        for k in rec:
            columns.setdefault(k, [])
    for k, values in columns.items():
        values.extend(r.get(k) for r in records)
    arrays, names = [], []
    for k, values in columns.items():
        if k == "meta":
            values = [json.dumps(v, ensure_ascii=False, default=str) for v in values]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values])
        arrays.append(arr)
        names.append(k)
    return pa.Table.from_arrays(arrays, names=names)


def table_to_records(table: pa.Table) -> list[Record]:
    rows = table.to_pylist()
    if "meta" in table.column_names:
        for r in rows:
            r["meta"] = json.loads(r["meta"]) if r["meta"] else {}
    return rows


def rejects_to_table(rejects: list[Reject], stage: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([str(r.record.get("id", "")) for r in rejects], pa.string()),
            "stage": pa.array([stage] * len(rejects), pa.string()),
            "reason": pa.array([r.reason for r in rejects], pa.string()),
            "record": pa.array(
                [json.dumps(r.record, ensure_ascii=False, default=str) for r in rejects], pa.string()
            ),
        }
    )


class StageDir:
    """One stage's checkpoints."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def shard_path(self, j: int, suffix: str = ".parquet") -> Path:
        return self.path / f"shard-{j:05d}{suffix}"

    def shard_done(self, j: int) -> bool:
        return self.shard_path(j, ".done").exists()

    def shard_stats(self, j: int) -> dict:
        return json.loads(self.shard_path(j, ".done").read_text())

    def done_shards(self) -> list[int]:
        return sorted(int(p.name[6:11]) for p in self.path.glob("shard-*.done"))

    def read_shard(self, j: int, columns: list[str] | None = None) -> list[Record]:
        path = self.shard_path(j)
        if columns is not None:
            present = set(pq.read_schema(path).names)
            columns = [c for c in columns if c in present]
        return table_to_records(pq.read_table(path, columns=columns))

    def read_rejects(self, j: int) -> pa.Table:
        return pq.read_table(self.shard_path(j, ".rejects.parquet"))

    def write_shard(
        self, j: int, kept: list[Record], rejected: list[Reject], stage: str, stats: dict
    ) -> None:
        atomic_write_table(self.shard_path(j, ".rejects.parquet"), rejects_to_table(rejected, stage))
        atomic_write_table(self.shard_path(j), records_to_table(kept))
        atomic_write_json(self.shard_path(j, ".done"), stats)

    @property
    def done(self) -> dict | None:
        marker = self.path / "_DONE"
        return json.loads(marker.read_text()) if marker.exists() else None

    def mark_done(self, info: dict) -> None:
        atomic_write_json(self.path / "_DONE", info)

    def columns(self) -> list[str]:
        for j in self.done_shards():
            return [n for n in pq.read_schema(self.shard_path(j)).names]
        return []


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "stages").mkdir(exist_ok=True)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def stage_dir(self, index: int, name: str, fingerprint: str) -> StageDir:
        """The stage's directory, wiped first if it holds another recipe's output."""
        path = self.root / "stages" / f"{index:02d}-{name}"
        fp_file = path / "FINGERPRINT"
        if path.exists() and (not fp_file.exists() or fp_file.read_text().strip() != fingerprint):
            shutil.rmtree(path)
        if not path.exists():
            tmp = path.with_name(path.name + ".new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "FINGERPRINT").write_text(fingerprint)
            os.replace(tmp, path)
        return StageDir(path, fingerprint)

    def prune_stages(self, keep: Iterable[str]) -> None:
        """Remove directories of stages no longer in the recipe."""
        keep = set(keep)
        for p in (self.root / "stages").iterdir():
            if p.is_dir() and p.name not in keep:
                shutil.rmtree(p)

    def finalize(self, stage_dirs: list[tuple[str, StageDir]], n_shards: int) -> dict:
        """Write data/ from the last stage and rejects/ from every stage."""
        last = stage_dirs[-1][1]
        tables = [pq.read_table(last.shard_path(j)) for j in range(n_shards)]
        tables = [t for t in tables if t.num_rows]
        data = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({"id": pa.array([], pa.string())})
        rejects = [sd.read_rejects(j) for _, sd in stage_dirs for j in sd.done_shards()]
        rejects = [t for t in rejects if t.num_rows]
        rej = pa.concat_tables(rejects) if rejects else rejects_to_table([], "")
        for sub, name, table in (("data", "train-00000-of-00001.parquet", data), ("rejects", "rejects.parquet", rej)):
            d = self.root / sub
            d.mkdir(exist_ok=True)
            for old in d.glob("*.parquet"):
                if old.name != name:
                    old.unlink()
            atomic_write_table(d / name, table)
        return {"rows": data.num_rows, "rejected": rej.num_rows, "columns": data.column_names}
