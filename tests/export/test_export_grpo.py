"""`smolforge export --format grpo`: prompt-only conversational records with the
verifier's ground truth (open-instruct RLVR layout), loaded by `datasets` and fed
to TRL's real GRPOTrainer for one step, with a reward function that calls our
IFEval verifier on the completions (a tiny random Llama with the bundled model's
tokenizer; CPU, one thread)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from smolforge.export import ExportError
from smolforge.export.grpo import VERIFIERS, to_grpo
from smolforge.ifeval import evaluate
from smolforge.ifeval.reference import reference_results


def _run_dir(tmp_path, rows):
    """A finished run as `smolforge run` leaves it (data/*.parquet), made through
    the real runner from an `items` source so the store writes the files."""
    import yaml
    from conftest import smolforge

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "g", "seed": 1, "shard_size": 8, "stages": [
        {"type": "items", "items": rows}]}))
    out = tmp_path / "run"
    res = smolforge("run", str(recipe), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    return out


ROWS = [
    {"prompt": "Describe rain. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
     "kwargs": [{}]},
    {"prompt": "Describe snow in fewer than 20 words. Include keywords ['snow'].",
     "instruction_id_list": ["length_constraints:number_words", "keywords:existence"],
     "kwargs": [{"num_words": 20, "relation": "less than"}, {"keywords": ["snow"]}]},
    {"prompt": "Write a title.", "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]},
]


def test_cli_export_grpo_columns_and_ground_truth(tmp_path):
    import datasets
    from conftest import smolforge

    run = _run_dir(tmp_path, ROWS)
    to = tmp_path / "grpo.jsonl"
    res = smolforge("export", str(run), "--format", "grpo", "--to", str(to))
    assert res.returncode == 0, res.stderr
    ds = datasets.load_dataset("json", data_files=str(to), split="train")
    assert {"prompt", "ground_truth", "dataset", "instruction_id_list", "kwargs"} <= set(ds.column_names)
    assert "messages" not in ds.column_names and "completion" not in ds.column_names  # prompt-only
    for row, src in zip(ds, ROWS, strict=True):
        assert row["prompt"] == [{"role": "user", "content": src["prompt"]}]
        assert row["dataset"] == "ifeval"
        gt = json.loads(row["ground_truth"])
        # open-instruct's IFEval verifier: [{"instruction_id": [...], "kwargs": [...]}], nulls dropped
        assert gt == [{"instruction_id": src["instruction_id_list"], "kwargs": src["kwargs"]}]
        # the kept columns check a completion the same as the ground truth does
        text = "snow falls softly"
        a = [(c.strict, c.loose) for c in evaluate(text, row["instruction_id_list"], row["kwargs"])]
        assert a == reference_results(src["prompt"], gt[0]["instruction_id"], gt[0]["kwargs"], text)
    # parquet too, and an unknown layout is refused with the columns named
    res = smolforge("export", str(run), "--format", "grpo", "--to", str(tmp_path / "g.parquet"))
    assert res.returncode == 0, res.stderr
    assert datasets.Dataset.from_parquet(str(tmp_path / "g.parquet")).num_rows == 3


def test_other_verifiers_plug_in_and_unknown_layout_refused():
    code = pa.table({"id": ["a"], "prompt": ["Write add(a, b)."], "tests": [["assert add(1, 2) == 3"]]})
    out = to_grpo(code).to_pylist()[0]
    assert out["dataset"] == "code" and json.loads(out["ground_truth"]) == ["assert add(1, 2) == 3"]
    schema = {"type": "object", "required": ["name"]}
    js = pa.table({"id": ["b"], "prompt": ["Extract the name."], "json_schema": [json.dumps(schema)],
                   "sys": ["Be brief."]})
    out = to_grpo(js, system_column="sys").to_pylist()[0]
    assert out["dataset"] == "json_schema" and json.loads(out["ground_truth"]) == schema
    assert out["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert {v.name for v in VERIFIERS} >= {"ifeval", "code", "json_schema"}
    with pytest.raises(ExportError, match="no verifier's ground truth.*instruction_id_list"):
        to_grpo(pa.table({"id": ["c"], "prompt": ["x"]}))


@pytest.mark.slow
def test_grpo_trainer_one_step_with_ifeval_reward(tmp_path):
    import datasets
    import torch
    from conftest import smolforge
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from smolforge.engines.models import resolve_model_path

    torch.set_num_threads(1)
    run = _run_dir(tmp_path, ROWS)
    to = tmp_path / "grpo.jsonl"
    assert smolforge("export", str(run), "--format", "grpo", "--to", str(to)).returncode == 0
    ds = datasets.load_dataset("json", data_files=str(to), split="train")

    gguf = resolve_model_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    seen = []

    def ifeval_reward(completions, instruction_id_list, kwargs, **_):
        scores = []
        for c, ids, kw in zip(completions, instruction_id_list, kwargs, strict=True):
            text = c[-1]["content"] if isinstance(c, list) else c
            checks = evaluate(text, ids, kw)
            scores.append(sum(x.strict for x in checks) / len(checks))
            seen.append((text, ids))
        return scores

    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, max_steps=1, logging_steps=1, report_to=[],
                      use_cpu=True, save_strategy="no", dataloader_num_workers=0, bf16=False)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=ifeval_reward,
                          args=args, train_dataset=ds)
    trainer.train()
    assert seen and all(ids in [r["instruction_id_list"] for r in ROWS] for _, ids in seen)
    logs = [h for h in trainer.state.log_history if "reward" in h or "rewards/ifeval_reward/mean" in h]
    assert logs, trainer.state.log_history
