"""`tool_calls`: function-calling traces kept only when they pass APIGen's three checks.

APIGen (Liu et al. 2024, arXiv:2406.18518; the xLAM-function-calling-60k set) keeps a
generated query and its calls only if they pass, in order: **format** (the JSON
parses, every function exists, the arguments match its schema), **execution** (the
calls really run without error) and **semantics** (a judge agrees the results answer
the query). This stage does that per record:

1. the query: a `query` column, or a `topic` column the model writes a query about;
2. the assistant's calls, asked of the model as JSON (`{"calls": [{"name",
   "arguments"}]}`, zero calls allowed: "no tool applies") under a JSON-schema
   grammar that fixes the shape only (`grammar: names` also fixes the names), or
   read from a `calls` column (traces made elsewhere, planted bad traces);
3. FORMAT: jsonschema against the schemas derived from the tools file (reasons name
   the JSON path); EXECUTION: the tools file and the calls run in the code sandbox
   (smolforge.sandbox, as `verify_code`): a tool that raises, hangs, prints past the
   output limit or returns non-JSON fails the trace with the reason; SEMANTICS
   (`semantic: true`): the judge's `criteria` question "do the results answer the
   query?" asked as yes/no and read from the answer token's probabilities (the
   judge stage's helpers), on `judge_engine` when given;
4. the final answer, written by the model from the results.

The tools file is never imported here: its schemas come from parsing it
(`smolforge.toolfile`), its code runs only in the sandbox. Output: `messages` in the
form TRL's SFTTrainer takes (an assistant message with `tool_calls`, `tool` messages
with the results, the final answer), `tools` (the offered schemas, a JSON string, as
TRL decodes it), `calls`, `tool_results`. Every reject names the failed check.
docs/tool-calls.md.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from smolforge.context import StageContext
from smolforge.engines.base import Request, chat
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.sandbox import Job, Limits, RunResult, open_sandbox
from smolforge.stages.base import MapStage, Record, Result
from smolforge.stages.llm import EngineField, LoopLLM, first_completion, load_template
from smolforge.templates import TemplateError
from smolforge.toolfile import ToolFileError, derive_schemas

CHECKS = ("format", "execution", "semantics", "answer")


def _tool_limits() -> Limits:
    # tight: tools are small functions; a megabyte of prints is a broken tool
    return Limits(wall_s=5.0, cpu_s=5.0, output_limit=1 << 20, output_tail=65536)


@stages.register
class ToolCalls(LoopLLM, MapStage):
    """Queries -> tool calls -> APIGen's format, execution and semantic checks -> answer."""

    type: Literal["tool_calls"] = "tool_calls"
    tools: Annotated[str, FILE] = Field(
        "tool_calls/tools.py", description="Python file of typed, documented functions (the tools), "
        "relative to the recipe; parsed for schemas, run only in the sandbox")
    query: str = Field("query", description="column with the user's query")
    topic: str | None = Field(None, description="column with a topic: the model writes the query first")
    tool_subset: str | None = Field(None, description="column with the tool names offered to this record "
                                    "(a list or comma-separated text; default: every tool)")
    calls: str | None = Field(None, description="column with the calls already made (JSON list of "
                              "{name, arguments}): checked, not asked of the model")
    grammar: Literal["shape", "names", "strict", "none"] = Field(
        "shape", description="JSON-schema grammar on the calls: their shape; also the tool names; also each "
        "tool's argument schema (the format check then catches little but truncation); or none")
    max_calls: int = Field(4, ge=1, le=16, description="most calls in one trace")
    semantic: bool = Field(True, description="ask the judge whether the results answer the query")
    semantic_min: float = Field(0.5, ge=0, le=1, description="least P(yes) the semantic judge must give")
    judge_engine: str | dict[str, Any] | None = Field(
        None, description="one engine for the semantic check (default: the stage's engine)")
    answer: bool = Field(True, description="write the final answer from the results")
    max_result_chars: int = Field(4000, ge=16, description="longest JSON result a call may return")
    limits: Limits = Field(default_factory=_tool_limits, description="sandbox limits per trace")
    workers: int = Field(2, ge=1, le=64, description="sandboxes running at once")
    sandbox: Literal["auto", "bwrap", "none"] = Field("auto", description="isolation backend")
    allow_unsandboxed: bool = Field(False, description="required with sandbox: none (tools run as you)")
    keep_failed: bool = Field(False, description="keep rejected traces (tool_check names the failure)")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)
    _schemas: list[dict[str, Any]] | None = PrivateAttr(None)
    _recipe_dir: Any = PrivateAttr(None)  # set by recipe validation: the tools file is parsed then

    @model_validator(mode="after")
    def _opt_in(self):
        if self.sandbox == "none" and not self.allow_unsandboxed:
            raise ValueError("sandbox: none runs the tools unisolated, with your user's rights; "
                             "set allow_unsandboxed: true to accept that (docs/verify-code.md)")
        return self

    # -- recipe checks

    def requires(self) -> set[str]:
        if self._recipe_dir is not None:  # a syntax error is a recipe error naming file and line
            from pathlib import Path

            from smolforge.recipe import BUILTIN_DIR

            p = Path(self.tools).expanduser()
            path = p if p.is_absolute() else self._recipe_dir / p
            if not path.exists() and (BUILTIN_DIR / p).exists():
                path = BUILTIN_DIR / p
            try:
                derive_schemas(path.read_text(), self.tools)
            except ToolFileError as e:
                raise TemplateError(str(e), field="tools") from None
            except OSError as e:
                raise TemplateError(f"{self.tools}: cannot read: {e.strerror}", field="tools") from None
        cols = {self.calls} if self.calls else set()
        cols |= {self.topic} if self.topic else {self.query}
        return cols | ({self.tool_subset} if self.tool_subset else set())

    def provides(self) -> set[str]:
        return {self.query, "messages", "tools", "calls", "tool_results", "answer", "tool_check",
                "semantic_score"}

    def source(self, ctx: StageContext) -> str:
        return load_template(ctx, self.tools)

    def schemas(self, ctx: StageContext) -> list[dict[str, Any]]:
        if self._schemas is None:
            try:
                self._schemas = derive_schemas(self.source(ctx), self.tools)
            except ToolFileError as e:
                raise TemplateError(str(e), field="tools") from None
        return self._schemas

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        needs_model = self.calls is None or self.semantic or self.answer
        return {"tools": self.source(ctx), "seed": self.base_seed(ctx),
                "engine": self.llm(ctx).identity() if needs_model else None,
                "judge": ctx.engine(self.judge_engine).identity() if self.semantic and self.judge_engine else None}

    # -- the trace

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        schemas = self.schemas(ctx)
        by_name = {s["function"]["name"]: s for s in schemas}
        counts: Counter[str] = Counter()
        live: list[dict[str, Any]] = []  # one state per record still in the running
        for rec in batch:
            offered = self._offered(rec, by_name)
            if isinstance(offered, str):
                res.reject(rec, f"tool_calls: {offered}")
                continue
            live.append({"rec": rec, "offered": offered, "query": rec.get(self.query)})
        if self.topic:
            self._write_queries(live, ctx, res)
        live = self._get_calls(live, ctx, res, counts)
        for st in live:  # FORMAT
            st["error"] = self.format_check(st["raw"], by_name, st["offered"])
            if st["error"] and st.get("truncated") and st["error"].startswith("not JSON"):
                st["error"] = f"truncated at max_tokens {self.max_tokens} before the JSON closed ({st['error']})"
        live = self._drop(live, "format", res, counts)
        self._execute(live, self.source(ctx))  # EXECUTION
        live = self._drop(live, "execution", res, counts)
        if self.semantic:  # SEMANTICS
            self._judge(live, ctx)
            live = self._drop(live, "semantics", res, counts)
        if self.answer:
            self._answer(live, ctx)
            live = self._drop(live, "answer", res, counts)
        for st in live:
            res.keep(self._record(st, "passed"))
        counts["passed"] = len(live)
        res.counts.update(dict(counts))
        return res

    def _offered(self, rec: Record, by_name: dict[str, dict]) -> list[dict] | str:
        if not self.tool_subset:
            return list(by_name.values())
        v = rec.get(self.tool_subset)
        names = [n.strip() for n in v.split(",")] if isinstance(v, str) else list(v or [])
        unknown = [n for n in names if n not in by_name]
        if unknown or not names:
            return f"column {self.tool_subset!r} names unknown tools {unknown} (known: {sorted(by_name)})"
        return [by_name[n] for n in names]

    def _drop(self, live: list[dict], check: str, res: Result, counts: Counter[str]) -> list[dict]:
        out = []
        for st in live:
            if st.get("error") is None:
                out.append(st)
                continue
            counts[f"failed_{check}"] += 1
            rec = self._record(st, f"{check}: {st['error']}")
            if self.keep_failed:
                res.keep(rec)
            else:
                res.reject(rec, f"tool_calls: {check}: {st['error']}")
        return out

    def _record(self, st: dict, check: str) -> Record:
        calls = st.get("calls") or []
        results = st.get("results") or []
        out = {**st["rec"], self.query: st.get("query"), "tools": json.dumps(st["offered"]),
               "calls": json.dumps(calls) if "calls" in st else st.get("raw"),
               "tool_results": json.dumps(results) if "results" in st else None,
               "answer": st.get("answer"), "tool_check": check, "semantic_score": st.get("p_yes")}
        out["messages"] = trace_messages(st.get("query") or "", calls, results, st.get("answer") or "") \
            if check == "passed" else None
        return out

    # -- model requests

    def _ask(self, ctx: StageContext, reqs: list[Request], engine_spec: EngineField = None) -> list[str | None]:
        if not reqs:
            return []
        engine = ctx.engine(engine_spec) if engine_spec is not None else self.llm(ctx)
        return [c.text if (c := first_completion(r)) is not None else None for r in ctx.generate(engine, reqs)]

    def _write_queries(self, live: list[dict], ctx: StageContext, res: Result) -> None:
        reqs = []
        for st in live:
            tools = "\n".join(f"- {s['function']['name']}: {s['function']['description']}" for s in st["offered"])
            prompt = (f"Write one question a user might ask about {st['rec'].get(self.topic)} that these tools "
                      f"can help answer:\n{tools}\nWrite only the question.")
            reqs.append(self.request(ctx, ("query", st["rec"]["id"]), messages=chat(prompt), max_tokens=80))
        for st, text in zip(live, self._ask(ctx, reqs)):
            st["query"] = (text or "").strip()

    def _get_calls(self, live: list[dict], ctx: StageContext, res: Result, counts: Counter[str]) -> list[dict]:
        if self.calls:
            for st in live:
                v = st["rec"].get(self.calls)
                st["raw"] = v if isinstance(v, str) else json.dumps(v)
            return live
        reqs = []
        for st in live:
            req = self.request(ctx, ("calls", st["rec"]["id"]), messages=calls_prompt(st["query"] or "", st["offered"]))
            if self.grammar != "none":
                req.json_schema = calls_schema(st["offered"], self.max_calls, self.grammar)
            reqs.append(req)
        for st, resp in zip(live, ctx.generate(self.llm(ctx), reqs) if reqs else []):
            comp = first_completion(resp)
            st["raw"] = comp.text if comp is not None else ""
            st["truncated"] = comp is not None and comp.finish_reason == "length"
        return live

    def _judge(self, live: list[dict], ctx: StageContext) -> None:
        from smolforge.stages.judges.judge import (
            CRITERIA_MAX_TOKENS,
            TOP_LOGPROBS,
            answer_yes_probability,
            parse_yes_no,
        )

        if not live:
            return
        reqs = []
        for st in live:
            req = self.request(ctx, ("judge", st["rec"]["id"]), messages=chat(semantic_prompt(
                st["query"] or "", st["calls"], st["results"])), max_tokens=CRITERIA_MAX_TOKENS, temperature=0.0)
            req.logprobs = TOP_LOGPROBS
            reqs.append(req)
        engine = ctx.engine(self.judge_engine) if self.judge_engine is not None else self.llm(ctx)
        for st, resp in zip(live, ctx.generate(engine, reqs)):
            comp = first_completion(resp)
            if comp is None:
                st["error"] = f"the judge gave no answer ({resp.error or 'empty'})"
                continue
            p = answer_yes_probability(comp.top_logprobs) if comp.top_logprobs else None
            p = parse_yes_no(comp.text) if p is None else p
            st["p_yes"] = p
            if p is None:
                st["error"] = f"the judge said neither yes nor no ({comp.text.strip()[:60]!r})"
            elif p < self.semantic_min:
                st["error"] = (f"the judge does not find that the results answer the query "
                               f"(P(yes) {p:.2f} < {self.semantic_min:g})")

    def _answer(self, live: list[dict], ctx: StageContext) -> None:
        reqs = [self.request(ctx, ("answer", st["rec"]["id"]), messages=chat(answer_prompt(
            st["query"] or "", st["calls"], st["results"]))) for st in live]
        for st, text in zip(live, self._ask(ctx, reqs)):
            st["answer"] = (text or "").strip()
            if not st["answer"]:
                st["error"] = "the model wrote no final answer"

    # -- checks

    def format_check(self, raw: str, by_name: dict[str, dict], offered: list[dict]) -> str | None:
        """APIGen's format check; None when it passes. Sets nothing: see `_calls_of`."""
        calls, err = parse_calls(raw, self.max_calls)
        if err:
            return err
        offered_names = {s["function"]["name"] for s in offered}
        for i, c in enumerate(calls):
            if c["name"] not in by_name:
                return f"$.calls[{i}].name: no tool named {c['name']!r} (known: {', '.join(sorted(by_name))})"
            if c["name"] not in offered_names:
                return f"$.calls[{i}].name: tool {c['name']!r} was not offered for this query"
            bad = argument_errors(c["arguments"], by_name[c["name"]], f"$.calls[{i}].arguments")
            if bad:
                return bad
        return None

    def _execute(self, live: list[dict], tools_source: str) -> None:
        for st in live:
            st["calls"], _ = parse_calls(st["raw"], self.max_calls)
            st["results"] = []
        todo = [st for st in live if st["calls"]]
        if not todo:
            return
        nonce = secrets.token_hex(8)
        jobs = [Job(code=tools_source, tests=runner_source(st["calls"], nonce, self.max_result_chars), style="pytest")
                for st in todo]
        with open_sandbox(self.sandbox, allow_unsandboxed=self.allow_unsandboxed, limits=self.limits,
                          workers=min(self.workers, len(jobs))) as sb:
            results = sb.run(jobs)
        for st, r in zip(todo, results):
            st["results"], st["error"] = read_results(r, st["calls"], nonce)


