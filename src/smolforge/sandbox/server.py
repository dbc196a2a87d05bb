"""The program that runs *inside* the sandbox (stdlib only, any Python >= 3.9).

It is started once per sandbox worker by `/usr/bin/python3 -I -S server.py` and
serves run requests read from stdin (a 4-byte big-endian length + JSON), answering
on stdout the same way. Each run happens in a fresh forked child:

- a fresh, empty work dir (`/tmp/run`); everything writable (`/tmp`, `/dev/shm`)
  is wiped before and after each run;
- its own process group, stdin from /dev/null, stdout/stderr and a result pipe
  to the server, every other descriptor closed;
- rlimits lowered in the child: CPU time, address space, processes, file size,
  open files, no core dumps; optionally a seccomp filter (no sockets except
  AF_UNIX, no io_uring, no ptrace);
- two children per run: S runs the code, T runs the tests against proxies of S's
  names and alone writes the verdict (see `Rpc`);
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

        # an allow-list: every address family but AF_UNIX fails (AF_VSOCK, AF_ALG,
        # AF_BLUETOOTH, ... and families a newer kernel adds)
        for call in ("socket", "socketpair"):
            f.add_rule(sc.ERRNO(NET_ERRNO), call, sc.Arg(0, sc.NE, _s.AF_UNIX))
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
    if getattr(e, "_sf_limit", None):  # raised in the solution's process, which saw its traceback
        return e._sf_limit
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
    if getattr(e, "_sf_where", None):  # raised in the solution's process
        return f"({e._sf_where})"
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


# The code and its tests run in two processes. The solution process S loads the
# code and serves calls on a pipe; the tests process T runs the tests with proxies
# of S's names and alone holds the result descriptor. S cannot write T's verdict,
# patch T's builtins, read T's expected values from its frames, or hand T an object
# that compares equal to anything: values cross as plain data (a codec that builds
# only builtin values), other objects stay in S behind proxies whose comparisons
# with T's own values are strict. T is not dumpable, so S (same uid) cannot ptrace
# it or open its descriptors; killing T only loses the run.

LIMIT_NAMES = {"memory", "processes", "file_size", "open_files", "disk_space", "network", "recursion"}
MAX_MSG = 64 << 20
MAX_DEPTH = 200


class _Gone(BaseException):
    """The other process exited or broke the protocol: no answer will come."""


def _err_info(e: BaseException) -> list:
    """An exception as plain data: [type name, message, errno, builtin base, limit, where]."""
    base = _builtin_base(type(e))
    text = str(e)[:2000]
    where = _where(e, SOLUTION_FILE).strip("()") or None
    return [type(e).__name__, text, e.errno if isinstance(e, OSError) else None, base, _limit_of(e), where]


class Rpc:
    """Calls between S and T over two pipes (length-prefixed JSON). Both sides serve
    the other's requests while they wait for an answer (callbacks). The side that
    owns an object keeps it; the other side gets a handle."""

    def __init__(self, rfd: int, wfd: int, ops: dict):
        self.rfd, self.wfd, self.ops = rfd, wfd, ops
        self.objs: dict = {}  # our objects the other side holds handles to
        self.proxies: dict = {}  # handles to the other side's objects
        self.excs: dict = {}
        self.gone = False

    # -- framing
    def send(self, obj) -> None:
        if self.ops is SOLUTION_OPS:  # S is killed once T is done: its output goes out first
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
        try:
            write_msg(self.wfd, obj)
        except OSError as e:
            self.gone = True
            raise _Gone("the other process is gone") from e

    def recv(self):
        if self.gone:
            raise _Gone("the solution's process exited")
        try:
            head = _read_exact(self.rfd, 4)
            body = None
            if head is not None and struct.unpack(">I", head)[0] <= MAX_MSG:
                body = _read_exact(self.rfd, struct.unpack(">I", head)[0])
            if body is None:
                self.gone = True
                raise _Gone("the solution's process exited (sys.exit, os._exit or killed)")
            msg = json.loads(body)
            if not isinstance(msg, dict):
                raise ValueError("not a message")
            return msg
        except (ValueError, OSError, RecursionError, MemoryError, UnicodeDecodeError) as e:
            self.gone = True
            raise _Gone(f"the solution's process exited or broke the protocol ({_err(e)})") from None

    # -- values
    def encode(self, v, depth: int = 0):
        t = type(v)
        if v is None or t in (bool, int, str):
            return v
        if t is float:
            return v if v == v and v not in (float("inf"), float("-inf")) else ["f", repr(v)]
        if depth > MAX_DEPTH:
            raise ValueError("value nested too deeply")
        d = depth + 1
        if t is list or t is tuple or t is set or t is frozenset:
            return [{list: "L", tuple: "T", set: "S", frozenset: "F"}[t], [self.encode(x, d) for x in v]]
        if t is dict:
            return ["D", [[self.encode(k, d), self.encode(x, d)] for k, x in v.items()]]
        if t is bytes:
            return ["B", v.hex()]
        if t is complex:
            return ["C", repr(v.real), repr(v.imag)]
        if isinstance(v, Proxy) and v._rpc is self:
            return ["H", v._id]
        mod = type(v).__module__
        if mod == "fractions" and t.__name__ == "Fraction":
            return ["Q", int(v.numerator), int(v.denominator)]
        if mod == "decimal" and t.__name__ == "Decimal":
            return ["Z", str(v)]
        if mod == "collections" and isinstance(v, dict):  # Counter, OrderedDict, defaultdict: compare as dicts
            return ["D", [[self.encode(k, d), self.encode(x, d)] for k, x in v.items()]]
        for base in (int, float, str):  # IntEnum and the like: compare as their value
            if isinstance(v, base) and t.__eq__ is base.__eq__ and t is not bool:
                return self.encode(getattr(base, f"__{base.__name__}__")(v), d)
        if isinstance(v, tuple) and hasattr(t, "_fields"):  # namedtuple
            return ["T", [self.encode(x, d) for x in v]]
        if isinstance(v, type(sys)) and v.__name__.split(".")[0] in getattr(sys, "stdlib_module_names", ()):
            return ["M", v.__name__]
        if isinstance(v, type) and issubclass(v, BaseException):
            return ["K", v.__name__, _builtin_base(v)]
        self.objs[id(v)] = v
        return ["R", id(v)]

    def decode(self, v, depth: int = 0):
        if not isinstance(v, list):
            if v is None or type(v) in (bool, int, float, str):
                return v
            raise ValueError("bad value")
        if depth > MAX_DEPTH or not v or not isinstance(v[0], str):
            raise ValueError("bad value")
        tag, rest, d = v[0], v[1:], depth + 1
        if tag in ("L", "T", "S", "F") and len(rest) == 1 and isinstance(rest[0], list):
            items = [self.decode(x, d) for x in rest[0]]
            return {"L": list, "T": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "D" and len(rest) == 1 and isinstance(rest[0], list):
            return {self.decode(k, d): self.decode(x, d) for k, x in rest[0]}
        if tag == "f" and rest in (["nan"], ["inf"], ["-inf"]):
            return float(rest[0])
        if tag == "B" and len(rest) == 1 and isinstance(rest[0], str):
            return bytes.fromhex(rest[0])
        if tag == "C" and len(rest) == 2 and all(isinstance(x, str) for x in rest):
            return complex(float(rest[0]), float(rest[1]))
        if tag == "Q" and len(rest) == 2 and all(type(x) is int for x in rest):
            from fractions import Fraction

            return Fraction(rest[0], rest[1])
        if tag == "Z" and len(rest) == 1 and isinstance(rest[0], str):
            from decimal import Decimal

            return Decimal(rest[0])
        if tag == "H" and len(rest) == 1 and rest[0] in self.objs:
            return self.objs[rest[0]]
        if tag == "R" and len(rest) == 1 and type(rest[0]) is int:
            if rest[0] not in self.proxies:
                self.proxies[rest[0]] = Proxy(self, rest[0])
            return self.proxies[rest[0]]
        if tag == "K" and len(rest) == 2 and all(isinstance(x, str) and x.isidentifier() for x in rest):
            return self.exc_class(*rest)
        if tag == "M" and len(rest) == 1 and isinstance(rest[0], str):
            return _std_module(rest[0])
        raise ValueError(f"bad value tag {tag!r}")

    def exc_class(self, name: str, base: str) -> type:
        """A local exception class standing for one of S's (same name, same builtin base)."""
        import builtins

        b = getattr(builtins, base, None)
        if not (isinstance(b, type) and issubclass(b, BaseException)):
            b = Exception
        if name == b.__name__:
            return b
        if (name, b) not in self.excs:
            self.excs[(name, b)] = type(name, (b,), {"__module__": "solution"})
        return self.excs[(name, b)]

    def raise_remote(self, info) -> None:
        if not (isinstance(info, list) and len(info) == 6 and all(isinstance(x, str) for x in (info[0], info[3]))
                and info[0].isidentifier()):
            raise _Gone("the solution's process broke the protocol (bad exception)")
        name, text, eno, base, limit, where = info
        cls = self.exc_class(name, base)
        text = str(text)[:2000]
        try:
            exc = cls(eno, text) if issubclass(cls, OSError) and type(eno) is int else cls(text)
        except Exception:
            exc = RuntimeError(f"{name}: {text}")
        exc._sf_where = str(where) if where else None
        exc._sf_limit = limit if limit in LIMIT_NAMES else None
        raise exc

    # -- calls
    def request(self, op: str, args: tuple, kw: dict | None = None):
        """Ask the other side to run `op(*args, **kw)`; serve its requests meanwhile."""
        self.send({"op": op, "a": [self.encode(a) for a in args],
                   "k": {str(k): self.encode(x) for k, x in (kw or {}).items()}})
        while True:
            msg = self.recv()
            if "op" in msg:
                self.serve(msg)
                continue
            if "e" in msg:
                self.raise_remote(msg["e"])
            try:
                out = self.decode(msg.get("r"))
                for i, new in (msg.get("after") or []) if op == "call" else []:
                    if type(i) is int and 0 < i < len(args):
                        _copy_back(args[i], self.decode(new))
            except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
                self.gone = True
                raise _Gone(f"the solution's process broke the protocol ({_err(e)})") from None
            return out

    def serve(self, msg: dict) -> None:
        fn = self.ops.get(msg.get("op"))
        try:
            if fn is None:
                raise TypeError(f"operation {msg.get('op')!r} not allowed")
            args = [self.decode(a) for a in msg.get("a") or []]
            kw = {str(k): self.decode(x) for k, x in (msg.get("k") or {}).items()}
            out = fn(*args, **kw)
            reply = {"r": self.encode(out)}
            if msg.get("op") == "call":
                reply["after"] = [[i, self.encode(a)] for i, a in enumerate(args)
                                  if i and type(a) in (list, dict, set)]
        except _Gone:
            raise
        except BaseException as e:
            reply = {"e": _err_info(e)}
        self.send(reply)

    def serve_forever(self) -> None:
        while True:
            try:
                msg = self.recv()
            except _Gone:
                return
            if "op" in msg:
                self.serve(msg)


