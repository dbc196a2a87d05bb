"""A small, safe expression language for `filter` conditions.

`edu_score >= 3 and words(text) >= 120` is parsed with Python's `ast` and compiled
to closures over a whitelist: names are record columns, calls only to the helpers
below, no attribute access, no subscripts of arbitrary objects, no imports,
comprehensions or lambdas. Nothing is ever passed to `eval`.

`matches()` uses RE2 (google-re2), which runs in time linear in the text, so a
pattern such as `(a+)+$` cannot hang a run on a long line (Python's `re`
backtracks exponentially there). RE2 has no lookaround or backreferences; such a
pattern is an error when the recipe is loaded. Its `\\w`, `\\d`, `\\b` are ASCII.
An expression nested more than MAX_DEPTH levels is refused when it is parsed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import re2

from smolforge.registry import closest
from smolforge.text import words as _words

MAX_DEPTH = 100  # nesting of the parsed expression; real filters use under 10
MAX_REPEAT = 10_000_000  # longest string or list that `*` may build


class ExprError(ValueError):
    pass


def _regex(text: Any, pattern: Any) -> bool:
    return compile_regex(str(pattern)).search(str(text or "")) is not None


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is raised (and reported) instead


@lru_cache(maxsize=256)
def compile_regex(pattern: str, user: str = "matches() uses") -> Any:
    """An RE2 pattern; ExprError names what RE2 does not support. Every regex that
    comes from a recipe or from data (filters, IFEval keywords, a JSON schema's
    `pattern`) goes through here: RE2 runs in time linear in the text. `user` names
    who uses it, for the error."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ExprError(
            f"regex {pattern!r} is not supported: {why} ({user} RE2: no lookaround "
            "or backreferences)"
        ) from None


def _mul(a: Any, b: Any) -> Any:
    """`*`, refusing to build a huge string or list (`text * 10**12`)."""
    for seq, k in ((a, b), (b, a)):
        if isinstance(seq, (str, list)) and isinstance(k, int) and len(seq) * k > MAX_REPEAT:
            raise ValueError(f"repetition too large ({len(seq)} x {k})")
    return operator.mul(a, b)


HELPERS: dict[str, Callable[..., Any]] = {
    "words": lambda s: len(_words(str(s or ""))),
    "chars": lambda s: len(str(s or "")),
    "lines": lambda s: len(str(s or "").splitlines()),
    "len": len,
    "lower": lambda s: str(s or "").lower(),
    "upper": lambda s: str(s or "").upper(),
    "strip": lambda s: str(s or "").strip(),
    "contains": lambda s, sub: str(sub) in str(s or ""),
    "startswith": lambda s, p: str(s or "").startswith(p),
    "endswith": lambda s, p: str(s or "").endswith(p),
    "matches": _regex,
    "is_null": lambda v: v is None,
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
    "str": str,
}

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}

Fn = Callable[[dict], Any]


class Expression:
    """A compiled condition; `names` are the columns it reads."""

    def __init__(self, source: str):
        self.source = source
        self.names: set[str] = set()
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as e:
            raise ExprError(f"invalid expression {_clip(source)!r}: {e.msg}") from None
        except (MemoryError, RecursionError):  # CPython's parser gives up on deep nesting
            raise ExprError(f"expression {_clip(source)!r} is nested too deeply") from None
        _check_depth(tree.body, source)
        self._fn = self._compile(tree.body)

    def __call__(self, record: dict) -> Any:
        return self._fn(record)

    def _compile(self, node: ast.AST) -> Fn:
        c = self._compile
        if isinstance(node, ast.Constant):
            v = node.value
            return lambda r: v
        if isinstance(node, ast.Name):
            if node.id in ("true", "false", "null", "none"):
                v = {"true": True, "false": False}.get(node.id)
                return lambda r: v
            name = node.id
            self.names.add(name)
            return lambda r: r.get(name)
        if isinstance(node, ast.BoolOp):
            parts = [c(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda r: all(p(r) for p in parts)
            return lambda r: any(p(r) for p in parts)
        if isinstance(node, ast.UnaryOp):
            x = c(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda r: not x(r)
            if isinstance(node.op, ast.USub):
                return lambda r: -x(r)
            if isinstance(node.op, ast.UAdd):
                return x
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            op, a, b = _BIN[type(node.op)], c(node.left), c(node.right)
            return lambda r: op(a(r), b(r))
        if isinstance(node, ast.Compare):
            left = c(node.left)
            ops = [_CMP[type(o)] for o in node.ops if type(o) in _CMP]
            if len(ops) != len(node.ops):
                raise ExprError(f"{self.source!r}: unsupported comparison (use ==, !=, <, <=, >, >=, in)")
            rights = [c(x) for x in node.comparators]

            def compare(r: dict) -> bool:
                a = left(r)
                for op, rf in zip(ops, rights):
                    b = rf(r)
                    if (a is None or b is None) and op not in (operator.eq, operator.ne):
                        return False
                    if not op(a, b):
                        return False
                    a = b
                return True

            return compare
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "matches" and len(node.args) == 2:
                pattern = node.args[1]
                if isinstance(pattern, ast.Constant) and isinstance(pattern.value, str):
                    compile_regex(pattern.value)  # a bad literal pattern fails at load time
            if not isinstance(node.func, ast.Name) or node.func.id not in HELPERS:
                fname = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                hint = closest(fname, list(HELPERS))
                raise ExprError(
                    f"{self.source!r}: {fname}() is not an allowed function"
                    + (f" (did you mean {hint}()?)" if hint else f" (allowed: {', '.join(HELPERS)})")
                )
            if node.keywords:
                raise ExprError(f"{self.source!r}: keyword arguments are not supported")
            fn, args = HELPERS[node.func.id], [c(a) for a in node.args]
            return lambda r: fn(*(a(r) for a in args))
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [c(e) for e in node.elts]
            return lambda r: [i(r) for i in items]
        if isinstance(node, ast.IfExp):
            t, body, other = c(node.test), c(node.body), c(node.orelse)
            return lambda r: body(r) if t(r) else other(r)
        what = {ast.Attribute: "attribute access", ast.Subscript: "subscripts", ast.Lambda: "lambdas"}.get(
            type(node), type(node).__name__
        )
        raise ExprError(f"{self.source!r}: {what} not allowed in expressions")


def _check_depth(root: ast.AST, source: str) -> None:
    """Refuse deeper than MAX_DEPTH before compiling (which recurses once per level)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExprError(f"expression {_clip(source)!r} is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _clip(source: str) -> str:
    return source if len(source) <= 80 else source[:77] + "..."
