"""Every stage type with its fields and one-line doc, from the stage models
themselves: `smolforge stages` prints it and docs/stages.md is generated from it
(`make lint` fails when the page and the models disagree), so the reference cannot
drift from the code, as `llm`'s plugin docs are regenerated and checked."""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from smolforge.paths import path_role
from smolforge.registry import stages

COMMON = {"type", "name"}  # every stage has them; the page says so once
# The families in pipeline order (docs/architecture.md); plugins come after.
PIPELINE = ("sources", "shape", "synth", "judges", "quality", "curate", "verify", "preferences", "assemble")


def family(cls: type) -> str:
    """The stage's folder under `smolforge/stages/` (its place in the pipeline), or
    the plugin module it comes from."""
    parts = cls.__module__.split(".")
    return parts[2] if parts[:2] == ["smolforge", "stages"] and len(parts) > 3 else cls.__module__


def _type_name(annotation: Any) -> str:
    text = re.sub(r"typing\.|<class '([^']+)'>", lambda m: m.group(1) or "", str(annotation))
    text = re.sub(r"\b[\w.]+\.(\w+)", r"\1", text)  # module paths off: smolforge.x.Benchmark -> Benchmark
    return text.replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    return repr(value) if not isinstance(value, BaseModel) else type(value).__name__


def first_line(doc: str | None) -> str:
    """A docstring's first sentence-paragraph, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _short(doc: str, width: int = 90) -> str:
    return doc if len(doc) <= width else doc[: width - 1].rsplit(" ", 1)[0] + " …"


def reference() -> list[dict[str, Any]]:
    """One entry per registered stage type, in name order."""
    out = []
    for name in stages.names():
        cls = stages.get(name)
        fields = []
        for fname, f in cls.model_fields.items():
            if fname in COMMON:
                continue
            role = path_role(cls, fname)
            annotation = typing.get_args(f.annotation)[0] if role and typing.get_args(f.annotation) else f.annotation
            fields.append({"name": fname, "type": _type_name(annotation), "default": _default(f),
                           "files": role, "doc": " ".join((f.description or "").split())})
        out.append({"type": name, "family": family(cls), "class": f"{cls.__module__}.{cls.__qualname__}",
                    "doc": first_line(cls.__doc__), "fields": fields})
    return out


def markdown() -> str:
    """docs/stages.md."""
    lines = ["# Stage reference", "",
             "Generated from the stage models by `smolforge stages --markdown > docs/stages.md`;",
             "`make lint` checks it is current. Every stage also takes `type` (the name below) and",
             "`name` (its name in reports and the run directory; default: the type). A field marked",
             "*file*, *glob*, *values* or *run* names files: the recipe's path policy",
             "([recipes-safety.md](recipes-safety.md)) applies to it and the stage re-runs when the",
             "file changes. How to add a stage: [writing-a-stage.md](writing-a-stage.md).", ""]
    by_family: dict[str, list[dict[str, Any]]] = {f: [] for f in PIPELINE}
    for st in reference():
        by_family.setdefault(st["family"], []).append(st)
    lines += ["| family | stages |", "|---|---|"]
    by_family = {f: sts for f, sts in by_family.items() if sts}
    for fam, sts in by_family.items():
        links = ", ".join("[`{0}`](#{0})".format(s["type"]) for s in sts)
        lines.append(f"| `{fam}` | {links} |")
    for fam, sts in by_family.items():
        lines += ["", f"## {fam}"]
        for st in sts:
            lines += ["", f"### {st['type']}", "", st["doc"] or "(no docstring)", "", f"`{st['class']}`", ""]
            if not st["fields"]:
                lines.append("No fields besides `type` and `name`.")
                continue
            lines += ["| field | type | default | |", "|---|---|---|---|"]
            for f in st["fields"]:
                kind = f" *{f['files']}*" if f["files"] else ""
                cells = [f"`{f['name']}`", f"`{f['type']}`{kind}",
                         "required" if f["default"] == "required" else f"`{f['default']}`", f["doc"]]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def text(only: str | None = None) -> str:
    """The terminal listing: every type with its one-line doc, or one type's fields."""
    ref = reference()
    if only is None:
        width = max(len(s["type"]) for s in ref)
        return "\n".join(f"{s['type']:<{width}}  {s['family']:<12} {_short(s['doc'])}" for s in ref)
    st = next((s for s in ref if s["type"] == only), None)
    if st is None:
        stages.get(only)  # raises UnknownName with the closest name
    lines = [f"{st['type']} ({st['family']}): {st['doc']}"]
    for f in st["fields"]:
        kind = f" [{f['files']}]" if f["files"] else ""
        lines.append(f"  {f['name']}: {f['type']}{kind} = {f['default']}  {f['doc']}")
    return "\n".join(lines)
