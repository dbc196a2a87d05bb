"""Crash safety: `kill -9` at random moments, re-run the same command, and the
result equals an uninterrupted run; finished shards and cached responses are
never computed again; every input lands exactly once in the data or the rejects."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_recipe, write_recipe

TOPICS = ["cats", "rivers", "fractions", "stars", "cats", "bread", "rain", "maps", "glass",
          "bees", "tides", "salt"]


def recipe(tmp_path: Path) -> Path:
    r = tiny_recipe(name="crash")
    r["stages"][0]["items"] = [{"topic": t} for t in TOPICS]
    r["stages"][1]["max_tokens"] = 12
    return write_recipe(tmp_path / "crash.yaml", r)


def start(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smolforge.cli", "run", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def done_markers(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / "stages").glob("*/shard-*.done")} if (out / "stages").exists() else {}


def table(out: Path, sub: str, cols: list[str]) -> list[tuple]:
    return sorted(tuple(r[c] for c in cols) for r in pq.read_table(out / sub).to_pylist())


def test_kill_9_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    path = recipe(tmp_path)
    ref = tmp_path / "ref"
    p = start(path, ref)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    total = len(done_markers(ref))

    # Kill points: right after start (model loading), then after randomly chosen
    # numbers of finished shards plus a random few milliseconds, so kills land
    # mid-generation, mid-write and between stages.
    out = tmp_path / "crash"
    rng = random.Random(int(os.environ.get("SMOLFORGE_KILL_SEED", "3")))
    targets = [0] + sorted(rng.sample(range(1, total - 1), 4))
    kills = 0
    for target in targets:
        before = done_markers(out)
        p = start(path, out)
        while p.poll() is None and len(done_markers(out)) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if p.poll() is not None:
            continue
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        after = done_markers(out)
        # a shard finished before this attempt is never written again
        assert all(after.get(k) == v for k, v in before.items())
    p = start(path, out)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert kills >= 3

    cols = ["id", "topic", "prompt", "text"]
    assert table(out, "data", cols) == table(ref, "data", cols)
    assert table(out, "rejects", ["id", "stage", "reason"]) == table(ref, "rejects", ["id", "stage", "reason"])
    kept = [r[0] for r in table(out, "data", ["id"])]
    rejected = [r[0] for r in table(out, "rejects", ["id"])]
    assert len(kept) == len(set(kept)) and sorted(kept + rejected) == [f"items-{i:06d}" for i in range(len(TOPICS))]

    # Every distinct prompt was cached once; the final attempts reused them.
    n_cached = sqlite3.connect(out / "cache.sqlite").execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert n_cached == len(set(TOPICS))
    manifest = json.loads((out / "manifest.json").read_text())
    # (a kill during start-up, before the manifest is written, leaves no attempt)
    assert manifest["status"] == "done" and len(manifest["attempts"]) >= 2
    generated = [a["generated"] for a in manifest["attempts"] if a["status"] == "done"]
    assert generated and generated[-1] <= len(set(TOPICS))

    # Re-running a finished run computes nothing and changes nothing.
    before = done_markers(out)
    p = start(path, out)
    assert p.wait(timeout=120) == 0
    assert done_markers(out) == before
    last = json.loads((out / "manifest.json").read_text())["attempts"][-1]
    assert last["generated"] == 0 and last["status"] == "done"


def judge_recipe(tmp_path: Path) -> Path:
    """generate -> judge (LLM, parsing) -> train_classifier and minhash (global stages)."""
    topics = TOPICS[:8]
    r = {
        "name": "crash-judge", "seed": 5, "shard_size": 2,
        "stages": [
            {"type": "items", "items": [{"topic": t} for t in topics]},
            {"type": "generate", "template": "Write one sentence about {{ topic }}.",
             "max_tokens": 12, "temperature": 0.0},
            {"type": "judge", "rubric": "fineweb-edu", "column": "edu_label", "structured": True,
             "justify": False, "max_tokens": 8, "on_fail": "keep"},
            {"type": "train_classifier", "label_column": "edu_label", "min_labels": 4,
             "threshold": 1, "model_path": "clf.npz"},
            {"type": "dedup", "method": "minhash", "column": "text"},
        ],
    }
    return write_recipe(tmp_path / "crash_judge.yaml", r)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_9_uniformly_during_judge_and_global_stages_then_resume_equals_uninterrupted(tmp_path):
    path = judge_recipe(tmp_path)
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    p = start(path, ref)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    duration = time.monotonic() - t0

    out = tmp_path / "crash"
    rng = random.Random(int(os.environ.get("SMOLFORGE_KILL_SEED", "11")))
    stages_seen: set[str] = set()
    for _ in range(4):
        p = start(path, out)
        time.sleep(rng.uniform(0.0, duration))
        if p.poll() is not None:
            continue
        p.send_signal(signal.SIGKILL)
        p.wait()
        # the stage the kill landed in: the first one not marked done
        for d in sorted((out / "stages").glob("*")):
            if not (d / "_DONE").exists():
                stages_seen.add(d.name.split("-", 1)[1])
                break
    p = start(path, out)
    assert p.wait(timeout=600) == 0, p.stderr.read()

    cols = ["id", "topic", "text", "edu_label"]
    assert table(out, "data", cols) == table(ref, "data", cols)
    assert table(out, "rejects", ["id", "stage", "reason"]) == table(ref, "rejects", ["id", "stage", "reason"])
    kept = [r[0] for r in table(out, "data", ["id"])]
    rejected = [r[0] for r in table(out, "rejects", ["id"])]
    assert len(kept) == len(set(kept)) and len(kept) + len(rejected) == 8
    mine, theirs = np.load(out / "clf.npz"), np.load(ref / "clf.npz")
    assert sorted(mine.files) == sorted(theirs.files)
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine.files)
    assert stages_seen, "no kill landed inside the run"
