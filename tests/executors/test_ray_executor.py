"""The Ray executor on a real local Ray cluster (Ray 2.60), loopback only.

The cluster is started with `ray start --head --node-ip-address=127.0.0.1` inside its
own network namespace (`unshare -n`, only `lo` up), so nothing listens beyond
loopback (Ray otherwise swaps 127.0.0.1 for the machine's address), and its own PID
namespace, so `ray stop` there sees only this cluster's processes and killing the
namespace's first process ends every process in it. Drivers join it by `--address`
from inside the same namespaces (`nsenter`). Token auth is off (`RAY_AUTH_MODE=
disabled`) for these tests only.

Checked: greedy runs give the same data and rejects with `--executor local` and
`--executor ray` (an LLM recipe on the bundled model, and a CPU recipe: gopher filter
+ minhash dedup); a Ray worker killed while it computes a shard, and the run still
completes, every input exactly once; a driver killed mid-run, resumed with the local
executor, equals the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, write_recipe

pytestmark = pytest.mark.slow

TOPICS = ["cats", "rivers", "fractions", "stars", "cats", "bread"]
ENV = {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONUNBUFFERED": "1"}


class Cluster:
    """A Ray head in its own network + PID namespaces; `run` executes a command there."""

    def __init__(self, tmp: Path):
        self.temp = Path(f"/tmp/ray-sf-{uuid.uuid4().hex[:8]}")
        self.ns = subprocess.Popen(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c",
                                    "ip link set lo up && exec sleep 3600"])
        self.init = self._child(self.ns.pid)
        self.address = "127.0.0.1:6379"
        r = self.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
                      "--node-ip-address=127.0.0.1", "--port=6379", "--num-cpus=2",
                      "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp}"],
                     timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]

    @staticmethod
    def _child(pid: int) -> int:
        for _ in range(500):
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.01)
        raise RuntimeError("unshare did not start its namespace")

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-n", "-p", "-m"]

    def run(self, args: list[str], timeout: int = 300, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix(), *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **ENV}, **kw)

    def popen(self, args: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix(), *args], env={**os.environ, **ENV}, **kw)

    def stop(self) -> None:
        try:
            self.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force", "--grace-period", "2"],
                     timeout=60)
        finally:
            os.kill(self.init, signal.SIGKILL)  # the namespace's init: the kernel ends the rest
            self.ns.wait(timeout=30)
            shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        yield c
    finally:
        c.stop()


def llm_recipe(tmp: Path, **over) -> Path:
    r = {"name": "tiny", "seed": 7, "shard_size": 1, "stages": [
        {"type": "items", "items": [{"topic": t} for t in TOPICS]},
        {"type": "generate", "template": "Write one sentence about {{ topic }}.", "max_tokens": 16,
         "temperature": 0.0},
        {"type": "filter", "where": "words(text) >= 2"},
        {"type": "dedup", "method": "exact", "column": "text"},
    ]}
    r.update(over)
    return write_recipe(tmp / "llm.yaml", r)


def cpu_recipe(tmp: Path) -> Path:
    from smolforge.corpora import stdlib_docstrings

    docs = [d for d in stdlib_docstrings("email/**/*.py") if len(d.split()) >= 60][:100]
    rows = [{"text": d} for d in docs]
    # planted near-duplicates: a changed last word, in a later shard than the original
    rows += [{"text": d.rsplit(" ", 1)[0] + " changed"} for d in docs[:20]]
    with open(tmp / "docs.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return write_recipe(tmp / "cpu.yaml", {"name": "cpu", "shard_size": 25, "stages": [
        {"type": "read", "path": "docs.jsonl"},
        {"type": "gopher_quality"},
        {"type": "dedup", "method": "minhash", "column": "text"},
    ]})


def _timeless(meta: dict) -> dict:
    return {k: _timeless(v) if isinstance(v, dict) else v for k, v in meta.items() if k != "created_at"}


def rows(out: Path, sub: str = "data") -> list[dict]:
    """Every row, with meta's creation time (not data) left out."""
    out_rows = []
    for r in pq.read_table(out / sub).to_pylist():
        if isinstance(r.get("meta"), str):
            r["meta"] = _timeless(json.loads(r["meta"]))
        if "record" in r:
            r.pop("record")
        out_rows.append(r)
    return sorted(out_rows, key=lambda r: (r["id"], r.get("stage", "")))


