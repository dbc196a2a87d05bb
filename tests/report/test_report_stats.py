"""Figures about a run (report.stats), on a CPU-only run over shipped text with
planted cases: duplicates (one cluster of 4), short records, a HumanEval leak, a
text full of AI proxy words, a record that tries to break out of the report's
<script>, and a knob combination whose every record is filtered out."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, smolforge, write_recipe

import smolforge as sf
from smolforge.report import count_knobs, list_rejects, profile, reason_group, summarize
from smolforge.report.profiling import Diversity
from smolforge.report.proxy import ProxyCounter, compute_reference, reference
from smolforge.stats import histogram

DOCS = ROOT / "src" / "smolforge" / "recipes" / "documents"
HUMANEVAL = ROOT / "tests" / "data" / "humaneval_sample.jsonl"
PROXY_TEXT = ("In this essay we delve into the intricate and meticulous craft of bread, showcasing a "
              "commendable and innovative tradition that underscores how crucial and pivotal yeast is.")
INJECTION = "Broken markup </script><script>window.__pwned = 1</script> must stay text, said the baker."
AUDIENCES, STYLES = ["children", "experts"], ["story", "essay"]


def paragraphs() -> list[str]:
    out = []
    for path in sorted(DOCS.glob("*.txt")):
        out += [p.strip() for p in path.read_text().split("\n\n") if len(p.split()) >= 12]
    return out


def build_run(tmp: Path) -> tuple[Path, dict]:
    """The run and what was planted in it."""
    paras = paragraphs()[:40]
    leak = json.loads(HUMANEVAL.read_text().splitlines()[0])["prompt"]
    rows = []
    for i, p in enumerate(paras):
        rows.append({"text": p, "score": i % 6,
                     "meta": {"knobs": {"audience": AUDIENCES[i % 2], "style": STYLES[(i // 2) % 2]}}})
    dup = paras[3]
    rows += [{"text": dup, "score": 4, "meta": {"knobs": {"audience": "children", "style": "story"}}}] * 3
    rows += [{"text": "Too short.", "score": 3, "meta": {"knobs": {"audience": "experts", "style": "poem"}}},
             {"text": "Tiny one.", "score": 3, "meta": {"knobs": {"audience": "experts", "style": "poem"}}}]
    rows.append({"text": "Here is a task. " + leak, "score": 5, "meta": {"knobs": {"audience": "experts", "style": "essay"}}})
    rows.append({"text": PROXY_TEXT, "score": 5, "meta": {"knobs": {"audience": "children", "style": "essay"}}})
    rows.append({"text": INJECTION, "score": 2, "meta": {"knobs": {"audience": "children", "style": "story"}}})
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "he.jsonl").write_text(HUMANEVAL.read_text())
    recipe = write_recipe(tmp / "r.yaml", {"name": "report-demo", "seed": 1, "shard_size": 16, "stages": [
        {"type": "read", "path": "in.jsonl"},
        {"type": "filter", "name": "long_enough", "where": "words(text) >= 8"},
        {"type": "dedup", "method": "exact", "column": "text"},
        {"type": "decontaminate", "benchmarks": [{"path": "he.jsonl", "name": "humaneval", "fields": ["prompt"],
                                                  "id_field": "task_id"}]},
        {"type": "filter", "name": "scored", "where": "score >= 1"},
    ]})
    run = sf.run(str(recipe), tmp / "run")
    zero_score = sum(1 for i in range(len(paras)) if i % 6 == 0)
    return run.path, {"rows": len(rows), "paras": len(paras), "zero_score": zero_score}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("report"))


def test_funnel_is_exact_and_matches_the_rejects_file(demo):
    run, planted = demo
    s = summarize(run)
    f = {r["stage"]: r for r in s["funnel"]}
    assert list(f) == ["read", "long_enough", "dedup", "decontaminate", "scored"]
    assert f["read"]["out"] == planted["rows"]
    assert f["long_enough"]["rejected"] == 2 and f["dedup"]["rejected"] == 3
    assert f["decontaminate"]["rejected"] == 1 and f["scored"]["rejected"] == planted["zero_score"]
    rej = pq.read_table(run / "rejects" / "rejects.parquet").to_pylist()
    by_stage = Counter(r["stage"] for r in rej)
    for row in s["funnel"]:
        assert row["in"] + row["added"] == row["out"] + row["rejected"]
        assert sum(g["count"] for g in row["reasons"]) == row["rejected"] == by_stage.get(row["stage"], 0)
        assert row["added"] == 0
    assert f["scored"]["out"] == s["data"]["rows"] == pq.read_metadata(run / "data" / "train-00000-of-00001.parquet").num_rows
    assert s["contamination"] == {"humaneval": 1}
    # the dedup rule collapses the record ids: one group for three rejects
    assert [g["reason"] for g in s["rejects"] if g["stage"] == "dedup"] == ["exact duplicate of <id>"]


def test_profile_figures_against_independent_counts(demo):
    run, planted = demo
    p = profile(run, tokenizer="approx")
    data = pq.read_table(run / "data").to_pylist()
    texts = [r["text"] for r in data]
    # lengths: chars / 4 rounded up, computed here independently
    assert p["tokenizer"].startswith("approximate")
    assert p["lengths"]["n"] == len(texts)
    assert p["lengths"]["max"] == max(-(-len(t) // 4) for t in texts)
    # judge-like score column: counts per integer value, kept and rejected (every reject here carries
    # its score: the 0s dropped by `scored`, the short, duplicate and contaminated records)
    rejected = [json.loads(r["record"])["score"] for r in pq.read_table(run / "rejects" / "rejects.parquet").to_pylist()]
    assert 0 in rejected
    h = p["scores"]["score"]
    assert {b["label"]: b["count"] for b in h["bins"]} == {
        f"{v:g}": sum(1 for r in data if r["score"] == v) for v in range(0, 6)}
    assert {b["label"]: b["rejected"] for b in h["bins"]} == {f"{v:g}": rejected.count(v) for v in range(0, 6)}
    assert h["n"] == len(data) and h["min"] == 1 and h["rejected_n"] == len(rejected)  # the kept figures
    # dedup: one cluster of the kept record plus its three copies
    d = p["dedup_clusters"]["dedup"]
    assert d["clusters"] == 1 and d["removed"] == 3 and d["sizes"] == {4: 1}
    # knob coverage: experts/poem only on the two short records, all filtered out
    cov = p["knob_coverage"]
    assert "audience=experts | style=poem" in cov["lost"]
    assert cov["combinations_generated"] == cov["combinations_kept"] + len(cov["lost"]) == 5
    # diversity against a direct computation
    words = [w.lower() for t in texts for w in __import__("re").findall(r"\w+", t)]
    assert p["diversity"]["distinct_1"] == round(len(set(words)) / len(words), 4)
    # proxy words, counted by hand in the planted text: Kobak delve, intricate, showcasing, underscores,
    # crucial, pivotal (6); Liang intricate, meticulous, commendable, innovative (4)
    c = ProxyCounter()
    assert c.add(PROXY_TEXT) == 10
    assert sum(v for k, v in c.counts.items() if k[0] == "kobak2024") == 6
    assert p["proxy_words"]["per_1000_words"]["kobak2024"] > 5 * reference()["per_1000_words"]["kobak2024"]
    kinds = Counter(x["kind"] for x in p["samples"])
    assert kinds["kept"] == len(data) and kinds["rejected"] == planted["zero_score"] + 6


@pytest.mark.slow  # reads every stdlib docstring: ~30 s of CPU
def test_shipped_reference_is_what_compute_reference_gives():
    """The shipped reference figures are reproducible from the real text on this machine."""
    ref = reference()
    assert ref["words"] > 300_000
    got = compute_reference()
    assert got["per_1000_words"] == ref["per_1000_words"] and got["words"] == ref["words"]


def test_helpers_on_planted_cases():
    assert reason_group("near-duplicate of read-000012 (minhash: 0.91)") == "near-duplicate of <id>"
    counts: dict = {}
    count_knobs([json.dumps({"knobs": {"a": "x"}}), None, json.dumps({"knobs": {"a": "x", "b": 2}})], counts)
    assert counts["a"]["x"] == 2 and counts["b"][2] == 1
    h = histogram([0.1, 0.2, 0.9, 1.0], bins=2)
    assert [b["count"] for b in h["bins"]] == [2, 2]
    h = histogram([0.1, 0.2], bins=2, rejected=[0.9, 1.0, None])  # bins over both, counted apart
    assert [(b["count"], b["rejected"]) for b in h["bins"]] == [(2, 0), (0, 2)]
    assert h["n"] == 2 and h["max"] == 0.2 and h["rejected_n"] == 2
    d = Diversity()
    d.add("the cat the cat")
    r = d.result()
    assert r["distinct_1"] == 0.5 and r["distinct_2"] == round(2 / 3, 4)
    rep, varied = Diversity(), Diversity()
    for i in range(50):
        rep.add("the same sentence again and again")
        varied.add(f"sentence {i} talks about topic {i * 7919 % 1000} in words {i ** 2}")
    assert rep.result()["compression_ratio"] > varied.result()["compression_ratio"]


def test_show_rejects_filters_by_stage_and_reason(demo):
    run, planted = demo
    all_rej = list_rejects(run)
    assert len(all_rej) == 6 + planted["zero_score"]
    p = smolforge("show", str(run), "--rejects", "--stage", "dedup", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 3 and {r["stage"] for r in rows} == {"dedup"}
    assert all(r["reason"].startswith("exact duplicate of read-") for r in rows)
    p = smolforge("show", str(run), "--rejects", "--reason", "contaminated: humaneval", "--json")
    rows = json.loads(p.stdout)
    assert len(rows) == 1 and "HumanEval/0" in rows[0]["reason"] and "has_close_elements" in rows[0]["record"]["text"]
    p = smolforge("show", str(run), "--rejects", "--stage", "long_enough")
    assert p.returncode == 0 and "Too short." in p.stdout and "2 rejected record(s) shown" in p.stdout


def test_show_prints_stage_summaries(tmp_path):
    """A stage's `summary` (manifest) is printed by `show`."""
    run, _ = build_run(tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["stages"][2]["summary"] = {"agreement": 0.75, "hist": {"1": 3}}
    (run / "manifest.json").write_text(json.dumps(m))
    p = smolforge("show", str(run))
    assert p.returncode == 0, p.stderr
    assert "dedup summary: agreement=0.75" in p.stdout and '{"1": 3}' in p.stdout


def test_show_and_report_profile_the_generated_column_not_the_source(tmp_path):
    """A question/answer run whose `text` holds the long source paragraphs and whose
    `generate` writes short answers: `show`, the report's figures and the card
    describe `answer` (the recipe's declared output), `--column text` the source;
    an unknown `--column` is refused (exit 2)."""
    from faultproxy import canned_server, user_text

    sources = [" ".join(["source"] * 60) + f" {i}" for i in range(3)]
    with canned_server(lambda body: "answer " + user_text(body).split()[-1]) as server:
        recipe = write_recipe(tmp_path / "qa.yaml", {"name": "qa", "stages": [
            {"type": "items", "items": [{"text": t, "topic": f"t{i}"} for i, t in enumerate(sources)]},
            {"type": "generate", "template": "Ask about {{ topic }}", "output": "answer",
             "prompt_column": "question", "max_tokens": 8, "temperature": 0,
             "engine": {"type": "openai", "base_url": server.url, "model": "m", "max_retries": 0}}]})
        run = sf.run(str(recipe), tmp_path / "run")
    answers = run.data().column("answer").to_pylist()
    assert answers == [f"answer t{i}" for i in range(3)]
    p = profile(run.path, tokenizer="approx")
    assert p["column"] == "answer" and list(p["columns"]) == ["answer"]
    assert p["lengths"]["max"] == max(-(-len(a) // 4) for a in answers)  # not the 300-character sources
    assert p["diversity"]["openings"][0] == {"opening": "answer t0", "count": 1}
    assert profile(run.path, tokenizer="approx", column="text")["lengths"]["min"] >= 60
    shown = smolforge("show", str(run.path))
    assert shown.returncode == 0, shown.stderr
    assert "column answer: 3 texts, 2 words on average" in shown.stdout
    assert "column text" not in shown.stdout
    assert "column text: 3 texts, 61 words" in smolforge("show", str(run.path), "--column", "text").stdout
    r = smolforge("report", str(run.path), "--tokenizer", "approx")
    assert r.returncode == 0, r.stderr
    html = (run.path / "report.html").read_text()
    assert "length of answer in tokens" in html and "length of text" not in html
    bad = smolforge("report", str(run.path), "--column", "nope")
    assert bad.returncode == 2 and "--column nope: no such column" in bad.stderr
