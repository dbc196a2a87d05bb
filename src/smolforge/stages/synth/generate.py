"""LLM stages: the shared base (`LLMStage`) and `generate`.

`generate` renders a Jinja prompt per record, sends the whole batch to the engine
(or to several engines, to collect completions from several teachers) and writes
the completion into `output`. Provenance (engine, model, template hash, sampling
parameters, seed, finish reason) goes into `meta[<stage name>]`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Engine, Request, Response
from smolforge.licences import licence_id
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.templates import load_source, render, template_hash, template_variables, variables

EngineField = str | dict[str, Any] | list[str | dict[str, Any]] | None


class LLMStage(MapStage):
    """Fields and plumbing shared by every stage that prompts an LLM."""

    engine: EngineField = Field(
        None, description="engine(s) for this stage (default: the recipe's engine)"
    )
    template: str | None = Field(None, description="inline Jinja prompt template")
    template_file: Annotated[str | None, FILE] = Field(None, description="Jinja prompt file, relative to the recipe")
    system: str | None = Field(None, description="system prompt (Jinja, optional)")
    raw: bool = Field(False, description="send the prompt as a raw completion (no chat template)")
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, description="sampling seed (default: the recipe seed)")
    n: int = Field(1, ge=1, le=64, description="samples per record")
    _recipe_dir: Path | None = PrivateAttr(None)  # set by recipe validation, for requires()

    @model_validator(mode="after")
    def _one_template(self):
        if (self.template is None) == (self.template_file is None):
            raise ValueError("set exactly one of `template` or `template_file`")
        return self

    # -- helpers for subclasses

    def prompt_source(self, ctx: StageContext) -> str:
        return load_source(self.template, self.template_file, ctx.recipe_dir, ctx.allowed_roots)

    def requires(self) -> set[str]:
        # A template file's variables are known once validation has set the
        # recipe's folder, so a typo there is caught before the run too.
        names = set(template_variables(self.template, self.template_file, self._recipe_dir))
        return names | (set(variables(self.system)) if self.system else set())

    def engines(self, ctx: StageContext) -> list[Engine]:
        specs = self.engine if isinstance(self.engine, list) else [self.engine]
        return [ctx.engine(s) for s in specs]

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {
            "template": self.prompt_source(ctx),
            "engines": [e.identity() for e in self.engines(ctx)],
            "seed": self.seed if self.seed is not None else ctx.seed,
        }

    def schema(self) -> dict[str, Any] | None:
        """A JSON schema to constrain output to (judges use one)."""
        return None

    def prepare(self, batch: list[Record], ctx: StageContext, res: Result
                ) -> tuple[str, list[Record], list[Request], list[str]]:
        """The start of every generating `process`: the prompt source, then the records
        whose prompt rendered with their requests and prompts; a record whose template
        failed goes to `res`'s rejects with the reason."""
        source = self.prompt_source(ctx)
        ok, reqs, prompts, failed = self.build_requests(batch, ctx, source)
        for i, reason in failed:
            res.reject(batch[i], reason)
        return source, [batch[i] for i in ok], reqs, prompts

    def build_requests(
        self, batch: list[Record], ctx: StageContext, source: str
    ) -> tuple[list[int], list[Request], list[str], list[tuple[int, str]]]:
        """Render every record's prompt from `source`. Returns the indexes of the
        records that rendered, their requests and prompts, and (index, reason) for
        the records whose template failed."""
        seed = self.seed if self.seed is not None else ctx.seed
        ok, reqs, prompts, failed = [], [], [], []
        for i, rec in enumerate(batch):
            try:
                prompt = render(source, rec)
                system = render(self.system, rec) if self.system else None
            except Exception as e:  # undefined column, bad filter: this record only
                failed.append((i, f"template error: {type(e).__name__}: {e}"))
                continue
            if self.raw:
                req = Request(prompt=prompt)
            else:
                msgs = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}
                ]
                req = Request(messages=msgs)
            req.max_tokens, req.temperature, req.top_p = self.max_tokens, self.temperature, self.top_p
            req.top_k, req.min_p, req.repeat_penalty = self.top_k, self.min_p, self.repeat_penalty
            req.stop, req.n, req.json_schema = list(self.stop), self.n, self.schema()
            # Greedy decoding ignores the seed: leave it out so that identical greedy
            # prompts share one cache entry.
            req.seed = derive_seed(seed, rec["id"]) if self.temperature > 0 else 0
            ok.append(i)
            reqs.append(req)
            prompts.append(prompt)
        return ok, reqs, prompts, failed

    def provenance(self, engine: Engine, req: Request, resp: Response, ctx: StageContext, source: str) -> dict:
        return {
            "engine": engine.kind,
            "model": engine.identity().get("model"),
            "licence": licence_id(engine),  # the teacher's licence (smolforge.licences)
            "template_hash": template_hash(source + (self.system or "")),
            "sampling": {k: v for k, v in req.sampling().items() if k != "json_schema"},
            "created_at": round(time.time(), 3),
            "cached": resp.cached,
        }


