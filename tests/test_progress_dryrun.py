"""Progress that moves per request, resume messages, and `--dry-run` (issue #6, items 9, 10).

Everything runs the real bundled model with few tokens, through the real runner,
the real CLI and the real `StageContext.generate` path."""

from __future__ import annotations

import json

from conftest import smolforge, tiny_recipe, write_recipe

from smolforge.context import EnginePool, StageContext
from smolforge.engines.cache import ResponseCache
from smolforge.progress import StageProgress
from smolforge.recipe import Recipe
from smolforge.runner import Runner
from smolforge.stages.synth.generate import Generate

TOPICS = ["cats", "cats", "rivers", "stars", "bread", "rain", "cats"]


class Recorder(StageProgress):
    """A real StageProgress whose drawing is a list: (stage, unit, completed, total,
    requests) after every change."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, float, int | None, int]] = []
        self.messages: list[str] = []

    def render(self) -> None:
        s = self.state
        assert s is not None
        self.events.append((s.name, s.unit, s.completed, s.total, s.requests))

    def log(self, message: str) -> None:
        self.messages.append(message)


def _recipe(**over) -> dict:
    r = tiny_recipe(shard_size=3)
    r["stages"][0]["items"] = [{"topic": t} for t in TOPICS]
    r.update(over)
    return r


def test_generate_advances_one_record_per_answered_request_within_a_shard(tmp_path):
    """StageContext.generate -> progress: each of a shard's 4 requests moves the
    stage by one record as it is answered, a request repeated inside the batch
    (answered by its first copy, not the engine) included; the shard's exact count
    then replaces the estimate."""
    pool = EnginePool()
    cache = ResponseCache(tmp_path / "cache.sqlite")
    progress = Recorder()
    ctx = StageContext(recipe_name="t", recipe_dir=tmp_path, seed=1, default_engine="llamacpp",
                       pool=pool, cache=cache, on_response=progress.response).for_stage("generate")
    stage = Generate(template="One word about {{ topic }}:", max_tokens=4, temperature=0.0)
    batch = [{"id": f"r{i}", "topic": t} for i, t in enumerate(["cats", "rivers", "cats", "stars"])]
    try:
        progress.start_records("generate", 4)
        res = stage.process(batch, ctx)
        progress.advance_records(len(batch))
    finally:
        pool.close()
        cache.close()
    assert [e[2] for e in progress.events] == [0, 1, 2, 3, 4, 4]
    assert [e[4] for e in progress.events] == [0, 1, 2, 3, 4, 4]
    assert ctx.stats.generated == 3 and ctx.stats.hits == 1  # the repeat never reached the engine
    assert len(res.kept) == 4


def test_runner_reports_records_per_request_for_llm_stage_and_per_shard_otherwise(tmp_path):
    """Through the runner: 7 records in shards of 3, 3, 1. `generate` moves one
    record per answered request (cache hits for the repeated greedy prompt too);
    `filter` (no LLM) moves a shard at a time; totals are records, not shards."""
    recipe = Recipe.from_dict(_recipe())
    progress = Recorder()
    Runner(recipe, tmp_path / "run", progress=progress).run()
    gen = [(c, t, n) for name, unit, c, t, n in progress.events if name == "generate"]
    assert {unit for name, unit, *_ in progress.events} == {"records"}
    assert {t for _, t, _ in gen} == {7}
    # start; 3 answers, shard 0 written; 3 answers, shard 1 written; 1 answer, shard 2; finish
    assert [c for c, _, _ in gen] == [0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 7, 7]
    assert [n for _, _, n in gen][-1] == 7
    filt = [(c, t) for name, _, c, t, _ in progress.events if name == "filter"]
    assert [c for c, _ in filt] == [0, 3, 6, 7, 7] and filt[0][1] == 7


def test_resumed_run_lists_the_stages_already_done(tmp_path):
    """Re-running with a changed `filter` reuses items and generate: the CLI says so,
    with the records the last done stage kept, and where it continues."""
    path = write_recipe(tmp_path / "r.yaml", _recipe())
    out = str(tmp_path / "run")
    first = smolforge("run", str(path), "--out", out, "--json")
    assert first.returncode == 0, first.stderr
    generated = next(s for s in json.loads(first.stdout)["stages"] if s["name"] == "generate")["out"]
    again = smolforge("run", str(path), "--out", out, "--set", "stages[2].where=words(text) >= 3")
    assert again.returncode == 0, again.stderr
    assert f"resuming: items, generate done ({generated} records); continuing at filter" in again.stderr


def test_resumed_run_through_the_api_reports_done_stages_once(tmp_path):
    recipe = Recipe.from_dict(_recipe())
    Runner(recipe, tmp_path / "run", progress=Recorder()).run()
    progress = Recorder()
    Runner(recipe, tmp_path / "run", progress=progress).run()
    assert len(progress.messages) == 1
    assert progress.messages[0].startswith("resuming: items, generate, filter, dedup done (")
    assert "every stage is done" in progress.messages[0]


def test_dry_run_reads_at_most_limit_records(tmp_path):
    """`--limit 2`: two records read, two requests sent, the estimate is for two."""
    path = write_recipe(tmp_path / "r.yaml", _recipe(shard_size=4))
    p = smolforge("run", str(path), "--dry-run", "--limit", "2", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    src, gen = report["stages"][0], report["stages"][1]
    assert report["sample"] == 2 and src["out"] == 2
    assert gen["in"] == 2 and gen["requests"] == 2
    assert report["estimate"]["records"] == 2


def test_dry_run_without_limit_samples_one_shard_and_estimates_all(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", _recipe(shard_size=4))
    p = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    gen = report["stages"][1]
    assert report["sample"] == 4 and gen["in"] == 4 and gen["requests"] == 4
    # two greedy "cats" prompts in the shard: the engine answers one, the cache the other
    assert gen["cache_hits"] == 1
    est = report["estimate"]
    assert est["records"] == 7 and est["seconds"] > est["load_seconds"] >= 0
    assert not (tmp_path / "run").exists()


def test_dry_run_shows_each_stage_sample_as_the_real_run_makes_it(tmp_path):
    """The sample after `generate` is the record the real run produces for the same
    id (same seed, same greedy prompt); the text output prints one per stage."""
    path = write_recipe(tmp_path / "r.yaml", _recipe(shard_size=2))
    p = smolforge("run", str(path), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["stage"]: r for r in json.loads(p.stdout)["stages"]}
    assert rows["items"]["sample_record"] == {"topic": "cats", "id": "items-000000"}
    gen = rows["generate"]["sample_record"]
    assert set(gen) == {"topic", "id", "text", "prompt"}
    assert gen["prompt"] == "Write one sentence about cats."
    real = smolforge("run", str(path), "--out", str(tmp_path / "run"), "--limit", "2", "--quiet")
    assert real.returncode == 0, real.stderr
    data = {r["id"]: r for r in _rows(tmp_path / "run")}
    assert gen["text"] == data["items-000000"]["text"]
    text = smolforge("run", str(path), "--dry-run")
    assert text.returncode == 0, text.stderr
    samples = [json.loads(line.split("sample: ", 1)[1]) for line in text.stdout.splitlines()
               if line.strip().startswith("sample: ")]
    assert [s["id"] for s in samples] == ["items-000000"] * 4  # items, generate, filter, dedup
    assert "text" not in samples[0] and samples[1]["text"] == gen["text"]


def _rows(run_dir) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "data").to_pylist()


def _classifier_recipe(n: int) -> dict:
    words = ["river", "stone", "cloud", "forest", "ember", "harbor", "meadow", "lantern"]
    items = [{"text": f"{words[i % 8]} {words[(i * 3) % 8]} number {i}", "label": i % 5} for i in range(n)]
    return {
        "name": "clf",
        "shard_size": 64,
        "stages": [
            {"type": "items", "items": items},
            {"type": "train_classifier", "label_column": "label", "model_path": "clf.npz"},
            {"type": "classify", "models": ["clf.npz"], "score_column": "score"},
            {"type": "filter", "where": "score >= 0"},
            {"type": "dedup", "method": "exact", "column": "text"},
        ],
    }


def test_dry_run_skips_train_classifier_when_the_sample_has_too_few_labels(tmp_path):
    """4 labelled records < min_labels 10: train_classifier is marked "skipped in dry
    run: needs 10", the classify that needs its model and the filter that needs
    classify's score are skipped after it, dedup still runs on the 4 records."""
    path = write_recipe(tmp_path / "r.yaml", _classifier_recipe(4))
    p = smolforge("run", str(path), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    rows = {r["stage"]: r for r in report["stages"]}
    tc = rows["train_classifier"]
    assert tc["skipped"] == "skipped in dry run: needs 10 records with a numeric 'label' (the sample has 4)"
    assert tc["needs"] == 10
    assert rows["classify"]["skipped"].startswith("skipped in dry run: needs the output of train_classifier")
    assert rows["filter"]["skipped"] == "skipped in dry run: needs 'score' from classify (skipped)"
    assert rows["dedup"]["in"] == 4 and rows["dedup"]["out"] == 4 and "skipped" not in rows["dedup"]
    assert report["estimate"]["not_timed"] == ["train_classifier", "classify", "filter"]
    text = smolforge("run", str(path), "--dry-run")
    assert "train_classifier in=   4  skipped in dry run: needs 10 records" in text.stdout


def test_dry_run_trains_the_classifier_once_the_sample_has_enough_labels(tmp_path):
    """12 labelled records >= 10: the same recipe's classifier is trained and used."""
    path = write_recipe(tmp_path / "r.yaml", _classifier_recipe(12))
    p = smolforge("run", str(path), "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["stage"]: r for r in json.loads(p.stdout)["stages"]}
    assert "skipped" not in rows["train_classifier"] and "skipped" not in rows["classify"]
    assert isinstance(rows["classify"]["sample_record"]["score"], float)
    assert rows["filter"]["in"] == 12
