"""`smolforge show`: what a run did, from its manifest, data and rejects."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from smolforge.stages.base import is_engine_error
from smolforge.store import data_files

_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")
_ID = re.compile(r"\b\w+-\d{6}(?:\.\d+)*\b")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def reason_group(reason: str) -> str:
    """Collapse the record-specific parts of a reason (raw answers, trailing
    details, ids and numbers outside quotes) so that drops group by rule."""
    head = reason.split(": '", 1)[0].split(': "', 1)[0]
    head = _PAREN.sub("", head)
    parts = _QUOTED.split(head)
    return "".join(
        p if i % 2 else _NUM.sub("<n>", _ID.sub("<id>", p)) for i, p in enumerate(parts)
    ).strip()


def summarize(run_dir: str | Path, samples: int = 3) -> dict[str, Any]:
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out: dict[str, Any] = {
        "run": str(run_dir),
        "recipe": manifest.get("recipe"),
        "status": manifest.get("status"),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "attempts": len(manifest.get("attempts", [])),
        "stages": manifest.get("stages", []),
        "data": manifest.get("data", {}),
        "engine_failures": manifest.get("engine_failures", {"requests": 0, "records": 0}),
        "engines": [
            {k: e.get(k) for k in ("type", "model", "base_url") if e.get(k) is not None}
            for e in manifest.get("engines", [])
        ],
    }
    stages = out["stages"]
    out["completion_tokens"] = sum(s.get("completion_tokens", 0) for s in stages)
    llm_secs = sum(s.get("seconds", 0) for s in stages if s.get("completion_tokens"))
    out["tokens_per_s"] = round(out["completion_tokens"] / llm_secs, 1) if llm_secs else None
    rej_path = run_dir / "rejects" / "rejects.parquet"
    groups: Counter = Counter()
    leaks: Counter = Counter()
    examples: dict[tuple, str] = {}
    if rej_path.exists():
        batches = pq.ParquetFile(rej_path).iter_batches(batch_size=65536, columns=["stage", "reason"])
        for r in (r for b in batches for r in b.to_pylist()):
            if r["reason"].startswith("contaminated: "):
                # one group per benchmark, whatever the item ids look like
                bench = r["reason"][len("contaminated: "):].split(" item ", 1)[0]
                key = (r["stage"], f"contaminated: {bench}")
                leaks[bench] += 1
            else:
                key = (r["stage"], reason_group(r["reason"]))
            groups[key] += 1
            examples.setdefault(key, r["reason"])
    out["contamination"] = dict(leaks)
    # Engine failures are not quality drops: a re-run retries them.
    out["rejects"] = [
        {"stage": s, "reason": g, "count": n, "example": examples[(s, g)][:300],
         "kind": "engine" if is_engine_error(examples[(s, g)]) else "quality"}
        for (s, g), n in groups.most_common()
    ]
    out["quality_rejects"] = sum(g["count"] for g in out["rejects"] if g["kind"] == "quality")
    out["samples"] = []
    knobs: dict[str, Counter] = {}
    first_words: Counter = Counter()
    has_meta = has_text = False
    for path in data_files(run_dir):  # batch by batch: memory stays bounded for big runs
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if len(out["samples"]) < samples and pf.metadata.num_rows:
            rows = next(pf.iter_batches(batch_size=samples - len(out["samples"]))).to_pylist()
            for r in rows:
                r.pop("meta", None)
            out["samples"] += rows
        cols = [c for c in ("meta", "text") if c in names]
        has_meta, has_text = has_meta or "meta" in cols, has_text or "text" in cols
        for batch in pf.iter_batches(batch_size=65536, columns=cols) if cols else ():
            if "meta" in cols:
                count_knobs(batch.column("meta").to_pylist(), knobs)
            if "text" in cols:
                first_words.update(" ".join(str(t or "").split()[:5])
                                   for t in batch.column("text").to_pylist())
    if has_meta:
        out["knobs"] = {k: c.most_common(10) for k, c in knobs.items()}
    if has_text:
        out["first_words"] = first_words.most_common(5)
    return out


def count_knobs(metas: list[str | None], counts: dict[str, Counter]) -> None:
    """Add each knob value (`meta.knobs`: audience, style, persona, round ...) to `counts`."""
    for m in metas:
        for k, v in (json.loads(m) if m else {}).get("knobs", {}).items():
            counts.setdefault(k, Counter())[v] += 1


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]{summary['recipe']}[/bold]  {summary['run']}  status={summary['status']}"
                  f"  attempts={summary['attempts']}")
    t = Table(title="stages", show_lines=False)
    for col in ("stage", "type", "in", "out", "rejected", "seconds", "tokens", "tok/s", "cached"):
        t.add_column(col, justify="left" if col in ("stage", "type") else "right")
    for s in summary["stages"]:
        t.add_row(
            s["name"], s["type"], str(s.get("in", "")), str(s.get("out", "")), str(s.get("rejected", "")),
            f"{s.get('seconds', 0):.1f}", str(s.get("completion_tokens", 0) or ""),
            str(s.get("tokens_per_s", "") or ""), str(s.get("cache_hits", 0) or ""),
        )
    console.print(t)
    if summary["rejects"]:
        r = Table(title="rejects by reason")
        for col in ("stage", "reason", "count", "example"):
            r.add_column(col, overflow="fold")
        for g in summary["rejects"][:20]:
            r.add_row(g["stage"], g["reason"], str(g["count"]), g["example"][:120])
        console.print(r)
    fails = summary.get("engine_failures") or {}
    if fails.get("records"):
        console.print(f"[red]engine failures: {fails['records']} record(s) "
                      f"({fails['requests']} request(s)), not final: re-run to retry[/red]")
    if summary.get("contamination"):
        console.print("removed per benchmark: " + ", ".join(f"{b} x{n}" for b, n in summary["contamination"].items()))
    for knob, values in summary.get("knobs", {}).items():
        console.print(f"knob {knob}: " + ", ".join(f"{v} x{n}" for v, n in values), markup=False)
    if summary.get("first_words"):
        console.print("most common first five words: " + "; ".join(f"{w!r} x{n}" for w, n in summary["first_words"]))
    for rec in summary["samples"]:
        shown = {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in rec.items()}
        console.print(shown)
    console.print(
        f"data: {summary['data'].get('rows', 0)} rows -> {summary['run']}/data   "
        f"tokens generated: {summary['completion_tokens']}"
        + (f" ({summary['tokens_per_s']} tok/s)" if summary["tokens_per_s"] else "")
    )
