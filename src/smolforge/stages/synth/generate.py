"""`generate`: one prompt per record, its completion in `output`.

`generate` renders a Jinja prompt per record, sends the whole batch to the engine
(or to several engines, to collect completions from several teachers) and writes
the completion into `output`. Provenance (engine, model, template hash, sampling
parameters, seed, finish reason) goes into `meta[<stage name>]`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from smolforge.context import StageContext
from smolforge.engines.base import Request
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import Record, Result
from smolforge.stages.llm import LLMStage


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
