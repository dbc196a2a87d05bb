"""Prompt templates: Jinja in a sandbox, where record values are data, never code.

Values are passed as variables, so a record whose text contains `{{ ... }}` is
printed literally; the sandbox also blocks attribute tricks in the template itself.

A template is also bounded work (recipes, rubrics and chat templates may come from
someone else): every render has a time limit (RENDER_SECONDS) and an output limit,
and no string, list or number it builds may outgrow MAX_SIZE characters (`'a' * 10**10`,
`x ~ x` doubled in a loop, `'%0999999999d'`, `'x'|center(10**10)`, `2 ** 10**9`)
or MAX_INT_BITS bits. A render that would is stopped with a TemplateLimitError
that says which limit, before the memory is taken. `range` is Jinja's sandboxed one
(at most 100,000 items); loops, calls and attribute lookups check the clock, so
nested loops or recursive macros stop at the time limit.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

MAX_SIZE = 10_000_000  # characters (or items) of any string, list or output a render builds
MAX_INT_BITS = 100_000  # the largest integer `*` or `**` may build (~30,000 digits)
RENDER_SECONDS = 10.0  # wall-clock time of one render

_deadline: ContextVar[float | None] = ContextVar("smolforge_template_deadline", default=None)


class TemplateError(ValueError):
    """A prompt file that cannot be read or parsed; `field` is the stage field that
    named it, for the recipe error's YAML path."""

    def __init__(self, message: str, field: str = "template_file"):
        super().__init__(message)
        self.field = field


class TemplateLimitError(TemplateError):
    """A render went past a limit on time or size (a hostile or runaway template)."""


def _tick() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimitError(f"template render took longer than {RENDER_SECONDS:g} s (time limit)")


def _size(n: int, what: str) -> None:
    if n > MAX_SIZE:
        raise TemplateLimitError(f"{what} would be {n:,} characters or items; the limit is {MAX_SIZE:,}")


def _weight(value: Any) -> int:
    """About how many characters `value` prints as (`str()` of a list prints every
    element, a shared one each time it appears), counted only up to just past MAX_SIZE."""
    total, stack = 0, [value]
    while stack and total <= MAX_SIZE:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + len(v)
            if len(v) <= MAX_SIZE:
                stack.extend(v)
        elif isinstance(v, dict):
            total += 2 + 2 * len(v)
            if len(v) <= MAX_SIZE:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        else:
            total += 1
    return total


def _int_bits(n: int, what: str) -> None:
    if n > MAX_INT_BITS:
        raise TemplateLimitError(f"{what} would be a {n:,}-bit integer; the limit is {MAX_INT_BITS:,} bits")


