"""Preference stages: `pairs` rules (margins, ties, best-vs-worst, all pairs, the
seeded random rejected, a reason for every dropped prompt), the judge's shuffled
presentation order and its answer parsing, multi-teacher tagging on the bundled
model and on a real llama.cpp server, and the reward-model protocol against a
real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import itertools
import json
import random
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml

import smolforge as sf
from smolforge.context import EnginePool, StageContext
from smolforge.engines.reward import reward_value
from smolforge.stages.preferences import (
    Candidates,
    Pairs,
    Rate,
    make_pairs,
    parse_listwise,
    presentation_order,
)
from smolforge.stats import value_counts as histogram

PATTERN = r"(?:rating|score)\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)"


def cands(scores, teachers=None):
    teachers = teachers or [f"t{k % 2}" for k in range(len(scores))]
    return [{"text": f"answer {k}", "teacher": t, "engine": "llamacpp", "model": "m", "score": s,
             "ratings": {"helpfulness": s}, "rate_error": None if s is not None else "no helpfulness rating"}
            for k, (s, t) in enumerate(zip(scores, teachers))]


# ------------------------------------------------------------------ make_pairs


def test_random_lower_is_best_vs_a_seeded_random_strictly_lower_one():
    scores = [3.0, 5.0, 1.0, 4.0, 5.0 - 1e-9]
    seen = Counter()
    for seed in range(200):
        pairs, why, _ = make_pairs(scores, "random_lower", 0.0, random.Random(seed))
        assert why is None and len(pairs) == 1
        c, r = pairs[0]
        assert c == 1 and scores[r] < scores[c]
        seen[r] += 1
        # the same seed gives the same pair
        assert make_pairs(scores, "random_lower", 0.0, random.Random(seed))[0] == pairs
    assert set(seen) == {0, 2, 3, 4}, "every lower candidate can be the rejected one"
    assert min(seen.values()) > 20  # roughly uniform, not always the worst


def test_min_margin_limits_the_rejected_and_drops_with_reason():
    scores = [4.0, 3.75, 3.0]
    for seed in range(50):
        pairs, why, _ = make_pairs(scores, "random_lower", 0.5, random.Random(seed))
        assert pairs == [(0, 2)]
    pairs, why, _ = make_pairs([4.0, 3.75, 3.75], "random_lower", 0.5, random.Random(0))
    assert pairs == [] and why.startswith("margin:") and "3.75" in why and "0.5" in why
    pairs, why, _ = make_pairs([4.0, 3.75], "best_worst", 0.5, random.Random(0))
    assert pairs == [] and why == "margin: best 4 - worst 3.75 = 0.25 < min_margin 0.5"


def test_ties_and_unrated_are_dropped_with_reason():
    assert make_pairs([3.0, 3.0, 3.0], "random_lower", 0, random.Random(0))[1] == "tie: all 3 rated candidates scored 3"
    assert make_pairs([3.0, 3.0], "all_pairs", 0, random.Random(0))[1].startswith("tie")
    assert make_pairs([3.0, None, None], "random_lower", 0, random.Random(0))[1] == \
        "1 rated candidate(s), need 2 (2 unrated)"
    # unrated candidates never take part
    pairs, _, _ = make_pairs([None, 2.0, 4.0], "best_worst", 0, random.Random(0))
    assert pairs == [(2, 1)]


def test_equal_best_is_a_seeded_pick_and_never_paired_with_its_twin():
    picks = Counter()
    for seed in range(100):
        (c, r), = make_pairs([5.0, 2.0, 5.0], "random_lower", 0, random.Random(seed))[0]
        assert r == 1
        picks[c] += 1
    assert set(picks) == {0, 2}


def test_best_worst_and_all_pairs():
    scores = [2.0, 4.5, 1.0, 4.5, 3.0]
    (c, r), = make_pairs(scores, "best_worst", 0, random.Random(1))[0]
    assert scores[c] == 4.5 and r == 2
    pairs, why, counts = make_pairs(scores, "all_pairs", 0, random.Random(1))
    expected = {(a, b) for a, b in itertools.permutations(range(5), 2) if scores[a] > scores[b]}
    assert set(pairs) == expected and len(pairs) == 9
    assert counts["equal_pairs_skipped"] == 1  # 1 and 3 tie
    assert [scores[a] - scores[b] for a, b in pairs] == sorted((scores[a] - scores[b] for a, b in pairs), reverse=True)
    pairs, _, _ = make_pairs(scores, "all_pairs", 1.5, random.Random(1))
    assert set(pairs) == {(a, b) for a, b in expected if scores[a] - scores[b] >= 1.5}
    capped, _, _ = make_pairs(scores, "all_pairs", 0, random.Random(1), max_pairs=3)
    assert len(capped) == 3 and set(capped) <= expected


def test_histogram():
    assert histogram([2.25, 2.25, 4.0]) == {"2.25": 2, "4": 1}
    h = histogram([0.1, 0.13, 0.9, -0.5])
    assert sum(h.values()) == 4 and len(h) >= 2


# ------------------------------------------------------------------ the pairs stage in a real run


def test_pairs_stage_in_a_run_counts_reasons_and_summary(tmp_path):
    items = [
        {"prompt": "a", "candidates": cands([5.0, 1.0, 3.0], ["big", "small", "small"])},
        {"prompt": "b", "candidates": cands([2.0, 2.0], ["big", "small"])},                 # tie
        {"prompt": "c", "candidates": cands([4.0, 3.75], ["big", "small"])},                # margin
        {"prompt": "d", "candidates": cands([4.0, None, None], ["big", "small", "small"])},  # unrated
        {"prompt": "e", "candidates": cands([1.0, 4.5], ["big", "small"])},
    ]
    recipe = {"name": "p", "seed": 3, "shard_size": 2,
              "stages": [{"type": "items", "items": items}, {"type": "pairs", "min_margin": 0.5}]}
    run = sf.run(recipe, tmp_path / "run")
    rows = run.data().to_pylist()
    assert [r["prompt"] for r in rows] == ["a", "e"]
    a, e = rows
    assert (a["chosen"], a["chosen_score"], a["chosen_teacher"]) == ("answer 0", 5.0, "big")
    assert a["rejected"] in ("answer 1", "answer 2") and a["margin"] == a["chosen_score"] - a["rejected_score"]
    assert (e["chosen_teacher"], e["rejected_teacher"]) == ("small", "big")
    assert "candidates" not in run.data().column_names
    reasons = {json.loads(r["record"])["prompt"]: r["reason"] for r in run.rejects().to_pylist()}
    assert reasons["b"] == "tie: all 2 rated candidates scored 2"
    assert reasons["c"].startswith("margin: best 4, next 3.75")
    assert reasons["d"].startswith("1 rated candidate(s), need 2 (2 unrated)") and "no helpfulness rating" in reasons["d"]
    st = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"][-1]
    assert (st["pairs"], st["prompts_paired"], st["dropped_tie"], st["dropped_margin"], st["dropped_unrated"]) == \
        (2, 2, 1, 1, 1)
    s = st["summary"]
    assert s["pairs"] == 2 and s["chosen_score_hist"] == {"4.5": 1, "5": 1}
    assert sum(s["rejected_score_hist"].values()) == 2
    assert s["teacher_wins"]["big"] == {"chosen": 1, "rejected": 1, "win_rate": 0.5}
    # show, report and card describe the pairs by chosen and rejected, not by a `text` column
    from smolforge.report.profiling import profile
    from smolforge.report.stats import summarize

    prof = profile(run.path, tokenizer="approx")
    assert prof["column"] == "chosen" and list(prof["columns"]) == ["chosen", "rejected"]
    for col in ("chosen", "rejected"):
        texts = [r[col] for r in rows]
        assert prof["columns"][col]["lengths"]["n"] == 2
        assert prof["columns"][col]["lengths"]["max"] == max(-(-len(t) // 4) for t in texts)
    assert summarize(run.path)["text_columns"]["rejected"]["texts"] == 2
    # seeded: a second run picks the same rejected candidates
    again = sf.run(recipe, tmp_path / "run2").data().column("rejected").to_pylist()
    assert again == [r["rejected"] for r in rows]


def test_pairs_options_validate():
    with pytest.raises(ValueError):
        Pairs.model_validate({"type": "pairs", "strategy": "best_of"})
    with pytest.raises(ValueError, match="needs `reward"):
        Rate.model_validate({"type": "rate", "method": "reward"})


# ------------------------------------------------------------------ presentation and parsing


def test_presentation_order_is_seeded_and_shuffled():
    orders = {(rid, a): presentation_order(7, "rate", rid, a, 4)
              for rid in ("r1", "r2", "r3") for a in ("honesty", "helpfulness")}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 1, "every record and aspect got the same order"
    assert orders == {(rid, a): presentation_order(7, "rate", rid, a, 4) for rid, a in orders}
    assert presentation_order(8, "rate", "r1", "honesty", 4) != orders[("r1", "honesty")] or \
        presentation_order(9, "rate", "r1", "honesty", 4) != orders[("r1", "honesty")]
    assert presentation_order(7, "rate", "r1", "honesty", 4, shuffle=False) == [0, 1, 2, 3]
    # over many records, every candidate is shown first about equally often
    firsts = Counter(presentation_order(1, "rate", f"r{i}", "honesty", 4)[0] for i in range(400))
    assert set(firsts) == {0, 1, 2, 3} and min(firsts.values()) > 60


def test_parse_listwise():
    text = "Text 1: Rating: 4. Clear.\nText 2: Rating: 2 - vague\n**Text 3**\nRating: 5\nText 4: Rating: 9"
    assert parse_listwise(text, 4, PATTERN, 1, 5) == [4.0, 2.0, 5.0, None]  # 9 is out of range
    assert parse_listwise("Rating: 3\nRating: 1", 2, PATTERN, 1, 5) == [3.0, 1.0]
    assert parse_listwise("Rating: 3", 2, PATTERN, 1, 5) == [None, None]  # unlabelled and too few
    assert parse_listwise("Text 2: 4\nText 1: 5", 2, PATTERN, 1, 5) == [5.0, 4.0]
    assert parse_listwise('{"text_1": 2, "text_2": 5}', 2, PATTERN, 1, 5, structured=True) == [2.0, 5.0]
    assert parse_listwise('{"text_1": 2}', 2, PATTERN, 1, 5, structured=True) == [2.0, None]
    assert reward_value(0.5) == 0.5 and reward_value([[0.1], [0.2], [-1.5]]) == -1.5 and reward_value([3]) == 3.0
    with pytest.raises(ValueError):
        reward_value([])


def _ctx(tmp_path: Path, name: str, seed: int = 5) -> StageContext:
    return StageContext(recipe_name="t", recipe_dir=tmp_path, seed=seed, stage_name=name, pool=EnginePool(),
                        default_engine={"type": "llamacpp", "model": "smollm2-135m"}, cache=None)


def _record_requests(ctx) -> list:
    """The requests `ctx` sends from now on, captured on their way to the real engine."""
    sent: list = []
    real = ctx.generate

    def spy(engine, requests):
        sent.extend(requests)
        return real(engine, requests)

    ctx.generate = spy  # type: ignore[method-assign]
    return sent


@pytest.mark.slow
def test_rate_shows_candidates_in_the_recorded_shuffled_order(tmp_path):
    """The real bundled model judges; the prompts it got are captured on the way."""
    ctx = _ctx(tmp_path, "rate")
    sent = _record_requests(ctx)
    texts = ["Paris is the capital.", "I like turtles.", "It is Lyon.", "France's capital: Paris."]
    rec = {"id": "q1", "prompt": "What is the capital of France?", "meta": {},
           "candidates": [{"text": t, "teacher": "x", "model": "m", "engine": "llamacpp"} for t in texts]}
    stage = Rate.model_validate({"type": "rate", "aspects": ["helpfulness", "honesty"], "max_tokens": 48})
    res = stage.process([rec], ctx)
    ctx.pool.close()
    assert len(res.kept) == 1 and len(sent) == 2
    meta = res.kept[0]["meta"]["rate"]
    for req, aspect in zip(sent, ["helpfulness", "honesty"]):
        order = meta["order"][aspect]
        assert order == presentation_order(5, "rate", "q1", aspect, 4)
        prompt = req.messages[0]["content"]
        shown = [prompt.index(f"<text {p + 1}>\n{texts[k]}\n</text {p + 1}>") for p, k in enumerate(order)]
        assert shown == sorted(shown)
        assert req.json_schema["required"] == ["text_1", "text_2", "text_3", "text_4"]
        assert "is it correct, clear, relevant" in prompt if aspect == "helpfulness" else "uncertainty" in prompt
    for c in res.kept[0]["candidates"]:  # structured: every text got both ratings
        assert set(c["ratings"]) == {"helpfulness", "honesty"} and c["rate_error"] is None
        assert c["score"] == sum(c["ratings"].values()) / 2 and 1 <= c["score"] <= 5
    assert res.counts["candidates_rated"] == 4


# ------------------------------------------------------------------ multi-teacher candidates


@pytest.mark.slow
def test_candidates_from_two_sampling_configs_are_tagged(tmp_path):
    recipe = {"name": "c", "seed": 11, "shard_size": 2, "engine": {"type": "llamacpp", "model": "smollm2-135m"},
              "stages": [{"type": "items", "items": [{"q": "Name a fruit."}, {"q": "Name a tree."}]},
                         {"type": "candidates", "template": "{{ q }}", "system": "Be brief.", "max_tokens": 8,
                          "teachers": [{"name": "greedy", "temperature": 0, "n": 1},
                                       {"name": "hot", "temperature": 1.2, "top_p": 0.9, "n": 2}]}]}
    run = sf.run(recipe, tmp_path / "run")
    rows = run.data().to_pylist()
    assert len(rows) == 2
    for r in rows:
        assert r["prompt"] == r["q"] and r["system"] == "Be brief."
        tags = [(c["teacher"], c["engine"], c["model"]) for c in r["candidates"]]
        assert Counter(t[0] for t in tags) == {"greedy": 1, "hot": 2}
        assert {t[1:] for t in tags} == {("llamacpp", "smollm2-135m")}
        for c in r["candidates"]:
            s = c["sampling"]
            assert (s["temperature"], s["n"]) == ((0.0, 1) if c["teacher"] == "greedy" else (1.2, 2))
            assert s["max_tokens"] == 8 and (s["top_p"] == 0.9) == (c["teacher"] == "hot")
            assert (s["seed"] == 0) == (c["teacher"] == "greedy") and c["text"]
    st = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"][1]
    assert st["candidates"] == 6 and st["summary"]["candidates_per_teacher"] == {"greedy": 2, "hot": 4}


def test_candidates_bundled_and_server_teachers(tmp_path, llama_server):
    recipe = {"name": "c2", "seed": 2, "shard_size": 4, "engine": {"type": "llamacpp", "model": "smollm2-135m"},
              "stages": [{"type": "items", "items": [{"q": "Say hi."}]},
                         {"type": "candidates", "template": "{{ q }}", "max_tokens": 6, "temperature": 0, "n": 1,
                          "teachers": [{}, {"name": "server", "engine": {
                              "type": "openai", "base_url": llama_server, "model": "smollm2"}}]}]}
    rec = sf.run(recipe, tmp_path / "run").data().to_pylist()[0]
    tags = sorted((c["teacher"], c["engine"], c["model"]) for c in rec["candidates"])
    assert tags == [("server", "openai", "smollm2"), ("smollm2-135m", "llamacpp", "smollm2-135m")]


def test_candidates_config_errors():
    with pytest.raises(ValueError, match="give each teacher"):
        Candidates.model_validate({"type": "candidates", "template": "x", "engine": ["llamacpp", "llamacpp"],
                                   "teachers": [{"n": 1}]})


# ------------------------------------------------------------------ reward model over HTTP


class PoolingHandler(http.server.BaseHTTPRequestHandler):
    """vLLM's `/pooling` schema (vllm/entrypoints/openai/protocol.py: PoolingResponse).
    vLLM itself needs a GPU build, so this real HTTP server scores with a planted
    rule: reward = words in the answer that the prompt asked for, per token."""

    seen: list = []
    fail: set = set()

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        answer = body["messages"][-1]["content"]
        if answer in type(self).fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        reward = float(answer.count("good")) - 0.1 * len(answer.split())
        data = [[0.0], [reward]] if "token" in answer else [reward]  # per-token or one score
        out = json.dumps({"id": "pool-1", "object": "list", "created": 0, "model": body["model"],
                          "data": [{"index": 0, "object": "pooling", "data": data}],
                          "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def pooling_server():
    PoolingHandler.seen, PoolingHandler.fail = [], set()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PoolingHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_reward_model_over_pooling_api(tmp_path, pooling_server):
    items = [{"prompt": "Be good.", "system": "sys", "candidates": [
        {"text": "good good", "teacher": "a"}, {"text": "bad", "teacher": "b"}, {"text": "good token", "teacher": "a"}]},
        {"prompt": "Again.", "candidates": [{"text": "x y z", "teacher": "a"}, {"text": "boom", "teacher": "b"}]}]
    PoolingHandler.fail = {"boom"}
    PoolingHandler.seen.clear()  # requests arrive concurrently: nothing below relies on their order
    recipe = {"name": "rw", "seed": 1, "shard_size": 4, "stages": [
        {"type": "items", "items": items},
        {"type": "rate", "method": "reward", "reward": {"url": pooling_server, "model": "rm", "retries": 1}},
        {"type": "pairs", "strategy": "best_worst"}]}
    with pytest.raises(sf.EngineFailures, match="1 record.s. failed for engine reasons") as e:
        sf.run(recipe, tmp_path / "run")  # the API does not return normally from an incomplete run
    first = e.value.run
    assert first.manifest["status"] == "incomplete"
    reasons = [r["reason"] for r in first.rejects().to_pylist() if r["stage"] == "rate"]
    assert len(reasons) == 1 and reasons[0].startswith("engine error: engine error (reward): HTTP 500")
    assert len(PoolingHandler.seen) == 5 + 1  # 5 answers, "boom" retried once
    PoolingHandler.fail = set()
    n_before = len(PoolingHandler.seen)
    run = sf.run(recipe, tmp_path / "run")  # the retry: only the failed answer goes out again (cache)
    assert [b["messages"][-1]["content"] for _, b in PoolingHandler.seen[n_before:]] == ["boom"]
    assert run.manifest["status"] == "done"
    path, body = next((p, b) for p, b in PoolingHandler.seen if b["messages"][-1]["content"] == "good good")
    assert path == "/pooling" and body["model"] == "rm"
    assert body["messages"][0] == {"role": "system", "content": "sys"}
    assert body["messages"][1] == {"role": "user", "content": "Be good."} and body["messages"][2]["role"] == "assistant"
    rows = {r["prompt"]: r for r in run.data().to_pylist()}
    assert (rows["Be good."]["chosen"], rows["Be good."]["rejected"]) == ("good good", "bad")
    assert rows["Be good."]["chosen_score"] == pytest.approx(2 - 0.2)
    assert rows["Again."]["chosen"] == "boom"  # -0.1 beats -0.3


@pytest.mark.slow
def test_rate_pairwise_uses_both_orders_and_win_rates(tmp_path):
    """`method: pairwise` on the bundled model through the pairwise judge's function."""
    ctx = _ctx(tmp_path, "rate")
    sent = _record_requests(ctx)
    texts = ["Water boils at 100 degrees Celsius at sea level.", "Bananas.", "It boils at 50 C."]
    rec = {"id": "q", "prompt": "At what temperature does water boil?", "meta": {},
           "candidates": [{"text": t, "teacher": "x"} for t in texts]}
    res = Rate.model_validate({"type": "rate", "method": "pairwise"}).process([rec], ctx)
    ctx.pool.close()
    assert len(sent) == 6  # 3 pairs x 2 orders
    for first, second in zip(sent[::2], sent[1::2]):
        p1, p2 = first.messages[-1]["content"], second.messages[-1]["content"]
        a1, b1 = p1.split("Response A:\n")[1].split("\n\nResponse B:\n")
        a2, b2 = p2.split("Response A:\n")[1].split("\n\nResponse B:\n")
        assert a1 == b2.split("\n\n")[0] and a2 == b1.split("\n\n")[0]  # the same pair, swapped
    out = res.kept[0]
    verdicts = out["meta"]["rate"]["verdicts"]
    assert sorted((v["a"], v["b"]) for v in verdicts) == [(0, 1), (0, 2), (1, 2)]
    judged = [v for v in verdicts if v["winner"] is not None]
    scores = [c["score"] for c in out["candidates"]]
    # a candidate's score is its share of the judged pairs won, a tie counting half
    for k, s in enumerate(scores):
        won = [{"a": 1.0, "b": 0.0, "tie": 0.5}[v["winner"]] if v["a"] == k else
               {"a": 0.0, "b": 1.0, "tie": 0.5}[v["winner"]] for v in judged if k in (v["a"], v["b"])]
        assert s == (pytest.approx(sum(won) / len(won)) if won else None)
    assert sum(s * 2 for s in scores if s is not None) == pytest.approx(len(judged)) or len(judged) < 3
    assert all(s is None or 0 <= s <= 1 for s in scores)