_BUILTIN_NAMES = set(dir(__builtins__) if isinstance(__builtins__, type(sys)) else __builtins__)


def _builtin_base(cls: type) -> str:
    """The nearest builtin exception class an exception class derives from."""
    import builtins

    return next((c.__name__ for c in cls.__mro__ if getattr(builtins, c.__name__, None) is c), "Exception")


def _copy_back(local, new) -> None:
    """An argument the solution changed in place (list.sort, dict updates) changes here too."""
    if type(local) is list and type(new) is list:
        local[:] = new
    elif type(local) in (dict, set) and type(new) is type(local):
        local.clear()
        local.update(new)


_UNSAFE_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "pydoc"}


def _std_module(name: str):
    """A standard-library module the solution imported: T imports its own copy."""
    import importlib

    top = name.split(".")[0]
    if top.startswith("_") or top in _UNSAFE_MODULES or top not in getattr(sys, "stdlib_module_names", ()):
        raise ValueError(f"module {name!r} not importable here")
    return importlib.import_module(name)


def _strict(self, other):
    return isinstance(other, Proxy) and other._rpc is self._rpc


def _binop(name: str, swap: bool = False):
    def op(self, other):
        if not _strict(self, other):
            return NotImplemented  # a solution object never computes with the tests' own values
        return self._rpc.request(name, (other, self) if swap else (self, other))
    return op


