"""Benchmark: smolforge's `openai` engine against a bare asyncio client.

A local aiohttp server (its own process) answers every chat completion after a fixed
delay, with unlimited concurrency, so the client side is what is measured. Both
clients send the same N requests through aiohttp at the same concurrency (the bare
one: a semaphore over asyncio.gather, no retries, no accounting). Rounds alternate
between the two (which goes first alternates too); the median round counts, and the
median of the ratios of adjacent rounds is reported beside it.

The headline is client CPU per request (time.process_time, all threads of this
process): on a shared machine it is what a client costs, whatever the load. The
server's own CPU is read from /proc for every round, so that a saturated server
(the bottleneck, not the client) shows: `server_cpu_share` is its CPU seconds per
wall second (1.0 = one core busy) and `server_cpu_ms_per_request` its cost; the
canned server does no model work, a few hundredths of a millisecond per request.

    python benchmarks/http_engine.py [--requests 2000] [--rounds 9] [--concurrency 64] [--delay-ms 20]

Prints one JSON object; targets: CPU per request ratio <= 1.05, requests/s ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

from smolforge.engines.base import Request  # noqa: E402
from smolforge.engines.openai import OpenAIEngine  # noqa: E402


def serve(port: int, delay: float) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(delay)
        text = "echo: " + body["messages"][-1]["content"]
        return web.json_response({
            "id": "bench", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        })

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "bench"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                backlog=1024, handle_signals=True)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about topic number {i}." for i in range(n)]


def run_bare(url: str, texts: list[str], concurrency: int) -> list[str]:
    import aiohttp

    async def main() -> list[str]:
        sem = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(text: str) -> str:
                body = {"model": "bench", "messages": [{"role": "user", "content": text}],
                        "max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": 0}
                async with sem, session.post(url + "/chat/completions", json=body) as r:
                    data = await r.json()
                    return data["choices"][0]["message"]["content"]

            return await asyncio.gather(*(one(t) for t in texts))

    return asyncio.run(main())


def run_smolforge(url: str, texts: list[str], concurrency: int) -> list[str]:
    engine = OpenAIEngine(type="openai", base_url=url, model="bench", concurrency=concurrency)
    try:
        reqs = [Request(messages=[{"role": "user", "content": t}], max_tokens=16) for t in texts]
        done = [0]

        def on_response(_i: int, _r: Any) -> None:  # what the cache/progress bar hang on
            done[0] += 1

        out = engine.generate(reqs, on_response=on_response)
        assert done[0] == len(texts)
        errors = [r.error for r in out if r.error]
        assert not errors, errors[:3]
        return [r.completions[0].text for r in out]
    finally:
        engine.close()


def measure(fn, url: str, texts: list[str], concurrency: int, server_pid: int) -> dict[str, float]:
    gc.collect()  # neither client pays for the other's garbage
    s0 = proc_cpu_s(server_pid)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(url, texts, concurrency)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    server = proc_cpu_s(server_pid) - s0
    assert out == ["echo: " + t for t in texts], "wrong answers"
    return {"rps": len(texts) / wall, "cpu_ms_per_request": 1000 * cpu / len(texts),
            "server_cpu_ms_per_request": 1000 * server / len(texts),
            "server_cpu_share": server / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()

    port = free_port()
    server = mp.get_context("spawn").Process(
        target=serve, args=(port, args.delay_ms / 1000), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/models", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        texts = prompts(args.requests)
        run_bare(url, texts[:200], args.concurrency)  # warm both paths up
        run_smolforge(url, texts[:200], args.concurrency)
        rounds: dict[str, list[dict[str, float]]] = {"bare": [], "smolforge": []}
        clients = {"bare": run_bare, "smolforge": run_smolforge}
        for k in range(args.rounds):  # alternate which goes first
            for name in (["bare", "smolforge"] if k % 2 == 0 else ["smolforge", "bare"]):
                rounds[name].append(measure(clients[name], url, texts, args.concurrency,
                                            server.pid))
    finally:
        server.terminate()
        server.join(5)

    def summary(rs: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "rps": round(statistics.median(r["rps"] for r in rs), 1),
            "cpu_ms_per_request": round(statistics.median(r["cpu_ms_per_request"] for r in rs), 4),
            "rounds_rps": [round(r["rps"], 1) for r in rs],
            "rounds_cpu_ms": [round(r["cpu_ms_per_request"], 4) for r in rs],
            "server_cpu_ms_per_request": round(
                statistics.median(r["server_cpu_ms_per_request"] for r in rs), 4),
            "server_cpu_share": round(statistics.median(r["server_cpu_share"] for r in rs), 3),
        }

    bare, sf = summary(rounds["bare"]), summary(rounds["smolforge"])
    print(json.dumps({
        "benchmark": "http",
        "headline": {
            "client_cpu_ms_per_request": {"smolforge": sf["cpu_ms_per_request"],
                                          "bare_aiohttp": bare["cpu_ms_per_request"]},
            "ratio_cpu_per_request": round(sf["cpu_ms_per_request"] / bare["cpu_ms_per_request"], 3),
            "target_ratio_cpu_per_request": 1.05,
            # < 1: the server had CPU to spare, so it did not set the pace
            "server_cpu_share_max": max(bare["server_cpu_share"], sf["server_cpu_share"]),
        },
        "requests": args.requests,
        "concurrency": args.concurrency,
        "server_delay_ms": args.delay_ms,
        "ceiling_rps": round(args.concurrency / (args.delay_ms / 1000), 1),
        "bare_asyncio_aiohttp": bare,
        "smolforge_openai": sf,
        "ratio_rps": round(sf["rps"] / bare["rps"], 3),
        # adjacent rounds share the machine's load of the moment: a steadier ratio
        "ratio_rps_paired_median": round(statistics.median(
            s["rps"] / b["rps"] for s, b in zip(rounds["smolforge"], rounds["bare"], strict=True)
        ), 3),
        "ratio_cpu_per_request": round(sf["cpu_ms_per_request"] / bare["cpu_ms_per_request"], 3),
        "target_ratio_rps": 0.95,
    }, indent=2))


if __name__ == "__main__":
    main()
