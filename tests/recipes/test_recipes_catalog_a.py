"""Recipes `textbooks`, `rephrase`, `instructions` and their stages: text_quality,
chunk, vary, seeds, render, mix_real. The unit tests use real text and the real
stages; the recipe tests run each recipe end to end through the CLI on the bundled
model with a few tokens per call (outputs are weak: structure is asserted, not
quality); textbooks' judge answers from a canned server over HTTP, so that its
filter's decisions are known."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, stage_ctx
from faultproxy import canned_server, user_text

from smolforge.context import StageContext
from smolforge.recipe import BUILTIN_DIR, load_recipe
from smolforge.registry import stages
from smolforge.stages.judges.judge import load_rubric
from smolforge.stages.quality.text_quality import count_tokens, is_refusal
from smolforge.stages.sources.chunk import chunk_spans, sentence_spans

DOCS = sorted((BUILTIN_DIR / "documents").glob("*.txt"))


def ctx(stage: str = "s", seed: int = 1, recipe_dir: Path = BUILTIN_DIR) -> StageContext:
    return stage_ctx(recipe_dir, stage=stage, seed=seed)


def make(type_: str, **fields):
    return stages.get(type_).model_validate({"type": type_, **fields})


# ------------------------------------------------------------- text_quality


def test_text_quality_rules_and_reasons():
    tq = make("text_quality", min_words=3, min_tokens=6)
    reasons = {t: tq.check({"text": t}) for t in [
        "", "   ", None, "Two words", "three short words",
        "I\u2019m sorry, but I can't write that essay for you.",
        "Sure.\nAs an AI language model, I have no opinion on rivers.",
        "He said I cannot go, so the river trip waited until June.",
        "The water cycle moves water between the sea, the air and the land.",
    ]}
    assert reasons[""] == reasons["   "] == reasons[None] == "text_quality: empty text (column 'text')"
    assert reasons["Two words"] == "text_quality: 2 words < 3 (column 'text')"
    assert reasons["three short words"] == "text_quality: 3 tokens < 6 (column 'text')"
    assert reasons["I\u2019m sorry, but I can't write that essay for you."] == \
        "text_quality: refusal \"i'm sorry\" (column 'text')"
    assert "refusal 'as an ai'" in reasons["Sure.\nAs an AI language model, I have no opinion on rivers."]
    # a phrase inside a sentence is not a refusal; an ordinary text passes
    assert reasons["He said I cannot go, so the river trip waited until June."] is None
    assert reasons["The water cycle moves water between the sea, the air and the land."] is None


def test_text_quality_columns_phrases_and_window():
    tq = make("text_quality", column=["instruction", "response"], extra_refusal_phrases=["No can do"])
    assert tq.requires() == {"instruction", "response"}
    assert tq.check({"instruction": "Name a river.", "response": "No can do, friend."}) == \
        "text_quality: refusal 'no can do' (column 'response')"
    assert tq.check({"instruction": "Name a river.", "response": ""}) == \
        "text_quality: empty text (column 'response')"
    late = "Rivers carry water. " * 20 + "I cannot list them all."
    assert is_refusal(late) is None and is_refusal(late, window=None) == "i cannot"
    assert make("text_quality", refusal=False).check({"text": "As an AI, no."}) is None
    assert count_tokens("Hello, world... it's 3.14!") == 7  # Hello , world ... it's 3.14 !


# ------------------------------------------------------------------- chunk


def test_sentence_spans_respect_abbreviations_and_paragraphs():
    text = 'Dr. Smith met J. Doe in the U.S. last May. "Was it fun?" she asked.\n\nyes it was\nreally. 3 cats came.'
    got = [text[a:b] for a, b in sentence_spans(text)]
    assert got == ['Dr. Smith met J. Doe in the U.S. last May.', '"Was it fun?" she asked.',
                   "yes it was\nreally.", "3 cats came."]


def test_chunks_end_at_sentences_near_300_tokens_and_cover_the_text():
    text = "\n\n".join(p.read_text() for p in DOCS[:4])
    spans = chunk_spans(text, 300, 50)
    sizes = [count_tokens(text[a:b]) for a, b in spans]
    assert len(spans) >= 4
    assert all(s <= 300 for s in sizes[:-1]) and sizes[-1] <= 350 and min(sizes) >= 50
    assert sum(sizes[:-1]) / (len(sizes) - 1) > 200  # packed, not one sentence per chunk
    ends = {b for _, b in sentence_spans(text)}
    starts = {a for a, _ in sentence_spans(text)}
    assert all(a in starts and b in ends for a, b in spans)  # sentence boundaries
    words = " ".join(text[a:b] for a, b in spans).split()
    assert words == text.split()  # nothing lost, nothing repeated


def test_chunk_stage_ids_columns_long_sentences_and_empty():
    st = make("chunk", column="text", output="original", target_tokens=40, min_tokens=10)
    assert st.removes() == {"text"} and st.provides() == {"original", "chunk_index", "chunk_count"}
    long_sentence = " ".join(["word"] * 100) + "."
    res = st.process([
        {"id": "d-1", "meta": {}, "text": DOCS[0].read_text(), "document": "x"},
        {"id": "d-2", "meta": {}, "text": long_sentence},
        {"id": "d-3", "meta": {}, "text": "  "},
    ], ctx())
    d1 = [r for r in res.kept if r["id"].startswith("d-1.")]
    assert [r["id"] for r in d1] == [f"d-1.{k}" for k in range(len(d1))] and len(d1) > 5
    assert all(r["chunk_count"] == len(d1) and "text" not in r and r["document"] == "x" for r in d1)
    d2 = [r for r in res.kept if r["id"].startswith("d-2.")]
    assert [count_tokens(r["original"]) for r in d2] == [40, 40, 21]  # 100 words + "." cut at words
    assert [(r.record["id"], r.reason) for r in res.rejected] == [("d-3", "chunk: empty text (column 'text')")]
    one = make("chunk", target_tokens=300).process([{"id": "s", "meta": {}, "text": "One short doc."}], ctx())
    assert [r["id"] for r in one.kept] == ["s.0"]


# --------------------------------------------------------------- vary, seeds


def test_vary_samples_per_record_and_fans_out():
    batch = [{"id": f"r{i}", "meta": {"knobs": {"seeds": "x"}}} for i in range(40)]
    one = make("vary", lists={"task": ["a", "b", "c"]}).process(batch, ctx())
    assert [r["id"] for r in one.kept] == [r["id"] for r in batch]
    assert {r["task"] for r in one.kept} == {"a", "b", "c"}
    assert all(r["meta"]["knobs"] == {"seeds": "x", "task": r["task"]} for r in one.kept)
    again = make("vary", lists={"task": ["a", "b", "c"]}).process(batch, ctx())
    assert [r["task"] for r in again.kept] == [r["task"] for r in one.kept]  # seeded
    allof = make("vary", lists={"task": ["a", "b"], "n": [1, 2]}, per_record=None).process(batch[:1], ctx())
    assert [(r["id"], r["task"], r["n"]) for r in allof.kept] == [
        ("r0.0", "a", 1), ("r0.1", "a", 2), ("r0.2", "b", 1), ("r0.3", "b", 2)]


def test_seeds_from_documents_extract_and_topic_mention():
    st = make("seeds", seeds="documents", lists={"audience": ["kids", "adults"]})
    recs = list(st.read(ctx()))
    assert len(recs) == 2 * len(DOCS)
    for r in recs:
        assert 500 <= len(r["extract"]) <= 1000 and r["extract"].rstrip()[-1] in '.!?"'
        assert r["document"] and r["document"] not in r["extract"][:len(r["document"]) + 1]  # title cut
        assert r["topic"] == (r["document"] if r["topic_mentioned"] else None)
        assert r["meta"]["knobs"]["topic_mentioned"] == ("yes" if r["topic_mentioned"] else "no")
    share = sum(r["topic_mentioned"] for r in recs) / len(recs)
    assert 0.25 < share < 0.75
    topics = list(make("seeds", lists={"style": ["a", "b"]}, count=5).read(ctx()))
    assert len(topics) == 5 and all(r["extract"] is None and r["meta"]["knobs"]["seeds"] == "topics" for r in topics)


# ---------------------------------------------------------------- mix_real


def _synthetic(n_groups: int, per_group: int = 1) -> list[dict]:
    return [{"id": f"c{g}.{k}", "meta": {"recipe": "r", "generate": {"model": "m"}}, "original": f"orig {g}",
             "text": f"rephrased {g} {k}", "task": "easy", "document": f"d{g}"}
            for g in range(n_groups) for k in range(per_group)]


def test_mix_real_one_to_one_by_default():
    res = make("mix_real", carry=["document"]).process(_synthetic(3), ctx())
    real = [r for r in res.kept if r["source"] == "real"]
    synth = [r for r in res.kept if r["source"] == "synthetic"]
    assert len(real) == len(synth) == 3
    assert real[0] == {"id": "c0.0.real", "meta": {"recipe": "r", "s": {"real_ratio": 1.0, "group_size": 1},
                                                   "knobs": {"source": "real"}},
                       "text": "orig 0", "original": "orig 0", "source": "real", "document": "d0"}
    assert all(r["meta"]["knobs"]["source"] == "synthetic" for r in synth)


@pytest.mark.parametrize("ratio, per_group, expect", [(0.0, 1, (0, 0)), (2.0, 1, (400, 400)),
                                                      (1.0, 2, (400, 400)), (0.5, 1, (70, 130))])
def test_mix_real_ratio(ratio, per_group, expect):
    res = make("mix_real", real_ratio=ratio).process(_synthetic(200, per_group), ctx())
    n_real = sum(r["source"] == "real" for r in res.kept)
    assert expect[0] <= n_real <= expect[1]
    ids = [r["id"] for r in res.kept]
    assert len(ids) == len(set(ids))


# -------------------------------------------------------------------- render


def test_render_appends_and_rejects_failures():
    st = make("render", output="text", template_file="rephrase/assemble.j2")
    res = st.process([
        {"id": "a", "task": "diverse_qa", "original": "Orig.", "text": "Question: Q? Answer: A."},
        {"id": "b", "task": "easy", "original": "Orig.", "text": "Easy text."},
        {"id": "c", "task": "easy", "original": "Orig."},
    ], ctx())
    assert [r["text"] for r in res.kept] == ["Orig.\n\nQuestion: Q? Answer: A.", "Easy text."]
    assert res.rejected[0].record["id"] == "c" and res.rejected[0].reason.startswith("template error")


# ------------------------------------------------------ recipes, end to end
#
# Each recipe runs through the CLI on the bundled model, on two identical short
# seed documents (a user's own documents, next to a copy of the recipe). With greedy decoding and one value per
# list, the two copies give identical outputs, so exact dedup must drop one: a
# drop reason that does not depend on what the small model writes. Every LLM call
# gets a few tokens and the length floors are low, so that records reach the end.

GREEDY = "temperature=0"
TINY = {
    "textbooks": ["stages[0].seeds=documents", "stages[0].documents=docs/*.txt", "stages[0].mention_topic=0",
                  "stages[0].lists.audience=[middle school students]", "stages[0].lists.style=[blog post]",
                  f"stages[1].{GREEDY}", "stages[1].max_tokens=10", "stages[2].min_words=2"],
    "rephrase": ["stages[0].path=docs/*.txt", "stages[2].lists.task=[wikipedia]", f"stages[3].{GREEDY}",
                 "stages[3].max_tokens=10", "stages[4].min_tokens=2"],
    "instructions": ["stages[0].path=docs/*.txt", "stages[2].lists.transformation=[set of notes]",
                     "stages[5].lists.skill=[summarisation]", "stages[4].min_words=2",
                     "stages[7].min_words=2", "stages[10].min_words=2", "stages[13].min_words=1",
                     *(f"stages[{i}].{GREEDY}" for i in (3, 6, 8, 9, 12)),
                     *(f"stages[{i}].max_tokens=8" for i in (3, 6, 8, 9, 12))],
}
# The textbooks judge (stages[3], fineweb-edu criteria) asks a canned server: the
# model name says how it answers the yes/no questions; the shipped filter keeps >= 1.65.
REVERSE_KEYED = [c.question for c in load_rubric("fineweb-edu").criteria.values() if c.reverse]


def edu_judge(url: str, model: str) -> str:
    spec = {"type": "openai", "base_url": url, "model": model, "max_retries": 0}
    return f"stages[3].engine={json.dumps(spec)}"


KNOBS = {"textbooks": {"seeds", "audience", "style", "topic_mentioned"}, "rephrase": {"task", "source"},
         "instructions": {"transformation", "skill"}}


def test_builtin_recipes_validate_and_textbooks_demo_override():
    for name in TINY:
        load_recipe(name, TINY[name])
    r = load_recipe("textbooks", ["stages[0].count=16"])  # `make demo` uses this override
    assert r.stages[0].count == 16 and r.stages[0].seeds == "topics"


@pytest.fixture(scope="module")
def judge_server():
    def answer(body: dict) -> str:
        # edu-high: yes to FineWeb-Edu's points, no to the reverse-keyed questions (score 3);
        # edu-low: the opposite (score 0)
        reverse = any(q in user_text(body) for q in REVERSE_KEYED)
        return "Yes." if (body["model"] == "edu-high") != reverse else "No."

    with canned_server(answer) as server:
        yield server


def run_recipe(recipe: Path, out: Path, sets: list[str], *extra: str) -> dict:
    args = ["run", str(recipe), "--out", str(out), "--quiet", *extra]
    for ov in sets:
        args += ["--set", ov]
    p = smolforge(*args, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    show = smolforge("show", str(out), "--json")
    assert show.returncode == 0, show.stderr
    return json.loads(show.stdout)


@pytest.fixture(scope="module", params=list(TINY))
def recipe_run(request, tmp_path_factory, judge_server):
    name = request.param
    work = tmp_path_factory.mktemp(name)
    (work / "docs").mkdir()
    for src, dst in [(DOCS[0], "a.txt"), (DOCS[0], "b.txt")]:
        title, body = src.read_text().split("\n\n", 1)
        (work / "docs" / dst).write_text(f"{title}\n\n{body[:300].rsplit('. ', 1)[0]}.\n")
    recipe = work / f"{name}.yaml"  # a copy next to the docs, as a user would make it
    recipe.write_text((BUILTIN_DIR / f"{name}.yaml").read_text())
    (work / name).symlink_to(BUILTIN_DIR / name)
    out = work / "run"
    sets = TINY[name] + ([edu_judge(judge_server.url, "edu-high")] if name == "textbooks" else [])
    return name, out, run_recipe(recipe, out, sets)


@pytest.mark.slow
def test_recipe_runs_with_knobs_and_drop_reasons(recipe_run):
    name, out, summary = recipe_run
    assert summary["status"] == "done"
    synthetic = 1  # two documents, one an exact copy of the other
    rows = summary["data"]["rows"]
    assert rows == (2 * synthetic if name == "rephrase" else synthetic), summary["rejects"]
    assert KNOBS[name] <= set(summary["knobs"]), summary.get("knobs")
    texts = pq.read_table(out / "data", columns=["text"]).column("text").to_pylist()
    assert len(texts) == rows
    want = Counter(" ".join(t.split()[:5]) for t in texts).most_common(5)
    assert summary["first_words"] == [list(w) for w in want]
    dups = [g for g in summary["rejects"] if g["stage"] == "dedup"]
    assert [(g["reason"], g["count"]) for g in dups] == [("exact duplicate of <id>", 1)]
    if name == "rephrase":
        assert dict(summary["knobs"]["source"]) == {"real": 1, "synthetic": 1}  # 1:1 by default
    if name == "textbooks":
        assert dict(summary["knobs"]["topic_mentioned"]) == {"no": 1}
        # the shipped generate stage (repeat_penalty 1.1) ran; the judge's score is kept
        assert {s["name"]: s for s in summary["stages"]}["generate"]["generated"] == 1
        row = summary["samples"][0]
        assert row["edu_score"] == 3.0 and row["edu_score_legal_text"] == 0.0 and row["edu_score_key_concepts"] == 1.0
    if name == "instructions":
        row = summary["samples"][0]
        assert row["prompt"].endswith(row["instruction"]) and row["seed_instruction"] and row["text"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe_run", ["textbooks"], indirect=True)
def test_textbooks_filter_drops_what_the_judge_scores_low(recipe_run, judge_server, tmp_path):
    """The same run with a judge that scores 0: generate is reused, the judge is
    asked again, and the shipped filter (edu_score >= 1.65) drops both records."""
    _, out, _ = recipe_run
    low = tmp_path / "low"
    shutil.copytree(out, low)
    recipe = out.parent / "textbooks.yaml"
    summary = run_recipe(recipe, low, TINY["textbooks"] + [edu_judge(judge_server.url, "edu-low")],
                         "--allow-empty")
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["edu_judge"]["out"] == 2
    # this attempt's only new requests: the judge's 7 questions on the (twice identical) text
    attempt = json.loads((low / "manifest.json").read_text())["attempts"][-1]
    assert attempt["generated"] == 7
    assert summary["data"]["rows"] == 0
    rej = pq.read_table(low / "rejects").to_pylist()
    assert [(r["stage"], r["reason"]) for r in rej] == [
        ("filter", "filter 'edu_score >= 1.65' is false (edu_score=0.0)")] * 2
