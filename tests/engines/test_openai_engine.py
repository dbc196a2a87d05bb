"""The `openai` engine against a real llama.cpp server, with faults injected by a
proxy of our own between them (429 + Retry-After, 500, dropped connections, slow
answers). The llama.cpp server answers one request at a time, so max_tokens stays
tiny. What depends on one server's quirks (rejecting OpenAI's json_schema form,
ignoring `n`) is played by the proxy's canned answers, so the tests assert the
engine's behaviour, not a server version's."""

from __future__ import annotations

import json
import pickle
import time
from collections import Counter

import pytest
from faultproxy import Fault, FaultProxy, always, plan
from servers import free_port

from smolforge.context import build_engine
from smolforge.engines.base import EngineUnavailable, Request, Response, request_key
from smolforge.engines.cache import CacheStats, ResponseCache, cached_generate
from smolforge.engines.openai import OpenAIEngine

SECRET = "sk-test-0123456789-s3cr3t"
KEY_ENV = "SMOLFORGE_TEST_OPENAI_KEY"


def chat(text: str, **kw) -> Request:
    return Request(messages=[{"role": "user", "content": text}], max_tokens=kw.pop("max_tokens", 4),
                   **kw)


def ask(text: str, **kw) -> Request:
    """A raw-prompt request: far fewer prompt tokens than a chat one, so the one-at-a-time
    server stays quick."""
    return Request(prompt=text, max_tokens=kw.pop("max_tokens", 2), **kw)


def engine(base_url: str, **kw) -> OpenAIEngine:
    kw.setdefault("retry_base_delay", 0.05)
    return OpenAIEngine(type="openai", base_url=base_url, model="smollm2", **kw)


@pytest.fixture
def proxy(llama_server):
    with FaultProxy(llama_server) as p:
        yield p


def test_chat_and_completions_against_real_server(llama_server):
    eng = build_engine({"type": "openai", "base_url": llama_server, "model": "smollm2",
                        "price_input": 1.0, "price_output": 2.0})
    assert isinstance(eng, OpenAIEngine) and eng.base_url == llama_server + "/v1"
    try:
        seen: list[int] = []
        out = eng.generate(
            [chat("Say hello."), Request(prompt="The capital of France is", max_tokens=4)],
            on_response=lambda i, r: seen.append(i),
        )
        assert sorted(seen) == [0, 1]
        for r in out:
            assert r.error is None, r.error
            (c,) = r.completions
            assert 0 < c.tokens <= 4 and r.prompt_tokens > 0
            assert (c.finish_reason == "length") == (c.tokens == 4)
        u = eng.usage()
        assert u["requests"] == 2 and u["failed"] == 0 and u["retries"] == 0
        p = sum(r.prompt_tokens for r in out)
        c = sum(r.completion_tokens for r in out)
        assert (u["prompt_tokens"], u["completion_tokens"]) == (p, c)
        assert u["cost_usd"] == pytest.approx((p * 1.0 + c * 2.0) / 1e6)
        # An engine survives pickling (Ray actors) and works on the other side.
        clone = pickle.loads(pickle.dumps(eng))
        again = clone.generate([Request(prompt="The capital of France is", max_tokens=4)])
        assert again[0].completions[0].text == out[1].completions[0].text
        clone.close()
    finally:
        eng.close()


def test_json_schema_response_format(llama_server, proxy):
    schema = {"title": "Answer", "type": "object",
              "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    req = chat("Is the sky blue? Answer in JSON.", max_tokens=8, json_schema=schema)
    # llama-cpp-python's server takes {"type": "json_object", "schema": ...}: the
    # grammar makes the answer valid JSON of the schema.
    eng = engine(llama_server, schema_format="json_object")
    try:
        (r,) = eng.generate([req])
        assert r.error is None, r.error
        assert isinstance(json.loads(r.completions[0].text)["ok"], bool)
    finally:
        eng.close()
    # The OpenAI form, against a server that rejects it with a 500 (as some do): the
    # request carries the schema in OpenAI's shape, the failure is a per-request
    # error after the retries, and nothing raises.
    proxy.reset(lambda n, a, body: Fault.http(500)
                if body.get("response_format", {}).get("type") == "json_schema" else None)
    eng = engine(proxy.url, max_retries=1)
    try:
        (r,) = eng.generate([req])
    finally:
        eng.close()
    assert r.error is not None and r.error.startswith("HTTP 500 after 2 attempts")
    assert [s.body["response_format"] for s in proxy.seen] == [
        {"type": "json_schema", "json_schema": {"name": "Answer", "schema": schema}}] * 2


def test_sampling_fields_and_n_fan_out(proxy):
    proxy.reset(always(Fault.canned("one choice")))  # a server that ignores `n`
    eng = engine(proxy.url)
    try:
        plain, tuned = eng.generate([
            ask("plain"),
            ask("tuned", top_k=5, min_p=0.1, repeat_penalty=1.2, stop=["\n"], n=2,
                 temperature=0.7, seed=11),
        ])
    finally:
        eng.close()
    assert plain.error is None and tuned.error is None
    bodies = {s.prompt: [] for s in proxy.seen}
    for s in proxy.seen:
        bodies[s.prompt].append(s.body)
    (b,) = bodies["plain"]
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty", "n", "stop",
                "response_format"} & set(b)
    assert b["temperature"] == 0.0 and b["max_tokens"] == 2 and b["seed"] == 0
    assert b["prompt"] == "plain" and "messages" not in b
    first = bodies["tuned"][0]
    assert (first["top_k"], first["min_p"], first["repetition_penalty"], first["stop"],
            first["n"], first["temperature"]) == (5, 0.1, 1.2, ["\n"], 2, 0.7)
    # The server ignored n: the engine asks again for the missing sample, reseeded.
    assert [c.text for c in tuned.completions] == ["one choice"] * 2
    assert [bd["seed"] for bd in bodies["tuned"]] == [11, 12]


