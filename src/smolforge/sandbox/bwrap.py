"""The bubblewrap backend (Debian `bubblewrap`, https://github.com/containers/bubblewrap).

Per worker: `setpriv --reuid=U --regid=U --clear-groups` (when we are root) then
`bwrap --unshare-all --disable-userns --die-with-parent --new-session`, so:

- no network: an empty network namespace (only its own loopback);
- a filesystem of read-only binds of what the runner needs of /usr (`/usr/bin`,
  the interpreter's standard library, the shared-library dirs, locales, time
  zones: no /usr/local, /usr/share, /usr/src), the /lib*, /bin symlinks, the server
  and pyseccomp as copies (no host path shows in /proc/self/mountinfo), a fresh
  /proc of its own pid namespace with every host-wide entry masked (only the
  sandbox's own pid dirs, `self`, `net` and the like remain), a minimal /dev, and
  two size-capped tmpfs (/tmp, /dev/shm) as the only writable places. No /etc,
  /home, /root, /work, keys or project files exist inside;
- a real unprivileged uid outside, so RLIMIT_NPROC holds (a uid mapped to root
  in a user namespace is exempt), no capabilities, no nested user namespaces;
- a pid namespace: killing the server (or bwrap dying with its parent) takes every
  process of the sandbox with it; the server also kill(-1)s after every run;
- as root, where cgroup v1 is writable, a pids and a memory cgroup per worker
  (limits for the whole sandbox, on top of the per-process rlimits).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import weakref
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


_CGROUP_NAME = re.compile(r"smolforge-(\d+)-[0-9a-f]+-\d+")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# Waits for its stdin to close (we closed the sandbox, or died, even by kill -9),
# then removes the groups once the sandbox's processes are gone (they die with
# bwrap). It only ever calls rmdir, which fails on a group that is still in use.
_WATCHER = """
import os, sys, time
sys.stdin.buffer.read()
dirs, deadline = sys.argv[1:], time.monotonic() + 30
while dirs and time.monotonic() < deadline:
    left = []
    for d in dirs:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(d)
    dirs = left
    if dirs:
        time.sleep(0.05)
