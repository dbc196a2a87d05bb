"""`smolforge export RUN --format grpo`: prompt-only data with the verifier's
ground truth, for RL with verifiable rewards.

- `prompt`: a conversational prompt (a list of `{role, content}` messages, an
  optional system turn then the user turn), what TRL's `GRPOTrainer` reads; every
  other column reaches its reward functions as a keyword argument.
- `ground_truth` (a JSON string) and `dataset` (the verifier's name): the layout of
  open-instruct's RLVR data (Tülu 3, arXiv:2411.15124), whose `ifeval` verifier
  reads `[{"instruction_id": [...], "kwargs": [...]}]`.
- The verifier's own columns are kept as they are (for IFEval `instruction_id_list`
  and `kwargs`), so `smolforge.ifeval.evaluate` or IFEval's code scores a completion
  directly. In a table, `kwargs` dicts share one struct type, so each has every
  parameter name with null where unused (as the public IFEval file loads);
  `ground_truth` holds only the parameters set.

Which verifier a run needs is found from its columns (`VERIFIERS`, first match),
or named. Another verifier plugs in with one entry: its name, the columns it
needs, and how to build its ground truth from a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from smolforge.engines.base import chat


def _drop_nulls(kwargs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [{k: v for k, v in (kw or {}).items() if v is not None} for kw in (kwargs or [])]


@dataclass(frozen=True)
class Verifier:
    name: str
    columns: tuple[str, ...]
    ground_truth: Callable[[dict[str, Any]], Any]


VERIFIERS: list[Verifier] = [
    Verifier("ifeval", ("instruction_id_list", "kwargs"),
             lambda r: [{"instruction_id": list(r["instruction_id_list"]), "kwargs": _drop_nulls(r["kwargs"])}]),
    # Code run against its tests (verify_code): the tests are the ground truth.
    Verifier("code", ("tests",), lambda r: r["tests"]),
    # JSON by a schema (verify_json): the schema is the ground truth.
    Verifier("json_schema", ("json_schema",),
             lambda r: json.loads(r["json_schema"]) if isinstance(r["json_schema"], str) else r["json_schema"]),
]


def pick_verifier(columns: list[str], name: str | None = None) -> Verifier:
    from smolforge.errors import ExportError

    if name is not None:
        for v in VERIFIERS:
            if v.name == name:
                missing = [c for c in v.columns if c not in columns]
                if missing:
                    raise ExportError(f"grpo: verifier {name!r} needs column(s) {', '.join(missing)}")
                return v
        raise ExportError(f"grpo: unknown verifier {name!r} (known: {', '.join(v.name for v in VERIFIERS)})")
    for v in VERIFIERS:
        if all(c in columns for c in v.columns):
            return v
    need = "; ".join(f"{v.name}: {', '.join(v.columns)}" for v in VERIFIERS)
    raise ExportError(f"grpo: no verifier's ground truth in the data (columns: {', '.join(columns)}; "
                      f"needed, one of: {need})")


def to_grpo(table: pa.Table, prompt_column: str = "prompt", system_column: str | None = None,
            verifier: str | None = None) -> pa.Table:
    """Prompt-only conversational records with `ground_truth` and `dataset`."""
    from smolforge.errors import ExportError
    from smolforge.records import has_empty_struct, plain_rows

    cols = table.column_names
    for c in (prompt_column, system_column):
        if c and c not in cols:
            raise ExportError(f"column {c!r} not in the data (columns: {', '.join(cols)})")
    v = pick_verifier(cols, verifier)
    rows = []
    for rec in plain_rows(table):  # JSON-text columns decoded (IFEval's `kwargs: [{}]`)
        msgs = chat(rec[prompt_column], rec.get(system_column) if system_column else None)
        row = {"id": rec["id"], "prompt": msgs}
        for c in v.columns:
            row[c] = rec[c]
        row["ground_truth"] = json.dumps(v.ground_truth(rec), ensure_ascii=False)
        row["dataset"] = v.name
        rows.append(row)
    if not rows:
        return pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.list_(
            pa.struct([("role", pa.string()), ("content", pa.string())]))),
            "ground_truth": pa.array([], pa.string()), "dataset": pa.array([], pa.string())})
    out = pa.Table.from_pylist(rows)
    if v.name == "ifeval" and has_empty_struct(out.schema.field("kwargs").type):
        # IFEval's own JSONL layout (`[{}]`): a table needs the other layout, every
        # parameter name in every dict, null where unused (both check alike).
        from smolforge.stages.verify.constraints import ALL_PARAMS

        for row in rows:
            row["kwargs"] = [{k: (kw or {}).get(k) for k in ALL_PARAMS} for kw in row["kwargs"] or []]
        out = pa.Table.from_pylist(rows)
    return out
