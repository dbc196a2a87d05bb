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

`method:` how an answer becomes a score (docs/judges.md compares them on real text):

- `parse` (default): the number in the generated text, as above.
- `expected`: G-Eval (Liu et al., 2023, "G-Eval: NLG Evaluation using GPT-4 with
  Better Human Alignment"): at the score token, the expected value over the allowed
  score tokens' probabilities; the entropy of that distribution is kept in
  `<column>_entropy` (low: a confident judge).
- `criteria`: the rubric's decomposed form: one yes/no question per criterion of an
  additive rubric (FineWeb-Edu's points), each scored by P(yes) normalised over the
  yes/no tokens (any case, with or without a leading space); the score is their sum,
  each criterion's P(yes) in `<column>_<criterion>`. A `reverse: true` criterion
  earns its point from P(no); with both kinds each half weighs equally, which cancels
  a small judge's tendency to say yes to anything about a text (acquiescence, met in
  questionnaires with reverse-keyed items; measured in docs/judges.md).

Both probability methods ask the engine for `logprobs`; an engine or server that
returns none falls back to parsing the text (a yes/no or the number), counted as
`parsed_without_logprobs` in the manifest with a note in the stage's summary.
With several engines (a panel), `<column>_judges` holds each engine's score and the
stage's summary reports their agreement (Spearman's rho per pair, Krippendorff's
alpha, interval metric).

Unparsable or out-of-range answers go to the rejects with the raw answer.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Completion
from smolforge.expr import ExprError, compile_regex
from smolforge.paths import FILE
from smolforge.registry import closest, stages
from smolforge.stages.base import Record, Result, Shards
from smolforge.stages.llm import LLMStage
from smolforge.templates import TemplateError, variables
from smolforge.text import loads_json

DEFAULT_SCORE_PATTERN = r"score\"?\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)"
DEFAULT_CRITERIA_TEMPLATE = """\
Here is an extract from a document:

{{ text[:max_chars] }}

Question: {{ question }} Answer yes or no.
Answer:"""
TOP_LOGPROBS = 20  # alternatives asked for per token (OpenAI's maximum)
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


def parse_score(answer: str, pattern: str, structured: bool) -> tuple[float | None, str]:
    """(score, justification) from a judge's answer; score None if unparsable."""
    if structured:
        try:
            obj = loads_json(answer)
            return float(obj["score"]), str(obj.get("justification", "")).strip()
        except (ValueError, KeyError, TypeError):
            pass  # fall back to the pattern below
    matches = list(score_regex(pattern).finditer(answer))
    if matches:
        m = matches[-1]
        line_start = answer.rfind("\n", 0, m.start()) + 1  # drop the whole score line
        justification = (answer[:line_start] + answer[m.end() :]).strip()
        return float(m.group(1)), justification
    bare = answer.strip().rstrip(".")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", bare):
        return float(bare), ""
    return None, answer.strip()


