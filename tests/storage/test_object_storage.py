"""Object storage (issue #22, first slice): `read` sources, `decontaminate` benchmark
files and `smolforge export --to` take URLs, against a real S3-compatible server on
127.0.0.1 (the `s3` fixture, conftest.py). The path policy covers URLs (allowed prefixes only), a
remote source is fingerprinted by its objects' names, sizes and ETags, exports to a
bucket never replace an object without --force, and the credentials never reach
the run directory."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SUBPROCESS_TIMEOUT, smolforge
from servers import S3
from servers import S3_SECRET as SECRET

import smolforge as sf
from smolforge.errors import ExportError, RecipeError
from smolforge.export import export
from smolforge.paths import file_digests
from smolforge.recipe import Recipe

ROWS_A = [{"text": f"alpha document number {i} about rivers and rain"} for i in range(6)]
ROWS_B = [{"text": "beta short"}, {"text": ROWS_A[0]["text"]},  # a duplicate across files
          {"text": "beta document about the planets of the solar system"}]
ROWS_P = [{"text": t} for t in ["halving a fraction doubles its denominator",
                                  "quiz: which organelle is known as the powerhouse of the cell today",
                                  "decimals and percentages are two ways to write parts",
                                  "a prime number has exactly two divisors"]]
BENCH = [{"question": "Which organelle is known as the powerhouse of the cell?"}]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def recipe(inputs: list[str], bench: str, allow: list[str] | None) -> dict:
    out = {"name": "objstore", "seed": 3, "shard_size": 4, "stages": [
        {"type": "read", "path": inputs},
        {"type": "filter", "where": "words(text) >= 3"},
        {"type": "dedup", "method": "exact", "column": "text"},
        {"type": "decontaminate", "n": 4, "benchmarks": [{"path": bench, "fields": ["question"]}]},
    ]}
    if allow is not None:
        out["allow_paths"] = allow
    return out


def upload(s3: S3) -> None:
    s3.put("in/a.jsonl", jsonl(ROWS_A))
    s3.put("in/b.jsonl", jsonl(ROWS_B))
    s3.put("in/c.parquet", parquet(ROWS_P))
    s3.put("in/notes.txt", b"not matched by the globs")
    s3.put("bench/qa.jsonl", jsonl(BENCH))


def texts(run) -> list[str]:
    return run.data().column("text").to_pylist()


def test_recipe_reads_a_bucket_like_a_folder_and_exports_back(s3: S3, tmp_path: Path):
    """JSONL and Parquet globs from the bucket through filter, dedup and
    decontamination give the same data as the same files on disk; the export goes
    back to the bucket, whole, and is not replaced without --force."""
    upload(s3)
    local = tmp_path / "local"
    for key in ("in/a.jsonl", "in/b.jsonl", "in/c.parquet", "bench/qa.jsonl"):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(s3.get(key))
    remote_run = sf.run(recipe([s3.url("in/*.jsonl"), s3.url("in/*.parquet")], s3.url("bench/qa.jsonl"),
                               [f"s3://{s3.bucket}/in", f"s3://{s3.bucket}/bench"]), tmp_path / "run-s3")
    local_run = sf.run(recipe([str(local / "in/*.jsonl"), str(local / "in/*.parquet")],
                              str(local / "bench/qa.jsonl"), [str(local)]), tmp_path / "run-local")
    got = texts(remote_run)
    assert got == texts(local_run)
    assert "beta short" not in got and got.count(ROWS_A[0]["text"]) == 1  # filter, dedup
    assert ROWS_P[1]["text"] not in got and ROWS_P[2]["text"] in got  # decontaminate
    assert len(got) == 6 + 1 + 3
    reasons = [r["reason"] for r in remote_run.rejects().to_pylist()]
    assert any(r.startswith("contaminated: qa item 0") for r in reasons)

    # export to the bucket: the same bytes as a local export, no temporary key left
    n = export(tmp_path / "run-s3", "jsonl", s3.url("out/data.jsonl"))
    export(tmp_path / "run-s3", "jsonl", tmp_path / "data.jsonl")
    assert n == len(got) and s3.get("out/data.jsonl") == (tmp_path / "data.jsonl").read_bytes()
    export(tmp_path / "run-s3", "parquet", s3.url("out/data.parquet"))
    assert pq.read_table(io.BytesIO(s3.get("out/data.parquet"))).column("text").to_pylist() == got
    assert [k for k in s3.objects() if k.startswith("out/")] == ["out/data.jsonl", "out/data.parquet"]

    # an object smolforge did not write (or did): replaced only with --force
    s3.put("out/theirs.jsonl", b"someone else's data\n")
    with pytest.raises(ExportError, match=r"theirs.jsonl: exists; export does not overwrite"):
        export(tmp_path / "run-s3", "jsonl", s3.url("out/theirs.jsonl"))
    assert s3.get("out/theirs.jsonl") == b"someone else's data\n"
    export(tmp_path / "run-s3", "jsonl", s3.url("out/theirs.jsonl"), force=True)
    assert s3.get("out/theirs.jsonl") == s3.get("out/data.jsonl")
    with pytest.raises(ExportError, match="objects lie under this prefix"):
        export(tmp_path / "run-s3", "jsonl", s3.url("out"), force=True)
    with pytest.raises(ExportError, match="cannot go to a URL yet"):
        export(tmp_path / "run-s3", "hf", s3.url("hf"))


def test_a_failed_export_leaves_no_object(s3: S3, tmp_path: Path):
    """A failure while writing (here: a column the chat format needs is missing...
    checked before; so a write that raises) leaves neither the target nor the
    temporary key."""
    from smolforge import remote

    with pytest.raises(RuntimeError), remote.atomic_object(s3.url("out/x.jsonl")) as f:
        f.write(b"half of it")
        raise RuntimeError("disk full")
    assert s3.objects() == []


def test_resume_notices_a_changed_object(s3: S3, tmp_path: Path):
    """The read stage's fingerprint holds each object's name, size and ETag: the
    same object rewritten with other bytes of the same length re-runs the run."""
    s3.put("in/a.jsonl", jsonl(ROWS_A))
    data = {"name": "resume", "seed": 1, "shard_size": 4, "allow_paths": [f"s3://{s3.bucket}/in"],
            "stages": [{"type": "read", "path": s3.url("in/*.jsonl")}]}
    assert texts(sf.run(data, tmp_path / "run")) == [r["text"] for r in ROWS_A]
    stage = Recipe.from_dict(data).stages[0]
    before = file_digests(stage, tmp_path)
    assert [d[1:3] for d in before] == [[s3.url("in/a.jsonl"), len(jsonl(ROWS_A))]]

    changed = [{"text": r["text"].replace("rivers", "rivErs")} for r in ROWS_A]
    assert len(jsonl(changed)) == len(jsonl(ROWS_A))  # same size: only the ETag tells
    s3.put("in/a.jsonl", jsonl(changed))
    assert file_digests(stage, tmp_path) != before
    assert texts(sf.run(data, tmp_path / "run")) == [r["text"] for r in changed]
    # a new object under the glob is noticed too
    s3.put("in/b.jsonl", jsonl(ROWS_B))
    assert len(texts(sf.run(data, tmp_path / "run"))) == len(ROWS_A) + len(ROWS_B)


def test_a_url_needs_an_allowed_prefix(s3: S3, tmp_path: Path):
    """Like a folder outside the recipe's, a URL is read only under an `allow_paths`
    or `--allow-path` prefix (whole segments); the error names the YAML path."""
    s3.put("in/a.jsonl", jsonl(ROWS_A))
    s3.put("input/a.jsonl", jsonl(ROWS_B))
    (tmp_path / "r.yaml").write_text(json.dumps(recipe([s3.url("in/*.jsonl")], s3.url("bench/qa.jsonl"),
                                                       None)))
    with pytest.raises(RecipeError) as e:
        sf.load_recipe(str(tmp_path / "r.yaml"))
    text = str(e.value)
    assert "stages[0].path[0]" in text and "not under an allowed URL prefix" in text
    assert "stages[3].benchmarks[0].path" in text
    assert "--allow-path s3://bucket/prefix" in text

    ok = sf.load_recipe(str(tmp_path / "r.yaml"), allow_paths=[f"s3://{s3.bucket}/in", f"s3://{s3.bucket}/bench/"])
    assert f"s3://{s3.bucket}/in" in ok.allowed_roots
    # `in` does not allow `input`; the working directory never allows a URL
    with pytest.raises(RecipeError, match=r"stages\[0\]\.path.*'s3://.*/input/\*\.jsonl'"):
        Recipe.from_dict({"name": "x", "stages": [{"type": "read", "path": s3.url("input/*.jsonl")}]},
                         allow_paths=[f"s3://{s3.bucket}/in"])
    # a wildcard in the bucket name is checked as the whole store: refused
    with pytest.raises(RecipeError, match=r"stages\[0\]\.path: 's3://sf-\*/in/a.jsonl' is not under"):
        Recipe.from_dict({"name": "x", "stages": [{"type": "read", "path": "s3://sf-*/in/a.jsonl"}]},
                         allow_paths=[f"s3://{s3.bucket}"])
    # `--set` on the command line allows what it names, as for local files
    r = Recipe.from_dict({"name": "x", "stages": [{"type": "read", "path": "x.jsonl"}]},
                         overrides=[f"stages[0].path={s3.url('in/*.jsonl')}"])
    assert texts(sf.run(r, tmp_path / "run")) == [x["text"] for x in ROWS_A]
    # fields that do not read URLs yet say so
    with pytest.raises(RecipeError, match=r"stages\[1\]\.template_file: 's3://.*does not read URLs yet"):
        Recipe.from_dict({"name": "x", "allow_paths": [f"s3://{s3.bucket}"], "stages": [
            {"type": "items", "items": ["a"]},
            {"type": "generate", "template_file": s3.url("t.j2")}]})


def test_credentials_are_never_read_from_a_recipe_or_shown(s3: S3, tmp_path: Path, monkeypatch):
    """A URL with a user or password is refused without echoing it, and a bad
    SMOLFORGE_STORAGE_OPTIONS is named, not printed."""
    url = f"s3://AKIAX:{SECRET}@{s3.bucket}/in/a.jsonl"
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({"name": "x", "allow_paths": [f"s3://{s3.bucket}"],
                          "stages": [{"type": "read", "path": url}]})
    assert "must not hold credentials" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({"name": "x", "allow_paths": [url], "stages": [{"type": "items", "items": ["a"]}]})
    assert "allow_paths" in str(e.value) and SECRET not in str(e.value)

    from smolforge import remote

    monkeypatch.setenv("SMOLFORGE_STORAGE_OPTIONS", f'{{"s3": {{"secret": "{SECRET}"')  # cut short
    with pytest.raises(remote.RemoteError) as e:
        remote.listing(s3.url("in/*.jsonl"))
    assert "SMOLFORGE_STORAGE_OPTIONS must be a JSON object" in str(e.value) and SECRET not in str(e.value)


def test_the_secret_never_reaches_the_run_directory(s3: S3, tmp_path: Path, monkeypatch):
    """The real CLI, credentials from SMOLFORGE_STORAGE_OPTIONS only (no AWS_*
    keys), the bucket allowed with --allow-path: run, resume, export to the bucket; the secret is in no file of the run
    directory, the export, the recipe copy or the output."""
    upload(s3)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SMOLFORGE_STORAGE_OPTIONS", json.dumps(
        {"s3": {"key": "sf-test-key", "secret": SECRET, "endpoint_url": s3.endpoint}}))
    (tmp_path / "r.yaml").write_text(json.dumps(recipe(
        [s3.url("in/*.jsonl"), s3.url("in/c.parquet")], s3.url("bench/qa.jsonl"), None)))
    env = {"OMP_NUM_THREADS": "1"}
    outputs, codes = [], []
    run = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--allow-path", f"s3://{s3.bucket}"]
    for args in (run, run,  # the second resumes
                 ["export", str(tmp_path / "run"), "--format", "jsonl", "--to", s3.url("out/x.jsonl")],
                 ["export", str(tmp_path / "run"), "--format", "jsonl", "--to", s3.url("out/x.jsonl")]):
        p = smolforge(*args, cwd=tmp_path, env=env, timeout=SUBPROCESS_TIMEOUT)
        outputs.append(p.stdout + p.stderr)
        codes.append(p.returncode)
    assert codes == [0, 0, 0, 1], outputs
    assert "exists; export does not overwrite" in outputs[-1]
    assert len(s3.get("out/x.jsonl").splitlines()) == 10
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 5 and any(p.name == "manifest.json" for p in files)
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert not any(SECRET in o for o in outputs)
    assert not any(SECRET.encode() in s3.get(k) for k in s3.objects())


def test_file_urls_are_local_paths(tmp_path: Path, monkeypatch):
    """`file://` is a local path: the local rules (allowed folders, symlinks) hold."""
    (tmp_path / "in.jsonl").write_bytes(jsonl(ROWS_B))
    run = sf.run({"name": "f", "stages": [{"type": "read", "path": f"file://{tmp_path}/*.jsonl"}]},
                 tmp_path / "run", allow_paths=[f"file://{tmp_path}"])
    assert texts(run) == [r["text"] for r in ROWS_B]
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    shutil.copy(tmp_path / "in.jsonl", outside / "in.jsonl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="outside the recipe folder"):
        Recipe.from_dict({"name": "f", "stages": [{"type": "read", "path": f"file://{outside}/in.jsonl"}]},
                         base_dir=tmp_path)
    export(tmp_path / "run", "jsonl", f"file://{tmp_path}/out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [r["text"] for r in ROWS_B]


def test_the_docs_example_loads_and_its_error_is_the_one_shown(tmp_path: Path):
    """docs/storage.md's recipe loads as written (the bucket is not listed to check
    it), and without `allow_paths` fails with the error the page shows."""
    import re

    from conftest import ROOT

    doc = (ROOT / "docs" / "storage.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    (tmp_path / "web-filter.yaml").write_text(block)
    recipe_ = sf.load_recipe(str(tmp_path / "web-filter.yaml"))
    assert "s3://corpora/web" in recipe_.allowed_roots
    (tmp_path / "r.yaml").write_text(block.replace("allow_paths: [s3://corpora/web, s3://evals]", ""))
    with pytest.raises(RecipeError) as e:
        sf.load_recipe(str(tmp_path / "r.yaml"))
    shown = re.search(r"  r\.yaml:\d+: (stages\[0\]\.path: .*)", doc).group(1)
    assert shown in str(e.value)
