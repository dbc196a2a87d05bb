"""Real local servers for tests: llama-cpp-python's OpenAI-compatible server on the
bundled model, and moto's S3-compatible server (its real HTTP API), each started on a
free port of 127.0.0.1 and stopped afterwards.

The session-wide `llama_server` fixture lives in conftest.py (one server for the
whole run: a fixture imported into several modules would start one per module).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SERVER_DEPS = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context",
               "pydantic_settings")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log_path: str, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{f.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not ready after {timeout}s")


@contextlib.contextmanager
def llama_cpp_server(n_ctx: int = 1024, alias: str = "smollm2") -> Iterator[str]:
    """`python -m llama_cpp.server` on the bundled SmolLM2-135M; yields its root URL
    (http://127.0.0.1:PORT, without /v1). It serves one request at a time."""
    missing = [m for m in SERVER_DEPS if importlib.util.find_spec(m) is None]
    assert not missing, f"llama.cpp server dependencies missing (make test installs them): {missing}"
    from smolforge.engines.models import resolve_model_path

    model = resolve_model_path("smollm2-135m")
    port = free_port()
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        "w+", prefix="llama-server-", suffix=".log", delete=False
    )
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--model_alias", alias, "--verbose", "False"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/v1/models", proc, log.name)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


# A recognisable secret for the S3 tests: they check it never reaches a run
# directory, an export, a log or an error message.
S3_SECRET = "sf-test-secret-" + uuid.uuid4().hex
S3_KEY = "sf-test-key"


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto in server mode (S3 over HTTP, answered from botocore's own S3 model) on
    a free port; yields its endpoint URL (http://127.0.0.1:PORT)."""
    missing = [m for m in ("moto", "flask", "s3fs") if importlib.util.find_spec(m) is None]
    assert not missing, f"object-storage test dependencies missing (make install-test installs them): {missing}"
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class S3:
    """One test's bucket on the local server, with an s3fs client for the test's own
    setup and checks (smolforge finds the server through the environment)."""

    endpoint: str
    bucket: str
    fs: Any

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> str:
        self.fs.pipe(f"{self.bucket}/{key}", data)
        self.fs.invalidate_cache()
        return self.url(key)

    def get(self, key: str) -> bytes:
        self.fs.invalidate_cache()
        return self.fs.cat(f"{self.bucket}/{key}")

    def objects(self) -> list[str]:
        self.fs.invalidate_cache()
        return sorted(p.split("/", 1)[1] for p in self.fs.find(self.bucket))
