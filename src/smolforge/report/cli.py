"""The `report` and `push` subcommands (registered by smolforge.cli). Parsing
imports nothing heavy; the work is imported when a command runs."""

from __future__ import annotations

import argparse
from typing import Any

COMMANDS = ("report", "push")


def add_parser(sub: Any) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report about a run")
    r.add_argument("run_dir")
    r.add_argument("--out", help="HTML file (default: RUN/report.html)")
    r.add_argument("--tokenizer", choices=["auto", "smollm2", "approx"], default="auto",
                   help="lengths in tokens: the bundled SmolLM2 tokenizer (auto: when available) or chars/4")
    r.add_argument("--max-records", type=int, default=20000, help="text statistics on at most N records")
    r.add_argument("--column", help="profile this text column (default: every text column the recipe generated)")

    p = sub.add_parser("push", help="upload a run as a Hugging Face dataset (token from HF_TOKEN)")
    p.add_argument("run_dir")
    p.add_argument("repo_id", help="user/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--license", help="the dataset's licence in the card (default: other)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    if args.command == "report":
        from smolforge.report.html import write_report

        path = write_report(args.run_dir, args.out, tokenizer=args.tokenizer, max_records=args.max_records,
                            column=args.column)
        err.print(f"wrote {path}", markup=False)
        return 0
    from smolforge.report.card import push

    url = push(args.run_dir, args.repo_id, args.private, args.license)
    err.print(f"pushed {args.run_dir} to {args.repo_id}: {url}", markup=False)
    return 0
