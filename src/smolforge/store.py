"""The run directory: per-stage shard checkpoints, each verified by its hash.

    run_dir/
      recipe.yaml, manifest.json, cache.sqlite, .lock
      stages/NN-<name>/FINGERPRINT          what produced this stage's output
      stages/NN-<name>/shard-00003.parquet  kept records of input shard 3
      stages/NN-<name>/shard-00003.rejects.parquet   (only when something was dropped)
      stages/NN-<name>/shard-00003.done     JSON: stats, sha256 of the files, input digest
      stages/NN-<name>/_DONE                the whole stage is done
      data/*.parquet, rejects/rejects.parquet   the final dataset and every drop

Trust rules (datatrove keeps a marker per finished task; we also keep hashes):
- A shard is committed by writing its files under temporary names and renaming
  them, the `.done` marker last. The marker records each file's sha256, the
  shard's index and the digest of the input it was computed from, so a truncated,
  flipped or swapped file is caught when the shard is verified and recomputed
  instead of read. Files are not fsynced one by one: a torn write after a power
  loss shows up as a hash mismatch, which is why the hashes exist.
- smolforge only deletes what it wrote: files whose names follow the patterns
  above inside directories it created (they hold a FINGERPRINT), and the output
  files listed in the manifest when they follow the output names above. A path
  read from a file (the manifest's `data.files`) is checked against that naming
  scheme before anything is removed, so `../x` or `/etc/x` there is ignored. No
  symbolic link inside a run directory is followed: a link where smolforge keeps
  its own files is refused. A non-empty directory that is not a run is refused,
  and one process at a time holds a run (an OS lock the kernel releases when the
  process dies, even by kill -9).
- Every file is written under a temporary name (created exclusively, never
  through a link) and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.paths import STAGE_NAME
from smolforge.records import (  # noqa: F401 - the Arrow conversion's old import path
    JSON_FIELD,
    REJECTS_SCHEMA,
    Record,
    Reject,
    append_rows,
    has_empty_struct,
    is_json_field,
    json_array,
    plain_rows,
    records_to_table,
    rejects_to_table,
    table_bytes,
    table_to_records,
)

RUN_FORMAT = "smolforge-run/1"
# What smolforge writes into a stage directory; nothing else there is ever deleted.
_STAGE_FILE = re.compile(
    r"^(FINGERPRINT|_DONE|shard-\d{5}(\.parquet|\.rejects\.parquet|\.done)|\..+\.\d+\.tmp)$"
)
# What a run killed during start-up (before its manifest) may have left.
_START_FILES = {".lock", "stages", "cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm"}
# Every name smolforge writes at the top of a run directory; none may be a link.
_RUN_FILES = _START_FILES | {"manifest.json", "recipe.yaml", "data", "rejects", "logs"}
# A stage's checkpoint directory, stages/NN-<name> (or NN-<name>.new while it is made).
_STAGE_DIR = re.compile(r"^\d{2,}-" + STAGE_NAME.pattern[1:-1] + r"(\.new)?$")
# The outputs `finalize` writes: the only names of the manifest's `data.files` a re-run removes.
OUTPUT_FILE = re.compile(r"^(data/train-\d{5}-of-\d{5}\.parquet|rejects/rejects\.parquet)$")


class RunDirError(ValueError):
    """--out names a directory smolforge must not write into (exit 2)."""


class RunLocked(RuntimeError):
    """Another process is running in this run directory (exit 1)."""


class ShardDamaged(RuntimeError):
    """A checkpoint file does not match the hash recorded when it was committed."""


@contextlib.contextmanager
def atomic_file(path: Path, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """A new file for `path`: written under a temporary name next to it, renamed
    over `path` when the block ends without error, removed when it fails. The
    temporary file is created exclusively and never through a symbolic link, and
    the rename replaces a link at `path` itself, not its target: a kill or a full
    disk leaves the old file whole and nothing outside written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # our own name: a stale one (or a planted link; its target is untouched)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    with atomic_file(path, fsync=fsync) as f:
        f.write(data)


