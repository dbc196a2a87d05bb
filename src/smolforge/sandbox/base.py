"""The sandbox interface: run code + tests for a language under limits -> RunResult.

Every backend runs the same small server (`server.py`, stdlib only) and differs
only in how that server is started: inside bubblewrap as an unprivileged uid
(`bwrap`), or as a plain subprocess (`none`, only on explicit opt-in). A backend
keeps `workers` servers warm (a forkserver each): a run is one fresh forked child
with its own empty work dir and limits, so there is no interpreter start per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

SERVER = Path(__file__).with_name("server.py")

# The reasons a run can end with (RunResult.reason). Limits first.
REASONS = {
    "passed": "every test passed",
    "failed": "some tests failed",
    "error": "the code or the tests did not load (syntax error, exception at import, no tests)",
    "exited_early": "the process exited before the tests finished (sys.exit, os._exit)",
    "wall_time": "wall-time limit: killed",
    "cpu_time": "CPU-time limit: killed",
    "memory": "memory limit (address space) reached",
    "processes": "process limit reached (fork failed)",
    "file_size": "file-size limit reached",
    "disk_space": "the sandbox's temp space is full",
    "open_files": "open-files limit reached",
    "network": "network access attempted (blocked)",
    "recursion": "recursion limit reached",
    "output_limit": "too much output: killed",
    "background_process": "left processes running after it finished (killed)",
    "sandbox_killed": "the code killed its sandbox (its parent); the sandbox was restarted",
    "sandbox_error": "the sandbox failed (not the code's fault)",
}


class SandboxUnavailable(RuntimeError):
    """No isolation mechanism works here (and running unsandboxed was not allowed)."""


class Limits(BaseModel):
    """Per-run limits. Defaults fit small test functions."""

    model_config = ConfigDict(extra="forbid")
    wall_s: float = Field(10.0, gt=0, description="wall-clock time; the run is killed after it")
    cpu_s: float = Field(5.0, gt=0, description="CPU time (RLIMIT_CPU, whole seconds, rounded up)")
    memory_mb: int = Field(512, ge=32, description="address space per process (RLIMIT_AS)")
    processes: int = Field(16, ge=1, description="processes at once, the run itself included (RLIMIT_NPROC)")
    file_size_mb: int = Field(16, ge=0, description="largest file the run may write (RLIMIT_FSIZE)")
    open_files: int = Field(64, ge=8, description="open file descriptors (RLIMIT_NOFILE)")
    tmp_mb: int = Field(64, ge=1, description="size of the writable temp dir (a tmpfs)")
    output_tail: int = Field(2000, ge=0, description="bytes of stdout/stderr kept (the tail)")
    output_limit: int = Field(4 << 20, ge=1024, description="total output bytes before the run is killed")

    def wire(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass
class Job:
    """One run: `code` with its `tests` in `language`."""

    code: str
    tests: str
    language: str = "python"
    style: str = "auto"  # python: auto | assert | pytest | check
    entry_point: str | None = None


@dataclass
class TestResult:
    name: str
    passed: bool
    error: str | None = None
    time: float | None = None


@dataclass
class RunResult:
    passed: bool
    reason: str
    tests: list[TestResult] = field(default_factory=list)
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_kb: int = 0
    exit_code: int | None = None
    signal: str | None = None
    orphans_killed: int = 0
    leftover_processes: int = 0

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RunResult:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "tests"}
        return cls(tests=[TestResult(**t) for t in d.get("tests") or []], **known)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A one-line, human-readable verdict (a reject reason)."""
        failed = [t for t in self.tests if not t.passed]
        if self.reason == "passed":
            return f"passed {len(self.tests)} test(s)"
        if self.reason == "failed":
            shown = "; ".join(f"{t.name}: {t.error}" for t in failed[:3])
            more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
            return f"failed {len(failed)}/{len(self.tests)} test(s): {shown}{more}"
        what = REASONS.get(self.reason.split(":")[0], self.reason)
        if self.reason.startswith("signal:"):
            what = f"killed by {self.reason.split(':', 1)[1]}"
        detail = self.error or (f"{failed[0].name}: {failed[0].error}" if failed else "")
        ran = f" after {len(self.tests)} test(s)" if self.tests else ""
        return f"{self.reason}: {what}{ran}" + (f" ({detail})" if detail else "")


# ---------------------------------------------------------------- languages


