"""Tools as data: JSON schemas derived from a Python file of typed, documented functions.

The file is parsed (`ast`), never imported into smolforge's process: it runs only in
the code sandbox (`smolforge.stages.synth.tool_calls`). Every public top-level
function is a tool; its schema has the shape `transformers.utils.get_json_schema`
gives and chat templates take (`{"type": "function", "function": {"name",
"description", "parameters"}}`), built from the signature's annotations and a
Google-style docstring (first paragraph: the description; `Args:` lines: the
parameters' descriptions). A leaf module: it imports nothing from smolforge.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_SIMPLE = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
           "list": "array", "dict": "object", "Any": None}
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class ToolFileError(ValueError):
    """A tools file that cannot be used; the message names the file and line."""


def derive_schemas(source: str, filename: str = "tools.py") -> list[dict[str, Any]]:
    """The tools' schemas, in file order. A syntax error, a tool without a
    docstring, a parameter without a type hint or with an unsupported one is a
    ToolFileError naming `filename` and the line."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as e:
        raise ToolFileError(f"{filename}:{e.lineno}: syntax error: {e.msg}") from None
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out.append(_schema(node, filename))
    if not out:
        raise ToolFileError(f"{filename}: no tools (public top-level functions) found")
    return out


def _schema(fn: ast.FunctionDef, filename: str) -> dict[str, Any]:
    where = f"{filename}:{fn.lineno}: tool {fn.name!r}"
    doc = ast.get_docstring(fn)
    if not doc:
        raise ToolFileError(f"{where} has no docstring (its description for the model)")
    description, arg_docs = _parse_doc(doc)
    args = fn.args
    if args.vararg or args.kwarg or args.posonlyargs:
        raise ToolFileError(f"{where}: *args, **kwargs and positional-only parameters cannot be called by name")
    params = args.args + args.kwonlyargs
    n_plain_defaults = len(args.defaults)
    has_default = {a.arg for a in args.args[len(args.args) - n_plain_defaults:]} if n_plain_defaults else set()
    has_default |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None}
    props: dict[str, Any] = {}
    for a in params:
        if a.annotation is None:
            raise ToolFileError(f"{filename}:{a.lineno}: parameter {a.arg!r} of {fn.name!r} has no type hint")
        try:
            prop = _type(a.annotation)
        except ValueError as e:
            raise ToolFileError(f"{filename}:{a.lineno}: parameter {a.arg!r} of {fn.name!r}: {e}") from None
        if a.arg in arg_docs:
            prop["description"] = arg_docs[a.arg]
        props[a.arg] = prop
    required = [a.arg for a in params if a.arg not in has_default]
    parameters: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        parameters["required"] = required
    return {"type": "function", "function": {"name": fn.name, "description": description,
                                             "parameters": parameters}}


def _parse_doc(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style docstring."""
    lines = doc.splitlines()
    desc: list[str] = []
    args: dict[str, str] = {}
    section, current = None, None
    for line in lines:
        stripped = line.strip()
        if stripped.rstrip(":") in ("Args", "Arguments", "Parameters", "Returns", "Raises", "Example", "Examples") \
                and stripped.endswith(":"):
            section = stripped.rstrip(":")
            continue
        if section is None:
            desc.append(stripped)
        elif section in ("Args", "Arguments", "Parameters") and stripped:
            m = _ARG_LINE.match(line)
            if m and (len(line) - len(line.lstrip())) <= _indent_of_args(lines):
                current = m.group(1).lstrip("*")
                args[current] = m.group(2).strip()
            elif current:
                args[current] = (args[current] + " " + stripped).strip()
    text = " ".join(" ".join(desc).split())
    return text, args


def _indent_of_args(lines: list[str]) -> int:
    """The indent of the first line after `Args:` (parameter lines have it)."""
    for i, line in enumerate(lines):
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            for nxt in lines[i + 1:]:
                if nxt.strip():
                    return len(nxt) - len(nxt.lstrip())
    return 0


def _type(node: ast.expr) -> dict[str, Any]:
    """A JSON schema for an annotation (a subset of typing: builtins, list[X],
    dict[str, X], Literal[...], X | None, Optional[X])."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return _type(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.Name):
        if node.id not in _SIMPLE:
            raise ValueError(f"unsupported type hint {node.id!r} (use str, int, float, bool, list, dict, Literal)")
        t = _SIMPLE[node.id]
        return {"type": t} if t else {}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right])
    if isinstance(node, ast.Subscript):
        base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
        inner = node.slice
        elems = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        if base in ("list", "List"):
            return {"type": "array", "items": _type(elems[0])}
        if base in ("dict", "Dict"):
            return {"type": "object", "additionalProperties": _type(elems[-1])}
        if base == "Optional":
            return _union([elems[0], ast.Constant(None)])
        if base == "Union":
            return _union(elems)
        if base == "Literal":
            values = [e.value for e in elems if isinstance(e, ast.Constant)]
            if len(values) != len(elems):
                raise ValueError("Literal takes constants only")
            kinds = {type(v) for v in values}
            out: dict[str, Any] = {"enum": values}
            if len(kinds) == 1:
                out["type"] = _SIMPLE.get(next(iter(kinds)).__name__)
            return out
    raise ValueError(f"unsupported type hint {ast.unparse(node)!r}")


def _union(parts: list[ast.expr]) -> dict[str, Any]:
    flat: list[ast.expr] = []
    for p in parts:
        if isinstance(p, ast.BinOp) and isinstance(p.op, ast.BitOr):
            flat += [p.left, p.right]
        else:
            flat.append(p)
    schemas = [_type(p) for p in flat]
    types = [s.get("type") for s in schemas]
    if all(isinstance(t, str) and len(s) == 1 for s, t in zip(schemas, types)):
        return {"type": types}
    return {"anyOf": schemas}
