"""`smolforge estimate MODEL`: GPU memory for a model's weights and KV cache, and the
cards it fits.

Read from a GGUF file's header (parameter count from its tensor shapes, attention
shape from `<arch>.*` metadata; the bundled `smollm2-135m` by name) or a Hugging Face
`config.json` (a file, a model folder, or a hub id when a network exists). No weights
are loaded, nothing heavier than the standard library is imported.

Weights: parameters x bits per weight. Quantised formats store one fp16 scale per
group of 64 weights, +0.25 bit per weight (GPTQ/AWQ with group 128 and a zero point
come to the same; GGUF's Q8_0 is 8.5 bpw, Q6_K 6.56, Q4_K_M about 4.85, a little more).
Mixture-of-experts configs (Qwen-MoE, DeepSeek V2/V3, Mixtral, gpt-oss, GLM field names)
give total and active-per-token parameters (`param_counts`).
KV cache: 2 (K and V) x layers x KV heads x head dim x context x batch x 2 bytes (fp16);
MLA caches one latent per layer, sliding-window layers stop at their window.
A card fits when weights + KV cache <= 90% of its memory (vLLM's default
`gpu_memory_utilization`; the rest is activations and the CUDA context).
All sizes in decimal GB (1e9 bytes), as cards are sold.

Checked against the seed's figures for a 22B model (Mistral-Small-22B's published
config): 44.5 GB fp16, 22.9 int8, 17.4 6-bit, 11.8 4-bit (tests/train/test_estimate.py).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

COMMANDS = ("estimate",)

GB = 1e9
GROUP_OVERHEAD_BITS = 16 / 64  # one fp16 scale per 64 weights
PRECISIONS: dict[str, float] = {
    "fp16/bf16": 16.0,
    "int8": 8 + GROUP_OVERHEAD_BITS,
    "6-bit": 6 + GROUP_OVERHEAD_BITS,
    "4-bit": 4 + GROUP_OVERHEAD_BITS,
}
USABLE = 0.90
# name -> memory in GB (as sold)
GPUS: dict[str, float] = {
    "RTX 4060 8GB": 8, "RTX 4070 12GB": 12, "T4 16GB": 16, "V100 16GB": 16,
    "RTX 4080 16GB": 16, "L4 24GB": 24, "A10 24GB": 24, "RTX 3090 24GB": 24,
    "RTX 4090 24GB": 24, "RTX 5090 32GB": 32, "V100 32GB": 32, "A100 40GB": 40,
    "L40S 48GB": 48, "RTX A6000 48GB": 48, "A100 80GB": 80, "H100 80GB": 80,
    "H200 141GB": 141, "MI300X 192GB": 192,
}


@dataclass
class ModelShape:
    """What memory depends on."""

    source: str
    params: int
    layers: int
    kv_heads: int
    head_dim: int
    max_context: int | None = None
    architecture: str | None = None
    file_bytes: int | None = None  # a GGUF's size as stored (its own quantisation)
    file_type: str | None = None
    active_params: int | None = None  # mixture-of-experts: used per token
    kv_latent: int | None = None  # MLA: one cached latent (+ rope key) per layer and token
    sliding_layers: int = 0  # layers that cache only the last `sliding_window` tokens
    sliding_window: int | None = None

    @property
    def kv_bytes_per_token(self) -> int:
        """fp16 bytes one token adds to the cache while every layer still holds it."""
        if self.kv_latent:
            return self.layers * self.kv_latent * 2
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def kv_bytes(self, context: int) -> int:
        """fp16 KV cache of one sequence of `context` tokens: sliding-window layers
        stop growing at their window."""
        per_layer = self.kv_bytes_per_token // max(self.layers, 1)
        window = min(context, self.sliding_window or context)
        sliding = self.sliding_layers if self.sliding_window else 0
        return per_layer * ((self.layers - sliding) * context + sliding * window)


# ------------------------------------------------------------------------- GGUF

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    if n > 1 << 28:
        raise ValueError("implausible string length in GGUF header")
    return f.read(n).decode("utf-8", "replace")


def _value(f: BinaryIO, vtype: int, keep: bool = True) -> Any:
    if vtype in _SCALAR:
        return _read(f, _SCALAR[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        itype, n = _read(f, "<I"), _read(f, "<Q")
        if itype in _SCALAR and not keep:  # skip big arrays (token lists) cheaply
            f.seek(struct.calcsize(_SCALAR[itype]) * n, os.SEEK_CUR)
            return None
        items = [_value(f, itype, keep) for _ in range(n)]
        return items if keep else None
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(metadata, tensor name -> shape) from a GGUF file's header (format v2/v3:
    https://github.com/ggml-org/ggml/blob/master/docs/gguf.md). Arrays of tokens are
    skipped, not kept."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(f)
            vtype = _read(f, "<I")
            meta[key] = _value(f, vtype, keep=not key.startswith("tokenizer.ggml."))
        tensors: dict[str, list[int]] = {}
        for _ in range(n_tensors):
            name = _string(f)
            dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
            _read(f, "<I"), _read(f, "<Q")  # type, offset
            tensors[name] = dims
    return meta, tensors


def shape_from_gguf(path: str | Path) -> ModelShape:
    meta, tensors = read_gguf(path)
    arch = meta.get("general.architecture", "llama")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    heads = int(get("attention.head_count") or 0)
    embd = int(get("embedding_length") or 0)
    kv = get("attention.head_count_kv", heads)
    kv = max(kv) if isinstance(kv, list) else kv  # per-layer lists (some archs)
    heads = max(heads) if isinstance(heads, list) else heads
    head_dim = int(get("attention.key_length") or (embd // heads if heads else 0))
    params = sum(_prod(d) for d in tensors.values())
    ftype = meta.get("general.file_type")
    active = None
    n_exp, used = int(get("expert_count") or 0), int(get("expert_used_count") or 0)
    if n_exp > 1 and used:  # routed expert tensors are named *_exps; embedding is a lookup
        routed = sum(_prod(d) for n, d in tensors.items() if "_exps." in n)
        embd_rows = _prod(tensors.get("token_embd.weight", [0]))
        tied = "output.weight" not in tensors
        active = params - routed + routed * used // n_exp - (0 if tied else embd_rows)
    latent = get("attention.kv_lora_rank")
    return ModelShape(source=str(path), params=params, layers=int(get("block_count") or 0),
                      kv_heads=int(kv or 0), head_dim=head_dim,
                      max_context=get("context_length"), architecture=arch,
                      file_bytes=Path(path).stat().st_size,
                      file_type=None if ftype is None else _FILE_TYPES.get(ftype, str(ftype)),
                      active_params=active,
                      kv_latent=int(latent) + int(get("rope.dimension_count") or 0) if latent else None)


_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
               10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
               15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


def _prod(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


# ------------------------------------------------------------- Hugging Face config

def _experts(cfg: dict[str, Any]) -> tuple[int, int]:
    """(routed experts, experts used per token) under each family's field names:
    Mixtral/gpt-oss `num_local_experts`, Qwen-MoE/OLMoE `num_experts`, DeepSeek/GLM
    `n_routed_experts`; gpt-oss also writes `experts_per_token`."""
    n = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0
    k = cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or n
    return int(n), int(k)


def _is_moe_layer(cfg: dict[str, Any], i: int, experts: int) -> bool:
    """Which layers hold experts: DeepSeek/GLM keep the first `first_k_dense_replace`
    dense and then every `moe_layer_freq`-th; Qwen-MoE lists `mlp_only_layers` and
    takes every `decoder_sparse_step`-th; Llama 4 every `interleave_moe_layer_step`-th
    (or its `moe_layers`); Mixtral and gpt-oss use experts everywhere."""
    if experts <= 1:
        return False
    if cfg.get("moe_layers") is not None:  # Llama 4 lists them
        return i in cfg["moe_layers"]
    if cfg.get("interleave_moe_layer_step"):  # Llama 4: every step-th layer
        return (i + 1) % int(cfg["interleave_moe_layer_step"]) == 0
    if i < (cfg.get("first_k_dense_replace") or 0) or i in (cfg.get("mlp_only_layers") or ()):
        return False
    if cfg.get("moe_layer_freq"):
        return i % int(cfg["moe_layer_freq"]) == 0
    step = cfg.get("decoder_sparse_step") or 1
    return (i + 1) % int(step) == 0


def _attention_params(cfg: dict[str, Any]) -> int:
    """One layer's attention. Multi-head latent attention (DeepSeek V2/V3, `kv_lora_rank`):
    q through an optional low-rank `q_lora_rank` with its norm, k/v through a shared
    latent of `kv_lora_rank` (+ the decoupled rope key) with its norm, o from
    heads x `v_head_dim`. Otherwise q, k, v, o with biases: q/k/v for Qwen2-family
    configs, q/k/v/o for `attention_bias` (Llama-style, gpt-oss)."""
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("kv_lora_rank"):
        nope, rope = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
        v, kvr, qr = cfg["v_head_dim"], cfg["kv_lora_rank"], cfg.get("q_lora_rank")
        q = (h * qr + qr + qr * heads * (nope + rope)) if qr else h * heads * (nope + rope)
        kv = h * (kvr + rope) + kvr + kvr * heads * (nope + v)
        return q + kv + heads * v * h
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    qwen2 = str(cfg.get("model_type", "")).startswith("qwen2")
    if cfg.get("attention_bias", qwen2):
        attn += heads * hd + 2 * kv * hd + (0 if qwen2 else h)
    return attn


def param_counts(cfg: dict[str, Any]) -> tuple[int, int]:
    """(total, active per token) parameters of a decoder-only transformer from its
    config.json: embeddings, per layer attention (see `_attention_params`), a gated MLP
    (up, gate, down) or, in mixture-of-experts layers, the routed experts (each of
    `moe_intermediate_size`, else `intermediate_size`), the router, and shared experts
    (DeepSeek `n_shared_experts` of the expert size; Qwen-MoE one of
    `shared_expert_intermediate_size` with its gate; Llama 4 one of the expert size,
    its dense layers of `intermediate_size_mlp`), two norms per layer, the final
    norm and an untied LM head. Active counts the experts used per token and leaves
    out the input embedding (a row lookup), as DeepSeek, Mistral and OpenAI quote it;
    Qwen's "activated" figures include it (+ vocab x hidden). DeepSeek V3's
    multi-token-prediction layer (`num_nextn_predict_layers`) is not counted, as in
    its published 671B."""
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    h, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    experts, per_tok = _experts(cfg)
    expert_inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    inter = cfg.get("intermediate_size_mlp") or cfg["intermediate_size"]  # dense layers (Llama 4)
    shared = 3 * h * expert_inter * (cfg.get("n_shared_experts") or 0)
    if cfg.get("shared_expert_intermediate_size"):
        shared += 3 * h * cfg["shared_expert_intermediate_size"] + h  # + its sigmoid gate
    if str(cfg.get("model_type", "")).startswith("llama4"):  # one shared expert per MoE layer
        shared += 3 * h * expert_inter
    attn = _attention_params(cfg)
    total = active = 0
    for i in range(layers):
        if _is_moe_layer(cfg, i, experts):
            one = 3 * h * expert_inter
            total += attn + one * experts + h * experts + shared + 2 * h
            active += attn + one * per_tok + h * experts + shared + 2 * h
        else:
            total += attn + 3 * h * inter + 2 * h
            active += attn + 3 * h * inter + 2 * h
    tied = cfg.get("tie_word_embeddings", False)
    total += vocab * h * (1 if tied else 2) + h
    active += vocab * h + h  # the LM head (tied or not); the embedding lookup is not counted
    return total, active


def params_from_config(cfg: dict[str, Any]) -> int:
    """Total parameters from a config.json (see `param_counts`)."""
    return param_counts(cfg)[0]


def _sliding_layers(cfg: dict[str, Any]) -> int:
    """Layers whose KV cache holds only the last `sliding_window` tokens: those marked
    "sliding_attention" in `layer_types` (gpt-oss, Gemma 3, recent transformers), or
    all but every `sliding_window_pattern`-th (Gemma 3 configs without layer_types)."""
    if not cfg.get("sliding_window"):
        return 0
    if cfg.get("layer_types"):
        return sum(t == "sliding_attention" for t in cfg["layer_types"])
    pattern = cfg.get("sliding_window_pattern")
    if pattern:
        return cfg["num_hidden_layers"] - cfg["num_hidden_layers"] // int(pattern)
    return 0


def shape_from_config(cfg: dict[str, Any], source: str) -> ModelShape:
    text = cfg.get("text_config", cfg)
    try:
        heads = text["num_attention_heads"]
        total, active = param_counts(cfg)
        mla = text.get("kv_lora_rank")
        return ModelShape(
            source=source, params=total, layers=text["num_hidden_layers"],
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            max_context=text.get("max_position_embeddings"),
            architecture=(cfg.get("architectures") or [cfg.get("model_type")])[0],
            active_params=active if _experts(text)[0] > 1 else None,
            kv_latent=(mla + text["qk_rope_head_dim"]) if mla else None,
            sliding_layers=_sliding_layers(text),
            sliding_window=(text.get("sliding_window") or None) if _sliding_layers(text) else None)
    except KeyError as e:
        raise ValueError(f"{source}: config.json has no {e.args[0]!r} (a decoder-only "
                         "transformer config is needed: hidden_size, num_hidden_layers, "
                         "num_attention_heads, intermediate_size, vocab_size)") from None


def load_shape(model: str) -> ModelShape:
    """A bundled model name, a .gguf file, a config.json (or a folder holding one), or
    a Hugging Face hub id (downloads config.json only; needs a network)."""
    from smolforge.engines.models import BUNDLED, resolve_model_path

    if model in BUNDLED:
        return shape_from_gguf(resolve_model_path(model))
    p = Path(model).expanduser()
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if (p / "config.json").is_file():
            p = p / "config.json"
        elif ggufs:
            p = ggufs[0]
        else:
            raise FileNotFoundError(f"{model}: no config.json or .gguf file in this folder")
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return shape_from_gguf(p)
        try:
            cfg = json.loads(p.read_text())
        except ValueError as e:
            raise ValueError(f"{model}: neither a GGUF file nor a JSON config ({e})") from None
        return shape_from_config(cfg, str(p))
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return shape_from_config(_hub_config(model), f"hf:{model}")
    raise FileNotFoundError(f"{model}: no such file, folder or bundled model "
                            f"(bundled: {', '.join(BUNDLED)})")


def _hub_config(repo: str) -> dict[str, Any]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise RuntimeError(f"{repo}: reading a hub config needs huggingface_hub "
                           "(pip install huggingface_hub), or pass a local config.json") from None
    try:
        path = hf_hub_download(repo, "config.json")
    except Exception as e:  # offline, gated, unknown repo
        raise RuntimeError(f"{repo}: cannot fetch config.json from the hub ({type(e).__name__}: "
                           f"{e}); pass a local config.json or GGUF instead") from None
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------- estimate

def estimate(shape: ModelShape, context: int | None = None, batch: int = 1) -> dict[str, Any]:
    """Memory per precision (weights, KV cache, total) and the cards each fits."""
    ctx = context or shape.max_context or 4096
    kv = shape.kv_bytes(ctx) * batch / GB
    rows = []
    for name, bits in PRECISIONS.items():
        weights = shape.params * bits / 8 / GB
        total = weights + kv
        rows.append({"precision": name, "bits_per_weight": bits, "weights_gb": round(weights, 2),
                     "kv_cache_gb": round(kv, 2), "total_gb": round(total, 2),
                     "fits": [g for g, mem in GPUS.items() if total <= USABLE * mem]})
    out: dict[str, Any] = {
        "model": asdict(shape), "context": ctx, "batch": batch,
        "kv_bytes_per_token": shape.kv_bytes_per_token, "usable_fraction": USABLE,
        "rows": rows,
    }
    if shape.file_bytes:
        stored = shape.file_bytes / GB
        out["as_stored"] = {"file_type": shape.file_type, "weights_gb": round(stored, 3),
                            "total_gb": round(stored + kv, 3),
                            "fits": [g for g, mem in GPUS.items() if stored + kv <= USABLE * mem]}
    return out


# -------------------------------------------------------------------------- CLI

def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("estimate", help="GPU memory for a model (weights at fp16/int8/6/4-bit + "
                       "KV cache) and the cards it fits")
    e.add_argument("model", help="bundled name (smollm2-135m), .gguf file, config.json or model "
                   "folder, or a hub id (needs a network)")
    e.add_argument("--context", type=int, help="tokens per sequence (default: the model's maximum)")
    e.add_argument("--batch", type=int, default=1, help="sequences held at once (default: 1)")
    e.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or (args.context is not None and args.context < 1):
        raise ValueError("--context and --batch must be positive")
    report = estimate(load_shape(args.model), args.context, args.batch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def format_report(r: dict[str, Any]) -> str:
    m = r["model"]
    active = (f" ({m['active_params'] / 1e9:.3f}B active per token)"
              if m.get("active_params") else "")
    attn = (f"MLA latent {m['kv_latent']}" if m.get("kv_latent")
            else f"{m['kv_heads']} KV heads x {m['head_dim']}")
    if m.get("sliding_layers") and m.get("sliding_window"):
        attn += f", {m['sliding_layers']} sliding-window layers ({m['sliding_window']} tokens)"
    lines = [
        f"{m['source']} ({m['architecture']}): {m['params'] / 1e9:.3f}B parameters{active}, "
        f"{m['layers']} layers, {attn}",
        f"KV cache (fp16): {r['kv_bytes_per_token'] / 1e3:.1f} KB per token; "
        f"context {r['context']} x batch {r['batch']}",
        "",
        f"{'precision':<11} {'bits':>5} {'weights':>9} {'KV':>8} {'total':>9}  fits (<= 90% of memory)",
    ]
    for row in r["rows"]:
        fits = _fits_text(row["fits"])
        lines.append(f"{row['precision']:<11} {row['bits_per_weight']:>5.2f} {row['weights_gb']:>7.2f}GB "
                     f"{row['kv_cache_gb']:>6.2f}GB {row['total_gb']:>7.2f}GB  {fits}")
    if "as_stored" in r:
        s = r["as_stored"]
        lines.append(f"{'as stored':<11} {s['file_type'] or '?':>5} {s['weights_gb']:>7.3f}GB "
                     f"{'':>8} {s['total_gb']:>7.3f}GB  {_fits_text(s['fits'])} (the GGUF file itself)")
    return "\n".join(lines)


def _fits_text(fits: list[str]) -> str:
    """Cards are listed by memory, so a model that fits one fits every larger one."""
    if not fits:
        return "none of the listed cards (the largest: " + list(GPUS)[-1] + ")"
    same = [g for g in fits if GPUS[g] == GPUS[fits[0]]]
    return f"{', '.join(same)} and up ({len(fits)} of {len(GPUS)} cards)"
