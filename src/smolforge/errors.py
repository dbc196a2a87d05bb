"""Errors that several modules raise, in a leaf module so that raising one imports
nothing else (docs/architecture.md: shared types live in leaf modules)."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot be written as asked (the CLI's exit 2): unknown format,
    ambiguous or missing columns, a target it must not overwrite."""