@pytest.mark.slow
def test_rate_single_goes_through_the_judge_stage(tmp_path):
    """`method: single`: each candidate alone through the `judge` stage (here its
    expected-score method), the per-aspect scores land on the candidate."""
    ctx = _ctx(tmp_path, "rate")
    rec = {"id": "q", "prompt": "Name a colour.", "meta": {},
           "candidates": [{"text": "Blue.", "teacher": "x"}, {"text": "A dog barks.", "teacher": "y"}]}
    stage = Rate.model_validate({"type": "rate", "method": "single", "max_tokens": 16, "judge": {"method": "expected"}})
    res = stage.process([rec], ctx)
    ctx.pool.close()
    assert len(res.kept) == 1
    aspects = {"instruction_following", "honesty", "truthfulness", "helpfulness"}
    for c in res.kept[0]["candidates"]:
        assert set(c["ratings"]) == aspects
        if c["score"] is None:
            assert c["rate_error"]
        else:
            assert 1 <= c["score"] <= 5 and c["rate_error"] is None
            assert c["score"] == pytest.approx(sum(c["ratings"].values()) / 4)


def test_pairs_never_choose_a_cut_answer_over_a_complete_one(tmp_path):
    """A candidate cut off at max_tokens (finish_reason "length") that scored best is
    passed over for the best complete one (it may still be the rejected side);
    `allow_truncated: true` restores plain score order."""
    def cut_cands(scores, cut):
        return [{**c, "finish_reason": "length" if k in cut else "stop"} for k, c in enumerate(cands(scores))]

    items = [{"prompt": "a", "candidates": cut_cands([5.0, 3.0, 1.0], cut={0})},   # best is cut
             {"prompt": "b", "candidates": cut_cands([5.0, 1.0], cut={0})},        # complete is the worst
             {"prompt": "c", "candidates": cut_cands([4.0, 2.0], cut={0, 1})}]      # all cut: by score
    for strategy in ("random_lower", "best_worst", "all_pairs"):
        recipe = {"name": "p", "seed": 3, "stages": [{"type": "items", "items": items},
                                                     {"type": "pairs", "strategy": strategy}]}
        run = sf.run(recipe, tmp_path / strategy)
        rows = {(r["prompt"], r["chosen"], r["rejected"]) for r in run.data().to_pylist()}
        a = {(c, r) for p, c, r in rows if p == "a"}
        assert a == {("answer 1", "answer 2")}, (strategy, rows)
        assert {(c, r) for p, c, r in rows if p == "c"} == {("answer 0", "answer 1")}
        (rej,) = run.rejects().to_pylist()
        assert json.loads(rej["record"])["prompt"] == "b"
        assert rej["reason"] == ("truncated: the best-scored candidate(s) were cut at max_tokens and every "
                                 "complete one scored the lowest (1)")
        st = json.loads((tmp_path / strategy / "manifest.json").read_text())["stages"][-1]
        assert (st["cut_best_passed_over"], st["dropped_truncated"]) == (2, 1)
    recipe = {"name": "p", "seed": 3, "stages": [{"type": "items", "items": items},
                                                 {"type": "pairs", "allow_truncated": True}]}
    rows = sf.run(recipe, tmp_path / "allowed").data().to_pylist()
    assert [(r["prompt"], r["chosen"]) for r in rows] == [("a", "answer 0"), ("b", "answer 0"), ("c", "answer 0")]


