"""An engine that goes away in the middle of a run, through the real CLI: the
bundled model behind llama-cpp-python's server, reached through the fault proxy
(tests/faultproxy.py), which goes down for part of the run.

The contract (docs/engines.md): a server that is down stops the run with exit 1
and keeps what was finished; records that failed for engine reasons are not
final: the run exits 1 with their count and "re-run to retry", and a re-run once
the server is back completes every record, paying for no answer twice."""

from __future__ import annotations

import json

import pytest
from conftest import smolforge, write_recipe
from faultproxy import Fault, FaultProxy, plan

import smolforge as sf

PROMPTS = [f"Topic {i}:" for i in range(6)]


def recipe(url: str, fail_fast_after: int) -> dict:
    return {"name": "outage", "shard_size": 2, "stages": [
        {"type": "items", "items": [{"topic": t} for t in PROMPTS]},
        {"type": "generate", "template": "{{ topic }}", "raw": True, "max_tokens": 4,
         "temperature": 0.0,
         "engine": {"type": "openai", "base_url": url, "model": "smollm2", "concurrency": 1,
                    "max_retries": 1, "retry_base_delay": 0.05,
                    "fail_fast_after": fail_fast_after}}]}


def ids_and_prompts(run: sf.Run) -> list[tuple[str, str]]:
    return [(r["id"], r["prompt"]) for r in run.data().to_pylist()]


@pytest.mark.slow
def test_server_down_mid_run_exits_1_and_the_rerun_completes(tmp_path, llama_server):
    with FaultProxy(llama_server) as proxy:
        # the third request takes the server down: shard 0 is done, shard 1 is not
        proxy.reset(lambda n, _a, _b: Fault.outage() if n == 2 else None)
        path = write_recipe(tmp_path / "r.yaml", recipe(proxy.url, fail_fast_after=2))
        out = tmp_path / "run"
        p = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert p.returncode == 1, p.stderr
        assert "EngineUnavailable" in p.stderr and "2 requests in a row failed" in p.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "failed"
        assert dict(proxy.upstream_counts) == {PROMPTS[0]: 1, PROMPTS[1]: 1}

        proxy.come_back()
        proxy.reset()
        p = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert p.returncode == 0, p.stderr
        # only the unfinished shards went out again
        assert dict(proxy.upstream_counts) == {t: 1 for t in PROMPTS[2:]}
    run = sf.Run(out)
    assert ids_and_prompts(run) == [(f"items-{i:06d}", t) for i, t in enumerate(PROMPTS)]
    assert run.rejects().num_rows == 0
    assert [a["status"] for a in run.manifest["attempts"]] == ["failed", "done"]


@pytest.mark.slow
def test_records_failed_for_engine_errors_are_retried_by_the_rerun(tmp_path, llama_server):
    """A short outage that one request runs into (fewer failures than
    fail_fast_after): the run finishes the rest, exits 1 naming the count and
    "re-run to retry"; the re-run retries that record and exits 0."""
    with FaultProxy(llama_server) as proxy:
        proxy.reset(plan({PROMPTS[3]: [Fault.drop(), Fault.drop()]}))  # both attempts
        path = write_recipe(tmp_path / "r.yaml", recipe(proxy.url, fail_fast_after=8))
        out = tmp_path / "run"
        p = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert p.returncode == 1, p.stderr
        assert "1 record(s) failed for engine reasons" in p.stderr and "re-run to retry" in p.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "incomplete" and manifest["engine_failures"]["records"] == 1
        assert dict(proxy.upstream_counts) == {t: 1 for t in PROMPTS if t != PROMPTS[3]}

        proxy.reset()
        p = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert p.returncode == 0, p.stderr
        assert dict(proxy.upstream_counts) == {PROMPTS[3]: 1}  # the rest came from the cache
    run = sf.Run(out)
    assert ids_and_prompts(run) == [(f"items-{i:06d}", t) for i, t in enumerate(PROMPTS)]
    assert run.rejects().num_rows == 0 and run.engine_failures == 0
