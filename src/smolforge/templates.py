"""Prompt templates: Jinja in a sandbox, where record values are data, never code.

Values are passed as variables, so a record whose text contains `{{ ... }}` is
printed literally; the sandbox also blocks attribute tricks in the template itself.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True
)


class TemplateError(ValueError):
    pass


def load_source(template: str | None, template_file: str | None, base_dir: Path) -> str:
    """Inline text or a file relative to the recipe's directory."""
    if template_file:
        path = Path(template_file).expanduser()
        path = path if path.is_absolute() else base_dir / path
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


def render(source: str, record: dict) -> str:
    return compile_template(source).render(**record).strip()


def template_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]