def test_faults_every_request_completes_or_fails_once(proxy):
    faults = {
        "p-429": [Fault.http(429, retry_after=1)],
        "p-500": [Fault.http(500)],
        "p-drop": [Fault.drop()],
        "p-slow": [Fault.slow(4.0)],
        "p-500x2": [Fault.http(500), Fault.http(503)],
        "p-dead": [Fault.http(500)] * 10,
        "p-gone": [Fault.drop()] * 10,
        "p-bad": [Fault.http(400)],
    }
    prompts = list(faults) + [f"p-ok{i}" for i in range(6)]
    proxy.reset(plan(faults))
    eng = engine(proxy.url, concurrency=4, timeout=3.0, max_retries=3)
    calls: Counter = Counter()
    try:
        out = eng.generate([ask(p) for p in prompts],
                           on_response=lambda i, r: calls.update([i]))
    finally:
        eng.close()

    assert calls == Counter(range(len(prompts)))  # every request answered, once
    by_prompt: dict[str, Response] = dict(zip(prompts, out, strict=True))
    failed = {p for p, r in by_prompt.items() if r.error is not None}
    assert failed == {"p-dead", "p-gone", "p-bad"}
    for r in out:
        assert (r.error is None) == bool(r.completions)
    assert by_prompt["p-dead"].error.startswith("HTTP 500 after 4 attempts")
    assert by_prompt["p-gone"].error.startswith("connection error after 4 attempts")
    assert by_prompt["p-bad"].error.startswith("HTTP 400:")  # not retried
    assert proxy.attempts["p-bad"] == 1 and proxy.attempts["p-dead"] == 4
    # No prompt was answered by the real server more than once, and failed ones never.
    for p in prompts:
        assert proxy.delivered[p] == (0 if p in failed else 1), p
    # Retry-After: 1 was honoured.
    t429 = proxy.times("p-429")
    assert len(t429) == 2 and t429[1] - t429[0] >= 0.95
    # The slow answer timed out on the client and was retried.
    assert proxy.attempts["p-slow"] >= 2
    assert eng.usage()["failed"] == 3


def test_wrong_url_raises_engine_unavailable_quickly():
    eng = OpenAIEngine(type="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m")
    t0 = time.monotonic()
    try:
        with pytest.raises(EngineUnavailable, match="cannot connect.*server is running"):
            eng.generate([chat(f"q{i}") for i in range(50)])
    finally:
        eng.close()
    # Default backoff would spend 1 + 2 + 4 s retrying each request.
    assert time.monotonic() - t0 < 5


