"""JSON schemas: the `verify_json` stage (planted hard cases, reasons checked against
jsonschema itself), `json_schema:` on `generate` (inline or a confined file), and the
openai engine's detection of the JSON form a server takes, against the real
llama_cpp.server (which rejects OpenAI's json_schema form with a 500) and canned
servers that reject one form or every form."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import stage_ctx, write_recipe
from faultproxy import Fault, FaultProxy, canned_server

from smolforge.context import StageContext
from smolforge.engines.base import Request
from smolforge.engines.openai import OpenAIEngine
from smolforge.recipe import RecipeError, load_recipe
from smolforge.stages.verify.json_schema import VerifyJSON, extract_fenced

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "born": {"type": "string", "format": "date"},
        "items": {"type": "array", "items": {
            "type": "object", "properties": {"price": {"type": "number"}},
            "required": ["price"]}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def ctx(tmp_path: Path) -> StageContext:
    return stage_ctx(tmp_path, stage="verify_json", seed=1, allowed_roots=[tmp_path])


def rec(i: int, text, finish: str = "stop", tokens: int = 5) -> dict:
    return {"id": str(i), "text": text,
            "meta": {"generate": {"finish_reason": finish, "tokens": tokens,
                                  "sampling": {"max_tokens": tokens}}}}


def test_verify_json_planted_cases(tmp_path):
    stage = VerifyJSON(type="verify_json", json_schema=SCHEMA, output="parsed")
    batch = [
        rec(0, '{"name": "Ada", "born": "1815-12-10", "items": [{"price": 2.5}]}'),
        rec(1, '  {"name": "Bo"}\n'),                                     # whitespace around
        rec(2, '{"name": "Cy", "items": [{"price": 1}, {"price": "cheap"}]}'),
        rec(3, '{"name": "Di", "born": "10/12/1815"}'),                   # format: date
        rec(4, '{"name": "Ed", "age": 3}'),                                # additionalProperties
        rec(5, '{"name": "Fa", "items": [{"price": 1}, {"pri', "length", 16),  # cut by max_tokens
        rec(6, '{"name": "Gu",, }'),                                       # broken, not cut
        rec(7, '```json\n{"name": "Hu"}\n```'),                            # fenced, fence off
        rec(8, '{"born": "2001-02-03"}'),                                  # required missing
        rec(9, None),
    ]
    res = stage.process(batch, ctx(tmp_path))
    kept = {r["id"]: r for r in res.kept}
    reasons = {r.record["id"]: r.reason for r in res.rejected}
    assert sorted(kept) == ["0", "1"]
    assert kept["0"]["parsed"] == {"name": "Ada", "born": "1815-12-10", "items": [{"price": 2.5}]}
    assert kept["1"]["parsed"] == {"name": "Bo"}
    assert reasons["2"] == "schema: $.items[1].price: 'cheap' is not of type 'number' (type)"
    assert reasons["3"].startswith("schema: $.born: ") and reasons["3"].endswith("(format)")
    assert reasons["4"].startswith("schema: $: ") and "'age'" in reasons["4"]
    assert reasons["4"].endswith("(additionalProperties)")
    assert reasons["5"].startswith("truncated: generation stopped at max_tokens (16 tokens")
    assert "before the JSON closed" in reasons["5"]
    assert reasons["6"].startswith("invalid JSON: Expecting property name enclosed in double quotes"
                                   " at line 1 column 15")
    assert reasons["7"].startswith("invalid JSON: ")
    assert reasons["8"] == "schema: $: 'name' is a required property (required)"
    assert reasons["9"].startswith("invalid JSON: column 'text' is NoneType")
    assert res.counts == {"valid": 2, "invalid_json": 3, "truncated": 1, "schema_invalid": 4}
    # Side by side with jsonschema itself: same verdict for every parsable record.
    check = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for r in batch:
        try:
            obj = json.loads(r["text"])
        except (TypeError, ValueError):
            continue
        assert check.is_valid(obj) == (r["id"] in kept), r


def test_verify_json_fence_many_errors_and_no_schema(tmp_path):
    c = ctx(tmp_path)
    fenced = VerifyJSON(type="verify_json", json_schema=SCHEMA, fence=True, max_errors=2)
    res = fenced.process([
        rec(0, 'Here you go:\n```json\n{"name": "Hu"}\n```\nAnything else?'),
        rec(1, '```\n{"name": "Io"}\n```'),
        rec(2, '{"name": "Jo"}'),  # no fence: the text itself
        rec(3, '```json\n{"name": "", "x": 1, "items": [{}]}\n```'),
    ], c)
    assert [r["id"] for r in res.kept] == ["0", "1", "2"]
    (bad,) = res.rejected
    # Three violations, the two named are the most relevant then by path; the rest counted.
    assert bad.reason.startswith("schema: ") and bad.reason.endswith("(+1 more)")
    assert bad.reason.count("; ") == 1
    assert extract_fenced("no fence") == "no fence"
    assert extract_fenced("```json\n[1, 2]") == "[1, 2]"  # an unclosed fence at the end
    # Without a schema only parsing is checked: any JSON value passes.
    plain = VerifyJSON(type="verify_json")
    res = plain.process([rec(0, "[1, 2]"), rec(1, "3"), rec(2, "{'a': 1}")], c)
    assert [r["id"] for r in res.kept] == ["0", "1"]
    assert res.rejected[0].reason.startswith("invalid JSON: Expecting property name")


def test_schema_files_are_checked_and_confined(tmp_path):
    (tmp_path / "recipe").mkdir()
    rdir = tmp_path / "recipe"
    (rdir / "schema.yaml").write_text("type: object\nrequired: [a]\n")
    (tmp_path / "outside.json").write_text('{"type": "object"}')
    (rdir / "bad.json").write_text('{"type": "objekt"}')

    def recipe(schema):
        return write_recipe(rdir / "r.yaml", {"name": "j", "stages": [
            {"type": "items", "items": [{"t": "x"}]},
            {"type": "generate", "template": "{{ t }}", "json_schema": schema},
            {"type": "verify_json", "json_schema": schema}]})

    r = load_recipe(recipe("schema.yaml"))
    c = ctx(rdir)
    assert r.stages[2].fingerprint(c) != VerifyJSON(type="verify_json").fingerprint(c)
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe("../outside.json"))
    assert "outside the recipe folder" in str(e.value.problems)
    assert "stages[1].json_schema" in str(e.value.problems)
    with pytest.raises(RecipeError) as e:  # an inline schema is checked on load
        load_recipe(recipe({"type": "objekt"}))
    assert "not a valid JSON schema" in str(e.value.problems)
    # A file's schema is checked when the stage reads it, naming the file.
    stage = load_recipe(recipe("bad.json")).stages[2]
    with pytest.raises(RecipeError) as e:
        stage.process([rec(0, "{}")], c)
    assert "'bad.json'" in str(e.value.problems) and "not a valid JSON schema" in str(e.value.problems)


# ------------------------------------------------------------------ openai: JSON form detection

PERSON = {"title": "Person", "type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def ask(text: str, **kw) -> Request:
    return Request(messages=[{"role": "user", "content": text}], max_tokens=kw.pop("max_tokens", 24),
                   json_schema=PERSON, **kw)


def test_auto_detection_against_real_llama_cpp_server(llama_server):
    """llama-cpp-python's server rejects OpenAI's json_schema form (a 500 naming
    response_format): the engine tries it once, takes json_object, keeps it."""
    with FaultProxy(llama_server) as proxy:
        eng = OpenAIEngine(type="openai", base_url=proxy.url, model="smollm2", retry_base_delay=0.05)
        try:
            (first,) = eng.generate([ask("Alice is 30 years old. Give her as JSON.")])
            (second,) = eng.generate([ask("Bob is 41 years old. Give him as JSON.")])
            usage = eng.usage()
        finally:
            eng.close()
    for r in (first, second):
        assert r.error is None, r.error
        assert r.json_mode == "json_object"
        if r.completions[0].finish_reason == "stop":  # the grammar made it schema-valid JSON
            jsonschema.validate(json.loads(r.completions[0].text), PERSON)
    forms = [(s.prompt[:5], s.body["response_format"]["type"], s.status) for s in proxy.seen]
    assert forms == [("Alice", "json_schema", 500), ("Alice", "json_object", 200),
                     ("Bob i", "json_object", 200)]
    assert usage["json_mode"] == "json_object" and usage["failed"] == 0


def test_auto_detection_canned_servers():
    def only_object(body):
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            return Fault.raw(400, '{"error": {"message": "unknown field json_schema"}}')
        return '{"name": "Ann", "age": 5}'

    with canned_server(only_object) as srv:
        eng = OpenAIEngine(type="openai", base_url=srv.url, model="m", concurrency=1)
        try:
            out = eng.generate([ask("a"), ask("b"), ask("c")])
            plain = eng.generate([Request(messages=[{"role": "user", "content": "d"}])])
        finally:
            eng.close()
    assert [r.json_mode for r in out] == ["json_object"] * 3 and plain[0].json_mode is None
    assert [(s.prompt, (s.body.get("response_format") or {}).get("type")) for s in srv.seen] == [
        ("a", "json_schema"), ("a", "json_object"), ("b", "json_object"), ("c", "json_object"),
        ("d", None)]
    assert eng.usage()["json_mode"] == "json_object"

    def none_at_all(body):
        if "response_format" in body:
            return Fault.raw(422, '{"detail": "response_format is not supported"}')
        return '{"name": "Ann", "age": 5}'

    with canned_server(none_at_all) as srv:
        eng = OpenAIEngine(type="openai", base_url=srv.url, model="m", concurrency=1)
        try:
            out = eng.generate([ask("a"), ask("b")])
        finally:
            eng.close()
    assert [r.json_mode for r in out] == ["prompt", "prompt"]
    assert [(s.prompt[:1], (s.body.get("response_format") or {}).get("type")) for s in srv.seen] == [
        ("a", "json_schema"), ("a", "json_object"), ("a", None), ("b", None)]
    # Prompt-only: the schema is in the (last user) message instead.
    assert json.dumps(PERSON) in srv.seen[-1].prompt and srv.seen[-1].prompt.startswith("b\n\n")

    # A 400 that no form cures (a bad prompt) fails that request with the first error
    # and rules nothing out.
    with canned_server(lambda b: Fault.raw(400, '{"error": "prompt too long"}')) as srv:
        eng = OpenAIEngine(type="openai", base_url=srv.url, model="m", concurrency=1)
        try:
            (r,) = eng.generate([ask("a")])
        finally:
            eng.close()
    assert r.error == 'HTTP 400: {"error": "prompt too long"}'
    assert "json_mode" not in eng.usage()
    # A fixed schema_format is sent as configured, with no detection.
    with canned_server(only_object) as srv:
        eng = OpenAIEngine(type="openai", base_url=srv.url, model="m", schema_format="json_schema")
        try:
            (r,) = eng.generate([ask("a")])
        finally:
            eng.close()
    assert r.error is not None and len(srv.seen) == 1


def test_control_characters_in_strings(tmp_path):
    """A raw newline inside a JSON string is invalid JSON: the reason reads once "at"
    (Python's message ends in "at": it read "at at"); and the grammar the embedded
    engine builds from a schema cannot produce one (llama-cpp-python's `char` rule let
    every control character through), so what it generates parses every time."""
    stage = VerifyJSON(type="verify_json")
    res = stage.process([rec(0, '{"name": "two\nlines"}')], ctx(tmp_path))
    (rej,) = res.rejected
    assert rej.reason == "invalid JSON: Invalid control character at line 1 column 14: '{\"name\": \"two\\nlines\"}'"
    assert " at at " not in rej.reason

    from smolforge.engines.llamacpp import LlamaCppEngine, json_grammar

    grammar = json_grammar({"type": "object", "properties": {"poem": {"type": "string", "maxLength": 200}},
                            "required": ["poem"]})
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert char.startswith(r'char ::= [^"\\\x7F\x00-\x1F] |'), char
    # the bundled model, asked for a poem of several lines in one JSON string
    engine = LlamaCppEngine(model="smollm2-135m", n_ctx=512, n_threads=1)
    try:
        schema = {"type": "object", "properties": {"poem": {"type": "string", "maxLength": 200}},
                  "required": ["poem"]}
        reqs = [Request(messages=[{"role": "user", "content": f"Write a poem of four short lines about {t}. "
                                   "Answer in JSON: {\"poem\": \"...\"}"}],
                        max_tokens=80, temperature=0.0, json_schema=schema)
                for t in ("the sea", "a river", "winter")]
        for resp in engine.generate(reqs):
            text = resp.completions[0].text
            assert not any(ord(ch) < 0x20 for ch in text), text  # whitespace outside strings: spaces
            if resp.completions[0].finish_reason == "stop":
                assert isinstance(json.loads(text)["poem"], str)
    finally:
        engine.close()


# ------------------------------------------------------------------ hostile answers and schemas (issue 27)


def test_deeply_nested_answers_are_rejected_with_a_reason_not_a_crash(tmp_path):
    """1,100 unclosed `[` made Python's json recurse past its limit: RecursionError
    aborted the whole run, on every re-run. Nesting past 100 levels is a reason."""
    import smolforge as sf

    texts = ["[" * 1100, "[" * 5000 + "]" * 5000, '{"a": [1, {"b": "[[[["}]}', "[" * 100 + "]" * 100,
             '{"a": "' + "[" * 2000 + '"}']
    recipe = {"name": "deep", "seed": 1, "stages": [
        {"type": "items", "items": texts},
        {"type": "verify_json", "output": "parsed"}]}
    run = sf.run(recipe, tmp_path / "run")
    assert run.manifest["status"] == "done"
    kept = [r["text"] for r in run.data().to_pylist()]
    assert kept == texts[2:]
    reasons = {r["id"]: r["reason"] for r in run.rejects().to_pylist()}
    assert reasons == {"items-000000": "invalid JSON: nested deeper than 100 levels (at char 100)",
                       "items-000001": "invalid JSON: nested deeper than 100 levels (at char 100)"}


def test_json_depth_scan_skips_strings_and_escapes():
    from smolforge.text import json_too_deep

    assert json_too_deep('["\\\\"' + "[" * 200 + "]" * 200 + "]") == 104  # `"\\"` ends the string
    assert json_too_deep('["\\"' + "[" * 200 + '"]') is None  # `\"` does not end the string
    assert json_too_deep("[" * 101, 100) == 100 and json_too_deep("[" * 100, 100) is None


_PATTERN_CHILD = """
import json
from smolforge.stages.verify.json_schema import _validator
schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}},
          "patternProperties": {"^(b+)+$": {"type": "integer"}}, "additionalProperties": False}
