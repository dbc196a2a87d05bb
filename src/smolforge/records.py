"""What flows between stages: a record is a plain dict of columns; a reject is a record
with the reason a stage dropped it; and their conversion to and from Arrow tables (a
column whose type differs between rows is stored as JSON text, its field marked so).
A leaf module, so the store and the stages share these without importing each other."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

Record = dict[str, Any]


@dataclass
class Reject:
    record: Record
    reason: str


def table_bytes(table: pa.Table) -> bytes:
    """A checkpoint's bytes. LZ4: a third less CPU to write and a third to read
    than zstd, for files about 1.5x larger; the dataset itself (`finalize`) is zstd."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="lz4")
    return sink.getvalue()


def records_to_table(records: list[Record], schema: pa.Schema | None = None) -> pa.Table:
    """Records -> Arrow. `meta` is stored as a JSON string (its keys differ from
    stage to stage); a column whose values have mixed types is stored as JSON.
    With no records, `schema` (when known) keeps the columns of an empty shard."""
    if not records and schema is not None:
        return schema.empty_table()
    columns: dict[str, list[Any]] = {}
    for rec in records:
        for k in rec:
            columns.setdefault(k, [])
    for k, values in columns.items():
        values.extend(r.get(k) for r in records)
    arrays, fields = [], []
    for k, values in columns.items():
        if k == "meta":  # a JSON string, encoded once per distinct object
            memo: dict[int, str] = {}
            values = [v if isinstance(v, str) or v is None else memo.get(id(v))
                      or memo.setdefault(id(v), json.dumps(v, ensure_ascii=False, default=str))
                      for v in values]
        try:
            arr = pa.array(values)
            field = pa.field(k, arr.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = None
        if arr is None or has_empty_struct(arr.type):  # Parquet cannot store `[{}]`
            arr = json_array(values)
            field = JSON_FIELD.with_name(k)
        arrays.append(arr)
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def has_empty_struct(t: pa.DataType) -> bool:
    """Whether `t` holds a struct with no fields (IFEval's `kwargs: [{}]`), which
    Parquet cannot store: such a column is stored as JSON text."""
    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(has_empty_struct(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return has_empty_struct(t.value_type)
    if pa.types.is_map(t):
        return has_empty_struct(t.key_type) or has_empty_struct(t.item_type)
    return False


# A column whose values have more than one type is stored as JSON text, its field
# marked so, which `finalize` needs to merge it with shards where the column had one type.
JSON_FIELD = pa.field("_", pa.string(), metadata={b"smolforge.encoding": b"json"})


def is_json_field(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"smolforge.encoding") == b"json"


def plain_rows(table: pa.Table) -> list[Record]:
    """Rows with JSON-text columns decoded (`meta` stays a string)."""
    rows = table.to_pylist()
    for f in table.schema:
        if is_json_field(f) and f.name != "meta":
            for r in rows:
                if r[f.name] is not None:
                    r[f.name] = json.loads(r[f.name])
    return rows


def json_array(values: list[Any]) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                     for v in values], pa.string())


def append_rows(kept: list[Record] | pa.Table, table: pa.Table, stage: str, first: int,
                meta: dict[str, Any]) -> pa.Table:
    """A source's Arrow rows with their `id`s (`<stage>-<n>`, as records get them)
    and provenance, appended to the rows of the shard being filled."""
    ids = pa.array([f"{stage}-{i:06d}" for i in range(first, first + table.num_rows)])
    table = table.append_column("id", ids).append_column(
        "meta", pa.array([json.dumps(meta, ensure_ascii=False, default=str)] * table.num_rows))
    if not (isinstance(kept, pa.Table) and kept.num_rows):
        return table
    try:
        return pa.concat_tables([kept, table], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column's type differs: as records do
        return records_to_table(plain_rows(kept) + plain_rows(table))


def table_to_records(table: pa.Table) -> list[Record]:
    """Records as stages see them: JSON-text columns and `meta` decoded."""
    rows = plain_rows(table)
    if "meta" in table.column_names:
        for r in rows:
            r["meta"] = json.loads(r["meta"]) if r["meta"] else {}
    return rows


REJECTS_SCHEMA = pa.schema([("id", pa.string()), ("stage", pa.string()),
                            ("reason", pa.string()), ("record", pa.string())])


def rejects_to_table(rejects: list[Reject], stage: str) -> pa.Table:
    return pa.table(
        {
            "id": [str(r.record.get("id", "")) for r in rejects],
            "stage": [stage] * len(rejects),
            "reason": [r.reason for r in rejects],
            "record": [json.dumps(r.record, ensure_ascii=False, default=str) for r in rejects],
        },
        schema=REJECTS_SCHEMA,
    )