def test_rate_with_three_judges_scores_their_mean(tmp_path):
    """Three judge engines (real OpenAI-compatible servers on 127.0.0.1 with planted
    answers) rate 1, 1 and 5: the score is their mean, 7/3, not a pairwise fold."""
    from faultproxy import canned_server

    ratings = [1, 1, 5]
    servers = [canned_server(lambda b, r=r: json.dumps({"text_1": r, "text_2": r})) for r in ratings]
    with servers[0] as s1, servers[1] as s2, servers[2] as s3:
        recipe = {"name": "r3", "seed": 1, "stages": [
            {"type": "items", "items": [{"prompt": "Say hi.", "candidates": [{"text": "hi"}, {"text": "hello"}]}]},
            {"type": "rate", "aspects": ["helpfulness"], "max_tokens": 32,
             "engine": [{"type": "openai", "base_url": s.url, "model": f"judge{k}"} for k, s in enumerate(
                 (s1, s2, s3))]}]}
        run = sf.run(recipe, tmp_path / "run")
    (row,) = run.data().to_pylist()
    for c in row["candidates"]:
        assert c["ratings"]["helpfulness"] == pytest.approx(7 / 3) and c["score"] == pytest.approx(7 / 3)
    meta = json.loads(row["meta"]) if isinstance(row["meta"], str) else row["meta"]
    assert meta["rate"]["engines"] == ["judge0", "judge1", "judge2"]