# ---------------------------------------------------------------- helpers (no model)


def calls_schema(offered: list[dict], max_calls: int, grammar: str = "shape") -> dict[str, Any]:
    """The grammar's JSON schema for the calls: `{"calls": [{"name", "arguments"}]}`;
    `names` fixes the names to the offered tools, `strict` each tool's arguments too."""
    name: dict[str, Any] = {"type": "string"}
    if grammar == "names":
        name["enum"] = [s["function"]["name"] for s in offered]
    item: dict[str, Any] = {"type": "object", "properties": {"name": name, "arguments": {"type": "object"}},
                            "required": ["name", "arguments"], "additionalProperties": False}
    if grammar == "strict":
        item = {"anyOf": [{"type": "object", "properties": {"name": {"const": s["function"]["name"]},
                                                             "arguments": s["function"]["parameters"]},
                           "required": ["name", "arguments"], "additionalProperties": False} for s in offered]}
    return {"type": "object", "properties": {"calls": {"type": "array", "items": item, "maxItems": max_calls}},
            "required": ["calls"], "additionalProperties": False}


def calls_prompt(query: str, offered: list[dict]) -> list[dict[str, str]]:
    system = ("You are an assistant that can call functions. The functions you may call:\n"
              + json.dumps([s["function"] for s in offered]) +
              '\nReply with JSON only: {"calls": [{"name": <function name>, "arguments": {<argument>: <value>}}]}: '
              "the calls that answer the user's request (several if it needs several), "
              'or {"calls": []} if no function applies.')
    return chat(query, system)


