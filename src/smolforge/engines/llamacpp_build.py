"""Which llama.cpp build runs the embedded engine, and whether its output is portable.

llama.cpp chooses its CPU kernels when it is compiled. pip's default build is native
(`-march=native`): on an AVX-512/AMX Xeon it runs other kernels than on an AVX2 machine,
so one greedy request gives different texts and judge scores on the two, and its AMX path
crashes when compiled by GCC 12 (the tile configuration is optimised away; see
docs/engines.md). smolforge's install compiles one portable baseline instead, x86-64-v3
(AVX2, FMA, F16C, BMI2; no AVX-512, no AMX): the same kernels on every x86-64 CPU since
2015, so the same recipe gives the same data everywhere (tests/golden/ pins it).

The manifest records the build (`Runner`); resuming on a build whose greedy output can
differ warns, naming both. `python -m smolforge.engines.llamacpp_build` prints it and
fails when the build is not the flavour the install asked for.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

# The x86-64-v3 feature set as llama.cpp's CPU backend reports it (ggml-cpu.cpp lists a
# feature only when the kernels were compiled with it).
PORTABLE_X86 = frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"})
# Features that do not change which arithmetic the kernels do.
_NOT_ISA = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "CPU_HBM", "KLEIDIAI"})


@lru_cache(maxsize=1)
def build_info() -> dict[str, Any]:
    """{"llama_cpp_python": version, "isa": "x86-64-v3" or "native:+AVX512,...",
    "portable": bool, "features": [...]}: what decides the engine's numerics."""
    import llama_cpp

    text = llama_cpp.llama_print_system_info().decode(errors="replace")
    cpu = next((part for part in text.split("CPU :")[1:2]), text)
    features = sorted(set(re.findall(r"([A-Z0-9_]+) = 1", cpu)))
    isa = {f for f in features if f not in _NOT_ISA}
    portable = isa == PORTABLE_X86
    if portable:
        label = "x86-64-v3"
    else:
        extra = sorted(isa - PORTABLE_X86)
        missing = sorted(PORTABLE_X86 - isa)
        label = "native:" + ",".join([f"+{f}" for f in extra] + [f"-{f}" for f in missing])
    return {
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "isa": label,
        "portable": portable,
        "features": features,
    }


def describe(build: dict[str, Any] | None) -> str:
    """One line naming a build, for warnings."""
    if not build:
        return "an unrecorded build"
    return f"llama-cpp-python {build.get('llama_cpp_python')} ({build.get('isa')})"


def same_numerics(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two builds give the same greedy output (same version and kernels)."""
    if not a or not b:
        return a == b
    return (a.get("llama_cpp_python"), a.get("isa")) == (b.get("llama_cpp_python"), b.get("isa"))


def main() -> int:
    """Print the build; exit 1 when it is not the flavour asked for (the Makefile's
    SMOLFORGE_LLAMA_NATIVE): a stale native wheel must not pass for the portable one."""
    info = build_info()
    print(json.dumps(info))
    native = os.environ.get("SMOLFORGE_LLAMA_NATIVE", "0") == "1"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and not native and not info["portable"]:
        print(
            f"error: llama.cpp is {describe(info)}, not the portable x86-64-v3 build: its greedy "
            "output depends on this CPU. Reinstall it with `make llama-cpp` (or set "
            "SMOLFORGE_LLAMA_NATIVE=1 to keep a native build on purpose).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
