"""`managed` engine: smolforge starts a real `python -m llama_cpp.server` on the
bundled model for a recipe run, points the openai engine at it, logs it into the run
directory and stops it: after a finished run, after SIGTERM mid-run, and when it
fails to come up (a server that exits, one that never answers). Checked by pid: no
server process survives. vLLM and SGLang use the same code path; their command lines
are asserted here (neither is installed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SUBPROCESS_TIMEOUT, smolforge, write_recipe

from smolforge.context import build_engine
from smolforge.engines.base import EngineUnavailable, Request
from smolforge.engines.servers import ManagedServerEngine

LLAMA = {"type": "managed", "server": "llama_cpp", "model": "smollm2-135m",
         "args": ["--n_ctx", "512"], "client": {"concurrency": 1, "retry_base_delay": 0.05}}


def alive(pid: int) -> bool:
    """A live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def recipe(tmp_path: Path, topics: list[str], max_tokens: int = 4) -> Path:
    return write_recipe(tmp_path / "r.yaml", {
        "name": "managed", "seed": 1, "shard_size": 1, "engine": LLAMA,
        "stages": [{"type": "items", "items": [{"topic": t} for t in topics]},
                   {"type": "generate", "raw": True, "template": "A fact about {{ topic }}:",
                    "max_tokens": max_tokens, "temperature": 0.0}]})


@pytest.mark.slow
def test_recipe_run_starts_and_stops_a_llama_cpp_server(tmp_path):
    out = tmp_path / "run"
    r = smolforge("run", str(recipe(tmp_path, ["cats", "rain"])), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    (eng,) = m["engines"]
    server = eng["usage"]["server"]
    assert eng["identity"]["kind"] == "managed" and "port" not in json.dumps(eng["identity"])
    assert eng["usage"]["requests"] == 2 and eng["usage"]["completion_tokens"] > 0
    assert not alive(server["pid"])  # stopped at the end of the run: no orphan
    log = Path(server["log"])
    assert log.parent == out / "logs" and log.name == f"server-llama_cpp-{server['port']}.log"
    text = log.read_text()
    assert "llama_cpp.server" in text.splitlines()[0] and "Uvicorn running" in text
    # Same recipe again: same identity although the port differs, so all from the cache.
    r = smolforge("run", str(recipe(tmp_path, ["cats", "rain"])), "--out", str(tmp_path / "again"),
                  "--cache", str(out / "cache.sqlite"), "--quiet")
    assert r.returncode == 0, r.stderr
    m2 = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert m2["attempts"][-1]["cache_hits"] == 2 and m2["attempts"][-1]["generated"] == 0


@pytest.mark.slow
def test_sigterm_mid_run_leaves_no_server(tmp_path):
    out = tmp_path / "run"
    path = recipe(tmp_path, [f"topic {i}" for i in range(40)], max_tokens=48)
    proc = subprocess.Popen([sys.executable, "-m", "smolforge.cli", "run", str(path), "--out", str(out),
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    server_pid = None
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT / 2
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((out / "logs").glob("*.log")) if (out / "logs").exists() else []
        if logs and "Uvicorn running" in logs[0].read_text():
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            server_pid = int(children[0])
            time.sleep(1.0)  # a request or two in flight
            break
        time.sleep(0.2)
    assert server_pid is not None and alive(server_pid), "the server never came up"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert not alive(server_pid)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["engines"][0]["usage"]["server"]["pid"] == server_pid


def test_a_server_that_fails_to_start_is_reported_and_gone(tmp_path):
    died = build_engine({"type": "managed", "server": "command", "model": "m",
                         "command": ["{python}", "-c", "print('no GPU here'); raise SystemExit(3)"]})
    died.attach_run_dir(tmp_path)
    with pytest.raises(EngineUnavailable, match=r"exited with code 3(.|\n)*no GPU here"):
        died.generate([Request(prompt="x")])
    died.close()
    # One that never answers /v1/models: stopped at startup_timeout, process group included.
    hang = build_engine({"type": "managed", "server": "command", "model": "m", "startup_timeout": 1.5,
                         "command": ["{python}", "-c", "import time; time.sleep(600)"]})
    hang.attach_run_dir(tmp_path)
    with pytest.raises(EngineUnavailable, match="not healthy on http://127.0.0.1:"):
        hang.generate([Request(prompt="x")])
    pid = hang._info["pid"]
    assert not alive(pid) and hang._info["exit_code"] == -signal.SIGTERM
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "logs").glob("*.log")) == ["command"] * 2


def test_command_lines_and_config_checks():
    v = ManagedServerEngine.model_validate({"type": "managed", "server": "vllm", "model": "Qwen/Qwen2.5-0.5B",
                                            "served_name": "q", "args": ["--max-model-len", "4096"]})
    argv = v.command_line(8123)
    assert Path(argv[0]).name == "vllm" and argv[1:] == [
        "serve", "Qwen/Qwen2.5-0.5B", "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "q", "--max-model-len", "4096"]
    s = ManagedServerEngine.model_validate({"type": "managed", "server": "sglang", "model": "m"})
    assert s.command_line(9)[1:] == ["-m", "sglang.launch_server", "--model-path", "m", "--host",
                                     "127.0.0.1", "--port", "9", "--served-model-name", "m"]
    with pytest.raises(EngineUnavailable, match=r"'vllm' is not installed here \(pip install vllm"):
        v.generate([Request(prompt="x")])
    for bad, msg in [({"client": {"base_url": "http://x"}}, "set by the managed server"),
                     ({"client": {"concurrency": 0}}, "greater than or equal to 1"),
                     ({"server": "command"}, "`command` is set exactly when"),
                     ({"command": ["x"]}, "`command` is set exactly when")]:
        with pytest.raises(ValueError, match=msg):
            ManagedServerEngine.model_validate({"type": "managed", "model": "m", **bad})
    # The cache key follows the model file and arguments, never the port.
    a = build_engine(LLAMA).identity()
    b = build_engine({**LLAMA, "args": ["--n_ctx", "1024"]}).identity()
    assert a != b and len(a["sha256"]) == 64
    assert os.environ.get("SMOLFORGE_HOME")  # the hash memo stays in the test session


STUB = ("import http.server as h, sys\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
        "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")

PARENT = """
import sys, time
from smolforge.context import build_engine
e = build_engine({"type": "managed", "server": "command", "model": "m",
                  "command": ["{python}", "-c", sys.argv[1], "{port}"]})
e.start()
print(e._info["pid"], flush=True)
time.sleep(600)
"""


def test_server_dies_with_a_sigkilled_smolforge():
    """kill -9 of smolforge gives it no chance to clean up: the kernel's parent-death
    signal stops the server anyway."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STUB], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
