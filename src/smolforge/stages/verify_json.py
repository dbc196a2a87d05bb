"""`verify_json`: keep records whose column parses as JSON and satisfies a JSON schema.

The check that makes structured-output data verifiable (issue "verifiable data": JSON
schemas): parse with Python's `json`, validate with `jsonschema` (the Draft its
`$schema` names, 2020-12 by default; `format` keywords such as `date` and `email`
are checked unless `formats: false`). Every dropped record says why, precisely:

- `truncated: ...`: the text is not JSON and the generating stage stopped at
  `max_tokens` (its `finish_reason` is `length` in `meta`), so the JSON never closed:
  raise `max_tokens`, not the prompt;
- `invalid JSON: Expecting ',' delimiter at line 1 column 20`;
- `schema: $.items[1].price: 'cheap' is not of type 'number' (type)`: the JSON path
  and the violated keyword of the most relevant error (jsonschema's `best_match`),
  then the others, up to `max_errors`.

`fence: true` takes the JSON from a Markdown fence (```json ... ```, or a bare ```)
when the text has one, for models that wrap their answer; `output:` writes the
parsed value to a column of its own. A schema is inline or a JSON/YAML file relative
to the recipe (confined to the recipe's allowed folders like every recipe file);
without one, only parsing is checked.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, field_validator

from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result

if TYPE_CHECKING:
    from smolforge.context import StageContext

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5|jsonc)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)

SchemaField = dict[str, Any] | str | None


def check_schema(schema: Any, where: str) -> dict[str, Any] | bool:
    """`schema` if it is a valid JSON schema (for the Draft it names); else ValueError
    naming `where` and the problem."""
    from jsonschema import SchemaError, validators

    if not isinstance(schema, dict | bool):
        raise ValueError(f"{where}: a JSON schema is a mapping, got {type(schema).__name__}")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        path = "".join(f"[{p!r}]" for p in e.path)
        raise ValueError(f"{where}: not a valid JSON schema{' at ' + path if path else ''}: "
                         f"{e.message}") from None
    return schema


def validate_schema_field(value: SchemaField) -> SchemaField:
    """For a stage's `json_schema` field: an inline schema is checked at once; a path
    is checked when the stage runs (it resolves against the recipe's folder)."""
    if isinstance(value, dict):
        check_schema(value, "json_schema")
    elif isinstance(value, str) and not value.strip():
        raise ValueError("json_schema: empty path")
    return value


def load_schema(value: SchemaField, ctx: StageContext, field: str = "json_schema") -> Any:
    """The schema a stage's `json_schema` field names: the mapping itself, or the
    JSON/YAML file at that path relative to the recipe (outside the recipe's allowed
    folders: a RecipeError, as for `template_file`)."""
    from smolforge.recipe import RecipeError

    if value is None or isinstance(value, dict):
        return value
    path = ctx.resolve_path(value)  # confined to the recipe's allowed folders
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError([f"{field}: {value!r}: {e.strerror or e}"]) from None
    try:
        schema = _parse(text, path.suffix.lower())
    except ValueError as e:
        raise RecipeError([f"{field}: {value!r}: {e}"]) from None
    try:
        return check_schema(schema, f"{field}: {value!r}")
    except ValueError as e:
        raise RecipeError([str(e)]) from None


def _parse(text: str, suffix: str) -> Any:
    if suffix in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"not valid YAML: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno}") from None


@lru_cache(maxsize=64)
def _validator(schema_json: str, formats: bool) -> Any:
    from jsonschema import validators

    schema = json.loads(schema_json)
    cls = validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER if formats else None)


def extract_fenced(text: str) -> str:
    """The body of the first Markdown code fence (```json or bare ```), else `text`."""
    m = _FENCE.search(text)
    return m.group(1).strip() if m else text


