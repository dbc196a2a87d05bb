"""`conversations` on the real bundled model (SmolLM2-135M), through the real CLI:
dialogues alternate user / assistant and stop at `max_turns`; a planted bad turn
(an `assistant_max_chars` no answer can meet) is regenerated, then the dialogue is
cut with its reasons; the same seed gives the same dialogues; a run killed mid-way
and resumed gives the same data; the chat export loads with `datasets` and renders
through the bundled tokenizer's chat template; the built-in recipe runs."""

from __future__ import annotations

import json
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