"""


def cgroup_parents() -> dict[str, Path]:
    """Our own cgroup v1 `pids` and `memory` dirs where we may make groups (as root)."""
    dirs: dict[str, Path] = {}
    if os.geteuid() != 0:
        return dirs
    own = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(","):
                own[c] = path
    except (OSError, ValueError):
        return dirs
    for ctrl in ("pids", "memory"):
        base = Path("/sys/fs/cgroup") / ctrl
        if ctrl in own and (base / "cgroup.procs").exists():
            parent = base / own[ctrl].lstrip("/")
            if os.access(parent, os.W_OK):
                dirs[ctrl] = parent
    return dirs


class _Cgroups:
    """cgroup v1 pids + memory groups, one per worker, under our own cgroups, named
    `smolforge-<pid>-<tag>-<slot>`. Removed on close and at exit, and by a small
    watcher process when we die without either (kill -9, a Ray worker killed);
    groups that an older smolforge left behind with no owner alive are removed
    when the next sandbox starts under the same parent."""

    def __init__(self, tag: str, slots: int = 1):
        self.tag = tag
        self.dirs: dict[str, Path] = {}
        self.watcher: subprocess.Popen | None = None
        self.dirs = cgroup_parents()
        self.clean_stale()
        if self.dirs:
            groups = [str(p / f"smolforge-{tag}-{slot}") for p in self.dirs.values() for slot in range(slots)]
            with contextlib.suppress(OSError):
                self.watcher = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHER, *groups], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)

    def clean_stale(self) -> None:
        """Remove the empty groups that sandboxes of dead smolforge processes left."""
        for parent in self.dirs.values():
            with contextlib.suppress(OSError):
                for d in parent.iterdir():
                    m = _CGROUP_NAME.fullmatch(d.name)
                    if m and d.is_dir() and not _pid_alive(int(m.group(1))):
                        with contextlib.suppress(OSError):
                            d.rmdir()  # fails (EBUSY) while any process is in it: nothing is lost

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

    def close(self, slots: int) -> None:
        for slot in range(slots):
            self.remove(slot)
        if self.watcher is not None:
            with contextlib.suppress(OSError):
                self.watcher.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watcher.wait(5)
            self.watcher = None

    def remove(self, slot: int, wait_s: float = 3.0) -> None:
        """rmdir the slot's groups once their processes are gone: the sandbox's init
        and server die a moment after bwrap (EBUSY until then); stragglers are ours
        (they joined at start) and are killed."""
        for parent in self.dirs.values():
            d = parent / f"smolforge-{self.tag}-{slot}"
            deadline = time.monotonic() + wait_s
            while d.exists():
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.01)


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
        self._cg = _Cgroups(f"{os.getpid()}-{id(self) & 0xffff:x}", self.workers) if (cgroups and self.root) else None
        self._seccomp_file = _pyseccomp_file() if seccomp else None
        self._files = {"server": SERVER.read_bytes()}
        if self._seccomp_file:
            self._files["pyseccomp"] = Path(self._seccomp_file).read_bytes()
        if self._cg is not None:  # also when close() is never called (a worker process that exits)
            atexit.register(_close_at_exit, weakref.ref(self))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(uid=self.uid if self.root else os.getuid(), cgroups=sorted(self._cg.dirs) if self._cg else [],
                 seccomp=bool(self._seccomp_file))
        return d

    def _binds(self) -> list[str]:
        args: list[str] = []
        for d in usr_dirs(self.python, self.site_packages):
            args += ["--ro-bind", d, d]
        for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
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
            # copies, not binds: a bind would show its host path in /proc/self/mountinfo
            "--ro-bind-data", "@server", "/sandbox/server.py",
            *(["--ro-bind-data", "@pyseccomp", "/sandbox/pyseccomp.py"] if self._seccomp_file else []),
            "--proc", "/proc", *proc_masks(), "--dev", "/dev",
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

        fds = []
        for i, a in enumerate(argv):  # each copy is read by bwrap from a memfd of its own
            if a in ("@server", "@pyseccomp"):
                fd = os.memfd_create(a[1:])
                os.write(fd, self._files[a[1:]])
                os.lseek(fd, 0, os.SEEK_SET)
                argv[i] = str(fd)
                fds.append(fd)
        return argv, preexec, {"PATH": "/usr/bin:/bin"}, fds

    def oom_count(self, slot: int) -> int:
        return self._cg.oom_kills(slot) if self._cg else 0

    def close(self) -> None:
        super().close()
        if self._cg is not None:
            self._cg.close(self.workers)


def _close_at_exit(ref: weakref.ref) -> None:
    sb = ref()
    if sb is not None:
        with contextlib.suppress(Exception):
            sb.close()


# What the runner needs of /usr: the interpreter and the tools a test may run
# (/usr/bin), the standard library, the shared libraries and the dynamic linker,
# locales and time zones. Not /usr/local (site configuration such as npmrc,
# locally installed packages), /usr/share, /usr/src, /usr/include.
_USR_ALWAYS = ("/usr/bin", "/usr/lib64", "/usr/lib32", "/usr/libx32", "/usr/lib/locale", "/usr/share/zoneinfo")


def usr_dirs(python: str, site_packages: bool = False) -> list[str]:
    real = os.path.realpath(python)
    if not real.startswith("/usr/bin/"):  # an interpreter elsewhere: its prefix, read-only
        prefix = os.path.dirname(os.path.dirname(real))
        return ["/usr", *([prefix] if prefix not in ("/", "/usr") else [])]
    name = os.path.basename(real)  # python3.11
    dirs = [*_USR_ALWAYS, f"/usr/lib/{name}", *glob.glob("/usr/lib/*-linux-gnu*")]
    if site_packages:
        dirs += ["/usr/lib/python3/dist-packages"]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d) and not os.path.islink(d)]


# /proc entries that show only the sandbox's own state (its pid dirs are numbers).
_PROC_OWN = {"self", "thread-self", "net", "mounts"}


def proc_masks() -> list[str]:
    """bwrap arguments that hide every host-wide /proc entry (kernel version and
    command line, CPU, memory, devices, modules, sysctls, ...): files become
    /dev/null (unreadable), dirs an empty read-only tmpfs. An allow-list: entries
    a newer kernel adds are hidden too."""
    args: list[str] = []
    try:
        names = sorted(os.listdir("/proc"))
    except OSError:
        return args
    for name in names:
        if name.isdigit() or name in _PROC_OWN:
            continue
        path = f"/proc/{name}"
        if os.path.islink(path):
            continue
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", "/dev/null", path]
    return args


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
