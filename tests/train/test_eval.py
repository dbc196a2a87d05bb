"""`smolforge eval`: bootstrap CIs against references, field scoring, and a real eval
of the bundled model through llama.cpp (plain and grammar-constrained decoding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import smolforge
from scipy import stats

from smolforge.train.eval import (
    EvalConfig,
    Example,
    bootstrap_ci,
    bootstrap_indices,
    evaluate,
    field_scores,
    parse_json,
)


def test_bootstrap_matches_a_loop_reference_and_scipy():
    rng = np.random.default_rng(11)
    scores = (rng.random(80) < 0.35).astype(float)
    idx = bootstrap_indices(len(scores), 4000, seed=3)
    mean, lo, hi = bootstrap_ci(scores, idx)
    # Reference 1: the textbook loop, same seed -> the very same resamples.
    g = np.random.default_rng(3)
    means = [scores[g.integers(0, len(scores), len(scores))].mean() for _ in range(4000)]
    assert (lo, hi) == tuple(np.percentile(means, [2.5, 97.5]))
    assert mean == scores.mean()
    # Reference 2: scipy's percentile bootstrap (its own resamples): close, not equal.
    ref = stats.bootstrap((scores,), np.mean, n_resamples=20000, method="percentile",
                          random_state=0).confidence_interval
    assert abs(lo - ref.low) < 0.02 and abs(hi - ref.high) < 0.02
    # Known answers: a constant has a zero-width interval; the normal approximation.
    assert bootstrap_ci(np.ones(50), bootstrap_indices(50, 500, 0))[1:] == (1.0, 1.0)
    se = scores.std() / np.sqrt(len(scores))
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.03


def test_paired_difference_is_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.4).astype(float)
    tuned = base.copy()
    flip = rng.choice(200, 30, replace=False)  # tuned fixes 30 examples the base got wrong
    tuned[flip] = 1.0
    idx = bootstrap_indices(200, 3000, 0)
    d, dlo, dhi = bootstrap_ci(tuned - base, idx)
    assert d == pytest.approx((tuned - base).mean())
    assert dlo > 0  # significant
    _, blo, bhi = bootstrap_ci(base, idx)
    _, tlo, thi = bootstrap_ci(tuned, idx)
    assert (dhi - dlo) < (bhi - blo)  # pairing removes the shared variance


def test_parse_json_and_field_scores():
    assert parse_json('{"a": 1}') == {"a": 1}
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json('Here: {"a": 1}') is None
    assert parse_json("[1, 2]") is None
    assert parse_json('{"a": 1') is None
    ex = [Example("1", [], {"type": "bug", "priority": "High"}, None, {}),
          Example("2", [], {"type": "feature", "priority": "low"}, None, {}),
          Example("3", [], {"type": "docs"}, None, {})]
    answers = ['{"type": "Bug.", "priority": "high "}', '{"type": "bug", "priority": "low"}', "not json"]
    overall, per = field_scores(answers, ex, None)
    assert overall.tolist() == [1.0, 0.5, 0.0]
    assert per["type"].tolist() == [1.0, 0.0, 0.0]
    assert per["priority"][:2].tolist() == [1.0, 1.0] and np.isnan(per["priority"][2])


@pytest.fixture(scope="module")
def issues_file(tmp_path_factory):
    schema = {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["small", "large"]}},
        "required": ["color", "size"], "additionalProperties": False}
    rows = []
    for i, (c, s) in enumerate([("red", "small"), ("blue", "large"), ("green", "small"),
                                ("red", "large"), ("blue", "small")]):
        rows.append({"id": f"r{i}", "split": "test" if i < 4 else "train",
                     "prompt": f"A {s} {c} box. Reply with JSON with keys color and size.",
                     "reference": {"color": c, "size": s}, "schema": json.dumps(schema)})
    path = tmp_path_factory.mktemp("eval") / "boxes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_eval_bundled_model_side_by_side(issues_file):
    from smolforge.engines.models import resolve_model_path

    same = str(resolve_model_path("smollm2-135m"))  # the same model under another name
    rep = evaluate(EvalConfig(models=["smollm2-135m", same], data=str(issues_file),
                              tasks=["json", "fields", "json_constrained", "fields_constrained"],
                              max_tokens=40, resamples=500))
    assert rep["n"] == 4  # the test split only
    m = rep["metrics"]
    # The grammar guarantees a schema-valid object.
    assert m["json_constrained"]["models"]["smollm2-135m"]["mean"] == 1.0
    for metric in ("json", "fields", "json_constrained", "fields_constrained", "fields.color"):
        a, b = (m[metric]["models"][k] for k in ("smollm2-135m", same))
        assert a["mean"] == b["mean"]  # greedy decoding: the same model scores the same
        assert a["low"] <= a["mean"] <= a["high"]
        d = m[metric]["diff"][same]
        assert (d["mean"], d["low"], d["high"], d["significant"]) == (0.0, 0.0, 0.0, False)
    # Constrained field answers are always legal values, so accuracy is at least chance
    # on average over many rows; here just that the fields were scored from the answers.
    assert {"fields_constrained.color", "fields_constrained.size"} <= set(m)


def test_eval_cli_errors(tmp_path, issues_file):
    r = smolforge("eval", "smollm2-135m", "--data", str(issues_file), "--tasks", "json,bogus")
    assert r.returncode == 2 and "bogus" in r.stderr
    r = smolforge("eval", "smollm2-135m", "--data", str(issues_file), "--split", "nope")
    assert r.returncode == 2 and "no rows in split 'nope'" in r.stderr
    r = smolforge("eval", str(tmp_path), "--data", str(issues_file))
    assert r.returncode == 2 and "model.gguf" in r.stderr


def test_eval_refuses_data_without_a_split_unless_told(tmp_path):
    """Data with no `split` column has no held-out rows: the default `--split test`
    would score the training rows as a test set. Refused (exit 2, saying how to
    proceed); `--split all` scores every row knowingly."""
    data = tmp_path / "nosplit.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Say {i}.", "completion": json.dumps({"n": i})})
                            + "\n" for i in range(3)))
    r = smolforge("eval", "smollm2-135m", "--data", str(data), "--tasks", "json", "--limit", "1",
                  "--max-tokens", "4", "--resamples", "10")
    assert r.returncode == 2, r.stderr
    assert "no `split` column" in r.stderr and "--split all" in r.stderr
    from smolforge.train.eval import EvalDataError, load_examples

    with pytest.raises(EvalDataError, match="no `split` column"):
        load_examples(EvalConfig(models=["smollm2-135m"], data=str(data)))
    assert len(load_examples(EvalConfig(models=["smollm2-135m"], data=str(data), split=None))) == 3


@pytest.mark.slow
def test_eval_ifeval_and_code_tasks_score_the_answers_with_the_verifiers(tmp_path):
    """The `ifeval` and `code` tasks run the model, then IFEval's checks and the
    sandbox on its answers: the figures equal those verifiers run again on the
    answers the report shows."""
    from smolforge.ifeval.verify import evaluate as ifeval_checks
    from smolforge.sandbox import Job, open_sandbox
    from smolforge.stages.verify.code import extract_code

    rows = [
        {"id": "a", "prompt": "Write one short sentence about rain, in lowercase letters only.",
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
         "tests": "assert add(2, 3) == 5"},
        {"id": "b", "prompt": "Write a Python function add(a, b) that returns a + b.",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}],
         "tests": "assert add(2, 3) == 5"},
        {"id": "c", "prompt": "Say hello. Do not use any commas.",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}],
         "tests": "assert add(1, 1) == 2"},
    ]
    data = tmp_path / "v.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = evaluate(EvalConfig(models=["smollm2-135m"], data=str(data), split=None,
                              tasks=["ifeval", "code"], max_tokens=48, resamples=200))
    answers = [s["smollm2-135m"] for s in rep["samples"]]
    assert all(isinstance(a, str) for a in answers)
    strict = [all(c.strict for c in ifeval_checks(a, r["instruction_id_list"], r["kwargs"]))
              for a, r in zip(answers, rows)]
    m = rep["metrics"]
    assert m["ifeval.strict"]["models"]["smollm2-135m"]["mean"] == pytest.approx(np.mean(strict))
    with open_sandbox() as sb:
        passed = [r.passed for r in sb.run([Job(extract_code(a), r["tests"])
                                           for a, r in zip(answers, rows)])]
    assert m["code.pass@1"]["models"]["smollm2-135m"]["mean"] == pytest.approx(np.mean(passed))
    assert "ifeval" not in rep["notes"] and "code" not in rep["notes"]
