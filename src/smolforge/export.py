"""`smolforge export`: a run's data as JSONL, Parquet, or chat messages for TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.store import data_files, read_data

FORMATS = ("jsonl", "parquet", "chat")


class ExportError(ValueError):
    pass


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
    messages = []
    for p, r, s in zip(prompts, responses, systems):
        m = [{"role": "system", "content": str(s)}] if s else []
        m += [{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
        messages.append(m)
    return pa.table({"id": table.column("id"), "messages": messages})


def export(
    run_dir: str | Path,
    fmt: str,
    to: str | Path,
    prompt_column: str = "prompt",
    response_column: str = "text",
    system_column: str | None = None,
) -> int:
    if not data_files(run_dir):
        raise ExportError(f"{run_dir}: no data (has the run finished?)")
    table = read_data(run_dir)
    if fmt == "chat":
        table = to_chat(table, prompt_column, response_column, system_column)
    to = Path(to)
    to.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet" or (fmt == "chat" and to.suffix == ".parquet"):
        pq.write_table(table, to)
    elif fmt in ("jsonl", "chat"):
        with open(to, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    else:
        raise ExportError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return table.num_rows