def _unop(name: str):
    return lambda self, *a: self._rpc.request(name, (self, *a))


class Proxy:
    """An object of the other process. Equality and order with this process's own
    values are strict (a proxy equals no local value); everything else is a call."""

    __slots__ = ("_rpc", "_id")

    def __init__(self, rpc: Rpc, oid: int):
        object.__setattr__(self, "_rpc", rpc)
        object.__setattr__(self, "_id", oid)

    def __call__(self, *a, **k):
        return self._rpc.request("call", (self, *a), k)

    def __getattr__(self, name):
        return self._rpc.request("getattr", (self, name))

    def __setattr__(self, name, value):
        self._rpc.request("setattr", (self, name, value))

    def __delattr__(self, name):
        self._rpc.request("delattr", (self, name))

    def __eq__(self, other):
        return self._rpc.request("eq", (self, other)) if _strict(self, other) else False

    def __ne__(self, other):
        return self._rpc.request("ne", (self, other)) if _strict(self, other) else True

    __hash__ = object.__hash__

    def __bool__(self):
        out = self._rpc.request("bool", (self,))
        if type(out) is not bool:
            raise TypeError("__bool__ should return bool")
        return out

    def __contains__(self, item):
        return any(item == x for x in self)

    def __repr__(self):
        out = self._rpc.request("repr", (self,))
        return out if type(out) is str else "<solution object>"

    def __str__(self):
        out = self._rpc.request("str", (self,))
        return out if type(out) is str else "<solution object>"

    def __iter__(self):
        it = self._rpc.request("iter", (self,))
        return it if isinstance(it, Proxy) else iter(it)

    def __next__(self):
        return self._rpc.request("next", (self,))

    def __enter__(self):
        return self._rpc.request("enter", (self,))

    def __exit__(self, *exc):
        return False


