"""`judge`: an LLM scores each record against a rubric.

Follows FineWeb-Edu's annotation set-up: a rubric prompt ending in a line such as
`Educational score: <points>`; the score is parsed from the answer and the rest of
the answer is kept as the justification. With `structured: true` the answer is
constrained to JSON `{"justification": str, "score": int}` (a grammar on the
embedded engine, `response_format` on servers), which small judges need.
Unparsable or out-of-range answers are rejected with the raw answer as the reason.
With several engines the scores are averaged and their spread is kept.
"""

from __future__ import annotations

import json
import re
import statistics
from typing import Any, Literal

from pydantic import Field, field_validator

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import Record, Result
from smolforge.stages.generate import LLMStage

DEFAULT_SCORE_PATTERN = r"score\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)"


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
    column: str = Field("score", description="column for the score")
    justification_column: str | None = Field(
        None, description="column for the judge's justification (default: <column>_justification)"
    )
    min_score: float = 0
    max_score: float = 5
    score_pattern: str = Field(DEFAULT_SCORE_PATTERN, description="regex; group 1 is the score, last match wins")
    structured: bool = Field(False, description="constrain the answer to JSON {justification, score}")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)

    @field_validator("score_pattern")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        try:
            if re.compile(v).groups < 1:
                raise ValueError("needs a capture group for the score")
        except re.error as e:
            raise ValueError(f"invalid regex: {e}") from None
        return v

    @property
    def reason_column(self) -> str:
        return self.justification_column or f"{self.column}_justification"

    def provides(self) -> set[str]:
        return {self.column, self.reason_column}

    def schema(self) -> dict[str, Any] | None:
        if not self.structured:
            return None
        lo, hi = int(self.min_score), int(self.max_score)
        return {
            "type": "object",
            "properties": {
                "justification": {"type": "string"},
                "score": {"type": "integer", "enum": list(range(lo, hi + 1))},
            },
            "required": ["justification", "score"],
        }

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        records, reqs, _ = self.build_requests(batch, ctx, res)
        if not reqs:
            return res
        source = self.prompt_source(ctx)
        engines = self.engines(ctx)
        scores: list[list[float]] = [[] for _ in records]
        reasons: list[list[str]] = [[] for _ in records]
        problems: list[list[str]] = [[] for _ in records]
        provs: list[dict] = [{} for _ in records]
        for engine in engines:
            for i, resp in enumerate(ctx.generate(engine, reqs)):
                if resp.error:
                    problems[i].append(f"engine error ({engine.kind}): {resp.error}")
                    continue
                parsed: list[float] = []
                for comp in resp.completions:
                    score, why = parse_score(comp.text, self.score_pattern, self.structured)
                    if score is None:
                        problems[i].append(f"unparsable judge answer: {comp.text.strip()[:500]!r}")
                    elif not self.min_score <= score <= self.max_score:
                        problems[i].append(
                            f"judge score {score:g} outside [{self.min_score:g}, {self.max_score:g}]: {comp.text.strip()[:500]!r}"
                        )
                    else:
                        parsed.append(score)
                        reasons[i].append(why)
                scores[i].extend(parsed)
                prov = self.provenance(engine, reqs[i], resp, ctx, source)
                provs[i].setdefault("judges", []).append({**prov, "scores": parsed})
        for i, rec in enumerate(records):
            if not scores[i]:
                res.reject(rec, "; ".join(problems[i]))
                continue
            new = dict(rec)
            new[self.column] = statistics.fmean(scores[i])
            new[self.reason_column] = reasons[i][0] if len(reasons[i]) == 1 else json.dumps(reasons[i])
            entry = {"scores": scores[i], **provs[i]}
            if len(scores[i]) > 1:
                entry["spread"] = max(scores[i]) - min(scores[i])
            new["meta"] = {**rec.get("meta", {}), ctx.stage_name: entry}
            res.keep(new)
        return res
