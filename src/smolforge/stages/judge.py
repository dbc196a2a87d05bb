"""`judge`: an LLM scores each record against a rubric.

Follows FineWeb-Edu's annotation set-up: a rubric prompt ending in a line such as
`Educational score: <points>`; the score is parsed from the answer (last match of
`score_pattern`) and the rest of the answer is kept as the justification.

- `rubric:` a built-in rubric (`fineweb-edu`: additive 0-5 educational value on
  the first 2000 characters; `ultrafeedback`: instruction following, honesty,
  truthfulness, helpfulness, 1-5 each, one request per aspect as in the paper) or
  a rubric YAML file of your own (see `smolforge/rubrics/`). Or `template:` /
  `template_file:` for a one-aspect rubric inline.
- `inputs:` maps the rubric's variables to your columns (`{response: text}`).
- Several aspects: a column per aspect (`<column>_<aspect>`), and `column` holds
  their mean. Several engines: scores are averaged and the spread (max - min) is
  kept in `<column>_spread`, so disagreement between judges stays visible.
- `structured: true` constrains answers to JSON `{"justification", "score"}`.

Unparsable or out-of-range answers go to the rejects with the raw answer.
"""

from __future__ import annotations

import json
import re
import statistics
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from smolforge.context import StageContext, derive_seed
from smolforge.registry import closest, stages
from smolforge.stages.base import Record, Result
from smolforge.stages.generate import LLMStage
from smolforge.templates import variables

DEFAULT_SCORE_PATTERN = r"score\"?\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)"
RUBRIC_DIR = Path(str(resources.files("smolforge") / "rubrics"))


class Rubric(BaseModel):
    """A rubric file: one prompt template per aspect, the score range and pattern."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    min_score: float = 0
    max_score: float = 5
    max_chars: int = 2000
    score_pattern: str = DEFAULT_SCORE_PATTERN
    aspects: dict[str, str] = Field(min_length=1)


def builtin_rubrics() -> list[str]:
    return sorted(p.stem for p in RUBRIC_DIR.glob("*.yaml"))


def load_rubric(name_or_path: str, base_dir: str = ".") -> Rubric:
    """The rubric, read from its file on every call (a user may edit it between two
    runs in one process); parsing is cached by content."""
    path = RUBRIC_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        path = Path(base_dir) / Path(name_or_path).expanduser()
    if not path.is_file():
        hint = closest(name_or_path, builtin_rubrics())
        raise ValueError(
            f"unknown rubric {name_or_path!r}"
            + (f" (did you mean {hint!r}?)" if hint else f" (built-in: {', '.join(builtin_rubrics())}; or a YAML file)")
        )
    return _parse_rubric(path.read_text())


@lru_cache(maxsize=32)
def _parse_rubric(text: str) -> Rubric:
    return Rubric.model_validate(yaml.safe_load(text))


def parse_score(answer: str, pattern: str, structured: bool) -> tuple[float | None, str]:
    """(score, justification) from a judge's answer; score None if unparsable."""
    if structured:
        try:
            obj = json.loads(answer)
            return float(obj["score"]), str(obj.get("justification", "")).strip()
        except (ValueError, KeyError, TypeError):
            pass  # fall back to the pattern below
    matches = list(re.finditer(pattern, answer, re.IGNORECASE))
    if matches:
        m = matches[-1]
        line_start = answer.rfind("\n", 0, m.start()) + 1  # drop the whole score line
        justification = (answer[:line_start] + answer[m.end() :]).strip()
        return float(m.group(1)), justification
    bare = answer.strip().rstrip(".")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", bare):
        return float(bare), ""
    return None, answer.strip()


