"""Dedup stage: exact, MinHash near-duplicates planted at known Jaccard similarities
in real text (the Python standard library's docstrings), and semantic dedup with
the real all-MiniLM-L6-v2 from its pip package.

True Jaccard similarities are computed exactly here, with a normalisation written
for the test (not `smolforge.text.normalize`). Estimates are checked against the
binomial spread of the stage's own estimator: 112 permutations (14 bands x 8
rows) compared on 16 bits, so an estimate of a pair with Jaccard J has standard
deviation sqrt(J(1-J)/112) (plus a chance-collision bias of (1-J)/65536)."""

from __future__ import annotations

import functools
import math
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import stage_ctx

from smolforge import corpora
from smolforge.context import StageContext
from smolforge.stages.base import Shards
from smolforge.stages.curate.dedup import Dedup
from smolforge.text.minhash import MinHasher, MinHashLSH, connected_min, estimated_jaccard

NUM_PERM = 112  # the stage's default 14 bands x 8 rows


def normalize(text: str) -> str:
    """The test's own folding: NFKC, lower case, every run of characters that are
    not letters or digits becomes one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c if c.isalnum() else " " for c in text).strip()


def sigma(j: float, num_perm: int = NUM_PERM) -> float:
    """Standard deviation of a MinHash estimate of Jaccard j."""
    return math.sqrt(j * (1 - j) / num_perm)


def within(est: float, j: float, k: float = 4.0) -> bool:
    """est is within k standard deviations of j (and the 2-decimal rounding)."""
    return abs(est - j) <= k * sigma(j) + 0.005 + 1e-9


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
    return stage_ctx(tmp_path, stage="dedup", run_dir=tmp_path)


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
        kept += res.records()
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
            m = re.fullmatch(
                rf"near-duplicate of {base_id} \(minhash: estimated Jaccard (\d\.\d\d) "
                r">= 0\.75, 5-word shingles\)", reasons[vid])
            # 4 standard deviations of the 112-permutation estimate: <= 0.14 at J 0.85,
            # 0.11 at 0.9, 0.08 at 0.95, exact at 1.0
            assert m and within(float(m.group(1)), j), (reasons[vid], j)
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


def shifted(words: list[str], shift: int, length: int) -> str:
    return " ".join(words[shift : shift + length])


def chain_texts() -> tuple[str, str, str]:
    """a, c, b: windows of one docstring shifted by 0, s, 2s words, so that
    J(a, c) and J(c, b) ~ 0.67 but J(a, b) ~ 0.43."""
    words = next(d for d in stdlib_docstrings() if len(d.split()) >= 120).split()
    return shifted(words, 0, 100), shifted(words, 19, 100), shifted(words, 38, 100)


# 28 bands x 4 rows (112 permutations): a pair at J 0.67 shares a band with
# probability 0.998, so the chain is found by LSH and decided by verification.
CHAIN = {"method": "minhash", "threshold": 0.55, "bands": 28, "rows": 4}


def test_minhash_keep_first_reject_names_a_kept_record_it_duplicates(tmp_path):
    """A ~ C and C ~ B but not A ~ B: C is dropped for A; B is kept, because the
    only record it duplicates (C) was dropped and A is too far from it."""
    a, c, b = chain_texts()
    j_ac, j_cb, j_ab = jaccard(a, c), jaccard(c, b), jaccard(a, b)
    # each side of the threshold by > 2 standard deviations (Jaccard distance is a
    # metric: J(a, b) >= J(a, c) + J(c, b) - 1 bounds how far a chain can go)
    assert j_ab + 2 * sigma(j_ab) < 0.55 < min(j_ac, j_cb) - 2 * sigma(j_ac), (j_ac, j_cb, j_ab)
    records = [{"id": i, "text": t} for i, t in [("a", a), ("c", c), ("b", b)]]
    kept, reasons, _ = run(Dedup(**CHAIN), records, tmp_path)
    assert [r["id"] for r in kept] == ["a", "b"]
    assert set(reasons) == {"c"}
    m = re.fullmatch(r"near-duplicate of a \(minhash: estimated Jaccard (\S+) >= 0\.55, "
                     r"5-word shingles\)", reasons["c"])
    assert m and within(float(m.group(1)), j_ac), (reasons["c"], j_ac)


def test_minhash_components_drop_the_whole_chain(tmp_path):
    """clusters: components keeps only the first of a connected component; the
    reason says through which record B joined it."""
    a, c, b = chain_texts()
    records = [{"id": i, "text": t} for i, t in [("a", a), ("c", c), ("b", b)]]
    kept, reasons, _ = run(Dedup(**CHAIN, clusters="components"), records, tmp_path)
    assert [r["id"] for r in kept] == ["a"]
    assert reasons["c"].startswith("near-duplicate of a (minhash: estimated Jaccard ")
    m = re.fullmatch(r"near-duplicate of a via c \(minhash: estimated Jaccard (\S+) >= 0\.55 "
                     r"with c, (\S+) with a, 5-word shingles\)", reasons["b"])
    assert m, reasons["b"]
    assert within(float(m.group(1)), jaccard(c, b)) and within(float(m.group(2)), jaccard(a, b))
    assert float(m.group(2)) < 0.55  # b is dropped for a record it does not duplicate


def test_minhash_reject_names_the_most_similar_kept_record(tmp_path):
    """x and y are kept (J 0.45); z duplicates both, y far more (0.81 vs 0.58)."""
    words = next(d for d in stdlib_docstrings() if len(d.split()) >= 120).split()
    x, y, z = shifted(words, 0, 100), shifted(words, 38, 100), shifted(words, 29, 100)
    assert jaccard(x, y) < 0.5 and jaccard(z, y) - jaccard(z, x) > 0.2  # ~3.7 sd of the gap
    records = [{"id": i, "text": t} for i, t in [("x", x), ("y", y), ("z", z)]]
    reasons = run(Dedup(**CHAIN), records, tmp_path)[1]
    assert set(reasons) == {"z"} and reasons["z"].startswith("near-duplicate of y ("), reasons


def test_minhash_every_reject_names_a_kept_record_above_threshold(planted, tmp_path):
    """On the planted corpus, with both cluster modes: in keep_first every named
    record is kept and truly similar (exact Jaccard within 4 sd of >= 0.75)."""
    records, _pairs = planted
    text = {r["id"]: r["text"] for r in records}
    kept, reasons, _ = run(Dedup(method="minhash", threshold=0.75), records, tmp_path)
    kept_ids = {r["id"] for r in kept}
    assert len(reasons) >= 15
    for rid, reason in reasons.items():
        m = re.fullmatch(r"near-duplicate of (\S+) \(minhash: estimated Jaccard (\S+) >= 0\.75, "
                         r"5-word shingles\)", reason)
        assert m, reason
        other, est = m.group(1), float(m.group(2))
        assert other in kept_ids and est >= 0.75
        j = jaccard(text[rid], text[other])
        assert within(est, j), (rid, other, est, j)


def test_minhash_empty_texts_are_never_near_duplicates(tmp_path):
    records = [{"id": str(i), "text": t} for i, t in enumerate(["", "  ...  ", None, "one two"])]
    kept, reasons, _ = run(Dedup(method="minhash"), records, tmp_path)
    assert not reasons and len(kept) == 4


def test_stage_estimator_is_unbiased_with_binomial_spread():
    """The stage's configuration (112 permutations, 16-bit signatures, the same
    comparison `estimated_jaccard` makes) against exact Jaccard on 200 pairs of
    real text at similarities from 0.2 to 1: the mean error is within 3 standard
    errors of 0 and the squared errors match the binomial variance."""
    docs = [d.split() for d in stdlib_docstrings(min_words=120)][:200]
    assert len(docs) == 200
    rng = random.Random(11)
    texts, truth = [], []
    for words in docs:
        shift = rng.randrange(0, 60)
        a, b = " ".join(words[:100]), " ".join(words[shift : shift + 100])
        texts += [a, b]
        truth.append(jaccard(a, b))
    lsh = MinHashLSH(14, 8, MinHasher(num_perm=NUM_PERM))
    lsh.add(texts)
    idx = np.arange(0, len(texts), 2)
    est = estimated_jaccard(lsh.signatures16(), idx, idx + 1).astype(float)
    j = np.array(truth)
    assert j.min() < 0.3 and j.max() == 1.0
    var = j * (1 - j) / NUM_PERM
    err = est - j
    assert abs(err.mean()) <= 3 * math.sqrt(var.sum()) / len(j), err.mean()
    spread = var > 0
    # mean of err^2/var is chi-square/k: 1 +- 4 * sqrt(2/k)
    ratio = float((err[spread] ** 2 / var[spread]).mean())
    assert abs(ratio - 1) <= 4 * math.sqrt(2 / spread.sum()), ratio
    assert np.all(err[~spread] == 0)  # identical texts estimate exactly 1


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
