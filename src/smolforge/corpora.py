"""Real text that every machine has: the Python standard library's docstrings.

Tests and benchmarks need real English prose without a download; the standard
library carries tens of thousands of docstrings (PSF licence).
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from smolforge.text import normalize


def stdlib_docstrings(pattern: str = "**/*.py", modules: bool = True) -> Iterator[str]:
    """Distinct (after normalisation) docstrings of stdlib files matching `pattern`,
    in a fixed order; `modules=False` keeps only class and function docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    kinds: tuple[type, ...] = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    if modules:
        kinds += (ast.Module,)
    seen: set[str] = set()
    for path in sorted(p for p in root.glob(pattern) if "site-packages" not in p.parts):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, kinds):
                doc = ast.get_docstring(node)
                key = normalize(doc or "")
                if key and key not in seen:
                    seen.add(key)
                    yield doc
