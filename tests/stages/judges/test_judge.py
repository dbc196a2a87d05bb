"""Judges: built-in rubrics, custom rubric files, several aspects and several
engines. Parsing, range checks and averaging are driven by canned answers served
over real HTTP (tests/faultproxy.py's `canned_server`), so every score, mean and
spread is asserted exactly; one test runs the real bundled model."""

from __future__ import annotations

import json

import pytest
from conftest import write_recipe
from faultproxy import Fault, canned_server, user_text

import smolforge as sf
from smolforge.recipe import Recipe, RecipeError, load_recipe
from smolforge.stages.judges.judge import DEFAULT_SCORE_PATTERN, load_rubric, parse_score

DOCS = ["Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
        "BUY NOW cheap watches best price click here"]


def openai(url: str, model: str) -> dict:
    return {"type": "openai", "base_url": url, "model": model, "retry_base_delay": 0.0,
            "max_retries": 0}


def test_builtin_rubrics_load():
    edu = load_rubric("fineweb-edu")
    assert (edu.min_score, edu.max_score, edu.max_chars) == (0, 5, 2000)
    assert "Educational score: <total points>" in edu.aspects["educational_value"]
    uf = load_rubric("ultrafeedback")
    assert list(uf.aspects) == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert (uf.min_score, uf.max_score) == (1, 5)


def test_unknown_rubric_suggests(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"name": "j", "stages": [
        {"type": "items", "items": DOCS}, {"type": "judge", "rubric": "fineweb_edu"}]})
    with pytest.raises(RecipeError, match="stages\\[1\\].rubric: .*did you mean 'fineweb-edu'"):
        load_recipe(path)


def test_rubric_inputs_are_checked_against_columns(tmp_path):
    stages = [{"type": "items", "items": [{"prompt": "Say hi", "text": "hi"}]},
              {"type": "judge", "rubric": "ultrafeedback"}]
    with pytest.raises(RecipeError, match="column 'instruction' is used before any stage produces it"):
        Recipe.from_dict({"name": "j", "stages": stages})
    stages[1]["inputs"] = {"instruction": "prompt", "response": "text"}
    Recipe.from_dict({"name": "j", "stages": stages})  # valid now


def test_parse_score_patterns():
    assert parse_score("Fine.\nRating: 4", load_rubric("ultrafeedback").score_pattern, False) == (4.0, "Fine.")
    assert parse_score("Educational score: 6", DEFAULT_SCORE_PATTERN, False)[0] == 6.0


# ------------------------------------------------ canned answers over HTTP

RUBRIC = ("min_score: 1\nmax_score: 3\naspects:\n"
          "  clarity: 'Rate clarity 1-3 of: {{ text }}'\n"
          "  accuracy: 'Rate accuracy 1-3 of: {{ text }}'\n")

# (model, aspect, document) -> the judge's answer
ANSWERS = {
    ("judge-a", "clarity", 0): "Clear and short.\nScore: 3",
    ("judge-b", "clarity", 0): "Score: 1",
    ("judge-a", "accuracy", 0): "Accurate.\nScore: 2",
    ("judge-b", "accuracy", 0): "Score: 1",
    ("judge-a", "clarity", 1): "Score: 7",  # out of [1, 3]
    ("judge-b", "clarity", 1): "Score: 0",
    ("judge-a", "accuracy", 1): "Score: 2",
    ("judge-b", "accuracy", 1): "no idea",  # unparsable
}


def two_judges(body: dict) -> str:
    text = user_text(body)
    aspect = "clarity" if text.startswith("Rate clarity") else "accuracy"
    return ANSWERS[(body["model"], aspect, 0 if DOCS[0] in text else 1)]


