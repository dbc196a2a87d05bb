"""Source stages: where records come from.

- `read`: JSONL, JSON, Parquet, CSV and plain-text files or globs, local or by URL
  (`s3://bucket/data/*.parquet` through fsspec; docs/storage.md).
- `items`: an inline list in the recipe.
- `combine`: Cosmopedia's diversity mechanism, combinations of lists (topics x
  audiences x formats ...), all of them or `count` sampled with the recipe seed.

Records get their `id` from the runner; an input column named `id` is kept as
`source_id`.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import math
import re
from collections.abc import Iterator, Sequence
from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from smolforge import remote
from smolforge.context import StageContext
from smolforge.paths import GLOB_OR_URL, VALUES
from smolforge.registry import stages
from smolforge.stages.base import Record, Reject, SourceStage
from smolforge.text import JSONTooDeep, loads_json

# The most records one `combine` produces: sampling keeps `count` indexes in memory
# (Python's random.sample), about 100 bytes each, so 10 million is about 1 GB.
MAX_COMBINATIONS = 10_000_000

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
           ".csv": "csv", ".txt": "txt", ".md": "txt", ".text": "txt"}


class InputError(ValueError):
    """Unreadable input; the message starts with `file:line:`."""


@stages.register
class Read(SourceStage):
    """Read records from files. A malformed line stops the run with `file:line`
    and what is wrong, unless `on_error: reject` sends it to the rejects."""

    type: Literal["read"] = "read"
    path: Annotated[str | list[str], GLOB_OR_URL] = Field(
        description="file, glob (`data/*.jsonl`, `**` allowed), URL or URL glob "
        "(`s3://bucket/data/*.parquet`, docs/storage.md) or a list of them")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "txt"] = Field(
        "auto", description="auto: from the file extension"
    )
    columns: dict[str, str] | None = Field(
        None, description="output column -> input column; when set, only these columns are kept"
    )
    text_unit: Literal["file", "paragraph", "line"] = Field(
        "file", description="plain text: one record per file, paragraph or line (column `text`)"
    )
    on_error: Literal["raise", "reject"] = "raise"

    def files(self, base_dir: Path, roots: Sequence[Path | str] | None = None) -> list[Path | remote.RemoteFile]:
        """The files `path` names, in order. With `roots` (the recipe's allowed
        folders), a match that resolves outside them (a symlink planted after the
        recipe was checked) is a RecipeError. A URL glob is one listing of the store."""
        out: list[Path | remote.RemoteFile] = []
        for pattern in [self.path] if isinstance(self.path, str) else self.path:
            if remote.is_remote(pattern):
                out += _remote_files(pattern, roots)
                continue
            p = Path(remote.local_path(pattern)).expanduser()
            p = p if p.is_absolute() else base_dir / p
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise InputError(f"{pattern}: no files match")
            for m in matches:
                if roots is not None:
                    shown = f"{m!r} (matched by {pattern!r})" if glob.has_magic(pattern) else repr(pattern)
                    _check_allowed(Path(m), roots, shown)
                if Path(m).is_file():
                    out.append(Path(m))
        return out

    def _format(self, path: Path | remote.RemoteFile) -> str:
        if self.format != "auto":
            return self.format
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"{path}: unknown file type {path.suffix!r}; set `format:`")
        return fmt

    def provides(self) -> set[str] | None:
        if self.columns is not None:
            return set(self.columns)
        return None  # only known once the files are read

    def read(self, ctx: StageContext) -> Iterator[Record | Reject]:
        for item in self.read_batches(ctx):
            if isinstance(item, pa.Table):
                yield from item.to_pylist()
            else:
                yield item

    def read_batches(self, ctx: StageContext) -> Iterator[Record | Reject | pa.Table]:
        for path in self.files(ctx.recipe_dir, getattr(ctx, "allowed_roots", None)):
            fmt = self._format(path)
            skip = 0
            if self.columns is None and fmt in ("jsonl", "parquet"):
                for table in _arrow_batches(path, fmt):
                    if isinstance(table, int):  # the rest needs the line-by-line reader
                        skip = table
                        break
                    yield _rename_id(table)
                else:
                    continue
            reader = getattr(self, f"_read_{fmt}")
            for where, row, error in itertools.islice(reader(path), skip, None):
                if error is None:
                    row, error = self._map(row)
                if error is None:
                    if "id" in row:
                        row["source_id"] = row.pop("id")
                    yield row
                elif self.on_error == "reject":
                    yield Reject({"input": where, "raw": row if isinstance(row, str) else _short(row)}, f"{where}: {error}")
                else:
                    raise InputError(f"{where}: {error}")

    def _map(self, row: Any) -> tuple[Any, str | None]:
        if not isinstance(row, dict):
            return row, f"expected an object, got {type(row).__name__}"
        if self.columns is None:
            return row, None
        missing = [src for src in self.columns.values() if src not in row]
        if missing:
            return row, f"missing column {missing[0]!r} (columns: {', '.join(map(str, row))})"
        return {dst: row[src] for dst, src in self.columns.items()}, None

    # Each reader yields (where, row-or-raw-text, error-or-None).

    def _read_jsonl(self, path: Path | remote.RemoteFile):
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield f"{path}:{n}", _shown(raw), _utf8_error(raw, e)
                    continue
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", loads_json(line), None
                except JSONTooDeep as e:
                    yield f"{path}:{n}", line.rstrip("\n")[:2000], f"invalid JSON: {e}"
                except json.JSONDecodeError as e:
                    yield f"{path}:{n}", line.rstrip("\n")[:2000], f"invalid JSON: {e.msg} (column {e.colno})"

    def _read_json(self, path: Path | remote.RemoteFile):
        try:
            data = loads_json(_decode_whole(path))
        except JSONTooDeep as e:
            raise InputError(f"{path}: invalid JSON: {e}") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise InputError(f"{path}: expected a list of objects, or an object holding one list")
            data = lists[0]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of objects")
        for i, row in enumerate(data):
            yield f"{path}: item {i}", row, None

    def _read_csv(self, path: Path | remote.RemoteFile):
        # Undecodable bytes become lone surrogates (`surrogateescape`), so that one
        # bad row is reported (or rejected) with its line and the rest still read.
        with path.open("r", newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if any(_SURROGATE.search(h or "") for h in header):
                raise InputError(f"{path}:1: invalid UTF-8 in the header")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                bad = next((v for v in row.values() if isinstance(v, str) and _SURROGATE.search(v)), None)
                if bad is not None:
                    yield where, _shown(bad.encode("utf-8", "surrogateescape")), _utf8_error(
                        bad.encode("utf-8", "surrogateescape"))
                elif None in row or any(v is None for v in row.values()):
                    got = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                    yield where, _short(row), f"expected {len(header)} fields, got {got}"
                else:
                    yield where, row, None

    def _read_parquet(self, path: Path | remote.RemoteFile):
        import pyarrow.parquet as pq

        n = 0
        with _arrow_source(path) as source:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    yield f"{path}: row {n}", row, None
                    n += 1

    def _read_txt(self, path: Path | remote.RemoteFile):
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        if self.text_unit == "file":
            m = _SURROGATE.search(text)
            if m:
                line = text.count("\n", 0, m.start()) + 1
                raw = text.split("\n")[line - 1].encode("utf-8", "surrogateescape")
                yield f"{path}:{line}", _shown(raw), _utf8_error(raw)
                return
            yield str(path), {"text": text, "source": str(path)}, None
            return
        sep = "\n\n" if self.text_unit == "paragraph" else "\n"
        line = 1
        for chunk in text.split(sep):
            m = _SURROGATE.search(chunk)
            if m:
                at = line + chunk.count("\n", 0, m.start())
                raw = chunk.split("\n")[at - line].encode("utf-8", "surrogateescape")
                yield f"{path}:{at}", _shown(raw), _utf8_error(raw)
            elif chunk.strip():
                yield f"{path}:{line}", {"text": chunk.strip(), "source": f"{path}:{line}"}, None
            line += chunk.count("\n") + sep.count("\n")


_SURROGATE = re.compile("[\udc80-\udcff]")


def _utf8_error(raw: bytes, e: UnicodeDecodeError | None = None) -> str:
    """`invalid UTF-8 (byte 0xff at column 7)`: where in the line, not in the file."""
    if e is None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            e = err
    if e is None:
        return "invalid UTF-8"
    return f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}: {e.reason})"


def _shown(raw: bytes) -> str:
    """A bad line for the rejects: valid text as is, bad bytes as \\xNN."""
    return raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")[:2000]


def _decode_whole(path: Path | remote.RemoteFile) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raw = data.split(b"\n")[line - 1]
        raise InputError(f"{path}:{line}: {_utf8_error(raw)}") from None


def _remote_files(pattern: str, roots: Sequence[Path | str] | None) -> list[remote.RemoteFile]:
    """The objects a URL or URL glob names. The URL (a glob's fixed prefix) must lie
    under an allowed prefix before the store is listed, and so must every match."""
    if roots is not None:
        prefix = remote.fixed_prefix(pattern) if remote.has_magic(pattern) else pattern
        _check_allowed(prefix, roots, repr(pattern))
    matches = remote.listing(pattern)
    if not matches:
        raise InputError(f"{pattern}: no files match")
    if roots is not None:
        for m in matches:
            _check_allowed(m.url, roots, f"{m.url!r} (matched by {pattern!r})")
    return matches


@contextlib.contextmanager
def _arrow_source(path: Path | remote.RemoteFile) -> Iterator[Any]:
    """What Arrow's readers take: a local path as is, an object as an open file."""
    if isinstance(path, Path):
        yield path
        return
    with path.open("rb") as f:
        yield f


def _check_allowed(path: Path | str, roots: Sequence[Path | str], shown: str) -> None:
    from smolforge.context import PathNotAllowed, check_inside
    from smolforge.recipe import RecipeError

    try:
        check_inside(path, roots, shown)
    except PathNotAllowed as e:
        raise RecipeError([str(e)]) from None


# Arrow reads JSONL and Parquet in C++ and the runner stores its batches as they
# are: most of a cheap curation run's time was decoding rows into dicts and back.
# Arrow infers types a little differently from `json`, so a batch is used only when
# every column is a plain JSON type; anything else (a date-like string read as a
# timestamp, a column whose type changes, invalid JSON or UTF-8, NaN) goes through
# the line-by-line reader from that point, which names the file and line.
_PLAIN = (pa.types.is_string, pa.types.is_large_string, pa.types.is_int64, pa.types.is_float64,
          pa.types.is_boolean, pa.types.is_null)


def _plain(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _plain(t.value_type)
    if pa.types.is_struct(t):  # `{}` (no fields) goes through records, stored as JSON
        return t.num_fields > 0 and all(_plain(f.type) for f in t)
    return any(ok(t) for ok in _PLAIN)


def _arrow_batches(path: Path | remote.RemoteFile, fmt: str) -> Iterator[pa.Table | int]:
    """Tables of rows of `path`; ends with the number of rows read if the rest of
    the file needs the line-by-line reader (0: all of it)."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    done = 0
    try:
        with _arrow_source(path) as source:
            if fmt == "parquet":
                batches = pq.ParquetFile(source).iter_batches(batch_size=65536)
            else:
                batches = pj.open_json(source, read_options=pj.ReadOptions(block_size=1 << 24))
            for batch in batches:
                if not all(_plain(f.type) for f in batch.schema):
                    yield done
                    return
                batch.validate(full=True)  # Arrow's JSON reader does not check UTF-8
                table = pa.Table.from_batches([batch])
                done += table.num_rows
                yield table
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, UnicodeDecodeError):
        yield done


def _rename_id(table: pa.Table) -> pa.Table:
    """An input column named `id` is kept as `source_id` (the runner assigns ids)."""
    names = table.column_names
    if "id" not in names:
        return table
    if "source_id" in names:
        table = table.drop_columns(["source_id"])
        names = table.column_names
    return table.rename_columns(["source_id" if n == "id" else n for n in names])


def _short(row: Any) -> str:
    s = json.dumps(row, ensure_ascii=False, default=str)
    return s[:2000]


@stages.register
class Items(SourceStage):
    """An inline list of records (mappings), or of strings stored in `column`."""

    type: Literal["items"] = "items"
    items: list[dict[str, Any] | str] = Field(min_length=1)
    column: str = Field("text", description="column for items given as plain strings")

    def provides(self) -> set[str]:
        cols: set[str] = set()
        for it in self.items:
            cols |= set(it) if isinstance(it, dict) else {self.column}
        return cols

    def read(self, ctx: StageContext) -> Iterator[Record]:
        for it in self.items:
            yield dict(it) if isinstance(it, dict) else {self.column: it}

    def estimate_count(self, ctx: StageContext) -> int:
        return len(self.items)


@stages.register
class Combine(SourceStage):
    """Combinations of lists, one column per list (Cosmopedia: topics x audiences x
    styles). A list is inline or a text file (one value per line, relative to the
    recipe). With `count`, that many distinct combinations are sampled with the
    recipe seed; without, all of them in order."""

    type: Literal["combine"] = "combine"
    lists: Annotated[dict[str, list[Any] | str], VALUES] = Field(description="column -> values, or a file of values")
    count: int | None = Field(
        None, ge=1, le=MAX_COMBINATIONS, description="sample this many combinations (default: all)"
    )

    @field_validator("lists")
    @classmethod
    def _non_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("needs at least one list")
        for name, values in v.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"list {name!r} is empty")
        return v

    @model_validator(mode="after")
    def _fits(self):
        # Inline lists: the size is known now; lists from files are checked on reading.
        if self.count is None and all(isinstance(v, list) for v in self.lists.values()):
            _check_total(math.prod(len(v) for v in self.lists.values()), None)
        return self

    def provides(self) -> set[str]:
        return set(self.lists)

    def values(self, ctx: StageContext) -> dict[str, list[Any]]:
        out = {}
        for name, v in self.lists.items():
            if isinstance(v, str):
                path = ctx.resolve_path(v)
                try:
                    lines = path.read_text(encoding="utf-8").splitlines()
                except OSError as e:
                    raise InputError(f"{path}: {e.strerror} (lists.{name})") from None
                v = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
                if not v:
                    raise InputError(f"{path}: no values (lists.{name})")
            out[name] = v
        return out

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return self.values(ctx)

    def estimate_count(self, ctx: StageContext) -> int:
        total = math.prod(len(v) for v in self.values(ctx).values())
        return total if self.count is None else min(self.count, total)

    def read(self, ctx: StageContext) -> Iterator[Record]:
        values = self.values(ctx)
        names = list(values)
        sizes = [len(values[n]) for n in names]
        total = math.prod(sizes)
        _check_total(total, self.count, runtime=True)
        if self.count is None or self.count >= total:
            for combo in product(*(values[n] for n in names)):
                yield _with_knobs(dict(zip(names, combo)))
            return
        # Sample indexes of the product space, then decode them (mixed radix), so
        # the product is never materialised.
        for index in ctx.rng("combine").sample(range(total), self.count):
            rec = {}
            for name, size in zip(reversed(names), reversed(sizes)):
                index, k = divmod(index, size)
                rec[name] = values[name][k]
            yield _with_knobs({n: rec[n] for n in names})


def _check_total(total: int, count: int | None, runtime: bool = False) -> None:
    """All combinations (no `count`) must be few enough to produce; past
    MAX_COMBINATIONS a run would never finish (or fill memory) - say so up front."""
    if count is None and total > MAX_COMBINATIONS:
        msg = (f"{total} combinations are more than a run can produce (at most "
               f"{MAX_COMBINATIONS}); set `count` to sample some of them")
        if runtime:
            from smolforge.recipe import RecipeError

            raise RecipeError([f"combine: {msg}"])
        raise ValueError(msg)


def _with_knobs(rec: Record) -> Record:
    """Record the combination in `meta.knobs`, so `smolforge show` can print the
    distribution of each knob."""
    knobs = {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in rec.items()}
    return {**rec, "meta": {"knobs": knobs}}
