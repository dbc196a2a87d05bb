"""Name -> class registries for stages and engines.

Recipes name stages and engines by their `type:`; the registries turn those names
into pydantic model classes. A class registers itself with `@stages.register` (or
`@engines.register`); its name is the default of its `type` field, written once.
Built-ins come in through the same door as plugins (as `llm`'s plugin hooks do):
on the first lookup the registry imports every module of its package
(`smolforge.stages`, `smolforge.engines`) and then every entry point of its group
(`smolforge.stages`, `smolforge.engines`), so a plugin package adds a stage or an
engine by declaring, in its own `pyproject.toml`,

    [project.entry-points."smolforge.stages"]
    my_stages = "my_package.stages"

without editing smolforge (docs/writing-a-stage.md).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
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


class PluginError(ImportError):
    """A plugin module named by an entry point failed to import."""


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, group: str):
        self.kind, self.package, self.group = kind, package, group
        self._loaded = False
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register `cls` under its `type` field's default."""
        field = getattr(cls, "model_fields", {}).get("type")
        name = getattr(field, "default", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__}: a {self.kind} needs `type: Literal[\"name\"] = \"name\"`")
        if name in self._classes and self._classes[name] is not cls:
            other = self._classes[name]
            raise ValueError(f"{self.kind} type {name!r} registered twice: "
                             f"{other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        self._classes[name] = cls
        return cls

    def modules(self) -> list[str]:
        """The built-in modules: every module of the package, in name order."""
        pkg = importlib.import_module(self.package)
        return sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, self.package + "."))

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.modules():
            importlib.import_module(mod)
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                ep.load()
            except Exception as e:
                raise PluginError(f"{self.kind} plugin {ep.name!r} ({ep.value}, entry point group "
                                  f"{self.group!r}) failed to import: {type(e).__name__}: {e}") from e

    def get(self, name: str) -> type[T]:
        self._load()
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownName(self.kind, name, list(self._classes)) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)


stages: Registry = Registry("stage", "smolforge.stages", "smolforge.stages")
engines: Registry = Registry("engine", "smolforge.engines", "smolforge.engines")