def finish_info(meta: dict[str, Any], stage: str | None) -> dict[str, Any] | None:
    """The provenance entry of the stage that generated the text: `stage`'s, or the
    latest entry in `meta` that records a finish reason."""
    if not isinstance(meta, dict):
        return None
    if stage is not None:
        entry = meta.get(stage)
        return entry if isinstance(entry, dict) else None
    for entry in reversed(list(meta.values())):
        if isinstance(entry, dict) and "finish_reason" in entry:
            return entry
    return None


def _short(value: Any, limit: int = 160) -> str:
    s = value if isinstance(value, str) else repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


@stages.register("verify_json")
class VerifyJSON(MapStage):
    """Drop records whose `column` is not JSON valid against `json_schema`."""

    type: Literal["verify_json"] = "verify_json"
    column: str = Field("text", description="column holding the JSON text")
    json_schema: SchemaField = Field(
        None, description="JSON schema, inline or a JSON/YAML file relative to the recipe "
        "(none: only check that the text parses)")
    fence: bool = Field(
        False, description="take the JSON from a ```json fence when the text has one")
    output: str | None = Field(
        None, description="column for the parsed value (none: don't write one)")
    formats: bool = Field(True, description="check `format` keywords (date, email, uri ...)")
    finish_stage: str | None = Field(
        None, description="stage whose finish_reason tells a truncated answer (default: the "
        "latest stage in `meta` that records one)")
    max_errors: int = Field(3, ge=1, description="schema errors named in a reason")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, v: SchemaField) -> SchemaField:
        return validate_schema_field(v)

    def requires(self) -> set[str]:
        return {self.column}

    def provides(self) -> set[str]:
        return {self.output} if self.output else set()

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        if isinstance(self.json_schema, str):  # the file's content, not only its name
            return {"json_schema": load_schema(self.json_schema, ctx)}
        return None

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        schema = load_schema(self.json_schema, ctx)
        validator = (None if schema is None else
                     _validator(json.dumps(schema, sort_keys=True), self.formats))
        counts = dict.fromkeys(("valid", "invalid_json", "truncated", "schema_invalid"), 0)
        for rec in batch:
            value, reason, kind = self._check(rec, validator)
            counts[kind] += 1
            if reason is not None:
                res.reject(rec, reason)
                continue
            if self.output:
                rec = {**rec, self.output: value}
            res.keep(rec)
        res.counts = {k: float(v) for k, v in counts.items()}
        return res

    def _check(self, rec: Record, validator: Any) -> tuple[Any, str | None, str]:
        """(parsed value, reason or None, outcome)."""
        raw = rec.get(self.column)
        if not isinstance(raw, str):
            return None, f"invalid JSON: column {self.column!r} is {type(raw).__name__}, not text", \
                "invalid_json"
        text = extract_fenced(raw) if self.fence else raw.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            msg = e.msg.removesuffix(" at")  # "Invalid control character '\n' at" + " at line..."
            info = finish_info(rec.get("meta") or {}, self.finish_stage)
            if info is not None and info.get("finish_reason") == "length":
                tokens = info.get("tokens")
                limit = (info.get("sampling") or {}).get("max_tokens")
                at = f"{tokens} tokens" + (f", max_tokens {limit}" if limit else "")
                return None, (f"truncated: generation stopped at max_tokens ({at}) before the "
                              f"JSON closed ({msg} at char {e.pos} of {len(text)})"), "truncated"
            where = f"line {e.lineno} column {e.colno}"
            return None, f"invalid JSON: {msg} at {where}: {_short(text, 80)!r}", "invalid_json"
        if validator is not None:
            errors = list(validator.iter_errors(value))
            if errors:
                return None, "schema: " + self._describe(errors), "schema_invalid"
        return value, None, "valid"

    def _describe(self, errors: list[Any]) -> str:
        from jsonschema.exceptions import best_match

        first = best_match(errors)
        rest = sorted((e for e in errors if e is not first), key=lambda e: e.json_path)
        shown = [first, *rest][: self.max_errors]
        parts = [f"{e.json_path}: {_short(e.message)} ({e.validator})" for e in shown]
        more = len(errors) - len(shown)
        return "; ".join(parts) + (f" (+{more} more)" if more else "")