def read_regular(path: Path) -> bytes:
    """A file smolforge wrote, read only when it is a regular file and not a link:
    a checkpoint, marker or manifest swapped for a link to /dev/zero or for a FIFO
    is an OSError (damaged), not an endless read or a hang."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return f.read()


def atomic_write_json(path: Path, obj: Any, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode(), fsync=fsync)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StageDir:
    """One stage's checkpoints."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def shard_path(self, j: int, suffix: str = ".parquet") -> Path:
        return self.path / f"shard-{j:05d}{suffix}"

    def marker(self, j: int) -> dict | None:
        """The shard's commit record, or None if the shard is not committed."""
        try:
            return json.loads(read_regular(self.shard_path(j, ".done")))
        except (OSError, ValueError):
            return None

    def shard_done(self, j: int) -> bool:
        return self.shard_path(j, ".done").exists()

    def shard_stats(self, j: int) -> dict:
        m = self.marker(j) or {}
        return m.get("stats", {})

    def records_out(self, n: int | None = None) -> int:
        """Records the stage kept over its first `n` shards (default: all it has done)."""
        n = self.done["shards"] if n is None else n
        return sum(self.shard_stats(j)["out"] for j in range(n))

    def digest(self, j: int) -> str | None:
        """The committed data file's hash: what later stages record as their input."""
        m = self.marker(j)
        return m["files"]["data"] if m and "files" in m else None

    def done_shards(self) -> list[int]:
        return sorted(int(p.name[6:11]) for p in self.path.glob("shard-*.done"))

    def problem(self, j: int, input_digest: str | None) -> str | None:
        """Why committed shard `j` can't be trusted (None: it can). Checks the
        recorded index, the input it was computed from and both files' hashes."""
        m = self.marker(j)
        if m is None:
            return "its commit marker is missing or unreadable"
        if m.get("shard") != j or m.get("fingerprint") != self.fingerprint or "files" not in m:
            return "its commit marker belongs to another shard or stage"
        if input_digest is not None and m.get("input") != input_digest:
            return "its input changed since it was computed"
        for kind, suffix in (("data", ".parquet"), ("rejects", ".rejects.parquet")):
            want = m["files"].get(kind)
            path = self.shard_path(j, suffix)
            if want is None:
                continue
            try:
                got = sha256(read_regular(path))
            except FileNotFoundError:
                return f"{path.name} is missing"
            except OSError as e:
                return f"{path.name} cannot be read ({e.strerror or e})"
            if got != want:
                return f"{path.name} does not match the hash recorded when it was written"
        return None

    def discard(self, j: int) -> None:
        """Forget shard `j` (marker first, so a crash in between leaves it undone)."""
        for suffix in (".done", ".parquet", ".rejects.parquet"):
            with contextlib.suppress(FileNotFoundError):
                self.shard_path(j, suffix).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.path / "_DONE").unlink()

    def _read_verified(self, j: int, kind: str, suffix: str,
                       columns: list[str] | None = None) -> pa.Table | None:
        m = self.marker(j)
        path = self.shard_path(j, suffix)
        want = m["files"].get(kind) if m and "files" in m else None
        if want is None:
            if m is not None and kind == "rejects":
                return None  # nothing was dropped in this shard
            raise ShardDamaged(f"{path}: not committed")
        try:
            data = read_regular(path)
        except OSError as e:
            raise ShardDamaged(f"{path}: {e.strerror or e}") from e
        if sha256(data) != want:
            raise ShardDamaged(f"{path}: content does not match its recorded hash")
        return read_parquet(pa.BufferReader(data), columns)

    def read_table(self, j: int, columns: list[str] | None = None) -> pa.Table:
        table = self._read_verified(j, "data", ".parquet", columns)
        assert table is not None
        return table

    def read_shard(self, j: int, columns: list[str] | None = None) -> list[Record]:
        return table_to_records(self.read_table(j, columns))

    def read_rejects(self, j: int) -> pa.Table | None:
        return self._read_verified(j, "rejects", ".rejects.parquet")

    def schema(self, j: int) -> pa.Schema:
        return pq.read_schema(self.shard_path(j))

    def write_shard(
        self,
        j: int,
        kept: list[Record] | pa.Table,
        rejected: list[Reject],
        stage: str,
        stats: dict,
        *,
        input_digest: str | None = None,
        schema: pa.Schema | None = None,
    ) -> str:
        """Commit shard `j`; returns the data file's hash."""
        files: dict[str, str] = {}
        table = kept if isinstance(kept, pa.Table) else records_to_table(kept, schema)
        data = table_bytes(table)
        files["data"] = sha256(data)
        if rejected:
            rej = table_bytes(rejects_to_table(rejected, stage))
            files["rejects"] = sha256(rej)
            atomic_write_bytes(self.shard_path(j, ".rejects.parquet"), rej)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.shard_path(j, ".rejects.parquet").unlink()
        atomic_write_bytes(self.shard_path(j), data)
        marker = {"shard": j, "fingerprint": self.fingerprint, "input": input_digest,
                  "files": files, "stats": stats}
        atomic_write_json(self.shard_path(j, ".done"), marker)
        return files["data"]

    @property
    def done(self) -> dict | None:
        marker = self.path / "_DONE"
        try:
            return json.loads(read_regular(marker))
        except (OSError, ValueError):
            return None

    def mark_done(self, info: dict) -> None:
        atomic_write_json(self.path / "_DONE", info)

    def unmark_done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / "_DONE").unlink()

    def columns(self) -> list[str]:
        for j in self.done_shards():
            return list(self.schema(j).names)
        return []


