"""`tool_calls`: APIGen's three checks on real traces, in the real sandbox.

Planted bad traces (fed through the `calls` column, no model) are each rejected by
the check that should catch them, with its reason: a function that does not exist
and an argument of the wrong type by FORMAT (the reason names the JSON path); a
tool that raises, hangs past the wall-time limit, prints past the output limit or
returns a value that is not JSON by EXECUTION. The schemas derived by parsing the
shipped tools file agree with transformers' own `get_json_schema` (which imports
the functions: done here only, on the trusted built-in file). The built-in recipe
runs through the CLI on the bundled model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, stage_ctx, write_recipe

from smolforge.errors import RecipeError
from smolforge.recipe import BUILTIN_DIR, load_recipe
from smolforge.registry import stages
from smolforge.stages.synth.tool_calls import parse_calls, trace_messages
from smolforge.toolfile import ToolFileError, derive_schemas

TOOLS = BUILTIN_DIR / "tool_calls" / "tools.py"

PLANTED_TOOLS = '''
import time


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def lookup(key: str) -> str:
    """Look a key up (there is nothing to find).

    Args:
        key: The key.
    """
    raise KeyError("no such key: " + key)


def hang() -> int:
    """Never returns."""
    while True:
        time.sleep(0.01)


def chatty() -> int:
    """Prints three megabytes."""
    print("x" * (3 << 20))
    return 1


def odd() -> list:
    """Returns a set: not JSON."""
    return {1, 2}
'''


def run_planted(tmp_path: Path, traces: list, **over) -> tuple[dict, dict, dict]:
    (tmp_path / "tools.py").write_text(PLANTED_TOOLS)
    stage = stages.get("tool_calls").model_validate({
        "type": "tool_calls", "tools": "tools.py", "calls": "calls", "semantic": False, "answer": False,
        "limits": {"wall_s": 2, "output_limit": 1 << 20, "output_tail": 65536}, **over})
    recs = [{"id": str(i), "meta": {}, "query": f"q{i}", "calls": json.dumps(c)} for i, c in enumerate(traces)]
    res = stage.process(recs, stage_ctx(tmp_path, stage="tool_calls"))
    return ({r["id"]: r for r in res.kept}, {r.record["id"]: r.reason for r in res.rejected}, dict(res.counts))


def test_planted_bad_traces_are_rejected_by_the_right_check(tmp_path):
    kept, rejected, counts = run_planted(tmp_path, [
        [{"name": "add", "arguments": {"a": 1, "b": 2}}],                   # 0 good
        [{"name": "multiply", "arguments": {"a": 1, "b": 2}}],              # 1 no such function
        [{"name": "add", "arguments": {"a": "1", "b": 2}}],                 # 2 wrong type
        [{"name": "add", "arguments": {"a": 1}}],                            # 3 missing argument
        [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "lookup", "arguments": {"key": "k"}}],  # 4
        [{"name": "hang", "arguments": {}}],                                 # 5 hangs
        [{"name": "chatty", "arguments": {}}],                               # 6 megabytes of output
        [{"name": "odd", "arguments": {}}],                                  # 7 not JSON
        [],                                                                  # 8 no tool applies
    ])
    assert set(kept) == {"0", "8"}
    assert json.loads(kept["0"]["tool_results"]) == [3] and kept["0"]["tool_check"] == "passed"
    assert json.loads(kept["8"]["calls"]) == [] and json.loads(kept["8"]["tool_results"]) == []
    assert rejected["1"].startswith("tool_calls: format: $.calls[0].name: no tool named 'multiply'")
    assert rejected["2"].startswith("tool_calls: format: $.calls[0].arguments.a: '1' is not of type 'integer'")
    assert rejected["3"].startswith("tool_calls: format: $.calls[0].arguments: 'b' is a required property")
    assert rejected["4"].startswith("tool_calls: execution: call 1 lookup: KeyError")
    assert "no such key: k" in rejected["4"]
    assert rejected["5"].startswith("tool_calls: execution: call 0 hang: wall_time")
    assert rejected["6"].startswith("tool_calls: execution: call 0 chatty: output_limit")
    assert rejected["7"].startswith("tool_calls: execution: call 0 odd: TypeError: the result is not JSON: a set")
    assert counts == {"failed_format": 3, "failed_execution": 4, "passed": 2}


def test_keep_failed_keeps_the_reason_and_messages_only_for_passed(tmp_path):
    kept, rejected, _ = run_planted(tmp_path, [[{"name": "add", "arguments": {"a": 2, "b": 2}}],
                                               [{"name": "nope", "arguments": {}}]], keep_failed=True)
    assert not rejected
    assert kept["1"]["tool_check"].startswith("format: $.calls[0].name") and kept["1"]["messages"] is None
    msgs = kept["0"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]  # answer: false, no empty final turn
    call = msgs[1]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "add"
    assert json.loads(call["function"]["arguments"]) == {"a": 2, "b": 2}
    assert msgs[2]["tool_call_id"] == call["id"] and msgs[2]["content"] == "4"
    tools = json.loads(kept["0"]["tools"])
    assert [t["function"]["name"] for t in tools] == ["add", "lookup", "hang", "chatty", "odd"]


def test_trace_messages_with_answer_and_without_calls():
    assert trace_messages("hi", [], [], "hello") == [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]
    msgs = trace_messages("2+2?", [{"name": "add", "arguments": {"a": 2, "b": 2}}], [4], "4")
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]


def test_parse_calls_names_the_problem():
    assert parse_calls('{"calls": [{"name": "f", "arguments": "{\\"x\\": 1}"}]}')[0] == [
        {"name": "f", "arguments": {"x": 1}}]  # OpenAI's string arguments
    assert parse_calls('{"calls": [{"name": 3}]}')[1] == "$.calls[0].name: missing or not a string"
    assert parse_calls('{"call": []}')[1] == "$: no `calls` key"
    assert parse_calls('{"calls": [1, 2, 3]}', max_calls=2)[1] == "$.calls: 3 calls, more than max_calls 2"
    assert parse_calls('{"calls": [').__getitem__(1).startswith("not JSON")


def test_schemas_of_the_shipped_tools_match_transformers(tmp_path):
    """Parsed, not imported; checked against transformers' get_json_schema, which
    imports the (trusted, built-in) file in this test process."""
    from transformers.utils import get_json_schema

    ours = {s["function"]["name"]: s["function"] for s in derive_schemas(TOOLS.read_text(), "tools.py")}
    assert len(ours) == 12 and not any(n.startswith("_") for n in ours)
    spec = importlib.util.spec_from_file_location("builtin_tools", TOOLS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, mine in ours.items():
        theirs = get_json_schema(getattr(mod, name))
        theirs = theirs.get("function", theirs)
        assert mine["description"] == theirs["description"], name
        assert mine["parameters"]["required"] == theirs["parameters"]["required"], name
        for p, sch in theirs["parameters"]["properties"].items():
            assert mine["parameters"]["properties"][p] == sch, (name, p)


def test_schema_derivation_errors_name_file_and_line():
    with pytest.raises(ToolFileError, match=r"^t\.py:2: syntax error"):
        derive_schemas("def f(x: int):\n    return (\n", "t.py")
    with pytest.raises(ToolFileError, match=r"t\.py:1: tool 'f' has no docstring"):
        derive_schemas("def f(x: int):\n    return x\n", "t.py")
    with pytest.raises(ToolFileError, match=r"t\.py:1: parameter 'x' of 'f' has no type hint"):
        derive_schemas('def f(x):\n    """Doc."""\n', "t.py")
    with pytest.raises(ToolFileError, match=r"unsupported type hint 'Path'"):
        derive_schemas('def f(x: Path):\n    """Doc."""\n', "t.py")
    s = derive_schemas('def f(x: int | None = None, *, tag: list[str] = ()):\n    """Doc."""\n', "t.py")
    params = s[0]["function"]["parameters"]
    assert params["properties"] == {"x": {"type": ["integer", "null"]}, "tag": {"type": "array",
                                                                            "items": {"type": "string"}}}
    assert "required" not in params


def test_a_tools_file_with_a_syntax_error_is_a_recipe_error(tmp_path):
    (tmp_path / "tools.py").write_text('def f(x: int) -> int:\n    """Doc."""\n    return x +\n')
    (tmp_path / "q.jsonl").write_text('{"query": "hi"}\n')
    path = write_recipe(tmp_path / "r.yaml", {"name": "t", "engine": {"type": "llamacpp", "model": "smollm2-135m"},
                                             "stages": [{"type": "read", "path": "q.jsonl"},
                                                        {"type": "tool_calls", "tools": "tools.py"}]})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "stages[1].tools" in str(e.value) and "tools.py:3: syntax error" in str(e.value)


@pytest.mark.slow  # ~2 min on a loaded 2-core machine: three traces on the bundled model
def test_recipe_runs_on_the_bundled_model_and_every_reject_names_its_check(tmp_path):
    out = tmp_path / "run"
    p = smolforge("run", "tool_calls", "--out", str(out), "--limit", "3", "--allow-empty", "--quiet",
                  env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr
    rejects = pq.read_table(out / "rejects" / "rejects.parquet").to_pylist() if (out / "rejects").exists() else []
    kept = pq.read_table(out / "data").to_pylist() if any((out / "data").glob("*.parquet")) else []
    assert len(rejects) + len(kept) == 3
    for r in rejects:
        assert r["reason"].split(": ")[1] in ("format", "execution", "semantics", "answer"), r["reason"]
    for r in kept:
        assert r["tool_check"] == "passed" and r["messages"][0]["role"] == "user"
    show = smolforge("show", str(out))
    assert show.returncode == 0 and (not rejects or "tool_calls:" in show.stdout)


def test_tool_subset_offers_only_its_tools(tmp_path):
    (tmp_path / "tools.py").write_text(PLANTED_TOOLS)
    stage = stages.get("tool_calls").model_validate({
        "type": "tool_calls", "tools": "tools.py", "calls": "calls", "tool_subset": "offer",
        "semantic": False, "answer": False})
    recs = [{"id": "0", "meta": {}, "query": "q", "offer": "add", "calls": '[{"name": "add", "arguments": {"a": 1, "b": 1}}]'},
            {"id": "1", "meta": {}, "query": "q", "offer": ["add"], "calls": '[{"name": "odd", "arguments": {}}]'},
            {"id": "2", "meta": {}, "query": "q", "offer": "add, sub", "calls": "[]"}]
    res = stage.process(recs, stage_ctx(tmp_path, stage="tool_calls"))
    assert [r["id"] for r in res.kept] == ["0"] and [t["function"]["name"] for t in json.loads(res.kept[0]["tools"])] == ["add"]
    reasons = {r.record["id"]: r.reason for r in res.rejected}
    assert reasons["1"] == "tool_calls: format: $.calls[0].name: tool 'odd' was not offered for this query"
    assert reasons["2"].startswith("tool_calls: column 'offer' names unknown tools ['sub']")


# A compact tool-capable chat template in the manner of Qwen2.5's (tools listed as
# JSON in the system turn, `tool_call.arguments` taken as a string or a mapping,
# `tool` turns for results): enough to show the stored rows render as TRL would.
TOOL_TEMPLATE = (
    "{% if tools %}<|system|>Tools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{% if m.content %}{{ m.content }}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{% if c.function.arguments is string %}{{ c.function.arguments }}{% else %}{{ c.function.arguments | tojson }}"
    "{% endif %}}</call>{% endfor %}{% endif %}\n{% endfor %}")


def test_kept_rows_survive_arrow_and_render_through_a_tool_template(tmp_path):
    from transformers.utils.chat_template_utils import render_jinja_template

    from smolforge.records import plain_rows, records_to_table

    kept, _, _ = run_planted(tmp_path, [[{"name": "add", "arguments": {"a": 1, "b": 2}}],
                                        [{"name": "odd", "arguments": {}}], []], keep_failed=True)
    rows = plain_rows(records_to_table(list(kept.values())))  # as the run directory stores them
    row = next(r for r in rows if r["id"] == "0")
    assert row["messages"][0]["tool_calls"] is None  # Arrow gives every message every key
    text, _ = render_jinja_template([row["messages"]], tools=json.loads(row["tools"]), chat_template=TOOL_TEMPLATE)
    assert '<call>{"name": "add", "arguments": {"a": 1, "b": 2}}</call>' in text[0]
    assert "<|tool|>3" in text[0] and '"name": "lookup"' in text[0]
