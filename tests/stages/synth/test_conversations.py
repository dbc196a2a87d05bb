"""`conversations` on the real bundled model (SmolLM2-135M), through the real CLI:
dialogues alternate user / assistant and stop at `max_turns`; a planted bad turn
(an `assistant_max_chars` no answer can meet) is regenerated, then the dialogue is
cut with its reasons; the same seed gives the same dialogues; a run killed mid-way
and resumed gives the same data; the chat export loads with `datasets` and renders
through the bundled tokenizer's chat template; the built-in recipe runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from conftest import smolforge, write_recipe

import smolforge as sf

SYSTEM = "You are a helpful assistant."
ITEMS = [
    {"persona": "a student learning to cook", "goal": "a simple recipe for pancakes"},
    {"persona": "a retired teacher", "goal": "how to grow tomatoes on a balcony"},
    {"persona": "a nurse working nights"},  # no goal column: drawn from `goals`
]


def recipe(**conv) -> dict:
    stage = {"type": "conversations", "system": SYSTEM, "goals": ["tips to sleep better during the day"],
             "max_turns": 2, "max_tokens": 32, "user_max_tokens": 24, "temperature": 0.8,
             "drop_truncated": False, "end_marker": None, "refusal": False, "max_similarity": 1.0,
             "user_max_chars": None, "assistant_max_chars": None, "retries": 1, **conv}
    return {"name": "conv", "seed": 3, "shard_size": 1,
            "engine": {"type": "llamacpp", "model": "smollm2-135m", "n_threads": 1},
            "stages": [{"type": "items", "items": ITEMS}, stage]}


def run(tmp, name: str, data: dict, *flags: str):
    path = write_recipe(tmp / f"{name}.yaml", data)
    p = smolforge("run", str(path), "--out", str(tmp / name), "--quiet", *flags)
    assert p.returncode == 0, p.stderr
    return sf.Run(tmp / name)


def meta(rec: dict) -> dict:
    return json.loads(rec["meta"]) if isinstance(rec["meta"], str) else rec["meta"]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv")
    return tmp, run(tmp, "a", recipe())


def test_dialogues_alternate_and_stop_at_max_turns(first):
    _, r = first
    rows = r.data().to_pylist()
    assert len(rows) == 3  # no rule but `empty` is on, and no turn came out empty
    for row in rows:
        msgs = row["messages"]
        assert msgs[0] == {"role": "system", "content": SYSTEM}
        roles = [m["role"] for m in msgs[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(m["content"].strip() for m in msgs)
        knobs = meta(row)["knobs"]
        assert knobs["turns"] == len(roles) // 2 == 2 and knobs["ended"] == "max_turns"
        turns = meta(row)["conversations"]["turns"]
        assert [(t["role"], t["turn"]) for t in turns] == [("user", 1), ("assistant", 1), ("user", 2), ("assistant", 2)]
    by_id = {row["id"]: meta(row)["knobs"] for row in rows}
    assert sorted(k["goal"] for k in by_id.values()) == sorted(
        [ITEMS[0]["goal"], ITEMS[1]["goal"], "tips to sleep better during the day"])


def test_same_seed_same_dialogues(first):
    tmp, r = first
    again = run(tmp, "b", recipe())
    assert again.data().column("messages").to_pylist() == r.data().column("messages").to_pylist()
    assert [m["role"] for m in r.data().column("messages").to_pylist()[0]] == [
        m["role"] for m in again.data().column("messages").to_pylist()[0]]


def test_a_bad_turn_is_regenerated_then_the_dialogue_cut(first):
    tmp, _ = first
    r = run(tmp, "bad", recipe(assistant_max_chars=3, retries=2), "--allow-empty")
    assert r.data().num_rows == 0
    rej = r.rejects().to_pylist()
    assert len(rej) == 3
    for row in rej:
        reason = row["reason"]
        assert reason.startswith("0 exchanges < min_turns 1 (assistant turn 1: assistant turn too long:")
        assert "> 3 (retry 1)" in reason and "> 3 (retry 2)" in reason
        rec = json.loads(row["record"])
        m = rec["meta"] if isinstance(rec["meta"], dict) else json.loads(rec["meta"])
        assert m["conversations"]["regenerated"] == 2 and m["knobs"]["ended"] == "cut"
        assert rec["messages"] == [{"role": "system", "content": SYSTEM}]  # cut before any exchange
        assert [t["role"] for t in m["conversations"]["turns"]] == ["user"]  # only good turns have provenance


def test_a_killed_run_resumes_to_the_same_data(first):
    tmp, r = first
    path = write_recipe(tmp / "k.yaml", recipe())
    out = tmp / "k"
    argv = [sys.executable, "-m", "smolforge.cli", "run", str(path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    done = out / "stages" / "01-conversations" / "shard-00000.done"
    while not done.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no clean-up
    proc.communicate(timeout=60)
    assert not (out / "stages" / "01-conversations" / "_DONE").exists()
    p = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert sf.Run(out).data().to_pylist() != []
    assert sf.Run(out).data().column("messages").to_pylist() == r.data().column("messages").to_pylist()


def test_chat_export_renders_through_the_chat_template(first):
    tmp, r = first
    pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoTokenizer

    from smolforge.engines.models import resolve_model_path

    to = tmp / "chat.jsonl"
    p = smolforge("export", str(tmp / "a"), "--format", "chat", "--to", str(to))
    assert p.returncode == 0, p.stderr
    assert "messages=messages" in p.stderr
    ds = datasets.load_dataset("json", data_files=str(to), split="train")
    assert ds.column_names == ["id", "messages"] and len(ds) == 3
    assert ds["messages"] == r.data().column("messages").to_pylist()
    gguf = resolve_model_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tok.chat_template
    for msgs in ds["messages"]:
        text = tok.apply_chat_template(msgs, tokenize=False)
        assert text.count("<|im_start|>assistant") == 2 and text.count("<|im_start|>user") == 2
        pos = 0
        for m in msgs:  # every turn, in order
            pos = text.index(m["content"], pos)


@pytest.mark.slow
def test_the_builtin_recipe_runs(tmp_path):
    out = tmp_path / "run"
    p = smolforge("run", "conversations", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    r = sf.Run(out)
    kept, rejected = r.data().to_pylist(), r.rejects().to_pylist()
    assert len(kept) + len(rejected) == 4
    for row in kept:
        k = meta(row)["knobs"]
        assert 1 <= k["turns"] <= 3 and len(row["messages"]) == 1 + 2 * k["turns"]
    for row in rejected:
        assert "exchanges < min_turns" in row["reason"]


# ------------------------------------------------------------ scripted turns
# A canned OpenAI-compatible server on 127.0.0.1 (tests/faultproxy.py) plays both
# sides by a script, so that each rule and each outcome is planted exactly.

USER_LINES = ["How do I make pancakes?", "What heat should I use?", "What goes on top?"]
ANSWERS = ["Mix flour, milk and eggs.", "Use a medium pan.", "Fruit or syrup is nice."]
LONG = "This answer rambles on and on well past the limit set for an assistant turn."


def script(calls: dict, seeds: dict):
    def answer(body: dict) -> str:
        msgs = body["messages"]
        text = msgs[-1]["content"]
        if text.startswith("You are playing a person"):  # the simulated user
            who = re.search(r"Who you are: (\w+)", text).group(1)
            turn = text.count("\nAssistant: ") + 1
            if who == "impostor":
                return "How can I help you today?"
            if who == "quitter" and turn == 2:
                return "Thanks, that is all. [DONE]"
            return f"{who}: {USER_LINES[turn - 1]}"
        who = msgs[1]["content"].split(":")[0]  # the assistant: whose dialogue, which turn
        turn = sum(m["role"] == "user" for m in msgs)
        k = calls[(who, turn)] = calls.get((who, turn), 0) + 1
        seeds.setdefault((who, turn), []).append(body.get("seed"))
        if turn == 2 and (who == "broken" or (who == "flaky" and k == 1)):
            return LONG
        return ANSWERS[turn - 1]
    return answer


def test_scripted_regeneration_cut_end_marker_and_impostor(tmp_path):
    from faultproxy import canned_server

    calls: dict = {}
    seeds: dict = {}
    with canned_server(script(calls, seeds)) as server:
        data = {"name": "scripted", "seed": 5, "shard_size": 8,
                "engine": {"type": "openai", "base_url": server.url, "model": "m", "max_retries": 0},
                "stages": [{"type": "items", "items": [{"persona": p, "goal": "pancakes"} for p in
                                                       ("good", "flaky", "broken", "quitter", "impostor")]},
                           {"type": "conversations", "system": SYSTEM, "max_turns": 3, "retries": 2,
                            "assistant_max_chars": 40, "drop_truncated": False}]}
        r = run(tmp_path, "s", data)
    kept = {meta(row)["knobs"]["persona"]: row for row in r.data().to_pylist()}
    assert set(kept) == {"good", "flaky", "broken", "quitter"}
    turns = {who: meta(row)["knobs"]["turns"] for who, row in kept.items()}
    ended = {who: meta(row)["knobs"]["ended"] for who, row in kept.items()}
    assert turns == {"good": 3, "flaky": 3, "broken": 1, "quitter": 1}
    assert ended == {"good": "max_turns", "flaky": "max_turns", "broken": "cut", "quitter": "end_marker"}
    assert kept["good"]["messages"] == [{"role": "system", "content": SYSTEM}] + [
        m for u, a in zip(USER_LINES, ANSWERS)
        for m in ({"role": "user", "content": f"good: {u}"}, {"role": "assistant", "content": a})]
    # flaky: one bad answer at turn 2, regenerated once with another seed, then kept
    flaky = meta(kept["flaky"])["conversations"]
    assert flaky["regenerated"] == 1 and calls[("flaky", 2)] == 2
    assert flaky["reasons"] == [f"assistant turn 2: assistant turn too long: {len(LONG)} chars > 40"]
    assert len(set(seeds[("flaky", 2)])) == 2
    assert kept["flaky"]["messages"][4] == {"role": "assistant", "content": ANSWERS[1]}
    # broken: bad three times (1 + retries), cut after its last good exchange
    broken = meta(kept["broken"])["conversations"]
    assert calls[("broken", 2)] == 3 and broken["regenerated"] == 2
    assert broken["reasons"][-1] == f"assistant turn 2: assistant turn too long: {len(LONG)} chars > 40 (retry 2)"
    assert [m["role"] for m in kept["broken"]["messages"]] == ["system", "user", "assistant"]
    assert [m["role"] for m in kept["quitter"]["messages"]] == ["system", "user", "assistant"]
    (rej,) = r.rejects().to_pylist()
    assert rej["reason"] == ("0 exchanges < min_turns 1 (user turn 1: user turn speaks as the assistant; "
                             "user turn 1: user turn speaks as the assistant (retry 1); "
                             "user turn 1: user turn speaks as the assistant (retry 2))")


def test_chat_export_refuses_a_malformed_messages_column(tmp_path):
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    data = {"name": "m", "stages": [{"type": "items", "items": [
        {"messages": good}, {"messages": [{"role": "robot", "content": "beep"}]}]}]}
    path = write_recipe(tmp_path / "m.yaml", data)
    assert smolforge("run", str(path), "--out", str(tmp_path / "m"), "--quiet").returncode == 0
    p = smolforge("export", str(tmp_path / "m"), "--format", "chat", "--to", str(tmp_path / "c.jsonl"))
    assert p.returncode != 0 and "messages[0] is not a {role, content} message" in p.stderr
    ids = [r["id"] for r in sf.Run(tmp_path / "m").data().to_pylist()]
    assert f"record {ids[1]}:" in p.stderr
    assert not (tmp_path / "c.jsonl").exists()


def test_a_bad_user_engine_is_a_recipe_error_naming_its_path(tmp_path):
    from smolforge.recipe import RecipeError, load_recipe

    data = recipe(user_engine={"type": "nosuch"})
    path = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "stages[1].user_engine.type" in str(e.value)


def test_min_turns_above_max_turns_is_a_recipe_error(tmp_path):
    from smolforge.recipe import RecipeError, load_recipe

    path = write_recipe(tmp_path / "r.yaml", recipe(min_turns=3, max_turns=2))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "stages[1]" in str(e.value) and "min_turns (3) > max_turns (2)" in str(e.value)