@stages.register
class Judge(LLMStage):
    """Score records with an LLM judge; keep the score and the justification."""

    type: Literal["judge"] = "judge"
    rubric: Annotated[str | None, FILE] = Field(None, description="built-in rubric name or rubric YAML file")
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
    method: Literal["parse", "expected", "criteria"] = Field(
        "parse",
        description="parse: the number in the answer; expected: the expected score over the score "
        "tokens' probabilities (G-Eval); criteria: the rubric's yes/no criteria, sum of P(yes)",
    )
    criteria: list[str] | None = Field(
        None, min_length=1, description="method criteria: ask only these of the rubric's criteria (default: all)")
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

    @model_validator(mode="after")
    def _criteria_exist(self):
        builtin = self.rubric and not self.rubric.endswith((".yaml", ".yml"))
        if self.method == "criteria" and builtin and not load_rubric(self.rubric).criteria:  # type: ignore[arg-type]
            raise ValueError(f"rubric {self.rubric!r} has no `criteria:` for method: criteria")
        if self.method == "criteria" and not self.rubric:
            raise ValueError("method: criteria needs a rubric with `criteria:` (yes/no questions)")
        if self.criteria and self.method != "criteria":
            raise ValueError("`criteria` (a subset of the rubric's questions) is only used with method: criteria")
        if self.criteria and builtin:
            subset_criteria(load_rubric(self.rubric), self.criteria, self.rubric)  # type: ignore[arg-type]
        return self

    @field_validator("score_pattern")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        check_score_pattern(v)
        return v

    # -- configuration resolved against the rubric

    def _rubric(self, ctx: StageContext | None) -> Rubric:
        if self.rubric:
            if ctx is None and self._resolved is not None:
                return self._resolved
            base = str(ctx.recipe_dir) if ctx is not None else "."
            self._resolved = subset_criteria(load_rubric(self.rubric, base), self.criteria, self.rubric)
            return self._resolved
        source = self.prompt_source(ctx) if ctx is not None else (self.template or "")
        return Rubric(aspects={"score": source})

    def settings(self, ctx: StageContext | None) -> tuple[Rubric, float, float, str, int]:
        r = self._rubric(ctx)
        lo = self.min_score if self.min_score is not None else r.min_score
        hi = self.max_score if self.max_score is not None else r.max_score
        pattern = self.score_pattern or r.score_pattern
        default_chars = (r.criteria_max_chars or r.max_chars) if self.method == "criteria" else r.max_chars
        return r, lo, hi, pattern, self.max_chars or default_chars

    def units(self, rubric: Rubric) -> dict[str, str]:
        """What is asked per record: aspect -> prompt, or criterion -> its question."""
        if self.method == "criteria":
            return {name: c.question for name, c in rubric.criteria.items()}
        return rubric.aspects

    def _multi_engine(self) -> bool:
        return isinstance(self.engine, list) and len(self.engine) > 1

    @property
    def reason_column(self) -> str:
        return self.justification_column or f"{self.column}_justification"

    def _checked_rubric(self) -> Rubric | None:
        """The rubric as recipe validation sees it: a rubric file is read from the
        recipe's folder once validation has set it (so a typo in its name, or a
        variable no column feeds, fails before anything runs); None before that."""
        if not (self.rubric and self.rubric.endswith((".yaml", ".yml"))):
            return self._rubric(None)
        if self._recipe_dir is None:
            return None
        rubric = check_rubric_file(self.rubric, self._recipe_dir)
        try:
            return subset_criteria(rubric, self.criteria, self.rubric)
        except ValueError as e:
            raise TemplateError(str(e), field="criteria") from None

    def requires(self) -> set[str]:
        rubric = self._checked_rubric()
        if rubric is None:
            return set(self.inputs.values())
        names: set[str] = set()
        sources = [rubric.criteria_template] if self.method == "criteria" else list(rubric.aspects.values())
        for src in sources:
            names |= variables(src)
        names -= {"max_chars", "question"}
        return {self.inputs.get(n, n) for n in names}

    def provides(self) -> set[str]:
        cols = {self.column, self.reason_column, f"{self.column}_spread"}
        if self.method != "parse":
            cols.add(f"{self.column}_entropy")
        if self._multi_engine():
            cols.add(f"{self.column}_judges")
        try:
            rubric = self._checked_rubric()
        except TemplateError:  # reported by requires()
            rubric = None
        units = self.units(rubric) if rubric is not None else {}
        if len(units) > 1:
            cols |= {f"{self.column}_{a}" for a in units}
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
        units = self.units(rubric)
        aspects = list(units)
        engines = self.engines(ctx)
        # scores[aspect][record][engine]: that engine's scores (one per completion)
        scores: dict[str, list[list[list[float]]]] = {a: [[[] for _ in engines] for _ in batch] for a in aspects}
        entropies: list[list[float]] = [[] for _ in batch]
        reasons: dict[str, list[str]] = {a: ["" for _ in batch] for a in aspects}
        problems: list[list[str]] = [[] for _ in batch]
        judges: list[list[dict]] = [[] for _ in batch]
        fallback: list[bool] = [False for _ in batch]
        failed: set[int] = set()
        lo_u, hi_u = (0.0, 1.0) if self.method == "criteria" else (lo, hi)
        built = {}
        for aspect in aspects:
            if self.method == "criteria":
                source = rubric.criteria_template
                built[aspect] = (source, *self.build_requests([{**v, "question": units[aspect]} for v in views], ctx, source))
            else:
                source = units[aspect]
                built[aspect] = (source, *self.build_requests(views, ctx, source))
        # One call per engine for every aspect: requests of one record share its text,
        # which the engine decodes once when they are in flight together.
        # Record by record, so that a record's requests are admitted together.
        slots = sorted(((built[a][1][k], n, a, k) for n, a in enumerate(aspects) for k in range(len(built[a][2]))))
        every = [built[a][2][k] for _, _, a, k in slots]
        answers: list[dict[str, list]] = []
        for engine in engines:
            got = ctx.generate(engine, every)
            out: dict[str, list] = {a: [None] * len(built[a][2]) for a in aspects}
            for (_, _, a, k), resp in zip(slots, got):
                out[a][k] = resp
            answers.append(out)
        for aspect in aspects:
            source, index, reqs, _, bad = built[aspect]
            for i, reason in bad:
                failed.add(i)
                problems[i].append(reason)
            for e_idx, engine in enumerate(engines):
                for k, resp in enumerate(answers[e_idx][aspect]):
                    i = index[k]
                    if resp.error:
                        problems[i].append(f"engine error ({engine.kind}): {resp.error}")
                        continue
                    parsed = []
                    for comp in resp.completions:
                        score, why, entropy, fell_back = self.score_completion(comp, lo, hi, pattern)
                        fallback[i] = fallback[i] or fell_back
                        raw = comp.text.strip()[:500]
                        if score is None:
                            problems[i].append(f"unparsable judge answer{_of(aspect, aspects)}: {raw!r}")
                        elif not lo_u <= score <= hi_u:
                            problems[i].append(f"judge score {score:g} outside [{lo_u:g}, {hi_u:g}]{_of(aspect, aspects)}: {raw!r}")
                        else:
                            parsed.append(score)
                            if entropy is not None:
                                entropies[i].append(entropy)
                            reasons[aspect][i] = reasons[aspect][i] or why
                    scores[aspect][i][e_idx].extend(parsed)
                    judges[i].append({"aspect": aspect, **self.provenance(engine, reqs[k], resp, ctx, source),
                                      "scores": parsed})
        def combine(means: dict[str, float]) -> float:
            return rubric.criteria_score(means) if self.method == "criteria" else statistics.fmean(means.values())

        for i, rec in enumerate(batch):
            per_aspect = {a: [s for e in scores[a][i] for s in e] for a in aspects}
            if i in failed or any(not per_aspect[a] for a in aspects):
                reason = "; ".join(problems[i]) or "no judge answer"
                if self.on_fail == "reject":
                    res.reject(rec, reason)
                else:
                    meta = {**rec.get("meta", {}), ctx.stage_name: {"failed": reason, "judges": judges[i]}}
                    res.keep({**rec, self.column: None, "meta": meta})
                continue
            new = dict(rec)
            # per aspect: the mean over engines of each engine's mean
            means = {a: statistics.fmean(statistics.fmean(e) for e in scores[a][i] if e) for a in aspects}
            new[self.column] = combine(means)
            if len(aspects) > 1:
                for a in aspects:
                    new[f"{self.column}_{a}"] = means[a]
                new[self.reason_column] = json.dumps({a: reasons[a][i] for a in aspects})
            else:
                new[self.reason_column] = reasons[aspects[0]][i]
            all_scores = [s for a in aspects for s in per_aspect[a]]
            spread = max(max(per_aspect[a]) - min(per_aspect[a]) for a in aspects)
            new[f"{self.column}_spread"] = spread
            if self.method != "parse":
                new[f"{self.column}_entropy"] = statistics.fmean(entropies[i]) if entropies[i] else None
            info: dict[str, Any] = {"scores": all_scores, "spread": spread, "judges": judges[i]}
            if len(engines) > 1:
                per_engine = []
                for e_idx in range(len(engines)):
                    vals = {a: statistics.fmean(scores[a][i][e_idx]) for a in aspects if scores[a][i][e_idx]}
                    per_engine.append(combine(vals) if len(vals) == len(aspects) else None)
                new[f"{self.column}_judges"] = per_engine
            if fallback[i]:
                info["parsed_without_logprobs"] = True
            new["meta"] = {**rec.get("meta", {}), ctx.stage_name: info}
            res.keep(new)
        if self.method != "parse":
            res.counts["parsed_without_logprobs"] = float(sum(fallback))
        return res

    def build_requests(self, batch, ctx, source):  # type: ignore[override]
        ok, reqs, prompts, failed = super().build_requests(batch, ctx, source)
        if self.method != "parse":
            for r in reqs:
                r.logprobs = TOP_LOGPROBS
                if self.method == "criteria":  # the answer is its first token or so
                    r.max_tokens = min(r.max_tokens, CRITERIA_MAX_TOKENS)
        return ok, reqs, prompts, failed

    def score_completion(self, comp: Completion, lo: float, hi: float,
                         pattern: str) -> tuple[float | None, str, float | None, bool]:
        """(score, justification, entropy, fell back to text) of one answer."""
        if self.method == "parse":
            score, why = parse_score(comp.text, pattern, self.structured)
            return score, why, None, False
        if self.method == "criteria":
            if comp.top_logprobs is None:
                return parse_yes_no(comp.text), "", None, True
            p = answer_yes_probability(comp.top_logprobs)
            if p is None:  # no yes/no among the likely tokens: what did it say?
                return parse_yes_no(comp.text), "", None, False
            return p, "", binary_entropy(p), False
        if comp.top_logprobs is None:
            score, why = parse_score(comp.text, pattern, self.structured)
            return score, why, None, True
        dist = score_distribution(comp, lo, hi, pattern)
        if dist is None:
            score, why = parse_score(comp.text, pattern, self.structured)
            return score, why, None, False
        _, why = parse_score(comp.text, pattern, self.structured)
        return expected_value(dist), why, entropy(dist), False

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        values: list[float] = []
        panel: list[list[float | None]] = []
        no_logprobs = 0
        rubric = self._rubric(ctx)
        units = list(self.units(rubric)) if len(self.units(rubric)) > 1 else []
        per_unit: dict[str, list[float]] = {u: [] for u in units}
        cols = [self.column, "meta"] + ([f"{self.column}_judges"] if self._multi_engine() else [])
        cols += [f"{self.column}_{u}" for u in units]
        for j in range(len(out)):
            for rec in out.columns(j, cols):
                if rec.get(self.column) is not None and all(rec.get(f"{self.column}_{u}") is not None for u in units):
                    values.append(float(rec[self.column]))
                    for u in units:
                        per_unit[u].append(float(rec[f"{self.column}_{u}"]))
                if self._multi_engine() and rec.get(f"{self.column}_judges"):
                    panel.append(list(rec[f"{self.column}_judges"]))
                meta = rec.get("meta") or {}
                if isinstance(meta, str):
                    meta = json.loads(meta)
                if (meta.get(ctx.stage_name) or {}).get("parsed_without_logprobs"):
                    no_logprobs += 1
        summary: dict[str, Any] = {"method": self.method, "scored": len(values)}
        if values:
            qs = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
            summary["score"] = {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
                                "q1": round(qs[0], 4), "median": round(qs[1], 4), "q3": round(qs[2], 4),
                                "max": round(max(values), 4)}
        if no_logprobs:
            summary["note"] = (f"{no_logprobs} record(s) scored from the answer's text: the engine "
                               "returned no logprobs (method falls back to parsing)")
        if self._multi_engine():
            summary["agreement"] = panel_agreement(panel, [_engine_name(e) for e in self.engine])  # type: ignore[union-attr]
        # one text per prompt: no display position to be biased by
        summary["judge_check"] = judge_check(values, criteria=per_unit or None, alone=True)
        return summary