for _n in ("lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and",
           "or", "xor", "lshift", "rshift"):
    setattr(Proxy, f"__{_n}__", _binop(_n))
    if _n not in ("lt", "le", "gt", "ge"):
        setattr(Proxy, f"__r{_n}__", _binop(_n, swap=True))
for _n in ("len", "getitem", "setitem", "delitem", "neg", "pos", "abs", "invert", "int", "float", "index",
           "round", "format"):
    setattr(Proxy, f"__{_n}__", _unop(_n))

import operator as _op  # noqa: E402

# What S does on T's behalf (anything with its own objects), and what T does on S's
# behalf (only call back what the tests handed over: no attribute walks into T).
SOLUTION_OPS = {
    "call": lambda f, *a, **k: f(*a, **k), "getattr": getattr, "setattr": setattr, "delattr": delattr,
    "getitem": _op.getitem, "setitem": _op.setitem, "delitem": _op.delitem, "len": len, "iter": iter,
    "next": next, "repr": repr, "str": str, "bool": bool, "eq": _op.eq, "ne": _op.ne, "lt": _op.lt,
    "le": _op.le, "gt": _op.gt, "ge": _op.ge, "add": _op.add, "sub": _op.sub, "mul": _op.mul,
    "truediv": _op.truediv, "floordiv": _op.floordiv, "mod": _op.mod, "pow": pow, "matmul": _op.matmul,
    "and": _op.and_, "or": _op.or_, "xor": _op.xor, "lshift": _op.lshift, "rshift": _op.rshift,
    "neg": _op.neg, "pos": _op.pos, "abs": abs, "invert": _op.invert, "int": int, "float": float,
    "index": _op.index, "round": round, "format": format, "enter": lambda o: o.__enter__(),
}
TESTS_OPS = {k: SOLUTION_OPS[k] for k in ("call", "iter", "next", "len", "repr", "str", "bool")}


