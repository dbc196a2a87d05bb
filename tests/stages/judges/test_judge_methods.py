"""Judges that small models can do: scores from token probabilities (expected value,
P(yes) per criterion), pairwise judging in both orders, panels and their agreement.

Real parts throughout: the bundled SmolLM2-135M in-process, llama-cpp-python's
OpenAI-compatible server (logprobs), and tests/faultproxy.py's canned server for a
server that sends no logprobs. Every probability-derived score is recomputed here
by hand from the engine's own returned logprobs."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
from faultproxy import canned_server, user_text

import smolforge as sf
from smolforge.engines.base import Completion, Request, Response, request_key
from smolforge.engines.llamacpp import LlamaCppEngine
from smolforge.engines.openai import OpenAIEngine
from smolforge.recipe import Recipe
from smolforge.stages.judges.judge import (
    Judge,
    answer_yes_probability,
    krippendorff_alpha_interval,
    load_rubric,
    panel_agreement,
    score_distribution,
    spearman,
)
from smolforge.stages.judges.pairwise_judge import decide, judge_pairs, pair_requests

EDU = ("Photosynthesis is the process by which green plants use sunlight, water and carbon "
       "dioxide to make glucose and oxygen. It takes place in the chloroplasts of leaf cells, "
       "where the green pigment chlorophyll absorbs light energy.")
JUNK = "xq zzv 88 ## lorem ;; kjh@@ %% 0x0 ..,, qqq wmw 17 17 17 ~~ bzzt"


@pytest.fixture(scope="module")
def engine():
    e = LlamaCppEngine(n_threads=1)
    yield e
    e.close()


def test_llamacpp_logprobs_are_the_greedy_tokens_and_change_nothing(engine):
    """Top logprobs come from the logits the greedy token was picked from: the token
    is the top alternative, its logprob is that entry, and asking for them leaves the
    text unchanged (the decode is not touched)."""
    msgs = [{"role": "user", "content": "Name a colour."}]
    plain, with_lp = engine.generate([Request(messages=msgs, max_tokens=6),
                                      Request(messages=msgs, max_tokens=6, logprobs=5)])
    comp = with_lp.completions[0]
    assert comp.text == plain.completions[0].text and plain.completions[0].top_logprobs is None
    assert len(comp.top_logprobs) == comp.tokens >= 1
    assert "".join(p["token"] for p in comp.top_logprobs) == comp.text
    for pos in comp.top_logprobs:
        top = pos["top"]
        assert len(top) <= 5 and max(top, key=top.get) == pos["token"]
        assert top[pos["token"]] == pytest.approx(pos["logprob"])
        assert list(top.values()) == sorted(top.values(), reverse=True)
        assert 0 < sum(math.exp(v) for v in top.values()) <= 1 + 1e-6


def test_cache_keys_unchanged_and_logprobs_round_trip():
    """Old requests hash as before the field existed; the new field, when set, is in
    the key; cached responses bring their logprobs back."""
    req = Request(prompt="hi", max_tokens=3)
    old_payload = {"engine": {"kind": "x"}, "messages": None, "prompt": "hi", "max_tokens": 3,
                   "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0,
                   "stop": [], "seed": 0, "n": 1, "json_schema": None}
    old = hashlib.sha256(json.dumps(old_payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert request_key({"kind": "x"}, req) == old
    assert request_key({"kind": "x"}, Request(prompt="hi", max_tokens=3, logprobs=5)) != old
    top = [{"token": "Yes", "logprob": -0.1, "top": {"Yes": -0.1, "No": -2.4}}]
    resp = Response([Completion("Yes", "length", 1, top_logprobs=top)], prompt_tokens=4)
    assert Response.from_json(resp.to_json()).completions[0].top_logprobs == top
    legacy = json.dumps({"completions": [{"text": "x", "finish_reason": "stop", "tokens": 1}],
                         "prompt_tokens": 1, "error": None})
    assert Response.from_json(legacy).completions[0].top_logprobs is None


def _judge_run(tmp_path, name, docs, **judge):
    recipe = Recipe.from_dict({"name": name, "engine": {"type": "llamacpp", "model": "smollm2-135m",
                                                         "n_threads": 1},
                               "stages": [{"type": "items", "items": docs},
                                          {"type": "judge", "rubric": "fineweb-edu", "column": "edu", **judge}]})
    return sf.run(recipe, out=tmp_path / name), recipe


def test_criteria_method_on_the_real_model_balances_reverse_keyed_questions(tmp_path, engine):
    """The decomposed FineWeb-Edu rubric: each criterion's P(yes) from the engine's
    top logprobs, normalised over yes/no variants. The score gives a point per
    P(yes) of the three FineWeb-Edu criteria and per P(no) of the four reverse-keyed
    ones, each half weighing equally (range 0-3), recomputed here by hand."""
    run, recipe = _judge_run(tmp_path, "crit", [EDU, JUNK], method="criteria")
    rows = {r["text"]: r for r in run.data().to_pylist()}
    stage = recipe.stages[1]
    assert isinstance(stage, Judge)
    rubric = load_rubric("fineweb-edu")
    assert sum(c.reverse for c in rubric.criteria.values()) == 4 and len(rubric.criteria) == 7
    for text, row in rows.items():
        points: dict[bool, list[float]] = {False: [], True: []}
        for name, crit in rubric.criteria.items():
            view = {"text": text, "max_chars": rubric.criteria_max_chars, "question": crit.question, "id": "x"}
            _, (req,), _, _ = stage.build_requests([view], _Ctx(), rubric.criteria_template)
            assert req.logprobs == 20 and req.max_tokens == 4
            (resp,) = engine.generate([req])
            first = next(p["top"] for p in resp.completions[0].top_logprobs
                         if any(_word(k) in ("yes", "no") for k in p["top"]))
            py = sum(math.exp(v) for k, v in first.items() if _word(k) == "yes")
            pn = sum(math.exp(v) for k, v in first.items() if _word(k) == "no")
            assert row[f"edu_{name}"] == pytest.approx(py / (py + pn), rel=1e-9)  # P(yes) as asked
            points[crit.reverse].append((pn if crit.reverse else py) / (py + pn))
        balanced = 3 * (sum(points[False]) / 3 + sum(points[True]) / 4) / 2
        assert row["edu"] == pytest.approx(balanced, rel=1e-9) and 0 <= row["edu"] <= 3
        assert 0 <= row["edu_entropy"] <= 1
    # No ordering of EDU and JUNK here: on the 135M model their scores differ in the fourth
    # decimal, so which one wins is a matter of the build's rounding. How well the judge
    # separates text is measured on labelled data (benchmarks/judge_quality.py); the exact
    # scores are pinned on purpose in tests/golden/ (test_golden.py).
    assert rows[EDU]["edu"] != rows[JUNK]["edu"]
    manifest = run.manifest
    judge = next(s for s in manifest["stages"] if s["name"] == "judge")
    assert judge["parsed_without_logprobs"] == 0
    assert judge["summary"]["method"] == "criteria" and judge["summary"]["scored"] == 2


def _word(token: str) -> str:
    return token.strip().strip(".,:;!\"'*").lower()


class _Ctx:
    """Only what `build_requests` reads from a stage context."""

    seed = 0


def test_expected_method_is_the_probability_weighted_score(tmp_path, engine):
    """G-Eval: at the score token (JSON-constrained here), sum of s * P(s) over the
    allowed scores 0-5, normalised; the entropy of that distribution is kept."""
    run, recipe = _judge_run(tmp_path, "exp", [EDU, JUNK], method="expected", structured=True,
                             justify=False, max_tokens=8, max_chars=300)
    row, junk = run.data().to_pylist()
    assert row["text"] == EDU and row["edu"] != junk["edu"]  # no ordering: see the criteria test
    stage = recipe.stages[1]
    rubric = load_rubric("fineweb-edu")
    view = {"text": EDU, "max_chars": 300, "id": "x"}
    _, (req,), _, _ = stage.build_requests([view], _Ctx(), rubric.aspects["educational_value"])
    (resp,) = engine.generate([req])
    comp = resp.completions[0]
    assert json.loads(comp.text)["score"] in range(6)
    k = next(i for i, p in enumerate(comp.top_logprobs) if p["token"].strip().isdigit())
    probs = {int(t.strip()): math.exp(v) for t, v in comp.top_logprobs[k]["top"].items()
             if t.strip() in {"0", "1", "2", "3", "4", "5"}}
    z = sum(probs.values())
    assert row["edu"] == pytest.approx(sum(s * p / z for s, p in probs.items()), rel=1e-9)
    assert row["edu_entropy"] == pytest.approx(-sum(p / z * math.log2(p / z) for p in probs.values()), rel=1e-9)
    assert row["edu"] != round(row["edu"])  # a real distribution, not one generated number


def test_score_position_follows_the_pattern_and_yes_no_variants():
    """Hard cases: the score after a justification that contains other digits; yes/no
    in any case with or without a space, after a leading newline token."""
    toks = ["It", " has", " 2", " parts", ".", " Score", ":", " 4"]
    tops = [{t: -0.1} for t in toks]
    tops[2] = {" 2": -0.1, " 5": -3.0}
    tops[7] = {" 4": math.log(0.5), "3": math.log(0.25), " 3": math.log(0.125), " x": math.log(0.125)}
    comp = Completion("".join(toks), "stop", len(toks),
                      top_logprobs=[{"token": t, "logprob": -0.1, "top": top} for t, top in zip(toks, tops)])
    dist = score_distribution(comp, 0, 5, load_rubric("fineweb-edu").score_pattern)
    assert dist == pytest.approx({3: 0.375 / 0.875, 4: 0.5 / 0.875})
    pos = [{"token": "\n", "logprob": -0.2, "top": {"\n": -0.2, "The": -1.0}},
           {"token": "Yes", "logprob": -0.5, "top": {"Yes": math.log(0.3), " yes": math.log(0.1),
                                                      "NO": math.log(0.05), " No.": math.log(0.15)}}]
    assert answer_yes_probability(pos) == pytest.approx(0.4 / 0.6)
    assert answer_yes_probability(pos[:1]) is None


def test_openai_engine_reads_logprobs_from_llama_cpp_server(llama_server, tmp_path):
    """llama_cpp.server returns logprobs on /v1/completions and on chat: the engine
    turns both into top_logprobs, and a criteria judge scores through them."""
    eng = OpenAIEngine(base_url=llama_server + "/v1", model="smollm2", max_retries=0)
    try:
        raw, chat = eng.generate([
            Request(prompt="The capital of France is", max_tokens=2, logprobs=5),
            Request(messages=[{"role": "user", "content": "Name a colour."}], max_tokens=2, logprobs=5)])
    finally:
        eng.close()
    for resp in (raw, chat):
        assert resp.error is None, resp.error
        comp = resp.completions[0]
        assert comp.top_logprobs and len(comp.top_logprobs) <= 2
        first = comp.top_logprobs[0]
        assert first["token"].strip() and comp.text.lstrip().startswith(first["token"].strip())
        assert 1 <= len(first["top"]) <= 5 and all(v <= 0 for v in first["top"].values())
    recipe = Recipe.from_dict({"name": "oa", "stages": [
        {"type": "items", "items": [EDU[:120]]},
        {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "method": "criteria", "max_chars": 120,
         "engine": {"type": "openai", "base_url": llama_server + "/v1", "model": "smollm2"}}]})
    run = sf.run(recipe, out=tmp_path / "oa")
    (row,) = run.data().to_pylist()
    assert 0 < row["edu"] < 5 and row["edu"] != round(row["edu"])
    judge = next(s for s in run.manifest["stages"] if s["name"] == "judge")
    assert judge["parsed_without_logprobs"] == 0 and "note" not in judge["summary"]


def test_without_logprobs_the_judge_parses_text_and_says_so(tmp_path):
    """A server that ignores `logprobs` (the canned server): yes/no answers are parsed
    (1 / 0 per criterion), counted in the manifest, with a note in the summary."""
    def answer(body: dict) -> str:
        assert body["logprobs"] is True and body["top_logprobs"] == 20
        text = user_text(body)
        return "Yes." if "Photosynthesis" in text and "basic information" in text else "no"

    with canned_server(answer) as server:
        run = sf.run(Recipe.from_dict({"name": "fb", "stages": [
            {"type": "items", "items": [EDU, JUNK]},
            {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "method": "criteria",
             "engine": {"type": "openai", "base_url": server.url, "model": "m", "max_retries": 0}}]}),
            out=tmp_path / "fb")
    assert len(server.seen) == 14  # 2 records x 7 criteria
    rows = {r["text"]: r for r in run.data().to_pylist()}
    # every answer "no" but one "yes": the reverse-keyed four earn their points
    assert rows[EDU]["edu_basic_information"] == 1.0 and rows[EDU]["edu_legal_text"] == 0.0
    assert rows[EDU]["edu"] == 3 * (1 / 3 + 1) / 2 and rows[JUNK]["edu"] == 3 * (0 + 1) / 2
    judge = next(s for s in run.manifest["stages"] if s["name"] == "judge")
    assert judge["parsed_without_logprobs"] == 2
    assert judge["summary"]["note"].startswith("2 record(s) scored from the answer's text")


def test_pairwise_tie_logic_on_the_real_model(engine):
    """Both orders on real calls: identical texts give the same P("A") in both orders,
    so a is preferred once and b once: a tie. A distinct pair's winner is the one both
    orders agree on, from the two swapped prompts."""
    same = {"prompt": "Explain photosynthesis.", "a": EDU, "b": EDU}
    diff = {"prompt": "Explain photosynthesis.", "a": EDU, "b": JUNK}
    reqs = pair_requests([same, diff])
    assert len(reqs) == 4 and reqs[0].messages == reqs[1].messages  # identical pair: same prompt
    assert reqs[2].messages[0]["content"].index(EDU) < reqs[2].messages[0]["content"].index(JUNK)
    assert reqs[3].messages[0]["content"].index(JUNK) < reqs[3].messages[0]["content"].index(EDU)
    v_same, v_diff = judge_pairs(engine, [same, diff])
    assert v_same.error is None and v_same.p_a[0] == pytest.approx(1 - v_same.p_a[1])
    assert v_same.p_a[0] != 0.5 and v_same.winner == "tie"
    assert v_diff.winner == decide(*v_diff.p_a)
    # the probabilities are the engine's: recompute order 2 (a shown as "B") by hand
    (r2,) = engine.generate([reqs[3]])
    top = next(p["top"] for p in r2.completions[0].top_logprobs
               if any(k.strip().upper() in ("A", "B") for k in p["top"]))
    pa = sum(math.exp(v) for k, v in top.items() if k.strip().upper() == "A")
    pb = sum(math.exp(v) for k, v in top.items() if k.strip().upper() == "B")
    assert v_diff.p_a[1] == pytest.approx(pb / (pa + pb), rel=1e-9)


def test_decide_needs_both_orders():
    assert decide(0.9, 0.6) == "a" and decide(0.2, 0.4) == "b"
    assert decide(0.9, 0.1) == "tie" and decide(0.5, 0.9) == "tie"


def test_pairwise_stage_through_a_recipe(tmp_path):
    """The stage on two columns with a canned judge that always says "A" (pure
    position bias): every pair is a tie, asked twice with the texts swapped."""
    with canned_server(lambda body: "A") as server:
        run = sf.run(Recipe.from_dict({"name": "pw", "stages": [
            {"type": "items", "items": [{"q": "Explain tides.", "x": "The moon pulls the sea.", "y": "no"}]},
            {"type": "pairwise_judge", "a": "x", "b": "y", "prompt": "q",
             "engine": {"type": "openai", "base_url": server.url, "model": "m", "max_retries": 0}}]}),
            out=tmp_path / "pw")
    texts = [user_text(s.body) for s in server.seen]
    assert len(texts) == 2 and texts[0].index("The moon") < texts[0].index("Response B")
    assert texts[1].index("The moon") > texts[1].index("Response B")
    (row,) = run.data().to_pylist()
    assert row["preference"] == "tie" and row["preference_p_a"] == 0.5
    stage = next(s for s in run.manifest["stages"] if s["name"] == "pairwise_judge")
    assert stage["summary"]["winners"] == {"tie": 1}
    # "A" in both orders: the first-shown response always won (too few pairs to flag)
    assert stage["summary"]["judge_check"]["position_bias"] == {"pairs": 1, "order_agreement": 0.0,
                                                                "first_shown_wins": 1.0}


# ------------------------------------------------------------------ panels

def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rnd = random.Random(7)
    for _ in range(20):
        n = rnd.randint(3, 30)
        x = [rnd.choice([0, 1, 2, 2.5, 3]) for _ in range(n)]
        y = [rnd.random() if rnd.random() < 0.7 else 1.0 for _ in range(n)]
        ref = spearmanr(x, y).statistic
        got = spearman(x, y)
        if math.isnan(ref):
            assert got is None
        else:
            assert got == pytest.approx(ref, abs=1e-12)


def test_krippendorff_alpha_interval_on_the_published_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4-coder
    x 12-unit example with missing values: alpha (interval) = 0.849."""
    n = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
              [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [list(u) for u in zip(*coders)]
    assert round(krippendorff_alpha_interval(units), 3) == 0.849
    assert krippendorff_alpha_interval([[1, 1], [2, 2], [3, 3]]) == 1.0
    assert krippendorff_alpha_interval([[1, None], [2, None]]) is None


def test_panel_of_two_engines_reports_agreement_in_the_manifest(tmp_path):
    """Two judges (canned scores) on four records: per-engine scores kept in
    `<column>_judges`; the stage summary has their Spearman and alpha, equal to
    scipy's and to the reference alpha computation."""
    from scipy.stats import spearmanr

    docs = ["alpha text", "beta text", "gamma text", "delta text"]
    table = {"judge-a": [1, 2, 3, 4], "judge-b": [2, 1, 4, 5]}

    def answer(body: dict) -> str:
        k = next(i for i, d in enumerate(docs) if d in user_text(body))
        return f"Educational score: {table[body['model']][k]}"

    with canned_server(answer) as server:
        run = sf.run(Recipe.from_dict({"name": "panel", "stages": [
            {"type": "items", "items": docs},
            {"type": "judge", "rubric": "fineweb-edu", "column": "edu", "max_tokens": 8,
             "engine": [{"type": "openai", "base_url": server.url, "model": m, "max_retries": 0}
                        for m in table]}]}), out=tmp_path / "panel")
    rows = run.data().to_pylist()
    assert [r["edu_judges"] for r in rows] == [[a, b] for a, b in zip(*table.values())]
    summary = next(s for s in run.manifest["stages"] if s["name"] == "judge")["summary"]
    agree = summary["agreement"]
    assert agree["spearman"]["judge-a ~ judge-b"] == pytest.approx(spearmanr(*table.values()).statistic, abs=1e-4)
    assert agree["krippendorff_alpha_interval"] == pytest.approx(
        krippendorff_alpha_interval([list(p) for p in zip(*table.values())]), abs=1e-4)
    assert panel_agreement([[1, 2], [2, 1]], ["x", "y"])["spearman"]["x ~ y"] == -1.0


def test_criteria_score_sums_without_reverse_keys_and_balances_with_them():
    from smolforge.stages.judges.judge import Rubric

    plain = Rubric(aspects={"x": "{{ text }}"}, criteria={"a": "A?", "b": "B?"})
    assert plain.criteria_score({"a": 0.9, "b": 0.4}) == pytest.approx(1.3)
    mixed = Rubric(aspects={"x": "{{ text }}"}, criteria={
        "a": "A?", "b": "B?", "c": {"question": "C?", "reverse": True}})
    # two points that a yes earns, one that a no earns: each half weighs one
    assert mixed.criteria_score({"a": 0.9, "b": 0.4, "c": 0.2}) == pytest.approx(2 * ((0.9 + 0.4) / 2 + 0.8) / 2)
    # a judge that says yes to everything about a text gains nothing from it
    assert mixed.criteria_score({"a": 1, "b": 1, "c": 1}) == mixed.criteria_score({"a": 0, "b": 0, "c": 0}) == 1.0
    with pytest.raises(ValueError, match="revers"):
        Rubric(aspects={"x": "y"}, criteria={"c": {"question": "C?", "reversed": True}})
