"""Runs you can trust (issue 8): user files are never touched, one writer per run
directory, damaged or swapped checkpoints are caught and recomputed, a corrupt
cache is moved aside, engine failures are retried by a re-run, SIGTERM stops a run
cleanly, and an empty result is reported instead of passing silently.

LLM stages here talk to a canned OpenAI-compatible server on 127.0.0.1 (real HTTP,
no model), so every answer and every failure is chosen by the test."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, write_recipe
from faultproxy import Fault, canned_server, user_text

import smolforge as sf
from smolforge.store import RunLocked, RunStore, read_data

TOPICS = ["cats", "rivers", "fractions", "stars", "bread", "rain", "maps", "glass"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cpu_recipe(tmp_path: Path, where: str = "len(topic) >= 4", **over) -> Path:
    r = {"name": "cpu", "seed": 1, "shard_size": 2, "stages": [
        {"type": "items", "items": [{"topic": t} for t in TOPICS]},
        {"type": "filter", "where": where},
        {"type": "dedup", "method": "exact", "column": "topic"},
    ]}
    r.update(over)
    return write_recipe(tmp_path / "cpu.yaml", r)


def llm_recipe(tmp_path: Path, url: str) -> Path:
    engine = {"type": "openai", "base_url": url, "model": "canned", "max_retries": 0,
              "retry_base_delay": 0, "fail_fast_after": 100, "concurrency": 4}
    return write_recipe(tmp_path / "llm.yaml", {
        "name": "llm", "seed": 1, "shard_size": 2, "engine": engine, "stages": [
            {"type": "items", "items": [{"topic": t} for t in TOPICS]},
            {"type": "generate", "template": "About {{ topic }}.", "max_tokens": 8,
             "temperature": 0.0},
            {"type": "filter", "where": "words(text) >= 2"},
        ]})


def rows(out: Path, sub: str = "data", cols=("id", "topic")) -> list[tuple]:
    table = read_data(out) if sub == "data" else pq.read_table(out / "rejects" / "rejects.parquet")
    return sorted(tuple(r[c] for c in cols) for r in table.to_pylist())


# ---------------------------------------------------------------- user files


def test_out_pointing_at_a_foreign_directory_is_refused_and_nothing_changes(tmp_path):
    foreign = tmp_path / "mine"
    (foreign / "data").mkdir(parents=True)
    (foreign / "stages" / "notes").mkdir(parents=True)
    (foreign / "data" / "table.parquet").write_bytes(b"PAR1 my data")
    (foreign / "stages" / "notes" / "todo.txt").write_text("keep me")
    (foreign / "manifest.json").write_text('{"my": "manifest"}')
    (foreign / "recipe.yaml").write_text("mine: true\n")
    before = _tree(foreign)
    r = smolforge("run", str(cpu_recipe(tmp_path)), "--out", str(foreign))
    assert r.returncode == 2, r.stderr
    assert str(foreign) in r.stderr and "not a smolforge run" in r.stderr
    assert _tree(foreign) == before


def test_a_users_files_inside_a_run_directory_survive_recompute_and_prune(tmp_path):
    out = tmp_path / "run"
    assert smolforge("run", str(cpu_recipe(tmp_path)), "--out", str(out), "--quiet").returncode == 0
    mine = {out / "data" / "extra.txt": "a", out / "stages" / "01-filter" / "note.txt": "b",
            out / "stages" / "02-dedup" / "note.txt": "c"}
    for p, text in mine.items():
        p.write_text(text)
    # Change the filter (recomputes 01 and 02) and drop the dedup stage (prunes 02).
    path = cpu_recipe(tmp_path, where="len(topic) >= 5")
    data = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    data["stages"] = data["stages"][:2]
    write_recipe(path, data)
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    for p, text in mine.items():
        assert p.read_text() == text
    assert not list((out / "stages" / "02-dedup").glob("shard-*"))
    assert rows(out) == sorted((f"items-{i:06d}", t) for i, t in enumerate(TOPICS) if len(t) >= 5)


# ---------------------------------------------------------------- one writer


def test_second_writer_is_refused_with_the_holders_pid_and_kill_9_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"from smolforge.store import RunStore; s = RunStore({str(out)!r}); print('ok', flush=True);"
         " import time; time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        r = smolforge("run", str(cpu_recipe(tmp_path)), "--out", str(out), timeout=60)
        assert r.returncode == 1
        assert f"run directory in use by pid {holder.pid}" in r.stderr
        assert not (out / "data").exists()
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):  # the Python API too
            sf.run(str(cpu_recipe(tmp_path)), out=out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = smolforge("run", str(cpu_recipe(tmp_path)), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    RunStore(out).release()  # and the finished run released it


# ---------------------------------------------------------------- damaged checkpoints


def _damage_and_rerun(tmp_path: Path, damage) -> tuple[subprocess.CompletedProcess, Path, list]:
    out = tmp_path / "run"
    path = cpu_recipe(tmp_path)
    assert smolforge("run", str(path), "--out", str(out), "--quiet").returncode == 0
    ref = rows(out), rows(out, "rejects", ("id", "stage", "reason"))
    damage(out)
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    return r, out, ref


@pytest.mark.parametrize("kind", ["flip", "truncate", "swap", "swap_with_marker", "no_marker", "missing",
                                  "fifo", "dev_zero", "marker_dev_zero"])
def test_damaged_or_swapped_shard_is_recomputed_with_a_warning_naming_it(tmp_path, kind):
    target = "stages/01-filter/shard-00001.parquet"

    def damage(out: Path) -> None:
        p = out / target
        if kind == "flip":
            b = bytearray(p.read_bytes())
            b[len(b) // 2] ^= 0x01
            p.write_bytes(bytes(b))
        elif kind == "truncate":
            p.write_bytes(p.read_bytes()[:50])
        elif kind == "swap":
            p.write_bytes((out / "stages/01-filter/shard-00003.parquet").read_bytes())
        elif kind == "swap_with_marker":
            for suffix in (".parquet", ".done"):
                src = out / f"stages/01-filter/shard-00003{suffix}"
                (out / f"stages/01-filter/shard-00001{suffix}").write_bytes(src.read_bytes())
        elif kind == "no_marker":
            (out / "stages/01-filter/shard-00001.done").unlink()
        elif kind == "fifo":  # reading it would hang
            p.unlink()
            os.mkfifo(p)
        elif kind == "dev_zero":  # reading it would never end
            p.unlink()
            p.symlink_to("/dev/zero")
        elif kind == "marker_dev_zero":
            (out / "stages/01-filter/shard-00001.done").unlink()
            (out / "stages/01-filter/shard-00001.done").symlink_to("/dev/zero")
        else:
            p.unlink()

    r, out, (ref_data, ref_rejects) = _damage_and_rerun(tmp_path, damage)
    assert r.returncode == 0, r.stderr
    assert "shard-00001" in r.stderr and "recomputing" in r.stderr
    assert rows(out) == ref_data
    assert rows(out, "rejects", ("id", "stage", "reason")) == ref_rejects
    ids = [i for i, _ in rows(out)]
    assert len(ids) == len(set(ids)) == len(TOPICS)  # no record lost, none doubled


def test_damaged_llm_shard_is_recomputed_from_the_cache_without_generating(tmp_path):
    with canned_server(lambda body: f"text about {user_text(body)} ok") as srv:
        path = llm_recipe(tmp_path, srv.url)
        out = tmp_path / "run"
        assert smolforge("run", str(path), "--out", str(out), "--quiet").returncode == 0
        ref = rows(out, cols=("id", "text"))
        sent = len(srv.seen)
        p = out / "stages/01-generate/shard-00002.parquet"
        p.write_bytes(p.read_bytes()[:-10])
        r = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
        assert "01-generate/shard-00002.parquet" in r.stderr
        assert len(srv.seen) == sent  # nothing went over the wire again
    assert rows(out, cols=("id", "text")) == ref
    attempt = json.loads((out / "manifest.json").read_text())["attempts"][-1]
    assert attempt["generated"] == 0 and attempt["cache_hits"] == 2


def test_corrupt_cache_is_moved_aside_with_a_warning_and_the_run_completes(tmp_path):
    with canned_server(lambda body: f"text about {user_text(body)} ok") as srv:
        path = llm_recipe(tmp_path, srv.url)
        out = tmp_path / "run"
        out.mkdir()
        # A run killed during start-up, then its cache file damaged.
        (out / "cache.sqlite").write_bytes(b"this is not a database" * 100)
        r = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
    assert "cache.sqlite" in r.stderr and "damaged" in r.stderr
    aside = list(out.glob("cache.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not a database" * 100
    assert len(rows(out)) == len(TOPICS)


# ---------------------------------------------------------------- engine failures


def test_engine_failures_exit_1_and_a_rerun_retries_exactly_those_records(tmp_path):
    failing = {"About rivers.", "About maps."}
    state = {"broken": True}

    def answer(body):
        if state["broken"] and user_text(body) in failing:
            return Fault.http(500)
        return f"text about {user_text(body)} ok"

    with canned_server(answer) as srv:
        path = llm_recipe(tmp_path, srv.url)
        out = tmp_path / "run"
        r = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert r.returncode == 1
        assert "2 record(s) failed for engine reasons" in r.stderr and "re-run to retry" in r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "incomplete"
        assert manifest["engine_failures"]["records"] == 2
        show = json.loads(smolforge("show", str(out), "--json").stdout)
        kinds = {g["kind"] for g in show["rejects"]}
        assert kinds == {"engine"} and show["quality_rejects"] == 0

        state["broken"] = False
        srv.reset(srv.rule)
        r = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
        # Only the two failed prompts went over the wire again.
        assert sorted(s.prompt for s in srv.seen) == sorted(failing)
    assert sorted(t for _, t in rows(out)) == sorted(TOPICS)
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"


def test_schema_format_is_part_of_the_openai_engine_identity():
    from smolforge.context import build_engine

    a = build_engine({"type": "openai", "base_url": "http://127.0.0.1:9", "model": "m"})
    b = build_engine({"type": "openai", "base_url": "http://127.0.0.1:9", "model": "m",
                      "schema_format": "json_object"})
    assert a.identity() != b.identity()


# ---------------------------------------------------------------- signals, empty results


def test_sigterm_stops_cleanly_marks_interrupted_and_the_run_resumes(tmp_path):
    def slow(body):
        time.sleep(0.3)
        return f"text about {user_text(body)} ok"

    with canned_server(slow) as srv:
        path = llm_recipe(tmp_path, srv.url)
        out = tmp_path / "run"
        p = subprocess.Popen([sys.executable, "-m", "smolforge.cli", "run", str(path), "--out",
                              str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(out.glob("stages/01-generate/shard-*.done")) and time.monotonic() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 143
        assert "terminated; re-run the same command to resume" in p.stderr.read()
        assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
        r = smolforge("run", str(path), "--out", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
    assert sorted(t for _, t in rows(out)) == sorted(TOPICS)


def test_a_run_that_keeps_nothing_says_why_exits_3_and_keeps_its_columns(tmp_path):
    out = tmp_path / "run"
    path = cpu_recipe(tmp_path, where="len(topic) >= 40")
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert r.returncode == 3
    assert "kept no records" in r.stderr and "'filter' dropped 8 of 8" in r.stderr
    assert "--allow-empty" in r.stderr
    table = read_data(out)
    assert table.num_rows == 0 and {"id", "topic", "meta"} <= set(table.column_names)
    assert smolforge("run", str(path), "--out", str(out), "--allow-empty", "--quiet").returncode == 0


def test_final_write_streams_shards_and_unifies_their_types(tmp_path):
    """A column that is all-null in one shard and typed in another ends up typed."""
    items = [{"topic": "a", "score": None}, {"topic": "b", "score": None},
             {"topic": "c", "score": 1.5}, {"topic": "d", "score": 2.0}]
    r = {"name": "types", "shard_size": 2, "stages": [{"type": "items", "items": items}]}
    run = sf.run(r, out=tmp_path / "run")
    table = run.data()
    assert str(table.schema.field("score").type) == "double"
    assert table.column("score").to_pylist() == [None, None, 1.5, 2.0]
    manifest = run.manifest
    assert manifest["data"]["files"] == ["data/train-00000-of-00001.parquet", "rejects/rejects.parquet"]
    assert os.path.exists(tmp_path / "run" / manifest["data"]["files"][0])


# ---------------------------------------------------------------- hostile run directories (issue 27)


def _victims(tmp_path: Path) -> dict[Path, str]:
    """Files outside the run that a hostile run directory points at."""
    out = {tmp_path / "victim.txt": "relative", tmp_path / "abs" / "victim.parquet": "absolute",
           tmp_path / "run" / "data" / "notes.parquet": "a user's file in data/"}
    for p, text in out.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return out


def test_rerun_removes_only_its_own_outputs_whatever_the_manifest_lists(tmp_path):
    out = tmp_path / "run"
    path = cpu_recipe(tmp_path)
    assert smolforge("run", str(path), "--out", str(out), "--quiet").returncode == 0
    victims = _victims(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["data"]["files"] = ["../victim.txt", str(tmp_path / "abs" / "victim.parquet"),
                                 "data/../../victim.txt", "data/notes.parquet", "rejects/../../victim.txt",
                                 {"not": "a path"}, "data/train-00000-of-00002.parquet"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "data" / "train-00000-of-00002.parquet").write_bytes(b"an older output of the run")
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    for p, text in victims.items():
        assert p.read_text() == text
    assert not (out / "data" / "train-00000-of-00002.parquet").exists()  # its own old output: removed
    # and reading follows the same names: no path out of the run is read as data
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["data"]["files"] = ["data/../../abs/victim.parquet", "data/train-00000-of-00001.parquet"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert read_data(out).num_rows == len(TOPICS)


@pytest.mark.parametrize("entry", ["recipe.yaml", ".lock", "data", "logs", "stages/00-items"])
def test_a_link_where_the_run_keeps_its_files_is_refused_and_nothing_outside_changes(tmp_path, entry):
    other = tmp_path / "other"  # another run: a link must not let this one write or delete there
    assert smolforge("run", str(cpu_recipe(tmp_path, seed=2)), "--out", str(other), "--quiet").returncode == 0
    out = tmp_path / "run"
    path = cpu_recipe(tmp_path)
    assert smolforge("run", str(path), "--out", str(out), "--quiet").returncode == 0
    target = {"recipe.yaml": other / "recipe.yaml", ".lock": other / "manifest.json",
              "data": other / "data", "logs": other / "data",
              "stages/00-items": other / "stages" / "00-items"}[entry]
    link = out / entry  # (a managed server's log goes to logs/)
    if link.is_dir():
        for p in sorted(link.iterdir()):
            p.unlink()
        link.rmdir()
    elif link.exists():
        link.unlink()
    link.symlink_to(target)
    before = _tree(other)
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stderr
    assert f"{link}: is a symbolic link" in r.stderr
    assert _tree(other) == before


def test_damaged_manifest_is_named_with_how_to_resume_and_resuming_reuses_the_checkpoints(tmp_path):
    out = tmp_path / "run"
    path = cpu_recipe(tmp_path)
    assert smolforge("run", str(path), "--out", str(out), "--quiet").returncode == 0
    ref = rows(out)
    shards = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*")}
    mpath = out / "manifest.json"
    mpath.write_bytes(mpath.read_bytes()[:40])  # torn by a power loss
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert r.returncode == 2
    assert f"{mpath}: the run's manifest is damaged" in r.stderr
    assert "not a smolforge run" not in r.stderr
    assert f"mv {mpath} {mpath}.damaged" in r.stderr
    # follow the advice: the run resumes from its verified checkpoints
    mpath.rename(out / "manifest.json.damaged")
    r = smolforge("run", str(path), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"{mpath}: missing; resuming from the checkpoints" in r.stderr
    assert rows(out) == ref
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*")} == shards
    assert json.loads(mpath.read_text())["status"] == "done"
    assert (out / "manifest.json.damaged").exists()  # moved by the user, kept
