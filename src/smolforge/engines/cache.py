"""SQLite cache of LLM responses, so nothing paid for is ever paid twice.

Keyed by `request_key` (engine identity + every request field). Each response is
committed as soon as it arrives, so a run killed mid-batch keeps every response
that finished before the kill. Failed responses are not cached: a re-run retries
them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from smolforge.engines.base import Engine, OnResponse, Request, Response, request_key


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.commit()

    @classmethod
    def open(cls, path: str | Path, warn: Callable[[str], None] | None = None) -> ResponseCache:
        """Open the cache; a damaged file is moved aside (never deleted), with a
        warning naming both files, and a new cache is started in its place."""
        try:
            cache = cls(path)
            cache._db.execute("SELECT key, response FROM responses LIMIT 1").fetchall()
            return cache
        except sqlite3.DatabaseError as e:
            path = Path(path)
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    src.rename(aside.with_name(aside.name + suffix))
            if warn:
                warn(f"{path}: the response cache is damaged ({e}); moved it to {aside} "
                     "and started a new one (responses will be generated again)")
            return cls(path)

    def get_many(self, keys: Sequence[str]) -> dict[str, Response]:
        out: dict[str, Response] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                q = f"SELECT key, response FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                for k, v in self._db.execute(q, chunk):
                    out[k] = Response.from_json(v)
        return out

    def put(self, key: str, response: Response) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                (key, response.to_json(), time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CacheStats:
    def __init__(self) -> None:
        self.hits = 0
        self.generated = 0
        self.failed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seconds = 0.0


def cached_generate(
    engine: Engine,
    cache: ResponseCache | None,
    requests: Sequence[Request],
    stats: CacheStats,
    on_response: OnResponse | None = None,
) -> list[Response]:
    """Answer from the cache what it holds; send only the rest to the engine."""
    identity = engine.identity()
    keys = [request_key(identity, r) for r in requests]
    hits = cache.get_many(keys) if cache is not None else {}
    results: list[Response | None] = [hits.get(k) for k in keys]
    stats.hits += sum(r is not None for r in results)
    for i, r in enumerate(results):
        if r is not None and on_response:
            on_response(i, r)
    # Identical requests in one batch are generated once.
    first_of: dict[str, int] = {}
    for i, r in enumerate(results):
        if r is None:
            first_of.setdefault(keys[i], i)
    todo = list(first_of.values())
    if todo:
        t0 = time.perf_counter()

        def done(j: int, resp: Response) -> None:
            i = todo[j]
            results[i] = resp
            if resp.error is None:
                stats.generated += 1
                stats.prompt_tokens += resp.prompt_tokens
                stats.completion_tokens += resp.completion_tokens
                if cache is not None:
                    cache.put(keys[i], resp)
            elif resp.retryable:  # an unservable request is final: no retry on re-run
                stats.failed += 1
            if on_response:
                on_response(i, resp)

        fresh = engine.generate([requests[i] for i in todo], on_response=done)
        # Engines that do not call back still return every response.
        for j, resp in enumerate(fresh):
            if results[todo[j]] is None:
                done(j, resp)
        stats.seconds += time.perf_counter() - t0
        for i, r in enumerate(results):
            if r is None:
                results[i] = results[first_of[keys[i]]]
                stats.hits += 1
    return results  # type: ignore[return-value]