def _shown(calls: list[dict], results: list[Any]) -> str:
    if not calls:
        return "(no function was called)"
    return "\n".join(f"- {c['name']}({json.dumps(c['arguments'])}) returned {json.dumps(r)}"
                     for c, r in zip(calls, results))


def semantic_prompt(query: str, calls: list[dict], results: list[Any]) -> str:
    if not calls:
        return (f"A user asked: {query}\nNo function was called, as none of the available functions applies. "
                "Is that right: can the request be answered without calling a function? Answer yes or no.")
    return (f"A user asked: {query}\nThese function calls were made:\n{_shown(calls, results)}\n"
            "Do these results answer the user's request? Answer yes or no.")


def answer_prompt(query: str, calls: list[dict], results: list[Any]) -> str:
    if not calls:
        return query
    return (f"{query}\n\nResults of the function calls made for this request:\n{_shown(calls, results)}\n"
            "Answer the request using these results.")


def parse_calls(raw: Any, max_calls: int = 16) -> tuple[list[dict], str | None]:
    """The calls in a model's JSON answer (an object with `calls`, or a bare list),
    or the format error, naming the JSON path."""
    if not isinstance(raw, str):
        return [], f"the calls are {type(raw).__name__}, not JSON text"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        return [], f"not JSON: {e.msg} (line {e.lineno} column {e.colno}): {raw.strip()[:80]!r}"
    if isinstance(value, dict):
        if "calls" not in value:
            return [], "$: no `calls` key"
        value = value["calls"]
    if not isinstance(value, list):
        return [], f"$.calls: a {type(value).__name__}, not a list"
    if len(value) > max_calls:
        return [], f"$.calls: {len(value)} calls, more than max_calls {max_calls}"
    for i, c in enumerate(value):
        if not isinstance(c, dict):
            return [], f"$.calls[{i}]: a {type(c).__name__}, not an object"
        if not isinstance(c.get("name"), str):
            return [], f"$.calls[{i}].name: missing or not a string"
        args = c.get("arguments", {})
        if isinstance(args, str):  # OpenAI sends arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                return [], f"$.calls[{i}].arguments: not JSON: {e.msg}"
        if not isinstance(args, dict):
            return [], f"$.calls[{i}].arguments: a {type(args).__name__}, not an object"
        value[i] = {"name": c["name"], "arguments": args}
    return value, None