@stages.register
class Generate(LLMStage):
    """Prompt an LLM for every record. With `n` samples or several engines, each
    completion becomes its own record (`<id>.<k>`); empty completions are rejected."""

    type: Literal["generate"] = "generate"
    output: str = Field("text", description="column for the completion")
    prompt_column: str | None = Field("prompt", description="column for the rendered prompt (null: don't keep)")
    json_schema: Annotated[dict[str, Any] | str | None, FILE] = Field(
        None, description="constrain the output to this JSON schema (inline, or a JSON/YAML "
        "file relative to the recipe): a grammar on llamacpp, response_format on openai "
        "(see smolforge.stages.verify.json_schema)")

    @field_validator("json_schema")
    @classmethod
    def _valid_json_schema(cls, v: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
        from smolforge.stages.verify.json_schema import validate_schema_field

        return validate_schema_field(v)

    def provides(self) -> set[str]:
        return {self.output} | ({self.prompt_column} if self.prompt_column else set())

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        extra = super().fingerprint_extra(ctx)
        if isinstance(self.json_schema, str):  # the file's content, not only its name
            from smolforge.stages.verify.json_schema import load_schema

            extra["json_schema"] = load_schema(self.json_schema, ctx)
        return extra

    def build_requests(
        self, batch: list[Record], ctx: StageContext, source: str
    ) -> tuple[list[int], list[Request], list[str], list[tuple[int, str]]]:
        out = super().build_requests(batch, ctx, source)
        if self.json_schema is not None:
            from smolforge.stages.verify.json_schema import load_schema

            schema = load_schema(self.json_schema, ctx)
            for req in out[1]:
                req.json_schema = schema
        return out

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        source, records, reqs, prompts = self.prepare(batch, ctx, res)
        engines = self.engines(ctx)
        fan_out = self.n * len(engines) > 1
        outputs: dict[int, list[Record]] = {i: [] for i in range(len(records))}
        errors: dict[int, list[str]] = {i: [] for i in range(len(records))}
        for e_idx, engine in enumerate(engines):
            for i, resp in enumerate(ctx.generate(engine, reqs)):
                rec = records[i]
                if resp.error:
                    errors[i].append(f"{engine.kind}: {resp.error}")
                    continue
                prov = self.provenance(engine, reqs[i], resp, ctx, source)
                if reqs[i].json_schema is not None:  # how the schema was enforced
                    prov["json_mode"] = resp.json_mode
                for k, comp in enumerate(resp.completions):
                    new = dict(rec)
                    if fan_out:
                        new["id"] = f"{rec['id']}.{e_idx * self.n + k}"
                    new[self.output] = comp.text.strip()
                    if self.prompt_column:
                        new[self.prompt_column] = prompts[i]
                    new["meta"] = {
                        **rec.get("meta", {}),
                        ctx.stage_name: {**prov, "finish_reason": comp.finish_reason, "tokens": comp.tokens},
                    }
                    outputs[i].append(new)
        for i, rec in enumerate(records):
            for new in outputs[i]:
                if new[self.output]:
                    res.keep(new)
                else:
                    res.reject(new, "empty output")
            for err in errors[i]:
                res.reject(rec, f"engine error: {err}")
        return res