def no_link(path: Path) -> None:
    """Refuse a symbolic link where smolforge keeps its own files: writing or
    removing through it would touch what smolforge did not write."""
    if path.is_symlink():
        raise RunDirError(f"{path}: is a symbolic link; smolforge does not follow links where it "
                          "keeps its own files (remove the link, or choose another --out)")


def own_file(root: Path, rel: Any, pattern: re.Pattern) -> Path | None:
    """`root/rel` when `rel`, a path read from a file, follows smolforge's naming
    `pattern` (so it has no `..` and is not absolute) and nothing on the way, the
    file included, is a symbolic link; else None: not ours, never touched."""
    if not isinstance(rel, str) or not pattern.fullmatch(rel):
        return None
    p = root
    for part in rel.split("/"):
        p = p / part
        if p.is_symlink():
            return None
    return p


def run_path_problem(rel: str) -> str | None:
    """Why `rel` can't name a file a stage writes in the run directory (None: it
    can): it must be relative, stay inside (no `..`), and keep clear of the run's
    own files (manifest, stages/, data/, ...) and of hidden names."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith(("/", "~")):
        return "must be a relative path inside the run directory"
    if ".." in parts:
        return "must stay inside the run directory (no '..')"
    if parts[0] in _RUN_FILES or any(x.startswith(".") for x in parts):
        return f"{parts[0]!r} is where the run keeps its own files" if parts[0] in _RUN_FILES \
            else "no part of it may start with '.'"
    return None


def run_path(root: Path, rel: str) -> Path:
    """`root/rel` for a file a stage writes: `rel` as `run_path_problem` allows,
    and no symbolic link on the way (RunDirError otherwise)."""
    if (problem := run_path_problem(rel)) is not None:
        raise RunDirError(f"{rel!r}: {problem}")
    p = root
    for part in PurePosixPath(rel).parts:
        p = p / part
        no_link(p)
    return p


def _remove_own_dir(path: Path) -> None:
    """Delete the files smolforge wrote in a stage directory, then the directory
    if nothing else is left in it (a user's file there keeps it). A link is never
    followed: not the directory, not a file in it."""
    if path.is_symlink() or not _STAGE_DIR.match(path.name):
        return
    for p in path.iterdir():
        if _STAGE_FILE.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _valid_manifest(obj: Any) -> bool:
    return isinstance(obj, dict) and (obj.get("format") == RUN_FORMAT or "attempts" in obj) \
        and isinstance(obj.get("attempts", []), list)


def _has_checkpoints(root: Path) -> bool:
    """Whether `stages/` holds at least one stage directory smolforge made."""
    stages = root / "stages"
    if stages.is_symlink() or not stages.is_dir():
        return False
    return any(_STAGE_DIR.match(p.name) and not p.is_symlink() and (p / "FINGERPRINT").is_file()
               for p in stages.iterdir())


def run_state(root: Path) -> str:
    """What `root` (a non-empty directory) holds: "run"; "fresh" (only what a run
    killed before its manifest leaves); "orphan" (checkpoints whose manifest is
    missing: a run that can resume); "damaged" (a manifest.json that is not a
    readable run manifest, beside smolforge's files); "foreign" (anything else)."""
    mpath = root / "manifest.json"
    if mpath.exists() or mpath.is_symlink():
        try:
            obj = json.loads(read_regular(mpath))
        except (OSError, ValueError):  # unreadable, truncated, not JSON: damaged if beside our files
            ours = all(p.name in _RUN_FILES or _STAGE_FILE.match(p.name) for p in root.iterdir())
            return "damaged" if ours or _has_checkpoints(root) else "foreign"
        if _valid_manifest(obj):
            return "run"
        return "damaged" if _has_checkpoints(root) else "foreign"  # someone else's JSON
    stages = root / "stages"
    if (all(p.name in _START_FILES for p in root.iterdir())
            and (not stages.is_dir() or not any(stages.iterdir()))):
        return "fresh"
    return "orphan" if _has_checkpoints(root) else "foreign"


def is_run_dir(root: Path) -> bool:
    """Whether `root` holds a smolforge run (or only smolforge's own files)."""
    return run_state(root) in ("run", "fresh", "orphan")


def damaged_manifest(root: Path) -> str:
    """The message for a run whose manifest.json can't be read: what is wrong and
    how to resume (the checkpoints are verified by their hashes, so resuming
    without the manifest is safe; only the attempt history is lost)."""
    mpath = root / "manifest.json"
    return (f"{mpath}: the run's manifest is damaged (not a readable smolforge run manifest). "
            f"To resume the run, move it aside (mv {mpath} {mpath}.damaged) and re-run the same "
            "command: the checkpoints in stages/ are verified by their hashes and reused. "
            "Or choose another --out")


def load_manifest(root: str | Path) -> dict:
    """A run's manifest; RunDirError naming a missing or damaged one."""
    mpath = Path(root) / "manifest.json"
    try:
        obj = json.loads(read_regular(mpath))
    except FileNotFoundError:
        raise RunDirError(f"{root}: not a run directory (no manifest.json)") from None
    except (OSError, ValueError):
        obj = None
    if not _valid_manifest(obj):
        raise RunDirError(damaged_manifest(Path(root)))
    return obj


class RunStore:
    """A run directory, opened for one writer.

    `RunStore(root)` refuses a non-empty directory that is not a smolforge run, a
    run whose manifest is damaged, and a link where the run keeps its own files
    (RunDirError), and takes the run lock (RunLocked if another process has it).
    `orphan` is true for checkpoints found without their manifest (resumed)."""

    def __init__(self, root: str | Path, *, lock: bool = True):
        self.root = Path(root)
        self.orphan = False
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"{self.root}: exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()):
            state = run_state(self.root)
            if state == "damaged":
                raise RunDirError(damaged_manifest(self.root))
            if state == "foreign":
                raise RunDirError(
                    f"{self.root}: the directory is not empty and is not a smolforge run; "
                    "smolforge will not write into it (choose another --out)"
                )
            self.orphan = state == "orphan"
            for name in sorted(_RUN_FILES):
                no_link(self.root / name)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        if lock:
            self._lock()
        (self.root / "stages").mkdir(exist_ok=True)

    # ---------------------------------------------------------------- locking

    def _lock(self) -> None:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.read(fd, 32).decode().strip() or "?"
            finally:
                os.close(fd)
            raise RunLocked(f"{self.root}: run directory in use by pid {pid}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # ---------------------------------------------------------------- manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict:
        try:
            return json.loads(read_regular(self.manifest_path))
        except (OSError, ValueError):
            return {}

    def write_manifest(self, manifest: dict) -> None:
        manifest["format"] = RUN_FORMAT
        atomic_write_json(self.manifest_path, manifest, fsync=True)

    # ---------------------------------------------------------------- stages

    def stage_dir(self, index: int, name: str, fingerprint: str) -> StageDir:
        """The stage's directory; another recipe's checkpoints in it are removed first."""
        if not STAGE_NAME.fullmatch(name):
            raise ValueError(f"stage name {name!r}: letters, digits, _ and - only (it names a directory)")
        path = self.root / "stages" / f"{index:02d}-{name}"
        fp_file = path / "FINGERPRINT"
        no_link(path)
        no_link(path.with_name(path.name + ".new"))
        if path.exists():
            try:
                current = read_regular(fp_file).decode().strip()
            except (OSError, ValueError):
                current = None
            if current != fingerprint:
                _remove_own_dir(path)
        if not path.exists():
            tmp = path.with_name(path.name + ".new")
            if tmp.exists():
                _remove_own_dir(tmp)
            tmp.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(tmp / "FINGERPRINT", fingerprint.encode())
            os.replace(tmp, path)
        elif not fp_file.exists():  # a user's file kept the old directory alive
            atomic_write_bytes(fp_file, fingerprint.encode())
        return StageDir(path, fingerprint)

    def prune_stages(self, keep: Iterable[str]) -> None:
        """Remove checkpoints of stages no longer in the recipe (our files only)."""
        keep = set(keep)
        for p in (self.root / "stages").iterdir():
            if (p.name not in keep and _STAGE_DIR.match(p.name) and not p.is_symlink()
                    and (p / "FINGERPRINT").is_file()):
                _remove_own_dir(p)

    # ---------------------------------------------------------------- output

    def finalize(self, stage_dirs: list[tuple[str, StageDir]], n_shards: int,
                 previous: list[str] | None = None) -> dict:
        """Stream data/ from the last stage's shards and rejects/ from every stage's,
        one shard in memory at a time. `previous` lists the output files an earlier
        attempt wrote: the only old outputs that may be removed, and only those that
        follow the output names (`OUTPUT_FILE`), since the list is read from a file."""
        last = stage_dirs[-1][1]
        data_name = "data/train-00000-of-00001.parquet"
        rej_name = "rejects/rejects.parquet"
        schema = _unify([last.schema(j) for j in range(n_shards)])
        rows = _stream(self.root / data_name, schema,
                       (last.read_table(j) for j in range(n_shards)))
        rej_tables = (t for _, sd in stage_dirs for j in sd.done_shards()
                      if (t := sd.read_rejects(j)) is not None)
        rejected = _stream(self.root / rej_name, REJECTS_SCHEMA, rej_tables)
        for old in previous if isinstance(previous, list) else []:
            p = own_file(self.root, old, OUTPUT_FILE)
            if p is not None and old not in (data_name, rej_name):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        return {"rows": rows, "rejected": rejected, "columns": schema.names,
                "files": [data_name, rej_name]}


def data_files(root: str | Path) -> list[Path]:
    """The dataset files a run wrote (from its manifest), whatever else is in data/;
    only names that follow the output names are read (never a path out of the run)."""
    root = Path(root)
    try:
        files = json.loads(read_regular(root / "manifest.json"))["data"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list):
        files = [str(p.relative_to(root)) for p in sorted((root / "data").glob("train-*.parquet"))]
    return [p for f in files if isinstance(f, str) and f.startswith("data/")
            and (p := own_file(root, f, OUTPUT_FILE)) is not None and p.is_file()]


def read_data(root: str | Path, columns: list[str] | None = None) -> pa.Table:
    files = data_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: the run has written no dataset yet")
    return pa.concat_tables([read_parquet(f, columns) for f in files])


def read_parquet(source: Any, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, only the `columns` it has of those asked for. Through
    `ParquetFile`: `pq.read_table` imports pyarrow.dataset and pandas, about a
    second of every CLI run."""
    f = pq.ParquetFile(source)
    if columns is not None:
        have = set(f.schema_arrow.names)
        columns = [c for c in columns if c in have]
    return f.read(columns=columns)


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for every shard: a column that is all-null in one shard takes its
    type from the others; a column missing from a shard is null there."""
    if not schemas:
        return pa.schema([("id", pa.string())])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    fields: dict[str, list[pa.Field]] = {}
    for sch in schemas:
        for f in sch:
            fields.setdefault(f.name, []).append(f)
    out = []
    for name, fs in fields.items():
        try:
            if any(is_json_field(f) for f in fs):
                raise pa.ArrowTypeError(name)
            out.append(pa.unify_schemas([pa.schema([f]) for f in fs], promote_options="permissive")[0])
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # types conflict across shards: JSON text
            out.append(JSON_FIELD.with_name(name))
    return pa.schema(out)


def _stream(path: Path, schema: pa.Schema, tables: Iterator[pa.Table],
            row_group: int = 65536) -> int:
    """Write `tables` into one Parquet file without holding them all: small shards
    are gathered into row groups of up to `row_group` rows."""
    path.parent.mkdir(exist_ok=True)
    n, pending, pending_rows = 0, [], 0
    with atomic_file(path) as f, pq.ParquetWriter(f, schema, compression="zstd") as w:
        def flush() -> None:
            nonlocal pending, pending_rows
            if pending:
                w.write_table(pa.concat_tables(pending))
                pending, pending_rows = [], 0

        for t in tables:
            if not t.num_rows:
                continue
            t = _conform(t, schema)
            pending.append(t)
            pending_rows += t.num_rows
            n += t.num_rows
            if pending_rows >= row_group:
                flush()
        flush()
    return n


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for field in schema:
        if field.name in t.column_names:
            col = t.column(field.name)
            if is_json_field(field) and not is_json_field(t.field(field.name)):
                col = json_array(col.to_pylist())
            cols.append(col if col.type == field.type else col.cast(field.type))
        else:
            cols.append(pa.nulls(t.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def fingerprint_hash(obj: Any) -> str:
    """A short, stable hash of any JSON-able value: the chain of stage fingerprints
    (runner) and a stage's input digest (executors) use it, so both live here."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
