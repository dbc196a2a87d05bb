"""`smolforge train`: real TRL on CPU (one torch thread), a few steps on tiny data.

LoRA SFT on a real run directory (items -> split), merged and saved as safetensors,
written back to GGUF (f16 by llama.cpp's converter, q8_0 by llama_model_quantize) and
loaded by our llama.cpp engine, which must generate; DPO one step; data errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import smolforge, write_recipe

from smolforge.train.train import TrainConfig, TrainDataError, load_examples, read_rows

PAIRS = [("Name a colour.", "Blue."), ("Name a fruit.", "An apple."), ("Name a pet.", "A cat."),
         ("Name a tree.", "An oak."), ("Name a metal.", "Iron."), ("Name a planet.", "Mars."),
         ("Name a river.", "The Nile."), ("Name a bird.", "A robin.")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    recipe = write_recipe(d / "r.yaml", {
        "name": "tiny-sft", "seed": 1, "shard_size": 4,
        "stages": [{"type": "items", "items": [{"prompt": p, "completion": c} for p, c in PAIRS]},
                   {"type": "split", "column": "prompt", "test_size": 2}],
    })
    r = smolforge("run", str(recipe), "--out", str(d / "run"), "--quiet")
    assert r.returncode == 0, r.stderr
    return d / "run"


def test_data_formats_and_errors(tmp_path, tiny_run):
    ex = load_examples(TrainConfig(data=str(tiny_run), out="x"))
    assert len(ex) == 6  # the train split only
    assert ex[0]["prompt"][0]["role"] == "user" and ex[0]["completion"][0]["role"] == "assistant"
    assert len(load_examples(TrainConfig(data=str(tiny_run), out="x", split=None))) == 8
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    (e,) = load_examples(TrainConfig(data=str(chat), out="x"))
    assert [m["role"] for m in e["prompt"]] == ["system", "user"] and e["completion"][0]["content"] == "Hello."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(TrainDataError, match=r"bad.jsonl:2: not JSON"):
        read_rows(bad)
    half = tmp_path / "half.jsonl"
    half.write_text('{"prompt": "a"}\n')
    with pytest.raises(TrainDataError, match="DPO needs prompt/chosen/rejected; missing chosen, rejected"):
        load_examples(TrainConfig(data=str(half), out="x", method="dpo"))
    ended = tmp_path / "user-last.jsonl"
    ended.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(TrainDataError, match="must end with an assistant turn"):
        load_examples(TrainConfig(data=str(ended), out="x"))


def test_cli_does_not_import_torch():
    code = ("import sys; from smolforge.cli import _parser; _parser().parse_args(['train', 'r', '--out', 'o']);"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_train_without_torch_says_what_to_install(tmp_path, tiny_run):
    """Without torch (here: the import made to fail in the child, as `None` in
    sys.modules does), `smolforge train` names the missing packages and the install
    line (rich would eat an unescaped `[train]`), exit 1, nothing written."""
    code = ("import sys; sys.modules['torch'] = None; from smolforge.cli import main; "
            f"sys.exit(main(['train', {str(tiny_run)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "ModuleNotFoundError" not in r.stderr and "Traceback" not in r.stderr
    assert "needs the train extra (torch" in r.stderr
    assert "pip install torch==2.13.0 'smolforge[train]'" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_sft_lora_saves_and_round_trips_through_gguf(tiny_run, tmp_path):
    import numpy as np
    from safetensors.torch import load_file

    from smolforge.engines.base import Request
    from smolforge.engines.llamacpp import LlamaCppEngine
    from smolforge.train.gguf import load_base, to_gguf

    out = tmp_path / "tuned"
    r = smolforge("train", str(tiny_run), "--out", str(out), "--steps", "4", "--batch-size", "2",
                  "--max-length", "64", "--lr", "1e-3", "--gguf", "q8_0", "--json", timeout=480,
                  env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["examples"] == 6 and s["steps"] == 4 and s["torch_threads"] == 1
    losses = [v for _, v in s["losses"]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # 4 steps at lr 1e-3 on 6 examples: it learns them
    # stderr is not a terminal here: one line per logged loss instead of a bar
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("train: step ")]
    assert [ln.split()[2] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(f"loss {v:.4f}" in ln for ln, v in zip(lines, losses))

    # The merged weights differ from the base's (LoRA was merged in, not dropped).
    base, _ = load_base("smollm2-135m")
    w0 = base.state_dict()["model.layers.0.self_attn.q_proj.weight"].float().numpy()
    tuned = load_file(str(out / "model.safetensors"))
    w1 = tuned["model.layers.0.self_attn.q_proj.weight"].float().numpy()
    assert w1.shape == w0.shape and np.abs(w1 - w0).max() > 1e-4
    assert not (out / ".trainer").exists()

    f16 = to_gguf(out, tmp_path / "f16.gguf", "f16")
    assert (out / "model.gguf").stat().st_size < 0.6 * f16.stat().st_size  # q8_0 is smaller
    for path in (out / "model.gguf", f16):
        eng = LlamaCppEngine(model=str(path), n_ctx=256)
        try:
            (resp,) = eng.generate([Request(messages=[{"role": "user", "content": "Name a colour."}],
                                            max_tokens=8)])
            assert resp.error is None and resp.completions[0].text.strip()
            # The chat template travelled through safetensors -> GGUF.
            assert "<|im_start|>user\nx<|im_end|>" in eng.chat_template().render([{"role": "user", "content": "x"}])
        finally:
            eng.close()


@pytest.mark.slow
def test_dpo_one_step(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": "I don't know."}) + "\n"
                            for p, c in PAIRS[:4]))
    from smolforge.train.train import train

    s = train(TrainConfig(data=str(data), out=str(tmp_path / "dpo"), method="dpo", steps=1, batch_size=2,
                          max_length=64, progress=False))
    assert s["steps"] == 1 and len(s["losses"]) == 1
    # DPO's loss at the first step is -log sigmoid(0) = log 2 (policy == reference).
    assert s["losses"][0][1] == pytest.approx(0.6931, abs=1e-3)
    assert (tmp_path / "dpo" / "model.safetensors").is_file()
