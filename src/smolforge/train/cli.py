"""`smolforge train` and `smolforge eval` (torch, transformers, trl, peft: the `train`
extra; imported only when these commands run)."""

from __future__ import annotations

import argparse
import json
import sys

COMMANDS = ("train", "eval")


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="fine-tune a small model on a run's data (SFT or DPO, TRL on CPU)")
    t.add_argument("data", help="run directory or export output (.jsonl/.parquet: messages, "
                   "prompt/completion, or prompt/chosen/rejected for dpo)")
    t.add_argument("--method", choices=["sft", "dpo"], default="sft")
    t.add_argument("--base", default="smollm2-135m", help="bundled model name, GGUF file, or HF model dir")
    t.add_argument("--out", required=True, help="output directory (safetensors, train.json, model.gguf)")
    t.add_argument("--full", action="store_true", help="full fine-tuning (default: LoRA)")
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--lora-alpha", type=int, default=32)
    t.add_argument("--steps", type=int, help="optimizer steps (default: --epochs over the data)")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, help="learning rate (default: 2e-4 LoRA, 2e-5 full)")
    t.add_argument("--max-length", type=int, default=256, help="tokens per example (longer ones are cut)")
    t.add_argument("--beta", type=float, default=0.1, help="dpo: KL strength")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on 2 shared cores two threads contend and run slower)")
    t.add_argument("--gguf", choices=["f16", "q8_0", "q4_1"], help="also write OUT/model.gguf")
    t.add_argument("--split", default="train", help="rows of this split when the data has a `split` column "
                   "(`all`: every row)")
    t.add_argument("--prompt-column", default="prompt")
    t.add_argument("--response-column", help="default: completion, response or text")
    t.add_argument("--system-column")
    t.add_argument("--limit", type=int, help="train on the first N rows only")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")

    e = sub.add_parser("eval", help="evaluate models side by side on held-out data, with bootstrap CIs")
    e.add_argument("models", nargs="+", help="bundled model name, GGUF file, or a train --out dir "
                   "(its model.gguf); the first is the baseline")
    e.add_argument("--data", required=True, help="run directory or data file")
    e.add_argument("--tasks", default="json,fields",
                   help="comma list: json, fields, json_constrained, fields_constrained, ifeval, code, judge")
    e.add_argument("--split", default="test", help="rows of this split when the data has a `split` column "
                   "(`all`: every row)")
    e.add_argument("--limit", type=int, help="evaluate the first N rows only")
    e.add_argument("--max-tokens", type=int, default=160)
    e.add_argument("--fields", help="comma list of reference fields (default: every key of the reference)")
    e.add_argument("--reference-column", default="reference",
                   help="column with the reference fields (a dict or a JSON string)")
    e.add_argument("--schema-column", default="schema", help="column with the JSON schema (constrained tasks)")
    e.add_argument("--schema", help="JSON schema file for every row (constrained tasks; default: the schema column)")
    e.add_argument("--judge", default=None, help="judge model for the judge task (default: the first model)")
    e.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, help="llama.cpp threads")
    e.add_argument("--out", help="also write the JSON report here")
    e.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    e.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, soft_wrap=True)
    if args.command == "train":
        from smolforge.train.train import TrainConfig, TrainDataError, train

        cfg = TrainConfig(
            data=args.data, out=args.out, method=args.method, base=args.base, lora=not args.full,
            lora_r=args.lora_r, lora_alpha=args.lora_alpha, steps=args.steps, epochs=args.epochs,
            batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, max_length=args.max_length,
            beta=args.beta, seed=args.seed, threads=args.threads, gguf=args.gguf,
            split=None if args.split == "all" else args.split, prompt_column=args.prompt_column,
            response_column=args.response_column, system_column=args.system_column, limit=args.limit,
            progress=not args.quiet,  # on stderr: --json output stays clean
        )
        try:
            summary = train(cfg)
        except (TrainDataError, FileExistsError) as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            return 2
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
        elif not args.quiet:
            s = summary["seconds"]
            first = summary["losses"][0][1] if summary["losses"] else float("nan")
            err.print(f"trained {summary['steps']} steps on {summary['examples']} examples in {s['train']:.0f}s; "
                      f"loss {first:.3f} -> {summary['losses'][-1][1] if summary['losses'] else float('nan'):.3f}; "
                      f"saved {args.out}" + (f" (+ {summary['gguf']})" if summary["gguf"] else ""),
                      highlight=False)
        return 0
    if args.command == "eval":
        from smolforge.train.eval import EvalConfig, EvalDataError, evaluate, print_report

        cfg = EvalConfig(
            models=args.models, data=args.data, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
            split=None if args.split == "all" else args.split, limit=args.limit, max_tokens=args.max_tokens,
            fields=[f.strip() for f in args.fields.split(",")] if args.fields else None,
            reference_column=args.reference_column, schema_column=args.schema_column, schema=args.schema,
            judge=args.judge,
            resamples=args.resamples, seed=args.seed, threads=args.threads, progress=not args.quiet,
        )
        try:
            report = evaluate(cfg)
        except EvalDataError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            return 2
        if args.out:
            from pathlib import Path

            Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        if not args.quiet:
            print_report(report, Console(file=sys.stderr if args.json else sys.stdout))
        return 0
    raise ValueError(args.command)
