"""The embedded llama.cpp engine on the real bundled SmolLM2-135M, few tokens each."""

from __future__ import annotations

import json

import pytest

from smolforge.engines.base import Request, Response
from smolforge.engines.llamacpp import LlamaCppEngine
from smolforge.registry import engines

POEMS = [
    f"Write a short poem about {t}."
    for t in ["rain", "the moon", "a cat", "coffee", "mountains", "bees", "trains", "clocks"]
]


def chat(text: str, **kw) -> Request:
    return Request(messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture(scope="module")
def engine():
    eng = LlamaCppEngine(n_parallel=8, n_ctx=512)
    yield eng
    eng.close()


def test_registered():
    assert engines.get("llamacpp") is LlamaCppEngine
    assert LlamaCppEngine().identity()["sha256"]


def test_chat_and_raw_completion(engine):
    chat_r, raw_r = engine.generate(
        [
            chat("What is 2+2?", max_tokens=16),
            Request(prompt="The capital of France is", max_tokens=6),
        ]
    )
    for r in (chat_r, raw_r):
        assert r.error is None and r.completions[0].text.strip()
        assert r.prompt_tokens > 0
    # Chat: the template wraps the message, so there are many more prompt tokens
    # than words, and the model answers then emits its end-of-turn token.
    assert chat_r.prompt_tokens > 20
    c = chat_r.completions[0]
    assert c.finish_reason == "stop" and 0 < c.tokens < 16 and "<|im_end|>" not in c.text
    # Raw: a plain continuation, no template (5 prompt tokens).
    assert raw_r.prompt_tokens < 10 and "Paris" in raw_r.completions[0].text


def test_length_and_token_counts(engine):
    (r,) = engine.generate([chat("Write a long essay about the sea.", max_tokens=5)])
    (c,) = r.completions
    assert c.finish_reason == "length" and c.tokens == 5 and r.completion_tokens == 5


def test_greedy_independent_of_batch_size():
    """The resume test relies on this: what shares a batch must not change greedy text.
    Requests through 1, 3 and 8 slots (so continuous batching and slot compaction run)."""
    reqs = (
        [chat(p, max_tokens=12) for p in POEMS[:5]]
        + [Request(prompt="Once upon a time, a fox", max_tokens=12)]
        + [chat("Name a color.", max_tokens=6, n=4)]  # n > n_parallel for the 1- and 3-slot runs
    )
    texts = {}
    for p in (1, 3, 8):
        eng = LlamaCppEngine(n_parallel=p, n_ctx=256)
        try:
            out = eng.generate(reqs)
            stats = dict(eng._rt.stats)
        finally:
            eng.close()
        assert all(r.error is None for r in out)
        texts[p] = [[c.text for c in r.completions] for r in out]
        if p == 8:  # the chat prompts share the system prompt: decoded once, then copied
            assert stats["prompt_shared"] > 5 * 20
            total = sum(r.prompt_tokens for r in out)
            assert stats["prompt_decoded"] + stats["prompt_shared"] == total
    assert len(texts[1][-1]) == 4 and len(set(texts[1][-1])) == 1  # greedy: n identical samples
    assert texts[1] == texts[3] == texts[8]


def test_thread_tuner_follows_measured_speed(engine):
    """Thread choice adapts to step times (contention cannot be staged reliably in a
    test, so the times are given); the real context takes the thread counts."""
    from smolforge.engines.llamacpp_batch import ThreadTuner

    engine.generate([chat("Hi.", max_tokens=2)])
    tuner = ThreadTuner(engine._rt.ctx, [2, 1])
    assert tuner.token_cap() == ThreadTuner.PROBE_TOKENS  # first steps are small probes

    def step(speed: dict[int, float], n: int = 32) -> int:
        tuner.before(n)
        used = tuner.options[tuner.used]
        tuner.after(n / speed[used], n)
        return used

    contended = {2: 15.0, 1: 150.0}
    assert [step(contended) for _ in range(2)] == [2, 1]  # probe both, switch
    assert tuner.options[tuner.cur] == 1
    idle = {2: 290.0, 1: 150.0}
    used = [step(idle) for _ in range(40)]
    assert used[-1] == 2 and used.count(1) < 15  # explored, found 2 faster again
    assert tuner.token_cap() is None
    if engine._rt.tuner is not None:  # the engine's own tuner sets its choice again
        engine._rt.tuner.used = -1


def test_seeded_sampling_reproducible_and_batch_independent(engine):
    req = chat("Tell me a story about a dragon.", max_tokens=16, temperature=1.0, seed=11)
    (alone,) = engine.generate([req])
    others = [chat(p, max_tokens=12, temperature=0.7, seed=i) for i, p in enumerate(POEMS[:5])]
    crowded = engine.generate(others[:2] + [req] + others[2:])[2]
    assert alone.completions[0].text == crowded.completions[0].text
    seeds = engine.generate(
        [
            chat("Tell me a story about a dragon.", max_tokens=16, temperature=1.0, seed=s)
            for s in (12, 13, 14)
        ]
    )
    assert len({alone.completions[0].text, *(r.completions[0].text for r in seeds)}) > 1


def test_n_samples_share_prompt_and_match_single_seeds(engine):
    """Sample k of a request seeded s equals the lone sample of seed s+k: the prompt KV
    copied to the other sequences is the same as decoding the prompt again."""
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.95, top_k=50)
    (multi,) = engine.generate([chat("Invent a name for a cat.", n=3, seed=100, **kw)])
    singles = engine.generate(
        [chat("Invent a name for a cat.", seed=100 + k, **kw) for k in range(3)]
    )
    assert len(multi.completions) == 3
    assert [c.text for c in multi.completions] == [r.completions[0].text for r in singles]
    assert len({c.text for c in multi.completions}) > 1
    assert multi.completion_tokens == sum(c.tokens for c in multi.completions)


