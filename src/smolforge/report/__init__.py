"""What a run did, for people: `show`, the HTML report and the dataset card.

- `stats` and `profile`: figures computed from a run directory (manifest, data,
  rejects), shared by all three so they always agree;
- `show`: the terminal view; `html`: `smolforge report`; `card`: the Hugging Face
  dataset folder (`export --format hf`) and `smolforge push`;
- `proxy`: AI proxy-word rates and their real-text reference.

The names below are imported lazily, so the CLI's parser stays fast.
"""

from __future__ import annotations

from typing import Any

_NAMES = {"summarize": "stats", "profile": "profiling", "reason_group": "stats", "count_knobs": "stats",
          "list_rejects": "stats", "print_summary": "show", "print_rejects": "show"}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"smolforge.report.{_NAMES[name]}"), name)
    raise AttributeError(name)
