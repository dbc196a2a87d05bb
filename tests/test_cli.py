"""The CLI as a user meets it: built-in recipes, dry runs, JSON output, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import SUBPROCESS_TIMEOUT, smolforge, tiny_recipe, write_recipe
from faultproxy import Fault, canned_server, user_text

import smolforge as sf


def test_recipes_lists_builtins():
    p = smolforge("recipes", "--json")
    assert p.returncode == 0, p.stderr
    names = {r["name"]: r["description"] for r in json.loads(p.stdout)}
    assert "textbooks" in names and "Cosmopedia" in names["textbooks"]


def test_textbooks_recipe_is_valid_and_diverse():
    from smolforge.context import EnginePool, StageContext
    from smolforge.recipe import load_recipe

    r = load_recipe("textbooks")
    ctx = StageContext(recipe_name=r.name, recipe_dir=r.base_dir, seed=r.seed, default_engine=r.engine,
                       pool=EnginePool(), cache=None, stage_name="combine")
    seeds = r.stages[0]
    topics = [t for t in ctx.resolve_path(seeds.topics).read_text().splitlines() if t and not t.startswith("#")]
    assert len(topics) >= 60
    assert set(seeds.lists["audience"]) == {"young children", "middle school students", "college students", "professionals"}
    assert {"textbook (academic)", "blog post", "wikiHow", "children's story"} <= set(seeds.lists["style"])
    assert [s.type for s in r.stages] == ["seeds", "generate", "text_quality", "judge", "filter", "dedup"]


def test_dry_run_estimates_without_writing(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert [s["stage"] for s in report["stages"]] == ["items", "generate", "filter", "dedup"]
    gen = report["stages"][1]
    # one shard's records went through; each got 1..max_tokens (8) tokens
    assert report["stages"][0]["out"] == gen["in"] == report["sample"] == 2
    assert 1 <= gen["tokens_per_record"] <= 8
    assert gen["completion_tokens"] == round(gen["tokens_per_record"] * gen["in"])
    est = report["estimate"]
    # 7 records; the generate stage keeps every record, so its tokens scale by 7
    assert est["records"] == 7
    assert est["completion_tokens"] == round(gen["tokens_per_record"] * 7)
    assert not (tmp_path / "run").exists()


def test_run_json_and_limit(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--limit", "3", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["status"] == "done" and s["stages"][0]["out"] == 3
    assert s["data"]["rows"] + sum(g["count"] for g in s["rejects"]) == 3


def test_malformed_input_exit_1_names_file_line_and_keeps_nothing_half_done(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"text": \n')
    path = write_recipe(tmp_path / "r.yaml", {"name": "bad", "stages": [
        {"type": "read", "path": "in.jsonl"}, {"type": "filter", "where": "chars(text) > 0"}]})
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"))
    assert p.returncode == 1
    assert "in.jsonl:2: invalid JSON" in p.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "in.jsonl:2" in manifest["attempts"][-1]["error"]


def test_runtime_column_check_for_read_without_mapping(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"body": "a"}\n')
    path = write_recipe(tmp_path / "r.yaml", {"name": "cols", "stages": [
        {"type": "read", "path": "in.jsonl"}, {"type": "filter", "where": "chars(text) > 0"}]})
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"))
    assert p.returncode == 2
    assert "stages[1]: column 'text' is used before any stage produces it" in p.stderr


def canned_recipe(url: str, n: int = 6, **stage) -> dict:
    return {"name": "canned", "shard_size": 2, "stages": [
        {"type": "items", "items": [{"topic": f"topic-{i}"} for i in range(n)]},
        {"type": "generate", "template": "Write about {{ topic }}.", "max_tokens": 4,
         "temperature": 0.0, **stage,
         "engine": {"type": "openai", "base_url": url, "model": "m", "max_retries": 0}}]}


def _cached(db) -> int:
    """Responses committed to a run's cache so far (0 before the file exists)."""
    import sqlite3

    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        con.close()


