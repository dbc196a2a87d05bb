"""`smolforge eval`: models side by side on held-out data, each metric with a 95% CI.

Every metric is a mean of per-example scores; its 95% interval is the percentile
bootstrap (Efron & Tibshirani 1993, ch. 13): `resamples` resamples of the examples
with replacement, seeded. Models are scored on the same examples and resampled with
the same indices, so the interval of a difference (model - baseline, the first model)
is the paired bootstrap (Koehn 2004, "Statistical Significance Tests for Machine
Translation Evaluation"): a difference whose interval excludes 0 is significant at
about the 5% level.

Tasks:
- `json`: the answer parses as a JSON object (a ```json fence around it is allowed);
- `fields`: per-example share of reference fields the answer gets right (normalised
  exact match: case, surrounding space and punctuation ignored), plus each field's
  accuracy (`fields.<name>`);
- `json_constrained`, `fields_constrained`: the same with constrained decoding (the
  engine's JSON-schema grammar: the `schema` file, else the row's `schema` column,
  else one built from the reference's keys);
- `ifeval`: IFEval strict / loose accuracy (all of a row's instructions followed),
  by `smolforge.ifeval`, on rows with `instruction_id_list` and `kwargs`;
- `code`: pass@1, the answer's code run against the row's `tests` in the sandbox
  (`smolforge.sandbox`, as `verify_code` does);
- `judge`: win rate of each model against the baseline by a judge model, asked
  twice with the two answers in both orders (position bias cancels: Zheng et al.
  2023, "Judging LLM-as-a-Judge", https://arxiv.org/abs/2306.05685); a win in both
  orders scores 1, a split 0.5, a loss 0.
A task whose columns the data lacks is reported as unavailable, not failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smolforge.engines.base import chat
from smolforge.stats import bootstrap_ci, bootstrap_indices
from smolforge.text import loads_json

TASKS = ("json", "fields", "json_constrained", "fields_constrained", "ifeval", "code", "judge")


class EvalDataError(ValueError):
    pass


@dataclass
class EvalConfig:
    models: list[str]
    data: str
    tasks: list[str] = field(default_factory=lambda: ["json", "fields"])
    split: str | None = "test"
    limit: int | None = None
    max_tokens: int = 160
    fields: list[str] | None = None
    reference_column: str = "reference"
    schema_column: str = "schema"
    schema: str | None = None  # a JSON schema file for every row (constrained tasks)
    prompt_column: str = "prompt"
    judge: str | None = None
    resamples: int = 2000
    seed: int = 0
    threads: int | None = None
    n_ctx: int = 2048
    progress: bool = True


# --------------------------------------------------------------------- statistics


# ------------------------------------------------------------------------ parsing


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_json(text: str) -> dict | None:
    """The answer as a JSON object, or None (a ```json fence is allowed, nothing else)."""
    m = _FENCE.match(text)
    s = (m.group(1) if m else text).strip()
    try:
        v = loads_json(s)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def norm(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        v = json.dumps(v, sort_keys=True)
    return re.sub(r"\s+", " ", v.strip().strip(".!?,;:'\"").lower())


def schema_for(reference: dict) -> dict:
    """A JSON schema asking for exactly the reference's keys (strings unless the
    reference value is a number or a boolean)."""
    props = {}
    for k, v in reference.items():
        t = ("boolean" if isinstance(v, bool) else "integer" if isinstance(v, int)
             else "number" if isinstance(v, float) else "string")
        props[k] = {"type": t}
    return {"type": "object", "properties": props, "required": list(reference),
            "additionalProperties": False}


# --------------------------------------------------------------------------- data


@dataclass
class Example:
    id: str
    messages: list[dict[str, str]]
    reference: dict | None
    schema: dict | None
    row: dict


def _as_obj(v: Any, what: str, where: str) -> dict | None:
    if v is None:
        return None
    if isinstance(v, dict):
        return v
    if isinstance(v, str):
        try:
            o = json.loads(v)
        except ValueError:
            raise EvalDataError(f"{where}: {what} is not JSON") from None
        if isinstance(o, dict):
            return o
    raise EvalDataError(f"{where}: {what} must be a JSON object")


def load_examples(cfg: EvalConfig) -> list[Example]:
    from smolforge.train.train import read_rows, select_split

    try:
        rows = read_rows(cfg.data)
    except ValueError as e:
        raise EvalDataError(str(e)) from None
    if cfg.split is not None and rows and "split" not in rows[0]:
        # No held-out split: every row would be scored, training rows included.
        raise EvalDataError(f"{cfg.data}: the data has no `split` column, so split {cfg.split!r} cannot be "
                            "told apart from the training rows; add a split stage to the recipe (docs/train.md), "
                            "or pass --split all (Python: split=None) to score every row anyway")
    rows = select_split(rows, cfg.split)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise EvalDataError(f"{cfg.data}: no rows" + (f" in split {cfg.split!r}" if cfg.split else ""))
    out = []
    for i, r in enumerate(rows):
        where = f"{cfg.data}: row {i} (id {r.get('id', '?')})"
        target = None
        if r.get("messages"):
            msgs = [{"role": m["role"], "content": str(m["content"])} for m in r["messages"]]
            if msgs[-1]["role"] == "assistant":
                target = msgs[-1]["content"]
                msgs = msgs[:-1]
        elif cfg.prompt_column in r:
            p = r[cfg.prompt_column]
            msgs = p if isinstance(p, list) else chat(p)
            target = r.get("completion") if isinstance(r.get("completion"), str) else None
        else:
            raise EvalDataError(f"{where}: no `messages` and no {cfg.prompt_column!r} column")
        ref = _as_obj(r.get(cfg.reference_column), cfg.reference_column, where)
        if ref is None and target is not None:
            ref = parse_json(target)
        schema = _as_obj(r.get(cfg.schema_column), cfg.schema_column, where)
        out.append(Example(str(r.get("id", i)), msgs, ref, schema, r))
    return out


def resolve_model(model: str) -> str:
    """A bundled name, a GGUF file, or a `smolforge train --out` directory (its model.gguf)."""
    from smolforge.engines.models import BUNDLED

    if model in BUNDLED:
        return model
    p = Path(model).expanduser()
    if p.is_dir():
        g = p / "model.gguf"
        if not g.is_file():
            raise EvalDataError(f"{p}: no model.gguf (train it with --gguf f16|q8_0|q4_1)")
        return str(g)
    if not p.is_file():
        raise EvalDataError(f"model {model!r}: not a bundled model, a GGUF file or a train output")
    return str(p)


# -------------------------------------------------------------------------- tasks


def _generate(engine: Any, examples: list[Example], max_tokens: int, constrained: bool) -> list[str]:
    from smolforge.engines.base import Request

    reqs = []
    for ex in examples:
        schema = None
        if constrained:
            schema = ex.schema or (schema_for(ex.reference) if ex.reference else {"type": "object"})
        reqs.append(Request(messages=ex.messages, max_tokens=max_tokens, temperature=0.0, json_schema=schema))
    return [r.completions[0].text if r.completions and not r.error else "" for r in engine.generate(reqs)]


def field_scores(answers: list[str], examples: list[Example], fields: list[str] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(per-example share of fields right, per-field 0/1 arrays; NaN where a row lacks
    the field)."""
    names = fields or sorted({k for ex in examples if ex.reference for k in ex.reference})
    per = {f: np.full(len(examples), np.nan) for f in names}
    for i, (a, ex) in enumerate(zip(answers, examples)):
        if not ex.reference:
            continue
        got = parse_json(a) or {}
        for f in names:
            if f in ex.reference:
                per[f][i] = float(norm(got.get(f)) == norm(ex.reference[f]))
    stacked = np.vstack([per[f] for f in names]) if names else np.zeros((0, len(examples)))
    with np.errstate(invalid="ignore"):
        overall = np.nanmean(stacked, axis=0) if names else np.zeros(len(examples))
    return overall, per


JUDGE_PROMPT = """Which response answers the request better? Reply with one letter: A or B.

Request:
{request}

Response A:
{a}

Response B:
{b}

Better response (A or B):"""


def judge_scores(judge: Any, examples: list[Example], base: list[str], cand: list[str]) -> np.ndarray:
    """Pairwise, both orders: 1 = candidate preferred both times, 0.5 = split, 0 = lost."""
    from smolforge.engines.base import Request

    reqs = []
    for ex, b, c in zip(examples, base, cand):
        req = ex.messages[-1]["content"]
        for a_, b_ in ((c, b), (b, c)):
            reqs.append(Request(messages=chat(JUDGE_PROMPT.format(request=req, a=a_, b=b_)),
                                max_tokens=2, temperature=0.0,
                                json_schema=None))
    out = judge.generate(reqs)
    scores = np.zeros(len(examples))
    for i in range(len(examples)):
        t1 = (out[2 * i].completions[0].text if out[2 * i].completions else "").strip().upper()[:1]
        t2 = (out[2 * i + 1].completions[0].text if out[2 * i + 1].completions else "").strip().upper()[:1]
        scores[i] = 0.5 * ((t1 == "A") + (t2 == "B"))
    return scores


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every task for every model; returns the JSON report."""
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise EvalDataError(f"unknown task(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    if not cfg.models:
        raise EvalDataError("name at least one model")
    examples = load_examples(cfg)
    if cfg.schema:
        try:
            shared = json.loads(Path(cfg.schema).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EvalDataError(f"--schema {cfg.schema}: {e}") from None
        for ex in examples:
            ex.schema = shared
    models = [resolve_model(m) for m in cfg.models]
    needs_ref = {"fields", "fields_constrained"} & set(cfg.tasks)
    if needs_ref and not any(ex.reference for ex in examples):
        raise EvalDataError(f"{cfg.data}: no reference fields (a {cfg.reference_column!r} column or a "
                            "JSON target) for the fields tasks")
    from smolforge.engines.llamacpp import LlamaCppEngine

    n = len(examples)
    idx = bootstrap_indices(n, cfg.resamples, cfg.seed)
    scores: dict[str, dict[str, np.ndarray]] = {}  # metric -> model -> per-example
    answers: dict[str, dict[str, list[str]]] = {}
    notes: dict[str, str] = {}

    def put(metric: str, model: str, s: np.ndarray) -> None:
        scores.setdefault(metric, {})[model] = s

    def unconstrained(label: str, engine: Any) -> list[str]:
        """The model's plain answers, generated once for every task that scores them."""
        done = answers.setdefault("answers", {})
        if label not in done:
            done[label] = _generate(engine, examples, cfg.max_tokens, False)
        return done[label]

    for label, path in zip(cfg.models, models):
        engine = LlamaCppEngine(model=path, n_ctx=cfg.n_ctx, n_threads=cfg.threads)
        try:
            for constrained in (False, True):
                suffix = "_constrained" if constrained else ""
                want = {f"json{suffix}", f"fields{suffix}"} & set(cfg.tasks)
                if not want and not (not constrained and "judge" in cfg.tasks):
                    continue
                texts = _generate(engine, examples, cfg.max_tokens, constrained)
                answers.setdefault(f"answers{suffix}", {})[label] = texts
                if f"json{suffix}" in want:
                    put(f"json{suffix}", label, np.array([parse_json(t) is not None for t in texts], float))
                if f"fields{suffix}" in want:
                    overall, per = field_scores(texts, examples, cfg.fields)
                    put(f"fields{suffix}", label, overall)
                    for f, s in per.items():
                        put(f"fields{suffix}.{f}", label, s)
            if "ifeval" in cfg.tasks:
                if "instruction_id_list" not in examples[0].row:
                    notes["ifeval"] = "unavailable: the data has no instruction_id_list/kwargs columns"
                else:
                    from smolforge.ifeval.verify import evaluate as ifeval_checks

                    texts = unconstrained(label, engine)
                    checks = [ifeval_checks(t, ex.row["instruction_id_list"], ex.row.get("kwargs"),
                                       prompt=str(ex.row.get("prompt") or ""))
                              for ex, t in zip(examples, texts)]
                    put("ifeval.strict", label, np.array([float(all(c.strict for c in cs)) for cs in checks]))
                    put("ifeval.loose", label, np.array([float(all(c.loose for c in cs)) for cs in checks]))
            if "code" in cfg.tasks:
                if "tests" not in examples[0].row:
                    notes["code"] = "unavailable: the data has no tests column"
                else:
                    from smolforge.sandbox import Job, open_sandbox
                    from smolforge.stages.verify.code import extract_code

                    texts = unconstrained(label, engine)
                    with open_sandbox() as sb:
                        results = sb.run([Job(extract_code(t), str(ex.row["tests"]),
                                              entry_point=ex.row.get("entry_point"))
                                          for ex, t in zip(examples, texts)])
                    put("code.pass@1", label, np.array([float(r.passed) for r in results]))
        finally:
            engine.close()

    if "judge" in cfg.tasks and len(cfg.models) > 1:
        judge = LlamaCppEngine(model=resolve_model(cfg.judge or cfg.models[0]), n_ctx=cfg.n_ctx,
                               n_threads=cfg.threads)
        try:
            base = answers["answers"][cfg.models[0]]
            for label in cfg.models[1:]:
                put("judge.win_rate", label, judge_scores(judge, examples, base, answers["answers"][label]))
        finally:
            judge.close()

    report: dict[str, Any] = {"data": cfg.data, "split": cfg.split, "n": n, "models": cfg.models,
                              "baseline": cfg.models[0], "resamples": cfg.resamples, "seed": cfg.seed,
                              "level": 0.95, "metrics": {}, "notes": notes}
    base = cfg.models[0]
    for metric, by_model in scores.items():
        entry: dict[str, Any] = {"models": {}, "diff": {}}
        for label, s in by_model.items():
            ok = ~np.isnan(s)
            sub = idx if ok.all() else bootstrap_indices(int(ok.sum()), cfg.resamples, cfg.seed)
            m, lo, hi = bootstrap_ci(s[ok], sub) if ok.any() else (float("nan"),) * 3
            entry["models"][label] = {"mean": m, "low": lo, "high": hi, "n": int(ok.sum())}
            if label != base and base in by_model:
                d = s - by_model[base]
                okd = ~np.isnan(d)
                sub = idx if okd.all() else bootstrap_indices(int(okd.sum()), cfg.resamples, cfg.seed)
                m, lo, hi = bootstrap_ci(d[okd], sub) if okd.any() else (float("nan"),) * 3
                entry["diff"][label] = {"mean": m, "low": lo, "high": hi,
                                        "significant": bool(lo > 0 or hi < 0)}
        report["metrics"][metric] = entry
    report["samples"] = [
        {"id": ex.id, "reference": ex.reference,
         **{label: answers.get("answers", {}).get(label, [None] * n)[i] for label in cfg.models}}
        for i, ex in enumerate(examples[:3])
    ]
    return report


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    models = report["models"]
    t = Table(title=f"eval on {report['data']} ({report['split'] or 'all'}, n={report['n']}; "
              f"mean [95% bootstrap CI])")
    t.add_column("metric")
    for m in models:
        t.add_column(Path(m).name if "/" in m else m, justify="right")
    for m in models[1:]:
        t.add_column(f"Δ {Path(m).name if '/' in m else m}", justify="right")
    for metric, e in report["metrics"].items():
        cells = []
        for m in models:
            v = e["models"].get(m)
            cells.append(f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" if v else "-")
        for m in models[1:]:
            d = e["diff"].get(m)
            if d:
                mark = "[green]*[/green]" if d["significant"] and d["mean"] > 0 else (
                    "[red]*[/red]" if d["significant"] else "")
                cells.append(f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark}")
            else:
                cells.append("-")
        t.add_row(metric, *cells)
    console.print(t)
    for task, note in report.get("notes", {}).items():
        console.print(f"{task}: {note}", highlight=False)