def test_two_engines_two_aspects_mean_spread_and_rejects(tmp_path):
    """Per aspect the mean over engines; the record's score the mean over aspects;
    the spread the largest max-min over engines; every failed answer in the reason."""
    (tmp_path / "rubric.yaml").write_text(RUBRIC)
    with canned_server(two_judges) as server:
        path = write_recipe(tmp_path / "r.yaml", {"name": "multi", "stages": [
            {"type": "items", "items": DOCS},
            {"type": "judge", "rubric": "rubric.yaml", "column": "q", "max_tokens": 8,
             "engine": [openai(server.url, "judge-a"), openai(server.url, "judge-b")]},
        ]})
        run = sf.run(path, out=tmp_path / "multi")
    assert len(server.seen) == 8  # 2 records x 2 aspects x 2 engines
    (row,) = run.data().to_pylist()
    assert (row["q_clarity"], row["q_accuracy"], row["q"], row["q_spread"]) == (2.0, 1.5, 1.75, 2.0)
    # the first engine's justification per aspect
    assert json.loads(row["q_justification"]) == {"clarity": "Clear and short.", "accuracy": "Accurate."}
    judges = json.loads(row["meta"])["judge"]["judges"]
    assert [(j["aspect"], j["model"], j["scores"]) for j in judges] == [
        ("clarity", "judge-a", [3.0]), ("clarity", "judge-b", [1.0]),
        ("accuracy", "judge-a", [2.0]), ("accuracy", "judge-b", [1.0])]
    (rej,) = run.rejects().to_pylist()
    assert rej["id"] == "items-000001" and rej["stage"] == "judge"
    assert rej["reason"] == ("judge score 7 outside [1, 3] (clarity): 'Score: 7'; "
                             "judge score 0 outside [1, 3] (clarity): 'Score: 0'; "
                             "unparsable judge answer (accuracy): 'no idea'")


def test_fineweb_edu_rubric_parses_score_and_truncates_the_extract(tmp_path):
    """The built-in rubric: the last `Educational score: N` line is the score, the
    rest the justification; only the first max_chars characters are shown; a
    score above 5 is rejected with the raw answer."""
    answers = {0: "It explains a process.\nEducational score: 4", 1: "Educational score: 6"}
    with canned_server(lambda b: answers[0 if "Photosynthesis" in user_text(b) else 1]) as server:
        run = sf.run(Recipe.from_dict({"name": "edu", "stages": [
            {"type": "items", "items": DOCS},
            {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "max_chars": 30,
             "max_tokens": 8, "engine": openai(server.url, "edu")}]}), out=tmp_path / "edu")
    prompts = sorted(user_text(s.body) for s in server.seen)
    assert DOCS[0][:30] + "\n" in prompts[1] and DOCS[0][:31] not in prompts[1]
    (row,) = run.data().to_pylist()
    assert (row["text"], row["edu"], row["edu_spread"]) == (DOCS[0], 4.0, 0.0)
    assert row["edu_justification"] == "It explains a process."
    (rej,) = run.rejects().to_pylist()
    assert rej["reason"] == "judge score 6 outside [0, 5]: 'Educational score: 6'"


def test_structured_judge_sends_the_schema_and_reads_json(tmp_path):
    answers = {0: '{"justification": "clear biology", "score": 5}', 1: '{"score": 0}'}
    with canned_server(lambda b: answers[0 if "Photosynthesis" in user_text(b) else 1]) as server:
        run = sf.run(Recipe.from_dict({"name": "edu", "stages": [
            {"type": "items", "items": DOCS},
            {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "structured": True,
             "max_tokens": 8, "engine": openai(server.url, "edu")}]}), out=tmp_path / "s")
    schema = server.seen[0].body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["score"] == {"type": "integer", "enum": [0, 1, 2, 3, 4, 5]}
    assert schema["required"] == ["justification", "score"]
    rows = run.data().to_pylist()
    assert [(r["edu"], r["edu_justification"]) for r in rows] == [(5.0, "clear biology"), (0.0, "")]
    assert run.rejects().num_rows == 0


def test_on_fail_keep_keeps_the_record_with_an_empty_score_and_the_reason(tmp_path):
    with canned_server(lambda b: "I would rather not say") as server:
        run = sf.run(Recipe.from_dict({"name": "keep", "stages": [
            {"type": "items", "items": DOCS[:1]},
            {"type": "judge", "template": "Rate 0-5: {{ text }}", "column": "s", "max_tokens": 8,
             "on_fail": "keep", "engine": openai(server.url, "m")}]}), out=tmp_path / "k")
    (row,) = run.data().to_pylist()
    assert row["s"] is None and run.rejects().num_rows == 0
    meta = json.loads(row["meta"])["judge"]
    assert meta["failed"] == "unparsable judge answer: 'I would rather not say'"


