"""A small, safe expression language for `filter` conditions.

`edu_score >= 3 and words(text) >= 120` is parsed with Python's `ast` and compiled
to closures over a whitelist: names are record columns, calls only to the helpers
below, no attribute access, no subscripts of arbitrary objects, no imports,
comprehensions or lambdas. Nothing is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from smolforge.registry import closest
from smolforge.text import words as _words


class ExprError(ValueError):
    pass


def _regex(text: Any, pattern: str) -> bool:
    return _compiled(pattern).search(str(text or "")) is not None


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


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
    ast.Mult: operator.mul,
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
            raise ExprError(f"invalid expression {source!r}: {e.msg}") from None
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