def run_local(recipe: Path, out: Path) -> None:
    r = smolforge("run", str(recipe), "--out", str(out), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr


def run_ray(cluster: Cluster, recipe: Path, out: Path) -> subprocess.CompletedProcess:
    return cluster.run([sys.executable, "-m", "smolforge.cli", "run", str(recipe), "--out", str(out),
                        "--quiet", "--executor", "ray", "--address", cluster.address], timeout=400)


@pytest.fixture(scope="module")
def llm_ref(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("llm")
    recipe = llm_recipe(tmp)
    run_local(recipe, tmp / "local")
    return recipe, tmp / "local"


def test_local_and_ray_give_the_same_data(cluster, llm_ref, tmp_path):
    recipe, local = llm_ref
    r = run_ray(cluster, recipe, tmp_path / "ray")
    assert r.returncode == 0, r.stderr[-3000:]
    assert rows(tmp_path / "ray") == rows(local)
    assert rows(tmp_path / "ray", "rejects") == rows(local, "rejects")
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["executor"]["name"] == "ray" and m["executor"]["address"] == cluster.address
    assert m["executor"]["engine_pools"][0]["replicas"] == 1
    assert m["attempts"][-1]["generated"] == len(TOPICS) - 1  # "cats" twice: generated once
    # every response went through the driver-side cache: a local re-run generates nothing
    shutil.rmtree(tmp_path / "ray" / "stages")
    r = smolforge("run", str(recipe), "--out", str(tmp_path / "ray"), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["attempts"][-1]["generated"] == 0 and m["attempts"][-1]["cache_hits"] > 0

    cpu = cpu_recipe(tmp_path)
    run_local(cpu, tmp_path / "cpu-local")
    r = run_ray(cluster, cpu, tmp_path / "cpu-ray")
    assert r.returncode == 0, r.stderr[-3000:]
    local_rows = rows(tmp_path / "cpu-local")
    assert rows(tmp_path / "cpu-ray") == local_rows
    rej = rows(tmp_path / "cpu-ray", "rejects")
    assert rej == rows(tmp_path / "cpu-local", "rejects")
    assert sum(r["stage"] == "dedup" for r in rej) >= 10  # the planted near-duplicates
    assert 0 < len(local_rows) < 120


def _pids(pattern: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if pattern in p.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _done(out: Path, stage: str) -> int:
    return len(list((out / "stages").glob(f"*-{stage}/shard-*.done"))) if (out / "stages").exists() else 0


def _run_and_kill(cluster, recipe: Path, out: Path, victims) -> tuple[subprocess.Popen, int | None]:
    """Start a Ray run of `recipe`; once its generate stage has committed a shard,
    SIGKILL the first process `victims()` names. Returns the run and the pid killed."""
    p = cluster.popen([sys.executable, "-m", "smolforge.cli", "run", str(recipe), "--out", str(out),
                       "--quiet", "--executor", "ray", "--address", cluster.address],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        pids = victims()
        if pids and _done(out, "generate") >= 1:
            os.kill(pids[0], signal.SIGKILL)
            return p, pids[0]
        time.sleep(0.02)
    return p, None


def test_a_killed_worker_and_a_killed_driver(cluster, llm_ref, tmp_path):
    recipe, local = llm_ref
    out = tmp_path / "ray"
    # an engine actor computing a shard
    p, killed = _run_and_kill(cluster, recipe, out, lambda: _pids("ray::StageWorker.map_shard"))
    assert killed is not None, "no engine actor was caught computing a shard"
    done_at_kill = _done(out, "generate")
    assert p.wait(timeout=400) == 0, p.stderr.read()[-3000:]
    assert not Path(f"/proc/{killed}").exists()
    assert done_at_kill < len(TOPICS)  # the kill landed before the stage finished
    data = rows(out)
    assert len({r["id"] for r in data}) == len(data)  # nothing duplicated
    assert data == rows(local) and rows(out, "rejects") == rows(local, "rejects")
    seen = [r["id"] for r in data] + [r["id"] for r in rows(out, "rejects") if r["stage"] != "items"]
    assert sorted(seen) == sorted(f"items-{i:06d}" for i in range(len(TOPICS)))

    # the driver killed mid-run; the local executor finishes the same run directory
    out2 = tmp_path / "driver"
    p = cluster.popen([sys.executable, "-m", "smolforge.cli", "run", str(recipe), "--out", str(out2),
                       "--quiet", "--executor", "ray", "--address", cluster.address],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while p.poll() is None and _done(out2, "generate") < 2 and time.time() < deadline:
        time.sleep(0.02)
    drivers = [pid for pid in _pids(str(out2)) if "nsenter" not in _cmdline(pid)]
    assert drivers, "the driver had already exited"
    for pid in drivers:  # the driver itself (nsenter, its parent, would not pass the signal on)
        os.kill(pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert 0 < _done(out2, "generate") < len(TOPICS) or _done(out2, "generate") == len(TOPICS)
    r = smolforge("run", str(recipe), "--out", str(out2), "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert rows(out2) == rows(local) and rows(out2, "rejects") == rows(local, "rejects")


def test_verify_code_on_ray_leaves_no_cgroup(cluster, tmp_path):
    """Every Ray task that ran verify_code (a map stage, and with vote_group a global
    one) removed its sandboxes' cgroups (they were left behind when a group was
    removed before the sandbox's last process died)."""
    from smolforge.sandbox.bwrap import cgroup_parents

    parents = list(cgroup_parents().values())
    if not parents:
        pytest.skip("no writable cgroup v1 here (needs root)")

    def groups() -> set[Path]:
        return {d for p in parents for d in p.glob("smolforge-*")}

    before = groups()
    items = [{"code": f"def f():\n    return {i % 2}", "tests": f"assert f() == {i % 2}", "g": i % 2}
             for i in range(6)]
    recipe = write_recipe(tmp_path / "vc.yaml", {"name": "vc", "shard_size": 2, "stages": [
        {"type": "items", "items": items}, {"type": "verify_code", "limits": {"wall_s": 10}},
        {"type": "verify_code", "name": "voted", "vote_group": "g", "limits": {"wall_s": 10}}]})
    r = run_ray(cluster, recipe, tmp_path / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(pq.read_table(tmp_path / "out" / "data")) == 6

    def left() -> list[str]:  # new groups whose owner is gone (named by pids inside the cluster's namespace)
        return sorted(d.name for d in groups() - before
                      if not Path(f"/proc/{d.name.split('-')[1]}").exists() and d.exists())

    deadline = time.time() + 20
    while left() and time.time() < deadline:
        time.sleep(0.2)
    assert left() == []


def test_a_killed_cache_actor_is_restarted_and_the_run_completes(cluster, llm_ref, tmp_path):
    """The driver-side response cache (a Ray actor owning the SQLite file) killed
    mid-run: Ray restarts it, the calls it missed are retried, and the run ends as an
    uninterrupted one (before: the run failed with Ray's raw ActorDiedError)."""
    recipe, local = llm_ref
    out = tmp_path / "ray"
    p, killed = _run_and_kill(cluster, recipe, out, lambda: [
        pid for pid in _pids("ray::CacheServer") if "nsenter" not in _cmdline(pid)])
    assert killed is not None, "the cache actor was not caught during the generate stage"
    assert _done(out, "generate") < len(TOPICS)  # the kill landed before the stage finished
    assert p.wait(timeout=400) == 0, p.stderr.read()[-3000:]
    assert rows(out) == rows(local) and rows(out, "rejects") == rows(local, "rejects")