def serve_solution(req: dict, rpc: Rpc) -> int:
    """S: load the code as module `solution`, tell T its names, then serve calls."""
    import types

    sys.path.insert(0, os.getcwd())
    sys.argv = [SOLUTION_FILE]
    mod = types.ModuleType("solution")
    mod.__file__ = os.path.join(os.getcwd(), SOLUTION_FILE)
    sys.modules["solution"] = mod
    try:
        exec(compile(req.get("code") or "", mod.__file__, "exec"), mod.__dict__)
    except BaseException as e:  # SyntaxError, import error, SystemExit, MemoryError ...
        rpc.send({"ok": False, "error": f"solution failed: {_err(e)} {_where(e, SOLUTION_FILE)}".strip(),
                  "limit": _limit_of(e)})
        return 2
    names = {}
    for k, v in list(mod.__dict__.items()):
        if not k.startswith("__"):
            with contextlib.suppress(Exception):
                names[k] = rpc.encode(v)
    rpc.send({"ok": True, "names": names})
    rpc.serve_forever()
    return 0


def run_harness(req: dict, emit, rpc: Rpc) -> int:
    """T: run the tests against S's names; emit one JSON object per test and a final
    {"done": ...}. Returns the exit code (0: every test passed)."""
    import types

    t0 = time.perf_counter()
    try:  # parsed while S loads the code
        items = collect_tests(req.get("tests") or "", req.get("style", "auto"), req.get("entry_point"))
    except BaseException as e:
        items, parse_error = None, f"tests did not parse: {_err(e)}"
    try:
        hello = rpc.recv()
        if not hello.get("ok"):
            limit = hello.get("limit") if hello.get("limit") in LIMIT_NAMES else None
            emit({"done": True, "error": str(hello.get("error") or "solution failed")[:2000], "limit": limit,
                  "n_tests": 0})
            return 2
        names = {}
        for k, v in dict(hello.get("names") or {}).items():
            # the solution's own names only: not __builtins__ and the like, and no
            # stand-ins for builtins the tests use (a solution's `all` returning True)
            if not (isinstance(k, str) and k.isidentifier() and not k.startswith("__")):
                continue
            if k in _BUILTIN_NAMES and k != req.get("entry_point"):
                continue
            with contextlib.suppress(ValueError, TypeError, KeyError, ImportError, RecursionError):
                names[k] = rpc.decode(v)
    except _Gone:
        emit({"done": True, "error": "the solution's process exited while loading (sys.exit, os._exit, killed)",
              "limit": "exited_early", "n_tests": 0})
        return 2
    mod = types.ModuleType("solution")
    mod.__dict__.update(names)
    sys.modules["solution"] = mod
    if items is None:
        emit({"done": True, "error": parse_error, "n_tests": 0, "limit": None})
        return 2
    ns = dict(names)
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
                ns["check"](names[payload] if payload in names else ns[payload])
        except BaseException as e:
            if kind == "setup":
                emit({"done": True, "error": f"test setup failed: {_err(e)} {_where(e, TESTS_FILE)}".strip(),
                      "limit": _limit_of(e) or ("exited_early" if rpc.gone else None), "n_tests": n_tests})
                return 2
            n_failed += 1
            limit = limit or _limit_of(e)
            emit({"name": name, "passed": False, "error": f"{_err(e)} {_where(e, TESTS_FILE)}".strip(),
                  "time": round(time.perf_counter() - t1, 6)})
            if isinstance(e, (SystemExit, KeyboardInterrupt)) or rpc.gone:
                break
            continue
        emit({"name": name, "passed": True, "error": None, "time": round(time.perf_counter() - t1, 6)})
    emit({"done": True, "error": None if n_tests else "no tests found",
          "limit": limit or ("exited_early" if rpc.gone else None),
          "n_tests": n_tests, "time": round(time.perf_counter() - t0, 6)})
    return 0 if (n_failed == 0 and n_tests and not rpc.gone) else 1

