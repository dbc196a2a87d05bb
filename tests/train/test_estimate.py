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
    format_report,
    load_shape,
    param_counts,
    params_from_config,
    read_gguf,
    shape_from_config,
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

# Mixture-of-experts and attention variants: the fields of each model's published
# config.json that size it (values as published on its Hugging Face model page).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "decoder_sparse_step": 1,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144,
    "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": True,
    "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "use_sliding_window": False,
    "vocab_size": 151936,
}
QWEN3_235B_A22B = {**QWEN3_30B_A3B,  # Qwen3-235B-A22B
    "hidden_size": 4096, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "num_attention_heads": 64, "num_hidden_layers": 94,
    "max_window_layers": 94}
QWEN15_MOE_A27B = {
    "architectures": ["Qwen2MoeForCausalLM"], "decoder_sparse_step": 1, "hidden_size": 2048,
    "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21,
    "model_type": "qwen2_moe", "moe_intermediate_size": 1408, "norm_topk_prob": False,
    "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
    "num_hidden_layers": 24, "num_key_value_heads": 16, "shared_expert_intermediate_size": 5632,
    "sliding_window": 32768, "tie_word_embeddings": False, "use_sliding_window": False,
    "vocab_size": 151936,
}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "vocab_size": 32000,
}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False,
    "first_k_dense_replace": 3, "hidden_size": 7168, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "tie_word_embeddings": False, "topk_group": 4,
    "v_head_dim": 128, "vocab_size": 129280,
}
DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "first_k_dense_replace": 1, "hidden_size": 2048,
    "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "model_type": "deepseek_v2", "moe_intermediate_size": 1408, "moe_layer_freq": 1,
    "n_routed_experts": 64, "n_shared_experts": 2, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "tie_word_embeddings": False, "v_head_dim": 128, "vocab_size": 102400,
}
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "experts_per_token": 4,
    "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "initial_context_length": 4096,
    "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
    "num_local_experts": 32, "rope_theta": 150000, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "vocab_size": 201088,
}
GPT_OSS_120B = {**GPT_OSS_20B, "num_hidden_layers": 36, "num_local_experts": 128,
                "layer_types": ["sliding_attention", "full_attention"] * 18}
LLAMA4_SCOUT = {  # meta-llama/Llama-4-Scout-17B-16E: the language model's text_config
    "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
    "text_config": {"model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
                    "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
                    "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 16,
                    "num_experts_per_tok": 1, "interleave_moe_layer_step": 1, "vocab_size": 202048,
                    "max_position_embeddings": 10485760, "tie_word_embeddings": False}}
LLAMA4_MAVERICK = {**LLAMA4_SCOUT, "text_config": {**LLAMA4_SCOUT["text_config"], "num_local_experts": 128,
                                                   "interleave_moe_layer_step": 2}}

