"""Same data on every machine: the embedded engine's greedy texts and the judge's
token-probability scores, regenerated here and compared with tests/golden/greedy.jsonl.

The file was made by the portable llama.cpp build (x86-64-v3: AVX2/FMA/F16C, no AVX-512,
no AMX) that `make install` compiles, on the CPU named in its first line. Every x86-64
machine runs the same kernels with that build, so on a machine whose CPU differs from
that one this test is the cross-CPU check (issue #20). It is the one place where exact
numerics are pinned on purpose; other model tests assert what holds for any correct
build. After a deliberate change (a llama.cpp upgrade, another prompt format), rewrite
the file with `python tests/test_golden.py` and say why in the commit.

64 greedy requests (those of test_determinism: short chats, prompts sharing a long
prefix, raw prompts) and the `fineweb-edu` criteria judge (7 yes/no questions) on 16
passages: 8 of the Python documentation from the edu_filter corpus and 8 other kinds.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # 64 greedy requests and 112 judge prompts on the real model

GOLDEN = Path(__file__).parent / "golden" / "greedy.jsonl"
CORPUS = Path(__file__).resolve().parents[1] / "src" / "smolforge" / "recipes" / "edu_filter" / "corpus.jsonl"
DIGITS = 6  # judge probabilities are compared at this many decimals

OTHER = [
    "BIG SALE!!! Buy 2 get 1 free on all sneakers this weekend only. Use code SAVE20 at checkout. "
    "Free shipping on orders over $50. Click here to shop now!",
    "Terms of Service. By accessing this website you agree to be bound by these terms. The "
    "licensor shall not be liable for any damages arising from the use of the materials.",
    "lol idk what ur talking about m8 ;) brb gotta go feed the cat, c u l8r!!!",
    "Home | About | Contact | Login | Register | Cart (0) | Privacy Policy | Sitemap | "
    "Copyright 2024 All rights reserved.",
    "xq zzv 88 ## lorem ;; kjh@@ %% 0x0 ..,, qqq wmw 17 17 17 ~~ bzzt",
    "2023-01-04 12:00:01 INFO worker started pid=4411\n2023-01-04 12:00:02 WARN retry 1/3\n"
    "2023-01-04 12:00:04 ERROR connection refused",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
    "to make glucose and oxygen. It takes place in the chloroplasts of leaf cells.",
    "To add fractions with different denominators, first find a common denominator, rewrite "
    "each fraction with it, then add the numerators and keep the denominator.",
]


def judge_texts() -> list[str]:
    docs = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()]
    return [d for d in docs if len(d.split()) >= 60][:8] + OTHER


def compute(tmp: Path) -> list[dict]:
    """The golden records, computed now by this machine's build."""
    from test_determinism import requests64

    import smolforge as sf
    from smolforge.engines.llamacpp import LlamaCppEngine
    from smolforge.engines.llamacpp_build import build_info
    from smolforge.recipe import Recipe

    out: list[dict] = [{"kind": "build", **{k: build_info()[k] for k in ("llama_cpp_python", "isa")}}]
    engine = LlamaCppEngine()
    try:
        reqs = requests64()
        for req, resp in zip(reqs, engine.generate(reqs)):
            assert resp.error is None, resp.error
            out.append({"kind": "greedy", "messages": req.messages, "prompt": req.prompt,
                        "max_tokens": req.max_tokens, "text": resp.completions[0].text})
    finally:
        engine.close()
    recipe = Recipe.from_dict({
        "name": "golden", "stages": [
            {"type": "items", "items": [{"text": t} for t in judge_texts()]},
            {"type": "judge", "rubric": "fineweb-edu", "method": "criteria", "column": "edu"},
        ]})
    for row in sf.run(recipe, out=tmp / "judge").data().to_pylist():
        probs = {k[len("edu_"):]: round(v, DIGITS) for k, v in sorted(row.items())
                 if k.startswith("edu_") and k != "edu_entropy" and isinstance(v, float)}
        out.append({"kind": "judge", "text": row["text"], "p_yes": probs, "score": round(row["edu"], DIGITS)})
    return out


def test_greedy_texts_and_judge_scores_match_the_golden_file(tmp_path):
    from smolforge.engines.llamacpp_build import build_info

    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    made_by = golden[0]
    build = build_info()
    assert build["portable"], (
        f"llama.cpp here is a {build['isa']} build, not the portable x86-64-v3 one that the golden "
        "file and every user's data come from: reinstall it with `make llama-cpp`")
    assert build["llama_cpp_python"] == made_by["llama_cpp_python"], (
        "another llama-cpp-python version: regenerate tests/golden/greedy.jsonl on purpose")
    now = compute(tmp_path)
    assert len(now) == len(golden)
    differ = [(g, n) for g, n in zip(golden[1:], now[1:]) if g != {k: n[k] for k in g if k in n}]
    assert not differ, (
        f"{len(differ)} of {len(golden) - 1} golden records differ on this CPU "
        f"({_cpu()}; the file was made on {made_by['cpu']}). First: {differ[0]}")


def _cpu() -> str:
    """The CPU's model name and its flags that matter to llama.cpp's kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    fam = re.search(r"^cpu family\s*:\s*(\d+)$", info, re.M)
    model = re.search(r"^model\s*:\s*(\d+)$", info, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
    keep = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
            if f in flags]
    kind = f" (family {fam.group(1)} model {model.group(1)})" if fam and model else ""
    return f"{name.group(1) if name else platform.machine()}{kind} [{' '.join(keep)}]"


if __name__ == "__main__":  # rewrite the golden file with this machine's build
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        records = compute(Path(tmp))
    records[0]["cpu"] = _cpu()
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"wrote {GOLDEN}: {len(records) - 1} records, {records[0]}")
