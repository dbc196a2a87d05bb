"""ROUGE-L and the novelty filter against references that share no code with
smolforge.text.rouge: a dynamic-programming LCS written here, `rouge-score`'s tokenizer
and scorer (Google's reference package), and the naive "compare with every kept
text" loop, on random token sequences and on real sentences."""

from __future__ import annotations

import ast
import inspect
import json
import random

import pytest
from rouge_score import rouge_scorer, tokenizers

from smolforge.text.rouge import NoveltyFilter, lcs_length, rouge_l, tokenize

ref_tokenize = tokenizers.DefaultTokenizer(use_stemmer=False).tokenize


def ref_lcs(a: list, b: list) -> int:
    """Textbook O(len(a) * len(b)) dynamic programme, one row at a time."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def ref_f1(lcs: int, m: int, n: int) -> float:
    """ROUGE-L F1 (beta = 1): 2PR / (P + R) with P = lcs/m, R = lcs/n, i.e. 2 lcs / (m + n)."""
    return 2.0 * lcs / (m + n) if lcs else 0.0


def naive_filter(texts: list[str], threshold: float) -> list[tuple[int, float] | None]:
    """For each text in order: None if kept, else (index among kept, score) of the
    most similar kept text (the first one on ties)."""
    kept: list[list[str]] = []
    out: list[tuple[int, float] | None] = []
    for t in texts:
        toks = ref_tokenize(t)
        scores = [ref_f1(ref_lcs(toks, k), len(toks), len(k)) for k in kept]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i)) if scores else None
        if best is not None and scores[best] >= threshold:
            out.append((best, scores[best]))
        else:
            out.append(None)
            kept.append(toks)
    return out


def real_sentences(n: int = 400) -> list[str]:
    """First sentences of docstrings of a few standard-library modules."""
    import collections
    import json as json_mod
    import pathlib
    import textwrap

    out: list[str] = []
    for mod in (collections, json_mod, pathlib, textwrap, random, ast, inspect):
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
                first = " ".join(ast.get_docstring(node).split()).split(". ")[0]
                if len(first.split()) >= 3:
                    out.append(first)
    return out[:n]


def test_lcs_matches_dynamic_programming_on_random_sequences():
    rng = random.Random(0)
    for _ in range(1500):
        alphabet = rng.choice([2, 4, 30])
        a = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 140))]
        b = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 140))]
        assert lcs_length(a, b) == ref_lcs(a, b)
    assert lcs_length([], [1]) == 0 and rouge_l("", "anything") == 0.0


def test_rouge_l_matches_rouge_score_package():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sents = real_sentences(120)
    rng = random.Random(1)
    pairs = [(rng.choice(sents), rng.choice(sents)) for _ in range(300)]
    pairs += [("Don't re-use the cache_dir; it's 2x faster!", "do not reuse the cache dir, it is 2x faster")]
    for a, b in pairs:
        assert tokenize(a) == ref_tokenize(a)
        assert rouge_l(a, b) == pytest.approx(scorer.score(b, a)["rougeL"].fmeasure, abs=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
def test_novelty_filter_matches_naive_loop_on_random_texts(threshold):
    rng = random.Random(int(threshold * 10))
    words = list("abcdefgh")
    # Lengths up to 140 tokens: several 64-bit words per query, carries between them.
    texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(0, rng.choice([8, 70, 140]))))
             for _ in range(80)]
    nf = NoveltyFilter(threshold)
    got = [nf.add_if_novel(t) for t in texts]
    want = naive_filter(texts, threshold)
    assert [None if m is None else (m.index, m.score) for m in got] == want
    assert nf.n == sum(w is None for w in want)


def test_novelty_filter_on_real_sentences_with_near_duplicates():
    sents = real_sentences(300)
    rng = random.Random(2)
    texts = list(sents)
    for s in rng.sample(sents, 60):  # planted near-duplicates: one word changed or dropped
        w = s.split()
        i = rng.randrange(len(w))
        w[i:i + 1] = [] if rng.random() < 0.5 else ["new"]
        texts.append(" ".join(w))
    rng.shuffle(texts)
    nf = NoveltyFilter(0.7)
    got = [nf.add_if_novel(t) for t in texts]
    want = naive_filter(texts, 0.7)
    assert [None if m is None else (m.index, m.score) for m in got] == want
    assert sum(w is not None for w in want) >= 50
    # The bound prunes: exact LCS ran on a small share of the pairs.
    assert nf.pairs_lcs < nf.pairs_bounded / 20


def test_check_does_not_add_and_unknown_words_never_match():
    nf = NoveltyFilter(0.7)
    assert nf.add("Write a poem about the sea.") == 0
    m = nf.check("write a poem about the sea")
    assert m is not None and m.index == 0 and m.score == 1.0 and len(nf) == 1
    assert nf.check("zebra quantum marmalade") is None
    with pytest.raises(ValueError):
        NoveltyFilter(0.0)
    json.dumps(m.__dict__)  # plain values, fit for a drop reason