# name: (config, published total, published active, active quoted with the input
# embedding). Sources: the models' cards and papers (Qwen3 and Qwen1.5-MoE blog/cards,
# Mistral's Mixtral announcement, DeepSeek-V2/V3 papers, OpenAI's gpt-oss model card:
# 20.91B/3.61B and 116.83B/5.13B).
PUBLISHED = {
    "Qwen3-30B-A3B": (QWEN3_30B_A3B, 30.5e9, 3.3e9, True),
    "Qwen3-235B-A22B": (QWEN3_235B_A22B, 235e9, 22e9, True),
    "Qwen1.5-MoE-A2.7B": (QWEN15_MOE_A27B, 14.3e9, 2.7e9, True),
    "Mixtral-8x7B": (MIXTRAL_8X7B, 46.7e9, 12.9e9, False),
    "DeepSeek-V3": (DEEPSEEK_V3, 671e9, 37e9, False),
    "DeepSeek-V2-Lite": (DEEPSEEK_V2_LITE, 15.7e9, 2.4e9, False),
    "gpt-oss-20b": (GPT_OSS_20B, 20.91e9, 3.61e9, False),
    "gpt-oss-120b": (GPT_OSS_120B, 116.83e9, 5.13e9, False),
    # Meta quotes 109B / 400B total with the vision encoder (under 1B), 17B active
    "Llama-4-Scout": (LLAMA4_SCOUT, 109e9, 17e9, True),
    "Llama-4-Maverick": (LLAMA4_MAVERICK, 400e9, 17e9, True),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_moe_total_and_active_match_published_counts(name):
    """Total within 1.5% and active within 3% of the published figures (Qwen and Meta
    quote the activated count with the input embedding, the others without)."""
    cfg, total, active, with_embedding = PUBLISHED[name]
    got_total, got_active = param_counts(cfg)
    text = cfg.get("text_config", cfg)
    if with_embedding:
        got_active += text["vocab_size"] * text["hidden_size"]
    assert got_total == pytest.approx(total, rel=0.015), name
    assert got_active == pytest.approx(active, rel=0.03), name


def test_qwen3_moe_is_not_read_as_dense(tmp_path):
    """The reported case: Qwen3-30B-A3B came out as 3.34B, 6.68 GB at fp16, "fits a
    12 GB card"; it is 30.5B (61 GB at fp16)."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_30B_A3B))
    r = smolforge("estimate", str(tmp_path), "--context", "4096", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    fp16 = rep["rows"][0]
    assert 60.5 < fp16["weights_gb"] < 61.5 and "RTX 4070 12GB" not in fp16["fits"]
    assert fp16["fits"] == [g for g, m in GPUS.items() if m >= 80]
    assert rep["model"]["active_params"] == pytest.approx(3.04e9, rel=0.01)
    r = smolforge("estimate", str(tmp_path / "config.json"))
    assert "30.532B parameters (3.042B active per token)" in r.stdout, r.stdout


def test_mla_and_sliding_window_kv_cache():
    """DeepSeek's MLA caches one latent of kv_lora_rank + rope dims per layer (not 128
    heads of K and V); gpt-oss's sliding layers stop at their 128-token window."""
    v3 = shape_from_config(DEEPSEEK_V3, "v3")
    assert v3.kv_bytes_per_token == 61 * (512 + 64) * 2
    assert estimate(v3, context=1000)["rows"][0]["kv_cache_gb"] == pytest.approx(
        61 * 576 * 2 * 1000 / 1e9, abs=0.01)
    oss = shape_from_config(GPT_OSS_20B, "oss")
    assert (oss.sliding_layers, oss.sliding_window) == (12, 128)
    per_layer_token = 2 * 8 * 64 * 2
    assert oss.kv_bytes(100) == 24 * per_layer_token * 100  # inside the window: all grow
    assert oss.kv_bytes(131072) == per_layer_token * (12 * 131072 + 12 * 128)
    dense = shape_from_config(MISTRAL_SMALL_22B, "m")
    assert dense.active_params is None and dense.sliding_layers == 0
    assert shape_from_config(QWEN15_MOE_A27B, "q").sliding_layers == 0  # use_sliding_window off


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


def test_moe_and_mla_gguf_written_by_llama_cpps_writer(tmp_path):
    """A mixture-of-experts GGUF (deepseek2 layout: routed `*_exps`, shared `*_shexp`
    experts, an MLA latent), written by llama.cpp's own gguf writer: total from the
    tensors, active with 2 of 8 routed experts and without the input embedding, KV
    cache of one latent (kv_lora_rank + rope dims) per layer."""
    gguf = pytest.importorskip("gguf", reason="llama.cpp's gguf-py is not installed")
    import numpy as np

    path = tmp_path / "moe.gguf"
    w = gguf.GGUFWriter(str(path), "deepseek2")
    w.add_block_count(2)
    w.add_embedding_length(16)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_context_length(1024)
    w.add_uint32("deepseek2.expert_count", 8)
    w.add_uint32("deepseek2.expert_used_count", 2)
    w.add_uint32("deepseek2.attention.kv_lora_rank", 32)
    w.add_uint32("deepseek2.rope.dimension_count", 8)
    shapes = {"token_embd.weight": (100, 16), "output.weight": (100, 16), "output_norm.weight": (16,)}
    for b in range(2):
        shapes.update({f"blk.{b}.attn_q.weight": (64, 16), f"blk.{b}.attn_kv_a_mqa.weight": (40, 16),
                       f"blk.{b}.attn_output.weight": (16, 64), f"blk.{b}.ffn_gate_inp.weight": (8, 16),
                       f"blk.{b}.ffn_gate_shexp.weight": (12, 16)})
        shapes.update({f"blk.{b}.ffn_{p}_exps.weight": (8, 12, 16) for p in ("gate", "up", "down")})
    for name, shape in shapes.items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shape = shape_from_gguf(path)
    total = sum(int(np.prod(s)) for s in shapes.values())
    routed = 2 * 3 * 8 * 12 * 16
    assert shape.params == total
    assert shape.active_params == total - routed + routed * 2 // 8 - 100 * 16
    assert shape.kv_latent == 40 and shape.kv_bytes_per_token == 2 * 40 * 2
    assert "MLA latent 40" in format_report(estimate(shape, context=64))
