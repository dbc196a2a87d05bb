"""Recipes personas, self_instruct, evol_instruct and magpie: each runs end to end on
the bundled model through the CLI with a tiny token budget; `show --json` has the
knob distributions and the drop reasons. Plus the rules that do not need a model:
near-duplicate personas, Evol-Instruct's elimination rules, Self-Instruct's task
checks and parsing, and Magpie's pre-query template. Evol-Instruct and Magpie on
a completions endpoint also run against canned answers over HTTP
(tests/faultproxy.py), so what they keep and send is asserted exactly."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import smolforge
from faultproxy import canned_server, user_text

import smolforge as sf
from smolforge.recipe import BUILTIN_DIR, Recipe
from smolforge.text.rouge import rouge_l


def run_cli(tmp_path, name: str, *sets: str, limit: int = 2, out=None, allow_empty=False) -> dict:
    out = out or tmp_path / name
    args = ["run", name, "--limit", str(limit), "--out", str(out), "--quiet"]
    if allow_empty:
        args.append("--allow-empty")
    for s in sets:
        args += ["--set", s]
    p = smolforge(*args, timeout=900)
    assert p.returncode == 0, p.stderr
    s = smolforge("show", str(out), "--json")
    assert s.returncode == 0, s.stderr
    summary = json.loads(s.stdout)
    assert summary["status"] == "done"
    summary["_run"] = sf.Run(out)
    return summary


def metas(run) -> list[dict]:
    return [json.loads(m) for m in run.data().column("meta").to_pylist()]


def reasons(run, stage: str) -> list[str]:
    return [r["reason"] for r in run.rejects().to_pylist() if r["stage"] == stage]


# ------------------------------------------------------------------ personas


@pytest.mark.slow
def test_personas_end_to_end(tmp_path):
    s = run_cli(tmp_path, "personas",
                "stages[2].max_tokens=16", "stages[3].min_words=2",
                "stages[4].max_tokens=16", "stages[4].fanout=1",
                "stages[6].max_tokens=8", "stages[7].min_words=1")
    run = s["_run"]
    assert {"persona", "hop", "task", "text_relation"} <= set(s["knobs"])
    assert {v for v, _ in s["knobs"]["task"]} <= {"math_problem", "instruction", "knowledge_article"}
    rows = run.data().to_pylist()
    for row, meta in zip(rows, metas(run)):
        k = meta["knobs"]
        assert k["hop"] in (0, 1) and row["text"] and row["persona"].startswith(k["persona"][:40])
        if k["hop"] == 1:  # expanded: its parent persona and the relation that led to it
            assert row["expanded_from"] and k["persona_relation"] and row["id"].endswith(".0")
    stages = {st["name"]: st for st in s["stages"]}
    expand = stages["persona_expand"]
    # Each admitted input persona gets fanout=1 new one; a dropped one is not expanded.
    dropped_inputs = [r for r in run.rejects().to_pylist() if r["stage"] == "persona_expand"
                      and "." not in r["id"]]
    n_in = stages["persona_quality"]["out"]
    assert expand["out"] + expand["rejected"] == n_in + (n_in - len(dropped_inputs))
    for r in reasons(run, "persona_expand"):
        assert re.match(r"(near-duplicate persona of \S+: ROUGE-L [\d.]+ >= 0.8|persona too short)", r), r


def test_persona_near_duplicates_removed_without_expansion(tmp_path):
    people = ["A marine biologist who studies coral reefs and teaches diving on weekends.",
              "A marine biologist who studies coral reefs and teaches scuba diving at weekends.",
              "A retired baker who writes a blog about sourdough starters.",
              "Chef"]
    recipe = Recipe.from_dict({"name": "p", "stages": [
        {"type": "items", "items": people, "column": "persona"},
        {"type": "persona_expand", "hops": 0}]})
    run = sf.run(recipe, out=tmp_path / "p")
    assert run.data().column("persona").to_pylist() == [people[0], people[2]]
    got = {r["id"]: r["reason"] for r in run.rejects().to_pylist()}
    score = rouge_l(people[0], people[1])
    assert got == {"items-000001": f"near-duplicate persona of items-000000: ROUGE-L {score:.2f} >= 0.8",
                   "items-000003": "persona too short: 1 words < 3"}


# ------------------------------------------------------------------ self-instruct


SELF_INSTRUCT_TINY = ("stages[1].target=2", "stages[1].prompts_per_round=2", "stages[1].k=3",
                      "stages[1].n_new=2", "stages[1].max_tokens=64", "stages[1].max_rounds=2",
                      "stages[2].max_tokens=8", "stages[3].min_words=1")


@pytest.mark.slow
def test_self_instruct_end_to_end(tmp_path):
    s = run_cli(tmp_path, "self_instruct", *SELF_INSTRUCT_TINY, limit=4)
    run = s["_run"]
    seeds = [json.loads(line)["instruction"]
             for line in (BUILTIN_DIR / "self_instruct/seed_tasks.jsonl").read_text().splitlines()[:4]]
    rej = run.rejects().to_pylist()
    assert sum(r["reason"] == "seed task, used as an in-context example (keep_seeds: false)"
               for r in rej) == 4
    # Every instruction the stage kept, later dropped or not, is novel against the
    # seeds and every other kept one; and no more than `target` were kept.
    kept = [json.loads(r["record"])["instruction"] for r in rej if r["stage"] != "self_instruct"]
    kept += run.data().column("instruction").to_pylist()
    assert 1 <= len(kept) <= 2
    pool = seeds + kept
    assert all(rouge_l(a, b) < 0.7 for i, a in enumerate(pool) for b in pool[i + 1:])
    for r in reasons(run, "self_instruct"):
        assert r.startswith(("seed task", "too similar to", "too short", "too long", "needs an image",
                             "starts with punctuation", "cut off at max_tokens", "target of 2")), r
    assert {"origin", "round"} <= set(s["knobs"])
    assert all(m["knobs"]["origin"] == "generated" and m["knobs"]["round"] in (1, 2) for m in metas(run))
    assert all(row["text"] and row["prompt"] == row["instruction"] for row in run.data().to_pylist())

    # Changing the stage reruns its rounds; every choice is seeded, so the same
    # prompts go out and the response cache answers all of them.
    again = run_cli(tmp_path, "self_instruct", *SELF_INSTRUCT_TINY, "stages[1].keep_seeds=true",
                    limit=4, out=run.path)
    before = {st["name"]: st for st in s["stages"]}["self_instruct"]
    si = {st["name"]: st for st in again["stages"]}["self_instruct"]
    assert si["generated"] == 0 and si["cache_hits"] >= 2
    assert si["out"] == before["out"] + 4  # the same new tasks, and now the 4 seeds


def test_self_instruct_task_rules_and_parsing():
    from smolforge.stages.synth.instruct import SelfInstruct, parse_tasks

    st = SelfInstruct(type="self_instruct")
    assert st.check_task("Describe this picture of a cat in detail.") == \
        "needs an image, file or other media: 'picture'"
    assert st.check_task("Open the attached file and count the rows.") == \
        "needs an image, file or other media: 'file'"
    assert st.check_task("Go to the website and summarise it.") == \
        "needs an image, file or other media: 'go to'"
    assert st.check_task("Write haiku") == "too short: 2 words < 3"
    assert st.check_task("- list three fruits now") == "starts with punctuation: '-'"
    assert st.check_task("Explain how tides work to a child.") is None
    assert st.check_task("Write a poem about a mapmaker's daughter.") is None  # 'map' is a whole word only
    text = "9. Write a riddle about time.\n10: Explain gravity\nin two sentences.\nTask 11) List prime numbers."
    assert parse_tasks(text) == ["Write a riddle about time.", "Explain gravity in two sentences.",
                                 "List prime numbers."]
    assert parse_tasks("Just one task here") == ["Just one task here"]
    with pytest.raises(ValueError, match="generated_in_context"):
        SelfInstruct(type="self_instruct", k=2, generated_in_context=3)


# ------------------------------------------------------------------ evol-instruct


@pytest.mark.slow
def test_evol_instruct_end_to_end(tmp_path):
    """On the bundled model every evolution may be eliminated (its rewrites often
    copy the markers): what is asserted is that each drop has one of the paper's
    reasons and each kept record its lineage. What is kept, and why, is asserted
    exactly on canned answers below."""
    s = run_cli(tmp_path, "evol_instruct",
                "stages[1].rounds=2", "stages[1].max_tokens=24", "stages[1].answer_max_tokens=8",
                "stages[2].min_words=1", allow_empty=True)
    run = s["_run"]
    ops = {"add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"}
    rejected = [json.loads(r["record"]) for r in run.rejects().to_pylist()]
    evolved = [r for r in rejected if "operation" in r["meta"].get("knobs", {})]
    assert len(evolved) + run.data().num_rows >= 2  # round 1 evolves both inputs
    for r in reasons(run, "evol_instruct"):
        assert r.startswith(("input instruction, evolved", "rewriter marker copied", "no information gained",
                             "refusal", "near-empty answer", "empty rewrite")), r
    for rec in evolved + run.data().to_pylist():
        meta = rec["meta"] if isinstance(rec["meta"], dict) else json.loads(rec["meta"])
        k = meta["knobs"]
        assert k["operation"] in ops and k["round"] in (1, 2)
        assert rec["id"] == f"{rec['id'].rsplit('.', 1)[0]}.{k['round']}"
        assert rec["parent_id"].startswith("read-") and rec["evolved_from"]
    # knobs are reported for exactly the records that reached the data
    n_ops = sum(n for _, n in s.get("knobs", {}).get("operation", []))
    assert n_ops == run.data().num_rows


SUFFIXES = ["Use one worked example.", "Then compare two methods."]
ANSWER = "Evaporation lifts water; condensation forms clouds; rain returns it."


def evol_answer(body: dict) -> str:
    """A rewriter that adds one new sentence per round; an answerer that answers."""
    text = user_text(body)
    for marker in ("#Rewritten Prompt#:", "#Created Prompt#:"):
        if text.endswith(marker):
            parent = text[: -len(marker)].rstrip().rsplit("\n", 1)[-1]
            return f"{parent} {next(x for x in SUFFIXES if x not in parent)}"
    return ANSWER


def test_evol_instruct_rounds_on_canned_answers(tmp_path):
    """Two rounds over two seeds with a rewriter that always adds information: each
    round's evolution is kept (round 2 evolves round 1), each with its answer; the
    seeds themselves are dropped as inputs."""
    with canned_server(evol_answer) as server:
        spec = json.dumps({"type": "openai", "base_url": server.url, "model": "m", "max_retries": 0})
        s = run_cli(tmp_path, "evol_instruct", "stages[1].rounds=2", f"stages[1].engine={spec}")
    run = s["_run"]
    seeds = [json.loads(x)["instruction"]
             for x in (BUILTIN_DIR / "evol_instruct/seeds.jsonl").read_text().splitlines()[:2]]
    one, two = (f"{SUFFIXES[0]}", f"{SUFFIXES[0]} {SUFFIXES[1]}")
    got = sorted((m["knobs"]["round"], r["evolved_from"], r["instruction"], r["text"])
                 for r, m in zip(run.data().to_pylist(), metas(run)))
    assert got == sorted([(1, seed, f"{seed} {one}", ANSWER) for seed in seeds]
                         + [(2, f"{seed} {one}", f"{seed} {two}", ANSWER) for seed in seeds])
    assert sorted(reasons(run, "evol_instruct")) == ["input instruction, evolved (keep_inputs: false)"] * 2
    # one rewrite and one answer per seed and round
    assert len(server.seen) == 2 * 2 * 2


def test_evol_elimination_rules():
    from smolforge.stages.synth.instruct import clean_rewrite, eliminate

    parent = "Describe the water cycle."
    ok = "The water cycle has several stages; explain each one in order."
    assert eliminate(parent, "Describe the water cycle!", None) == \
        "no information gained vs the parent: the prompt is unchanged"
    assert eliminate(parent, "Please describe the water cycle, if you can.", None) == \
        "no information gained vs the parent: 0 new content words < 1"
    assert eliminate(parent, "Rewrite the given prompt about the water cycle.", None) == \
        "rewriter marker copied into the prompt: 'given prompt'"
    assert eliminate(parent, "#Rewritten Prompt#: describe evaporation", None) == \
        "rewriter marker copied into the prompt: '#Rewritten Prompt#'"
    assert eliminate(parent, "", None) == "empty rewrite"
    assert eliminate(parent, ok, None) is None
    assert eliminate(parent, ok, "Sorry, that is beyond what I know.") == \
        "refusal: 'sorry' in a 7-word answer (< 80)"
    assert eliminate(parent, ok, "As an AI, I do not have opinions about weather.") == \
        "refusal: answer opens with 'as an ai'"
    assert eliminate(parent, ok, "It is what it is ...") == "near-empty answer: 0 content words < 3"
    assert eliminate(parent, ok, "Evaporation lifts water; condensation forms clouds; rain returns it.") is None
    assert clean_rewrite("#Rewritten Prompt#: Explain the water cycle in 3 steps.") == \
        "Explain the water cycle in 3 steps."
    assert clean_rewrite("**Rewritten Prompt:** Explain tides.") == "Explain tides."


def test_evol_operations_validated():
    from pydantic import ValidationError

    from smolforge.stages.synth.instruct import EvolInstruct

    with pytest.raises(ValidationError, match="operation 'widen' has no entry in `methods`"):
        EvolInstruct(type="evol_instruct", operations=["deepen", "widen"])
    st = EvolInstruct(type="evol_instruct", operations=["widen", "breadth"], methods={"widen": "Widen it."})
    assert st.operations == ["widen", "breadth"]


# ------------------------------------------------------------------ magpie


@pytest.mark.slow
def test_magpie_end_to_end(tmp_path):
    s = run_cli(tmp_path, "magpie", "stages[1].n=2", "stages[1].max_tokens=24",
                "stages[1].response_max_tokens=8", "stages[2].min_words=1")
    run = s["_run"]
    allowed = ("query cut at max_tokens (24)", "empty query", "query contains chat markup", "empty answer")
    for r in reasons(run, "magpie"):
        assert r.startswith(allowed), r
    ids = run.data().column("id").to_pylist() + [r["id"] for r in run.rejects().to_pylist()]
    assert sorted(ids) == ["items-000000.0", "items-000000.1", "items-000001.0", "items-000001.1"]
    domains = {r["id"]: json.loads(r["record"])["meta"]["knobs"]["domain"] for r in run.rejects().to_pylist()}
    domains.update({r["id"]: m["knobs"]["domain"] for r, m in zip(run.data().to_pylist(), metas(run))})
    assert domains == {"items-000000.0": "general", "items-000000.1": "general",
                       "items-000001.0": "math", "items-000001.1": "math"}
    for row, meta in zip(run.data().to_pylist(), metas(run)):
        assert row["instruction"] and row["text"] and "<|im_" not in row["instruction"]
        assert row["system"].startswith("You are an AI assistant that helps people solve math") == (
            row["domain"] == "math")
        assert meta["magpie"]["query"]["sampling"]["stop"] == ["<|im_end|>"]
    assert run.data().num_rows >= 1, run.rejects().to_pylist()  # greedy answers, seeded queries
    assert sum(n for _, n in s["knobs"]["domain"]) == run.data().num_rows


def test_magpie_pre_query_templates():
    from smolforge.context import build_engine
    from smolforge.engines.chat_template import CHATML, ChatTemplate
    from smolforge.stages.synth.magpie import LLAMA3, PreQuery, engine_chat_template

    p = PreQuery(ChatTemplate(CHATML), None)
    assert p.prefix == "<|im_start|>user\n" and p.stop == ["<|im_end|>"]
    p = PreQuery(ChatTemplate(CHATML), "You help with math.")
    assert p.prefix == "<|im_start|>system\nYou help with math.<|im_end|>\n<|im_start|>user\n"
    assert p.respond("What is 2+2?") == (p.prefix + "What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    p = PreQuery(ChatTemplate(LLAMA3), None)
    assert p.prefix == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert p.stop == ["<|eot_id|>"]
    # The bundled model's own template (from the GGUF) adds SmolLM2's default system turn.
    smol = PreQuery(engine_chat_template(build_engine("llamacpp")), None)
    assert smol.prefix == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                           "Hugging Face<|im_end|>\n<|im_start|>user\n")
    assert "<|im_start|>" in smol.markup


QUERY = "How do I reverse a list in Python?"
REPLY = "Use reversed(), or slice it with [::-1]."


def test_magpie_on_a_completions_endpoint(tmp_path):
    """Against a completions endpoint, Magpie sends the bare pre-query template (the
    system prompt of the record's domain, then an open user turn) and stops at the
    end of the turn; the answer request replays the query in the template."""
    from smolforge.engines.chat_template import CHATML, ChatTemplate
    from smolforge.stages.synth.magpie import PreQuery

    data = yaml.safe_load((BUILTIN_DIR / "magpie.yaml").read_text())
    system = yaml.safe_load((BUILTIN_DIR / "magpie/system_prompts.yaml").read_text())["code"]
    with canned_server(lambda b: QUERY if b["prompt"].endswith("user\n") else REPLY) as server:
        data["engine"] = {"type": "openai", "base_url": server.url + "/v1", "model": "smollm2",
                          "endpoint": "completions"}
        data["stages"][0]["items"] = [{"domain": "code"}]
        data["stages"][1].update(chat_template="chatml", max_tokens=8, response_max_tokens=8, n=1)
        data["stages"][2]["min_words"] = 1
        run = sf.run(Recipe.from_dict(data, base_dir=BUILTIN_DIR), out=tmp_path / "m")
    pre = PreQuery(ChatTemplate(CHATML), system)
    query, answer = (s.body for s in server.seen)
    assert (query["prompt"], query["stop"], query["max_tokens"]) == (pre.prefix, ["<|im_end|>"], 8)
    assert answer["prompt"] == pre.respond(QUERY) and "messages" not in answer
    (row,) = run.data().to_pylist()
    assert (row["instruction"], row["text"], row["system"]) == (QUERY, REPLY, system)
    meta = metas(run)[0]
    assert meta["knobs"]["domain"] == "code" and meta["magpie"]["query"]["engine"] == "openai"
    assert run.rejects().num_rows == 0 and run.manifest["stages"][1]["generated"] == 2
