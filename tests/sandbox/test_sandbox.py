"""The code sandbox (smolforge.sandbox), attacked for real: every test runs hostile
code in the real bubblewrap sandbox and checks both the reported reason and that
the host is unaffected (files, processes, listeners, memory).

Needs bubblewrap (Debian `bubblewrap`) and util-linux `setpriv`; as root the sandbox
drops to uid 65534, otherwise bwrap runs unprivileged in a user namespace. The
host-side sentinel of the kill(-1) test needs root (it runs as the sandbox's uid)."""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT as REPO

from smolforge.sandbox import Job, Limits, SandboxUnavailable, open_sandbox
from smolforge.sandbox import bwrap as bwrap_mod

LIMITS = Limits(wall_s=20, cpu_s=2, memory_mb=256, processes=12, output_limit=1 << 20, output_tail=500)
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sb():
    with open_sandbox("bwrap", limits=LIMITS, workers=1) as s:
        yield s


def descendants(pid: int) -> list[int]:
    """Host pids below `pid` (its whole process tree)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree(sb) -> int:
    w = sb._all[0]
    if w.proc is None:
        w.start()
    return len(descendants(w.proc.pid))


def host_cmdlines(marker: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return [p for p in found if p != os.getpid()]


def run(sb, code: str, tests: str = "assert True", **lim):
    limits = LIMITS.model_copy(update=lim) if lim else None
    return sb.run_one(Job(code=code, tests=tests), limits)


def test_ordinary_code_passes_and_fails_per_test(sb):
    ok = run(sb, "def add(a, b):\n    return a + b\nprint('hello')",
             "assert add(1, 2) == 3\nassert add(2, 2) == 5\n\ndef test_zero():\n    assert add(0, 0) == 0\n",
             )
    # top-level asserts and test functions are each a test, in order
    assert ok.reason == "failed" and not ok.passed and ok.stdout == "hello\n"
    assert [(t.name, t.passed) for t in ok.tests] == [
        ("line 1: assert add(1, 2) == 3", True), ("line 2: assert add(2, 2) == 5", False), ("test_zero", True)]
    assert ok.summary().startswith("failed 1/3 test(s): line 2: assert add(2, 2) == 5: AssertionError")
    bad = run(sb, "def add(a, b):\n    return a - b", "assert add(1, 2) == 3\nassert add(2, 0) == 2\n")
    assert bad.reason == "failed" and [t.passed for t in bad.tests] == [False, True]
    assert "line 1: assert add(1, 2) == 3" in bad.summary() and "AssertionError" in bad.summary()


def test_fork_bomb(sb):
    base = tree(sb)
    t0 = time.monotonic()
    res = run(sb, "import os\nwhile True:\n    os.fork()")
    assert res.reason == "processes", res.summary()
    assert "fork" in res.summary() or "process limit" in res.summary()
    assert time.monotonic() - t0 < 15
    # host: nothing left below the sandbox beyond its own init + server, and we can still fork
    assert tree(sb) == base
    assert subprocess.run(["/usr/bin/true"]).returncode == 0


def test_memory_bomb(sb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = run(sb, "a = []\nwhile True:\n    a.append(bytearray(10**7))", memory_mb=128, cpu_s=10)
    assert res.reason == "memory", res.summary()
    assert res.max_rss_kb < 140 * 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # host process untouched
    one_shot = run(sb, "x = bytearray(10**10)", memory_mb=128)
    assert one_shot.reason == "memory" and "MemoryError" in one_shot.summary()


def test_infinite_loop_cpu_and_sleep_wall(sb):
    res = run(sb, "while True:\n    pass", cpu_s=1)
    assert res.reason == "cpu_time" and res.cpu_s >= 0.9, res.summary()
    t0 = time.monotonic()
    slept = run(sb, "import time\ntime.sleep(60)", wall_s=1)
    assert slept.reason == "wall_time" and time.monotonic() - t0 < 10, slept.summary()


def test_busy_loop_in_signal_handlers(sb):
    code = (
        "import signal\n"
        "def spin(*a):\n"
        "    while True:\n"
        "        pass\n"
        "for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
        "    signal.signal(s, spin)\n"
        "signal.alarm(1)\n"
        "while True:\n"
        "    pass\n"
    )
    res = run(sb, code, cpu_s=1)
    assert res.reason == "cpu_time" and res.signal == "SIGKILL", res.summary()
    # SIGTERM ignored and no CPU used: the wall-time SIGKILL still ends it
    t0 = time.monotonic()
    res = run(sb, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  "while True:\n    time.sleep(0.01)", wall_s=1)
    assert res.reason == "wall_time" and time.monotonic() - t0 < 10, res.summary()


def test_writes_outside_the_temp_dir(sb, tmp_path):
    target = tmp_path / "pwned"
    paths = [str(target), "/usr/pwned", "/pwned", "/etc/pwned", "/dev/pwned", "/proc/pwned", "/sandbox/pwned"]
    code = (
        "import os\nfailed = []\n"
        f"for p in {paths!r}:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "    except OSError as e:\n"
        "        failed.append(p)\n"
        "open('mine.txt', 'w').write('ok')\n"
    )
    res = run(sb, code, f"assert failed == {paths!r}\nassert open('mine.txt').read() == 'ok'")
    assert res.passed, res.summary()
    assert not target.exists() and not Path("/pwned").exists() and not Path("/usr/pwned").exists()
    # a direct write to a host path is reported, and the host file never appears
    direct = run(sb, f"open({str(target)!r}, 'w').write('x')")
    assert direct.reason == "error" and "FileNotFoundError" in direct.summary()
    assert not target.exists()
    # and the work dir is fresh each run: the previous run's file is gone
    assert run(sb, "import os", "assert not os.path.exists('mine.txt')").passed


def test_secrets_are_invisible(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    canary = home / ".ssh" / "id_rsa"
    canary.write_text("CANARY-PRIVATE-KEY-7781")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SMOLFORGE_TEST_SECRET", "CANARY-ENV-4417")
    code = (
        "import os\nleaks = []\n"
        f"for p in [os.path.expanduser('~/.ssh/id_rsa'), {str(canary)!r}, '/etc/shadow', '/root/.ssh',"
        f" '/root', {str(Path.cwd())!r}, '/work', '/home']:\n"
        "    try:\n"
        "        leaks.append((p, open(p).read() if os.path.isfile(p) else os.listdir(p)))\n"
        "    except OSError:\n"
        "        pass\n"
        "env = dict(os.environ)\nprint(leaks, env)\n"
    )
    with open_sandbox("bwrap", limits=LIMITS, workers=1) as s:
        res = s.run_one(Job(code, "assert leaks == []\nassert 'SMOLFORGE_TEST_SECRET' not in env"))
    assert res.passed, res.summary()
    assert "CANARY" not in res.stdout and "CANARY" not in res.stderr
    # reading the shadow file is reported with the error that stopped it
    with open_sandbox("bwrap", limits=LIMITS, workers=1) as s:
        shadow = s.run_one(Job("print(open('/etc/shadow').read())", "assert True"))
    assert shadow.reason == "error" and "/etc/shadow" in shadow.summary()


@pytest.mark.parametrize("seccomp", [True, False])
def test_sockets_reach_nothing(seccomp):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'exfiltrated')\n"
    )
    try:
        with open_sandbox("bwrap", limits=LIMITS, workers=1, seccomp=seccomp) as s:
            res = s.run_one(Job(code, "assert True"))
            udp = s.run_one(Job(f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                                f".sendto(b'x', ('127.0.0.1', {port}))", "assert True"))
        assert res.reason == "network", res.summary()
        # with seccomp, socket() itself fails; without it, the empty namespace refuses
        assert ("Address family not supported" in res.summary()) == seccomp
        assert udp.reason == ("network" if seccomp else "passed"), udp.summary()  # UDP to its own lo: lost
        readable, _, _ = select.select([listener], [], [], 0.2)
        assert readable == []  # the host listener never saw a connection
    finally:
        listener.close()


def test_killing_the_parent(sb):
    sentinel = None
    if ROOT:  # a host process with the sandbox's own uid: kill(-1) would reach it without the pid namespace
        sentinel = subprocess.Popen(["setpriv", f"--reuid={sb.uid}", f"--regid={sb.uid}", "--clear-groups",
                                     "/usr/bin/sleep", "77.25"])
    try:
        res = run(sb, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time; time.sleep(5)")
        assert res.reason == "sandbox_killed", res.summary()
        res = run(sb, "import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time; time.sleep(5)")
        assert res.reason == "sandbox_killed", res.summary()
        res = run(sb, "import subprocess\nsubprocess.run(['kill', '-9', '-1'])\nimport time; time.sleep(5)")
        assert res.reason == "sandbox_killed", res.summary()
        if sentinel is not None:
            assert sentinel.poll() is None  # still alive
        assert run(sb, "x = 1", "assert x == 1").passed  # a fresh sandbox took over
    finally:
        if sentinel is not None:
            sentinel.kill()
            sentinel.wait()


def test_background_process_does_not_outlive_the_run(sb):
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/usr/bin/sleep', ['/usr/bin/sleep', '4242.5'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    base = tree(sb)
    res = run(sb, code)
    assert res.reason == "background_process" and res.orphans_killed == 1, res.summary()
    assert res.leftover_processes == 0
    assert host_cmdlines("4242.5") == []
    assert tree(sb) == base


def test_huge_stdout_is_capped(sb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = run(sb, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert res.reason == "output_limit", res.summary()
    assert len(res.stdout) == 500 and set(res.stdout) == {"x"}
    assert res.stdout_bytes > LIMITS.output_limit
    big = run(sb, "print('y' * 300000)\nimport sys\nprint('end', file=sys.stderr)")
    assert big.passed and big.stdout_bytes == 300001 and big.stdout.endswith("y\n") and len(big.stdout) == 500
    assert big.stderr == "end\n"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024


def test_file_size_and_open_files_limits(sb):
    res = run(sb, "open('big', 'wb').write(b'x' * (20 << 20))", file_size_mb=1)
    assert res.reason == "file_size", res.summary()
    res = run(sb, "fs = [open('f%d' % i, 'w') for i in range(200)]")
    assert res.reason == "open_files", res.summary()


def test_unsandboxed_needs_explicit_opt_in(monkeypatch):
    with pytest.raises(SandboxUnavailable, match="allow_unsandboxed"):
        open_sandbox("none")
    # bubblewrap missing on the machine: a clear refusal that says how to fix it
    monkeypatch.setattr(bwrap_mod, "bwrap_path", lambda: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*sandbox: none"):
        open_sandbox("auto")
    with open_sandbox("none", allow_unsandboxed=True, limits=LIMITS, workers=1) as s:
        res = s.run_one(Job("def f():\n    return 2", "assert f() == 2"))
        slow = s.run_one(Job("while True:\n    pass", "assert True"), LIMITS.model_copy(update={"cpu_s": 1}))
    assert res.passed and slow.reason == "cpu_time"


# ---------------------------------------------------------------- issue 27: the sandbox against an adversary

FAKE_VERDICT = ('b\'{"name": "line 1", "passed": true, "error": null, "time": 0}\\n'
                '{"done": true, "error": null, "limit": null, "n_tests": 1, "time": 0}\\n\'')


@pytest.mark.parametrize("attack, code", [
    ("fake result lines on the runner's descriptor, then os._exit(0)",
     "import os\n"
     "for fd in range(3, 12):\n"
     "    try:\n"
     f"        os.write(fd, {FAKE_VERDICT})\n"
     "    except OSError:\n"
     "        pass\n"
     "os._exit(0)\n"),
    ("patching builtins.exec so no assert runs",
     "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef f(x):\n    return 0\n"),
    ("an object whose __eq__ is always true",
     "class Yes:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
     "    __hash__ = object.__hash__\n"
     "def f(x):\n    return Yes()\n"),
    ("always-equal objects inside a list",
     "class Yes:\n    __eq__ = lambda s, o: True\n    __hash__ = object.__hash__\n"
     "def f(x):\n    return Yes() if x == 1 else [Yes(), Yes()]\n"),
    ("a thread that writes the verdict while the test runs",
     "import os, threading, time\n"
     "def spoof():\n"
     "    time.sleep(0.1)\n"
     "    for fd in range(3, 12):\n"
     "        try:\n"
     f"            os.write(fd, {FAKE_VERDICT})\n"
     "        except OSError:\n"
     "            pass\n"
     "    os._exit(0)\n"
     "threading.Thread(target=spoof, daemon=True).start()\n"
     "def f(x):\n    time.sleep(2)\n    return 0\n"),
    ("reading the expected value from the caller's frame",
     "import sys\n"
     "def f(x):\n"
     "    fr = sys._getframe(1)\n"
     "    while fr is not None:\n"
     "        if fr.f_code.co_filename.endswith('test_solution.py'):\n"
     "            ints = [c for c in fr.f_code.co_consts if isinstance(c, int) and c != x]\n"
     "            return ints[0] if len(ints) == 1 else ints\n"
     "        fr = fr.f_back\n"
     "    return None\n"),
    ("reading the tests from the runner's memory (frames, gc)",
     "import gc, re, sys\n"
     "def f(x):\n"
     "    found = [o for o in gc.get_objects() if isinstance(o, dict) and isinstance(o.get('tests'), str)]\n"
     "    fr = sys._getframe()\n"
     "    while fr is not None:\n"
     "        found += [v for v in fr.f_locals.values() if isinstance(v, dict) and isinstance(v.get('tests'), str)]\n"
     "        fr = fr.f_back\n"
     "    for req in found:\n"
     "        m = re.search(r'f\\(%d\\) == (.+)' % x, req['tests'])\n"
     "        if m:\n"
     "            return eval(m.group(1))\n"),
    ("writing the verdict through another process's /proc/<pid>/fd, then os._exit(0)",
     "import os\n"
     "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"
     "    for fd in range(0, 12):\n"
     "        try:\n"
     "            with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:\n"
     f"                f.write({FAKE_VERDICT})\n"
     "        except OSError:\n"
     "            pass\n"
     "os._exit(0)\n"),
    ("reading the tests file",
     "import re\n"
     "def f(x):\n"
     "    return eval(re.search(r'f\\(%d\\) == (.+)' % x, open('test_solution.py').read()).group(1))\n"),
])
def test_wrong_code_cannot_fake_its_verdict(sb, attack, code):
    """The tests run in a process the code cannot reach: it has no descriptor to the
    result channel, its builtins and frames are its own, and its return values reach
    the tests as plain data (an object equals no expected value)."""
    res = run(sb, code, "assert f(1) == 42\nassert f(2) == [42, 43]\n")
    assert not res.passed and res.reason in ("failed", "exited_early", "error"), (attack, res.summary())
    # the same harness passes honest code
    honest = run(sb, "def f(x):\n    return 42 if x == 1 else [42, 43]", "assert f(1) == 42\nassert f(2) == [42, 43]\n")
    assert honest.passed, honest.summary()


def test_a_solution_cannot_replace_the_builtins_the_tests_use(sb):
    shadow = run(sb, "def all(xs):\n    return True\ndef len(x):\n    return 3\ndef f(x):\n    return x",
                 "assert all(f(x) == x + 1 for x in [1, 2])\nassert len(f([1])) == 3")
    assert shadow.reason == "failed" and [t.passed for t in shadow.tests] == [False, False], shadow.summary()
    # an entry point named like a builtin is still the solution's (HumanEval's check(candidate))
    named = run(sb, "def sum(xs):\n    return 7", "def check(candidate):\n    assert candidate([1]) == 7\n")
    assert named.reason == "error"  # no entry point given: no test ran
    with open_sandbox("bwrap", limits=LIMITS, workers=1) as s:
        res = s.run_one(Job("def sum(xs):\n    return 7", "def check(candidate):\n    assert candidate([1]) == 7\n",
                            entry_point="sum"))
    assert res.passed, res.summary()


def test_solution_objects_still_work_across_the_process_boundary(sb):
    code = (
        "import math\nfrom collections import Counter\n"
        "class TooBig(ValueError):\n    pass\n"
        "class Point:\n"
        "    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def __eq__(self, o):\n        return isinstance(o, Point) and (o.x, o.y) == (self.x, self.y)\n"
        "    def __add__(self, o):\n        return Point(self.x + o.x, self.y + o.y)\n"
        "    def __len__(self):\n        return 2\n"
        "    def __iter__(self):\n        return iter((self.x, self.y))\n"
        "def sort_in_place(xs):\n    xs.sort()\n"
        "def check_pos(n):\n    if n > 9:\n        raise TooBig(n)\n    return n\n"
        "def apply(fn, xs):\n    return [fn(x) for x in xs]\n"
        "def count(s):\n    return Counter(s)\n"
        "def gen(n):\n    yield from range(n)\n"
        "def half(x):\n    return x / 2\n"
    )
    tests = (
        "xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]\n"
        "assert Point(1, 2) + Point(1, 1) == Point(2, 3)\nassert Point(1, 2) != Point(2, 1)\n"
        "assert list(Point(4, 5)) == [4, 5] and len(Point(0, 0)) == 2 and 5 in Point(4, 5)\n"
        "assert Point(7, 8).x == 7\n"
        "assert apply(lambda v: v * 10, [1, 2]) == [10, 20]\n"
        "assert count('abb') == {'a': 1, 'b': 2}\n"
        "assert list(gen(3)) == [0, 1, 2]\n"
        "assert abs(half(3) - 1.5) < 1e-9 and math.isclose(half(1), 0.5)\n"
        "def test_raises():\n"
        "    try:\n        check_pos(10)\n    except TooBig as e:\n        assert '10' in str(e)\n"
        "    else:\n        raise AssertionError('no error')\n"
        "    try:\n        check_pos(11)\n    except ValueError:\n        pass\n"
    )
    res = run(sb, code, tests)
    assert res.passed, res.summary()
    # an error inside the solution names the solution's line
    err = run(sb, "def f(xs):\n    return xs[5]", "assert f([1]) == 1")
    assert err.reason == "failed" and "IndexError" in err.summary() and "(solution.py:2)" in err.summary()


@pytest.mark.parametrize("code", [
    # deeper than the recursion limit of a recursive rmtree, the last dir without permissions
    "import os\nos.makedirs('deep')\nos.chdir('deep')\n"
    "for i in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n"
    "open('f', 'w').write('x')\nos.chmod('.', 0)\n",
    # the writable roots themselves made unusable
    "import os\nos.makedirs('locked/inner')\nos.chmod('locked', 0)\nos.chmod('/tmp', 0)\nos.chmod('/dev/shm', 0)\n",
], ids=["deep_tree", "locked_roots"])
def test_a_tree_the_cleanup_cannot_remove_does_not_poison_the_worker(sb, code):
    res = run(sb, code)
    assert res.passed, res.summary()
    for _ in range(3):  # every later run on the same worker is served, in a clean temp dir
        later = run(sb, "import os", "assert os.listdir('/tmp') == ['run'] and os.listdir('.') == ['solution.py']")
        assert later.passed, later.summary()


def test_sockets_allow_only_af_unix():
    code = (
        "import errno, socket\nopened = {}\n"
        "for fam in range(0, 64):\n"
        "    if fam == socket.AF_UNIX:\n        continue\n"
        "    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_RAW):\n"
        "        try:\n"
        "            socket.socket(fam, kind).close()\n"
        "            opened[fam] = 'created'\n"
        "        except OSError as e:\n"
        "            if e.errno != errno.EAFNOSUPPORT:\n"
        "                opened[fam] = errno.errorcode.get(e.errno, e.errno)\n"
        "a, b = socket.socketpair()\na.sendall(b'ok')\ngot = b.recv(2)\n"
    )
    with open_sandbox("bwrap", limits=LIMITS, workers=1) as s:
        res = s.run_one(Job(code, "assert opened == {}\nassert got == b'ok'"))
        vsock = s.run_one(Job("import socket\nsocket.socket(40, socket.SOCK_STREAM)", "assert True"))
    # every family but AF_UNIX is refused by seccomp itself (AF_VSOCK, AF_ALG, ...),
    # whatever the kernel would have said; AF_UNIX socket pairs still work
    assert res.passed, res.summary() + res.stdout
    assert vsock.reason == "network" and "Address family not supported" in vsock.summary(), vsock.summary()


def test_only_what_the_runner_needs_of_the_host_is_visible(sb):
    import smolforge

    code = (
        "import os\nseen = {}\n"
        "for p in ['/usr/local', '/usr/local/etc', '/usr/local/etc/npmrc', '/usr/src', '/usr/include', '/etc',\n"
        "          '/proc/version', '/proc/cmdline', '/proc/cpuinfo', '/proc/meminfo', '/proc/modules',\n"
        "          '/proc/sys/kernel/osrelease', '/proc/sys/kernel/hostname', '/proc/kallsyms', '/proc/stat',\n"
        "          '/proc/config.gz', '/proc/mounts', '/proc/self/mountinfo', '/proc/self/status']:\n"
        "    try:\n"
        "        seen[p] = os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read().decode('latin-1')\n"
        "    except OSError as e:\n"
        "        seen[p] = None\n"
        "usr = sorted(os.listdir('/usr'))\n"
        "print(repr(seen))\n"
    )
    res = run(sb, code, "assert all(seen[p] is None for p in list(seen)[:16])\n"
                        "assert set(usr) <= {'bin', 'lib', 'lib32', 'lib64', 'libx32', 'share'}\n"
                        "assert seen['/proc/self/status']\n", output_tail=200000)
    assert res.passed, res.summary()
    # nothing that identifies the host: its kernel, its boot line, the project's path
    host_version = Path("/proc/version").read_text().strip()
    assert host_version not in res.stdout
    assert str(Path(smolforge.__file__).parent) not in res.stdout
    assert "/work" not in res.stdout and "site-packages" not in res.stdout


def _cgroups(prefix: str) -> list[Path]:
    """The sandbox cgroups whose name starts with `prefix`. A walk that ignores a
    directory vanishing under it: the groups are being removed while we look."""
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):  # os.walk skips what it cannot list
        for d in [d for d in dirs if d.startswith("smolforge-")]:
            dirs.remove(d)  # not into a sandbox's own group
            if d.startswith(f"smolforge-{prefix}-"):
                found.append(Path(root) / d)
    return found


def test_no_cgroup_is_left_behind(tmp_path):
    # closed normally: every group removed at once
    with open_sandbox("bwrap", limits=LIMITS, workers=2) as s:
        if not s.describe()["cgroups"]:
            pytest.skip("no writable cgroup v1 here (needs root)")
        assert s.run_one(Job("x = 1", "assert x == 1")).passed
        tag = s._cg.tag
        assert len(_cgroups(tag)) == 2 * len(s.describe()["cgroups"])
    assert _cgroups(tag) == []
    # killed with -9 while its sandboxes run: the watcher removes them
    script = tmp_path / "hold.py"
    script.write_text(
        "import sys, time\nfrom smolforge.sandbox import Job, Limits, open_sandbox\n"
        "sb = open_sandbox('bwrap', limits=Limits(wall_s=60), workers=2)\n"
        "sb.run_one(Job('x = 1', 'assert x == 1'))\nprint('ready', flush=True)\n"
        "sb.run([Job('import time\\ntime.sleep(50)', 'assert True')] * 2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([os.sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert _cgroups(str(p.pid))
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 20
    while _cgroups(str(p.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _cgroups(str(p.pid)) == []


def test_output_without_a_newline_is_kept(sb):
    res = run(sb, "import sys\nsys.stdout.write('no newline')\nsys.stderr.write('err')\ndef f():\n"
                  "    sys.stdout.write(' in a call')\n    return 1", "assert f() == 1")
    assert res.passed and res.stdout == "no newline in a call" and res.stderr == "err", (res.stdout, res.stderr)