def echo(body: dict) -> str:
    return "text on " + user_text(body).split()[-1].rstrip(".")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_a_rerun_resumes_without_paying_twice(tmp_path):
    """SIGINT to the real CLI while a request is in flight: exit 130 with a resume
    hint, the manifest says interrupted; the re-run sends only the requests that had
    not been answered and finishes every record."""
    first_run = {"stuck": True}

    def answer(body: dict) -> str | Fault:
        if first_run["stuck"] and user_text(body) == "Write about topic-3.":
            return Fault.slow(60)  # in flight until the interrupt
        return echo(body)

    with canned_server(answer) as server:
        path = write_recipe(tmp_path / "r.yaml", canned_recipe(server.url))
        out = tmp_path / "run"
        # SIGINT back to its default in the child: a shell that starts a job in the
        # background (`make test &`) ignores SIGINT, the ignore is inherited, and Python
        # then installs no KeyboardInterrupt handler
        proc = subprocess.Popen([sys.executable, "-m", "smolforge.cli", "run", str(path), "--out", str(out),
                                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not any(s.prompt == "Write about topic-3." for s in server.seen):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        # topic-2's answer (same shard) is in and committed to the run's cache (WAL
        # mode: a reader sees committed rows); polled, so a busy machine cannot race it
        while _cached(out / "cache.sqlite") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "interrupted; re-run the same command to resume" in stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
        first = sorted(s.prompt for s in server.seen)
        assert first == [f"Write about topic-{i}." for i in range(4)]

        first_run["stuck"] = False
        server.reset(server.rule)
        p = smolforge("run", str(path), "--out", str(out), "--json")
        assert p.returncode == 0, p.stderr
    # topic-0..2 were answered before the interrupt: only the rest is asked again
    assert sorted(s.prompt for s in server.seen) == [f"Write about topic-{i}." for i in (3, 4, 5)]
    run = sf.Run(out)
    assert [r["text"] for r in run.data().to_pylist()] == [f"text on topic-{i}" for i in range(6)]
    assert [a["status"] for a in run.manifest["attempts"]] == ["interrupted", "done"]


@pytest.mark.slow
def test_a_killed_run_shows_what_finished_and_how_to_resume(tmp_path):
    """kill -9 mid-run leaves the manifest at `running` with no stage table: `show`
    and `report` say the run stopped, list what each stage committed, and print the
    command that resumes it; that command finishes the run."""
    first_run = {"stuck": True}

    def answer(body: dict) -> str | Fault:
        if first_run["stuck"] and user_text(body) == "Write about topic-3.":
            return Fault.slow(60)
        return echo(body)

    with canned_server(answer) as server:
        path = write_recipe(tmp_path / "r.yaml", canned_recipe(server.url))
        out = tmp_path / "run"
        argv = ["run", str(path), "--out", str(out), "--quiet"]
        proc = subprocess.Popen([sys.executable, "-m", "smolforge.cli", *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (out / "stages" / "01-generate" / "shard-00000.done").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.kill()
        proc.communicate(timeout=60)
        assert json.loads((out / "manifest.json").read_text())["status"] == "running"

        shown = smolforge("show", str(out), "--json")
        assert shown.returncode == 0, shown.stderr
        part = json.loads(shown.stdout)["partial"]
        assert part["state"].startswith("stopped without finishing")
        stages = {s["name"]: s for s in part["stages"]}
        assert stages["items"]["complete"] and stages["items"]["out"] == 6
        assert not stages["generate"]["complete"]
        assert (stages["generate"]["shards_done"], stages["generate"]["shards"]) == (1, 3)
        assert stages["generate"]["out"] == 2
        assert part["resume"] == "smolforge " + " ".join(argv)
        human = smolforge("show", str(out))
        assert "partial run: stopped without finishing" in human.stdout
        assert "smolforge " + " ".join(argv) in human.stdout and "1/3" in human.stdout
        page = smolforge("report", str(out), "--tokenizer", "approx")
        assert page.returncode == 0, page.stderr
        html = (out / "report.html").read_text()
        assert "Partial run" in html and f"--out {out}" in html

        first_run["stuck"] = False
        p = smolforge(*argv)
        assert p.returncode == 0, p.stderr
    assert [r["text"] for r in sf.Run(out).data().to_pylist()] == [f"text on topic-{i}" for i in range(6)]
    assert json.loads(smolforge("show", str(out), "--json").stdout)["partial"] is None


def test_show_samples_prints_that_many_records(tmp_path):
    with canned_server(echo) as server:
        run = sf.run(write_recipe(tmp_path / "r.yaml", canned_recipe(server.url)), out=tmp_path / "run")
    for n in (0, 2, 5):
        p = smolforge("show", str(run.path), "--json", "--samples", str(n))
        assert p.returncode == 0, p.stderr
        assert [r["text"] for r in json.loads(p.stdout)["samples"]] == [f"text on topic-{i}" for i in range(n)]
    human = smolforge("show", str(run.path), "--samples", "1")
    assert human.returncode == 0, human.stderr
    assert "'id': 'items-000000'" in human.stdout and "'id': 'items-000001'" not in human.stdout


def test_export_chat_with_system_and_prompt_columns_loads_as_trl_messages(tmp_path):
    """`export --format chat` writes the conversational format TRL's SFTTrainer
    reads: a `messages` list of {role, content}, system turn first when asked."""
    import datasets

    with canned_server(echo) as server:
        recipe = canned_recipe(server.url, n=3)
        recipe["stages"][1]["prompt_column"] = "question"
        recipe["stages"].insert(1, {"type": "vary", "lists": {"persona": ["You are terse."]}})
        run = sf.run(write_recipe(tmp_path / "r.yaml", recipe), out=tmp_path / "run")
    to = tmp_path / "chat.jsonl"
    p = smolforge("export", str(run.path), "--format", "chat", "--to", str(to),
                  "--prompt-column", "question", "--system-column", "persona")
    assert p.returncode == 0, p.stderr
    ds = datasets.load_dataset("json", data_files=str(to), split="train")
    assert ds.column_names == ["id", "messages"]
    assert ds[0]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Write about topic-0."},
        {"role": "assistant", "content": "text on topic-0"}]
    assert ds.num_rows == 3


def test_export_pairs_the_columns_the_recipe_declared(tmp_path):
    """A recipe whose `generate` writes `answer` (prompt kept in `question`) next to a
    source `text`: the chat export pairs question -> answer without flags, says so on
    stderr and in the Parquet metadata; the Python API does the same. A recipe that
    does not keep its prompt is refused (exit 2) with the candidate columns, and so is
    a named column the data lacks."""
    import pyarrow.parquet as pq

    from smolforge.export import export
    from smolforge.export.columns import AmbiguousColumns

    with canned_server(echo) as server:
        recipe = canned_recipe(server.url, n=2, output="answer", prompt_column="question")
        for i, item in enumerate(recipe["stages"][0]["items"]):
            item["text"] = f"source paragraph {i}"
        run = sf.run(write_recipe(tmp_path / "r.yaml", recipe), out=tmp_path / "run")
        unkept = canned_recipe(server.url, n=2, prompt_column=None, output="answer",
                               template="Write about {{ topic }} for {{ topic }}.")
        bare = sf.run(write_recipe(tmp_path / "u.yaml", unkept), out=tmp_path / "unkept")
    to = tmp_path / "chat.jsonl"
    p = smolforge("export", str(run.path), "--format", "chat", "--to", str(to))
    assert p.returncode == 0, p.stderr
    assert "prompt=question" in p.stderr and "response=answer" in p.stderr and "'generate'" in p.stderr
    rows = [json.loads(line) for line in to.read_text().splitlines()]
    assert rows[0]["messages"] == [{"role": "user", "content": "Write about topic-0."},
                                   {"role": "assistant", "content": "text on topic-0"}]
    assert export(run.path, "chat", tmp_path / "chat.parquet") == 2
    table = pq.read_table(tmp_path / "chat.parquet")
    used = json.loads(table.schema.metadata[b"smolforge.columns"])
    assert (used["prompt"], used["response"], used["system"]) == ("question", "answer", None)
    assert table.column("messages").to_pylist()[1][1]["content"] == "text on topic-1"

    p = smolforge("export", str(bare.path), "--format", "chat", "--to", str(tmp_path / "x.jsonl"))
    assert p.returncode == 2, p.stderr
    assert "--prompt-column" in p.stderr and "topic" in p.stderr and "answer" in p.stderr
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(AmbiguousColumns, match="text columns: topic, answer"):
        export(bare.path, "grpo", tmp_path / "x.jsonl")
    p = smolforge("export", str(bare.path), "--format", "chat", "--to", str(tmp_path / "x.jsonl"),
                  "--prompt-column", "topic", "--response-column", "nope")
    assert p.returncode == 2 and "--response-column nope: no such column" in p.stderr
    p = smolforge("export", str(bare.path), "--format", "chat", "--to", str(tmp_path / "x.jsonl"),
                  "--prompt-column", "topic")
    assert p.returncode == 0 and "prompt=topic (--prompt-column)" in p.stderr, p.stderr


def test_missing_ray_prints_the_whole_install_line(tmp_path):
    """The terminal renderer treats `[ray]` as markup unless escaped: the hint must
    read `pip install 'smolforge[ray]'`, not `pip install 'smolforge'`. Ray is made
    unimportable in the child (`None` in sys.modules), as on a machine without it."""
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    code = ("import sys; sys.modules['ray'] = None; from smolforge.cli import main; "
            f"sys.exit(main(['run', {str(path)!r}, '--out', {str(tmp_path / 'run')!r}, '--executor', 'ray']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert p.returncode == 1
    assert "pip install 'smolforge[ray]'" in p.stderr, p.stderr


def test_subprocess_timeout_is_below_pytests():
    """A CLI subprocess that hangs fails with its own TimeoutExpired (naming the
    command) before pytest-timeout kills the whole test."""
    import re

    from conftest import ROOT

    text = (ROOT / "pyproject.toml").read_text()
    timeout = int(re.search(r"^timeout = (\d+)$", text, re.M).group(1))
    assert timeout > SUBPROCESS_TIMEOUT
