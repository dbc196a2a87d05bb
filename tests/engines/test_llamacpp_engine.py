"""The embedded llama.cpp engine on the real bundled SmolLM2-135M, few tokens each."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from smolforge.engines.base import Request, Response
from smolforge.engines.llamacpp import LlamaCppEngine
from smolforge.engines.models import resolve_model_path
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


def test_registered_and_identified_by_file_content():
    assert engines.get("llamacpp") is LlamaCppEngine
    path = resolve_model_path("smollm2-135m")
    want = hashlib.sha256(path.read_bytes()).hexdigest()  # independent of the memoised hash
    assert LlamaCppEngine().identity() == {
        "kind": "llamacpp", "model": "smollm2-135m", "sha256": want
    }


def test_chat_goes_through_the_template_raw_does_not(engine):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    chat_r, raw_r = engine.generate(
        [
            Request(messages=msgs, max_tokens=16),
            Request(prompt="The capital of France is", max_tokens=6),
        ]
    )
    assert chat_r.error is None and raw_r.error is None
    rt = engine._rt
    # Prompt tokens: exactly the rendered ChatML template for chat, the bare text for raw.
    rendered = engine.chat_template().render(msgs, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert chat_r.prompt_tokens == len(rt.tokenize(rendered, add_special=True))
    assert raw_r.prompt_tokens == len(rt.tokenize("The capital of France is", add_special=True))
    for r, limit in ((chat_r, 16), (raw_r, 6)):
        c = r.completions[0]
        # "length" exactly when the limit was reached; "stop" means an end-of-turn token came
        # first, which is not counted and not in the text.
        assert 0 < c.tokens <= limit and (c.finish_reason == "length") == (c.tokens == limit)
        assert c.finish_reason in ("stop", "length") and "<|im_end|>" not in c.text
        assert r.completion_tokens == c.tokens


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
    plain, neutral, penal = engine.generate(
        [
            Request(prompt=prompt, max_tokens=8),
            Request(prompt=prompt, max_tokens=8, repeat_penalty=1.0),
            Request(prompt=prompt, max_tokens=8, repeat_penalty=1.8),
        ]
    )
    assert all(r.error is None and r.completions[0].tokens == 8 for r in (plain, neutral, penal))
    assert neutral.completions[0].text == plain.completions[0].text  # 1.0 is no penalty
    assert penal.completions[0].text != plain.completions[0].text


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


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "mid", "high"]}},
    "required": ["ok", "level"],
    "additionalProperties": False,
}


def valid(data: object) -> bool:
    """SCHEMA checked by hand (no validator library in the environment)."""
    return (
        isinstance(data, dict)
        and set(data) == {"ok", "level"}
        and isinstance(data["ok"], bool)
        and data["level"] in ("low", "mid", "high")
    )


def test_json_schema_output_parses_and_follows_the_schema(engine):
    """The grammar allows only JSON of this schema and ends it: every answer, greedy or
    sampled, parses, validates and finishes with "stop" well inside max_tokens."""
    assert not valid({"ok": 1, "level": "low"}) and not valid({"ok": True})  # the checker bites
    reqs = [
        chat(q, max_tokens=48, json_schema=SCHEMA)
        for q in ("Is the sky green?", "Rate this: 'cats sleep a lot'.")
    ] + [chat("Pick one.", max_tokens=48, json_schema=SCHEMA, temperature=1.0, seed=s)
         for s in (3, 4)]
    for r in engine.generate(reqs):
        c = r.completions[0]
        assert r.error is None and c.finish_reason == "stop" and c.tokens < 48
        assert valid(json.loads(c.text)), c.text


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
    assert out[0].completions[0].tokens > 0 and out[3].completions[0].tokens > 0
    assert "prompt has 70" in out[1].error and "context is 512" in out[1].error
    assert out[1].prompt_tokens > 512
    assert out[2].error.startswith("unservable request: json_schema cannot be turned into a grammar")
    assert not out[1].retryable and not out[2].retryable  # deterministic: no re-run can cure them
    assert "#/nowhere" in out[2].error
    assert sorted(i for i, _ in done) == [0, 1, 2, 3]  # each reported exactly once
    assert all(out[i] is r for i, r in done)


def test_empty_batch(engine):
    assert engine.generate([]) == []


def _gguf_with_chat_template(src: Path, dst: Path, template: str) -> None:
    """Copy a GGUF, replacing its `tokenizer.chat_template` (GGUF v3 layout, written here from
    the spec, github.com/ggml-org/ggml/blob/master/docs/gguf.md, not with llama.cpp)."""
    data = src.read_bytes()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF" and version == 3
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    off = 24

    def string(o: int) -> tuple[bytes, int]:
        (n,) = struct.unpack_from("<Q", data, o)
        return data[o + 8 : o + 8 + n], o + 8 + n

    def skip_value(t: int, o: int) -> int:
        if t == 8:
            return string(o)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, o)
            o += 12
            for _ in range(n):
                o = skip_value(et, o)
            return o
        return o + sizes[t]

    kvs, alignment = [], 32
    for _ in range(n_kv):
        start = off
        key, off = string(off)
        (t,) = struct.unpack_from("<I", data, off)
        end = skip_value(t, off + 4)
        if key == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", data, off + 4)
        if key != b"tokenizer.chat_template":
            kvs.append(data[start:end])
        off = end
    t_start = off
    for _ in range(n_tensors):
        _, off = string(off)
        (n_dims,) = struct.unpack_from("<I", data, off)
        off += 4 + 8 * n_dims + 4 + 8
    tensor_infos = data[t_start:off]
    data_start = -(-off // alignment) * alignment
    key, value = b"tokenizer.chat_template", template.encode()
    kvs.append(struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(value)) + value)
    head = struct.pack("<4sIQQ", b"GGUF", 3, n_tensors, len(kvs)) + b"".join(kvs) + tensor_infos
    head += b"\0" * (-len(head) % alignment)
    with open(dst, "wb") as f:
        f.write(head)
        f.write(memoryview(data)[data_start:])


def test_non_bundled_gguf_uses_its_own_chat_template(tmp_path):
    """`model: PATH` to another GGUF: the chat template is read from that file's metadata
    (here a Llama-3-style one written into a copy of the bundled model), not ChatML."""
    llama3 = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"
    )
    path = tmp_path / "other.gguf"
    _gguf_with_chat_template(resolve_model_path("smollm2-135m"), path, llama3)
    eng = LlamaCppEngine(model=str(path), n_parallel=2, n_ctx=256)
    try:
        assert eng.identity()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        tmpl = eng.chat_template()
        assert tmpl.source == llama3
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "}]
        want = (
            "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        assert tmpl.render(msgs, add_generation_prompt=True) == want  # bos_token: the GGUF's
        (r,) = eng.generate([Request(messages=msgs, max_tokens=3)])
        assert r.error is None and r.completions[0].tokens > 0
        # The BOS text starts the render, so no second BOS is added.
        assert r.prompt_tokens == len(eng._rt.tokenize(want, add_special=False))
    finally:
        eng.close()


def test_unservable_requests_are_final_rejects_not_retried_engine_errors(tmp_path):
    """A prompt longer than the context fails the same way on every run: the real
    bundled engine files it as a final reject with its reason, so the run is done and
    exits 0, instead of exit 1 "re-run to retry" forever."""
    from conftest import smolforge, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "ctx", "seed": 1,
        "engine": {"type": "llamacpp", "model": "smollm2-135m", "n_ctx": 128, "n_threads": 1},
        "stages": [{"type": "items", "items": ["Say hi.", "word " * 300]},
                   {"type": "generate", "template": "{{ text }}", "output": "answer", "max_tokens": 4}]})
    out = tmp_path / "run"
    for _attempt in range(2):  # the re-run retries nothing
        r = smolforge("run", str(recipe), "--out", str(out), "--quiet", env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        assert "retry" not in r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "done" and manifest["engine_failures"]["records"] == 0
    show = json.loads(smolforge("show", str(out), "--json").stdout)
    assert {g["kind"] for g in show["rejects"]} == {"quality"}
    reasons = [g["example"] for g in show["rejects"]]
    assert [g["count"] for g in show["rejects"]] == [1] and "unservable request: prompt has" in reasons[0]
    assert "context is 128 tokens per sequence" in reasons[0]


def test_is_engine_error_tells_unservable_requests_from_retryable_failures():
    from smolforge.stages.base import is_engine_error

    assert not is_engine_error("engine error: llamacpp: unservable request: prompt has 600 tokens, context is 128")
    assert is_engine_error("engine error: t1 (llamacpp): unservable request: too long; t2 (openai): HTTP 500")
    assert is_engine_error("engine error (openai): HTTP 400: bad request")
    assert not is_engine_error("empty output")
