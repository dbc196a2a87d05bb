"""The engine protocol: a batch of requests in, one response per request out.

Every LLM stage talks to an engine through `Engine.generate`; engines own batching
and concurrency, so stages never loop over prompts one at a time. A failed request
is a `Response` with `error` set, never an exception that sinks the whole batch.
A failure that no re-run can cure (a prompt longer than the context, a schema with
no grammar) says so: its error starts with UNSERVABLE, and it is a final reject
like any quality reject, not an engine error that the next run retries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


def chat(user: Any, system: Any = None, assistant: Any = None) -> list[dict[str, str]]:
    """OpenAI-style chat messages: an optional system turn, the user turn, an optional
    assistant turn (values as text). The one place smolforge builds a conversation."""
    msgs = [{"role": "system", "content": str(system)}] if system else []
    msgs.append({"role": "user", "content": str(user)})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": str(assistant)})
    return msgs


@dataclass
class Request:
    """One prompt: chat `messages` or a raw `prompt` (no chat template)."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    n: int = 1
    json_schema: dict[str, Any] | None = None
    # Top alternatives (with log-probabilities) to return for each generated token, as
    # OpenAI's `top_logprobs`; 0: none. Left out of cache keys while 0.
    logprobs: int = 0

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of `messages` or `prompt`")

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters, as recorded in provenance."""
        d = asdict(self)
        del d["messages"], d["prompt"]
        return d


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length"
    tokens: int = 0
    # With `Request.logprobs`: one entry per generated token, {"token": text,
    # "logprob": its log-probability, "top": {token text: logprob} of the most likely
    # alternatives (same-text tokens merged)}. None: not asked for, or the server
    # gave none.
    top_logprobs: list[dict[str, Any]] | None = None


UNSERVABLE = "unservable request"


def unservable(message: str) -> str:
    """The error text of a request that fails the same way every time it is sent.
    (Without "; ", which separates the failures a reject reason lists.)"""
    return f"{UNSERVABLE}: {message}".replace("; ", ", ")


@dataclass
class Response:
    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    error: str | None = None
    cached: bool = False
    # For a request with a JSON schema: how it was enforced ("grammar" for llama.cpp,
    # "json_schema" / "json_object" / "prompt" for a server, "guided" for vLLM).
    json_mode: str | None = None

    @property
    def retryable(self) -> bool:
        """A failure that the next run may cure (server down, timeout): not UNSERVABLE."""
        return self.error is not None and not self.error.startswith(UNSERVABLE)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.completions)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("cached")
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> Response:
        d = json.loads(s)
        d["completions"] = [Completion(**c) for c in d["completions"]]
        return cls(**d, cached=True)


OnResponse = Callable[[int, Response], None]


class Engine(BaseModel):
    """Base of all engines. Fields are the engine's configuration (validated from
    the recipe); runtime state (a loaded model, an HTTP client) lives in private
    attributes created lazily on first use, so a recipe can be validated without
    loading anything."""

    model_config = ConfigDict(extra="forbid")
    type: str
    # The teacher's licence id (e.g. apache-2.0, llama3.1): recorded in every record's
    # meta and checked by `show`, the report and the dataset card (smolforge.licences).
    # Default: the GGUF file's metadata, else the built-in table of model families.
    licence: str | None = Field(None, validation_alias=AliasChoices("licence", "license"),
                                description="licence of the model's outputs (default: from GGUF metadata or the model family)")
    # Ray executor only (docs/executors.md): actors holding this engine, and what each
    # asks of the cluster. Not part of identity(), so cache keys do not change.
    replicas: int = Field(1, ge=1, description="--executor ray: engine actors (each loads the model once)")
    num_cpus: float = Field(1.0, ge=0, description="--executor ray: CPUs each replica reserves")
    num_gpus: float = Field(0.0, ge=0, description="--executor ray: GPUs each replica reserves")

    # Provenance and cache keys depend on these; subclasses set `kind`.
    kind: ClassVar[str] = "base"

    def identity(self) -> dict[str, Any]:
        """What determines this engine's outputs (for cache keys and provenance):
        the kind, the model and, for a local file, its content hash."""
        return {"kind": self.kind, "model": getattr(self, "model", None)}

    def describe(self) -> dict[str, Any]:
        """Engine configuration safe to write to a run directory (no secrets)."""
        return self.model_dump()

    def generate(
        self, requests: Sequence[Request], on_response: OnResponse | None = None
    ) -> list[Response]:
        """Generate for every request; call `on_response(i, response)` as each one
        finishes (the cache and progress bars hang on it)."""
        raise NotImplementedError

    def usage(self) -> dict[str, Any] | None:
        """Requests, tokens and cost so far, for the manifest (None: not tracked)."""
        return None

    def close(self) -> None:
        """Release models, threads and connections."""

    def check_available(self) -> None:
        """Raise `EngineUnavailable` (with the install line) when this engine cannot
        run in this environment at all, e.g. its package is not installed. Called
        before any stage runs, so a missing package does not cost a run directory
        with the source read and then a failure. Loads nothing."""

    def attach_run_dir(self, run_dir: Path) -> None:
        """The run directory this engine serves (a managed server writes its log there);
        called by `StageContext.engine`. Most engines ignore it."""


_NEW_DEFAULTS: dict[str, Any] = {"logprobs": 0}


def request_key(identity: dict[str, Any], req: Request) -> str:
    """Cache key: a hash of everything that determines a response."""
    payload = {"engine": identity, "messages": req.messages, "prompt": req.prompt}
    payload.update(req.sampling())
    for name, default in _NEW_DEFAULTS.items():  # fields added later: old keys stay valid
        if payload.get(name) == default:
            del payload[name]
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class EngineUnavailable(RuntimeError):
    """The engine cannot serve any request at all (wrong URL, wrong key, server
    down): stop the run with one clear message instead of rejecting every record."""