def test_repeat_penalty_changes_greedy_choice(engine):
    prompt = "1, 1, 1, 1, 1, 1, 1, 1,"
    plain, penal = engine.generate(
        [
            Request(prompt=prompt, max_tokens=8),
            Request(prompt=prompt, max_tokens=8, repeat_penalty=1.8),
        ]
    )
    assert "1, 1" in plain.completions[0].text  # greedy keeps repeating
    assert penal.error is None and penal.completions[0].tokens > 0
    assert "1, 1" not in penal.completions[0].text


def test_stop_strings(engine):
    prompt = Request(prompt="1, 2, 3, 4, 5,", max_tokens=16)
    (free,) = engine.generate([prompt])
    full = free.completions[0].text
    assert len(full) > 8
    stop = full[4:7]
    (cut,) = engine.generate([Request(prompt=prompt.prompt, max_tokens=16, stop=["@@", stop])])
    c = cut.completions[0]
    assert c.text == full[: full.index(stop)] and stop not in c.text
    assert c.finish_reason == "stop"


def test_json_schema_output(engine):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reqs = [
        chat(q, max_tokens=16, json_schema=schema)
        for q in ("What is 2+2?", "How many legs has a dog?")
    ] + [chat("Pick a number.", max_tokens=16, json_schema=schema, temperature=0.8, seed=3)]
    for r in engine.generate(reqs):
        assert r.error is None and r.completions[0].finish_reason == "stop"
        data = json.loads(r.completions[0].text)
        assert set(data) == {"answer"} and isinstance(data["answer"], int)


def test_bad_schema_and_too_long_prompt_fail_alone(engine):
    done: list[tuple[int, Response]] = []
    reqs = [
        chat("Say hi.", max_tokens=4),
        Request(prompt="word " * 700, max_tokens=4),
        chat("Say hi.", max_tokens=4, json_schema={"type": "object", "$ref": "#/nowhere"}),
        Request(prompt="The sky is", max_tokens=4),
    ]
    out = engine.generate(reqs, on_response=lambda i, r: done.append((i, r)))
    assert out[0].error is None and out[3].error is None
    assert out[0].completions[0].text and out[3].completions[0].text
    assert "prompt has 70" in out[1].error and "context is 512" in out[1].error
    assert out[1].prompt_tokens > 512
    assert out[2].error
    assert sorted(i for i, _ in done) == [0, 1, 2, 3]  # each reported exactly once
    assert all(out[i] is r for i, r in done)


def test_empty_batch(engine):
    assert engine.generate([]) == []
