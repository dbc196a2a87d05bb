"""Dedup stage: exact, MinHash near-duplicates planted at known Jaccard similarities
in real text (the Python standard library's docstrings), and semantic dedup with
the real all-MiniLM-L6-v2 from its pip package."""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import numpy as np
import pytest

from smolforge import corpora
from smolforge.context import EnginePool, StageContext
from smolforge.minhash import MinHasher, connected_min
from smolforge.stages.base import Shards
from smolforge.stages.dedup import Dedup
from smolforge.text import normalize


@functools.lru_cache(maxsize=1)
def stdlib_docstrings(min_words: int = 60) -> tuple[str, ...]:
    """Docstrings of the top-level stdlib modules, in a fixed order."""
    return tuple(d for d in corpora.stdlib_docstrings("*.py") if len(d.split()) >= min_words)


def shingles(text: str, n: int = 5) -> set[str]:
    w = normalize(text).split()
    return {" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def distinct_docs(k: int) -> list[str]:
    """k docstrings with no near-duplicate among them (pairwise Jaccard < 0.3)."""
    chosen: list[str] = []
    sets: list[set[str]] = []
    for doc in stdlib_docstrings():
        s = shingles(doc)
        if all(len(s & t) / len(s | t) < 0.3 for t in sets):
            chosen.append(doc)
            sets.append(s)
            if len(chosen) == k:
                break
    assert len(chosen) == k, "not enough stdlib docstrings"
    return chosen


def plant(text: str, target: float, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    """A variant of `text` whose word-5-gram Jaccard with it is within 0.02 below
    `target`: random words replaced one at a time (a replacement that overshoots
    is undone), then case and punctuation changed, which normalisation ignores."""
    words = text.split()
    j = 1.0
    tries = 0
    while j > target and tries < 5000:
        tries += 1
        pos = rng.randrange(len(words))
        old = words[pos]
        words[pos] = rng.choice(vocab)
        j_new = jaccard(text, " ".join(words))
        if j_new < target - 0.02:
            words[pos] = old
        else:
            j = j_new
    out = " ".join(w.upper() if rng.random() < 0.1 else w for w in words)
    out = re.sub(r"\.", " ;", out)
    return out, jaccard(text, out)


def make_ctx(tmp_path: Path) -> StageContext:
    return StageContext(
        recipe_name="test", recipe_dir=tmp_path, seed=0, default_engine="llamacpp",
        pool=EnginePool(), cache=None, stage_name="dedup", run_dir=tmp_path,
    )


class ListShards(Shards):
    """Shards from lists of records; remembers which columns each read asked for."""

    def __init__(self, records: list[dict], shard_size: int):
        self.parts = [records[i : i + shard_size] for i in range(0, len(records), shard_size)]
        self.reads: list[list[str] | None] = []

        def load(i: int, columns: list[str] | None) -> list[dict]:
            self.reads.append(columns)
            recs = self.parts[i]
            if columns is None:
                return [dict(r) for r in recs]
            return [{c: r[c] for c in columns if c in r} for r in recs]

        super().__init__(load, len(self.parts))


def run(stage: Dedup, records: list[dict], tmp_path: Path, shard_size: int = 7):
    shards = ListShards(records, shard_size)
    kept, rejected = [], []
    for _i, res in stage.process_all(shards, make_ctx(tmp_path)):
        kept += res.kept
        rejected += res.rejected
    return kept, {r.record["id"]: r.reason for r in rejected}, shards


@pytest.fixture(scope="module")
def planted():
    """60 distinct docstrings, then variants of 30 of them at known Jaccard levels."""
    rng = random.Random(5)
    base = distinct_docs(60)
    vocab = sorted({w for d in stdlib_docstrings() for w in d.split() if w.isalpha()})
    records = [{"id": f"d{i}", "text": t, "meta": {}} for i, t in enumerate(base)]
    pairs = []  # (base id, variant id, true Jaccard)
    levels = [1.0, 0.95, 0.9, 0.85, 0.5, 0.3]
    for k in range(30):
        target = levels[k % len(levels)]
        text, j = plant(base[k], target, rng, vocab)
        vid = f"v{k}"
        records.append({"id": vid, "text": text, "meta": {}})
        pairs.append((f"d{k}", vid, j))
    rng.shuffle(records[60:])
    return records, pairs


def test_minhash_finds_planted_near_duplicates(planted, tmp_path):
    records, pairs = planted
    kept, reasons, shards = run(Dedup(method="minhash"), records, tmp_path)
    for base_id, vid, j in pairs:
        if j >= 0.85:
            assert vid in reasons, f"{vid} (Jaccard {j:.2f} to {base_id}) not found"
            assert reasons[vid].startswith(f"near-duplicate of {base_id} ")
            m = re.search(r"estimated Jaccard (\d\.\d\d)", reasons[vid])
            assert m and abs(float(m.group(1)) - j) < 0.15, reasons[vid]
        elif j <= 0.55:
            assert vid not in reasons, f"{vid} (Jaccard {j:.2f}) wrongly dropped: {reasons[vid]}"
    # every original is kept: each came first in input order
    assert not any(r.startswith("d") for r in reasons)
    assert len(kept) + len(reasons) == len(records)
    # pass 1 read only ids and the compared column; pass 2 whole records
    assert shards.reads[: len(shards)] == [["id", "text"]] * len(shards)
    assert shards.reads[len(shards) :] == [None] * len(shards)


def test_minhash_keeps_first_in_input_order_and_is_deterministic(planted, tmp_path):
    records, pairs = planted
    first = run(Dedup(method="minhash"), records, tmp_path)[1]
    assert run(Dedup(method="minhash"), records, tmp_path, shard_size=50)[1] == first
    # put variants before their originals: now the variants are kept
    flipped = records[60:] + records[:60]
    reasons = run(Dedup(method="minhash"), flipped, tmp_path)[1]
    for base_id, vid, j in pairs:
        if j >= 0.9:
            assert vid not in reasons
            assert reasons[base_id].startswith(f"near-duplicate of {vid} ")


def test_minhash_threshold_zero_is_plain_lsh(planted, tmp_path):
    records, pairs = planted
    strict = run(Dedup(method="minhash", threshold=0.97), records, tmp_path)[1]
    plain = run(Dedup(method="minhash", threshold=0), records, tmp_path)[1]
    found = {vid for _b, vid, j in pairs if j >= 0.85}
    assert found <= set(plain)
    assert set(strict) < set(plain)  # verification drops candidates below 0.97
    assert all("LSH band match" in plain[v] for v in plain)


def test_minhash_char_shingles(planted, tmp_path):
    records, pairs = planted
    reasons = run(Dedup(method="minhash", unit="char", ngram=7), records, tmp_path)[1]
    for _base_id, vid, j in pairs:
        if j >= 0.95:
            assert vid in reasons and "7-char shingles" in reasons[vid]
        if j <= 0.3:
            assert vid not in reasons


def test_minhash_chains_name_the_link(tmp_path):
    """A ~ C and B ~ C but A !~ B: B is dropped as a duplicate of A via C."""
    words = " ".join(stdlib_docstrings()[0].split()[:60]).split()
    a = " ".join(words[:40])
    c = " ".join(words[4:44])
    b = " ".join(words[8:48])
    records = [{"id": i, "text": t} for i, t in [("a", a), ("b", b), ("c", c)]]
    j_ab, j_ac, j_bc = jaccard(a, b), jaccard(a, c), jaccard(b, c)
    assert j_ab < 0.7 < min(j_ac, j_bc)
    reasons = run(Dedup(method="minhash", threshold=0.7), records, tmp_path)[1]
    assert set(reasons) == {"b", "c"}
    assert reasons["c"].startswith("near-duplicate of a (")
    assert reasons["b"].startswith("near-duplicate of a via c (")


def test_minhash_empty_texts_are_never_near_duplicates(tmp_path):
    records = [{"id": str(i), "text": t} for i, t in enumerate(["", "  ...  ", None, "one two"])]
    kept, reasons, _ = run(Dedup(method="minhash"), records, tmp_path)
    assert not reasons and len(kept) == 4


def test_signature_estimates_match_true_jaccard(planted):
    records, pairs = planted
    text = {r["id"]: r["text"] for r in records}
    hasher = MinHasher(num_perm=256)
    errs = []
    for base_id, vid, j in pairs:
        sig, has = hasher.signatures([text[base_id], text[vid]])
        assert has.all()
        errs.append(float((sig[0] == sig[1]).mean()) - j)
    # unbiased, with the binomial spread sqrt(J(1-J)/256) <= 0.031
    assert abs(np.mean(errs)) < 0.03 and np.std(errs) < 0.05


def test_connected_min_labels_components_by_smallest_member():
    a = np.array([5, 1, 7, 8])
    b = np.array([3, 5, 8, 9])
    labels = connected_min(10, a, b)
    assert labels.tolist() == [0, 1, 2, 1, 4, 1, 6, 7, 7, 7]


def test_exact_dedup_unchanged(tmp_path):
    records = [{"id": "x", "text": "Hello, world!"}, {"id": "y", "text": "hello   WORLD"},
               {"id": "z", "text": "hello there"}]
    kept, reasons, _ = run(Dedup(), records, tmp_path)
    assert [r["id"] for r in kept] == ["x", "z"]
    assert reasons == {"y": "exact duplicate of x"}


def test_semantic_dedup_with_bundled_minilm(tmp_path):
    texts = [
        ("a", "Return the number of items in the container."),
        ("b", "Return the number of items in a container."),
        ("c", "Open the file and return a stream, or raise OSError on failure."),
        ("d", "Return the number of items in the container!"),
        ("e", "Compute the greatest common divisor of two integers."),
        ("f", "Return the number of elements in the container."),  # cosine ~0.91 to "a"
    ]
    records = [{"id": i, "text": t} for i, t in texts]
    kept, reasons, _ = run(Dedup(method="semantic", batch_size=2), records, tmp_path, shard_size=3)
    assert [r["id"] for r in kept] == ["a", "c", "e", "f"]
    assert set(reasons) == {"b", "d"}
    for rid in ("b", "d"):
        m = re.fullmatch(r"semantic duplicate of a \(cosine (\S+) >= 0\.95, all-MiniLM-L6-v2\)",
                         reasons[rid])
        assert m and 0.95 <= float(m.group(1)) <= 1.0001, reasons[rid]
    # a looser threshold also drops the paraphrase "f"; a stricter one drops nothing
    reasons = run(Dedup(method="semantic", threshold=0.85), records, tmp_path)[1]
    assert set(reasons) == {"b", "d", "f"}
    assert not run(Dedup(method="semantic", threshold=0.995), records, tmp_path)[1]