# ------------------------------------------------------------------ rate: criteria (each candidate alone)


@pytest.mark.slow
def test_rate_criteria_scores_each_candidate_alone_whatever_its_company(tmp_path):
    """`method: criteria` on the real bundled model: every candidate gets a score from
    the rubric's yes/no questions (plain and reverse-keyed), each question's P(yes) is
    kept in the record's meta and on the candidate, each prompt holds one candidate
    only, and one candidate text scores the same whatever the other candidates and
    their order, alone in a call or batched with others (compared within this run)."""
    from smolforge.stages.judges.judge import load_rubric

    q = "What is the capital of France?"
    good = "The capital of France is Paris."
    others = ["The capital of", "Bees make honey from nectar.", "The capital of France is Lyon."]
    recs = [{"id": "a", "prompt": q, "meta": {}, "candidates": [{"text": t, "teacher": "x"} for t in [good, *others]]},
            {"id": "b", "prompt": q, "meta": {},
             "candidates": [{"text": t, "teacher": "y"} for t in [others[2], others[1], good]]},
            {"id": "c", "prompt": q, "meta": {}, "candidates": [{"text": t, "teacher": "z"} for t in [others[0], good]]}]
    # the ultrafeedback rubric's prompt and first question, plus a reverse-keyed one
    uf = load_rubric("ultrafeedback")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "aspects": uf.aspects, "criteria_template": uf.criteria_template,
        "criteria": {"instruction_following": uf.criteria["instruction_following"].question,
                     "cut_off": {"question": "Does the response stop in the middle of a sentence?", "reverse": True}}}))
    ctx = _ctx(tmp_path, "rate")
    sent = _record_requests(ctx)
    stage = Rate.model_validate({"type": "rate", "method": "criteria", "rubric": "r.yaml"})
    together = stage.process(recs, ctx).kept
    alone = [stage.process([r], ctx).kept[0] for r in reversed(recs)][::-1]
    ctx.pool.close()
    rubric = load_rubric("r.yaml", str(tmp_path))
    texts = [good, *others]
    for req in sent:  # one candidate per prompt: nothing else to be biased by
        prompt = req.messages[0]["content"]
        assert sum(f"Response: {t}\n" in prompt for t in texts) == 1, prompt
    score_of: dict[str, set[float]] = {}
    for rec in [*together, *alone]:
        p_yes = rec["meta"]["rate"]["p_yes"]
        assert rec["meta"]["rate"]["method"] == "criteria" and len(p_yes) == len(rec["candidates"])
        for c, probs in zip(rec["candidates"], p_yes):
            assert c["score"] is not None and c["rate_error"] is None
            assert set(probs) == set(rubric.criteria) == set(c["ratings"])
            assert all(0 <= v <= 1 for v in probs.values())
            assert c["score"] == pytest.approx(rubric.criteria_score(c["ratings"]))
            score_of.setdefault(c["text"], set()).add(c["score"])
    assert set(score_of) == set(texts)
    assert all(len(s) == 1 for s in score_of.values()), score_of  # exactly one score per text


