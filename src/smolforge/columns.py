"""The columns a recipe declared: the text its generation stages wrote, and the
prompt that produced the last of it.

Exports default to these (a chat export of a recipe whose `generate` writes
`answer` next to a source `text` must pair the prompt with `answer`), and `show`,
`report` and the card profile every generated text column rather than a column
that happens to be called `text`. The recipe is read from the run directory's
`recipe.yaml`, which the runner writes with every field but the null ones, so a
field missing there (`prompt_column` of a `generate`) was set to null.

What a stage type declares (`_declares`): `generate` writes `output` from the
prompt in `prompt_column` (or, with `prompt_column: null`, from a template that is
one column, `{{ prompt }}`); `magpie` and `evol_instruct` write an instruction and
its answer; `self_instruct` and `persona_expand` write one column; `candidates`
writes a list of completions for `prompt_column`, which `pairs` turns into
`chosen` / `rejected`; `conversations` writes whole dialogues (`messages`), which
a chat export takes as they are. A `render` writing `prompt`, `completion` or `response`
after the last generation formats the record for export (github_issues) and takes
that role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ONE_VARIABLE = re.compile(r"^\s*\{\{\s*(\w+)\s*\}\}\s*$")
RESPONSE_NAMES = ("completion", "response")


class UnknownColumn(ValueError):
    """A column named on the command line that the data does not have (exit 2)."""

    exit_code = 2


@dataclass
class Declared:
    """What a recipe's stages declared about their output columns."""

    prompt: str | None = None  # the prompt that produced `response`
    response: str | None = None  # the last generation stage's output
    system: str | None = None  # a system turn column, when a stage writes one
    stage: str | None = None  # the stage that declared `response`
    preference: bool = False  # a `pairs` stage made chosen / rejected
    messages: str | None = None  # a whole dialogue column (`conversations`), exported as it is
    generated: list[str] = field(default_factory=list)  # every generated text column, recipe order

    def text_columns(self) -> list[str]:
        """Columns to profile: the response first, then the other generated ones."""
        if self.preference:
            return ["chosen", "rejected"]
        first = [self.response] if self.response else []
        return list(dict.fromkeys(first + self.generated[::-1]))


def run_recipe(run_dir: str | Path) -> dict[str, Any]:
    """The recipe a run directory holds (`recipe.yaml`), as a dict; {} if unreadable."""
    import yaml

    try:
        return yaml.safe_load((Path(run_dir) / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _template_column(st: dict[str, Any]) -> str | None:
    m = _ONE_VARIABLE.match(st.get("template") or "")
    return m.group(1) if m else None


def declared(recipe: dict[str, Any]) -> Declared:
    """Walk the recipe's stages (a dumped recipe, see the module docstring)."""
    d = Declared()
    seen: dict[str, int] = {}
    for st in recipe.get("stages") or []:
        if not isinstance(st, dict):
            continue
        kind = str(st.get("type"))
        base = st.get("name") or kind
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        if kind == "generate":
            out = st.get("output", "text")
            d.prompt, d.response, d.system = st.get("prompt_column") or _template_column(st), out, None
            d.generated.append(out)
        elif kind == "magpie":
            d.prompt, d.response, d.system = st.get("output", "instruction"), st.get("response_column", "text"), "system"
            d.generated += [d.prompt, d.response]
        elif kind == "evol_instruct":
            d.prompt, d.response, d.system = st.get("column", "instruction"), st.get("response_column", "text"), None
            d.generated += [d.prompt, d.response]
        elif kind in ("self_instruct", "persona_expand"):
            col = st.get("column", "instruction" if kind == "self_instruct" else "persona")
            d.prompt, d.response, d.system = col, None, None  # an instruction without its answer
            d.generated.append(col)
        elif kind == "conversations":  # whole dialogues: no prompt/response pair
            d.prompt = d.response = d.system = None
            d.messages = st.get("output", "messages")
        elif kind == "candidates":
            d.prompt, d.response = st.get("prompt_column", "prompt"), None
            d.system = st.get("system_column") if st.get("system") else None
        elif kind == "pairs":
            d.preference, d.response = True, "chosen"
            d.prompt = d.prompt or "prompt"  # the records `pairs` reads carry their prompt there
        elif kind == "render" and d.stage is not None and st.get("output") in ("prompt", *RESPONSE_NAMES):
            if st["output"] == "prompt":
                d.prompt = "prompt"
            else:
                d.response = st["output"]
        else:
            continue
        if kind != "conversations":
            d.messages = None
        d.stage = name
    return d


def run_declared(run_dir: str | Path) -> Declared:
    return declared(run_recipe(run_dir))
