"""`smolforge export --format dpo | kto`: preference pairs for TRL.

- `dpo`: TRL's conversational preference format with an explicit prompt, as
  the TRL docs recommend (`prompt` = the system and user turns, `chosen` /
  `rejected` = one assistant turn each), plus `id`, `score_chosen` and
  `score_rejected` (the names of Argilla's / H4's binarised UltraFeedback).
  DPOTrainer applies the chat template itself.
- `kto`: TRL's unpaired format (`prompt`, `completion`, `label`): every chosen
  completion with `label: true`, every rejected one with `false`. A completion
  that is chosen in one pair and rejected in another (`strategy: all_pairs`) has
  no single label and is left out; a completion repeated with one label is
  written once.

Both read the records `pairs` writes (`prompt`, `chosen`, `rejected`,
`chosen_score`, `rejected_score`).
"""

from __future__ import annotations

import pyarrow as pa

from smolforge.engines.base import chat

PREFERENCE_FORMATS = ("dpo", "kto")


def _columns(table: pa.Table, needed: list[str | None]) -> None:
    from smolforge.errors import ExportError

    cols = table.column_names
    missing = [c for c in needed if c and c not in cols]
    if missing:
        hint = " (is this a run of `pairs`? see docs/preference.md)" if {"chosen", "rejected"} & set(missing) else ""
        raise ExportError(f"column(s) {', '.join(map(repr, missing))} not in the data "
                          f"(columns: {', '.join(cols)}){hint}")


def to_dpo(table: pa.Table, prompt_column: str = "prompt", system_column: str | None = None) -> pa.Table:
    _columns(table, [prompt_column, "chosen", "rejected", system_column])
    n = table.num_rows
    prompts = table.column(prompt_column).to_pylist()
    systems = table.column(system_column).to_pylist() if system_column else [None] * n
    chosen = table.column("chosen").to_pylist()
    rejected = table.column("rejected").to_pylist()
    out: dict[str, list] = {
        "id": table.column("id").to_pylist(),
        "prompt": [chat(p, s) for p, s in zip(prompts, systems)],
        "chosen": [[{"role": "assistant", "content": str(c)}] for c in chosen],
        "rejected": [[{"role": "assistant", "content": str(r)}] for r in rejected],
    }
    for src, dst in (("chosen_score", "score_chosen"), ("rejected_score", "score_rejected")):
        if src in table.column_names:
            out[dst] = [None if v is None else float(v) for v in table.column(src).to_pylist()]
    return pa.table(out)


def to_kto(table: pa.Table, prompt_column: str = "prompt", system_column: str | None = None) -> pa.Table:
    _columns(table, [prompt_column, "chosen", "rejected", system_column])
    n = table.num_rows
    ids = table.column("id").to_pylist()
    prompts = table.column(prompt_column).to_pylist()
    systems = table.column(system_column).to_pylist() if system_column else [None] * n
    labels: dict[tuple, set[bool]] = {}
    first: dict[tuple, str] = {}
    for i, p, s, c, r in zip(ids, prompts, systems, table.column("chosen").to_pylist(),
                             table.column("rejected").to_pylist()):
        for text, label, tag in ((c, True, "c"), (r, False, "r")):
            key = (str(s or ""), str(p), str(text))
            labels.setdefault(key, set()).add(label)
            first.setdefault(key, f"{i}.{tag}")
    rows = [(first[k], k, next(iter(v))) for k, v in labels.items() if len(v) == 1]
    return pa.table({
        "id": [r[0] for r in rows],
        "prompt": [chat(k[1], k[0]) for _, k, _ in rows],
        "completion": [[{"role": "assistant", "content": k[2]}] for _, k, _ in rows],
        "label": [lab for _, _, lab in rows],
    })


def to_preference(table: pa.Table, fmt: str, prompt_column: str = "prompt",
                  system_column: str | None = None) -> pa.Table:
    return (to_dpo if fmt == "dpo" else to_kto)(table, prompt_column, system_column)
