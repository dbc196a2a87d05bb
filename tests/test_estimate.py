"""`smolforge estimate`: against the seed's figures for a 22B model (Mistral-Small-22B's
published config.json, written here), against the `gguf` reader that ships with
llama.cpp (same parameter count and shape as our own header parser) on the bundled
GGUF, and SmolLM2-135M's published config against its own GGUF."""

from __future__ import annotations

import json

import pytest
from conftest import smolforge

from smolforge.engines.models import resolve_model_path
from smolforge.train.estimate import (
    GPUS,
    estimate,
    load_shape,
    params_from_config,
    read_gguf,
    shape_from_gguf,
)

# mistralai/Mistral-Small-Instruct-2409 config.json (22B), as published.
MISTRAL_SMALL_22B = {
    "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 6144,
    "initializer_range": 0.02, "intermediate_size": 16384, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 48, "num_hidden_layers": 56,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 32768,
}
# HuggingFaceTB/SmolLM2-135M-Instruct config.json (the fields that size it).
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "tie_word_embeddings": True,
    "vocab_size": 49152, "attention_bias": False,
}


def test_22b_matches_the_seed_figures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_SMALL_22B))
    r = estimate(load_shape(str(tmp_path)), context=4096, batch=1)  # a model folder
    assert 22.0e9 < r["model"]["params"] < 22.5e9  # published: 22.2B
    w = {row["precision"]: row["weights_gb"] for row in r["rows"]}
    assert 43.5 <= w["fp16/bf16"] <= 45  # seed: about 44 GB
    assert 22 <= w["int8"] <= 24         # seed: 22-24 GB
    assert 17 <= w["6-bit"] <= 18        # seed: 17-18 GB
    assert 11 <= w["4-bit"] <= 12        # seed: 11-12 GB
    # KV cache: 2 x 56 layers x 8 heads x 128 x 2 bytes = 229,376 bytes per token.
    assert r["kv_bytes_per_token"] == 229_376
    kv = r["rows"][0]["kv_cache_gb"]
    assert kv == pytest.approx(229_376 * 4096 / 1e9, abs=0.01)
    fits = {row["precision"]: row["fits"] for row in r["rows"]}
    assert "H100 80GB" in fits["fp16/bf16"] and "A100 40GB" not in fits["fp16/bf16"]
    assert "RTX 4090 24GB" in fits["4-bit"] and "T4 16GB" in fits["4-bit"]
    assert "RTX 4090 24GB" not in fits["int8"] and "A100 40GB" in fits["int8"]
    # Batch and context scale the KV cache linearly, and push the card list up.
    big = estimate(load_shape(str(tmp_path / "config.json")), context=32768, batch=8)
    assert big["rows"][0]["kv_cache_gb"] == pytest.approx(kv * 64, rel=1e-3)
    assert big["rows"][0]["fits"] == [g for g, m in GPUS.items() if m >= 141]  # 104.6 GB
    assert big["rows"][3]["fits"] == [g for g, m in GPUS.items() if m >= 80]  # 71.9 GB


def test_gguf_header_against_llama_cpp_reader_and_published_config():
    path = resolve_model_path("smollm2-135m")
    meta, tensors = read_gguf(path)
    shape = shape_from_gguf(path)
    gguf = pytest.importorskip("gguf", reason="llama.cpp's gguf-py is not installed")
    ref = gguf.GGUFReader(path)
    assert sum(int(t.n_elements) for t in ref.tensors) == shape.params
    assert {t.name: [int(d) for d in t.shape] for t in ref.tensors} == tensors
    field = ref.fields["llama.attention.head_count_kv"]
    assert int(field.parts[field.data[0]][0]) == meta["llama.attention.head_count_kv"] == shape.kv_heads
    # Side by side: the published config gives the same count as the file's tensors.
    assert params_from_config(SMOLLM2_135M) == shape.params == 134_515_008
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (30, 3, 64)
    r = estimate(shape, context=1024, batch=2)
    assert r["kv_bytes_per_token"] == 23_040  # the llamacpp engine's "about 23 KB per token"
    assert r["as_stored"]["file_type"] == "Q4_1"
    assert r["as_stored"]["weights_gb"] == pytest.approx(path.stat().st_size / 1e9, abs=1e-3)


def test_cli(tmp_path):
    r = smolforge("estimate", "smollm2-135m", "--context", "2048", "--batch", "4", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["context"], rep["batch"]) == (2048, 4)
    assert rep["rows"][0]["kv_cache_gb"] == pytest.approx(23_040 * 2048 * 4 / 1e9, abs=0.01)
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_SMALL_22B))
    r = smolforge("estimate", str(tmp_path / "config.json"), "--context", "8192")
    assert r.returncode == 0, r.stderr
    assert "22.247B parameters" in r.stdout and "A100 80GB, H100 80GB and up" in r.stdout
    (tmp_path / "bad.json").write_text('{"hidden_size": 8}')
    r = smolforge("estimate", str(tmp_path / "bad.json"))
    assert r.returncode == 1 and "config.json has no 'num_attention_heads'" in r.stderr
