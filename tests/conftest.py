"""Shared fixtures. Tests run the real bundled model (SmolLM2-135M) with few
tokens, real files and real subprocesses; HTTP tests talk to real servers on
127.0.0.1 (llama-cpp-python's server, or tests/faultproxy.py's canned answers)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from smolforge.context import StageContext

ROOT = Path(__file__).resolve().parents[1]

# tests/ mirrors src/; test modules share builders across folders (test_report_stats's
# build_run, test_dedup's ListShards, test_classify's classifier_recipe), so every folder
# of tests/ is importable, whichever test file runs alone. Test file names are unique.
for _folder in sorted(p for p in (ROOT / "tests").rglob("*")
                      if p.is_dir() and not ({"data", "golden", "__pycache__"} & set(p.parts))):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

# Model-hash memo and any other per-user state stay inside the test session.
os.environ.setdefault("SMOLFORGE_HOME", str(ROOT / ".pytest_cache" / "smolforge-home"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pytest-timeout kills a test at 600 s (pyproject); a subprocess must time out
# before that, so that its own TimeoutExpired (with the command) is what fails.
SUBPROCESS_TIMEOUT = 480


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_recipe(**over) -> dict:
    """Items -> greedy generate (few tokens) -> filter -> exact dedup."""
    recipe = {
        "name": "tiny",
        "seed": 7,
        "shard_size": 2,
        "stages": [
            {"type": "items", "items": [{"topic": t} for t in
                                        ["cats", "rivers", "fractions", "stars", "cats", "bread", "rain"]]},
            {"type": "generate", "template": "Write one sentence about {{ topic }}.",
             "max_tokens": 8, "temperature": 0.0},
            {"type": "filter", "where": "words(text) >= 2"},
            {"type": "dedup", "method": "exact", "column": "text"},
        ],
    }
    recipe.update(over)
    return recipe


def smolforge(*args: str, cwd: Path | None = None, timeout: int = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (its timeout stays below pytest's)."""
    return subprocess.run(
        [sys.executable, "-m", "smolforge.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=min(timeout, SUBPROCESS_TIMEOUT),
        env=None if env is None else {**os.environ, **env},
    )


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """One `python -m llama_cpp.server` on the bundled model for the whole session;
    yields its root URL (http://127.0.0.1:PORT, without /v1)."""
    from servers import llama_cpp_server

    with llama_cpp_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One S3-compatible server (moto) on 127.0.0.1 for the whole session."""
    from servers import moto_s3_server

    with moto_s3_server() as url:
        yield url


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket on the local S3 server; the usual AWS_* variables (a secret
    key, AWS_ENDPOINT_URL) point every boto/s3fs client at it, as a user's shell would."""
    import s3fs
    from servers import S3, S3_KEY, S3_SECRET

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "SMOLFORGE_STORAGE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=S3_KEY, secret=S3_SECRET)
    bucket = "sf-" + os.urandom(6).hex()
    fs.mkdir(bucket)
    return S3(s3_endpoint, bucket, fs)


def stage_ctx(recipe_dir: Path, *, stage: str = "", seed: int = 0, engine: Any = "llamacpp",
              **kw: Any) -> StageContext:
    """A StageContext for calling one stage directly, as the runner would (no run
    directory unless `run_dir=`, no response cache)."""
    from smolforge.context import EnginePool, StageContext

    return StageContext(recipe_name="t", recipe_dir=recipe_dir, seed=seed, default_engine=engine,
                        pool=EnginePool(), cache=None, stage_name=stage, **kw)
