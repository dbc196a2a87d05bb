"""Prompt templates: Jinja in a sandbox, where record values are data, never code.

Values are passed as variables, so a record whose text contains `{{ ... }}` is
printed literally; the sandbox also blocks attribute tricks in the template itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True
)


class TemplateError(ValueError):
    """A prompt file that cannot be read or parsed; `field` is the stage field that
    named it, for the recipe error's YAML path."""

    def __init__(self, message: str, field: str = "template_file"):
        super().__init__(message)
        self.field = field


def load_source(
    template: str | None, template_file: str | None, base_dir: Path, roots: Sequence[Path] | None = None
) -> str:
    """Inline text or a file relative to the recipe's directory. With `roots` (a
    StageContext's `allowed_roots`) a file outside them is a RecipeError: the
    backstop for the check made when the recipe was loaded."""
    if template_file:
        path = Path(template_file).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if roots is not None:
            from smolforge.context import PathNotAllowed, check_inside
            from smolforge.recipe import RecipeError

            try:
                check_inside(path, roots, repr(template_file))
            except PathNotAllowed as e:
                raise RecipeError([f"template_file: {e}"]) from None
        try:
            return path.read_text()
        except OSError as e:
            raise TemplateError(f"template file {path}: {e.strerror}") from None
    return template or ""


@lru_cache(maxsize=128)
def compile_template(source: str):
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"template line {e.lineno}: {e.message}") from None


@lru_cache(maxsize=128)
def variables(source: str) -> frozenset[str]:
    """Names a template reads (the columns it needs)."""
    try:
        return frozenset(meta.find_undeclared_variables(_env.parse(source)))
    except TemplateSyntaxError as e:
        raise TemplateError(f"template line {e.lineno}: {e.message}") from None


def template_variables(
    template: str | None, template_file: str | None, base_dir: Path | None
) -> frozenset[str]:
    """Names a stage's prompt reads, for `requires()`: the inline template's, or
    the template file's once the recipe's folder is known (`base_dir`), so that a
    typo in a file (`{{ questoin }}`) is caught before the run like one inline.
    An unreadable file gives no names here; loading the stage reports it."""
    if template is not None:
        return variables(template)
    if not template_file or base_dir is None:
        return frozenset()
    try:
        source = load_source(None, template_file, base_dir)
    except TemplateError:
        return frozenset()
    try:
        return variables(source)
    except TemplateError as e:
        raise TemplateError(f"{template_file}: {e}") from None


def render(source: str, record: dict) -> str:
    return compile_template(source).render(**record).strip()


def template_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]