def test_rate_criteria_needs_a_rubric_with_criteria(tmp_path):
    (tmp_path / "r.yaml").write_text("aspects:\n  q: 'Rate {{ instruction }} {{ response }}. Score: <0-5>'\n")
    recipe = {"name": "c", "stages": [{"type": "items", "items": [{"prompt": "p", "candidates": []}]},
                                      {"type": "rate", "method": "criteria", "rubric": "r.yaml"}]}
    with pytest.raises(sf.RecipeError, match=r"stages\[1\]\.rubric.*no `criteria:`"):
        sf.Recipe.from_dict(recipe, base_dir=tmp_path)
    with pytest.raises(sf.RecipeError, match="judge.method 'expected' belongs to method: single"):
        sf.Recipe.from_dict({**recipe, "stages": [recipe["stages"][0], {
            "type": "rate", "method": "criteria", "judge": {"method": "expected"}}]}, base_dir=tmp_path)
    with pytest.raises(sf.RecipeError, match=r"stages\[1\]\.criteria.*has no criteria \['typo'\]"):
        sf.Recipe.from_dict({**recipe, "stages": [recipe["stages"][0], {
            "type": "rate", "method": "criteria", "criteria": ["typo"]}]}, base_dir=tmp_path)
    with pytest.raises(sf.RecipeError, match=r"has no criteria \['typo'\]"):
        sf.Recipe.from_dict({"name": "j", "stages": [{"type": "items", "items": [{"text": "x"}]}, {
            "type": "judge", "rubric": "fineweb-edu", "method": "criteria", "criteria": ["typo"]}]},
            base_dir=tmp_path)
    stage = Rate.model_validate({"type": "rate", "method": "criteria", "criteria": ["instruction_following"]})
    assert list(stage._rubric(None, tmp_path).criteria) == ["instruction_following"]