def test_sample_rate_judges_a_deterministic_share(tmp_path):
    """Unjudged records pass with an empty score and cost no LLM call; the same
    seed picks the same records."""
    items = [f"Fact {i}: water boils at 100 degrees Celsius at sea level." for i in range(12)]
    with canned_server(lambda b: "Score: 3") as server:
        recipe = {"name": "sample", "seed": 3, "stages": [
            {"type": "items", "items": items},
            {"type": "judge", "template": "Rate 0-5: {{ text }}\nScore:", "column": "s", "max_tokens": 4,
             "sample_rate": 0.25, "engine": openai(server.url, "m")}]}
        run = sf.run(Recipe.from_dict(recipe), out=tmp_path / "s")
        calls = len(server.seen)
        again = sf.run(Recipe.from_dict(recipe), out=tmp_path / "s2")
    rows = run.data().to_pylist()
    judged = [r["text"] for r in rows if r["s"] is not None]
    assert len(rows) == 12 and run.rejects().num_rows == 0
    assert {r["s"] for r in rows} == {3.0, None}
    assert 1 <= len(judged) <= 7 and calls == len(judged)  # one request per judged record
    assert sorted(user_text(s.body).split("\n")[0][len("Rate 0-5: "):] for s in server.seen[:calls]) == \
        sorted(judged)
    assert run.manifest["stages"][1]["generated"] == len(judged)
    assert [r["id"] for r in again.data().to_pylist() if r["s"] is None] == \
        [r["id"] for r in rows if r["s"] is None]


def test_engine_error_rejects_with_the_engine_and_its_error(tmp_path):
    """The API raises (the CLI's exit 1: re-run to retry), and the run it carries has the
    record in its rejects, naming the engine and its error."""
    with canned_server(lambda b: Fault.http(400)) as server, pytest.raises(sf.EngineFailures) as failed:
        sf.run(Recipe.from_dict({"name": "err", "stages": [
            {"type": "items", "items": DOCS[:1]},
            {"type": "judge", "template": "Rate 0-5: {{ text }}", "column": "s", "max_tokens": 4,
             "engine": openai(server.url, "m")}]}), out=tmp_path / "e")
    run = failed.value.run
    assert failed.value.exit_code == 1 and run.data().num_rows == 0
    (rej,) = run.rejects().to_pylist()
    assert rej["reason"].startswith("engine error (openai): HTTP 400")


# ---------------------------------------------------------------- real model


def test_fineweb_edu_structured_on_real_model(tmp_path):
    """The bundled model, JSON-constrained to {"score": n}: every answer parses and
    is in range, so no record is rejected."""
    recipe = Recipe.from_dict({"name": "edu", "stages": [
        {"type": "items", "items": DOCS},
        {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "structured": True,
         "justify": False, "max_tokens": 8},
    ]})
    run = sf.run(recipe, out=tmp_path / "edu")
    rows = run.data().to_pylist()
    assert run.rejects().num_rows == 0 and [r["text"] for r in rows] == DOCS
    for r in rows:
        assert r["edu"] in {0, 1, 2, 3, 4, 5} and r["edu_spread"] == 0
        (j,) = json.loads(r["meta"])["judge"]["judges"]
        assert j["aspect"] == "educational_value" and j["scores"] == [r["edu"]]


def test_score_patterns_run_in_re2():
    """A recipe's or a rubric file's score pattern runs on the judge's answer (model
    output): `^(a+)+$` against 40 a's and a `!` backtracks ~2^40 steps in Python's
    `re` (a child process, so a hang fails on the timeout); RE2 answers at once.
    One that RE2 cannot run is refused when the stage or rubric is loaded."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    import smolforge
    from smolforge.stages.judges.judge import Judge, Rubric

    src = str(Path(smolforge.__file__).resolve().parent.parent)
    code = ("from smolforge.stages.judges.judge import parse_score\n"
            "from smolforge.stages.preferences.rate import parse_listwise\n"
            "print(parse_score('a' * 40 + '!', '^(a+)+$', False)[0])\n"
            "print(parse_listwise('a' * 40 + '!', 1, '^(a+)+$', 1, 5))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["None", "[None]"]
    with pytest.raises(ValueError, match=r"invalid regex: regex 'Score: \(\?=.*is not supported: invalid perl operator"):
        Judge.model_validate({"type": "judge", "template": "{{ text }}", "score_pattern": r"Score: (?=\d)(\d)"})
    with pytest.raises(ValueError, match="needs a capture group"):
        Rubric.model_validate({"aspects": {"a": "{{ text }}"}, "score_pattern": "Score: \\d"})
