"""The LLM stage bases, with the engine and sampling fields defined once (`Sampling`).

`LLMStage` is a map stage with a prompt template per record (`generate`, `judge`,
`pairwise_judge`, `candidates`, `rate`); `LoopLLM` serves stages that call the model in
rounds (`self_instruct`, `evol_instruct`, `persona_expand`) or several times per record
(`magpie`). Every request goes through `ctx.generate` (cache, retries, usage, and a retry
of failed work on re-run); `stage_engines` is how the runner, the executors and the dry
run find a stage's engines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Completion, Engine, Request, Response, chat
from smolforge.licences import licence_id
from smolforge.paths import FILE
from smolforge.stages.base import MapStage, Record, Result, Shards, Stage
from smolforge.templates import (
    TemplateError,
    load_source,
    render,
    template_hash,
    template_variables,
    variables,
)

EngineField = str | dict[str, Any] | list[str | dict[str, Any]] | None


class Sampling(BaseModel):
    """The engine and sampling fields of every LLM stage. A stage may give a field
    another default (`max_tokens: int = Field(80, ge=1)`), never a second meaning."""

    engine: EngineField = Field(None, description="engine(s) for this stage (default: the recipe's engine)")
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0)
    seed: int | None = Field(None, description="sampling seed (default: the recipe seed)")

    def engines(self, ctx: StageContext) -> list[Engine]:
        specs = self.engine if isinstance(self.engine, list) else [self.engine]
        return [ctx.engine(s) for s in specs]

    def base_seed(self, ctx: StageContext) -> int:
        return self.seed if self.seed is not None else ctx.seed


def stage_engines(stage: Stage, ctx: StageContext) -> list[Engine]:
    """The engines a stage calls (none for a stage without a model)."""
    return list(stage.engines(ctx)) if isinstance(stage, Sampling) else []




class LLMStage(Sampling, MapStage):
    """A map stage that prompts an LLM for each record: a Jinja prompt (`template` or
    `template_file`, `system`), requests built per record with a seed derived from the
    record id, provenance for `meta`."""

    template: str | None = Field(None, description="inline Jinja prompt template")
    template_file: Annotated[str | None, FILE] = Field(None, description="Jinja prompt file, relative to the recipe")
    system: str | None = Field(None, description="system prompt (Jinja, optional)")
    raw: bool = Field(False, description="send the prompt as a raw completion (no chat template)")
    stop: list[str] = Field(default_factory=list)
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

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {
            "template": self.prompt_source(ctx),
            "engines": [e.identity() for e in self.engines(ctx)],
            "seed": self.base_seed(ctx),
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
        seed = self.base_seed(ctx)
        ok, reqs, prompts, failed = [], [], [], []
        for i, rec in enumerate(batch):
            try:
                prompt = render(source, rec)
                system = render(self.system, rec) if self.system else None
            except Exception as e:  # undefined column, bad filter: this record only
                failed.append((i, f"template error: {type(e).__name__}: {e}"))
                continue
            req = Request(prompt=prompt) if self.raw else Request(messages=chat(prompt, system))
            req.max_tokens, req.temperature = self.max_tokens, self.temperature
            req.top_p, req.top_k, req.min_p, req.repeat_penalty = self.top_p, self.top_k, self.min_p, self.repeat_penalty
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


class LoopLLM(Sampling):
    """Request helpers for stages that call one LLM in rounds over their whole input
    (`self_instruct`, `evol_instruct`, `persona_expand`) or with several requests
    per record (`magpie`); mixed into a `GlobalStage` or `MapStage`."""

    @field_validator("engine")
    @classmethod
    def _one_engine(cls, v: Any) -> Any:
        if isinstance(v, list):
            raise ValueError("this stage takes one engine, not a list")
        return v

    def llm(self, ctx: StageContext) -> Engine:
        return self.engines(ctx)[0]

    def template_files(self) -> list[str]:
        """Template paths this stage reads (part of its fingerprint)."""
        return []

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {
            "templates": [load_template(ctx, p) for p in self.template_files()],
            "engine": self.llm(ctx).identity(),
            "seed": self.base_seed(ctx),
        }

    def request(
        self,
        ctx: StageContext,
        key: Sequence[Any],
        *,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
        n: int = 1,
    ) -> Request:
        """One request; its sampling seed derives from the recipe seed, the stage
        and `key`, so a re-run sends the same requests and the cache answers."""
        temp = self.temperature if temperature is None else temperature
        base = self.base_seed(ctx)
        return Request(
            messages=messages,
            prompt=prompt,
            max_tokens=max_tokens or self.max_tokens,
            temperature=temp,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            stop=list(stop or []),
            n=n,
            seed=derive_seed(base, ctx.stage_name, *key) if temp > 0 else 0,
        )

    def provenance(self, engine: Engine, req: Request, resp: Response, comp: Completion,
                   template: str = "") -> dict[str, Any]:
        return {
            "engine": engine.kind,
            "model": engine.identity().get("model"),
            "template_hash": template_hash(template),
            "sampling": {k: v for k, v in req.sampling().items() if k != "json_schema"},
            "created_at": round(time.time(), 3),
            "cached": resp.cached,
            "finish_reason": comp.finish_reason,
            "tokens": comp.tokens,
        }


def load_template(ctx: StageContext, path: str) -> str:
    """A template file relative to the recipe; when the recipe's folder has no such
    file (a recipe written elsewhere that names a built-in template), the copy
    shipped with smolforge."""
    from smolforge.recipe import BUILTIN_DIR

    p = Path(path).expanduser()
    if not p.is_absolute() and not (ctx.recipe_dir / p).exists() and (BUILTIN_DIR / p).exists():
        return (BUILTIN_DIR / p).read_text()
    return load_source(None, path, ctx.recipe_dir)


def render_file(source: str, variables: dict[str, Any], path: str) -> str:
    """Render a stage's template; a broken template stops the run naming its file."""
    try:
        return render(source, variables)
    except Exception as e:
        raise TemplateError(f"{path}: {type(e).__name__}: {e}") from None


def spread(records: list[Record], n: int) -> list[list[Record]]:
    """Records split over `n` output shards in order, sizes differing by at most 1."""
    n = max(n, 1)
    out: list[list[Record]] = [[] for _ in range(n)]
    for i, rec in enumerate(records):
        out[i * n // max(len(records), 1)].append(rec)
    return out


def with_knobs(rec: Record, knobs: dict[str, Any], stage: str | None = None,
               prov: dict | None = None) -> Record:
    """A copy of `rec` whose `meta.knobs` has `knobs` merged in (and the stage's
    provenance under `meta[stage]`)."""
    meta = dict(rec.get("meta") or {})
    meta["knobs"] = {**(meta.get("knobs") or {}), **knobs}
    if stage and prov is not None:
        meta[stage] = prov
    return {**rec, "meta": meta}


def new_meta(ctx: StageContext) -> dict[str, Any]:
    """Provenance of a record a stage creates (sources get this from the runner)."""
    return {"recipe": ctx.recipe_name, "seed": ctx.seed, "created_by": ctx.stage_name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def first_completion(resp: Response) -> Completion | None:
    return resp.completions[0] if not resp.error and resp.completions else None


def input_records(shards: Shards) -> Iterator[tuple[int, Record]]:
    for i in range(len(shards)):
        for rec in shards[i]:
            yield i, rec