def argument_errors(args: dict, schema: dict, path: str) -> str | None:
    """jsonschema's verdict on one call's arguments; the errors name the JSON path."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    errors = list(Draft202012Validator(schema["function"]["parameters"]).iter_errors(args))
    if not errors:
        return None
    first = best_match(errors)
    where = path + first.json_path[1:]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.message} ({first.validator}){more}"


_RUNNER = '''\
import json as _json

_CALLS = _json.loads({calls!r})
_OUT = []
_NAMES = globals()


def _plain(v, depth=0):
    if depth > 50:
        raise TypeError("the result nests too deeply")
    if v is None or type(v) in (str, int, float, bool):
        return v
    if type(v) in (list, tuple):
        return [_plain(x, depth + 1) for x in v]
    if type(v) is dict and all(type(k) is str for k in v):
        return {{k: _plain(x, depth + 1) for k, x in v.items()}}
    raise TypeError("the result is not JSON: a " + type(v).__name__ + " value")


def _run(i):
    call = _CALLS[i]
    out = _plain(_NAMES[call["name"]](**call["arguments"]))
    text = _json.dumps(out, allow_nan=False)
    if len(text) > {limit}:
        raise ValueError("the result is " + str(len(text)) + " characters of JSON, more than {limit}")
    _OUT.append(out)
'''


def runner_source(calls: list[dict], nonce: str, max_chars: int) -> str:
    """The tests source that runs `calls` against the tools (the sandbox's solution
    module): one test per call, in order, then one that prints the results behind a
    per-run marker (the tools' own prints cannot forge it)."""
    src = _RUNNER.format(calls=json.dumps(calls), limit=max_chars)
    for i in range(len(calls)):
        src += f"\n\ndef test_call_{i}():\n    _run({i})\n"
    src += f"\n\ndef test_zz_results():\n    print({('@@' + nonce + '@@')!r} + _json.dumps(_OUT), flush=True)\n"
    return src


def read_results(r: RunResult, calls: list[dict], nonce: str) -> tuple[list[Any], str | None]:
    """(the calls' results, the execution error or None) from one sandbox run."""
    for t in r.tests:
        if not t.passed and t.name.startswith("test_call_"):
            k = int(t.name.rsplit("_", 1)[1])
            return [], f"call {k} {calls[k]['name']}: {t.error}"
    if r.reason != "passed":
        k = sum(t.name.startswith("test_call_") for t in r.tests)  # the call it stopped in
        at = f"call {k} {calls[k]['name']}: " if k < len(calls) else ""
        return [], at + r.summary()
    marker = "@@" + nonce + "@@"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(marker)]
    if not lines:
        return [], "the results were not read back (the tools' output buried them)"
    results = json.loads(lines[-1][len(marker):])
    if len(results) != len(calls):
        return [], f"{len(results)} results for {len(calls)} calls"
    return results, None


def trace_messages(query: str, calls: list[dict], results: list[Any], answer: str) -> list[dict[str, Any]]:
    """The trace as chat messages in the form transformers' chat templates and TRL's
    SFTTrainer take: the assistant's `tool_calls` ({id, type: function, function:
    {name, arguments}}), one `tool` message per result, then the answer. Arguments
    are a JSON string (OpenAI's wire form, which tool-capable templates accept), so
    that one Arrow type holds every tool's arguments."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": query}]
    if calls:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
            for i, c in enumerate(calls)]})
        msgs += [{"role": "tool", "tool_call_id": f"call_{i}", "name": c["name"], "content": json.dumps(r)}
                 for i, (c, r) in enumerate(zip(calls, results))]
    if answer:  # no trailing empty turn when the answer was not asked for (answer: false)
        msgs.append({"role": "assistant", "content": answer})
    return msgs


__all__ = ["CHECKS", "ToolCalls", "argument_errors", "calls_schema", "parse_calls", "read_results",
           "runner_source", "trace_messages"]