@stages.register("judge")
class Judge(LLMStage):
    """Score records with an LLM judge; keep the score and the justification."""

    type: Literal["judge"] = "judge"
    rubric: str | None = Field(None, description="built-in rubric name or rubric YAML file")
    inputs: dict[str, str] = Field(default_factory=dict, description="rubric variable -> column")
    column: str = Field("score", description="column for the (mean) score")
    justification_column: str | None = Field(
        None, description="column for the justification (default: <column>_justification)"
    )
    min_score: float | None = Field(None, description="default: the rubric's, else 0")
    max_score: float | None = Field(None, description="default: the rubric's, else 5")
    max_chars: int | None = Field(None, ge=1, description="`max_chars` in the rubric (default: the rubric's)")
    score_pattern: str | None = Field(None, description="regex, group 1 = score, last match wins")
    structured: bool = Field(False, description="constrain the answer to JSON {justification, score}")
    justify: bool = Field(True, description="structured: ask for a justification (<= 300 chars) before the score")
    sample_rate: float = Field(
        1.0, gt=0, le=1,
        description="judge only this share of records (chosen by a hash of the id and the seed); "
        "the others pass with an empty score, e.g. to label a sample for train_classifier",
    )
    on_fail: Literal["reject", "keep"] = Field(
        "reject", description="an unparsable answer: reject the record, or keep it with an empty score"
    )
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)

    _resolved: Rubric | None = PrivateAttr(None)  # a rubric file, once read

    @model_validator(mode="before")
    @classmethod
    def _rubric_or_template(cls, data: Any) -> Any:
        # A rubric replaces the template; LLMStage insists on exactly one template.
        if isinstance(data, dict) and data.get("rubric") and not (data.get("template") or data.get("template_file")):
            data = {**data, "template": "{# from rubric #}"}
        return data

    @field_validator("rubric")
    @classmethod
    def _known_rubric(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith((".yaml", ".yml")):
            load_rubric(v)  # raises with the closest name
        return v

    @field_validator("score_pattern")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            if re.compile(v).groups < 1:
                raise ValueError("needs a capture group for the score")
        except re.error as e:
            raise ValueError(f"invalid regex: {e}") from None
        return v

    # -- configuration resolved against the rubric

    def _rubric(self, ctx: StageContext | None) -> Rubric:
        if self.rubric:
            if ctx is None and self._resolved is not None:
                return self._resolved
            base = str(ctx.recipe_dir) if ctx is not None else "."
            self._resolved = load_rubric(self.rubric, base)
            return self._resolved
        source = self.prompt_source(ctx) if ctx is not None else (self.template or "")
        return Rubric(aspects={"score": source})

    def settings(self, ctx: StageContext | None) -> tuple[Rubric, float, float, str, int]:
        r = self._rubric(ctx)
        lo = self.min_score if self.min_score is not None else r.min_score
        hi = self.max_score if self.max_score is not None else r.max_score
        pattern = self.score_pattern or r.score_pattern
        return r, lo, hi, pattern, self.max_chars or r.max_chars

    @property
    def reason_column(self) -> str:
        return self.justification_column or f"{self.column}_justification"

    def requires(self) -> set[str]:
        if self.rubric and self.rubric.endswith((".yaml", ".yml")):
            return set(self.inputs.values())
        names: set[str] = set()
        for src in self._rubric(None).aspects.values():
            names |= variables(src)
        names -= {"max_chars"}
        return {self.inputs.get(n, n) for n in names}

    def provides(self) -> set[str]:
        cols = {self.column, self.reason_column, f"{self.column}_spread"}
        aspects = self._rubric(None).aspects if not (self.rubric or "").endswith((".yaml", ".yml")) else {}
        if len(aspects) > 1:
            cols |= {f"{self.column}_{a}" for a in aspects}
        return cols

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {**super().fingerprint_extra(ctx), "rubric": self._rubric(ctx).model_dump()}

    def schema(self) -> dict[str, Any] | None:
        if not self.structured:
            return None
        _, lo, hi, _, _ = self.settings(None)
        props: dict[str, Any] = {}
        if self.justify:  # reasoning first, then the score; bounded so answers fit max_tokens
            props["justification"] = {"type": "string", "maxLength": 300}
        props["score"] = {"type": "integer", "enum": list(range(int(lo), int(hi) + 1))}
        return {"type": "object", "properties": props, "required": list(props)}

    # -- the work

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        if self.sample_rate >= 1:
            return self._judge(batch, ctx)
        chosen = [r for r in batch if derive_seed(ctx.seed, ctx.stage_name, r["id"]) / 0x7FFFFFFF < self.sample_rate]
        res = self._judge(chosen, ctx)
        picked = {r["id"] for r in chosen}
        res.kept += [{**r, self.column: None} for r in batch if r["id"] not in picked]
        order = {r["id"]: i for i, r in enumerate(batch)}
        res.kept.sort(key=lambda r: order[r["id"]])
        return res

    def _judge(self, batch: list[Record], ctx: StageContext) -> Result:
        rubric, lo, hi, pattern, max_chars = self.settings(ctx)
        res = Result()
        views = [{**rec, **{var: rec.get(col) for var, col in self.inputs.items()}, "max_chars": max_chars} for rec in batch]
        aspects = list(rubric.aspects)
        scores: dict[str, list[list[float]]] = {a: [[] for _ in batch] for a in aspects}
        reasons: dict[str, list[str]] = {a: ["" for _ in batch] for a in aspects}
        problems: list[list[str]] = [[] for _ in batch]
        judges: list[list[dict]] = [[] for _ in batch]
        failed: set[int] = set()
        for aspect in aspects:
            index, reqs, _, bad = self.build_requests(views, ctx, rubric.aspects[aspect])
            for i, reason in bad:
                failed.add(i)
                problems[i].append(reason)
            for engine in self.engines(ctx):
                for k, resp in enumerate(ctx.generate(engine, reqs)):
                    i = index[k]
                    if resp.error:
                        problems[i].append(f"engine error ({engine.kind}): {resp.error}")
                        continue
                    parsed = []
                    for comp in resp.completions:
                        score, why = parse_score(comp.text, pattern, self.structured)
                        raw = comp.text.strip()[:500]
                        if score is None:
                            problems[i].append(f"unparsable judge answer{_of(aspect, aspects)}: {raw!r}")
                        elif not lo <= score <= hi:
                            problems[i].append(f"judge score {score:g} outside [{lo:g}, {hi:g}]{_of(aspect, aspects)}: {raw!r}")
                        else:
                            parsed.append(score)
                            reasons[aspect][i] = reasons[aspect][i] or why
                    scores[aspect][i].extend(parsed)
                    judges[i].append({"aspect": aspect, **self.provenance(engine, reqs[k], resp, ctx, rubric.aspects[aspect]),
                                      "scores": parsed})
        for i, rec in enumerate(batch):
            if i in failed or any(not scores[a][i] for a in aspects):
                reason = "; ".join(problems[i]) or "no judge answer"
                if self.on_fail == "reject":
                    res.reject(rec, reason)
                else:
                    meta = {**rec.get("meta", {}), ctx.stage_name: {"failed": reason, "judges": judges[i]}}
                    res.keep({**rec, self.column: None, "meta": meta})
                continue
            new = dict(rec)
            means = {a: statistics.fmean(scores[a][i]) for a in aspects}
            new[self.column] = statistics.fmean(means.values())
            if len(aspects) > 1:
                for a in aspects:
                    new[f"{self.column}_{a}"] = means[a]
                new[self.reason_column] = json.dumps({a: reasons[a][i] for a in aspects})
            else:
                new[self.reason_column] = reasons[aspects[0]][i]
            all_scores = [s for a in aspects for s in scores[a][i]]
            spread = max(max(scores[a][i]) - min(scores[a][i]) for a in aspects)
            new[f"{self.column}_spread"] = spread
            new["meta"] = {**rec.get("meta", {}), ctx.stage_name: {"scores": all_scores, "spread": spread,
                                                                    "judges": judges[i]}}
            res.keep(new)
        return res


def _of(aspect: str, aspects: list[str]) -> str:
    return f" ({aspect})" if len(aspects) > 1 else ""
