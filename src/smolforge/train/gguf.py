"""HF <-> GGUF: load a GGUF as a trainable transformers model, write a tuned model back.

Loading uses transformers' own GGUF reader (`from_pretrained(dir, gguf_file=...)`,
which dequantises to fp32 and rebuilds the tokenizer and chat template from the GGUF
metadata). Writing uses llama.cpp's `convert_hf_to_gguf.py` (f16) and then
`llama_cpp.llama_model_quantize` (q8_0, q4_1) from the installed llama-cpp-python, so
no C++ build is needed.

The converter is not in the llama-cpp-python wheel, only in its source package
(`vendor/llama.cpp`). `converter()` finds it, in this order: `$SMOLFORGE_LLAMA_CPP`
(a llama.cpp checkout), the user cache (`$SMOLFORGE_HOME/llama.cpp-<version>`, default
`~/.cache/smolforge`, which is also looked in when SMOLFORGE_HOME is elsewhere), and otherwise fetches it once with
`pip download --no-deps --no-binary :all: llama-cpp-python==<installed version>` and
keeps only the converter, its `conversion/` package and `gguf-py` (about 2 MB) in the
cache. The version matches the installed llama.cpp, so the files it writes load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

GGUF_TYPES = ("f16", "q8_0", "q4_1")
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


class ConverterError(RuntimeError):
    pass


def _home() -> Path:
    return Path(os.environ.get("SMOLFORGE_HOME", Path.home() / ".cache" / "smolforge"))


def _llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama_cpp_python")


def extract_converter(sdist: Path, dest: Path) -> Path:
    """Unpack only the converter's files from a llama-cpp-python source tarball."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            rel = parts[1][len("vendor/llama.cpp/"):]
            if not (m.isfile() and any(rel == k or rel.startswith(k) for k in _KEEP)):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            with src, open(target, "wb") as f:
                shutil.copyfileobj(src, f)
    if not (tmp / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConverterError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
    if dest.exists():
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    else:
        os.replace(tmp, dest)
    return dest / "convert_hf_to_gguf.py"


def converter(fetch: bool = True) -> Path:
    """Path of llama.cpp's convert_hf_to_gguf.py (see the module docstring)."""
    env = os.environ.get("SMOLFORGE_LLAMA_CPP")
    if env:
        p = Path(env).expanduser() / "convert_hf_to_gguf.py"
        if not p.is_file():
            raise ConverterError(f"SMOLFORGE_LLAMA_CPP={env}: no convert_hf_to_gguf.py there")
        return p
    ver = _llama_cpp_version()
    dest = _home() / f"llama.cpp-{ver}"
    # The user's default cache too, when SMOLFORGE_HOME points elsewhere (tests): the
    # converter is a public file of this exact version, fetched once per machine.
    for d in (dest, Path.home() / ".cache" / "smolforge" / f"llama.cpp-{ver}"):
        if (d / "convert_hf_to_gguf.py").is_file():
            return d / "convert_hf_to_gguf.py"
    if not fetch:
        raise ConverterError(f"no GGUF converter in {dest}")
    with tempfile.TemporaryDirectory(prefix="smolforge-sdist-") as d:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={ver}", "-d", d]
        r = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(d).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode or not sdists:
            raise ConverterError(
                "could not fetch llama.cpp's convert_hf_to_gguf.py (it ships in the "
                f"llama-cpp-python=={ver} source package): {r.stderr.strip()[-500:]}\n"
                "Set SMOLFORGE_LLAMA_CPP to a llama.cpp checkout, or run `make gguf-converter`.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        return extract_converter(sdists[0], dest)


def load_base(base: str, dtype: str = "float32") -> tuple[Any, Any]:
    """A bundled model name or a GGUF file or an HF model directory -> (model, tokenizer),
    ready to train and save (the GGUF quantizer state is cleared)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smolforge.engines.models import BUNDLED, resolve_model_path

    p = Path(os.path.expanduser(base))
    if base not in BUNDLED and p.is_dir():
        tok = AutoTokenizer.from_pretrained(p)
        model = AutoModelForCausalLM.from_pretrained(p, dtype=getattr(torch, dtype))
        return model, tok
    path = resolve_model_path(base)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=getattr(torch, dtype))
    clear_quantizer(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def clear_quantizer(model: Any) -> None:
    """A GGUF-loaded model carries a quantizer that refuses training and saving, though
    its weights are already dequantised: drop it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("quantization_method", "_pre_quantization_dtype"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                delattr(model, attr)


def to_gguf(hf_dir: str | Path, out: str | Path, outtype: str = "f16") -> Path:
    """Write a saved HF model directory (safetensors + tokenizer) as one GGUF file."""
    if outtype not in GGUF_TYPES:
        raise ValueError(f"--gguf {outtype!r}: choose from {', '.join(GGUF_TYPES)}")
    hf_dir, out = Path(hf_dir), Path(out)
    script = converter()
    f16 = out if outtype == "f16" else out.with_name(out.name + ".f16.tmp")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py
    r = subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(f16),
                        "--outtype", "f16"], capture_output=True, text=True, env=env)
    if r.returncode or not f16.is_file():
        raise ConverterError(f"convert_hf_to_gguf.py failed:\n{r.stderr.strip()[-2000:]}")
    if outtype != "f16":
        quantize(f16, out, outtype)
        f16.unlink()
    return out


def quantize(src: str | Path, dst: str | Path, qtype: str) -> None:
    """Re-quantise a GGUF with llama.cpp (no C++ build: the installed library does it)."""
    import llama_cpp

    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
             "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[qtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    # llama.cpp logs every tensor to fd 2: keep it for the error message only.
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if rc != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-1500:]
            raise ConverterError(f"llama_model_quantize {src} -> {qtype} failed (code {rc}):\n{tail}")
