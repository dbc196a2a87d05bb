"""The `ifeval_sft` recipe end to end through the CLI on the bundled model (greedy,
48 tokens, 6 prompts): seed prompts -> add_constraints -> generate ->
verify_constraints. Every kept record must satisfy all its constraints by the
reference checker too, every reject must name exactly the ids the reference finds
failed, and the export must be SFT chat data and GRPO data. The stage tests below
run the stages directly on real records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, stage_ctx

from smolforge.context import StageContext
from smolforge.ifeval import CONFLICTS, REGISTRY
from smolforge.ifeval.reference import reference_results
from smolforge.recipe import BUILTIN_DIR, RecipeError, load_recipe
from smolforge.registry import stages

EASY = ["length_constraints:number_words", "keywords:forbidden_words",
        "change_case:capital_word_frequency", "punctuation:no_comma"]


def ctx(seed: int = 1) -> StageContext:
    return stage_ctx(BUILTIN_DIR, stage="s", seed=seed)


def make(type_: str, **fields):
    return stages.get(type_).model_validate({"type": type_, **fields})


def test_add_constraints_seeded_compatible_and_described():
    stage = make("add_constraints", include_ifbench=True)
    batch = [{"id": f"r{i}", "prompt": f"Write about topic {i}."} for i in range(200)]
    a = stage.process(batch, ctx()).kept
    b = stage.process(batch, ctx()).kept
    assert a == b  # seeded per record id
    assert stage.process(batch, ctx(seed=2)).kept != a
    used = set()
    for src, rec in zip(batch, a, strict=True):
        ids, kws = rec["instruction_id_list"], rec["kwargs"]
        assert 1 <= len(ids) <= 3 and len(kws) == len(ids)
        assert all(y not in CONFLICTS[x] for i, x in enumerate(ids) for y in ids[i + 1:])
        assert rec["prompt"].startswith(src["prompt"])
        for iid, kw in zip(ids, kws, strict=True):
            assert REGISTRY[iid].description(kw) in rec["prompt"]
            if iid == "combination:repeat_prompt":
                assert kw["prompt_to_repeat"] == src["prompt"]
        used.update(ids)
    assert len(used) >= 25  # the pool is really drawn from
    fixed = make("add_constraints", instructions=["length_constraints:number_words"],
                 params={"length_constraints:number_words": {"relation": "less than"}}, output="p2")
    rec = fixed.process(batch[:5], ctx()).kept[0]
    assert rec["prompt"] == batch[0]["prompt"] and rec["kwargs"][0]["relation"] == "less than"
    assert "Answer with less than" in rec["p2"]
    empty = stage.process([{"id": "e", "prompt": "  "}], ctx())
    assert empty.rejected[0].reason == "add_constraints: empty prompt (column 'prompt')"


def test_recipe_errors_name_bad_ids_and_params(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'punctuation:no_comma'"):
        make("add_constraints", instructions=["punctuation:no_commas"])
    with pytest.raises(ValueError, match="unknown parameter"):
        make("add_constraints", params={"punctuation:no_comma": {"x": 1}})
    r = tmp_path / "r.yaml"
    r.write_text("name: x\nstages:\n  - {type: items, items: [{prompt: hi}]}\n"
                 "  - {type: verify_constraints}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(r)
    assert "instruction_id_list" in str(e.value) or "text" in str(e.value)


def test_verify_constraints_strict_loose_reasons_and_nulls():
    rows = [
        # strict pass
        {"id": "a", "prompt": "p", "text": "no commas here",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None}]},
        # loose-only pass (preamble line with a comma)
        {"id": "b", "prompt": "p", "text": "Sure, here:\nno commas here",
         "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"], "kwargs": [{}, {}]},
        # fails both
        {"id": "c", "prompt": "p", "text": "one, two, three four five",
         "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
         "kwargs": [{}, {"num_words": 5, "relation": "less than", "keywords": None}]},
        {"id": "d", "prompt": "p", "text": "", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    ]
    strict = make("verify_constraints").process(rows, ctx())
    assert [r["id"] for r in strict.kept] == ["a"]
    reasons = {r.record["id"]: r.reason for r in strict.rejected}
    assert reasons["b"] == "constraints failed (strict): punctuation:no_comma, detectable_format:title"
    assert reasons["c"] == ("constraints failed (strict): punctuation:no_comma, "
                            "length_constraints:number_words")
    assert reasons["d"] == "constraints failed (strict): empty response"
    b = next(r.record for r in strict.rejected if r.record["id"] == "b")
    assert b["ifeval_strict"] == [False, False] and b["ifeval_loose"] == [True, False]
    loose = make("verify_constraints", require="loose").process(rows, ctx())
    assert [r["id"] for r in loose.kept] == ["a"]
    assert {r.record["id"]: r.reason for r in loose.rejected}["b"] == \
        "constraints failed (loose): detectable_format:title"
    none = make("verify_constraints", require="none").process(rows, ctx())
    assert len(none.kept) == 4 and strict.counts["strict_fail:punctuation:no_comma"] == 3
    bad = make("verify_constraints").process([{**rows[0], "instruction_id_list": ["nope:x"]}], ctx())
    assert "unknown instruction id 'nope:x'" in bad.rejected[0].reason


@pytest.mark.slow
def test_ifeval_sft_recipe_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = smolforge(
        "run", "ifeval_sft", "--out", str(out), "--limit", "6", "--quiet",
        "--set", "stages[2].max_tokens=48", "--set", "stages[2].temperature=0",
        "--set", f"stages[1].instructions={json.dumps(EASY)}",
        "--set", "stages[1].params={length_constraints:number_words: {relation: less than}, "
                 "change_case:capital_word_frequency: {capital_relation: less than}}",
        "--set", "stages[1].max_constraints=2")
    assert res.returncode == 0, res.stderr
    kept = pq.read_table(next((out / "data").glob("*.parquet"))).to_pylist()
    rejects = pq.read_table(out / "rejects" / "rejects.parquet").to_pylist()
    assert kept and len(kept) + len(rejects) == 6
    for rec in kept:
        assert set(rec["instruction_id_list"]) <= set(EASY)
        ref = reference_results(rec["prompt"], rec["instruction_id_list"], rec["kwargs"], rec["text"])
        assert all(s for s, _ in ref), rec  # satisfies every constraint, by the reference
        assert rec["ifeval_strict_all"] and all(rec["ifeval_strict"])
    for rej in rejects:
        rec = json.loads(rej["record"])
        ref = reference_results(rec["prompt"], rec["instruction_id_list"], rec["kwargs"], rec["text"])
        failed = [i for i, (s, _) in zip(rec["instruction_id_list"], ref, strict=True) if not s]
        assert rej["stage"] == "verify_constraints"
        assert rej["reason"] == f"constraints failed (strict): {', '.join(failed)}"
    manifest = json.loads((out / "manifest.json").read_text())
    verify = next(s for s in manifest["stages"] if s["type"] == "verify_constraints")
    assert verify["summary"]["strict_rate"] and all(v == 1.0 for v in verify["summary"]["strict_rate"].values())
    fails = sum(v for k, v in verify.items() if k.startswith("strict_fail:"))
    assert fails == sum(len(json.loads(r["record"])["instruction_id_list"]) -
                        sum(json.loads(r["record"])["ifeval_strict"]) for r in rejects)

    chat = tmp_path / "sft.jsonl"
    assert smolforge("export", str(out), "--format", "chat", "--to", str(chat)).returncode == 0
    msgs = [json.loads(line)["messages"] for line in chat.read_text().splitlines()]
    assert [m[0]["content"] for m in msgs] == [r["prompt"] for r in kept]
    grpo = tmp_path / "grpo.jsonl"
    assert smolforge("export", str(out), "--format", "grpo", "--to", str(grpo)).returncode == 0
    rows = [json.loads(line) for line in grpo.read_text().splitlines()]
    assert all(r["dataset"] == "ifeval" and r["prompt"][0]["role"] == "user" for r in rows)


def test_public_ifeval_jsonl_through_read_and_verify(tmp_path):
    """A file in the public IFEval layout (sparse kwargs, `{}` for none, its own
    `key`) read by `read` and checked by `verify_constraints`, unchanged."""
    rows = [
        {"key": 1000, "prompt": "Write a 300+ word summary. Do not use any commas.",
         "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
         "kwargs": [{}, {"relation": "at least", "num_words": 300}], "response": "word " * 300},
        {"key": 1001, "prompt": "Answer in JSON.", "instruction_id_list": ["detectable_format:json_format"],
         "kwargs": [{}], "response": "```json\n{\"a\": 1}\n```"},
        {"key": 1002, "prompt": "List two things, with a postscript.",
         "instruction_id_list": ["detectable_format:number_bullet_lists", "detectable_content:postscript"],
         "kwargs": [{"num_bullets": 2}, {"postscript_marker": "P.S."}], "response": "* a\n* b\n* c\nP.S. hi"},
    ]
    data = tmp_path / "ifeval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.yaml"
    # One shard: a shard whose rows all have `kwargs: [{}]` cannot be written to
    # Parquet by the store today (a list of empty structs; reported).
    recipe.write_text(f"name: pub\nshard_size: 8\nstages:\n  - {{type: read, path: {data}}}\n"
                      "  - {type: verify_constraints, response_column: response}\n")
    res = smolforge("run", str(recipe), "--out", str(tmp_path / "run"), "--quiet", "--allow-path", str(tmp_path))
    assert res.returncode == 0, res.stderr
    kept = pq.read_table(next((tmp_path / "run" / "data").glob("*.parquet"))).to_pylist()
    rejects = pq.read_table(tmp_path / "run" / "rejects" / "rejects.parquet").to_pylist()
    assert sorted(r["key"] for r in kept) == [1000, 1001]
    assert [r["reason"] for r in rejects] == ["constraints failed (strict): detectable_format:number_bullet_lists"]
    for r in rows:
        ref = reference_results(r["prompt"], r["instruction_id_list"], r["kwargs"], r["response"])
        assert all(s for s, _ in ref) == (r["key"] != 1002)
