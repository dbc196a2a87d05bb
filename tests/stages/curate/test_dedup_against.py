"""`dedup` against what was kept before (issue #22; datatrove #370, #312): real run
directories made by `smolforge.run` on small `items` recipes of real text (the
standard library's docstrings), earlier runs and index files as `against`, an
index extended over three generations, settings that must match, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_dedup import distinct_docs, jaccard, make_ctx, normalize, run, within

import smolforge as sf
from smolforge.errors import RecipeError
from smolforge.stages.curate.dedup import Dedup

NEAR = re.compile(r"near-duplicate of (\S+) of earlier run '([^']+)' \(minhash: estimated Jaccard "
                  r"(\d\.\d\d) >= 0\.75, 5-word shingles\)")


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """Twelve docstrings of 150+ words, no two of them near-duplicates."""
    out = [d for d in distinct_docs(120) if len(d.split()) >= 150][:12]
    assert len(out) == 12
    return out


def edited(text: str, positions: tuple[int, ...] = (40, 90)) -> str:
    """`text` with a few words replaced: a near-duplicate, not an exact one."""
    words = text.split()
    for p in positions:
        words[p] = f"edited{p}"
    return " ".join(words)


def gen(tmp: Path, name: str, texts: list[str], **dedup) -> sf.Run:
    """One run: the texts as `items`, then `dedup` with the given fields."""
    recipe = {"name": name, "seed": 1, "shard_size": 3, "stages": [
        {"type": "items", "items": [{"text": t} for t in texts]}, {"type": "dedup", **dedup}]}
    return sf.run(recipe, tmp / name, allow_paths=[tmp])


def run_here(stage: Dedup, records: list[dict], tmp_path: Path):
    """`test_dedup.run` with a run directory of its own beside the earlier runs."""
    (tmp_path / "here").mkdir(exist_ok=True)
    return run(stage, records, tmp_path / "here")


def rejects(r: sf.Run) -> dict[str, str]:
    """Reject reason by the rejected record's text."""
    return {json.loads(x["record"])["text"]: x["reason"] for x in r.rejects().to_pylist()}


