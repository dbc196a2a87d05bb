"""A reward model as an engine, so that `rate`'s `method: reward` goes through
`ctx.generate` like every other LLM call: the response cache, usage counts, and a
retry of failed requests on the next run.

The protocol is vLLM's pooling API (`vllm serve <reward model> --runner pooling`, e.g.
Skywork-Reward or internlm2-reward): `POST {url}/pooling` with `{"model", "messages"}`
(the server applies the model's chat template), answered with
`{"data": [{"index": 0, "data": <reward>}]}` where the reward is a number, a list (a
classification head: the last entry) or a list per token (the last token's). Any
server that answers the same JSON works. A request is the conversation to score,
its last turn the assistant's; the response's one completion holds the reward as text
(`float(resp.completions[0].text)`).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from pydantic import Field

from smolforge.engines.base import Completion, Engine, OnResponse, Request, Response
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
class RewardEngine(Engine):
    """A reward model behind vLLM's pooling API (module docstring)."""

    type: Literal["reward"] = "reward"
    url: str = Field(description="server root, e.g. http://127.0.0.1:8000")
    model: str
    endpoint: str = Field("/pooling", description="path under url")
    api_key_env: str | None = Field(None, description="environment variable holding a bearer token")
    timeout: float = Field(60, gt=0)
    concurrency: int = Field(4, ge=1, le=64)
    retries: int = Field(2, ge=0, le=10)

    kind: ClassVar[str] = "reward"

    def identity(self) -> dict[str, Any]:
        return {"kind": "reward", "url": self.url.rstrip("/"), "endpoint": self.endpoint, "model": self.model}

    def generate(self, requests: Sequence[Request], on_response: OnResponse | None = None) -> list[Response]:
        out: list[Response] = [Response() for _ in requests]

        def one(i: int) -> None:
            try:
                value = self._call(requests[i].messages or [])
                out[i] = Response(completions=[Completion(text=repr(value), finish_reason="stop")])
            except RuntimeError as e:
                out[i] = Response(error=str(e))
            if on_response is not None:
                on_response(i, out[i])

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="smolforge-reward") as pool:
            list(pool.map(one, range(len(requests))))
        return out

    def _call(self, messages: list[dict[str, str]]) -> float:
        """One reward, with `retries` retries of 5xx, 429 and network errors; the
        last error, with the URL and the server's answer, as a RuntimeError."""
        body = json.dumps({"model": self.model, "messages": messages}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key_env and os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        url = self.url.rstrip("/") + "/" + self.endpoint.lstrip("/")
        last = ""
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read())
                return reward_value(data["data"][0]["data"])
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {url}: {e.read()[:200].decode(errors='replace')}"
                if e.code < 500 and e.code != 429:
                    break
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                last = f"{type(e).__name__} from {url}: {e}"
            time.sleep(min(0.2 * 2**attempt, 2))
        raise RuntimeError(last)
