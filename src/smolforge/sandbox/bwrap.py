"""The bubblewrap backend (Debian `bubblewrap`, https://github.com/containers/bubblewrap).

Per worker: `setpriv --reuid=U --regid=U --clear-groups` (when we are root) then
`bwrap --unshare-all --disable-userns --die-with-parent --new-session`, so:

- no network: an empty network namespace (only its own loopback);
- a filesystem of read-only binds of /usr (and /lib*, /bin, /sbin as on the host),
  the server file and pyseccomp, a fresh /proc of its own pid namespace, a minimal
  /dev, and two size-capped tmpfs (/tmp, /dev/shm) as the only writable places.
  No /etc, /home, /root, /work, keys or project files exist inside;
- a real unprivileged uid outside, so RLIMIT_NPROC holds (a uid mapped to root
  in a user namespace is exempt), no capabilities, no nested user namespaces;
- a pid namespace: killing the server (or bwrap dying with its parent) takes every
  process of the sandbox with it; the server also kill(-1)s after every run;
- as root, where cgroup v1 is writable, a pids and a memory cgroup per worker
  (limits for the whole sandbox, on top of the per-process rlimits).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from smolforge.sandbox.base import SERVER, Limits, SandboxUnavailable, ServerSandbox

DEFAULT_UID = 65534  # nobody


def _pyseccomp_file() -> str | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("pyseccomp")
    except Exception:
        return None
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


def bwrap_path() -> str | None:
    return shutil.which("bwrap") or (os.path.exists("/usr/bin/bwrap") and "/usr/bin/bwrap") or None


class _Cgroups:
    """cgroup v1 pids + memory groups, one per worker, under our own cgroups."""

    def __init__(self, tag: str):
        self.tag = tag
        self.dirs: dict[str, Path] = {}
        if os.geteuid() != 0:
            return
        own = {}
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, ctrls, path = line.split(":", 2)
                for c in ctrls.split(","):
                    own[c] = path
        except OSError:
            return
        for ctrl in ("pids", "memory"):
            base = Path("/sys/fs/cgroup") / ctrl
            if ctrl in own and (base / "cgroup.procs").exists():
                parent = base / own[ctrl].lstrip("/")
                if os.access(parent, os.W_OK):
                    self.dirs[ctrl] = parent

    def setup(self, slot: int, limits: Limits) -> list[Path]:
        made = []
        for ctrl, parent in self.dirs.items():
            d = parent / f"smolforge-{self.tag}-{slot}"
            try:
                d.mkdir(exist_ok=True)
                if ctrl == "pids":
                    (d / "pids.max").write_text(str(limits.processes + 8))
                else:
                    # every process's address space is capped by rlimits; this caps the
                    # sum (a fork bomb of big processes) and the tmpfs pages.
                    mb = limits.memory_mb * 2 + limits.tmp_mb + 128
                    (d / "memory.limit_in_bytes").write_text(str(mb << 20))
                made.append(d)
            except OSError:
                continue
        return made

    def oom_kills(self, slot: int) -> int:
        parent = self.dirs.get("memory")
        if parent is None:
            return 0
        try:
            for line in (parent / f"smolforge-{self.tag}-{slot}" / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self, slot: int) -> None:
        for parent in self.dirs.values():
            with contextlib.suppress(OSError):
                (parent / f"smolforge-{self.tag}-{slot}").rmdir()


class BwrapSandbox(ServerSandbox):
    backend = "bwrap"

    def __init__(self, limits: Limits | None = None, workers: int = 2, pool: bool = True,
                 python: str | None = None, seccomp: bool = True, uid: int = DEFAULT_UID,
                 cgroups: bool = True, site_packages: bool = False):
        super().__init__(limits, workers, pool, python, seccomp)
        self.bwrap = bwrap_path()
        if self.bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (Debian/Ubuntu), "
                "`dnf install bubblewrap` (Fedora); or opt out with sandbox: none + allow_unsandboxed: true"
            )
        self.root = os.geteuid() == 0
        self.uid = uid
        self.site_packages = site_packages
        self.setpriv = shutil.which("setpriv") if self.root else None
        if self.root and self.setpriv is None:
            raise SandboxUnavailable("running as root needs `setpriv` (util-linux) to drop to an unprivileged uid")
        self._cg = _Cgroups(f"{os.getpid()}-{id(self) & 0xffff:x}") if (cgroups and self.root) else None
        self._seccomp_file = _pyseccomp_file() if seccomp else None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(uid=self.uid if self.root else os.getuid(), cgroups=sorted(self._cg.dirs) if self._cg else [],
                 seccomp=bool(self._seccomp_file))
        return d

    def _binds(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        # the dynamic linker's index: lets ctypes (pyseccomp) find libseccomp
        args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        args += ["--ro-bind", str(SERVER), "/sandbox/server.py"]
        if self._seccomp_file:
            args += ["--ro-bind", self._seccomp_file, "/sandbox/pyseccomp.py"]
        return args

    def command(self, slot: int):
        lim = self.limits
        argv: list[str] = []
        if self.root:
            argv += [self.setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                     "--inh-caps=-all", "--"]
        argv += [
            self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--hostname", "sandbox", "--cap-drop", "ALL",
            *self._binds(),
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(lim.tmp_mb << 20), "--tmpfs", "/tmp",
            "--size", str(16 << 20), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--remount-ro", "/",
            "--chdir", "/tmp", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            "--",
            self.python, "-I", *([] if self.site_packages else ["-S"]), "-u", "/sandbox/server.py",
        ]
        if not self.pool:
            argv.append("--once")
        if not self._seccomp_file:
            argv.append("--no-seccomp")
        preexec = None
        if self._cg is not None:
            dirs = self._cg.setup(slot, lim)
            procs = [str(d / "cgroup.procs") for d in dirs]

            def preexec() -> None:  # in the forked child, before exec: join the worker's cgroups
                for p in procs:
                    with open(p, "w") as f:
                        f.write(str(os.getpid()))

        return argv, preexec, {"PATH": "/usr/bin:/bin"}

    def oom_count(self, slot: int) -> int:
        return self._cg.oom_kills(slot) if self._cg else 0

    def close(self) -> None:
        super().close()
        if self._cg is not None:
            for slot in range(self.workers):
                self._cg.remove(slot)


def probe() -> str | None:
    """None if bwrap works here, else why not (one line)."""
    path = bwrap_path()
    if path is None:
        return "bubblewrap (bwrap) is not installed"
    argv = [path, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/lib", "/lib", "--", "/usr/bin/true"]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        argv = [shutil.which("setpriv"), f"--reuid={DEFAULT_UID}", f"--regid={DEFAULT_UID}", "--clear-groups",
                "--", *argv]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed to run: {e}"
    if p.returncode != 0:
        return f"bwrap cannot create its namespaces here: {p.stderr.strip()[:300]}"
    return None
