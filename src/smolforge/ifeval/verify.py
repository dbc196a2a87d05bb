"""Strict and loose checking, as IFEval defines them.

Strict: the response as it is. Loose: the instruction is followed by the response
or by any of seven variants: markdown asterisks removed, the first line removed,
the last line removed, both, and each of those three without asterisks (IFEval's
`test_instruction_following_loose`). An empty response follows nothing.

As in the reference package (`if-verifiable`), the response is first stripped of
surrounding whitespace and of a reasoning block (`<think>...</think>`: what follows
it; an unclosed one leaves nothing). Google's original script does not strip; the
two differ only for responses with leading or trailing blank lines (which line is
"the first line") or a reasoning block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from smolforge.ifeval.instructions import get


def strip_thinking(response: str) -> str:
    s = response.strip()
    if "</think>" in s:
        return s.split("</think>", 1)[-1].strip()
    if s.startswith("<think>"):
        return ""
    return s


def loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""), first, last, both,
            first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]


@dataclass(frozen=True)
class Check:
    instruction_id: str
    strict: bool
    loose: bool


def evaluate(response: str, instruction_id_list: list[str], kwargs: list[dict[str, Any]] | None,
             prompt: str = "") -> list[Check]:
    """One `Check` per instruction. `kwargs` may hold null-valued keys (the public
    IFEval file as `datasets` loads it); `combination:repeat_prompt` takes
    `prompt_to_repeat` from its kwargs."""
    if isinstance(instruction_id_list, str):  # a JSON-encoded column (CSV, some exports)
        instruction_id_list = json.loads(instruction_id_list)
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    kwargs = list(kwargs or [{} for _ in instruction_id_list])
    if len(kwargs) != len(instruction_id_list):
        raise ValueError(f"{len(instruction_id_list)} instruction ids but {len(kwargs)} kwargs")
    response = strip_thinking(response)
    variants = loose_variants(response)
    out = []
    for iid, kw in zip(instruction_id_list, kwargs, strict=True):
        inst = get(iid)
        strict = inst.follows(response, kw or {})
        loose = strict or any(inst.follows(v, kw or {}) for v in variants[1:])
        out.append(Check(iid, strict, loose))
    return out