def _check_mul(a: Any, b: Any) -> None:
    for seq, k in ((a, b), (b, a)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(k, int):
            _size(_weight(seq) * k, "repetition")
    if isinstance(a, int) and isinstance(b, int):
        _int_bits(a.bit_length() + b.bit_length(), "multiplication")


def _check_pow(a: Any, b: Any) -> None:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        _int_bits(a.bit_length() * b, "power")


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _args_weight(args: Any) -> int:
    if isinstance(args, dict):
        return _weight(list(args.values()))
    return _weight(args)


def _check_printf(fmt: str, args: Any) -> None:
    """`fmt % args`: the widths and precisions it pads to, plus what it prints."""
    pad = 0
    for m in _PRINTF.finditer(fmt):
        for g in m.groups():
            if g == "*":  # the width comes from the arguments
                pad += sum(a for a in (args if isinstance(args, tuple) else (args,)) if isinstance(a, int))
            elif g:
                pad += int(g) if len(g) < 10 else MAX_SIZE + 1
    _size(len(fmt) + pad + _args_weight(args), "formatted string")


def _check_format(fmt: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """`fmt.format(...)`: the widths in its field specs, plus what it prints."""
    pad = sum(int(d) if len(d) < 10 else MAX_SIZE + 1 for d in re.findall(r"\d+", fmt))
    if re.search(r"\{[^{}]*:[^{}]*\{", fmt):  # a width from the arguments
        pad += sum(a for a in [*args, *kwargs.values()] if isinstance(a, int) and not isinstance(a, bool))
    _size(len(fmt) + pad + _weight(list(args)) + _weight(kwargs), "formatted string")


def _replace_size(s: str, old: str, new: str, count: int | None = None) -> int:
    hits = len(s) + 1 if not old else s.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * len(new)


def _check_str_method(owner: str | bytes, name: str, args: tuple, kwargs: dict[str, Any]) -> None:
    """Size checks for the string methods that can build a much larger string."""
    arg = args[0] if args else None
    if name in ("format", "format_map") and isinstance(owner, str):
        _check_format(owner, args if name == "format" else (), kwargs if name == "format" else
                      (arg if isinstance(arg, dict) else {}))
    elif name in ("ljust", "rjust", "center", "zfill") and isinstance(arg, int):
        _size(arg, f"{name}()")
    elif name == "expandtabs":
        tab = arg if isinstance(arg, int) else kwargs.get("tabsize", 8)
        _size(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * max(tab, 0), "expandtabs()")
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        if isinstance(owner, str) and isinstance(args[0], str) and isinstance(args[1], str):
            _size(_replace_size(owner, args[0], args[1], count), "replace()")
    elif name == "join" and isinstance(arg, list | tuple):
        _size(_weight(arg) + len(owner) * len(arg), "join()")
    elif name == "translate" and isinstance(arg, dict):
        longest = max((_weight(v) for v in arg.values()), default=1)
        _size(len(owner) * max(longest, 1), "translate()")


def _guarded_filter(name: str, check: Callable[[dict[str, Any]], None]) -> Callable[..., Any]:
    """Jinja's filter `name`, refusing (with `check`, over its bound arguments) to
    build a result past the limits."""
    original = FILTERS[name]
    signature = inspect.signature(original)
    # Jinja's async-capable filters take an eval context first that their
    # signature (the plain function's) does not show.
    hidden = int(_PassArg.from_obj(original) is not None
                 and next(iter(signature.parameters)) not in ("eval_ctx", "environment", "context"))

    @functools.wraps(original)  # keeps Jinja's pass_context / pass_environment mark
    def filter_(*args: Any, **kwargs: Any) -> Any:
        _tick()
        bound = signature.bind(*args[hidden:], **kwargs)
        bound.apply_defaults()
        check(bound.arguments)
        return original(*args, **kwargs)

    return filter_


def _lines(s: Any) -> int:
    return str(s).count("\n") + 1


def _indent_check(a: dict[str, Any]) -> None:
    width = a["width"]
    w = width if isinstance(width, int) else len(str(width))
    _size(len(str(a["s"])) + max(w, 0) * _lines(a["s"]), "indent")


def _wordwrap_check(a: dict[str, Any]) -> None:
    s, width, wrap = str(a["s"]), a["width"], a["wrapstring"]
    if isinstance(width, int) and width > 0 and isinstance(wrap, str):
        _size(len(s) + len(wrap) * (len(s) // width + 1), "wordwrap")


def check_printable(value: Any, what: str, factor: int = 1) -> None:
    """TemplateLimitError if printing `value` (`factor` times as long, for indented
    JSON) would pass MAX_SIZE: for helpers a template calls that print values."""
    _size(_weight(value) * factor, what)


def _tojson_check(a: dict[str, Any]) -> None:
    indent = a["indent"]
    check_printable(a["value"], "tojson", 1 + (indent if isinstance(indent, int) and indent > 0 else 0))


_FILTER_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "center": lambda a: _size(a["width"], "center") if isinstance(a["width"], int) else None,
    "indent": _indent_check,
    "format": lambda a: _check_printf(str(a["value"]), a["kwargs"] or tuple(a["args"])),
    "batch": lambda a: _size(a["linecount"], "batch") if a["fill_with"] is not None else None,
    "slice": lambda a: _size(a["slices"], "slice") if isinstance(a["slices"], int) else None,
    "replace": lambda a: _size(_replace_size(str(a["s"]), str(a["old"]), str(a["new"]), a["count"]), "replace"),
    "wordwrap": _wordwrap_check,
    "tojson": _tojson_check,
    "string": lambda a: _size(_weight(a["value"]), "string"),
    "pprint": lambda a: _size(_weight(a["value"]) * 2, "pprint"),
}


def _join_filter() -> Callable[..., Any]:
    original = FILTERS["join"]

    @functools.wraps(original)
    def join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
        _tick()
        items = list(value)
        _size(_weight(items) + len(str(d)) * len(items), "join")
        return original(eval_ctx, items, d, attribute)

    return join


def _sum_filter() -> Callable[..., Any]:
    original = FILTERS["sum"]

    @functools.wraps(original)
    def sum_(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
        items = list(iterable)
        if attribute is not None:
            items = list(map(make_attrgetter(environment, attribute), items))
        if all(isinstance(x, int | float) for x in items) and isinstance(start, int | float):
            return original(environment, items, None, start)
        total = start  # lists or strings: one step at a time, each checked
        for x in items:
            _tick()
            _size(_weight(total) + _weight(x), "sum")
            total = total + x
        return total

    return sum_


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the two places a template builds or loops
    without calling the environment routed through it: `~` and `for`. (The
    buffers of macros and blocks are joined by `environment.concat`.)"""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        bounded = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None,
                             lineno=node.lineno)
        loop = nodes.For(node.target, bounded, node.body, node.else_, node.test, node.recursive,
                         lineno=node.lineno)
        loop.set_environment(self.environment)
        super().visit_For(loop, frame)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with limits on time and size (see the module's
    docstring). Limits apply inside `render()`, which sets the time limit."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.globals.pop("lipsum", None)  # lipsum(n=10**9): unbounded text
        for name, check in _FILTER_CHECKS.items():
            self.filters[name] = _guarded_filter(name, check)
        self.filters["join"] = _join_filter()
        self.filters["sum"] = _sum_filter()

    @staticmethod
    def _finalize(value: Any) -> Any:
        if not isinstance(value, str):
            _size(_weight(value), "printed value")
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            _check_mul(left, right)
        elif operator == "**":
            _check_pow(left, right)
        elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _size(_weight(left) + _weight(right), "concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str | bytes):
            _check_str_method(owner, getattr(target, "__name__", ""), args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """What a `for` loop iterates: the clock is checked at every item."""
        for item in iterable:
            _tick()
            yield item

    def bounded_concat(self, context: Any, parts: tuple[Any, ...]) -> str:
        """`a ~ b`: refused past MAX_SIZE before the string is built."""
        _tick()
        _size(sum(_weight(p) for p in parts), "concatenation (~)")
        return (markup_join if context.eval_ctx.autoescape else str_join)(parts)

    @staticmethod
    def concat(parts: Iterable[Any]) -> str:
        """A macro's, `set` block's or filter block's output, joined."""
        _tick()
        parts = list(parts)
        _size(sum(len(p) if isinstance(p, str) else _weight(p) for p in parts), "block output")
        return "".join(parts)


_env = BoundedSandbox(undefined=StrictUndefined, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)


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
            from smolforge.errors import RecipeError
            from smolforge.paths import PathNotAllowed, check_inside

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
    except (RecursionError, MemoryError, SyntaxError) as e:  # `((((...` thousands deep
        raise TemplateError(f"template nested too deeply to compile ({type(e).__name__})") from None


@lru_cache(maxsize=128)
def variables(source: str) -> frozenset[str]:
    """Names a template reads (the columns it needs)."""
    try:
        return frozenset(meta.find_undeclared_variables(_env.parse(source)))
    except TemplateSyntaxError as e:
        raise TemplateError(f"template line {e.lineno}: {e.message}") from None
    except RecursionError:
        raise TemplateError("template nested too deeply to parse") from None


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
    """`source` rendered with `record`'s columns, within RENDER_SECONDS and MAX_SIZE
    (TemplateLimitError past them)."""
    return render_bounded(compile_template(source), record).strip()


def render_bounded(template: Any, variables: dict[str, Any]) -> str:
    """A template of a BoundedSandbox rendered under the time and output limits."""
    token = _deadline.set(time.monotonic() + RENDER_SECONDS)
    try:
        parts, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            _size(size, "template output")
            _tick()
            parts.append(chunk)
        return "".join(parts)
    finally:
        _deadline.reset(token)


def template_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]