class Language:
    """How a job becomes a server request. Python runs in the forked server child
    itself (no exec); another language would send `files` and an `argv` to exec
    inside the sandbox (its interpreter must be visible there) and parse the exit
    code."""

    name: ClassVar[str] = ""

    def request(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError


class Python(Language):
    name = "python"

    def request(self, job: Job) -> dict[str, Any]:
        return {"code": job.code, "tests": job.tests, "style": job.style, "entry_point": job.entry_point}


LANGUAGES: dict[str, Language] = {"python": Python()}


# ---------------------------------------------------------------- the worker protocol


def _send(fd: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


class _Worker:
    """One warm server process (one sandbox) and the framed pipe protocol to it."""

    def __init__(self, sandbox: ServerSandbox, slot: int):
        self.sandbox, self.slot = sandbox, slot
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        self._buf = b""
        self.eof = False

    def start(self) -> None:
        argv, preexec, env, *more = self.sandbox.command(self.slot)
        fds = list(more[0]) if more else []  # descriptors the backend hands over (bwrap reads them)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=preexec, env=env, close_fds=True, pass_fds=fds,
            )
        finally:
            for fd in fds:
                os.close(fd)
        self._buf = b""
        hello = self._read(time.monotonic() + self.sandbox.start_timeout)
        if not hello or not hello.get("ready"):
            err = self._stderr()
            self.close()
            raise SandboxUnavailable(
                f"{self.sandbox.backend} sandbox did not start: {err.strip() or 'no answer'} "
                f"(command: {' '.join(argv[:4])} ...)"
            )
        self.info = hello

    def _stderr(self) -> str:
        try:
            assert self.proc is not None and self.proc.stderr is not None
            os.set_blocking(self.proc.stderr.fileno(), False)
            return (self.proc.stderr.read(4000) or b"").decode("utf-8", "replace")
        except Exception:
            return ""

    def _read(self, deadline: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    body, self._buf = self._buf[4:4 + n], self._buf[4 + n:]
                    return json.loads(body)
            left = deadline - time.monotonic()
            if left <= 0:
                self.eof = False
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                self.eof = False
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.eof = True  # the server is gone (bwrap may not have exited yet)
                return None
            self._buf += chunk

    def run(self, req: dict, limits: Limits) -> RunResult:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        before = self.sandbox.oom_count(self.slot)
        try:
            _send(self.proc.stdin.fileno(), req)
        except OSError:
            self.close()
            return RunResult(False, "sandbox_killed", error="the sandbox was gone before the run")
        t0 = time.monotonic()
        resp = self._read(t0 + limits.wall_s + self.sandbox.grace_s)
        if resp is None:
            timed_out = not self.eof
            self.close()
            oom = self.sandbox.oom_count(self.slot) > before
            if oom:
                return RunResult(False, "memory", error="the sandbox's memory cgroup ran out (OOM kill)",
                                 wall_s=time.monotonic() - t0)
            if timed_out:
                return RunResult(False, "wall_time", error="the sandbox stopped answering; killed",
                                 wall_s=time.monotonic() - t0)
            return RunResult(False, "sandbox_killed", wall_s=time.monotonic() - t0,
                             error="the code killed the sandbox's server (its parent); restarted")
        res = RunResult.from_wire(resp)
        if self.sandbox.oom_count(self.slot) > before and not res.passed:
            res.reason, res.error = "memory", "the sandbox's memory cgroup ran out (OOM kill)"
        if resp.get("restart"):  # the server could not clean up after this run: a fresh sandbox next
            self.close()
        return res

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, 9)
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
            self.proc = None


class ServerSandbox:
    """A pool of `workers` warm servers. `run(jobs)` runs them concurrently, one per
    free worker; results come back in job order. `pool=False` starts a fresh
    server (a fresh sandbox) for every run instead: slower, stronger separation."""

    backend: ClassVar[str] = ""
    start_timeout: float = 20.0
    grace_s: float = 5.0

    def __init__(self, limits: Limits | None = None, workers: int = 2, pool: bool = True,
                 python: str | None = None, seccomp: bool = True):
        self.limits = limits or Limits()
        self.workers = max(1, int(workers))
        self.pool = pool
        self.python = python or ("/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3")
        self.seccomp = seccomp
        self._free: list[_Worker] = [_Worker(self, i) for i in range(self.workers)]
        self._all = list(self._free)
        self._lock = threading.Condition()
        self._closed = False

    # -- what a backend supplies: argv, a preexec function, the environment and
    # optionally descriptors to pass on
    def command(self, slot: int) -> tuple:
        raise NotImplementedError

    def oom_count(self, slot: int) -> int:
        return 0

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.run_home(),
                "TMPDIR": self.run_home(), "USER": "sandbox", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONIOENCODING": "utf-8"}

    def run_home(self) -> str:
        return "/tmp/run"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "workers": self.workers, "pool": self.pool,
                "limits": self.limits.wire(), "python": self.python}

    # -- running
    def start(self) -> ServerSandbox:
        """Start every worker now (else each starts at its first run)."""
        for w in self._all:
            if w.proc is None:
                w.start()
        return self

    def _acquire(self) -> _Worker:
        with self._lock:
            while not self._free:
                self._lock.wait()
            return self._free.pop()

    def _release(self, w: _Worker) -> None:
        with self._lock:
            self._free.append(w)
            self._lock.notify()

    def run_one(self, job: Job, limits: Limits | None = None) -> RunResult:
        if self._closed:
            raise RuntimeError("sandbox is closed")
        limits = limits or self.limits
        lang = LANGUAGES.get(job.language)
        if lang is None:
            raise ValueError(f"unknown language {job.language!r} (known: {', '.join(LANGUAGES)})")
        req = {**lang.request(job), "limits": limits.wire(), "env": self.env(), "seccomp": self.seccomp}
        w = self._acquire()
        try:
            res = w.run(req, limits)
            if not self.pool:
                w.close()
            return res
        finally:
            self._release(w)

    def run(self, jobs: Sequence[Job], limits: Limits | None = None) -> list[RunResult]:
        if len(jobs) <= 1 or self.workers == 1:
            return [self.run_one(j, limits) for j in jobs]
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(lambda j: self.run_one(j, limits), jobs))

    def close(self) -> None:
        self._closed = True
        for w in self._all:
            w.close()

    def __enter__(self) -> ServerSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
