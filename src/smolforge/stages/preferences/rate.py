"""`rate`: every candidate of a prompt rated, by a listwise judge (UltraFeedback's
aspects), each alone by yes/no criteria or the judge stage, a reward model (an
engine), or pairwise in both orders; the judge's self-check in the stage summary."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Engine, Request, chat
from smolforge.engines.reward import RewardEngine
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import Record, Result, Shards
from smolforge.stages.judges.checks import judge_check
from smolforge.stages.judges.rubrics import (
    check_rubric_file,
    load_rubric,
    score_regex,
    subset_criteria,
)
from smolforge.stages.llm import LLMStage
from smolforge.templates import TemplateError, render
from smolforge.text import loads_json

DEFAULT_LISTWISE = """\
You will see an instruction and {{ texts | length }} responses to it (Text 1 to Text {{ texts | length }}).
Rate every response on one aspect only.

{{ criteria }}

Instruction: {{ instruction }}
{% for t in texts %}
<text {{ loop.index }}>
{{ t }}
</text {{ loop.index }}>
{% endfor %}
{% if structured %}Answer in JSON with one rating per text: {"text_1": <1-5>, ...}.
{% else %}For each text, write one line "Text <k>: Rating: <1-5>" and a one-sentence rationale.
{% endif %}"""


def rubric_criteria(aspect_template: str) -> str:
    """The rubric text of one aspect without its variables: the lines before the
    first `{{` (for the ultrafeedback rubric, the aspect's definition and scale)."""
    lines = []
    for line in aspect_template.splitlines():
        if "{{" in line or "{%" in line:
            break
        lines.append(line)
    return "\n".join(lines).strip()


def presentation_order(seed: int, stage: str, record_id: str, aspect: str, n: int, shuffle: bool = True) -> list[int]:
    """Which candidate is shown as Text 1, 2, ...: a seeded shuffle per (record,
    aspect), so position bias averages out over aspects and the order is the
    same on every re-run."""
    order = list(range(n))
    if shuffle:
        import random

        random.Random(derive_seed(seed, stage, record_id, aspect)).shuffle(order)
    return order


_TEXT_LABEL = re.compile(r"(?:^|\n|\s)[#*\s]*(?:text|response|output)\s*#?\s*(\d+)", re.IGNORECASE)


def parse_listwise(answer: str, n: int, pattern: str, lo: float, hi: float,
                   structured: bool = False) -> list[float | None]:
    """Ratings per presented position (0-based) from a judge's answer: JSON
    `{"text_1": r, ...}` when structured, else free text whose sections start at
    "Text <k>" (the first rating in a section is that text's; with no labels, n
    ratings in a row are taken in order). Missing or out of range: None."""
    out: list[float | None] = [None] * n
    if structured:
        try:
            obj = loads_json(answer)
            for k in range(n):
                v = obj.get(f"text_{k + 1}")
                out[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            return [s if s is not None and lo <= s <= hi else None for s in out]
        except (ValueError, AttributeError):
            pass  # not JSON after all: parse it as text
    labels = [(m.start(), int(m.group(1))) for m in _TEXT_LABEL.finditer(answer)]
    if labels:
        bounds = [s for s, _ in labels] + [len(answer)]
        for (start, k), end in zip(labels, bounds[1:]):
            if not 1 <= k <= n or out[k - 1] is not None:
                continue
            m = score_regex(pattern).search(answer[start:end])
            if m is None:  # "Text 2: 4" with no "Rating:" word
                m = re.match(r"[#*\s]*(?:text|response|output)\s*#?\s*\d+\s*[:.)\-]*\s*\**\s*(\d+(?:\.\d+)?)",
                             answer[start:end].lstrip("\n"), re.IGNORECASE)
            if m:
                out[k - 1] = float(m.group(1))
    else:
        found = [float(m.group(1)) for m in score_regex(pattern).finditer(answer)]
        if len(found) == n:
            out = list(found)
    return [s if s is not None and lo <= s <= hi else None for s in out]


@stages.register
class Rate(LLMStage):
    """Rate every candidate of a prompt.

    - `method: aspects` (default; UltraFeedback): per aspect of the rubric, one
      request per prompt showing all candidates in a seeded shuffled order; the
      answer rates each (1-5). `score` = mean over the aspects.
    - `method: criteria`: each candidate judged alone by the `judge` stage's
      `criteria` method: the rubric's yes/no questions (`criteria:` picks some),
      each scored by P(yes) from the answer token's probabilities, plain questions
      balanced by reverse-keyed ones when the rubric has both (docs/judges.md).
      Nothing else is in the prompt, so the score cannot depend on the other
      candidates or their order; each P(yes) is kept in meta (`p_yes`).
    - `method: single`: each candidate judged alone by the `judge` stage with the
      rubric (whatever scoring that stage offers: `judge:` passes options to it;
      `judge: {method: criteria}` is `method: criteria`).
    - `method: reward`: a reward model over HTTP (`reward:`, vLLM's `/pooling`).
    - `method: pairwise`: every pair of candidates judged in both orders by the
      `pairwise_judge` stage's function (a side wins only when both orders agree);
      `score` = the candidate's share of its pairs won, ties counting half (0-1).
    A candidate that got no usable rating keeps `score: null` and its
    `rate_error`; `pairs` drops prompts with fewer than two rated candidates and
    says why. Engine failures reject the prompt (retried by the next run).
    """

    type: Literal["rate"] = "rate"
    method: Literal["aspects", "criteria", "single", "reward", "pairwise"] = "aspects"
    rubric: Annotated[str, FILE] = Field("ultrafeedback", description="built-in rubric name or rubric YAML file")
    aspects: list[str] | None = Field(None, description="a subset of the rubric's aspects (default: all)")
    criteria: list[str] | None = Field(
        None, min_length=1, description="criteria: a subset of the rubric's yes/no questions (default: all)")
    candidates_column: str = "candidates"
    prompt_column: str = Field("prompt", description="the instruction shown to the judge")
    shuffle: bool = Field(True, description="aspects: present candidates in a seeded random order")
    structured: bool = Field(
        True, description="aspects: constrain the answer to JSON {text_1: 1-5, ...} (a grammar on the "
        "embedded engine, `response_format` on a server); false: free text, `Text k: Rating: r` parsed")
    rationale: bool = Field(False, description="structured: ask for a short rationale before the ratings")
    reward: RewardEngine | None = Field(None, description="reward: the reward model (url, model, ...: the `reward` engine's fields)")
    judge: dict[str, Any] = Field(default_factory=dict, description="single: extra `judge` stage fields")
    system_column: str | None = Field("system", description="reward: a system turn, if the record has one")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_template(cls, data: Any) -> Any:
        if isinstance(data, dict) and not (data.get("template") or data.get("template_file")):
            data = {**data, "template": DEFAULT_LISTWISE}
        return data

    @model_validator(mode="after")
    def _method_needs(self):
        if self.method == "reward" and self.reward is None:
            raise ValueError("method: reward needs `reward: {url, model}`")
        if self.method != "reward" and self.reward is not None:
            raise ValueError("`reward` is only used with method: reward")
        if self.method == "criteria" and self.judge.get("method", "criteria") != "criteria":
            raise ValueError(f"method: criteria judges with the criteria method; judge.method "
                             f"{self.judge['method']!r} belongs to method: single")
        if self.criteria and self.method != "criteria":
            raise ValueError("`criteria` (a subset of the rubric's questions) is only used with method: criteria")
        return self

    def pointwise(self) -> bool:
        """Each candidate judged alone (no other candidate in its prompt)."""
        return self.method in ("criteria", "single", "reward")

    def requires(self) -> set[str]:
        if self.method != "reward" and self._recipe_dir is not None:  # the rubric, before anything runs
            if self.rubric.endswith((".yaml", ".yml")):
                check_rubric_file(self.rubric, self._recipe_dir)
            try:
                rubric = self._rubric(None, self._recipe_dir)
                if self._judge_method() == "criteria" and not rubric.criteria:
                    raise ValueError(f"rubric {self.rubric!r} has no `criteria:` (yes/no questions) for the "
                                     "criteria method")
            except ValueError as e:
                field = ("criteria" if "has no criteria [" in str(e) else
                         "aspects" if "has no aspect(s)" in str(e) else "rubric")
                raise TemplateError(str(e), field=field) from None
        return {self.candidates_column, self.prompt_column}

    def provides(self) -> set[str]:
        return {self.candidates_column}

    def engines(self, ctx: StageContext) -> list[Engine]:
        if self.method == "reward":
            return [ctx.engine(self.reward)]
        return super().engines(ctx)

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        extra = {"seed": ctx.seed, "method": self.method}
        if self.method == "reward":
            return {**extra, "reward": self.reward.identity()}  # type: ignore[union-attr]
        return {**super().fingerprint_extra(ctx), **extra, "rubric": self._rubric(ctx).model_dump()}

    def _judge_method(self) -> str | None:
        """The `judge` stage's method behind `criteria` and `single`."""
        if self.method == "criteria":
            return "criteria"
        return self.judge.get("method", "parse") if self.method == "single" else None

    def _rubric(self, ctx: StageContext | None, base_dir: Path | None = None):
        r = load_rubric(self.rubric, str(ctx.recipe_dir) if ctx is not None else str(base_dir or "."))
        if self.aspects:
            unknown = [a for a in self.aspects if a not in r.aspects]
            if unknown:
                raise ValueError(f"rubric {self.rubric!r} has no aspect(s) {unknown} (has: {list(r.aspects)})")
            r = r.model_copy(update={"aspects": {a: r.aspects[a] for a in self.aspects}})
        return subset_criteria(r, self.criteria, self.rubric)

    def listwise_schema(self, n: int, lo: float, hi: float) -> dict[str, Any] | None:
        """JSON schema of a structured listwise answer for `n` texts."""
        if not self.structured:
            return None
        props: dict[str, Any] = {}
        if self.rationale:
            props["rationale"] = {"type": "string", "maxLength": 300}
        for k in range(1, n + 1):
            props[f"text_{k}"] = {"type": "integer", "enum": list(range(int(lo), int(hi) + 1))}
        return {"type": "object", "properties": props, "required": list(props)}

    def _request(self, prompt: str, seed_parts: tuple, schema: dict[str, Any] | None = None) -> Request:
        req = Request(messages=chat(prompt), json_schema=schema)
        req.max_tokens, req.temperature, req.top_p = self.max_tokens, self.temperature, self.top_p
        req.top_k, req.min_p, req.repeat_penalty, req.stop = self.top_k, self.min_p, self.repeat_penalty, list(self.stop)
        req.seed = derive_seed(*seed_parts) if self.temperature > 0 else 0
        return req

    # -- the work

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        fn = {"aspects": self._aspects, "criteria": self._single, "single": self._single,
              "reward": self._reward, "pairwise": self._pairwise}[self.method]
        rated, errors, meta = fn(batch, ctx)
        res = Result()
        n_rated = n_unrated = 0
        for i, rec in enumerate(batch):
            if errors[i]:
                res.reject(rec, "engine error: " + "; ".join(sorted(set(errors[i]))))
                continue
            for c in rated[i]:
                if c.get("score") is None:
                    n_unrated += 1
                else:
                    n_rated += 1
            res.keep({**rec, self.candidates_column: rated[i],
                      "meta": {**rec.get("meta", {}), ctx.stage_name: {"method": self.method, **meta[i]}}})
        res.counts["candidates_rated"] = n_rated
        res.counts["candidates_unrated"] = n_unrated
        return res

    def _aspects(self, batch: list[Record], ctx: StageContext):
        rubric = self._rubric(ctx)
        source = self.prompt_source(ctx)
        lo, hi = float(rubric.min_score), float(rubric.max_score)
        seed = self.seed if self.seed is not None else ctx.seed
        cands = [list(rec.get(self.candidates_column) or []) for rec in batch]
        # every judge engine's rating; the candidate's is their mean
        ratings: list[list[dict[str, list[float]]]] = [[{} for _ in c] for c in cands]
        problems: list[list[list[str]]] = [[[] for _ in c] for c in cands]
        errors: list[list[str]] = [[] for _ in batch]
        meta: list[dict] = [{"order": {}, "answers": {}} for _ in batch]
        engines = self.engines(ctx)
        for aspect, tmpl in rubric.aspects.items():
            criteria = rubric_criteria(tmpl)
            idx, reqs = [], []
            for i, rec in enumerate(batch):
                if not cands[i]:
                    continue
                order = presentation_order(seed, ctx.stage_name, rec["id"], aspect, len(cands[i]), self.shuffle)
                view = {**rec, "instruction": rec.get(self.prompt_column), "aspect": aspect, "criteria": criteria,
                        "texts": [cands[i][k]["text"][: rubric.max_chars] for k in order],
                        "max_chars": rubric.max_chars, "structured": self.structured}
                try:
                    prompt = render(source, view)
                except Exception as e:
                    for k in range(len(cands[i])):
                        problems[i][k].append(f"template error ({aspect}): {type(e).__name__}: {e}")
                    continue
                meta[i]["order"][aspect] = order
                idx.append((i, order))
                reqs.append(self._request(prompt, (seed, rec["id"], aspect), self.listwise_schema(len(order), lo, hi)))
            for engine in engines:
                for (i, order), resp in zip(idx, ctx.generate(engine, reqs)):
                    if resp.error:
                        errors[i].append(f"{engine.kind}: {resp.error}")
                        continue
                    answer = resp.completions[0].text if resp.completions else ""
                    cut = bool(resp.completions) and resp.completions[0].finish_reason == "length"
                    meta[i]["answers"].setdefault(aspect, []).append(answer.strip()[:1000])
                    scores = parse_listwise(answer, len(order), rubric.score_pattern, lo, hi, self.structured)
                    for pos, k in enumerate(order):
                        if scores[pos] is None:
                            problems[i][k].append(f"no {aspect} rating for text {pos + 1}"
                                                  + (f" (answer cut at max_tokens {self.max_tokens})" if cut else ""))
                        else:
                            ratings[i][k].setdefault(aspect, []).append(scores[pos])
        rated = []
        for i in range(len(batch)):
            items = []
            for k, c in enumerate(cands[i]):
                got = ratings[i][k]
                full = {a: statistics.fmean(got[a]) if got.get(a) else None for a in rubric.aspects}
                ok = all(v is not None for v in full.values())
                items.append({**c, "ratings": full, "score": statistics.fmean(full.values()) if ok else None,
                              "rate_error": None if ok else "; ".join(problems[i][k]) or "no rating"})
            rated.append(items)
        meta = [{**m, "engines": [e.identity().get("model") for e in engines]} for m in meta]
        return rated, errors, meta

    def _single(self, batch: list[Record], ctx: StageContext):
        """Each candidate alone through the `judge` stage (`criteria`, or `single`
        with the judge's method). Its per-unit values (aspect ratings, or each
        criterion's P(yes)) land in the candidate's `ratings` and, per candidate,
        in the record's meta."""
        from smolforge.stages.judges.judge import Judge

        spec = {"type": "judge", "rubric": self.rubric, "inputs": {"instruction": "instruction", "response": "response"},
                "column": "score", "on_fail": "keep", "engine": self.engine, "max_tokens": self.max_tokens,
                "temperature": self.temperature, **self.judge, "method": self._judge_method()}
        if self.criteria:
            spec["criteria"] = self.criteria
        judge = Judge.model_validate(spec)
        views, where = [], []
        for i, rec in enumerate(batch):
            for k, c in enumerate(rec.get(self.candidates_column) or []):
                views.append({"id": f"{rec['id']}.{k}", "instruction": rec.get(self.prompt_column),
                              "response": c["text"], "meta": {}})
                where.append((i, k))
        out = judge.process(views, ctx)
        by_id = {r["id"]: r for r in out.kept}
        errs = {r.record["id"]: r.reason for r in out.rejected}
        # the judge's units: the rubric's aspects, or its criteria with method: criteria
        units = list(judge.units(judge.settings(ctx)[0]))
        rated = [list(rec.get(self.candidates_column) or []) for rec in batch]
        errors: list[list[str]] = [[] for _ in batch]
        key = "p_yes" if judge.method == "criteria" else "ratings"
        meta: list[dict[str, Any]] = [{"judge": judge.method, key: [None] * len(r)} for r in rated]
        for (i, k), v in zip(where, views):
            r = by_id.get(v["id"]) or {}
            reason = errs.get(v["id"]) or r.get("meta", {}).get(ctx.stage_name, {}).get("failed")
            if reason and "engine error" in reason:
                errors[i].append(reason)
            ratings = {a: r.get(f"score_{a}") for a in units} if len(units) > 1 else {units[0]: r.get("score")}
            score = r.get("score")
            rated[i][k] = {**rated[i][k], "ratings": ratings, "score": None if score is None else float(score),
                           "rate_error": reason if score is None else None}
            meta[i][key][k] = {a: None if x is None else round(float(x), 6) for a, x in ratings.items()}
        return rated, errors, meta

    def _reward(self, batch: list[Record], ctx: StageContext):
        """Each candidate scored by the reward model (the `reward` engine), through
        `ctx.generate`: cached, counted, and a failed request retried by the next run."""
        engine = self.engines(ctx)[0]
        reqs, where = [], []
        for i, rec in enumerate(batch):
            system = rec.get(self.system_column) if self.system_column else None
            for k, c in enumerate(rec.get(self.candidates_column) or []):
                reqs.append(Request(messages=chat(rec.get(self.prompt_column), system, assistant=c["text"]),
                                    max_tokens=1, temperature=0.0))
                where.append((i, k))
        rated = [list(rec.get(self.candidates_column) or []) for rec in batch]
        errors: list[list[str]] = [[] for _ in batch]
        for (i, k), resp in zip(where, ctx.generate(engine, reqs)):
            if resp.error or not resp.completions:
                errors[i].append(f"engine error (reward): {resp.error or 'no reward'}")
                continue
            value = float(resp.completions[0].text)
            rated[i][k] = {**rated[i][k], "ratings": {"reward": value}, "score": value, "rate_error": None}
        return rated, errors, [{"reward": engine.identity()} for _ in batch]

    def _pairwise(self, batch: list[Record], ctx: StageContext):
        from smolforge.stages.judges.pairwise_judge import DEFAULT_PAIRWISE_TEMPLATE, judge_pairs

        template = self.judge.get("template", DEFAULT_PAIRWISE_TEMPLATE)
        jobs, where = [], []
        for i, rec in enumerate(batch):
            cs = rec.get(self.candidates_column) or []
            for a in range(len(cs)):
                for b in range(a + 1, len(cs)):
                    jobs.append({"prompt": rec.get(self.prompt_column), "a": cs[a]["text"], "b": cs[b]["text"]})
                    where.append((i, a, b))
        rated = [list(rec.get(self.candidates_column) or []) for rec in batch]
        wins = [[[] for _ in c] for c in rated]  # per candidate: 1, 0.5, 0 per judged pair
        problems: list[list[list[str]]] = [[[] for _ in c] for c in rated]
        errors: list[list[str]] = [[] for _ in batch]
        meta: list[dict] = [{"verdicts": []} for _ in batch]
        for engine in self.engines(ctx):
            verdicts = judge_pairs(lambda reqs, e=engine: ctx.generate(e, reqs), jobs, template) if jobs else []
            for (i, a, b), v in zip(where, verdicts):
                meta[i]["verdicts"].append({"a": a, "b": b, "winner": v.winner, "p_a": [round(p, 4) for p in v.p_a]})
                if v.winner is None:
                    if v.error and v.error.startswith("engine error"):
                        errors[i].append(f"{engine.kind}: {v.error}")
                    for k in (a, b):
                        problems[i][k].append(v.error or "no verdict")
                    continue
                wa = {"a": 1.0, "b": 0.0, "tie": 0.5}[v.winner]
                wins[i][a].append(wa)
                wins[i][b].append(1.0 - wa)
        for i in range(len(batch)):
            for k, c in enumerate(rated[i]):
                w = wins[i][k]
                rated[i][k] = {**c, "ratings": {"pairwise_win_rate": statistics.fmean(w) if w else None},
                               "score": statistics.fmean(w) if w else None,
                               "rate_error": None if w else "; ".join(problems[i][k])[:400] or "no pair judged"}
        return rated, errors, meta

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        per_teacher: dict[str, list[float]] = {}
        per_aspect: dict[str, list[float]] = {}
        shown: list[tuple[int, float]] = []  # (display position, rating) of every listwise rating
        orders: list[tuple[float, float]] = []  # pairwise: P(a better) in each order
        overall: list[float] = []
        by_aspect: dict[str, list[float]] = {}  # aligned with `overall`
        unrated = 0
        for j in range(len(out)):
            for rec in out.columns(j, [self.candidates_column, "meta"]):
                mine = (rec.get("meta") or {}).get(ctx.stage_name, {})
                order = mine.get("order", {})
                orders += [tuple(v["p_a"]) for v in mine.get("verdicts", []) if len(v.get("p_a") or []) == 2]
                cands = rec.get(self.candidates_column) or []
                for k, c in enumerate(cands):
                    if c.get("score") is None:
                        unrated += 1
                        continue
                    per_teacher.setdefault(c.get("teacher") or "?", []).append(c["score"])
                    ratings = {a: v for a, v in (c.get("ratings") or {}).items() if v is not None}
                    if len(ratings) > 1:
                        overall.append(c["score"])
                        for a, v in ratings.items():
                            by_aspect.setdefault(a, []).append(v)
                    for a, v in ratings.items():
                        per_aspect.setdefault(a, []).append(v)
                        if a in order and k in order[a]:
                            shown.append((order[a].index(k) + 1, v))
        mean = lambda xs: round(statistics.fmean(xs), 3)  # noqa: E731
        s: dict[str, Any] = {
            "unrated": unrated,
            "mean_score_per_teacher": {t: mean(v) for t, v in sorted(per_teacher.items())},
            "rated_per_teacher": {t: len(v) for t, v in sorted(per_teacher.items())},
            "mean_rating_per_aspect": {a: mean(v) for a, v in per_aspect.items()},
        }
        if self.pointwise():  # one candidate per request: the candidates' scores, no display position
            scores = [v for vs in per_teacher.values() for v in vs]
        else:
            scores = [v for _, v in shown] if shown else [v for vs in per_aspect.values() for v in vs]
        check = judge_check(scores, positions=[p for p, _ in shown] or None, orders=orders or None,
                            criteria=by_aspect if len(by_aspect) > 1 else None, overall=overall,
                            alone=self.pointwise())
        if shown:  # position bias: the mean rating a text got at each place it was shown
            s["mean_rating_by_position"] = check["position_bias"]["mean_rating_by_position"]
        s["judge_check"] = check
        return s
