"""`render`: write a Jinja template's output into a column, without an LLM.

For the glue between LLM stages: Nemotron-CC appends its generated question-answer
pairs to the original passage (`{{ original }}\n\n{{ text }}`), a recipe may join
an instruction and its context into one prompt, or format a record for export.
Templates run in the same sandbox as prompt templates; a record whose template
fails is rejected with the error, and an empty result is rejected too (unless
`allow_empty`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.templates import load_source, render, variables


@stages.register
class Render(MapStage):
    """Render `template` (or `template_file`) per record into `output`."""

    type: Literal["render"] = "render"
    output: str = Field(description="column written")
    template: str | None = Field(None, description="inline Jinja template")
    template_file: Annotated[str | None, FILE] = Field(None, description="Jinja file, relative to the recipe")
    allow_empty: bool = Field(False, description="keep records whose result is empty")

    @model_validator(mode="after")
    def _one_template(self):
        if (self.template is None) == (self.template_file is None):
            raise ValueError("set exactly one of `template` or `template_file`")
        return self

    def requires(self) -> set[str]:
        return set(variables(self.template)) if self.template else set()

    def provides(self) -> set[str]:
        return {self.output}

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return load_source(self.template, self.template_file, ctx.recipe_dir)

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        source = load_source(self.template, self.template_file, ctx.recipe_dir)
        res = Result()
        for rec in batch:
            try:
                out = render(source, rec)
            except Exception as e:  # undefined column, bad filter: this record only
                res.reject(rec, f"template error: {type(e).__name__}: {e}")
                continue
            if not out and not self.allow_empty:
                res.reject(rec, f"render: empty {self.output!r}")
                continue
            res.keep({**rec, self.output: out})
        return res
