"""`smolforge show`: the terminal view of `summarize` and of the rejected records."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:200]
    return str(v)


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    state = f" ({summary['partial']['state']})" if summary.get("partial") else ""
    console.print(f"[bold]{escape(str(summary['recipe']))}[/bold]  {escape(summary['run'])}  "
                  f"status={summary['status']}{escape(state)}  attempts={summary['attempts']}")
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
    if p := summary.get("partial"):
        print_partial(p, console)
    for s in summary["stages"]:  # figures a stage reports about its whole output
        if s.get("summary"):
            items = ", ".join(f"{k}={_fmt(v)}" for k, v in s["summary"].items() if k != "judge_check")
            console.print(f"{s['name']} summary: {items}", markup=False, highlight=False, soft_wrap=True)
        if check := (s.get("summary") or {}).get("judge_check"):
            figs = {**check.get("position_bias", {}), **({"spearman_score_criterion": check["spearman_score_criterion"]}
                                                        if check.get("spearman_score_criterion") else {})}
            items = ", ".join(f"{k}={_fmt(v)}" for k, v in figs.items())
            state = "; ".join(check.get("degenerate") or []) or "no degenerate signal"
            console.print(f"{s['name']} judge check ({check.get('ratings', 0)} ratings): {items or '-'}; {state}",
                          markup=False, highlight=False, soft_wrap=True)
    for w in summary.get("judge_warnings", []):
        console.print(f"[red]degenerate judge[/red] {escape(w)}: its scores are not a quality signal",
                      highlight=False, soft_wrap=True)
    if t := summary.get("target"):
        state = "reached" if t.get("reached") else f"not reached ({t.get('stopped') or 'budget spent'})"
        line = (f"target {t['records']} records: kept {t.get('kept', 0)}, {state}; "
                f"{t.get('candidates', 0)} of {t.get('max_candidates')} candidates, "
                f"acceptance {_fmt(t.get('acceptance'))}")
        if t.get("more_candidates_needed") and t.get("stopped") == "max_candidates spent":
            line += f"; about {t['more_candidates_needed']} more candidates needed"
        elif not t.get("reached") and t.get("stopped") not in (None, "max_candidates spent"):
            # the source ran dry: more budget cannot help
            line += "; the budget was not the limit: the source gives no new records that survive"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        rounds = Table("round", "candidates", "kept", "acceptance", box=None)
        for r in t.get("rounds", []):
            rounds.add_row(str(r.get("round")), str(r.get("candidates")), str(r.get("kept", "-")),
                           _fmt(r.get("acceptance")))
        console.print(rounds)
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
    for col, c in summary.get("text_columns", {}).items():  # every generated text column
        words = "; ".join(f"{w!r} x{n}" for w, n in c["first_words"])
        console.print(f"column {col}: {c['texts']} texts, {_fmt(c['mean_words'])} words on average; "
                      f"most common first five words: {words}", markup=False, highlight=False, soft_wrap=True)
    for t in summary.get("teachers", []):
        console.print(f"teacher {t['teacher']}: {t['records']} record(s), licence {t['licence']} "
                      f"({t['training']}, from {t['licence_source']})", markup=False, highlight=False,
                      soft_wrap=True)
    for w in summary.get("licence_warnings", []):
        ids = ", ".join(w["example_ids"][:5])
        console.print(f"[yellow]licence warning:[/yellow] {escape(w['message'])} (e.g. {escape(ids)})",
                      highlight=False,
                      soft_wrap=True)
    for rec in summary["samples"]:
        shown = {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in rec.items()}
        console.print(shown)
    console.print(
        f"data: {summary['data'].get('rows', 0)} rows -> {summary['run']}/data   "
        f"tokens generated: {summary['completion_tokens']}"
        + (f" ({summary['tokens_per_s']} tok/s)" if summary["tokens_per_s"] else "")
    )


def print_partial(p: dict[str, Any], console: Console) -> None:
    """A run that did not finish: its state, what each stage committed, how to resume."""
    console.print(f"[yellow]partial run: {escape(p['state'])}[/yellow]"
                  + (f" ({escape(str(p['error']))})" if p.get("error") else ""), highlight=False, soft_wrap=True)
    t = Table("stage", "type", "shards done", "records in", "kept", "rejected", "finished", title="on disk")
    for s in p["stages"]:
        of = f"/{s['shards']}" if s.get("shards") is not None else ""
        t.add_row(s["name"], str(s.get("type") or ""), f"{s['shards_done']}{of}", str(s.get("in", 0)),
                  str(s.get("out", 0)), str(s.get("rejected", 0)), "yes" if s["complete"] else "no")
    if not p["stages"]:
        console.print("no stage committed a shard yet", highlight=False)
    else:
        console.print(t)
    console.print(f"{p['note']}:\n  {p['resume']}", markup=False, highlight=False, soft_wrap=True)


def print_rejects(rejects: list[dict], console: Console | None = None, width: int = 160) -> None:
    """One block per rejected record: id, stage, the full reason, its text columns."""
    console = console or Console(soft_wrap=True, highlight=False)
    for r in rejects:
        console.print(f"[bold]{r['id']}[/bold]  stage={r['stage']}  rule={r['rule']}", highlight=False)
        console.print(f"  reason: {r['reason']}", markup=False)
        rec = r["record"] if isinstance(r["record"], dict) else {"record": r["record"]}
        for k, v in rec.items():
            if k in ("id", "meta"):
                continue
            s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
            s = " ".join(s.split())
            console.print(f"  {k}: {s[:width] + '…' if len(s) > width else s}", markup=False)
    console.print(f"{len(rejects)} rejected record(s) shown", highlight=False)


def show_rejects(args: Any) -> int:
    """`smolforge show RUN --rejects [--stage S] [--reason R] [--limit N] [--json]`."""
    from smolforge.report.stats import list_rejects

    rows = list_rejects(args.run_dir, args.stage, args.reason, args.limit or None)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, default=str, indent=2))
    else:
        print_rejects(rows)
    return 0