def test_api_key_from_named_env_var_sent_as_bearer_never_written(proxy, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    eng = engine(proxy.url, api_key_env=KEY_ENV)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    try:
        (r,) = cached_generate(eng, cache, [ask("key check")], CacheStats())
        assert r.error is None
    finally:
        eng.close()
        cache.close()
    assert proxy.seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    for text in (json.dumps(eng.describe()), json.dumps(eng.identity()), repr(eng),
                 eng.model_dump_json(), json.dumps(eng.usage())):
        assert SECRET not in text
    assert KEY_ENV in json.dumps(eng.describe())
    for f in tmp_path.rglob("*"):
        assert SECRET.encode() not in f.read_bytes(), f


def test_wrong_key_and_missing_key_stop_early(proxy, monkeypatch):
    proxy.reset(lambda n, a, b: Fault.http(401))
    monkeypatch.setenv(KEY_ENV, SECRET)
    eng = engine(proxy.url, api_key_env=KEY_ENV)
    try:
        with pytest.raises(EngineUnavailable) as exc:
            eng.generate([chat(f"k{i}") for i in range(20)])
    finally:
        eng.close()
    assert "HTTP 401" in str(exc.value) and f"${KEY_ENV}" in str(exc.value)
    assert SECRET not in str(exc.value)
    assert set(proxy.attempts.values()) == {1}  # a 401 is not worth retrying

    proxy.reset()
    monkeypatch.delenv(KEY_ENV)
    eng = engine(proxy.url, api_key_env=KEY_ENV)
    with pytest.raises(EngineUnavailable, match=f"{KEY_ENV}.*not set"):
        eng.generate([chat("no key")])
    eng.close()
    assert proxy.seen == []


def test_server_failing_everything_mid_run_stops_the_run(proxy):
    eng = engine(proxy.url, max_retries=0, fail_fast_after=3, concurrency=2)
    try:
        assert eng.generate([ask("warm")])[0].error is None
        proxy.reset(always(Fault.http(503)))
        with pytest.raises(EngineUnavailable, match="3 requests in a row.*HTTP 503"):
            eng.generate([chat(f"m{i}") for i in range(30)])
        assert len(proxy.seen) < 30
        # A recovered server is usable again by the same engine.
        proxy.reset()
        assert eng.generate([ask("warm")])[0].error is None
    finally:
        eng.close()


def test_rpm_limit_spaces_requests(proxy):
    proxy.reset(always(Fault.canned("ok")))
    eng = engine(proxy.url, rpm=600)  # one request every 0.1 s
    try:
        out = eng.generate([chat(f"r{i}") for i in range(5)])
    finally:
        eng.close()
    assert [r.completions[0].text for r in out] == ["ok"] * 5
    t = sorted(s.t for s in proxy.seen)
    assert t[-1] - t[0] >= 0.39


def test_one_broken_request_does_not_sink_the_batch(proxy):
    proxy.reset(lambda n, a, body: Fault.raw(200, '{"choices": ["not an object"]}')
                if body["prompt"] == "broken" else Fault.canned("fine"))
    eng = engine(proxy.url)
    try:
        ok, broken, unsendable = eng.generate(
            [ask("fine"), ask("broken"), ask("x", json_schema={"enum": {1, 2}})])
    finally:
        eng.close()
    assert ok.completions[0].text == "fine"
    # A malformed answer is named as such, with what the server sent (not as the
    # engine's own AttributeError).
    assert broken.error is not None and broken.error.startswith("bad response")
    assert '"choices": ["not an object"]' in broken.error and "AttributeError" not in broken.error
    assert unsendable.error is not None and "not JSON serializable" in unsendable.error


def test_extra_body_is_sent_and_keys_the_cache(proxy):
    """Server-specific fields go into every request body (overriding ours) and into
    the engine's identity, so responses cached without them are not reused."""
    proxy.reset(always(Fault.canned("ok")))
    extra = {"top_k": 3, "cache_prompt": False, "chat_template_kwargs": {"enable_thinking": False}}
    eng = engine(proxy.url, extra_body=extra)
    try:
        (r,) = eng.generate([ask("extra", top_k=9)])
    finally:
        eng.close()
    assert r.error is None
    body = proxy.seen[0].body
    assert {k: body[k] for k in extra} == extra  # top_k 3 replaced the request's 9
    assert eng.identity()["extra_body"] == extra
    plain = engine(proxy.url)
    assert request_key(eng.identity(), ask("extra")) != request_key(plain.identity(), ask("extra"))


def test_tpm_limit_holds_requests_once_a_minutes_tokens_are_used(proxy):
    """tpm=1200 holds 1200 tokens; each answer reports 600. The first two go at
    once; the third waits until the bucket refills at 20 tokens/s to this
    request's estimate (its JSON bytes / 4 + max_tokens, about 22 tokens)."""
    proxy.reset(always(Fault.canned("ok", prompt_tokens=599, completion_tokens=1)))
    eng = engine(proxy.url, tpm=1200, concurrency=1)
    try:
        out = eng.generate([ask("a", max_tokens=1) for _ in range(3)])
    finally:
        eng.close()
    assert [r.completions[0].text for r in out] == ["ok"] * 3
    assert eng.usage()["prompt_tokens"] == 3 * 599
    t = [s.t for s in proxy.seen]
    body = proxy.seen[0].body
    estimate = len(json.dumps(body)) // 4 + 1
    assert t[2] - t[1] >= 0.9 * estimate / 20
