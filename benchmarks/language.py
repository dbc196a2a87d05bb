"""The `language` stage through the whole CLI against py3langid alone.

Documents: paragraphs of the Python standard library's docstrings (real text,
mostly English, some code). Side (a) calls `py3langid.classify` on each text in
this process; side (b) is `smolforge run` on read JSONL -> language -> dataset, as
a user runs it, timed as the child's CPU seconds. Prints docs per CPU-second and
the ratio b/a as JSON.

    python benchmarks/language.py [--docs 20000]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def corpus(n: int) -> list[str]:
    import importlib

    out: list[str] = []
    skip = {"this", "antigravity", "idlelib", "turtledemo", "tkinter"}  # side effects on import
    for mod in sorted(m.name for m in pkgutil.iter_modules()
                      if not m.name.startswith("_") and m.name not in skip):
        try:
            m = importlib.import_module(mod)
        except Exception:
            continue
        for _, obj in inspect.getmembers(m):
            doc = inspect.getdoc(obj) or ""
            out += [p for p in doc.split("\n\n") if len(p.split()) >= 8]
        if len(out) >= n:
            break
    return (out * (n // max(1, len(out)) + 1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    args = ap.parse_args()
    import py3langid

    texts = corpus(args.docs)
    py3langid.classify("warm up")
    t0 = time.process_time()
    for t in texts:
        py3langid.classify(t)
    lib_cpu = time.process_time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        (tmp / "r.yaml").write_text("name: lang\nstages:\n  - type: read\n    path: docs.jsonl\n"
                                    "  - type: language\n    languages: [en]\n")
        r = subprocess.run(["/usr/bin/time", "-f", "TIME %U %S", sys.executable, "-m", "smolforge.cli",
                            "run", str(tmp / "r.yaml"), "--out", str(tmp / "run"), "--quiet",
                            "--allow-empty"], capture_output=True, text=True, check=True)
        user, sys_ = map(float, r.stderr.strip().splitlines()[-1].split()[1:])
    cli_cpu = user + sys_
    print(json.dumps({
        "docs": len(texts), "load_average": os.getloadavg()[0],
        "py3langid_docs_per_cpu_s": round(len(texts) / lib_cpu, 1),
        "smolforge_cli_docs_per_cpu_s": round(len(texts) / cli_cpu, 1),
        "ratio_cli_over_library": round(lib_cpu / cli_cpu, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
