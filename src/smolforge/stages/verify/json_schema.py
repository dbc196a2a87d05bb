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
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator

from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.text import JSONTooDeep, loads_json

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
    _check_regexes(schema, where, "")
    return schema


def _check_regexes(schema: Any, where: str, path: str) -> None:
    """Every `pattern` and `patternProperties` regex must compile under RE2, which
    validation uses (linear time: a model's answer cannot make `(a+)+$` hang a run).
    `unevaluatedProperties` next to `patternProperties` is refused: jsonschema would
    run those regexes with Python's backtracking `re`."""
    from smolforge.expr import ExprError, compile_regex

    if isinstance(schema, list):
        for k, sub in enumerate(schema):
            _check_regexes(sub, where, f"{path}[{k}]")
        return
    if not isinstance(schema, dict):
        return
    regexes = [("pattern", schema["pattern"])] if isinstance(schema.get("pattern"), str) else []
    pp = schema.get("patternProperties")
    if isinstance(pp, dict):
        regexes += [(f"patternProperties[{p!r}]", p) for p in pp]
    for key, regex in regexes:
        try:
            compile_regex(regex, "JSON schema regexes use")
        except ExprError as e:
            raise ValueError(f"{where}: at {path or '$'}.{key}: {e}") from None
    if not path and _has_key(schema, "unevaluatedProperties") and _has_key(schema, "patternProperties"):
        raise ValueError(f"{where}: `unevaluatedProperties` with `patternProperties` is not supported "
                         "(jsonschema would run those regexes in Python's backtracking engine, not RE2)")
    for key, sub in schema.items():
        if key not in ("enum", "const", "examples", "default"):
            _check_regexes(sub, where, f"{path or '$'}.{key}")


def _has_key(schema: Any, key: str) -> bool:
    if isinstance(schema, dict):
        return key in schema or any(_has_key(v, key) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_key(v, key) for v in schema)
    return False


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
    base = validators.validator_for(schema)
    cls = validators.extend(base, {"pattern": _re2_pattern, "patternProperties": _re2_pattern_properties,
                                   "additionalProperties": _re2_additional_properties})
    return cls(schema, format_checker=base.FORMAT_CHECKER if formats else None)


# jsonschema's own `pattern`, `patternProperties` and `additionalProperties`, with the
# regexes run by RE2 instead of Python's `re` (same results and messages).
def _rx(pattern: str) -> Any:
    from smolforge.expr import compile_regex

    return compile_regex(pattern, "JSON schema regexes use")


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _rx(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(validator: Any, pp: dict, instance: Any, schema: dict) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pp.items():
        rx = _rx(pattern)
        for k, v in instance.items():
            if rx.search(k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _re2_additional_properties(validator: Any, ap: Any, instance: Any, schema: dict) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = [_rx(p) for p in schema.get("patternProperties", {})]
    extras = {k for k in instance if k not in properties and not any(rx.search(k) for rx in patterns)}
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns_shown = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns_shown}")
        else:
            shown = sorted(extras, key=str)
            verb = "was" if len(shown) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed "
                                  f"({', '.join(repr(e) for e in shown)} {verb} unexpected)")


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


@stages.register
class VerifyJSON(MapStage):
    """Drop records whose `column` is not JSON valid against `json_schema`."""

    type: Literal["verify_json"] = "verify_json"
    column: str = Field("text", description="column holding the JSON text")
    json_schema: Annotated[SchemaField, FILE] = Field(
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
            value = loads_json(text)
        except JSONTooDeep as e:  # json would recurse past Python's limit and abort the run
            return None, f"invalid JSON: {e}", "invalid_json"
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