CRITERIA_MAX_TOKENS = 4
YES, NO = "yes", "no"


def _engine_name(spec: Any) -> str:
    if isinstance(spec, dict):
        return str(spec.get("model") or spec.get("type"))
    return str(spec)


def _norm_answer(token: str) -> str:
    return token.strip().strip(".,:;!\"'*").lower()


def answer_yes_probability(positions: list[dict[str, Any]], scan: int = CRITERIA_MAX_TOKENS) -> float | None:
    """P(yes) / (P(yes) + P(no)) at the first of the first `scan` generated tokens whose
    likely alternatives include a yes or a no (any case, leading space or not; a
    model often opens with a newline or "The answer is"). None if none does."""
    for pos in positions[:scan]:
        top = pos.get("top") or {}
        py = sum(math.exp(v) for k, v in top.items() if _norm_answer(k) == YES)
        pn = sum(math.exp(v) for k, v in top.items() if _norm_answer(k) == NO)
        if py + pn > 0:
            return py / (py + pn)
    return None


def parse_yes_no(text: str) -> float | None:
    """1 for an answer that starts with yes, 0 for no, None otherwise."""
    m = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
    return None if m is None else float(m.group(1).lower() == YES)


def score_distribution(comp: Completion, lo: float, hi: float, pattern: str) -> dict[int, float] | None:
    """The normalised probabilities of the integer scores lo..hi at the score token:
    the token where the answer's last `pattern` match puts its number or, without a
    match, the first generated token that is an allowed score. None if no position
    has a score token among its likely alternatives."""
    positions = comp.top_logprobs or []
    allowed = {str(v): v for v in range(math.ceil(lo), math.floor(hi) + 1)}
    starts, pos_at = [], 0
    for p in positions:  # character offset of every generated token
        starts.append(pos_at)
        pos_at += len(p.get("token", ""))
    target = None
    matches = list(score_regex(pattern).finditer(comp.text))
    if matches:
        at = matches[-1].start(1)
        for k, st in enumerate(starts):
            if st <= at < st + max(len(positions[k].get("token", "")), 1):
                target = k
                break
    if target is None:
        target = next((k for k, p in enumerate(positions) if p.get("token", "").strip() in allowed), None)
    if target is None:
        return None
    probs: dict[int, float] = {}
    for tok, lp in (positions[target].get("top") or {}).items():
        v = allowed.get(tok.strip())
        if v is not None:
            probs[v] = probs.get(v, 0.0) + math.exp(lp)
    z = sum(probs.values())
    if z <= 0:
        return None
    return {v: p / z for v, p in sorted(probs.items())}