def ids_by_text(r: sf.Run) -> dict[str, str]:
    return {x["text"]: x["id"] for x in r.data().to_pylist()}


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_second_run_against_the_first_names_each_old_record(docs, tmp_path, method):
    first = gen(tmp_path, "gen1", docs[:6], method=method)
    old_id = ids_by_text(first)
    near = edited(docs[2])
    assert jaccard(docs[2], near) >= 0.85  # dropped with probability ~1 (docs/curation-dedup.md)
    variant = docs[3].upper().replace(".", " ;")  # exact after normalisation
    new = [docs[1], near, docs[7], variant, docs[8], docs[8]]
    second = gen(tmp_path, "gen2", new, method=method, against=[str(tmp_path / "gen1")])
    out = [x["text"] for x in second.data().to_pylist()]
    reasons = rejects(second)
    run = str(tmp_path / "gen1")
    assert reasons[docs[1]] == reasons[variant].replace(old_id[docs[3]], old_id[docs[1]])
    if method == "exact":
        assert reasons[docs[1]] == f"exact duplicate of {old_id[docs[1]]} of earlier run {run!r}"
        assert out == [near, docs[7], docs[8]]  # the edited one is not an exact duplicate
    else:
        assert out == [docs[7], docs[8]]
        m = NEAR.fullmatch(reasons[near])
        assert m and m[1] == old_id[docs[2]] and m[2] == run
        assert within(float(m[3]), jaccard(docs[2], near))
        assert NEAR.fullmatch(reasons[docs[1]]).group(1, 2) == (old_id[docs[1]], run)
    # within the new data, as today: the second copy names the first new one
    dup = second.rejects().to_pylist()[-1]
    assert dup["reason"].startswith(("exact duplicate of ", "near-duplicate of "))
    assert dup["reason"].split()[-1 if method == "exact" else 2] == ids_by_text(second)[docs[8]]
    assert "earlier run" not in dup["reason"]
    assert not set(out) & set(docs[:6])  # old records are never output


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_against_unrelated_data_changes_nothing_within_the_new_data(docs, tmp_path, method):
    """Same kept set and reasons with `against` empty, or naming a run that shares nothing."""
    other = gen(tmp_path, "other", [" ".join(f"w{i}x{k}" for k in range(80)) for i in range(5)])
    records = [{"id": f"d{i}", "text": t, "meta": {}} for i, t in
               enumerate([*docs[:8], docs[2], edited(docs[4]), docs[2].lower(), edited(docs[5], (7,))])]
    today = run_here(Dedup(method=method), records, tmp_path)[:2]
    assert today[1]  # there is something to drop
    assert run_here(Dedup(method=method, against=[]), records, tmp_path)[:2] == today
    assert run_here(Dedup(method=method, against=[str(other.path)]), records, tmp_path)[:2] == today


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_an_index_extended_over_three_generations_never_readmits_a_duplicate(docs, tmp_path, method):
    g1 = gen(tmp_path, "g1", docs[:4], method=method, save_index="index/dedup.parquet")
    g2 = gen(tmp_path, "g2", [docs[0], docs[4], docs[5], docs[5]], method=method,
             against=[str(g1.path / "index/dedup.parquet")], save_index="index/dedup.parquet")
    # generation 3 names only generation 2's index, which holds generation 1 too
    g3 = gen(tmp_path, "g3", [docs[1], docs[4].lower(), docs[6], docs[3]], method=method,
             against=[str(g2.path / "index/dedup.parquet")], save_index="index/dedup.parquet")
    assert [x["text"] for x in g2.data().to_pylist()] == [docs[4], docs[5]]
    assert [x["text"] for x in g3.data().to_pylist()] == [docs[6]]
    by = {**{t: (str(g1.path), i) for t, i in ids_by_text(g1).items()},
          **{t: (str(g2.path), i) for t, i in ids_by_text(g2).items()}}
    for text, reason in rejects(g3).items():
        src = docs[4] if text == docs[4].lower() else text
        run, rid = by[src]
        assert f"{rid} of earlier run {run!r}" in reason
    index = pq.read_table(g3.path / "index/dedup.parquet")
    expected = [(str(g.path), x["id"]) for g in (g1, g2, g3) for x in g.data().to_pylist()]
    assert list(zip(index["run"].to_pylist(), index["id"].to_pylist())) == expected
    kept = [normalize(x["text"]) for g in (g1, g2, g3) for x in g.data().to_pylist()]
    assert len(kept) == len(set(kept)) == 7
    meta = json.loads(index.schema.metadata[b"smolforge.dedup_index"])
    assert meta["method"] == method and meta["normalization"]
    assert json.loads((g3.path / "stages/01-dedup/_DONE").read_text())["artefacts"]["index/dedup.parquet"]


@pytest.mark.parametrize(("built", "now", "field"), [
    ({"method": "minhash"}, {"method": "minhash", "ngram": 3}, "ngram"),
    ({"method": "minhash"}, {"method": "minhash", "unit": "char"}, "unit"),
    ({"method": "minhash"}, {"method": "minhash", "bands": 16, "rows": 7}, "bands"),
    ({"method": "minhash"}, {"method": "minhash", "seed": 2}, "seed"),
    ({"method": "exact"}, {"method": "minhash"}, "method"),
])
def test_an_index_built_with_other_settings_is_an_error_naming_the_field(docs, tmp_path, built, now, field):
    g1 = gen(tmp_path, "g1", docs[:3], save_index="dedup.parquet", **built)
    with pytest.raises(ValueError, match=rf"built with {field}: .*this stage has {field}: "):
        run_here(Dedup(against=[str(g1.path / "dedup.parquet")], **now), [{"id": "a", "text": docs[0]}], tmp_path)