v = _validator(json.dumps(schema, sort_keys=True), True)
for inst in ({"s": "a" * 40 + "!"}, {"b" * 40 + "!": 1}, {"s": "aaa", "bbb": 2}, {"bbb": "x"}):
    print(sorted(e.message for e in v.iter_errors(inst)))
"""


def test_schema_regexes_run_in_linear_time_with_jsonschemas_messages():
    """A schema's `pattern` against a crafted answer: `^(a+)+$` on 40 a's and a `!`
    backtracks ~2^40 steps in Python's `re` (a child process, so a hang fails the
    test on its timeout). Through RE2 the answers are the same as jsonschema's."""
    import os
    import subprocess
    import sys

    import smolforge

    src = str(Path(smolforge.__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _PATTERN_CHILD], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        f"[\"'{'a' * 40}!' does not match '^(a+)+$'\"]",
        f"[\"'{'b' * 40}!' does not match any of the regexes: '^(b+)+$'\"]",
        "[]",
        "[\"'x' is not of type 'integer'\"]"]
    # the same messages as jsonschema's own keywords, on inputs that do not backtrack
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a+$"}},
              "patternProperties": {"^b+$": {"type": "integer"}}, "additionalProperties": False}
    ours = VerifyJSON(type="verify_json", json_schema=schema)
    for inst in ({"s": "ab"}, {"bc": 1}, {"s": "a", "bb": "x"}, {"zz": 1, "yy": 2}):
        want = sorted(e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(inst))
        from smolforge.stages.verify.json_schema import _validator
        got = sorted(e.message for e in _validator(json.dumps(schema, sort_keys=True), True).iter_errors(inst))
        assert got == want, inst
    assert ours.json_schema == schema


def test_schema_regexes_re2_cannot_run_are_refused_when_the_recipe_loads(tmp_path):
    bad = [({"type": "string", "pattern": "(?=a)a"}, "at $.pattern: regex '(?=a)a' is not supported"),
           ({"type": "object", "properties": {"x": {"patternProperties": {"(a)\\1": {}}}}},
            "at $.properties.x.patternProperties['(a)\\\\1']: regex '(a)\\\\1' is not supported"),
           ({"type": "object", "patternProperties": {"^a": {}}, "unevaluatedProperties": False},
            "`unevaluatedProperties` with `patternProperties` is not supported")]
    for schema, message in bad:
        with pytest.raises(ValueError) as e:
            VerifyJSON(type="verify_json", json_schema=schema)
        assert message in str(e.value), str(e.value)
        assert "JSON schema regexes use RE2" in str(e.value) or "unevaluated" in message
