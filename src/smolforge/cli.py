"""Command line: `smolforge run | recipes | show | export`.

Exit codes: 0 done; 1 the run failed or is incomplete (bad input, engine down,
records that failed for engine reasons, run directory in use; finished work is
kept and a re-run resumes or retries); 2 the recipe or the command line is invalid
(or --out is a directory that is not a run); 3 the run kept no records (unless
--allow-empty); 4 a recipe `target:` was not reached within max_candidates (the
partial output is kept; see docs/executors.md); 130 interrupted (Ctrl-C); 143
terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from smolforge import __version__

DEFAULT_RECIPE = "textbooks"
EXIT_EMPTY = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops cleanly and can be resumed."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


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
    r.add_argument("--allow-path", dest="allow_paths", action="append", default=[], metavar="DIR",
                   help="let the recipe read files under DIR too, or URLs under a prefix such as "
                   "s3://bucket/data (repeatable; default: only the recipe's folder and the "
                   "working directory; docs/storage.md)")
    r.add_argument("--allow-empty", action="store_true",
                   help="exit 0 even when the run keeps no records (default: exit 3)")
    from smolforge.executors import add_run_arguments

    add_run_arguments(r)

    rs = sub.add_parser("recipes", help="list built-in recipes")
    rs.add_argument("--json", action="store_true")

    st = sub.add_parser("stages", help="list every stage type (plugins included), or one type's fields")
    st.add_argument("type", nargs="?", help="show this stage type's fields")
    st.add_argument("--json", action="store_true")
    st.add_argument("--markdown", action="store_true", help="the reference page docs/stages.md")

    s = sub.add_parser("show", help="summarise a run: counts per stage, rejects by reason, samples")
    s.add_argument("run_dir")
    s.add_argument("--samples", type=int, default=3)
    s.add_argument("--json", action="store_true")
    s.add_argument("--column", help="describe this text column (default: every text column the recipe generated)")
    s.add_argument("--rejects", action="store_true", help="list the rejected records instead")
    s.add_argument("--stage", help="--rejects: only this stage's")
    s.add_argument("--reason", help="--rejects: only those whose reason contains this (or whose rule is this)")
    s.add_argument("--limit", type=int, default=50, help="--rejects: at most N (0: all)")

    e = sub.add_parser("export", help="export a run's data")
    e.add_argument("run_dir")
    e.add_argument("--format", required=True, choices=["jsonl", "parquet", "chat", "hf", "dpo", "kto", "grpo"])
    e.add_argument("--to", required=True, help="output file or URL (s3://bucket/key, docs/storage.md; "
                   "hf: a local folder)")
    e.add_argument("--license", help="hf: the dataset's licence in the card (default: other)")
    e.add_argument("--split", help="only the records whose `split` column is this (jsonl, parquet, chat)")
    e.add_argument("--prompt-column", help="chat, dpo, kto, grpo: the user turn (default: the prompt that "
                   "produced the recipe's last generation)")
    e.add_argument("--response-column", help="chat: the assistant turn (default: the recipe's last "
                   "generation stage's output)")
    e.add_argument("--system-column", help="chat, dpo, kto, grpo: a system turn (default: the one the "
                   "recipe's stage writes, if any)")
    e.add_argument("--force", action="store_true",
                   help="replace an existing file (hf: files in the folder) that this export did not write")

    from smolforge.train import cli as train_cli  # train, eval (torch etc. imported only when run)

    train_cli.add_parser(sub)
    from smolforge.train import estimate as estimate_cli  # estimate (standard library only)

    estimate_cli.add_parser(sub)
    from smolforge.report import cli as report_cli  # report, push

    report_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `show` prints it as the resume command
    err = Console(stderr=True, soft_wrap=True)
    from smolforge.recipe import RecipeError
    from smolforge.store import RunDirError, RunLocked
    from smolforge.train import cli as train_cli

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command in train_cli.COMMANDS:
            return train_cli.run(args)
        if args.command == "estimate":
            from smolforge.train import estimate as estimate_cli

            return estimate_cli.run(args)
        from smolforge.report import cli as report_cli

        if args.command in report_cli.COMMANDS:
            return report_cli.run(args)
        return {"run": cmd_run, "recipes": cmd_recipes, "stages": cmd_stages, "show": cmd_show,
                "export": cmd_export}[args.command](args)
    except RecipeError as e:
        err.print("[red]recipe error[/red]", highlight=False)
        for line in e.problems:
            err.print(f"  {line}", highlight=False, markup=False)
        return 2
    except RunDirError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return 2
    except RunLocked as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return 1
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        err.print(f"{what}; re-run the same command to resume")
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:
        if os.environ.get("SMOLFORGE_DEBUG"):
            raise
        # 2: a command-line problem an error class declares (export's AmbiguousColumns)
        code = 2 if getattr(e, "exit_code", None) == 2 else 1
        err.print(f"[red]error:[/red] {type(e).__name__ + ': ' if code == 1 else ''}{escape(str(e))}",
                  highlight=False)
        return code


def _without_pandas_in_pyarrow() -> None:
    """pyarrow imports pandas (about 0.9 s of CPU) on the first `pa.array` of a
    Python list, only to ask whether the list is a pandas object. A run never hands
    it one, so tell pyarrow once that pandas is absent; pandas itself stays
    importable (its own `import pandas` works), only pyarrow's interop is off in
    this process."""
    import sys

    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    class NoPandas:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "pandas" or name.startswith("pandas."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoPandas)  # pyarrow's probe fails, and caches that
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(NoPandas)


def cmd_run(args: argparse.Namespace) -> int:
    _without_pandas_in_pyarrow()
    from smolforge.progress import RichProgress, StageProgress
    from smolforge.recipe import load_recipe
    from smolforge.report import print_summary, summarize
    from smolforge.runner import Runner

    recipe = load_recipe(args.recipe, args.overrides, allow_paths=args.allow_paths)
    if args.dry_run:
        from smolforge.dryrun import dry_run

        report = dry_run(recipe, limit=args.limit, cache=args.cache)
        if args.json:
            print(json.dumps(report, default=str, indent=2))
        else:
            _print_dry_run(report)
        return 0
    out = Path(args.out or Path("runs") / recipe.name)
    quiet = args.quiet or args.json
    progress = StageProgress() if quiet else RichProgress()
    from smolforge.executors import make_executor, target_missed

    executor = make_executor(args.executor, address=args.address)
    import shlex

    command = "smolforge " + shlex.join(args.argv)
    run = Runner(recipe, out, limit=args.limit, cache=args.cache, progress=progress, executor=executor,
                 command=command).run()
    # --quiet prints nothing: the manifest's counts are enough (summarize reads the
    # whole dataset), unless the run is empty and the user is told why.
    manifest = run.manifest
    quiet_empty = args.quiet and not args.json and manifest.get("data", {}).get("rows", 0) == 0
    summary = summarize(run.path) if quiet_empty or not args.quiet or args.json else manifest
    if args.json:
        print(json.dumps(summary, default=str, indent=2))
    elif not args.quiet:
        print_summary(summary)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    _warn_degenerate_judges(run.manifest, err)
    failures = run.manifest.get("engine_failures", {})
    if failures.get("records"):
        err.print(f"[red]{failures['records']} record(s) failed for engine reasons[/red] "
                  f"(first: {escape(str(failures['first_error']))}); re-run to retry")
        return 1
    if (code := target_missed(run.manifest, err)) is not None:
        return code
    if summary["data"].get("rows", 0) == 0 and not args.allow_empty:
        err.print("[red]the run kept no records[/red]" + _why_empty(summary)
                  + "\n(--allow-empty to accept an empty dataset)")
        return EXIT_EMPTY
    return 0


def _warn_degenerate_judges(manifest: dict, err: Console, what: str = "") -> None:
    """A judge whose own output marks it degenerate (its summary's `judge_check`)."""
    from smolforge.report.stats import judge_warnings

    for w in judge_warnings(manifest.get("stages", [])):
        err.print(f"[red]degenerate judge[/red] {escape(w)}: its scores are not a quality signal{what}")


def _why_empty(summary: dict) -> str:
    """Which stage dropped the most, and its top reasons."""
    stages = [s for s in summary["stages"] if s.get("rejected")]
    if not stages:
        return ": the source produced no records"
    worst = max(stages, key=lambda s: s["rejected"])
    reasons = [g for g in summary["rejects"] if g["stage"] == worst["name"]][:3]
    lines = [f": stage {worst['name']!r} dropped {worst['rejected']} of {worst.get('in', '?')}"]
    lines += [f"  {g['count']} x {g['reason']} (e.g. {g['example'][:100]})" for g in reasons]
    return "\n".join(lines)


def _print_dry_run(report: dict) -> None:
    """Per stage: records in/out, time and tokens per record, a sample record (or
    why the stage was skipped); then the estimate for the whole run."""
    c = Console(highlight=False, soft_wrap=True)
    c.print(f"dry run on {report['sample']} records (one shard of {report.get('shard_size', '?')}"
            f"; model load {report.get('load_seconds', 0):.1f} s, counted once):", markup=False)
    for r in report["stages"]:
        if r.get("skipped"):
            c.print(f"  {r['stage']:<16} in={r['in']!s:>4}  {r['skipped']}", markup=False)
            continue
        hits = f"  {r['cache_hits']} cache hits" if r.get("cache_hits") else ""
        c.print(f"  {r['stage']:<16} in={r['in']!s:>4} out={r['out']:>4}  "
                f"{r['seconds_per_record']:.2f} s/record  {r['tokens_per_record']:.0f} tokens/record{hits}",
                markup=False)
        for reason in r.get("rejects", []):
            c.print(f"      dropped: {reason}", markup=False)
        if r.get("sample_record") is not None:
            shown = json.dumps(r["sample_record"], ensure_ascii=False, default=str)
            c.print(f"      sample: {shown}", markup=False)
    est = report["estimate"]
    if est.get("seconds") is not None:
        c.print(f"estimate for {est['records']} records: ~{est['seconds']:.0f} s "
                f"(model load {est.get('load_seconds', 0):.0f} s), "
                f"~{est['completion_tokens']} tokens generated, ~{est['output_records']} records out",
                markup=False)
    else:
        c.print("estimate: the number of input records is not known before reading; "
                "see per-record figures", markup=False)
    if est.get("not_timed"):
        c.print(f"not in the estimate (skipped in dry run): {', '.join(est['not_timed'])}", markup=False)
    if (t := report.get("target")) is not None:
        need = t["candidates_needed"]
        c.print(f"target {t['records']} records: the pilot kept {t['pilot_kept']} of {t['pilot_candidates']} "
                f"candidates; ~{need if need is not None else 'unknown (none kept)'} candidates needed "
                f"(max_candidates {t['max_candidates']}{'' if t['within_budget'] else ': NOT enough'})",
                markup=False)


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


def cmd_stages(args: argparse.Namespace) -> int:
    from smolforge import stage_reference as ref

    if args.json:
        rows = ref.reference()
        print(json.dumps([r for r in rows if args.type in (None, r["type"])], indent=2))
    else:
        print(ref.markdown() if args.markdown else ref.text(args.type), end="" if args.markdown else "\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from smolforge.report import print_summary, summarize

    if not (Path(args.run_dir) / "manifest.json").exists():
        raise FileNotFoundError(f"{args.run_dir}: not a run directory (no manifest.json)")
    if args.rejects:
        from smolforge.report.show import show_rejects

        return show_rejects(args)
    summary = summarize(args.run_dir, samples=args.samples, column=args.column)
    if args.json:
        print(json.dumps(summary, default=str, indent=2))
    else:
        print_summary(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from smolforge.export import export

    n = export(args.run_dir, args.format, args.to, args.prompt_column, args.response_column, args.system_column,
               split=args.split, licence=args.license, force=args.force)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    err.print(f"wrote {n} records to {args.to}", markup=False)
    manifest = Path(args.run_dir) / "manifest.json"
    if args.format in ("dpo", "kto") and manifest.is_file():
        _warn_degenerate_judges(json.loads(manifest.read_text()), err,
                                "; the chosen/rejected labels follow it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