def _call(fn):
    """Call a test function; one with arguments wants pytest fixtures. (Read from
    the code object: importing inspect costs milliseconds in every run.)"""
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    if code is not None:
        n = code.co_argcount + code.co_kwonlyargcount
        names = list(code.co_varnames[:n])[1 if func is not fn else 0:]
        optional = len(func.__defaults__ or ()) + len(func.__kwdefaults__ or {})
        params = names[:len(names) - optional] if optional else names
        if params:
            raise TypeError(f"test needs fixtures {params}; fixtures are not supported")
    out = fn()
    if type(out).__name__ == "coroutine":
        import asyncio

        asyncio.run(out)


# ---------------------------------------------------------------- one run


WIPE_S = 1.5  # longer than this and the sandbox is replaced instead (a fresh tmpfs)
_ROOT_MODES: dict = {}


def wipe() -> bool:
    """Empty the writable dirs; True when they are empty. Iterative and by descriptor,
    so no depth, name length or permission a run leaves behind can break it; a tree
    too big to remove in WIPE_S (or anything else) returns False and the server exits
    after answering, so the next run gets a fresh sandbox."""
    deadline = time.monotonic() + WIPE_S
    ok = True
    for root in WORK_ROOTS:
        try:
            mode = _ROOT_MODES.setdefault(root, os.stat(root).st_mode & 0o7777)
            os.chmod(root, mode)
            _empty(root, deadline)
        except FileNotFoundError:
            continue
        except Exception:
            ok = False
    return ok


