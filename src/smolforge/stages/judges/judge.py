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
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Completion
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import Record, Result, Shards
from smolforge.stages.judges.checks import (  # noqa: F401 - re-exported: judge's old names
    CHECK_MIN,
    EQUAL_TO_POSITION,
    ONE_SIDE,
    POSITION_RHO,
    UNCORRELATED,
    judge_check,
    panel_agreement,
)
from smolforge.stages.judges.rubrics import (  # noqa: F401 - re-exported: judge's old names
    DEFAULT_CRITERIA_TEMPLATE,
    DEFAULT_SCORE_PATTERN,
    RUBRIC_DIR,
    Criterion,
    Rubric,
    builtin_rubrics,
    check_rubric_file,
    check_score_pattern,
    load_rubric,
    score_regex,
    subset_criteria,
)
from smolforge.stages.llm import LLMStage
from smolforge.stats import krippendorff_alpha_interval, spearman  # noqa: F401 - re-exported
from smolforge.templates import TemplateError, variables
from smolforge.text import loads_json

TOP_LOGPROBS = 20  # alternatives asked for per token (OpenAI's maximum)


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


def _of(aspect: str, aspects: list[str]) -> str:
    return f" ({aspect})" if len(aspects) > 1 else ""