def test_against_a_file_that_is_no_index_or_no_run(docs, tmp_path):
    pq.write_table(gen(tmp_path, "g1", docs[:2]).data(), tmp_path / "x.parquet")  # data, no index
    with pytest.raises(ValueError, match=r"'.*x\.parquet' is not a dedup index"):
        run_here(Dedup(against=[str(tmp_path / "x.parquet")]), [{"id": "a", "text": "t"}], tmp_path)
    (tmp_path / "notes.txt").write_text("not parquet")
    with pytest.raises(ValueError, match=r"'.*notes\.txt' is not a dedup index nor a run directory"):
        run_here(Dedup(against=[str(tmp_path / "notes.txt")]), [{"id": "a", "text": "t"}], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"against\[0\]: .* is neither a smolforge run"):
        run_here(Dedup(against=[str(tmp_path)]), [{"id": "a", "text": "t"}], tmp_path)
    with pytest.raises(ValueError, match=r"against\[0\]: .* is this run's own directory"):
        run(Dedup(against=[str(tmp_path / "g1")]), [{"id": "a", "text": "t"}], tmp_path / "g1")
    with pytest.raises(ValueError, match="save_index must stay inside the run directory"):
        Dedup(save_index="../outside.parquet")


def test_against_is_a_path_the_recipe_policy_checks(tmp_path):
    recipe = {"name": "x", "stages": [{"type": "items", "items": [{"text": "a"}]},
                                      {"type": "dedup", "against": [str(tmp_path / "elsewhere")]}]}
    (tmp_path / "recipe").mkdir()
    with pytest.raises(RecipeError) as e:
        sf.Recipe.from_dict(recipe, base_dir=tmp_path / "recipe")
    assert "stages[1].against[0]" in str(e.value) and "outside" in str(e.value)


def test_resume_reruns_the_stage_only_when_the_earlier_run_changed(docs, tmp_path):
    gen(tmp_path, "gen1", docs[:3], method="minhash")
    against = {"method": "minhash", "against": [str(tmp_path / "gen1")], "save_index": "idx.parquet"}
    second = gen(tmp_path, "gen2", [docs[1], docs[4], docs[5]], **against)
    done = second.path / "stages/01-dedup/_DONE"
    before = done.stat().st_mtime_ns
    gen(tmp_path, "gen1", docs[:3], method="minhash")  # resumed, data rewritten unchanged
    assert gen(tmp_path, "gen2", [docs[1], docs[4], docs[5]], **against).data().num_rows == 2
    assert done.stat().st_mtime_ns == before  # nothing recomputed
    (second.path / "idx.parquet").unlink()  # a lost artefact is recomputed
    gen(tmp_path, "gen2", [docs[1], docs[4], docs[5]], **against)
    assert (second.path / "idx.parquet").is_file() and done.stat().st_mtime_ns != before
    # the earlier run changes: it now holds docs[4] too, and the stage drops it
    gen(tmp_path, "gen1", [*docs[:3], docs[4]], method="minhash")
    again = gen(tmp_path, "gen2", [docs[1], docs[4], docs[5]], **against)
    assert [x["text"] for x in again.data().to_pylist()] == [docs[5]]
    assert NEAR.fullmatch(rejects(again)[docs[4]])[2] == str(tmp_path / "gen1")


def test_exact_index_holds_hashes_only(docs, tmp_path):
    """Memory and disk: the old side is digests and ids, never texts."""
    g1 = gen(tmp_path, "g1", docs[:5], save_index="dedup.parquet")
    index = pq.read_table(g1.path / "dedup.parquet")
    assert index.column_names == ["run", "id", "digest"]
    assert {len(d) for d in index["digest"].to_pylist()} == {16}
    ctx = make_ctx(tmp_path / "here")
    from smolforge.stages.curate import dedup_index

    old = dedup_index.load_exact(Dedup(against=[str(g1.path)]), ctx)
    assert old.n == 5 and len(old.digests) == 5
    assert old.label(0) == f"{index['id'][0].as_py()} of earlier run {str(g1.path)!r}"