def _empty(root: str, deadline: float) -> None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    below: list = []  # names from root down to the dir `fd` is
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("wipe took too long")
            sub, seen = None, 0
            with os.scandir(fd) as it:
                for ent in it:
                    seen += 1
                    if ent.is_dir(follow_symlinks=False):
                        sub = ent.name
                        break
                    os.unlink(ent.name, dir_fd=fd)
            if sub is not None:
                os.chmod(sub, 0o700, dir_fd=fd)  # a dir without x or w for its owner
                nfd = os.open(sub, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
                below.append(sub)
            elif seen:
                continue  # removed files: look again until the dir is empty
            elif not below:
                return
            else:
                parent = os.open("..", flags, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(below.pop(), dir_fd=fd)
    finally:
        os.close(fd)


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
    # init, the server and the tests' process, so the code gets `processes` of its own.
    extra = int(lim.get("nproc_base", 3))
    R.setrlimit(R.RLIMIT_NPROC, (int(lim["processes"]) + extra,) * 2)
    R.setrlimit(R.RLIMIT_STACK, (min(64, int(lim["memory_mb"])) * 1024 * 1024,) * 2)


def _child(req: dict, role: str, fds: dict) -> None:
    """In a forked child: isolate, limit, then run. Never returns.

    `role` is "solution" (S: the code, fds 3/4 the call pipes from/to T), "tests"
    (T: fd 3 the result pipe, 4/5 the call pipes from/to S) or "exec" (`argv`).
    `fds` maps each descriptor number to the server's descriptor to put there."""
    code = 70
    if role == "solution":  # the code must not find the tests in its copy of our memory (frames, gc)
        req.pop("tests", None)
    try:
        # its own process group (what the server kills at the end); not setsid,
        # which costs ~3 ms inside bubblewrap and gives nothing more here (no tty)
        os.setpgid(0, 0)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(s, signal.SIG_DFL)
        os.chdir(RUN_DIR)
        import fcntl

        high = {n: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 256) for n, fd in fds.items()}
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        for n, fd in high.items():
            # only the run's own output is inherited by what it execs; the call pipes are not
            os.dup2(fd, n, inheritable=n <= 2)
        os.closerange(max(fds) + 1, 65536)
        os.environ.clear()
        os.environ.update(req.get("env") or {})
        if role != "tests":  # the server is not dumpable, nor is T (S must not ptrace it); the code may be
            with contextlib.suppress(Exception):
                import ctypes

                ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
        _set_limits(req["limits"])
        if _SECCOMP is not None and req.get("seccomp", True):
            _SECCOMP.load()
        if role == "exec":
            os.execve(req["argv"][0], req["argv"], dict(os.environ))
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        if role == "solution":
            code = serve_solution(req, Rpc(3, 4, SOLUTION_OPS))
        else:

            def emit(obj):
                data = (json.dumps(obj) + "\n").encode()
                while data:
                    data = data[os.write(3, data):]

            code = run_harness(req, emit, Rpc(4, 5, TESTS_OPS))
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


def _spawn(req: dict, role: str, fds: dict) -> int:
    pid = os.fork()
    if pid == 0:
        _child(req, role, fds)
    return pid


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


class Poisoned(Exception):
    """The work dirs could not be emptied: this sandbox must not serve another run."""


def _reap(pid: int, block: bool):
    """(status, rusage) of an exited child, or None if it is still running."""
    got, status, ru = os.wait4(pid, 0 if block else os.WNOHANG)
    return (status, ru) if got else None


def run_one(req: dict) -> dict:
    lim = req["limits"]
    if not wipe():
        raise Poisoned("the sandbox's temp dirs could not be emptied before the run")
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    for name, content in (req.get("files") or {}).items():
        if os.path.isabs(name) or ".." in name.split("/"):
            raise ValueError(f"file name {name!r} leaves the work dir")
        path = os.path.join(RUN_DIR, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    if req.get("code") is not None:  # the tests stay in T's memory: the code cannot read them
        with open(os.path.join(RUN_DIR, SOLUTION_FILE), "w", encoding="utf-8") as f:
            f.write(req["code"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    t0 = time.monotonic()
    ends = [out_w, err_w, res_w]
    if req.get("argv"):
        pid_s = None
        pid = _spawn(req, "exec", {1: out_w, 2: err_w, 3: res_w})
    else:
        to_s_r, to_s_w = os.pipe()
        to_t_r, to_t_w = os.pipe()
        ends += [to_s_r, to_s_w, to_t_r, to_t_w]
        pid_s = _spawn(req, "solution", {1: out_w, 2: err_w, 3: to_s_r, 4: to_t_w})
        pid = _spawn(req, "tests", {1: out_w, 2: err_w, 3: res_w, 4: to_t_r, 5: to_s_w})
    for fd in ends:
        os.close(fd)
    keep = int(lim.get("output_tail", 2000))
    outs = {out_r: _Tail(keep), err_r: _Tail(keep)}
    results = bytearray()
    max_results = 1 << 20
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (out_r, err_r, res_r, pidfd):
        poller.register(fd, select.POLLIN)
    pidfd_s = None
    if pid_s is not None:
        pidfd_s = os.pidfd_open(pid_s)
        poller.register(pidfd_s, select.POLLIN)
    s_end = None  # S's own exit (before we killed it): (status, rusage)
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
            if fd == pidfd_s:
                poller.unregister(fd)
                s_end = _reap(pid_s, True)
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
    # T saw S's pipe close: S is exiting by itself (closing its files comes before
    # its exit status): wait for that status instead of killing it
    if (pid_s is not None and s_end is None and done is not None and done.get("limit") == "exited_early"
            and select.select([pidfd_s], [], [], 1.0)[0]):
        s_end = _reap(pid_s, True)
    for p in (pid, pid_s):
        if p is not None:
            with contextlib.suppress(OSError):
                os.killpg(p, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
    _, status, ru = os.wait4(pid, 0)
    s_ru = None
    if pid_s is not None:
        killed = _reap(pid_s, True) if s_end is None else None
        s_ru = (s_end or killed)[1]
    # anything still alive now was started by the run and meant to outlive it
    orphans = len([p for p in others() if _alive(p)]) if KILL_ALL else 0
    left = kill_others() if KILL_ALL else 0
    for fd in (out_r, err_r, res_r, pidfd, *([pidfd_s] if pidfd_s is not None else [])):
        os.close(fd)
    cpu_limit = float(lim["cpu_s"])
    t_cpu = ru.ru_utime + ru.ru_stime
    s_cpu = s_ru.ru_utime + s_ru.ru_stime if s_ru else 0.0
    # the code's own process decides signal and exit code when it died by itself
    own = [(s_end[0], s_cpu)] if s_end is not None and os.WIFSIGNALED(s_end[0]) else []
    own.append((status, t_cpu))
    sig, exit_code, proc_cpu = None, None, t_cpu
    for st, c in own:
        if os.WIFSIGNALED(st):
            sig, proc_cpu = os.WTERMSIG(st), c
            break
    if sig is None:
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if reason is None:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and proc_cpu >= cpu_limit - 0.05):
            reason = "cpu_time"
        elif sig is not None:
            reason = f"signal:{signal.Signals(sig).name}"
        elif done is not None and done.get("limit") in LIMIT_NAMES | {"exited_early"}:
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
    resp = {
        "passed": passed,
        "reason": reason,
        "tests": tests,
        "error": (done or {}).get("error"),
        "stdout": outs[out_r].text(),
        "stderr": outs[err_r].text(),
        "stdout_bytes": outs[out_r].total,
        "stderr_bytes": outs[err_r].total,
        "wall_s": round(wall, 6),
        "cpu_s": round(t_cpu + s_cpu, 6),
        "max_rss_kb": max(ru.ru_maxrss, s_ru.ru_maxrss if s_ru else 0),
        "exit_code": exit_code,
        "signal": signal.Signals(sig).name if sig else None,
        "orphans_killed": orphans,
        "leftover_processes": left,
    }
    if not wipe():  # a tree the wipe cannot remove: answer, then make way for a fresh sandbox
        resp["restart"] = True
    return resp


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
    # imported once here, not in every run's two children
    import ctypes  # noqa: F401
    import fcntl  # noqa: F401
    import types  # noqa: F401
    if "--no-seccomp" not in sys.argv:
        _SECCOMP = prepare_seccomp()
    # the children of a fork server: objects that exist now are never collected
    # there, so a child's garbage collection does not copy every page it shares
    import gc

    gc.freeze()
    write_msg(out, {"ready": True, "seccomp": _SECCOMP is not None, "pid": os.getpid(),
                    "python": sys.version.split()[0]})
    while True:
        req = read_msg(inp)
        if req is None:
            return 0
        try:
            resp = run_one(req)
        except Exception as e:  # the server's own failure: say so, and make way for a fresh sandbox
            resp = {"passed": False, "reason": "sandbox_error", "error": _err(e), "tests": [], "restart": True}
        write_msg(out, resp)
        if once or resp.get("restart"):
            return 0


if __name__ == "__main__":
    sys.exit(main())
