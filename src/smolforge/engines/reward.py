"""A reward model as an engine, so that `rate`'s `method: reward` goes through
`ctx.generate` like every other LLM call: the response cache, usage counts, and a
retry of failed requests on the next run. It is the `openai` engine's HTTP client
(concurrency, retries with backoff, Retry-After, fail-fast when the server is down)
with another path, body and answer.

The protocol is vLLM's pooling API (`vllm serve <reward model> --runner pooling`, e.g.
Skywork-Reward or internlm2-reward): `POST {url}/pooling` with `{"model", "messages"}`
(the server applies the model's chat template), answered with
`{"data": [{"index": 0, "data": <reward>}]}` where the reward is a number, a list (a
classification head: the last entry) or a list per token (the last token's). Any
server that answers the same JSON works. A request is the conversation to score, its
last turn the assistant's; the response's one completion holds the reward as text
(`float(resp.completions[0].text)`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field

from smolforge.engines.base import Completion, Request
from smolforge.engines.openai import OpenAIEngine
from smolforge.registry import engines


def reward_value(data: Any) -> float:
    """The reward in one pooling output: the last number (a list per token: the last token's)."""
    while isinstance(data, list):
        if not data:
            raise ValueError("empty pooling output")
        data = data[-1]
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise ValueError(f"pooling output is not a number: {data!r}")
    return float(data)


@engines.register
class RewardEngine(OpenAIEngine):
    """A reward model behind vLLM's pooling API (module docstring)."""

    kind: ClassVar[str] = "reward"
    bare_host_path: ClassVar[str] = ""  # `url` is the server root
    type: Literal["reward"] = "reward"  # type: ignore[assignment]
    base_url: str = Field(validation_alias=AliasChoices("url", "base_url"),
                          description="server root, e.g. http://127.0.0.1:8000 (`url:`)")
    endpoint: str = Field("/pooling", description="path under url")  # type: ignore[assignment]
    timeout: float = Field(60, gt=0, description="seconds per HTTP attempt")
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight at once")
    max_retries: int = Field(2, ge=0, le=10, validation_alias=AliasChoices("retries", "max_retries"),
                             description="retries after the first attempt (`retries:`)")

    def identity(self) -> dict[str, Any]:
        return {"kind": "reward", "url": self.base_url, "endpoint": self.endpoint, "model": self.model}

    def _endpoint_for(self, req: Request) -> str:
        return "pooling"

    def _body(self, req: Request, kind: str, json_mode: str | None = None) -> dict[str, Any]:
        return {"model": self.model, "messages": req.messages}

    def _url(self, kind: str) -> str:
        return self.base_url + "/" + self.endpoint.lstrip("/")

    def _well_formed(self, data: Any) -> bool:
        return isinstance(data, dict) and isinstance(data.get("data"), list) and bool(data["data"])

    def _choices(self, kind: str, data: dict[str, Any]) -> list[Completion]:
        return [Completion(text=repr(reward_value(data["data"][0]["data"])), finish_reason="stop")]
