"""Teacher licences: read from the bundled GGUF (checked against llama.cpp's own
metadata reader), from the engine config, or from the family table; recorded in
every generated record's meta; warned about by show, the report and the card, with
the affected records named. One real run with the bundled model as two teachers:
the GGUF's own licence, and the same file declared `llama3.1` in the config (a
Llama-derived GGUF would be)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import smolforge, write_recipe

from smolforge.licences import (
    CONDITIONS,
    PERMITTED,
    RESTRICTED,
    UNKNOWN,
    by_id,
    by_model_name,
    engine_licence,
    from_gguf,
    gguf_metadata,
)


def test_gguf_metadata_matches_llama_cpp():
    import llama_cpp

    from smolforge.engines.models import resolve_model_path

    path = resolve_model_path("smollm2-135m")
    ours = gguf_metadata(path)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        theirs = {k: v for k, v in llm.metadata.items() if k.startswith("general.")}
    finally:
        llm.close()
    assert ours["general.license"] == theirs["general.license"] == "apache-2.0"
    for k, v in theirs.items():  # llama.cpp gives strings for every scalar
        if not isinstance(ours[k], list):
            assert str(ours[k]) == v or float(ours[k]) == float(v), k
    lic = from_gguf(path)
    assert (lic.id, lic.training, lic.source) == ("apache-2.0", PERMITTED, "gguf")


def test_not_a_gguf(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"NOPE" + b"\0" * 32)
    assert from_gguf(f) is None


@pytest.mark.parametrize("model,lid,training", [
    ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1", CONDITIONS),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3", RESTRICTED),
    ("llama-2-13b-chat.Q4_K_M.gguf", "llama2", RESTRICTED),
    ("Qwen/Qwen2.5-7B-Instruct", "apache-2.0", PERMITTED),
    ("Qwen/Qwen2.5-3B-Instruct", "qwen-research", RESTRICTED),
    ("qwen2.5-72b-instruct", "qwen", CONDITIONS),
    ("google/gemma-2-9b-it", "gemma", CONDITIONS),
    ("mistralai/Mistral-7B-Instruct-v0.3", "apache-2.0", PERMITTED),
    ("mistral-large-2411", "mrl", RESTRICTED),
    ("microsoft/Phi-3.5-mini-instruct", "mit", PERMITTED),
    ("gpt-4o-mini", "openai-terms", RESTRICTED),
    ("claude-3-5-sonnet-latest", "anthropic-terms", RESTRICTED),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "apache-2.0", PERMITTED),
])
def test_family_table(model, lid, training):
    lic = by_model_name(model)
    assert (lic.id, lic.training) == (lid, training)


def test_config_wins_and_unknown_is_not_permitted():
    from smolforge.engines.llamacpp import LlamaCppEngine
    from smolforge.engines.openai import OpenAIEngine

    assert engine_licence(LlamaCppEngine(type="llamacpp")).source == "gguf"
    e = LlamaCppEngine(type="llamacpp", licence="llama3.1")
    assert (engine_licence(e).id, engine_licence(e).source) == ("llama3.1", "config")
    assert engine_licence(LlamaCppEngine(type="llamacpp", license="MIT")).id == "mit"  # US spelling too
    served = OpenAIEngine(type="openai", base_url="http://127.0.0.1:1/v1", model="my-finetune")
    lic = engine_licence(served)
    assert lic.training == UNKNOWN and lic.warns and "licence:" in lic.note
    assert by_id("some-custom-licence").training == UNKNOWN
    # cache keys and the resume fingerprint do not depend on the licence field
    assert e.identity() == LlamaCppEngine(type="llamacpp").identity()


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lic")
    recipe = write_recipe(tmp / "r.yaml", {"name": "lic", "seed": 5, "shard_size": 4, "stages": [
        {"type": "items", "items": [{"topic": t} for t in ["tides", "bees", "maps"]]},
        {"type": "generate", "template": "Write one sentence about {{ topic }}.", "max_tokens": 10,
         "temperature": 0.0,
         "engine": [{"type": "llamacpp", "model": "smollm2-135m"},
                    {"type": "llamacpp", "model": "smollm2-135m", "licence": "llama3.1"}]},
    ]})
    p = smolforge("run", str(recipe), "--out", str(tmp / "run"), "--quiet")
    assert p.returncode == 0, p.stderr
    return tmp, tmp / "run"


def test_every_record_names_its_teachers_licence(two_teachers):
    _, run = two_teachers
    rows = pq.read_table(run / "data").to_pylist()
    assert len(rows) == 6
    lic = {r["id"]: json.loads(r["meta"])["generate"]["licence"] for r in rows}
    # fan-out ids: <record>.0 from the first engine, <record>.1 from the second
    assert {i: v for i, v in lic.items()} == {f"items-{k:06d}.{e}": ("apache-2.0", "llama3.1")[e]
                                             for k in range(3) for e in range(2)}


def test_show_report_and_card_warn_naming_the_records(two_teachers, tmp_path):
    _, run = two_teachers
    s = json.loads(smolforge("show", str(run), "--json").stdout)
    assert {t["licence"]: t["records"] for t in s["teachers"]} == {"apache-2.0": 3, "llama3.1": 3}
    assert sorted((e["licence"], e["training"]) for e in s["engines"]) == [
        ("apache-2.0", PERMITTED), ("llama3.1", CONDITIONS)]
    [w] = s["licence_warnings"]
    assert w["licence"] == "llama3.1" and w["records"] == 3
    assert sorted(w["example_ids"]) == [f"items-{k:06d}.1" for k in range(3)]
    text = smolforge("show", str(run)).stdout
    assert "licence warning" in text and "Llama 3.1 Community License" in text
    p = smolforge("report", str(run), "--out", str(tmp_path / "r.html"), "--tokenizer", "approx")
    assert p.returncode == 0, p.stderr
    html = (tmp_path / "r.html").read_text()
    assert html.count("sf-licence-warning") == 1 and "items-000000.1" in html
    p = smolforge("export", str(run), "--format", "hf", "--to", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "**Licence warning:**" in card and "Llama 3.1 Community License" in card
    assert "| llamacpp:smollm2-135m | 3 | Apache License 2.0 | permitted |" in card
