"""Name -> class registries for stages and engines.

Recipes name stages and engines by their `type:`; the registries turn those names
into pydantic model classes. Built-in modules register themselves on import, so the
registries import them lazily the first time a name is looked up.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The valid name a typo most likely meant, if any is close enough."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return match[0] if match else None


class UnknownName(KeyError):
    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        hint = closest(name, choices)
        msg = f"unknown {kind} type {name!r}"
        msg += f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(sorted(choices))})"
        super().__init__(msg)

    def __str__(self) -> str:
        return self.args[0]


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: list[str]):
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._loaded = False
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} type {name!r} registered twice")
            self._classes[name] = cls
            return cls

        return deco

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._builtin_modules:
                importlib.import_module(mod)

    def get(self, name: str) -> type[T]:
        self._load_builtins()
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownName(self.kind, name, list(self._classes)) from None

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._classes)


stages: Registry = Registry(
    "stage",
    [
        "smolforge.stages.sources",
        "smolforge.stages.generate",
        "smolforge.stages.judge",
        "smolforge.stages.pairwise",
        "smolforge.stages.filters",
        "smolforge.stages.dedup",
        "smolforge.stages.heuristics",
        "smolforge.stages.langid",
        "smolforge.stages.decontaminate",
        "smolforge.stages.classify",
        "smolforge.stages.text_filters",
        "smolforge.stages.chunk",
        "smolforge.stages.vary",
        "smolforge.stages.render",
        "smolforge.stages.real_mix",
        "smolforge.stages.mix",
        "smolforge.stages.seeds",
        "smolforge.stages.personas",
        "smolforge.stages.instruct",
        "smolforge.stages.magpie",
        "smolforge.stages.constraints",
        "smolforge.stages.verify_code",
        "smolforge.stages.verify_json",
        "smolforge.stages.preference",
        "smolforge.stages.split",
    ],
)

engines: Registry = Registry("engine", ["smolforge.engines.llamacpp", "smolforge.engines.openai",
                                        "smolforge.engines.servers", "smolforge.engines.vllm"])
