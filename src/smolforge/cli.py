"""Command line: `smolforge run | recipes | show | export`.

Exit codes: 0 done, 1 the run failed (bad input, engine unavailable; finished work
is kept and a re-run resumes), 2 the recipe or the command line is invalid,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from smolforge import __version__

DEFAULT_RECIPE = "textbooks"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smolforge", description="Build training data for small language models.")
    p.add_argument("--version", action="version", version=f"smolforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe (resumes if --out holds an unfinished run)")
    r.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="recipe file or built-in name (default: textbooks)")
    r.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a recipe field, e.g. --set stages[0].count=8 (repeatable)")
    r.add_argument("--limit", type=int, help="read at most N records from the source")
    r.add_argument("--cache", help="LLM response cache (SQLite) shared between runs (default: in the run directory)")
    r.add_argument("--dry-run", action="store_true", help="validate, run a few records, estimate the whole run")
    r.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    r.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    rs = sub.add_parser("recipes", help="list built-in recipes")
    rs.add_argument("--json", action="store_true")

    s = sub.add_parser("show", help="summarise a run: counts per stage, rejects by reason, samples")
    s.add_argument("run_dir")
    s.add_argument("--samples", type=int, default=3)
    s.add_argument("--json", action="store_true")

    e = sub.add_parser("export", help="export a run's data")
    e.add_argument("run_dir")
    e.add_argument("--format", required=True, choices=["jsonl", "parquet", "chat"])
    e.add_argument("--to", required=True, help="output file")
    e.add_argument("--prompt-column", default="prompt", help="chat: the user turn")
    e.add_argument("--response-column", default="text", help="chat: the assistant turn")
    e.add_argument("--system-column", help="chat: an optional system turn")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    from smolforge.recipe import RecipeError

    try:
        return {"run": cmd_run, "recipes": cmd_recipes, "show": cmd_show, "export": cmd_export}[args.command](args)
    except RecipeError as e:
        err.print("[red]recipe error[/red]", highlight=False)
        for line in e.problems:
            err.print(f"  {line}", highlight=False, markup=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to resume")
        return 130
    except Exception as e:
        if os.environ.get("SMOLFORGE_DEBUG"):
            raise
        err.print(f"[red]error:[/red] {type(e).__name__}: {e}", highlight=False)
        return 1


def cmd_run(args: argparse.Namespace) -> int:
    from smolforge.progress import RichProgress, StageProgress
    from smolforge.recipe import load_recipe
    from smolforge.report import print_summary, summarize
    from smolforge.runner import Runner

    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        from smolforge.dryrun import dry_run

        report = dry_run(recipe, limit=args.limit)
        if args.json:
            print(json.dumps(report, default=str, indent=2))
        else:
            _print_dry_run(report)
        return 0
    out = Path(args.out or Path("runs") / recipe.name)
    quiet = args.quiet or args.json
    progress = StageProgress() if quiet else RichProgress()
    run = Runner(recipe, out, limit=args.limit, cache=args.cache, progress=progress).run()
    summary = summarize(run.path)
    if args.json:
        print(json.dumps(summary, default=str, indent=2))
    elif not args.quiet:
        print_summary(summary)
    return 0


def _print_dry_run(report: dict) -> None:
    c = Console()
    c.print(f"dry run on {report['sample']} records:")
    for r in report["stages"]:
        c.print(f"  {r['stage']:<16} in={r['in']!s:>4} out={r['out']:>4}  "
                f"{r['seconds_per_record']:.2f} s/record  {r['tokens_per_record']:.0f} tokens/record")
        for reason in r.get("rejects", []):
            c.print(f"      dropped: {reason}", markup=False, highlight=False)
    est = report["estimate"]
    if est.get("seconds") is not None:
        c.print(f"estimate for {est['records']} records: ~{est['seconds']:.0f} s, "
                f"~{est['completion_tokens']} tokens generated, ~{est['output_records']} records out")
    else:
        c.print("estimate: the number of input records is not known before reading; see per-record figures")


def cmd_recipes(args: argparse.Namespace) -> int:
    from smolforge.recipe import builtin_recipes, load_recipe

    rows = []
    for name, path in builtin_recipes().items():
        rows.append({"name": name, "description": load_recipe(path).description, "path": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        c = Console()
        for r in rows:
            c.print(f"[bold]{r['name']:<16}[/bold] {r['description']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from smolforge.report import print_summary, summarize

    if not (Path(args.run_dir) / "manifest.json").exists():
        raise FileNotFoundError(f"{args.run_dir}: not a run directory (no manifest.json)")
    summary = summarize(args.run_dir, samples=args.samples)
    if args.json:
        print(json.dumps(summary, default=str, indent=2))
    else:
        print_summary(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from smolforge.export import export

    n = export(args.run_dir, args.format, args.to, args.prompt_column, args.response_column, args.system_column)
    Console(stderr=True).print(f"wrote {n} records to {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
