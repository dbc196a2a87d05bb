"""`pairwise_judge`: which of two texts is better, asked in both orders.

LLM judges prefer whichever answer they see first (or second) more often than the
answers deserve (Zheng et al., 2023, "Judging LLM-as-a-Judge with MT-Bench and
Chatbot Arena", position bias). So every pair is asked twice, A/B and B/A: a side
wins only when both orders prefer it, otherwise the pair is a tie (MT-Bench's
"conservative" swap rule). Each order's preference is P("A") / (P("A") + P("B"))
from the answer token's top logprobs; an engine without logprobs falls back to the
letter in the text.

`judge_pairs(engine_or_generate, records, ...)` is the plain function behind the
stage, for other stages (preference pairs) to call.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.engines.base import Completion, Engine, Request, Response, chat
from smolforge.registry import stages
from smolforge.stages.base import Record, Result, Shards
from smolforge.stages.llm import LLMStage
from smolforge.templates import render

DEFAULT_PAIRWISE_TEMPLATE = """\
{% if prompt %}Instruction: {{ prompt }}

{% endif %}Response A:
{{ a }}

Response B:
{{ b }}

Which response is better{% if prompt %} for the instruction{% endif %}: more helpful, correct and clearly written? Answer with one letter, A or B.
Answer:"""
TOP_LOGPROBS = 20
MAX_TOKENS = 4


@dataclass
class PairVerdict:
    """The verdict on one pair. `p_a`: each order's probability that `a` is better
    (order 1 shows a as "A", order 2 shows a as "B"); `winner` "a", "b", "tie", or
    None when an order got no usable answer (`error` says why)."""

    winner: Literal["a", "b", "tie"] | None
    p_a: list[float] = field(default_factory=list)
    error: str | None = None
    parsed_without_logprobs: bool = False

    @property
    def p_a_mean(self) -> float | None:
        return statistics.fmean(self.p_a) if len(self.p_a) == 2 else None


def _norm(token: str) -> str:
    return token.strip().strip(".,:;!\"'*()[]").upper()


def letter_probability(comp: Completion, scan: int = MAX_TOKENS) -> tuple[float | None, bool]:
    """(P("A") normalised over the A/B tokens, fell back to text). From the first of
    the first `scan` tokens whose likely alternatives include A or B; without logprobs
    the first standalone A or B in the text counts as certain."""
    if comp.top_logprobs is None:
        m = re.search(r"\b([AB])\b", comp.text)
        return (None if m is None else float(m.group(1) == "A")), True
    import math

    for pos in comp.top_logprobs[:scan]:
        top = pos.get("top") or {}
        pa = sum(math.exp(v) for k, v in top.items() if _norm(k) == "A")
        pb = sum(math.exp(v) for k, v in top.items() if _norm(k) == "B")
        if pa + pb > 0:
            return pa / (pa + pb), False
    m = re.match(r"\W*([AB])\b", comp.text)
    return (None if m is None else float(m.group(1) == "A")), False


def decide(p_a_first: float, p_a_second: float) -> Literal["a", "b", "tie"]:
    """Both orders must agree: a wins if both give a more than 1/2, b if both less."""
    if p_a_first > 0.5 and p_a_second > 0.5:
        return "a"
    if p_a_first < 0.5 and p_a_second < 0.5:
        return "b"
    return "tie"


def pair_requests(records: Sequence[Record], template: str = DEFAULT_PAIRWISE_TEMPLATE,
                  system: str | None = None, raw: bool = False,
                  base: Request | None = None) -> list[Request]:
    """Two requests per record (`a`, `b` and any other template variables in it):
    [r0 A/B, r0 B/A, r1 A/B, ...]. `base` carries sampling settings (greedy default)."""
    reqs = []
    for rec in records:
        for view in ({**rec}, {**rec, "a": rec["b"], "b": rec["a"]}):
            prompt = render(template, view)
            if raw:
                req = Request(prompt=prompt)
            else:
                req = Request(messages=chat(prompt, render(system, view) if system else None))
            if base is not None:
                req.temperature, req.top_p, req.seed = base.temperature, base.top_p, base.seed
                req.top_k, req.min_p, req.repeat_penalty = base.top_k, base.min_p, base.repeat_penalty
            req.max_tokens, req.logprobs = MAX_TOKENS, TOP_LOGPROBS
            reqs.append(req)
    return reqs


def verdicts(responses: Sequence[Response]) -> list[PairVerdict]:
    """Responses in `pair_requests` order -> one verdict per record."""
    out = []
    for k in range(0, len(responses), 2):
        ps, fell, err = [], False, None
        for order, resp in enumerate(responses[k:k + 2]):
            if resp.error or not resp.completions:
                err = f"engine error: {resp.error or 'no completion'}"
                break
            p, fb = letter_probability(resp.completions[0])
            fell = fell or fb
            if p is None:
                err = f"no A/B in the judge's answer (order {order + 1}): {resp.completions[0].text.strip()[:200]!r}"
                break
            ps.append(p if order == 0 else 1 - p)  # order 2 shows `a` as "B"
        if err is not None:
            out.append(PairVerdict(None, ps, err, fell))
        else:
            out.append(PairVerdict(decide(ps[0], ps[1]), ps, None, fell))
    return out


def judge_pairs(engine: Engine | Callable[[list[Request]], list[Response]], records: Sequence[Record],
                template: str = DEFAULT_PAIRWISE_TEMPLATE, system: str | None = None,
                raw: bool = False) -> list[PairVerdict]:
    """Judge `records` (each with `a`, `b`, optionally `prompt`) in both orders.
    `engine` is an Engine, or a function from requests to responses (a stage passes
    `lambda reqs: ctx.generate(engine, reqs)` to go through the run's cache)."""
    generate = engine.generate if isinstance(engine, Engine) else engine
    return verdicts(generate(pair_requests(records, template, system, raw)))


@stages.register
class PairwiseJudge(LLMStage):
    """Compare two columns of each record with an LLM judge, in both orders; the
    winner ("a", "b" or "tie" when the orders disagree) goes into `column`."""

    type: Literal["pairwise_judge"] = "pairwise_judge"
    a: str = Field(description="column with the first text")
    b: str = Field(description="column with the second text")
    prompt: str | None = Field(None, description="column with the instruction both texts answer (optional)")
    column: str = Field("preference", description="column for the winner: a, b or tie")
    on_fail: Literal["reject", "keep"] = Field("reject", description="no usable answer: reject, or keep with an empty winner")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(MAX_TOKENS, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_template(cls, data: Any) -> Any:
        if isinstance(data, dict) and not (data.get("template") or data.get("template_file")):
            data = {**data, "template": DEFAULT_PAIRWISE_TEMPLATE}
        return data

    def requires(self) -> set[str]:
        names = super().requires() - {"a", "b", "prompt"}
        return names | {self.a, self.b} | ({self.prompt} if self.prompt else set())

    def provides(self) -> set[str]:
        return {self.column, f"{self.column}_p_a"}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        source = self.prompt_source(ctx)
        views = [{**r, "a": r.get(self.a), "b": r.get(self.b), "prompt": r.get(self.prompt) if self.prompt else None}
                 for r in batch]
        engines = self.engines(ctx)
        base = Request(prompt="", temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                       min_p=self.min_p, repeat_penalty=self.repeat_penalty, seed=self.seed or 0)
        try:
            reqs = pair_requests(views, source, self.system, self.raw, base)
        except Exception as e:  # noqa: BLE001 - a template error: every record, one reason
            for r in batch:
                res.reject(r, f"template error: {type(e).__name__}: {e}")
            return res
        for r in reqs:
            r.max_tokens = self.max_tokens
        per_engine = [verdicts(ctx.generate(engine, reqs)) for engine in engines]
        fell = 0
        for i, rec in enumerate(batch):
            vs = [v[i] for v in per_engine]
            errors = [v.error for v in vs if v.error]
            fell += any(v.parsed_without_logprobs for v in vs)
            if errors:
                if self.on_fail == "reject":
                    res.reject(rec, "; ".join(errors))
                else:
                    res.keep({**rec, self.column: None, f"{self.column}_p_a": None})
                continue
            p1 = statistics.fmean(v.p_a[0] for v in vs)
            p2 = statistics.fmean(v.p_a[1] for v in vs)
            winner = decide(p1, p2)
            meta = {**rec.get("meta", {}), ctx.stage_name: {
                "p_a": [round(p1, 6), round(p2, 6)],
                "engines": [{"engine": e.kind, "model": e.identity().get("model"), "winner": v.winner,
                             "p_a": [round(p, 6) for p in v.p_a]} for e, v in zip(engines, vs)]}}
            res.keep({**rec, self.column: winner, f"{self.column}_p_a": (p1 + p2) / 2, "meta": meta})
            res.counts[f"winner_{winner}"] = res.counts.get(f"winner_{winner}", 0) + 1
        res.counts["parsed_without_logprobs"] = float(fell)
        return res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        from smolforge.stages.judges.judge import judge_check

        wins: dict[str, int] = {}
        orders: list[tuple[float, float]] = []
        for j in range(len(out)):
            for rec in out.columns(j, [self.column, "meta"]):
                key = str(rec.get(self.column))
                wins[key] = wins.get(key, 0) + 1
                meta = rec.get("meta") or {}
                meta = json.loads(meta) if isinstance(meta, str) else meta
                p_a = (meta.get(ctx.stage_name) or {}).get("p_a") or []
                if len(p_a) == 2:
                    orders.append((p_a[0], p_a[1]))
        check = judge_check([p for o in orders for p in o], orders=orders)
        check["degenerate"] = [d for d in check["degenerate"] if not d.startswith("one constant")]
        return {"winners": dict(sorted(wins.items())), "judge_check": check}
