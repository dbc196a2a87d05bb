"""Greedy output of the embedded llama.cpp engine is a pure function of (model, request).

Exact resume relies on it: a resumed shard gets some responses from the cache and decodes
the rest in a smaller batch, after other work in the process. So the same 64 greedy
requests must give the same texts in one call, shuffled, in 8 calls of 8, one at a time,
mixed with unrelated requests, on a cold and on a warm engine, with other thread counts
and slot counts. Several share a long prompt prefix (> 256 tokens: the KV cells they
attend over reach 512, where llama.cpp's CPU kernels for a lone sequence change; > 64
tokens: the prefill chunks where flash attention would switch to its tiled kernel).
"""

from __future__ import annotations

import random

import pytest

from smolforge.engines.base import Request
from smolforge.engines.llamacpp import LlamaCppEngine

pytestmark = pytest.mark.slow  # six passes of 64 requests on the real model

RUBRIC = (
    "Below is an extract from a web page. Evaluate whether the page has a high educational "
    "value and could be useful in an educational setting for teaching from primary school to "
    "grade school levels using the additive 5-point scoring system described below. Points "
    "are accumulated based on the satisfaction of each criterion: add 1 point if the extract "
    "provides some basic information relevant to educational topics, even if it includes "
    "some irrelevant or non-academic content like advertisements. Add another point if the "
    "extract addresses certain elements pertinent to education but does not align closely "
    "with educational standards. Award a third point if the extract is appropriate for "
    "educational use and introduces key concepts relevant to school curricula. Grant a "
    "fourth point if the extract is highly relevant and beneficial for educational purposes "
    "for a level not higher than grade school, exhibiting a clear and consistent writing "
    "style. Bestow a fifth point if the extract is outstanding in its educational value. "
) * 2
TOPICS = ["cats", "rivers", "fractions", "stars", "bread", "rain", "volcanoes", "bees"]
TASKS = ["Name one fact about {}.", "Write a title about {}.", "Describe {} in five words.",
         "Ask a question about {}."]
EXTRACTS = [f"Extract: {t} are discussed in this page, with examples for children."
            for t in TOPICS]


def requests64() -> list[Request]:
    reqs = [
        Request(messages=[{"role": "user", "content": task.format(t)}], max_tokens=12)
        for task in TASKS
        for t in TOPICS
    ]  # 32 short chat prompts
    reqs += [
        Request(messages=[{"role": "user", "content": f"{RUBRIC}\n{e}\nScore:"}], max_tokens=12)
        for e in EXTRACTS
    ]  # 8 sharing a ~330-token prefix
    reqs += [Request(prompt=f"{RUBRIC}\n{e}\nThe score is", max_tokens=12) for e in EXTRACTS[:4]]
    reqs += [Request(prompt=f"The {t} were", max_tokens=12) for t in TOPICS]  # raw, 4 tokens
    reqs += [
        Request(messages=[{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": f"One word for {t}?"}], max_tokens=12)
        for t in TOPICS
    ]
    reqs += [Request(prompt=f"{i} + {i} =", max_tokens=12) for i in range(4)]
    assert len(reqs) == 64
    return reqs


def texts(engine: LlamaCppEngine, reqs: list[Request]) -> list[str]:
    out = engine.generate(reqs)
    assert all(r.error is None for r in out), [r.error for r in out if r.error]
    return [r.completions[0].text for r in out]


@pytest.fixture(scope="module")
def reference() -> list[str]:
    """The 64 requests in one call of a cold engine."""
    eng = LlamaCppEngine(n_parallel=32, n_ctx=512)
    try:
        ref = texts(eng, requests64())
    finally:
        eng.close()
    # A real run: most requests generate text, and the prompts are not all answered alike.
    assert sum(bool(t) for t in ref) >= 48 and len(set(ref)) >= 32
    return ref


@pytest.fixture(scope="module")
def warm() -> LlamaCppEngine:
    eng = LlamaCppEngine(n_parallel=32, n_ctx=512)
    eng.generate([Request(prompt=f"{RUBRIC} Unrelated warm-up", max_tokens=4)])
    yield eng
    eng.close()


def test_shuffled_and_in_batches_of_8_on_a_warm_engine(reference, warm):
    reqs = requests64()
    order = list(range(64))
    random.Random(3).shuffle(order)
    shuffled = texts(warm, [reqs[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(64)] == reference
    batched: list[str] = []
    for k in range(0, 64, 8):
        batched += texts(warm, reqs[k : k + 8])
    assert batched == reference


def test_mixed_with_unrelated_requests(reference, warm):
    """Unrelated greedy and sampled requests (longer ones too) share the batches."""
    reqs = requests64()
    noise = [
        Request(messages=[{"role": "user", "content": f"Tell a story about {t}."}],
                max_tokens=8, temperature=0.9, seed=i)
        for i, t in enumerate(TOPICS)
    ] + [Request(prompt=f"{RUBRIC} Something else entirely: {t}", max_tokens=3) for t in TOPICS]
    mixed = []
    for i, r in enumerate(reqs):
        mixed.append(r)
        if i % 4 == 0:
            mixed.append(noise[(i // 4) % len(noise)])
    out = texts(warm, mixed)
    mine = [t for t, r in zip(out, mixed) if r.temperature == 0 and r.max_tokens == 12]
    assert mine == reference


def test_one_at_a_time_cold_two_threads(reference):
    """A lone sequence (with and without the long prefix) on a cold engine with 2 fixed
    threads: where llama.cpp would split a lone token's attention across the threads."""
    reqs = requests64()
    subset = [0, 33, 39, 40, 44, 60]
    eng = LlamaCppEngine(n_parallel=4, n_ctx=512, n_threads=2)
    try:
        alone = [texts(eng, [reqs[i]])[0] for i in subset]
    finally:
        eng.close()
    assert alone == [reference[i] for i in subset]


def test_other_slot_count_one_thread_cold(reference):
    """12 slots and 1 thread: continuous batching, slot compaction and prefix copies all
    happen at other points than in the reference (32 slots, adaptive threads)."""
    eng = LlamaCppEngine(n_parallel=12, n_ctx=512, n_threads=1)
    try:
        assert texts(eng, requests64()) == reference
    finally:
        eng.close()
