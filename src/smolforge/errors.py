"""Errors that several modules raise, in a leaf module so that raising one imports
nothing else (docs/architecture.md: shared types live in leaf modules)."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot be written as asked (the CLI's exit 2): unknown format,
    ambiguous or missing columns, a target it must not overwrite."""


class RecipeError(ValueError):
    """A recipe that cannot run; `problems` is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