def test_components_and_globs_against_earlier_runs(docs, tmp_path):
    """`clusters: components` joins the old records to the graph; a glob names
    several runs (each reject names the one its old record came from)."""
    g1 = gen(tmp_path, "gen1", docs[:2], method="minhash")
    g2 = gen(tmp_path, "gen2", docs[2:4], method="minhash")
    third = gen(tmp_path, "gen3", [edited(docs[0]), docs[5], docs[3], docs[5].lower()],
                method="minhash", clusters="components", against=[str(tmp_path / "gen[12]")])
    assert [x["text"] for x in third.data().to_pylist()] == [docs[5]]
    reasons = rejects(third)
    m = NEAR.fullmatch(reasons[edited(docs[0])])
    assert m.group(1, 2) == (ids_by_text(g1)[docs[0]], str(g1.path))
    assert NEAR.fullmatch(reasons[docs[3]]).group(1, 2) == (ids_by_text(g2)[docs[3]], str(g2.path))
    assert reasons[docs[5].lower()].startswith(f"near-duplicate of {ids_by_text(third)[docs[5]]} (")


def test_the_recipes_of_the_docs_run_as_shown(docs, tmp_path):
    """docs/curation-dedup.md's two generations, from a recipe folder, as the CLI runs them."""
    import yaml
    from conftest import ROOT

    page = (ROOT / "docs/curation-dedup.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(# generation .*?)```", page, re.S)]
    assert len(blocks) == 2
    (tmp_path / "gen1.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[:3]))
    (tmp_path / "gen2.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                                 [edited(docs[2]), docs[4]]))
    runs = []
    for k, block in enumerate(blocks, 1):
        (tmp_path / f"gen{k}.yaml").write_text(yaml.safe_dump({"name": f"gen{k}", **block}))
        runs.append(sf.run(str(tmp_path / f"gen{k}.yaml"), tmp_path / "runs" / f"gen{k}"))
    assert [x["text"] for x in runs[1].data().to_pylist()] == [docs[4]]
    m = NEAR.fullmatch(rejects(runs[1])[edited(docs[2])])
    # an index names each record's run as that run was given its directory
    assert m.group(1, 2) == (ids_by_text(runs[0])[docs[2]], str(tmp_path / "runs" / "gen1"))
    index = pq.read_table(runs[1].path / "index/dedup.parquet")
    assert index.num_rows == 4


def test_semantic_against_an_earlier_run_and_its_index(tmp_path):
    """Embeddings (the bundled all-MiniLM-L6-v2) stand for the old records: a
    run directory is embedded, an index holds them; the model must match."""
    pytest.importorskip("sentence_transformers")
    g1 = gen(tmp_path, "g1", ["Return the number of items in the container.",
                              "Compute the greatest common divisor of two integers."],
             method="semantic", save_index="emb.parquet")
    new = ["Return the number of items in a container.", "Open the file and return a stream.",
           "Compute the greatest common divisor of two integers!"]
    for against in ([str(g1.path)], [str(g1.path / "emb.parquet")]):
        g2 = gen(tmp_path, f"g2-{len(against[0])}", new, method="semantic", against=against)
        assert [x["text"] for x in g2.data().to_pylist()] == [new[1]]
        old_id = ids_by_text(g1)
        for text, base in ((new[0], "Return the number of items in the container."),
                           (new[2], "Compute the greatest common divisor of two integers.")):
            m = re.fullmatch(r"semantic duplicate of (\S+) of earlier run '([^']+)' \(cosine (\S+) "
                             r">= 0\.95, all-MiniLM-L6-v2\)", rejects(g2)[text])
            assert m and m.group(1, 2) == (old_id[base], str(g1.path)) and float(m[3]) >= 0.95
    index = pq.read_table(g1.path / "emb.parquet")
    assert index.schema.field("embedding").type.list_size == 384
    with pytest.raises(ValueError, match="built with model: 'all-MiniLM-L6-v2', this stage has model: 'other'"):
        run_here(Dedup(method="semantic", model="other", against=[str(g1.path / "emb.parquet")]),
            [{"id": "a", "text": "x"}], tmp_path)
