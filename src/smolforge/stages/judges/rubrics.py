"""Rubrics: what a judge asks. A rubric YAML holds one prompt per aspect (FineWeb-Edu's
additive 0-5 prompt, UltraFeedback's four aspects), the score range and pattern, and
its decomposed form: yes/no `criteria`, some reverse-keyed (docs/judges.md). Built-in
rubrics live in `smolforge/rubrics/`; a recipe may name its own file."""

from __future__ import annotations

import statistics
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smolforge.expr import ExprError, compile_regex
from smolforge.registry import closest
from smolforge.templates import TemplateError, variables

DEFAULT_SCORE_PATTERN = r"score\"?\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)"
DEFAULT_CRITERIA_TEMPLATE = """\
Here is an extract from a document:

{{ text[:max_chars] }}

Question: {{ question }} Answer yes or no.
Answer:"""
RUBRIC_DIR = Path(str(resources.files("smolforge") / "rubrics"))


class Criterion(BaseModel):
    """One yes/no question of a decomposed rubric. `reverse: true`: a "no" earns the
    point (a question such as "Is the extract an advertisement?")."""

    model_config = ConfigDict(extra="forbid")
    question: str
    reverse: bool = False


def score_regex(pattern: str) -> Any:
    """A score pattern (a recipe's or a rubric file's), case-insensitive, in RE2: its
    time is linear in the judge's answer whatever the pattern."""
    return compile_regex("(?i)" + pattern, "score patterns use")


def check_score_pattern(pattern: str) -> str:
    """ValueError unless RE2 runs `pattern` and it has a group for the score."""
    try:
        groups = score_regex(pattern).groups
    except ExprError as e:
        raise ValueError(f"invalid regex: {e}".replace(repr("(?i)" + pattern), repr(pattern), 1)) from None
    if groups < 1:
        raise ValueError("needs a capture group for the score")
    return pattern


class Rubric(BaseModel):
    """A rubric file: one prompt template per aspect, the score range and pattern."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    min_score: float = 0
    max_score: float = 5
    max_chars: int = 2000
    score_pattern: str = DEFAULT_SCORE_PATTERN
    aspects: dict[str, str] = Field(min_length=1)
    # The decomposed form (method: criteria): criterion name -> a yes/no question (or
    # {question, reverse}), each put through `criteria_template` (its `question`
    # variable; the rubric's others).
    criteria: dict[str, Criterion] = Field(default_factory=dict)
    criteria_template: str = DEFAULT_CRITERIA_TEMPLATE

    @field_validator("score_pattern")
    @classmethod
    def _re2_pattern(cls, v: str) -> str:
        return check_score_pattern(v)
    criteria_max_chars: int | None = None  # default: max_chars

    @field_validator("criteria", mode="before")
    @classmethod
    def _plain_questions(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"question": q} if isinstance(q, str) else q for k, q in v.items()}
        return v

    def criteria_score(self, p_yes: dict[str, float]) -> float:
        """The decomposed rubric's score from each criterion's P(yes): the sum of the
        points, P(yes) for a criterion and P(no) for a reverse-keyed one. With both
        kinds, each kind weighs half, so the range stays 0..(number of criteria that a
        "yes" earns) and a judge's tendency to answer "yes" to anything about a text
        (acquiescence, strong in small models) cancels out."""
        pos = [p for name, p in p_yes.items() if not self.criteria[name].reverse]
        rev = [1 - p for name, p in p_yes.items() if self.criteria[name].reverse]
        if not (pos and rev):
            return sum(pos) + sum(rev)
        return len(pos) * (statistics.fmean(pos) + statistics.fmean(rev)) / 2


def subset_criteria(rubric: Rubric, names: list[str] | None, label: str) -> Rubric:
    """The rubric asking only the criteria `names` (all when None): a recipe picks the
    questions that were measured to work for its data, the rubric keeps the rest."""
    if not names:
        return rubric
    unknown = [n for n in names if n not in rubric.criteria]
    if unknown:
        raise ValueError(f"rubric {label!r} has no criteria {unknown} (has: {list(rubric.criteria)})")
    return rubric.model_copy(update={"criteria": {n: rubric.criteria[n] for n in names}})


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


def check_rubric_file(name: str, base_dir: Path) -> Rubric:
    """A rubric file named in a recipe, read and parsed at validation time; any
    problem is a TemplateError on the stage's `rubric` field, with the file named."""
    try:
        rubric = load_rubric(name, str(base_dir))
        for src in [*rubric.aspects.values(), rubric.criteria_template]:
            variables(src)  # a template that does not parse
        return rubric
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TemplateError(f"rubric file {name!r}: {where + ': ' if where else ''}{first['msg']}",
                            field="rubric") from None
    except (ValueError, OSError, yaml.YAMLError) as e:
        msg = str(e) if str(e).startswith("unknown rubric") else f"rubric file {name!r}: {e}"
        raise TemplateError(msg, field="rubric") from None


@lru_cache(maxsize=32)
def _parse_rubric(text: str) -> Rubric:
    return Rubric.model_validate(yaml.safe_load(text))