def expected_value(dist: dict[int, float]) -> float:
    return float(sum(v * p for v, p in dist.items()))


def entropy(dist: dict[int, float]) -> float:
    """Shannon entropy in bits (0: all mass on one score)."""
    return float(-sum(p * math.log2(p) for p in dist.values() if p > 0))


def binary_entropy(p: float) -> float:
    return entropy({1: p, 0: 1 - p})


# ------------------------------------------------------------------ panels

def _ranks(xs: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the average ranks (scipy's definition).
    None when either side is constant or there are fewer than 2 pairs."""
    if len(x) != len(y) or len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


# ------------------------------------------------------------------ self-checks

CHECK_MIN = 8  # ratings below this many say nothing about a judge
POSITION_RHO = 0.8  # |Spearman| of rating with display position that marks a degenerate judge
EQUAL_TO_POSITION = 0.9  # share of ratings equal to their display position (1, 2, 3...)
ONE_SIDE = 0.9  # share of comparisons won by the response shown first (or second)
UNCORRELATED = 0.1  # |Spearman| of the score with every criterion below this: unrelated


def judge_check(scores: list[float], positions: list[int] | None = None,
                criteria: dict[str, list[float]] | None = None,
                orders: list[tuple[float, float]] | None = None,
                overall: list[float] | None = None, alone: bool = False) -> dict[str, Any]:
    """What a judge's own output says about it: position bias and signs of a
    degenerate judge (Zheng et al., 2023, MT-Bench: position bias; a small model's
    listwise ratings often copy the display order).

    - `positions`: the display position (1-based) each score was given at: the
      mean rating by position, Spearman's rho of rating with position, and the
      share of ratings equal to their position.
    - `orders`: per compared pair, P(a better) with a shown first and with a shown
      second: the agreement between the two orders and the share of comparisons the
      first-shown response won.
    - `criteria`: per criterion (aspect, yes/no question) its value for each of
      `overall` (default: `scores`), the combined scores: Spearman's rho with each.
    - `alone`: each text was judged in a request of its own, so no display
      position can bias it (said in `position_bias`); the other signals still apply.

    `degenerate` lists the signals found (empty: none): one constant score, ratings
    that follow or equal the display position, one position winning nearly every
    comparison, a score uncorrelated with every criterion. Nothing is flagged below
    CHECK_MIN ratings."""
    out: dict[str, Any] = {"ratings": len(scores)}
    bad: list[str] = []
    enough = len(scores) >= CHECK_MIN
    if enough and len(set(scores)) == 1:
        bad.append(f"one constant score: all {len(scores)} ratings are {scores[0]:g}")
    if alone:
        out["position_bias"] = {"shown": "one text per request: no display position"}
    if positions:
        by: dict[int, list[float]] = {}
        for p, v in zip(positions, scores):
            by.setdefault(p, []).append(v)
        rho = spearman([float(p) for p in positions], scores)
        equal = sum(float(p) == v for p, v in zip(positions, scores)) / len(scores)
        out["position_bias"] = {
            "mean_rating_by_position": {str(p): round(statistics.fmean(v), 3) for p, v in sorted(by.items())},
            "spearman_rating_position": None if rho is None else round(rho, 3),
            "ratings_equal_to_position": round(equal, 3)}
        if enough and equal >= EQUAL_TO_POSITION:
            bad.append(f"ratings equal their display position ({equal:.0%} of {len(scores)})")
        elif enough and rho is not None and abs(rho) >= POSITION_RHO:
            bad.append(f"ratings follow the display position (Spearman {rho:.2f})")
    if orders:
        agree = sum((p1 > 0.5 and p2 > 0.5) or (p1 < 0.5 and p2 < 0.5) for p1, p2 in orders) / len(orders)
        # order 1 shows a first (a wins: p1 > 1/2); order 2 shows b first (b wins: p2 < 1/2)
        first = statistics.fmean([(p1 > 0.5) + (p2 < 0.5) for p1, p2 in orders]) / 2
        out["position_bias"] = {"pairs": len(orders), "order_agreement": round(agree, 3),
                                "first_shown_wins": round(first, 3)}
        if len(orders) >= CHECK_MIN and max(first, 1 - first) >= ONE_SIDE:
            side = "first" if first >= 0.5 else "second"
            bad.append(f"the {side}-shown response wins {max(first, 1 - first):.0%} of "
                       f"{2 * len(orders)} comparisons (the two orders agree on {agree:.0%} of pairs)")
    combined = scores if overall is None else overall
    if criteria and len(set(combined)) > 1:
        rhos = {name: spearman(vals, combined) for name, vals in criteria.items()}
        out["spearman_score_criterion"] = {k: None if r is None else round(r, 3) for k, r in rhos.items()}
        if len(combined) >= CHECK_MIN and len(criteria) > 1 and all(r is None or abs(r) < UNCORRELATED for r in rhos.values()):
            bad.append(f"the score is uncorrelated with every criterion ({', '.join(criteria)})")
    out["degenerate"] = bad
    return out


def krippendorff_alpha_interval(units: list[list[float | None]]) -> float | None:
    """Krippendorff's alpha with the interval metric (squared differences), for
    `units[u][c]` = coder c's value for unit u (None: missing). Units with fewer than
    two values are not pairable and left out (Krippendorff, 2011, "Computing
    Krippendorff's Alpha-Reliability"). None if nothing is pairable or there is
    no variation at all."""
    values = [[v for v in u if v is not None] for u in units]
    values = [u for u in values if len(u) >= 2]
    n = sum(len(u) for u in values)
    if n < 2:
        return None
    d_o = sum(sum((a - b) ** 2 for i, a in enumerate(u) for j, b in enumerate(u) if i != j) / (len(u) - 1)
              for u in values) / n
    pooled = [v for u in values for v in u]
    d_e = sum((a - b) ** 2 for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1 - d_o / d_e


def panel_agreement(panel: list[list[float | None]], names: list[str]) -> dict[str, Any]:
    """A panel's agreement: Spearman's rho for every pair of judges (over the records
    both scored) and Krippendorff's alpha (interval) over all of them."""
    pairs = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            both = [(r[a], r[b]) for r in panel if r[a] is not None and r[b] is not None]
            rho = spearman([x for x, _ in both], [y for _, y in both])
            pairs[f"{names[a]} ~ {names[b]}"] = None if rho is None else round(rho, 4)
    alpha = krippendorff_alpha_interval(panel)
    return {"judges": names, "records": len(panel), "spearman": pairs,
            "krippendorff_alpha_interval": None if alpha is None else round(alpha, 4)}


def _of(aspect: str, aspects: list[str]) -> str:
    return f" ({aspect})" if len(aspects) > 1 else ""
