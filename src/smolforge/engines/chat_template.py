"""Chat templates as model files ship them: the Jinja text in the GGUF metadata key
`tokenizer.chat_template`, rendered the way Hugging Face transformers renders it
(sandboxed Jinja, `trim_blocks`/`lstrip_blocks`, `raise_exception`, `strftime_now`),
so a prompt built here matches the one the model was trained on.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext

from smolforge.templates import BoundedSandbox, check_printable, render_bounded

# Used when a GGUF carries no template: ChatML, which SmolLM2 and many others use.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass-through for the `{% generation %}` tag some HF templates use."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    check_printable(x, "tojson", 1 + (indent if isinstance(indent, int) and indent > 0 else 0))
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)


class ChatTemplate:
    """A compiled chat template; `render(messages)` gives the prompt text, under the
    time and size limits of smolforge's templates (a GGUF may come from anyone)."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        self.source = source or CHATML
        env = BoundedSandbox(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        self._template = env.from_string(self.source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return render_bounded(self._template, {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "raise_exception": _raise,
            "strftime_now": lambda f: datetime.now().strftime(f),
        })
