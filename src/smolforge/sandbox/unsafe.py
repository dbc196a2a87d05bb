"""The `none` backend: the same server as a plain subprocess, with no isolation.

Only on explicit opt-in (`sandbox: none` + `allow_unsandboxed: true`). The code runs
as you, sees your files and your network; only rlimits, the wall-time kill of the
run's process group and a scratch dir hold. Use it where bubblewrap cannot run and
the code is trusted (your own solutions), never for model output on a machine
that matters.
"""

from __future__ import annotations

import shutil
import tempfile

from smolforge.sandbox.base import SERVER, Limits, ServerSandbox


class NoSandbox(ServerSandbox):
    backend = "none"

    def __init__(self, limits: Limits | None = None, workers: int = 2, pool: bool = True,
                 python: str | None = None, seccomp: bool = True):
        super().__init__(limits, workers, pool, python, seccomp)
        self._roots: dict[int, str] = {}

    def run_home(self) -> str:
        return "."

    def command(self, slot: int):
        if slot not in self._roots:
            self._roots[slot] = tempfile.mkdtemp(prefix=f"smolforge-nosandbox-{slot}-")
        argv = [self.python, "-I", "-S", "-u", str(SERVER), "--root", self._roots[slot], "--no-seccomp"]
        if not self.pool:
            argv.append("--once")
        return argv, None, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def close(self) -> None:
        super().close()
        for root in self._roots.values():
            shutil.rmtree(root, ignore_errors=True)
        self._roots.clear()
