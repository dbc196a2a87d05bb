"""`magpie`: instructions written by an aligned model itself, from its chat template.

Magpie (Xu et al. 2024, *Magpie: Alignment Data Synthesis from Scratch by
Prompting Aligned LLMs with Nothing*, arXiv:2406.08464): an instruction-tuned
model given only the text its chat template puts before a user message (the
"pre-query template", e.g. ChatML's `<|im_start|>user\\n`, after the system turn
if any) writes a plausible user query itself, because that is what it has seen
follow. Generation stops at the end of the turn (`<|im_end|>`). A second request
answers the query. A domain system prompt (math, code, writing) steers what kind
of queries come out, as in Magpie's domain-specific sets.

Both requests are raw completions built from the same chat template, so this runs
on the embedded engine and on any OpenAI-compatible server's completions endpoint
(vLLM, SGLang, llama.cpp server...). A chat-only API cannot do it: it always
closes the user turn itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field

from smolforge.context import StageContext
from smolforge.engines.base import Engine, chat
from smolforge.engines.chat_template import CHATML, ChatTemplate
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.stages.llm import LoopLLM, first_completion, load_template, with_knobs

LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
PRESETS = {"chatml": CHATML, "llama3": LLAMA3, "phi3": PHI3}
_SENTINEL = "\u2063MAGPIE_QUERY\u2063"
_MARKUP = re.compile(r"<\|[^|<>\s]{1,40}\|>|<(?:start|end)_of_turn>")


class PreQuery:
    """The raw texts Magpie needs from a chat template, for one system prompt:
    `prefix` (everything before the user's words), `stop` (what closes the user
    turn) and `respond(query)` (the prompt that asks for the answer)."""

    def __init__(self, template: ChatTemplate, system: str | None):
        self.template = template
        self.system = system
        before, after = self._split(add_generation_prompt=False)
        self.prefix = before
        end = after.strip()
        if not end:
            raise ValueError("magpie: the chat template writes nothing after a user message, "
                             "so the end of the turn is unknown; set `query_stop`")
        self.stop = [end]
        self.markup = sorted(set(_MARKUP.findall(before + after)))

    def _messages(self, query: str) -> list[dict[str, str]]:
        return chat(query, self.system)

    def _split(self, add_generation_prompt: bool) -> tuple[str, str]:
        text = self.template.render(self._messages(_SENTINEL), add_generation_prompt=add_generation_prompt)
        if text.count(_SENTINEL) != 1:
            raise ValueError("magpie: the chat template does not write the user message once")
        before, after = text.split(_SENTINEL)
        return before, after

    def respond(self, query: str) -> str:
        return self.template.render(self._messages(query), add_generation_prompt=True)


def engine_chat_template(engine: Engine) -> ChatTemplate | None:
    """The chat template an engine applies to messages, if it can tell."""
    fn = getattr(engine, "chat_template", None)
    if callable(fn):
        return fn()
    if engine.kind == "llamacpp":  # the GGUF's own template, loaded with the model
        engine._load()  # type: ignore[attr-defined]
        return engine._template  # type: ignore[attr-defined]
    return None


@stages.register
class Magpie(LoopLLM, MapStage):
    """Per input record, `n` user queries written by the model from the pre-query
    template (raw completion at `temperature` 1.0, stopped at the end of the user
    turn), each answered by a second raw completion (`response_temperature`,
    `response_max_tokens`). The record's `domain_column` value picks a system
    prompt from `system_prompts` (a mapping, or a YAML file of one, relative to
    the recipe); a domain mapped to null, or no domain, means no system turn (the
    template's default, if it has one). `chat_template`: `auto` (the engine's
    own, from the GGUF), `chatml`, `llama3`, `phi3`, or a Jinja chat template.

    Drops, each with its reason: empty query, a query cut at `max_tokens` before
    the end of the turn (`drop_truncated`), a query containing chat markup, an
    empty answer. Output: `instruction` (the query), `response_column` (the
    answer), `system`; knob `domain`. Ids are `<id>.<k>` when `n` > 1."""

    type: Literal["magpie"] = "magpie"
    n: int = Field(1, ge=1, le=64, description="queries per input record")
    domain_column: str = Field("domain", description="column naming the domain (may be absent)")
    system_prompts: Annotated[dict[str, str | None] | str | None, FILE] = Field(
        None, description="domain -> system prompt, or a YAML file of that mapping"
    )
    chat_template: str = Field("auto", description="auto, chatml, llama3, phi3, or Jinja text")
    query_stop: list[str] | None = Field(None, description="override the end-of-turn stop strings")
    output: str = Field("instruction", description="column for the query")
    response_column: str = Field("text", description="column for the answer")
    drop_truncated: bool = Field(True, description="drop queries cut at max_tokens")
    max_tokens: int = Field(128, ge=1, description="tokens for the query")
    temperature: float = Field(1.0, ge=0, description="query sampling (Magpie: 1.0)")
    response_max_tokens: int = Field(512, ge=1)
    response_temperature: float = Field(0.0, ge=0, description="answer sampling (0: greedy)")

    def provides(self) -> set[str]:
        return {self.output, self.response_column, "system"}

    def template_files(self) -> list[str]:
        return [self.system_prompts] if isinstance(self.system_prompts, str) else []

    def prompts_map(self, ctx: StageContext) -> dict[str, str | None]:
        if isinstance(self.system_prompts, str):
            data = yaml.safe_load(load_template(ctx, self.system_prompts)) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{self.system_prompts}: expected a mapping domain -> system prompt")
            return {str(k): (None if v is None else str(v)) for k, v in data.items()}
        return dict(self.system_prompts or {})

    def template(self, engine: Engine) -> ChatTemplate:
        if self.chat_template in PRESETS:
            return ChatTemplate(PRESETS[self.chat_template])
        if self.chat_template != "auto":
            return ChatTemplate(self.chat_template)
        tmpl = engine_chat_template(engine)
        if tmpl is None:
            raise ValueError(f"magpie: the {engine.kind} engine does not expose its chat template; set "
                             "`chat_template:` to chatml, llama3, phi3 or the model's Jinja template")
        return tmpl

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        engine = self.llm(ctx)
        tmpl = self.template(engine)
        prompts = self.prompts_map(ctx)
        pre: dict[str | None, PreQuery] = {}
        jobs: list[tuple[Record, PreQuery, str]] = []
        for rec in batch:
            domain = rec.get(self.domain_column)
            domain = None if domain is None else str(domain)
            if domain is not None and prompts and domain not in prompts:
                res.reject(rec, f"unknown domain {domain!r} (system_prompts has: {', '.join(prompts)})")
                continue
            system = prompts.get(domain) if domain is not None else None
            if system not in pre:
                pre[system] = PreQuery(tmpl, system)
            jobs.append((rec, pre[system], domain or "none"))
        qreqs = [self.request(ctx, ("query", rec["id"]), prompt=p.prefix,
                              stop=self.query_stop or p.stop, n=self.n) for rec, p, _ in jobs]
        drafts: list[tuple[Record, PreQuery, str, dict]] = []
        for (rec, p, domain), req, resp in zip(jobs, qreqs, ctx.generate(engine, qreqs)):
            if resp.error or not resp.completions:
                res.reject(rec, f"engine error: {resp.error or 'no completion'}")
                continue
            for k, comp in enumerate(resp.completions):
                new = {**rec, self.output: comp.text.strip(), "system": p.system or ""}
                if self.n > 1:
                    new["id"] = f"{rec['id']}.{k}"
                new = with_knobs(new, {"domain": domain}, ctx.stage_name,
                                 {"query": self.provenance(engine, req, resp, comp, p.prefix)})
                reason = self.check_query(new[self.output], comp.finish_reason, p)
                if reason:
                    res.reject(new, reason)
                else:
                    drafts.append((new, p, domain, {}))
        areqs = [self.request(ctx, ("answer", new["id"]), prompt=p.respond(new[self.output]),
                              max_tokens=self.response_max_tokens, temperature=self.response_temperature,
                              stop=self.query_stop or p.stop)
                 for new, p, _, _ in drafts]
        for (new, _p, _, _), req, resp in zip(drafts, areqs, ctx.generate(engine, areqs)):
            comp = first_completion(resp)
            if comp is None:
                res.reject(new, f"engine error (answer): {resp.error or 'no completion'}")
                continue
            new[self.response_column] = comp.text.strip()
            new["meta"][ctx.stage_name]["response"] = self.provenance(engine, req, resp, comp)
            if not new[self.response_column]:
                res.reject(new, "empty answer")
            else:
                res.keep(new)
        return res

    def check_query(self, query: str, finish_reason: str, p: PreQuery) -> str | None:
        if not query:
            return "empty query: the model closed the user turn at once"
        if self.drop_truncated and finish_reason == "length":
            return f"query cut at max_tokens ({self.max_tokens}) before the end of the turn"
        for m in p.markup:
            if m in query:
                return f"query contains chat markup: {m!r}"
        return None

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        extra = super().fingerprint_extra(ctx)
        extra["system_prompts"] = self.prompts_map(ctx)
        return extra
