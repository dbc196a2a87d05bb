"""`smolforge train`: SFT or DPO of a small model on a run's data, with TRL on CPU.

The base is loaded from a GGUF (the bundled SmolLM2-135M-Instruct by default) through
transformers' GGUF reader, so no hub download is needed; the tuned model is saved as
safetensors and, optionally, written back to GGUF so it is an engine for the next
recipe or for `smolforge eval` (`engine: {type: llamacpp, model: DIR/model.gguf}`).

Follows TRL's SFTTrainer / DPOTrainer (https://github.com/huggingface/trl) with LoRA
from peft (Hu et al. 2021, https://arxiv.org/abs/2106.09685); DPO is Rafailov et al.
2023 (https://arxiv.org/abs/2305.18290). SFT trains on the completion only (TRL's
prompt-completion format: the last assistant turn is the completion). Defaults are
sized for a 2-core CPU: one torch thread (two contend badly when the cores are
shared), batch 4, length 256.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("sft", "dpo")


class TrainDataError(ValueError):
    pass


TRAIN_EXTRA = ("torch", "transformers", "trl", "peft", "datasets")
INSTALL_TRAIN = ("pip install torch==2.13.0 'smolforge[train]' (the torch pin takes a CPU build; "
                 "on a GPU machine install the torch build for its CUDA first)")


class MissingExtra(RuntimeError):
    """A command needs packages of an extra that is not installed."""


def require_train_extra() -> None:
    """`train` needs torch, transformers, trl, peft and datasets (the `train` extra,
    kept out of the core install): say which are missing and how to install them,
    before any data is read."""
    import importlib.util

    missing = [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"smolforge train needs the train extra ({', '.join(missing)} not installed): "
                           f"{INSTALL_TRAIN}")


@dataclass
class TrainConfig:
    data: str
    out: str
    method: str = "sft"
    base: str = "smollm2-135m"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    steps: int | None = None  # default: `epochs` over the data
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None  # default: 2e-4 LoRA, 2e-5 full
    max_length: int = 256
    seed: int = 0
    threads: int = 1
    beta: float = 0.1
    gguf: str | None = None  # f16 | q8_0 | q4_1
    split: str | None = "train"  # rows with this `split` value, when the data has the column
    prompt_column: str = "prompt"
    response_column: str | None = None  # default: completion, response or text
    system_column: str | None = None
    limit: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def read_rows(source: str | Path) -> list[dict[str, Any]]:
    """Rows of a run directory (its manifest's data files) or of an `export` output
    (.jsonl / .json / .parquet)."""
    import pyarrow.parquet as pq

    from smolforge.store import is_run_dir, read_data

    p = Path(source)
    if p.is_dir():
        if not is_run_dir(p):
            raise TrainDataError(f"{p}: a directory that is not a smolforge run")
        return read_data(p).to_pylist()
    if not p.is_file():
        raise TrainDataError(f"{p}: no such run directory or data file")
    if p.suffix == ".parquet":
        return pq.read_table(p).to_pylist()
    if p.suffix in (".jsonl", ".json"):
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise TrainDataError(f"{p}:{i}: not JSON ({e})") from None
        return rows
    raise TrainDataError(f"{p}: unknown data format (want a run dir, .jsonl, .json or .parquet)")


def select_split(rows: list[dict], split: str | None) -> list[dict]:
    """Rows of one split when the data carries a `split` column (see the split stage)."""
    if split is None or not rows or "split" not in rows[0]:
        return rows
    return [r for r in rows if r.get("split") == split]


def _msgs(x: Any, role: str) -> list[dict[str, str]]:
    if isinstance(x, str):
        return [{"role": role, "content": x}]
    if isinstance(x, list) and all(isinstance(m, dict) and "role" in m for m in x):
        return [{"role": m["role"], "content": str(m.get("content", ""))} for m in x]
    raise TrainDataError(f"expected a string or a list of chat messages, got {type(x).__name__}")


def _response_col(row: dict, cfg: TrainConfig) -> str:
    if cfg.response_column:
        return cfg.response_column
    for c in ("completion", "response", "text"):
        if c in row:
            return c
    raise TrainDataError(f"no response column (want completion, response or text; have {', '.join(row)})")


def sft_examples(rows: list[dict], cfg: TrainConfig) -> list[dict]:
    """Prompt-completion conversational examples: everything before the last assistant
    turn is the prompt, the last assistant turn is the completion (the loss)."""
    out = []
    for i, r in enumerate(rows):
        where = f"row {i} (id {r.get('id', '?')})"
        if r.get("messages") is not None:
            m = _msgs(r["messages"], "user")
            if len(m) < 2 or m[-1]["role"] != "assistant":
                raise TrainDataError(f"{where}: `messages` must end with an assistant turn")
            out.append({"prompt": m[:-1], "completion": m[-1:]})
            continue
        if cfg.prompt_column not in r:
            raise TrainDataError(f"{where}: no `messages` and no {cfg.prompt_column!r} column "
                                 f"(columns: {', '.join(r)})")
        prompt = _msgs(r[cfg.prompt_column], "user")
        if cfg.system_column and r.get(cfg.system_column):
            prompt = [{"role": "system", "content": str(r[cfg.system_column])}] + prompt
        comp = r[_response_col(r, cfg)]
        if comp is None:
            raise TrainDataError(f"{where}: empty response")
        out.append({"prompt": prompt, "completion": _msgs(comp, "assistant")})
    return out


def dpo_examples(rows: list[dict], cfg: TrainConfig) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        missing = [c for c in ("prompt", "chosen", "rejected") if r.get(c) is None]
        if missing:
            raise TrainDataError(f"row {i} (id {r.get('id', '?')}): DPO needs prompt/chosen/rejected; "
                                 f"missing {', '.join(missing)}")
        out.append({"prompt": _msgs(r["prompt"], "user"), "chosen": _msgs(r["chosen"], "assistant"),
                    "rejected": _msgs(r["rejected"], "assistant")})
    return out


def load_examples(cfg: TrainConfig) -> list[dict]:
    rows = select_split(read_rows(cfg.data), cfg.split)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise TrainDataError(f"{cfg.data}: no rows" + (f" in split {cfg.split!r}" if cfg.split else ""))
    return (sft_examples if cfg.method == "sft" else dpo_examples)(rows, cfg)


# ------------------------------------------------------------------------ progress


def _progress_callback(total: int, enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichLoss(TrainerCallback):
        """A rich progress bar with the latest loss (TRL's tqdm bar is turned off); when
        stderr is not a terminal (a log file, CI), one line per logged loss instead."""

        def __init__(self) -> None:
            self.losses: list[tuple[int, float]] = []
            self.lines = enabled and not sys.stderr.isatty()
            self.t0 = 0.0
            self.progress = Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), disable=not enabled or self.lines, transient=False,
                                     console=Console(stderr=True))
            self.task = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps or total, loss="-")

        def on_step_end(self, args, state, control, **kw):
            self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))
                self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
                every = max(1, (state.max_steps or total) // 10)
                if self.lines and (state.global_step % every == 0 or state.global_step == state.max_steps):
                    print(f"train: step {state.global_step}/{state.max_steps or total}  loss {logs['loss']:.4f}  "
                          f"{time.perf_counter() - self.t0:.0f} s", file=sys.stderr, flush=True)

        def on_train_end(self, args, state, control, **kw):
            self.progress.stop()

    return RichLoss()


# --------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, save safetensors (+ GGUF) into cfg.out; returns the summary also written
    to OUT/train.json."""
    require_train_extra()
    if cfg.method not in METHODS:
        raise ValueError(f"--method {cfg.method!r}: choose from {', '.join(METHODS)}")
    from smolforge.train.gguf import GGUF_TYPES

    if cfg.gguf is not None and cfg.gguf not in GGUF_TYPES:
        raise ValueError(f"--gguf {cfg.gguf!r}: choose from {', '.join(GGUF_TYPES)}")
    examples = load_examples(cfg)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not (out / "train.json").exists():
        raise FileExistsError(f"{out}: exists and is not a smolforge train output; pick another --out")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    import numpy as np

    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    import datasets
    import transformers
    from datasets import Dataset

    datasets.disable_progress_bar()  # our own bar shows what matters
    transformers.utils.logging.disable_progress_bar()

    from smolforge.train.gguf import load_base, to_gguf

    t0 = time.monotonic()
    model, tok = load_base(cfg.base)
    t_load = time.monotonic() - t0
    ds = Dataset.from_list(examples)
    lr = cfg.lr if cfg.lr is not None else (2e-4 if cfg.lora else 2e-5)
    per_epoch = math.ceil(len(examples) / (cfg.batch_size * cfg.grad_accum))
    steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(per_epoch * cfg.epochs))
    common = dict(
        output_dir=str(out / ".trainer"), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=lr, max_length=cfg.max_length,
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=True, logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, bf16=False,
        gradient_checkpointing=False,  # 135M fits in memory; recomputing only costs time
        lr_scheduler_type="cosine" if steps > 10 else "constant", warmup_steps=0,
        **cfg.extra,
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    cb = _progress_callback(steps, cfg.progress)
    if cfg.method == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             peft_config=peft_config, callbacks=[cb])
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=cfg.beta)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             peft_config=peft_config, callbacks=[cb])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # our bar shows the loss; stdout stays clean
        trainer.remove_callback(noisy)
    t1 = time.monotonic()
    result = trainer.train()
    t_train = time.monotonic() - t1

    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)  # the released SmolLM2 dtype; half the fp32 file
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    import shutil

    shutil.rmtree(out / ".trainer", ignore_errors=True)
    gguf_path = None
    t_gguf = 0.0
    if cfg.gguf:
        t2 = time.monotonic()
        gguf_path = str(to_gguf(out, out / "model.gguf", cfg.gguf))
        t_gguf = time.monotonic() - t2
    summary = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "examples": len(examples), "steps": steps, "learning_rate": lr,
        "losses": cb.losses, "train_loss": float(result.training_loss),
        "seconds": {"load": round(t_load, 2), "train": round(t_train, 2), "gguf": round(t_gguf, 2)},
        "torch_threads": torch.get_num_threads(), "gguf": gguf_path,
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
