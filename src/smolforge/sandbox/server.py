"""The program that runs *inside* the sandbox (stdlib only, any Python >= 3.9).

It is started once per sandbox worker by `/usr/bin/python3 -I -S server.py` and
serves run requests read from stdin (a 4-byte big-endian length + JSON), answering
on stdout the same way. Each run happens in a fresh forked child:

- a fresh, empty work dir (`/tmp/run`); everything writable (`/tmp`, `/dev/shm`)
  is wiped before and after each run;
- its own session and process group, stdin from /dev/null, stdout/stderr and a
  result pipe to the server, every other descriptor closed;
- rlimits lowered in the child: CPU time, address space, processes, file size,
  open files, no core dumps; optionally a seccomp filter (no sockets except
  AF_UNIX, no io_uring, no ptrace);
- the server polls the pipes and a pidfd against the wall-time deadline, keeps
  only the tail of each stream (and kills the run past `output_limit` bytes), and
  at the end sends SIGKILL to every process in the sandbox but itself and init
  (`kill(-1)`), so nothing started by a run survives it (double forks included).

With `--once` it serves one request and exits (one sandbox per run).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

# Set by main(): inside bwrap, the writable tmpfs mounts and kill(-1) for cleanup;
# without a sandbox (`none` backend), a host temp dir and the run's process group only.
WORK_ROOTS = ["/tmp", "/dev/shm"]
RUN_DIR = "/tmp/run"
KILL_ALL = True
SOLUTION_FILE = "solution.py"
TESTS_FILE = "test_solution.py"

# errno that the seccomp filter returns for socket(AF_INET...): distinctive, so the
# harness can name the reason "network".
NET_ERRNO = errno.EAFNOSUPPORT
NETWORK_ERRNOS = {errno.EAFNOSUPPORT, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTUNREACH}
LIMIT_ERRNOS = {errno.EAGAIN: "processes", errno.EFBIG: "file_size", errno.EMFILE: "open_files",
                errno.ENOSPC: "disk_space", errno.ENFILE: "open_files"}

_SECCOMP = None  # a prepared filter, loaded in each child


# ---------------------------------------------------------------- protocol


def read_msg(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _read_exact(fd, n)
    return None if body is None else json.loads(body)


def _read_exact(fd: int, n: int):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def write_msg(fd: int, obj) -> None:
    body = json.dumps(obj).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


# ---------------------------------------------------------------- seccomp


def prepare_seccomp():
    """Build (not load) a filter with pyseccomp + libseccomp, if both are present.
    Returns None when unavailable: network isolation still comes from the empty
    network namespace; seccomp only makes socket creation fail early and clearly."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.append(here)
    import ctypes.util

    # pyseccomp calls find_library at import, which forks `ldconfig -p` (slow, and
    # pointless here): the sonames are stable and dlopen finds them itself.
    real = ctypes.util.find_library
    ctypes.util.find_library = lambda name: {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}.get(name) or real(name)
    try:
        import pyseccomp as sc
    except Exception:
        return None
    finally:
        ctypes.util.find_library = real
    try:
        f = sc.SyscallFilter(defaction=sc.ALLOW)
        import socket as _s

        for fam in (_s.AF_INET, _s.AF_INET6, getattr(_s, "AF_NETLINK", 16), getattr(_s, "AF_PACKET", 17)):
            f.add_rule(sc.ERRNO(NET_ERRNO), "socket", sc.Arg(0, sc.EQ, fam))
        for name in ("io_uring_setup", "ptrace", "process_vm_writev", "process_vm_readv", "bpf",
                     "userfaultfd", "perf_event_open", "keyctl", "add_key", "request_key"):
            with contextlib.suppress(Exception):
                f.add_rule(sc.ERRNO(errno.EPERM), name)
        r, w = os.pipe()
        with os.fdopen(w, "wb") as wf:
            f.export_bpf(wf)
        with os.fdopen(r, "rb") as rf:
            return _Bpf(rf.read())
    except Exception:
        return None


