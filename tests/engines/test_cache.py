"""The response cache and recomputation, over real HTTP (canned answers from
tests/faultproxy.py, so every request the engine sends is counted): a cache key
changes with the model and with every sampling parameter; failures are not
cached; `--cache PATH` is shared between run directories; editing a template
file, a rubric or a model recomputes the stages that depend on it, and only
those."""

from __future__ import annotations

import json

import pytest
from conftest import smolforge, write_recipe
from faultproxy import Fault, canned_server, user_text

import smolforge as sf
from smolforge.engines.base import Request
from smolforge.engines.cache import CacheStats, ResponseCache, cached_generate
from smolforge.engines.openai import OpenAIEngine

TOPICS = ["cats", "rivers", "bread"]


def echo(body: dict) -> str:
    if "Score:" in user_text(body):
        return "Score: 2"
    return "text on " + user_text(body).split()[-1].rstrip(".")


def engine_spec(url: str, model: str = "m") -> dict:
    return {"type": "openai", "base_url": url, "model": model, "max_retries": 0}


def gen_recipe(url: str, model: str = "m", **stage) -> dict:
    return {"name": "cached", "seed": 5, "stages": [
        {"type": "items", "items": [{"topic": t} for t in TOPICS]},
        {"type": "generate", "template": "Write about {{ topic }}.", "max_tokens": 4,
         "temperature": 0.0, "engine": engine_spec(url, model), **stage}]}


def test_shared_cache_answers_other_run_directories(tmp_path):
    shared = tmp_path / "shared.sqlite"
    with canned_server(echo) as server:
        path = write_recipe(tmp_path / "r.yaml", gen_recipe(server.url))
        first = sf.run(path, out=tmp_path / "a", cache=shared)
        assert len(server.seen) == 3
        second = sf.run(path, out=tmp_path / "b", cache=shared)
        p = smolforge("run", str(path), "--out", str(tmp_path / "c"), "--cache", str(shared), "--quiet")
        assert p.returncode == 0, p.stderr
        assert len(server.seen) == 3  # neither the API run nor the CLI run asked again
    texts = [f"text on {t}" for t in TOPICS]
    for run in (first, second, sf.Run(tmp_path / "c")):
        assert [r["text"] for r in run.data().to_pylist()] == texts
    gen = {s["name"]: s for s in second.manifest["stages"]}["generate"]
    assert (gen["generated"], gen["cache_hits"]) == (0, 3)
    assert not (tmp_path / "b" / "cache.sqlite").exists()  # the shared file was used, not a new one


@pytest.mark.parametrize("change", [
    {"model": "m2"}, {"temperature": 0.5}, {"max_tokens": 5}, {"top_p": 0.9}, {"top_k": 4},
    {"min_p": 0.05}, {"repeat_penalty": 1.1}, {"stop": ["\n"]}, {"seed": 99, "temperature": 0.5},
    {"system": "Be brief."}, {"raw": True},
])
def test_cache_key_changes_with_model_and_every_sampling_parameter(tmp_path, change):
    shared = tmp_path / "shared.sqlite"
    with canned_server(echo) as server:
        sf.run(gen_recipe(server.url), out=tmp_path / "base", cache=shared)
        sf.run(gen_recipe(server.url), out=tmp_path / "same", cache=shared)
        assert len(server.seen) == 3  # the same recipe: all from the cache
        model = change.pop("model", "m")
        sf.run(gen_recipe(server.url, model, **change), out=tmp_path / "changed", cache=shared)
    assert len(server.seen) == 6  # every prompt asked again


def test_failed_responses_are_not_cached(tmp_path):
    """An HTTP error is a response with `error`: not stored, so the next call asks
    the server again; successes are stored and not asked again."""
    fail = {"yes": True}

    def answer(body: dict) -> str | Fault:
        if fail["yes"] and user_text(body) == "rivers":
            return Fault.http(400)
        return "ok " + user_text(body)

    cache = ResponseCache(tmp_path / "c.sqlite")
    with canned_server(answer) as server:
        eng = OpenAIEngine(type="openai", base_url=server.url, model="m", max_retries=0)
        try:
            reqs = [Request(prompt=t, max_tokens=4) for t in TOPICS]
            out = cached_generate(eng, cache, reqs, CacheStats())
            assert [r.error is None for r in out] == [True, False, True] and len(cache) == 2
            fail["yes"] = False
            stats = CacheStats()
            again = cached_generate(eng, cache, reqs, stats)
        finally:
            eng.close()
            n_cached = len(cache)
            cache.close()
    assert [s.prompt for s in server.seen] == TOPICS + ["rivers"]
    assert [r.completions[0].text for r in again] == [f"ok {t}" for t in TOPICS]
    assert [r.cached for r in again] == [True, False, True]
    assert (stats.hits, stats.generated, stats.failed, n_cached) == (2, 1, 0, 3)


def test_editing_a_template_file_a_rubric_or_the_model_recomputes_what_depends_on_it(tmp_path):
    (tmp_path / "gen.j2").write_text("Write about {{ topic }}.")
    (tmp_path / "rubric.yaml").write_text("min_score: 0\nmax_score: 5\naspects:\n"
                                          "  value: 'Rate {{ text }}. Score:'\n")

    def recipe(url: str, judge_model: str = "judge") -> dict:
        return {"name": "edits", "stages": [
            {"type": "items", "items": [{"topic": t} for t in TOPICS]},
            {"type": "generate", "template_file": "gen.j2", "max_tokens": 4, "temperature": 0.0,
             "engine": engine_spec(url)},
            {"type": "judge", "rubric": "rubric.yaml", "column": "s", "max_tokens": 4,
             "engine": engine_spec(url, judge_model)}]}

    def asked(server) -> tuple[int, int]:
        """(generate requests, judge requests) since the last reset."""
        judged = sum("Score:" in user_text(s.body) for s in server.seen)
        return len(server.seen) - judged, judged

    out = tmp_path / "run"
    with canned_server(echo) as server:
        path = write_recipe(tmp_path / "r.yaml", recipe(server.url))
        sf.run(path, out=out)
        assert asked(server) == (3, 3)
        server.reset(server.rule)
        sf.run(path, out=out)
        assert asked(server) == (0, 0)  # nothing changed: every stage reused

        (tmp_path / "gen.j2").write_text("Write one line about {{ topic }}.")
        run = sf.run(path, out=out)
        # new prompts, asked again; the canned texts did not change, so the judge
        # (recomputed) finds its prompts in the cache
        assert asked(server) == (3, 0)
        manifest = json.loads((out / "manifest.json").read_text())
        judge = {s["name"]: s for s in manifest["stages"]}["judge"]
        assert (judge["generated"], judge["cache_hits"]) == (0, 3)
        server.reset(server.rule)

        (tmp_path / "rubric.yaml").write_text("min_score: 0\nmax_score: 5\naspects:\n"
                                              "  value: 'Judge {{ text }}. Score:'\n")
        sf.run(path, out=out)
        assert asked(server) == (0, 3)  # generate reused, the judge asked again
        server.reset(server.rule)

        write_recipe(path, recipe(server.url, judge_model="judge-2"))
        run = sf.run(path, out=out)
        assert asked(server) == (0, 3)
    rows = run.data().to_pylist()
    assert [(r["text"], r["s"]) for r in rows] == [(f"text on {t}", 2.0) for t in TOPICS]
    assert {json.loads(r["meta"])["judge"]["judges"][0]["model"] for r in rows} == {"judge-2"}
