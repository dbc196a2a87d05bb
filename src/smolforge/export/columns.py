"""Which columns a training export pairs: the ones the recipe declared
(`smolforge.columns`), unless named on the command line.

A chat, DPO, KTO or GRPO export takes its prompt from the prompt that produced the
recipe's last generation and its response from that generation's output; when the
recipe leaves either open (a `generate` with `prompt_column: null` and a template
file, a recipe without generation) or the declared column is not in the data, the
export refuses (`AmbiguousColumns`, exit 2) and names the candidate columns,
rather than pairing whatever is called `prompt` and `text`.

A chat export of whole dialogues (a `conversations` stage's `messages`, or data
without a generation stage that has a `messages` column) writes that column as it
is, checked to be TRL's conversational format, when no column is named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.columns import RESPONSE_NAMES, run_declared
from smolforge.errors import ExportError
from smolforge.store import data_files

TRAINING_FORMATS = ("chat", "dpo", "kto", "grpo")
_NOT_TEXT = {"id", "meta", "split"}


class AmbiguousColumns(ExportError):
    """The columns to pair are not known, or not in the data: a command-line problem (exit 2)."""

    exit_code = 2


def _text_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name not in _NOT_TEXT
            and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]


def choose_columns(run_dir: str | Path, fmt: str, prompt: str | None = None, response: str | None = None,
                   system: str | None = None) -> dict[str, Any]:
    """The columns `fmt` pairs: {"prompt", "response", "system", "from"}; `from` says
    where each came from (the recipe's stage, or the caller). Raises
    `AmbiguousColumns` naming the candidates when a needed one is unknown."""
    if fmt not in TRAINING_FORMATS:
        return {}
    files = data_files(run_dir)
    schema = pq.read_schema(files[0]) if files else pa.schema([])
    names = schema.names
    candidates = ", ".join(_text_columns(schema)) or "none"
    d = run_declared(run_dir)
    where = f"the recipe's stage {d.stage!r}" if d.stage else "the recipe"
    if d.stage is None:  # no generation stage: data brought in as it is, by the conventional names
        where = "the column's name (the recipe has no generation stage)"
        d.prompt = "prompt" if "prompt" in names else None
        named = [c for c in RESPONSE_NAMES if c in names]
        d.response = named[0] if len(named) == 1 else None
    source: dict[str, str] = {}
    if fmt == "chat" and prompt is None and response is None and system is None:
        # whole dialogues (a `conversations` stage, or data brought in with a `messages` column)
        col = d.messages if d.stage is not None else ("messages" if "messages" in names else None)
        if col is not None:
            if col not in names:
                raise AmbiguousColumns(f"chat export of {run_dir}: the messages column {col!r} declared by "
                                       f"{where} is not in the data (columns: {', '.join(names)})")
            return {"messages": col, "prompt": None, "response": None, "system": None,
                    "from": {"messages": where}}

    def pick(role: str, given: str | None, default: str | None, flag: str, why: str) -> str:
        if given is not None:
            if given not in names:
                raise AmbiguousColumns(f"{flag} {given}: no such column in {run_dir} (text columns: {candidates})")
            source[role] = flag
            return given
        if default is None:
            raise AmbiguousColumns(f"{fmt} export of {run_dir}: {why}; name it with {flag} "
                                   f"(text columns: {candidates})")
        if default not in names:
            raise AmbiguousColumns(f"{fmt} export of {run_dir}: the {role} column {default!r} declared by {where} "
                                   f"is not in the data; name one with {flag} (text columns: {candidates})")
        source[role] = where
        return default

    out: dict[str, Any] = {}
    if fmt == "chat":
        out["response"] = pick("response", response, d.response, "--response-column",
                               f"the last generation, {where}, writes no answer, so the assistant turn is not known"
                               if d.stage else "the recipe has no generation stage and the "
                               "data no single `completion` or `response` column, so the assistant turn is not known")
    if fmt in ("dpo", "kto") and not d.preference and prompt is None and d.prompt is None:
        d.prompt = "prompt"  # not a `pairs` run: to_preference says what is missing
    out["prompt"] = pick("prompt", prompt, d.prompt, "--prompt-column",
                         f"the prompt that produced {d.response!r} (by {where}) is not kept in a column"
                         if d.response else "the recipe declares no prompt column")
    if system is not None:
        out["system"] = pick("system", system, None, "--system-column", "")
    elif d.system and d.system in names:
        out["system"], source["system"] = d.system, where
    else:
        out["system"] = None
    out["from"] = source
    return out


def describe(columns: dict[str, Any]) -> str:
    """One line for stderr: which column plays which role, and who chose it."""
    src = columns.get("from", {})
    parts = [f"{role}={columns[role]} ({src.get(role, '?')})" for role in ("messages", "prompt", "response", "system")
             if columns.get(role)]
    return "columns: " + ", ".join(parts)