class _Bpf:
    """A compiled seccomp program, installed with two prctl calls in each child
    (libseccomp's `seccomp_load` recompiles the filter every time: ~10x slower)."""

    def __init__(self, prog: bytes):
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        if not prog or len(prog) % 8:
            raise ValueError("bad BPF program")
        self._ctypes = ctypes
        self._buf = ctypes.create_string_buffer(prog, len(prog))
        self._prog = SockFprog(len(prog) // 8, ctypes.cast(self._buf, ctypes.c_void_p))
        self._libc = ctypes.CDLL(None, use_errno=True)

    def load(self) -> None:
        c = self._ctypes
        if self._libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(c.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        # seccomp(SET_MODE_FILTER, SPEC_ALLOW): without SPEC_ALLOW the kernel turns on
        # the speculative-store-bypass mitigation for the task, which slows pure
        # Python by ~20% here; the run is alone in its process, so we skip it.
        nr = {"x86_64": 317, "aarch64": 277}.get(os.uname().machine)
        if nr is not None and self._libc.syscall(nr, 1, 4, c.byref(self._prog)) == 0:
            return
        if self._libc.prctl(22, 2, c.byref(self._prog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
            raise OSError(c.get_errno(), "PR_SET_SECCOMP failed")


# ---------------------------------------------------------------- the test harness


def _err(e: BaseException) -> str:
    text = str(e).strip()
    msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return msg if len(msg) <= 500 else msg[:497] + "..."


def _limit_of(e: BaseException):
    """Which limit an exception shows was hit, if any."""
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, OSError) and e.errno is not None:
        if e.errno in NETWORK_ERRNOS:
            return "network"
        if e.errno == errno.EAGAIN and "fork" in "".join(traceback.format_tb(e.__traceback__)):
            return "processes"
        if e.errno in LIMIT_ERRNOS and e.errno != errno.EAGAIN:
            return LIMIT_ERRNOS[e.errno]
    if isinstance(e, RecursionError):
        return "recursion"
    return None


def _where(e: BaseException, filename: str) -> str:
    """`file:line` of the deepest frame in the user's files."""
    line = None
    for fr in traceback.extract_tb(e.__traceback__):
        if fr.filename.endswith(filename) or fr.filename.endswith(SOLUTION_FILE):
            line = f"{os.path.basename(fr.filename)}:{fr.lineno}"
    return f"({line})" if line else ""


def collect_tests(tests_src: str, style: str, entry_point):
    """Split a tests source into [(name, kind, payload)], run in order.

    The module body runs statement by statement: every top-level `assert` is one
    test, every other statement (imports, helpers, `def test_*`) is setup. Then:
    - "pytest" (and "auto"): top-level `def test_*()` functions and `Test*`
      classes' `test_*` methods, in definition order, one test each;
    - "check" (and "auto" with an entry point and no test functions): HumanEval's
      `def check(candidate)` called with the solution's `entry_point`;
    - "assert": the top-level asserts only.
    """
    if style not in ("auto", "assert", "pytest", "check"):
        raise ValueError(f"unknown tests style {style!r}")
    tree = ast.parse(tests_src, TESTS_FILE)
    lines = tests_src.splitlines()
    items = []
    for node in tree.body:
        if isinstance(node, ast.Assert):
            src = " ".join(s.strip() for s in lines[node.lineno - 1:(node.end_lineno or node.lineno)])
            items.append((f"line {node.lineno}: {src[:120]}", "stmt", node))
        else:
            items.append((None, "setup", node))
    funcs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and n.name.startswith("test")]
    classes = {n.name: [m.name for m in n.body if isinstance(m, ast.FunctionDef) and m.name.startswith("test")]
               for n in tree.body if isinstance(n, ast.ClassDef) and n.name.startswith("Test")}
    has_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    if style in ("auto", "pytest"):
        items += [(f, "func", f) for f in funcs]
        items += [(f"{c}::{m}", "method", (c, m)) for c, ms in classes.items() for m in ms]
    if style == "check" or (style == "auto" and has_check and entry_point and not funcs):
        if not entry_point:
            raise ValueError("tests style 'check' needs an entry point")
        items.append((f"check({entry_point})", "check", entry_point))
    return items


def run_harness(req: dict, emit) -> int:
    """Run `req["code"]` then its tests in this process; emit one JSON object per
    test and a final {"done": ...}. Returns the exit code (0: every test passed)."""
    import types

    code, tests = req.get("code") or "", req.get("tests") or ""
    sys.path.insert(0, os.getcwd())
    sys.argv = [SOLUTION_FILE]
    mod = types.ModuleType("solution")
    mod.__file__ = os.path.join(os.getcwd(), SOLUTION_FILE)
    sys.modules["solution"] = mod
    t0 = time.perf_counter()
    try:
        exec(compile(code, mod.__file__, "exec"), mod.__dict__)
    except BaseException as e:  # SyntaxError, import error, SystemExit, MemoryError ...
        emit({"done": True, "error": f"solution failed: {_err(e)} {_where(e, SOLUTION_FILE)}".strip(),
              "limit": _limit_of(e), "n_tests": 0})
        return 2
    try:
        items = collect_tests(tests, req.get("style", "auto"), req.get("entry_point"))
    except BaseException as e:
        emit({"done": True, "error": f"tests did not parse: {_err(e)}", "n_tests": 0, "limit": None})
        return 2
    ns = dict(mod.__dict__)
    ns["__name__"] = "test_solution"
    ns["__file__"] = os.path.join(os.getcwd(), TESTS_FILE)
    n_failed, n_tests, limit = 0, 0, None
    for name, kind, payload in items:
        t1 = time.perf_counter()
        try:
            if kind == "setup":
                exec(compile(ast.Module(body=[payload], type_ignores=[]), ns["__file__"], "exec"), ns)
                continue
            n_tests += 1
            if kind == "stmt":
                exec(compile(ast.Module(body=[payload], type_ignores=[]), ns["__file__"], "exec"), ns)
            elif kind == "func":
                _call(ns[payload])
            elif kind == "method":
                cls, meth = payload
                _call(getattr(ns[cls](), meth))
            else:
                ns["check"](mod.__dict__[payload] if payload in mod.__dict__ else ns[payload])
        except BaseException as e:
            if kind == "setup":
                emit({"done": True, "error": f"test setup failed: {_err(e)} {_where(e, TESTS_FILE)}".strip(),
                      "limit": _limit_of(e), "n_tests": n_tests})
                return 2
            n_failed += 1
            limit = limit or _limit_of(e)
            emit({"name": name, "passed": False, "error": f"{_err(e)} {_where(e, TESTS_FILE)}".strip(),
                  "time": round(time.perf_counter() - t1, 6)})
            if isinstance(e, (SystemExit, KeyboardInterrupt)):
                break
            continue
        emit({"name": name, "passed": True, "error": None, "time": round(time.perf_counter() - t1, 6)})
    emit({"done": True, "error": None if n_tests else "no tests found", "limit": limit,
          "n_tests": n_tests, "time": round(time.perf_counter() - t0, 6)})
    return 0 if (n_failed == 0 and n_tests) else 1


def _call(fn):
    import inspect

    params = [p for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty]
    if params:
        raise TypeError(f"test needs fixtures {[p.name for p in params]}; fixtures are not supported")
    out = fn()
    if inspect.iscoroutine(out):
        import asyncio

        asyncio.run(out)


# ---------------------------------------------------------------- one run


def wipe() -> None:
    for root in WORK_ROOTS:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for ent in entries:
            p = ent.path
            try:
                if ent.is_dir(follow_symlinks=False):
                    shutil.rmtree(p, onerror=_chmod_retry)
                else:
                    os.unlink(p)
            except OSError:
                pass


def _chmod_retry(func, path, _exc):
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path):
            os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def _set_limits(lim: dict) -> None:
    R = resource
    cpu = max(1, int(-(-float(lim["cpu_s"]) // 1)))
    R.setrlimit(R.RLIMIT_CPU, (cpu, cpu + 1))
    mem = int(lim["memory_mb"]) * 1024 * 1024
    R.setrlimit(R.RLIMIT_AS, (mem, mem))
    R.setrlimit(R.RLIMIT_DATA, (mem, mem))
    R.setrlimit(R.RLIMIT_FSIZE, (int(lim["file_size_mb"]) * 1024 * 1024,) * 2)
    R.setrlimit(R.RLIMIT_NOFILE, (int(lim["open_files"]),) * 2)
    R.setrlimit(R.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC counts the processes of this uid in this user namespace: bwrap's
    # init, the server and the run itself, so the code gets `processes` of its own.
    extra = int(lim.get("nproc_base", 2))
    R.setrlimit(R.RLIMIT_NPROC, (int(lim["processes"]) + extra,) * 2)
    R.setrlimit(R.RLIMIT_STACK, (min(64, int(lim["memory_mb"])) * 1024 * 1024,) * 2)


def _child(req: dict, out_w: int, err_w: int, res_w: int) -> None:
    """In the forked child: isolate, limit, then run. Never returns."""
    code = 70
    try:
        os.setsid()
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(s, signal.SIG_DFL)
        os.chdir(RUN_DIR)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, 3)
        os.closerange(4, 65536)
        os.environ.clear()
        os.environ.update(req.get("env") or {})
        with contextlib.suppress(Exception):  # the server is not dumpable; the run may be
            import ctypes

            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
        _set_limits(req["limits"])
        if _SECCOMP is not None and req.get("seccomp", True):
            _SECCOMP.load()
        if req.get("argv"):
            os.execve(req["argv"][0], req["argv"], dict(os.environ))
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115

        def emit(obj):
            data = (json.dumps(obj) + "\n").encode()
            while data:
                data = data[os.write(3, data):]

        code = run_harness(req, emit)
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode()[-2000:])
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


class _Tail:
    """Keeps the last `keep` bytes of a stream and counts the rest."""

    def __init__(self, keep: int):
        self.keep, self.buf, self.total = keep, bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.keep + 65536:
            del self.buf[: len(self.buf) - self.keep]

    def text(self) -> str:
        return bytes(self.buf[-self.keep:] if self.keep else b"").decode("utf-8", "replace")


def others() -> list[int]:
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            pids.append(int(name))
    return pids


def kill_others(timeout: float = 2.0) -> int:
    """SIGKILL every process in the sandbox but this one and init; wait until the
    kernel has reaped them (init reaps orphans). Returns how many were left."""
    left = others()
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        # our own children are reaped here; orphans by init
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        left = [p for p in others() if _alive(p)]
        if left:
            time.sleep(0.002)
    return len(left)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_one(req: dict) -> dict:
    lim = req["limits"]
    wipe()
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    for name, content in (req.get("files") or {}).items():
        if os.path.isabs(name) or ".." in name.split("/"):
            raise ValueError(f"file name {name!r} leaves the work dir")
        path = os.path.join(RUN_DIR, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    if req.get("code") is not None:
        with open(os.path.join(RUN_DIR, SOLUTION_FILE), "w", encoding="utf-8") as f:
            f.write(req["code"])
        with open(os.path.join(RUN_DIR, TESTS_FILE), "w", encoding="utf-8") as f:
            f.write(req.get("tests") or "")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (out_r, err_r, res_r):
            os.close(fd)
        _child(req, out_w, err_w, res_w)
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    keep = int(lim.get("output_tail", 2000))
    outs = {out_r: _Tail(keep), err_r: _Tail(keep)}
    results = bytearray()
    max_results = 1 << 20
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (out_r, err_r, res_r, pidfd):
        poller.register(fd, select.POLLIN)
    open_fds = {out_r, err_r, res_r}
    deadline = t0 + float(lim["wall_s"])
    output_limit = int(lim.get("output_limit", 1 << 22))
    reason = None
    exited = False
    while True:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            reason = "wall_time"
            break
        events = poller.poll(timeout * 1000)
        for fd, _ev in events:
            if fd == pidfd:
                exited = True
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            if fd == res_r:
                if len(results) < max_results:
                    results += data
            else:
                outs[fd].add(data)
        if sum(t.total for t in outs.values()) > output_limit:
            reason = "output_limit"
            break
        if exited:
            # drain what is already in the pipes; a grandchild may hold them open
            for fd in list(open_fds):
                os.set_blocking(fd, False)
                try:
                    while True:
                        data = os.read(fd, 65536)
                        if not data:
                            break
                        if fd == res_r:
                            if len(results) < max_results:
                                results += data
                        else:
                            outs[fd].add(data)
                except (BlockingIOError, OSError):
                    pass
            break
    wall = time.monotonic() - t0
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    _, status, ru = os.wait4(pid, 0)
    # anything still alive now was started by the run and meant to outlive it
    orphans = len([p for p in others() if _alive(p)]) if KILL_ALL else 0
    left = kill_others() if KILL_ALL else 0
    for fd in (out_r, err_r, res_r, pidfd):
        os.close(fd)
    wipe()
    cpu = ru.ru_utime + ru.ru_stime
    tests, done = [], None
    for line in bytes(results).decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if obj.get("done"):
            done = obj
        elif "name" in obj:
            tests.append({"name": str(obj.get("name")), "passed": bool(obj.get("passed")),
                          "error": obj.get("error"), "time": obj.get("time")})
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    cpu_limit = float(lim["cpu_s"])
    if reason is None:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05):
            reason = "cpu_time"
        elif sig is not None:
            reason = f"signal:{signal.Signals(sig).name}"
        elif done is not None and done.get("limit"):
            reason = str(done["limit"])
        elif orphans:
            reason = "background_process"
        elif req.get("argv"):
            reason = "passed" if exit_code == 0 else "failed"
        elif done is None:
            reason = "exited_early"
        elif done.get("error") and not tests:
            reason = "error"
        elif exit_code == 0 and tests and all(t["passed"] for t in tests):
            reason = "passed"
        else:
            reason = "failed"
    passed = reason == "passed"
    return {
        "passed": passed,
        "reason": reason,
        "tests": tests,
        "error": (done or {}).get("error"),
        "stdout": outs[out_r].text(),
        "stderr": outs[err_r].text(),
        "stdout_bytes": outs[out_r].total,
        "stderr_bytes": outs[err_r].total,
        "wall_s": round(wall, 6),
        "cpu_s": round(cpu, 6),
        "max_rss_kb": ru.ru_maxrss,
        "exit_code": exit_code,
        "signal": signal.Signals(sig).name if sig else None,
        "orphans_killed": orphans,
        "leftover_processes": left,
    }


def _no_dump() -> None:
    """PR_SET_DUMPABLE 0: a run (same uid) cannot ptrace the server or read its memory."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception:
        pass


def main() -> int:
    global _SECCOMP, RUN_DIR, KILL_ALL
    once = "--once" in sys.argv
    if "--root" in sys.argv:  # no pid namespace: never kill(-1), never touch /tmp
        root = sys.argv[sys.argv.index("--root") + 1]
        WORK_ROOTS[:] = [root]
        RUN_DIR = os.path.join(root, "run")
        KILL_ALL = False
    inp, out = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.set_inheritable(inp, False)
    os.set_inheritable(out, False)
    _no_dump()
    if "--no-seccomp" not in sys.argv:
        _SECCOMP = prepare_seccomp()
    write_msg(out, {"ready": True, "seccomp": _SECCOMP is not None, "pid": os.getpid(),
                    "python": sys.version.split()[0]})
    while True:
        req = read_msg(inp)
        if req is None:
            return 0
        try:
            resp = run_one(req)
        except Exception as e:  # the server's own failure: say so, keep serving
            resp = {"passed": False, "reason": "sandbox_error", "error": _err(e), "tests": []}
        write_msg(out, resp)
        if once:
            return 0


if __name__ == "__main__":
    sys.exit(main())
