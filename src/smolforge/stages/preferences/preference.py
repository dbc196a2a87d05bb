"""Preference data: `candidates` -> `rate` -> `pairs` (UltraFeedback-style).

Follows UltraFeedback (Cui et al. 2023, arXiv:2310.01377): several completions per
instruction from several models (multi-teacher), rated 1-5 on four aspects
(instruction following, truthfulness, honesty, helpfulness) by a judge that sees
all completions of one instruction together, in shuffled order; then binarised
as in the cleaned UltraFeedback sets (Argilla's
`ultrafeedback-binarized-preferences-cleaned`): chosen = the best mean of the
aspects, rejected = a random one rated strictly lower, ties dropped (the original
`overall_score` column was buggy, so it is not used).

Data shape: one record per prompt all the way to `pairs`. `candidates` adds a
list column `candidates`, each item
`{text, teacher, engine, model, sampling, finish_reason, tokens}`; `rate` adds
`score` (mean of the aspects, or the reward), `ratings` ({aspect: 1-5}) and
`rate_error` to every item. Keeping a prompt's candidates in one record makes
`rate` (the judge must see them together) and `pairs` plain map stages: no
global pass, and shards stay independent. `pairs` then writes one record per
pair: `prompt`, `chosen`, `rejected`, their scores, teachers and models, and the
margin. docs/preference.md describes every knob.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smolforge.context import StageContext, derive_seed
from smolforge.engines.base import Completion, Engine, Request, Response
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result, Shards
from smolforge.stages.judges.judge import (
    check_rubric_file,
    judge_check,
    load_rubric,
    score_regex,
    subset_criteria,
)
from smolforge.stages.llm import LLMStage
from smolforge.templates import TemplateError, render, template_hash
from smolforge.text import loads_json

# ------------------------------------------------------------------ candidates


class Teacher(BaseModel):
    """One source of candidates: an engine and the sampling parameters it is
    asked with (unset fields: the stage's)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="label in the data and the reports (default: the model)")
    engine: str | dict[str, Any] | None = Field(None, description="default: the stage's engine")
    n: int | None = Field(None, ge=1, le=64, description="completions per prompt (default: the stage's n)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    seed: int | None = None

    def overrides(self) -> dict[str, Any]:
        keys = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@stages.register
class Candidates(LLMStage):
    """`n` completions per prompt from one or several teachers (UltraFeedback's
    multi-model sampling), kept together in one list column, each tagged with its
    teacher, engine, model and sampling parameters. Empty completions are left
    out (noted in `meta`); a prompt with fewer than `min_candidates` left is
    rejected with the reason."""

    type: Literal["candidates"] = "candidates"
    teachers: list[Teacher] | None = Field(
        None, description="engines x sampling configs; default: every engine of `engine` with the stage's sampling"
    )
    n: int = Field(4, ge=1, le=64, description="completions per prompt per teacher")
    output: str = Field("candidates", description="list column for the candidates")
    prompt_column: str = Field("prompt", description="column for the rendered user prompt")
    system_column: str | None = Field("system", description="column for the rendered system prompt (when `system` is set)")
    min_candidates: int = Field(2, ge=1, description="fewer non-empty candidates than this: reject the prompt")

    @model_validator(mode="after")
    def _teachers_engine(self):
        if self.teachers and isinstance(self.engine, list):
            raise ValueError("with `teachers`, give each teacher its `engine` (the stage's `engine` must be one engine)")
        return self

    def provides(self) -> set[str]:
        cols = {self.output, self.prompt_column}
        return cols | ({self.system_column} if self.system and self.system_column else set())

    def _teachers(self) -> list[Teacher]:
        if self.teachers:
            return list(self.teachers)
        specs = self.engine if isinstance(self.engine, list) else [self.engine]
        return [Teacher(engine=s) for s in specs]

    def engines(self, ctx: StageContext) -> list[Engine]:
        default = self.engine if not isinstance(self.engine, list) else None
        return [ctx.engine(t.engine if t.engine is not None else default) for t in self._teachers()]

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {**super().fingerprint_extra(ctx), "teachers": [t.model_dump() for t in self._teachers()]}

    def teacher_names(self, ctx: StageContext) -> list[str]:
        teachers, engines = self._teachers(), self.engines(ctx)
        names = [t.name or str(e.identity().get("model") or e.kind) for t, e in zip(teachers, engines)]
        dup = Counter(names)
        return [f"{nm}[{i}]" if dup[nm] > 1 and not t.name else nm for i, (nm, t) in enumerate(zip(names, teachers))]

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        source, records, reqs, prompts = self.prepare(batch, ctx, res)
        base_seed = self.seed if self.seed is not None else ctx.seed
        teachers, engines, names = self._teachers(), self.engines(ctx), self.teacher_names(ctx)
        cands: list[list[dict]] = [[] for _ in records]
        dropped: list[list[dict]] = [[] for _ in records]
        errors: list[list[str]] = [[] for _ in records]
        for t_idx, (teacher, engine, tname) in enumerate(zip(teachers, engines, names)):
            over = teacher.overrides()
            t_reqs = []
            for rec, req in zip(records, reqs):
                r = replace(req, **over, n=teacher.n or self.n, stop=list(req.stop))
                seed = teacher.seed if teacher.seed is not None else base_seed
                # Each teacher samples with its own seed, so two teachers on one model
                # and identical settings still differ; greedy requests carry no seed.
                r.seed = derive_seed(seed, rec["id"], t_idx) if r.temperature > 0 else 0
                t_reqs.append(r)
            model = engine.identity().get("model")
            for i, resp in enumerate(ctx.generate(engine, t_reqs)):
                if resp.error:
                    errors[i].append(f"{tname} ({engine.kind}): {resp.error}")
                    continue
                sampling = {k: v for k, v in t_reqs[i].sampling().items() if k != "json_schema"}
                for comp in resp.completions:
                    item = {"text": comp.text.strip(), "teacher": tname, "engine": engine.kind,
                            "model": None if model is None else str(model), "sampling": sampling,
                            "finish_reason": comp.finish_reason, "tokens": int(comp.tokens)}
                    if item["text"]:
                        cands[i].append(item)
                    else:
                        dropped[i].append({"teacher": tname, "reason": "empty output"})
        n_cands = 0
        for i, rec in enumerate(records):
            if errors[i]:
                res.reject(rec, "engine error: " + "; ".join(errors[i]))
                continue
            if len(cands[i]) < self.min_candidates:
                why = f"{len(cands[i])} non-empty candidate(s), need {self.min_candidates}"
                if dropped[i]:
                    why += f" ({len(dropped[i])} empty)"
                res.reject(rec, why)
                continue
            new = {**rec, self.output: cands[i], self.prompt_column: prompts[i]}
            if self.system and self.system_column:
                new[self.system_column] = render(self.system, rec)
            new["meta"] = {**rec.get("meta", {}), ctx.stage_name: {
                "template_hash": template_hash(source + (self.system or "")),
                "teachers": names, "dropped": dropped[i], "created_at": round(time.time(), 3)}}
            n_cands += len(cands[i])
            res.keep(new)
        res.counts["candidates"] = n_cands
        res.counts["empty_candidates"] = sum(len(d) for d in dropped)
        return res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        per: Counter = Counter()
        for j in range(len(out)):
            for rec in out.columns(j, [self.output]):
                per.update(c["teacher"] for c in rec[self.output] or [])
        return {"candidates_per_teacher": dict(per)}


# ------------------------------------------------------------------ rate

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


class RewardEndpoint(BaseModel):
    """A reward model behind vLLM's pooling API (`vllm serve <reward model>`,
    e.g. Skywork-Reward or internlm2-reward): `POST {url}/pooling` with
    `{"model", "messages"}` (the server applies the chat template), answered with
    `{"data": [{"index": 0, "data": <reward>}]}` where the reward is a number, a
    list (a classification head: the last entry) or a list per token (the last
    token's). Any server that answers the same JSON works."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="server root, e.g. http://127.0.0.1:8000")
    model: str
    endpoint: str = Field("/pooling", description="path under url")
    api_key_env: str | None = Field(None, description="environment variable holding a bearer token")
    timeout: float = Field(60, gt=0)
    concurrency: int = Field(4, ge=1, le=64)
    retries: int = Field(2, ge=0, le=10)

    def identity(self) -> dict[str, Any]:
        return {"kind": "reward", "url": self.url.rstrip("/"), "endpoint": self.endpoint, "model": self.model}


def reward_value(data: Any) -> float:
    """The reward in one pooling output: the last number (a list per token: the last token's)."""
    while isinstance(data, list):
        if not data:
            raise ValueError("empty pooling output")
        data = data[-1]
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise ValueError(f"pooling output is not a number: {data!r}")
    return float(data)


def _reward_call(ep: RewardEndpoint, messages: list[dict[str, str]]) -> float:
    body = json.dumps({"model": ep.model, "messages": messages}).encode()
    headers = {"Content-Type": "application/json"}
    if ep.api_key_env and os.environ.get(ep.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[ep.api_key_env]}"
    url = ep.url.rstrip("/") + "/" + ep.endpoint.lstrip("/")
    last = ""
    for attempt in range(ep.retries + 1):
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=ep.timeout) as r:
                data = json.loads(r.read())
            return reward_value(data["data"][0]["data"])
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} from {url}: {e.read()[:200].decode(errors='replace')}"
            if e.code < 500 and e.code != 429:
                break
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            last = f"{type(e).__name__} from {url}: {e}"
        time.sleep(min(0.2 * 2**attempt, 2))
    raise RuntimeError(last)


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
    reward: RewardEndpoint | None = None
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
        req = Request(messages=[{"role": "user", "content": prompt}], json_schema=schema)
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
        ep = self.reward
        assert ep is not None
        jobs, where = [], []
        for i, rec in enumerate(batch):
            for k, c in enumerate(rec.get(self.candidates_column) or []):
                sys_turn = rec.get(self.system_column) if self.system_column else None
                msgs = [{"role": "system", "content": str(sys_turn)}] if sys_turn else []
                msgs += [{"role": "user", "content": str(rec.get(self.prompt_column))},
                         {"role": "assistant", "content": c["text"]}]
                jobs.append(msgs)
                where.append((i, k))
        ident = ep.identity()
        keys = [hashlib.sha256(json.dumps({"engine": ident, "messages": m}, sort_keys=True).encode()).hexdigest()
                for m in jobs]
        hits = ctx.cache.get_many(keys) if ctx.cache is not None else {}
        results: list[float | str | None] = [None] * len(jobs)
        todo = []
        for j, key in enumerate(keys):
            if key in hits and hits[key].completions:
                results[j] = float(hits[key].completions[0].text)
                ctx.stats.hits += 1
            else:
                todo.append(j)

        def call(j: int) -> tuple[int, float | str]:
            try:
                return j, _reward_call(ep, jobs[j])
            except RuntimeError as e:
                return j, f"engine error (reward): {e}"

        with ThreadPoolExecutor(max_workers=ep.concurrency) as pool:
            for j, value in pool.map(call, todo):
                results[j] = value
                if isinstance(value, float) and ctx.cache is not None:
                    ctx.cache.put(keys[j], Response(completions=[Completion(text=repr(value))]))
                if isinstance(value, float):
                    ctx.stats.generated += 1
                else:
                    ctx.stats.failed += 1
        rated = [list(rec.get(self.candidates_column) or []) for rec in batch]
        errors: list[list[str]] = [[] for _ in batch]
        for (i, k), value in zip(where, results):
            if isinstance(value, str):
                errors[i].append(value)
                continue
            rated[i][k] = {**rated[i][k], "ratings": {"reward": value}, "score": value, "rate_error": None}
        return rated, errors, [{"reward": ident} for _ in batch]

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


# ------------------------------------------------------------------ pairs


def _choice(rng, items: list[int]) -> int:
    return items[0] if len(items) == 1 else rng.choice(items)


def make_pairs(scores: list[float | None], strategy: str, min_margin: float, rng,
               max_pairs: int | None = None, cut: list[bool] | None = None,
               ) -> tuple[list[tuple[int, int]], str | None, dict[str, int]]:
    """(chosen, rejected) index pairs for one prompt, or the reason there are none.

    `random_lower` (default; cleaned UltraFeedback): chosen = the best score (a
    seeded pick among equal best), rejected = a seeded pick among those at least
    `min_margin` below it and strictly lower. `best_worst`: the best against the
    worst. `all_pairs`: every pair with a margin > 0 and >= min_margin (equal
    scores are skipped and counted). `cut`: candidates cut off at max_tokens;
    while a complete one is rated, a cut one is never chosen (it may be rejected).
    Counts: `equal_pairs_skipped`, `cut_best_passed_over` (a prompt whose best
    score went to a cut candidate)."""
    counts = {"equal_pairs_skipped": 0, "cut_best_passed_over": 0}
    rated = [k for k, s in enumerate(scores) if s is not None]
    unrated = len(scores) - len(rated)
    if len(rated) < 2:
        return [], f"{len(rated)} rated candidate(s), need 2" + (f" ({unrated} unrated)" if unrated else ""), counts
    sc = {k: float(scores[k]) for k in rated}  # type: ignore[arg-type]
    best = max(sc.values())
    worst = min(sc.values())
    if best == worst:
        return [], f"tie: all {len(rated)} rated candidates scored {best:g}", counts
    complete = [k for k in rated if not (cut and cut[k])]
    choosable = complete or rated  # every one cut: none is preferred over a complete one
    if max(sc[k] for k in choosable) < best:
        counts["cut_best_passed_over"] = 1
        best = max(sc[k] for k in choosable)
        if best == worst:
            return [], (f"truncated: the best-scored candidate(s) were cut at max_tokens and every "
                        f"complete one scored the lowest ({best:g})"), counts
    if strategy == "all_pairs":
        pairs = []
        for a in rated:
            for b in rated:
                if a < b and sc[a] == sc[b]:
                    counts["equal_pairs_skipped"] += 1
                if a in choosable and sc[a] > sc[b] and sc[a] - sc[b] >= min_margin:
                    pairs.append((a, b))
        pairs.sort(key=lambda p: (-(sc[p[0]] - sc[p[1]]), p))
        if not pairs:
            return [], f"margin: no pair differs by >= min_margin {min_margin:g} (best {best:g}, worst {worst:g})", counts
        if max_pairs is not None and len(pairs) > max_pairs:
            pairs = sorted(rng.sample(pairs, max_pairs), key=lambda p: (-(sc[p[0]] - sc[p[1]]), p))
        return pairs, None, counts
    chosen = _choice(rng, [k for k in choosable if sc[k] == best])
    if strategy == "best_worst":
        if best - worst < min_margin:
            return [], f"margin: best {best:g} - worst {worst:g} = {best - worst:g} < min_margin {min_margin:g}", counts
        return [(chosen, _choice(rng, [k for k in rated if sc[k] == worst]))], None, counts
    lower = [k for k in rated if sc[k] < best and best - sc[k] >= min_margin]
    if not lower:
        below = max(v for v in sc.values() if v < best)
        return [], (f"margin: best {best:g}, next {below:g}: none is >= min_margin {min_margin:g} lower"), counts
    return [(chosen, rng.choice(lower))], None, counts


@stages.register
class Pairs(MapStage):
    """Binarise rated candidates into preference pairs, one record per pair
    (`prompt`, `chosen`, `rejected`, `chosen_score`, `rejected_score`,
    `margin`, `chosen_teacher`, `rejected_teacher`, `chosen_model`,
    `rejected_model`). A prompt that yields no pair (ties, too small a margin,
    fewer than two rated candidates) is rejected with that reason."""

    type: Literal["pairs"] = "pairs"
    strategy: Literal["random_lower", "best_worst", "all_pairs"] = "random_lower"
    min_margin: float = Field(0.0, ge=0, description="least score difference between chosen and rejected (ties: always dropped)")
    max_pairs: int | None = Field(None, ge=1, description="all_pairs: at most this many pairs per prompt (a seeded sample)")
    candidates_column: str = "candidates"
    keep_candidates: bool = Field(False, description="keep the candidates list in each pair record")
    allow_truncated: bool = Field(
        False, description="let a candidate cut off at max_tokens (finish_reason length) be chosen over a "
        "complete one (default: a cut candidate is only ever the rejected side, unless every one is cut)")

    def requires(self) -> set[str]:
        return {self.candidates_column}

    def provides(self) -> set[str]:
        return {"chosen", "rejected", "chosen_score", "rejected_score", "margin", "chosen_teacher",
                "rejected_teacher", "chosen_model", "rejected_model"}

    def removes(self) -> set[str]:
        return set() if self.keep_candidates else {self.candidates_column}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        counts: Counter = Counter()
        for rec in batch:
            cands = rec.get(self.candidates_column) or []
            scores = [c.get("score") for c in cands]
            cut = None if self.allow_truncated else [c.get("finish_reason") == "length" for c in cands]
            pairs, why, extra = make_pairs(scores, self.strategy, self.min_margin, ctx.rng(rec["id"]),
                                           self.max_pairs, cut)
            counts.update(extra)
            if why is not None:
                counts["dropped_tie" if why.startswith("tie") else "dropped_truncated" if why.startswith("truncated")
                       else "dropped_margin" if why.startswith("margin") else "dropped_unrated"] += 1
                errs = [f"{c.get('teacher')}: {c.get('rate_error')}" for c in cands if c.get("score") is None]
                res.reject(rec, why + (f"; unrated: {' | '.join(errs)[:400]}" if errs and not why.startswith("tie") else ""))
                continue
            counts["prompts_paired"] += 1
            base = {k: v for k, v in rec.items() if self.keep_candidates or k != self.candidates_column}
            for p, (a, b) in enumerate(pairs):
                ca, cb = cands[a], cands[b]
                res.keep({**base, "id": f"{rec['id']}.p{p}", "chosen": ca["text"], "rejected": cb["text"],
                          "chosen_score": float(ca["score"]), "rejected_score": float(cb["score"]),
                          "margin": float(ca["score"]) - float(cb["score"]),
                          "chosen_teacher": ca.get("teacher"), "rejected_teacher": cb.get("teacher"),
                          "chosen_model": ca.get("model"), "rejected_model": cb.get("model"),
                          "meta": {**rec.get("meta", {}), ctx.stage_name: {
                              "strategy": self.strategy, "chosen": a, "rejected": b, "scores": scores}}})
                counts["pairs"] += 1
        res.counts.update({k: float(v) for k, v in counts.items()})
        for k in ("pairs", "prompts_paired", "dropped_tie", "dropped_margin", "dropped_unrated"):
            res.counts.setdefault(k, 0.0)
        return res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        chosen, rejected, margins = [], [], []
        wins: Counter = Counter()
        losses: Counter = Counter()
        for j in range(len(out)):
            for r in out.columns(j, ["chosen_score", "rejected_score", "margin", "chosen_teacher", "rejected_teacher"]):
                chosen.append(r["chosen_score"])
                rejected.append(r["rejected_score"])
                margins.append(r["margin"])
                wins[r["chosen_teacher"]] += 1
                losses[r["rejected_teacher"]] += 1
        teachers = sorted(set(wins) | set(losses), key=str)
        return {
            "pairs": len(chosen),
            "chosen_score_hist": histogram(chosen),
            "rejected_score_hist": histogram(rejected),
            "margin_hist": histogram(margins),
            "teacher_wins": {str(t): {"chosen": wins[t], "rejected": losses[t],
                                      "win_rate": round(wins[t] / (wins[t] + losses[t]), 3)} for t in teachers},
        }


def histogram(values: list[float], bins: int = 10) -> dict[str, int]:
    """Counts per value when scores sit on a 0.25 grid (means of 1-5 ratings),
    else `bins` equal-width bins labelled by their lower edge."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {}
    if all(abs(v * 4 - round(v * 4)) < 1e-9 for v in vals):
        return {f"{v:g}": n for v, n in sorted(Counter(vals).items())}
    lo, hi = min(vals), max(vals)
    width = (hi - lo) / bins or 1.0
    c = Counter(min(int((v - lo) / width), bins - 1) for v in vals)
    return {f"{lo + b * width:.3g}": c[b] for b in sorted(c)}

