"""Old module paths, kept importable after the December 2026 restructure.

The stage modules moved into family folders that read as the pipeline
(`stages/sources/`, `stages/synth/`, ...) and the text and export helpers into
packages. Code that imports an old path gets the very module of the new one (same
object: private names and monkeypatching work), with a DeprecationWarning. The list
is also CHANGELOG.md's.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "smolforge.stages.chunk": "smolforge.stages.sources.chunk",
    "smolforge.stages.seeds": "smolforge.stages.sources.seeds",
    "smolforge.stages.vary": "smolforge.stages.shape.vary",
    "smolforge.stages.render": "smolforge.stages.shape.render",
    "smolforge.stages.generate": "smolforge.stages.synth.generate",
    "smolforge.stages.instruct": "smolforge.stages.synth.instruct",
    "smolforge.stages.personas": "smolforge.stages.synth.persona_expand",
    "smolforge.stages.magpie": "smolforge.stages.synth.magpie",
    "smolforge.stages.judge": "smolforge.stages.judges.judge",
    "smolforge.stages.pairwise": "smolforge.stages.judges.pairwise_judge",
    "smolforge.stages.classify": "smolforge.stages.judges.classify",
    "smolforge.stages.filters": "smolforge.stages.quality.filter",
    "smolforge.stages.text_filters": "smolforge.stages.quality.text_quality",
    "smolforge.stages.heuristics": "smolforge.stages.quality.heuristics",
    "smolforge.stages.langid": "smolforge.stages.quality.language",
    "smolforge.stages.dedup": "smolforge.stages.curate.dedup",
    "smolforge.stages.decontaminate": "smolforge.stages.curate.decontaminate",
    "smolforge.stages.constraints": "smolforge.stages.verify.constraints",
    "smolforge.stages.verify_code": "smolforge.stages.verify.code",
    "smolforge.stages.verify_json": "smolforge.stages.verify.json_schema",
    "smolforge.stages.preference": "smolforge.stages.preferences",
    "smolforge.stages.mix": "smolforge.stages.assemble.mix",
    "smolforge.stages.real_mix": "smolforge.stages.assemble.mix_real",
    "smolforge.stages.split": "smolforge.stages.assemble.split",
    "smolforge.minhash": "smolforge.text.minhash",
    "smolforge.ngrams": "smolforge.text.ngrams",
    "smolforge.rouge": "smolforge.text.rouge",
    "smolforge.export_columns": "smolforge.export.columns",
    "smolforge.export_grpo": "smolforge.export.grpo",
    "smolforge.export_preference": "smolforge.export.preference",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The module is the new one, already executed."""


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
