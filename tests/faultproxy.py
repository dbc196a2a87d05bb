"""A fault-injecting HTTP proxy for testing HTTP engines against a real server.

It sits on 127.0.0.1 between a client and an upstream server and, by a rule over
(request number, attempt number for this prompt, JSON body), either forwards the
request or injects a fault: an HTTP status (429 with Retry-After, 500, 401...), a
dropped connection, or a response slower than the client's timeout. Faulted requests
never reach the upstream, so `upstream` counts how many times each prompt was really
forwarded; `delivered` counts upstream answers handed back to a client still waiting
for them (one the client gave up on, after its timeout, is not delivered). Every
request is recorded with its arrival time and headers.

With no upstream (`canned_server(answer)`) it is a tiny OpenAI-compatible server
whose answers the test chooses per request: judges, filters and CLI runs become
deterministic without a model. `go_down()` / `come_back()` take the proxy off the
network for a while (new connections refused, open ones reset), as a crashed or
restarting server would be.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass(frozen=True)
class Fault:
    kind: str  # "status" | "drop" | "slow" | "canned" | "raw" | "outage"
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    text: str = ""
    usage: tuple[int, int] = (1, 1)  # canned: (prompt_tokens, completion_tokens)

    @classmethod
    def http(cls, status: int, retry_after: float | str | None = None) -> Fault:
        return cls("status", status=status,
                   retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def outage(cls) -> Fault:
        """The proxy goes down with this request (dropped), as by `go_down()`."""
        return cls("outage")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Answer only after `delay` seconds (past the client's timeout), never upstream."""
        return cls("slow", delay=delay)

    @classmethod
    def raw(cls, status: int, body: str) -> Fault:
        """Answer `body` verbatim (a malformed answer), without the upstream."""
        return cls("raw", status=status, text=body)

    @classmethod
    def canned(cls, text: str, prompt_tokens: int = 1, completion_tokens: int = 1) -> Fault:
        """Answer a completion with `text` at once, without the upstream, reporting
        the given token usage."""
        return cls("canned", status=200, text=text, usage=(prompt_tokens, completion_tokens))


# What a canned server answers for a request body: a completion text, or a Fault.
Answer = Callable[[dict[str, Any]], "str | Fault"]


# (request number, attempt number of this prompt, body) -> fault or None to forward
Rule = Callable[[int, int, dict[str, Any]], Fault | None]


def prompt_key(body: dict[str, Any]) -> str:
    """The prompt a request carries: the raw prompt or the last message's content."""
    if body.get("prompt") is not None:
        return str(body["prompt"])
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content"))


def plan(faults: dict[str, list[Fault | None]]) -> Rule:
    """Faults per prompt, by attempt: `{"p": [Fault.http(500), None]}` fails the first
    attempt of prompt "p" and forwards the second. Arrival order does not matter."""

    def rule(_n: int, attempt: int, body: dict[str, Any]) -> Fault | None:
        todo = faults.get(prompt_key(body), [])
        return todo[attempt] if attempt < len(todo) else None

    return rule


def always(fault: Fault) -> Rule:
    return lambda _n, _a, _b: fault


def answering(answer: Answer) -> Rule:
    """Every POST answered by `answer(body)`: a str is a canned completion."""

    def rule(_n: int, _a: int, body: dict[str, Any]) -> Fault | None:
        out = answer(body)
        return Fault.canned(out) if isinstance(out, str) else out

    return rule


def canned_server(answer: Answer) -> FaultProxy:
    """An OpenAI-compatible server on 127.0.0.1 that answers `answer(body)` to every
    completion request (no upstream, no model). Use as a context manager."""
    return FaultProxy("", rule=answering(answer))


def user_text(body: dict[str, Any]) -> str:
    """The prompt text of a request: the raw prompt or the last user message."""
    return prompt_key(body)


@dataclass
class Seen:
    n: int
    prompt: str
    attempt: int
    t: float
    headers: dict[str, str]
    body: dict[str, Any]
    fault: Fault | None
    status: int | None = None


@dataclass
class FaultProxy:
    upstream: str  # e.g. http://127.0.0.1:8000 (no /v1)
    rule: Rule | None = None
    seen: list[Seen] = field(default_factory=list)
    upstream_counts: Counter = field(default_factory=Counter)
    delivered: Counter = field(default_factory=Counter)
    attempts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0
        self.down = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self, rule: Rule | None = None) -> None:
        with self._lock:
            self.rule = rule
            self.seen.clear()
            self.upstream_counts.clear()
            self.delivered.clear()
            self.attempts.clear()

    def go_down(self) -> None:
        """Stop listening (new connections refused) and reset every request that
        arrives on a connection that was already open, until `come_back()`."""
        self.down = True
        asyncio.run_coroutine_threadsafe(self._site.stop(), self._loop).result(10)

    def come_back(self) -> None:
        """Listen again on the same port."""
        asyncio.run_coroutine_threadsafe(self._listen(self.port), self._loop).result(10)
        self.down = False

    def times(self, prompt: str) -> list[float]:
        return [s.t for s in self.seen if s.prompt == prompt]

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # shutdown_timeout: a stop() does not wait for slow answers still sleeping
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen(0)

    async def _listen(self, port: int) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", port)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:  # a request on a connection opened before the outage
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=503)  # never written: the socket is gone
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        key = prompt_key(body) if isinstance(body, dict) and body else ""
        with self._lock:
            n = len(self.seen)
            attempt = self.attempts[key]
            self.attempts[key] += 1
            faulty = self.rule is not None and request.method == "POST"
            fault = self.rule(n, attempt, body) if faulty else None  # type: ignore[misc]
            rec = Seen(n, key, attempt, time.monotonic(), dict(request.headers), body, fault)
            self.seen.append(rec)
        if fault is not None:
            if fault.kind == "outage":
                self.down = True
                await self._site.stop()
            if fault.kind in ("drop", "outage"):
                assert request.transport is not None
                request.transport.abort()
                rec.status = None
                return web.Response(status=500)  # never written: the socket is gone
            if fault.kind == "raw":
                rec.status = fault.status
                return web.Response(status=fault.status, text=fault.text,
                                    content_type="application/json")
            if fault.kind == "canned":
                rec.status = 200
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                if request.path.endswith("/chat/completions"):
                    choice["message"] = {"role": "assistant", "content": fault.text}
                else:
                    choice["text"] = fault.text
                return web.json_response({
                    "choices": [choice],
                    "usage": {"prompt_tokens": fault.usage[0], "completion_tokens": fault.usage[1]},
                })
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
                rec.status = 504
                return web.Response(status=504, text="too slow")
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            rec.status = fault.status
            return web.json_response({"error": {"message": f"injected {fault.status}"}},
                                     status=fault.status, headers=headers)
        if not self.upstream:
            rec.status = 502
            return web.json_response({"error": {"message": "no upstream, no canned answer"}},
                                     status=502)
        with self._lock:
            self.upstream_counts[key] += 1
        fwd = {k: v for k, v in request.headers.items()
               if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=raw, headers=fwd) as up:
            data = await up.read()
            rec.status = up.status
        transport = request.transport
        if up.status == 200 and transport is not None and not transport.is_closing():
            with self._lock:
                self.delivered[key] += 1
        return web.Response(body=data, status=up.status,
                            content_type=up.content_type or "application/json")
