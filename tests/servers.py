"""Real local servers for tests: llama-cpp-python's OpenAI-compatible server on the
bundled model, started on a free port of 127.0.0.1 and stopped afterwards.

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
from collections.abc import Iterator

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
