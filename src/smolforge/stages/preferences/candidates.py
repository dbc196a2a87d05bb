"""`candidates`: several completions per prompt from several teachers, kept together
in one list column (UltraFeedback, Cui et al. 2023, arXiv:2310.01377; the package
docstring describes the whole chain)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Engine
from smolforge.registry import stages
from smolforge.stages.base import Record, Result, Shards
from smolforge.stages.llm import LLMStage
from smolforge.templates import render, template_hash


class Teacher(BaseModel):
    """One source of candidates: an engine and the sampling parameters it is
    asked with (unset fields: the stage's)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="label in the data and the reports (default: the model)")
    engine: str | dict[str, Any] | None = Field(None, description="default: the stage's engine")
    n: int | None = Field(None, ge=1, le=64, description="completions per prompt (default: the stage's n)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    seed: int | None = None

    def overrides(self) -> dict[str, Any]:
        keys = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@stages.register
class Candidates(LLMStage):
    """`n` completions per prompt from one or several teachers (UltraFeedback's
    multi-model sampling), kept together in one list column, each tagged with its
    teacher, engine, model and sampling parameters. Empty completions are left
    out (noted in `meta`); a prompt with fewer than `min_candidates` left is
    rejected with the reason."""

    type: Literal["candidates"] = "candidates"
    teachers: list[Teacher] | None = Field(
        None, description="engines x sampling configs; default: every engine of `engine` with the stage's sampling"
    )
    n: int = Field(4, ge=1, le=64, description="completions per prompt per teacher")
    output: str = Field("candidates", description="list column for the candidates")
    prompt_column: str = Field("prompt", description="column for the rendered user prompt")
    system_column: str | None = Field("system", description="column for the rendered system prompt (when `system` is set)")
    min_candidates: int = Field(2, ge=1, description="fewer non-empty candidates than this: reject the prompt")

    @model_validator(mode="after")
    def _teachers_engine(self):
        if self.teachers and isinstance(self.engine, list):
            raise ValueError("with `teachers`, give each teacher its `engine` (the stage's `engine` must be one engine)")
        return self

    def provides(self) -> set[str]:
        cols = {self.output, self.prompt_column}
        return cols | ({self.system_column} if self.system and self.system_column else set())

    def _teachers(self) -> list[Teacher]:
        if self.teachers:
            return list(self.teachers)
        specs = self.engine if isinstance(self.engine, list) else [self.engine]
        return [Teacher(engine=s) for s in specs]

    def engines(self, ctx: StageContext) -> list[Engine]:
        default = self.engine if not isinstance(self.engine, list) else None
        return [ctx.engine(t.engine if t.engine is not None else default) for t in self._teachers()]

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {**super().fingerprint_extra(ctx), "teachers": [t.model_dump() for t in self._teachers()]}

    def teacher_names(self, ctx: StageContext) -> list[str]:
        teachers, engines = self._teachers(), self.engines(ctx)
        names = [t.name or str(e.identity().get("model") or e.kind) for t, e in zip(teachers, engines)]
        dup = Counter(names)
        return [f"{nm}[{i}]" if dup[nm] > 1 and not t.name else nm for i, (nm, t) in enumerate(zip(names, teachers))]

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        source, records, reqs, prompts = self.prepare(batch, ctx, res)
        base_seed = self.seed if self.seed is not None else ctx.seed
        teachers, engines, names = self._teachers(), self.engines(ctx), self.teacher_names(ctx)
        cands: list[list[dict]] = [[] for _ in records]
        dropped: list[list[dict]] = [[] for _ in records]
        errors: list[list[str]] = [[] for _ in records]
        for t_idx, (teacher, engine, tname) in enumerate(zip(teachers, engines, names)):
            over = teacher.overrides()
            t_reqs = []
            for rec, req in zip(records, reqs):
                r = replace(req, **over, n=teacher.n or self.n, stop=list(req.stop))
                seed = teacher.seed if teacher.seed is not None else base_seed
                # Each teacher samples with its own seed, so two teachers on one model
                # and identical settings still differ; greedy requests carry no seed.
                r.seed = derive_seed(seed, rec["id"], t_idx) if r.temperature > 0 else 0
                t_reqs.append(r)
            model = engine.identity().get("model")
            for i, resp in enumerate(ctx.generate(engine, t_reqs)):
                if resp.error:
                    errors[i].append(f"{tname} ({engine.kind}): {resp.error}")
                    continue
                sampling = {k: v for k, v in t_reqs[i].sampling().items() if k != "json_schema"}
                for comp in resp.completions:
                    item = {"text": comp.text.strip(), "teacher": tname, "engine": engine.kind,
                            "model": None if model is None else str(model), "sampling": sampling,
                            "finish_reason": comp.finish_reason, "tokens": int(comp.tokens)}
                    if item["text"]:
                        cands[i].append(item)
                    else:
                        dropped[i].append({"teacher": tname, "reason": "empty output"})
        n_cands = 0
        for i, rec in enumerate(records):
            if errors[i]:
                res.reject(rec, "engine error: " + "; ".join(errors[i]))
                continue
            if len(cands[i]) < self.min_candidates:
                why = f"{len(cands[i])} non-empty candidate(s), need {self.min_candidates}"
                if dropped[i]:
                    why += f" ({len(dropped[i])} empty)"
                res.reject(rec, why)
                continue
            new = {**rec, self.output: cands[i], self.prompt_column: prompts[i]}
            if self.system and self.system_column:
                new[self.system_column] = render(self.system, rec)
            new["meta"] = {**rec.get("meta", {}), ctx.stage_name: {
                "template_hash": template_hash(source + (self.system or "")),
                "teachers": names, "dropped": dropped[i], "created_at": round(time.time(), 3)}}
            n_cands += len(cands[i])
            res.keep(new)
        res.counts["candidates"] = n_cands
        res.counts["empty_candidates"] = sum(len(d) for d in dropped)
        return res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        per: Counter = Counter()
        for j in range(len(out)):
            for rec in out.columns(j, [self.output]):
                per.update(c["teacher"] for c in rec[self.output] or [])
        return {"candidates_per_teacher": dict(per)}
