"""`smolforge export`: a run's data as JSONL, Parquet, or chat messages for TRL.

An export is written under a temporary name and renamed into place, so a kill or
a full disk leaves any earlier file whole. It never writes through a symbolic
link and never replaces an existing file without `force` (`--force`; a link is
then replaced itself, its target untouched).

`--to` may be a URL (`s3://bucket/exports/data.parquet`, docs/storage.md): the same
rules hold as far as an object store allows (remote.atomic_object: a temporary key
moved into place; an existing object is replaced only with `force`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge import remote
from smolforge.engines.base import chat
from smolforge.errors import ExportError
from smolforge.store import atomic_file, data_files, read_data

FORMATS = ("jsonl", "parquet", "chat", "hf", "dpo", "kto", "grpo")
SPLIT_COLUMN = "split"


def select_split(table: pa.Table, split: str) -> pa.Table:
    if SPLIT_COLUMN not in table.column_names:
        raise ExportError(f"--split {split}: the data has no {SPLIT_COLUMN!r} column")
    import pyarrow.compute as pc

    names = sorted({str(v) for v in table.column(SPLIT_COLUMN).to_pylist()})
    if split not in names:
        raise ExportError(f"--split {split}: no such split (splits: {', '.join(names)})")
    return table.filter(pc.equal(table.column(SPLIT_COLUMN), split))


def to_chat(table: pa.Table, prompt_column: str, response_column: str, system_column: str | None) -> pa.Table:
    """A `messages` column (user prompt, assistant response), the conversational
    format TRL's SFTTrainer reads directly; `id` is kept for traceability."""
    cols = table.column_names
    for c in (prompt_column, response_column, system_column):
        if c and c not in cols:
            raise ExportError(f"column {c!r} not in the data (columns: {', '.join(cols)})")
    prompts = table.column(prompt_column).to_pylist()
    responses = table.column(response_column).to_pylist()
    systems = table.column(system_column).to_pylist() if system_column else [None] * len(prompts)
    messages = [chat(p, s, assistant=r) for p, r, s in zip(prompts, responses, systems)]
    return pa.table({"id": table.column("id"), "messages": messages})


ROLES = ("system", "user", "assistant")


def messages_table(table: pa.Table, column: str) -> pa.Table:
    """Whole dialogues as they are (`conversations`): `id` and `messages`, each row
    checked to be a list of {role, content} with text content, in TRL's
    conversational format; a bad row is named by its id."""
    col = table.column(column)
    for rid, msgs in zip(table.column("id").to_pylist(), col.to_pylist()):
        if not isinstance(msgs, list) or not msgs:
            raise ExportError(f"record {rid}: column {column!r} is not a non-empty list of messages")
        for k, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ExportError(f"record {rid}: {column}[{k}] is not a {{role, content}} message "
                                  f"with role in {', '.join(ROLES)}: {str(m)[:80]}")
    return pa.table({"id": table.column("id"), "messages": col})


def export(
    run_dir: str | Path,
    fmt: str,
    to: str | Path,
    prompt_column: str | None = None,
    response_column: str | None = None,
    system_column: str | None = None,
    *,
    split: str | None = None,
    licence: str | None = None,
    force: bool = False,
) -> int:
    if not data_files(run_dir):
        raise ExportError(f"{run_dir}: no data (has the run finished?)")
    url = str(to) if remote.is_remote(str(to)) else None
    if fmt == "hf":  # a Hugging Face dataset folder: one Parquet file per `split`, and the card
        if url is not None:
            raise ExportError(f"{url}: --format hf writes a folder, which cannot go to a URL yet; "
                              "export to a local folder (or --format parquet to the URL)")
        from smolforge.report.card import export_hf

        return export_hf(run_dir, remote.local_path(str(to)), licence=licence, force=force)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    to = Path(remote.local_path(str(to))) if url is None else to
    check_target(url or to, force)  # before the work, and again when it is done (below)
    # chat, dpo, kto, grpo: the columns the recipe declared unless named (export/columns.py)
    from smolforge.export.columns import choose_columns, describe

    columns = choose_columns(run_dir, fmt, prompt_column, response_column, system_column)
    if columns:
        prompt_column, response_column, system_column = columns["prompt"], columns.get("response"), columns["system"]
        print(f"{fmt} export: {describe(columns)}", file=sys.stderr, flush=True)
    table = read_data(run_dir)
    if split is not None:  # the `split` column (split / anneal stages) selects the records
        table = select_split(table, split)
    if fmt == "chat" and columns.get("messages"):
        table = messages_table(table, columns["messages"])
    elif fmt == "chat":
        table = to_chat(table, prompt_column, response_column, system_column)
    elif fmt in ("dpo", "kto"):  # preference pairs (docs/preference.md)
        from smolforge.export.preference import to_preference

        table = to_preference(table, fmt, prompt_column, system_column)
    elif fmt == "grpo":  # prompt-only + the verifier's ground truth (docs/verify-constraints.md)
        from smolforge.export.grpo import to_grpo

        table = to_grpo(table, prompt_column, system_column)
    if columns:  # which column played which role, in the file (Parquet) too
        meta = {b"smolforge.columns": json.dumps(columns).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    check_target(url or to, force)
    parquet = fmt == "parquet" or (fmt != "jsonl" and PurePosixPath(str(to)).suffix == ".parquet")
    if url is not None:
        with remote.atomic_object(url) as f:
            _write(table, parquet, f)
        return table.num_rows
    to.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(to) as f:
        _write(table, parquet, f)
    return table.num_rows


def _write(table: pa.Table, parquet: bool, f) -> None:
    if parquet:
        pq.write_table(table, f)
    else:
        for row in table.to_pylist():
            f.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())


def check_target(to: Path | str, force: bool) -> None:
    """Refuse to write through a link or over an existing file (unless `force`). A
    URL: refuse a prefix with objects under it, and an existing object (unless `force`)."""
    if isinstance(to, str):
        try:
            state = remote.object_state(to)
        except remote.RemoteError as e:
            raise ExportError(str(e)) from None
        if state == "folder":
            raise ExportError(f"{to}: objects lie under this prefix; name an object")
        if state == "object" and not force:
            raise ExportError(f"{to}: exists; export does not overwrite an object (--force to "
                              "replace it, or choose another --to)")
        return
    if to.is_symlink():
        if not force:
            raise ExportError(f"{to}: is a symbolic link; export never writes through a link "
                              "(--force replaces the link itself, not its target)")
    elif to.is_dir():
        raise ExportError(f"{to}: is a folder; name a file")
    elif to.exists() and not force:
        raise ExportError(f"{to}: exists; export does not overwrite a file (--force to replace it, "
                          "or choose another --to)")
