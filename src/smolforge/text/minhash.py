"""MinHash signatures, LSH banding and clustering, vectorised with numpy.

Why numpy over whole batches: per-shingle Python work (tokenise, build n-gram
strings, hash each) is what makes MinHash slow in pure-Python pipelines. Here a
batch of documents is normalised, joined and turned into one array of code
points; every shingle (a run of n words or n characters) is then a slice of that
array, hashed in one step with a polynomial prefix hash (`segment_hashes`). The
permutations are the multiply-add family h_k(x) = a_k*x + b_k mod 2^32 (a_k odd)
applied to well-mixed 32-bit shingle hashes, one array operation per permutation
for all shingles of the batch, and a `minimum.reduceat` per document.

Memory per document: `bands` 64-bit band keys and a `num_perm` x 16-bit copy of
the signature (b-bit MinHash, Li & Koenig 2010: the low 16 bits of each minimum,
whose chance collision rate of 2^-16 is negligible) for verifying candidates.
Texts are never held.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Unit = Literal["word", "char"]

_U64 = np.uint64
_BASE = 0x100000001B3  # odd, so invertible mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_SPACE = 32


class _Powers:
    """BASE^i and BASE^-i mod 2^64, grown on demand (shared by all hashers)."""

    pows = np.ones(1, dtype=_U64)
    invs = np.ones(1, dtype=_U64)

    @classmethod
    def upto(cls, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(cls.pows) < n:
            size = max(n, 2 * len(cls.pows))
            cls.pows = np.cumprod(np.full(size, _BASE, dtype=_U64), dtype=_U64) * _U64(
                _BASE_INV
            )
            cls.invs = np.cumprod(np.full(size, _BASE_INV, dtype=_U64), dtype=_U64) * _U64(
                _BASE
            )
        return cls.pows, cls.invs


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over every output bit."""
    z = z ^ (z >> _U64(30))
    z = z * _U64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> _U64(27))
    z = z * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


_WORD_TABLE: np.ndarray | None = None


def _word_table() -> np.ndarray:
    """is_word[c] for every BMP code point: alphanumeric, i.e. `\\w` less `_`,
    the characters `smolforge.text.normalize` keeps."""
    global _WORD_TABLE
    if _WORD_TABLE is None:
        _WORD_TABLE = np.array([chr(c).isalnum() for c in range(0x10000)], dtype=bool)
    return _WORD_TABLE


@dataclass
class Batch:
    """A batch of documents as one array of NFKC, lower-cased code points,
    documents separated by a 0. Word characters are what `text.normalize` keeps;
    everything else separates words, so shingles equal those of normalised text."""

    codes: np.ndarray  # uint32
    is_word: np.ndarray  # bool per code point
    n_docs: int

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> Batch:
        # Per document: NFKC and lower() have fast paths for ASCII text (folding the
        # joined batch at once is 10x slower: one non-ASCII character anywhere
        # sends the whole string down the slow path).
        parts = [unicodedata.normalize("NFKC", t).lower() for t in texts]
        joined = "\x00".join(parts)
        if joined.count("\x00") != max(0, len(texts) - 1):  # NULs inside a text
            joined = "\x00".join(p.replace("\x00", " ") for p in parts)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        is_word = _word_table()[np.minimum(codes, 0xFFFF)]
        astral = codes > 0xFFFF
        if astral.any():
            for c in np.unique(codes[astral]).tolist():
                is_word[codes == c] = chr(c).isalnum()
        return cls(codes, is_word, len(texts))

    def __len__(self) -> int:
        return self.n_docs

    def _doc_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.flatnonzero(self.codes == 0), positions, side="right")

    def words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, document) of every word (maximal run of word characters)."""
        padded = np.zeros(len(self.codes) + 2, dtype=np.int8)
        padded[1:-1] = self.is_word
        edges = np.diff(padded)
        wstart = np.flatnonzero(edges == 1)
        wend = np.flatnonzero(edges == -1)
        return wstart, wend, self._doc_of(wstart)

    def folded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, start, length) of the normalised text of each document: runs of
        non-word characters folded to one space, ends stripped."""
        n = len(self.codes)
        is_word = np.r_[self.is_word, False]
        other = ~(self.is_word | (self.codes == 0))
        # keep a non-word run as one space only between two words (strips the ends)
        nonother = np.where(other, n, np.arange(n))
        next_nonother = np.minimum.accumulate(nonother[::-1])[::-1]
        inner = other & is_word[next_nonother] & np.r_[False, self.is_word[:-1]]
        keep = ~other | inner
        codes = np.where(other, np.uint32(_SPACE), self.codes)[keep]
        bounds = np.r_[-1, np.flatnonzero(codes == 0), len(codes)]
        return codes, bounds[:-1] + 1, bounds[1:] - bounds[:-1] - 1


def prefix_hashes(values: np.ndarray) -> np.ndarray:
    """P[i] = sum_{j<i} v_j * BASE^j mod 2^64, so any slice hashes in O(1)."""
    pows, _ = _Powers.upto(len(values) + 1)
    out = np.zeros(len(values) + 1, dtype=_U64)
    np.cumsum(values.astype(_U64) * pows[: len(values)], out=out[1:])
    return out


def segment_hashes(prefix: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """64-bit hash of values[start:end] for many slices at once."""
    _, invs = _Powers.upto(len(prefix))
    return mix64((prefix[end] - prefix[start]) * invs[start])


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """[0..c0), [0..c1), ... concatenated."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - offsets


def _windows(lengths: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document, offset, size) of every n-gram window over sequences of the
    given lengths; a sequence shorter than n is one window of all it has."""
    counts = np.where(lengths >= ngram, lengths - ngram + 1, lengths > 0)
    doc = np.repeat(np.arange(len(lengths)), counts)
    offset = _ragged_arange(counts)
    return doc, offset, np.minimum(ngram, lengths[doc])


def shingle_hashes(batch: Batch, ngram: int, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash, document) of every shingle, grouped by document in order.
    Word shingles hash the sequence of word hashes, so the characters between
    words never matter; an empty document has no shingle."""
    if unit == "char":
        codes, start, length = batch.folded()
        doc, offset, size = _windows(length, ngram)
        s = start[doc] + offset
        return segment_hashes(prefix_hashes(codes), s, s + size), doc
    wstart, wend, wdoc = batch.words()
    word_h = segment_hashes(prefix_hashes(batch.codes), wstart, wend)
    nwords = np.bincount(wdoc, minlength=batch.n_docs)
    doc, offset, size = _windows(nwords, ngram)
    i = (np.cumsum(nwords) - nwords)[doc] + offset
    return segment_hashes(prefix_hashes(word_h), i, i + size), doc


@dataclass
class MinHasher:
    """Computes MinHash signatures of `num_perm` 32-bit minima per document."""

    num_perm: int = 112
    ngram: int = 5
    unit: Unit = "word"
    seed: int = 0
    _a: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._a = rng.integers(0, 1 << 32, self.num_perm, dtype=np.uint32) | np.uint32(1)
        self._b = rng.integers(0, 1 << 32, self.num_perm, dtype=np.uint32)

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 hash, document) of every shingle of the batch."""
        h, doc = shingle_hashes(Batch.from_texts(texts), self.ngram, self.unit)
        return (h >> _U64(32)).astype(np.uint32), doc

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [n, num_perm], has_shingles bool [n]). A document
        with no shingle (no words) gets all-ones and `has_shingles` False."""
        n = len(texts)
        x, doc = self.shingle_hashes(texts)
        sig = np.full((self.num_perm, n), 0xFFFFFFFF, dtype=np.uint32)
        has = np.zeros(n, dtype=bool)
        if len(x):
            first = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
            docs = doc[first]
            has[docs] = True
            tmp = np.empty_like(x)
            for k in range(self.num_perm):
                np.multiply(x, self._a[k], out=tmp)
                tmp += self._b[k]
                sig[k, docs] = np.minimum.reduceat(tmp, first)
        return np.ascontiguousarray(sig.T), has


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 key [bands, n] of each band of `rows` signature values."""
    n = sig.shape[0]
    view = sig[:, : bands * rows].reshape(n, bands, rows)
    acc = np.full((n, bands), 0x9E3779B97F4A7C15, dtype=_U64)
    for j in range(rows):
        acc = mix64(acc ^ view[:, :, j].astype(_U64))
    acc += np.arange(bands, dtype=_U64)[None, :]  # distinct bands never share a key
    return np.ascontiguousarray(acc.T)


def estimated_jaccard(sig16: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature values for pairs (a[i], b[i]), in chunks."""
    out = np.empty(len(a), dtype=np.float32)
    step = max(1, (1 << 22) // max(1, sig16.shape[1]))
    for s in range(0, len(a), step):
        out[s : s + step] = (sig16[a[s : s + step]] == sig16[b[s : s + step]]).mean(axis=1)
    return out


def connected_min(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of each node = smallest index in its connected component (the
    document kept: first in input order). Min-label propagation with pointer
    jumping, all in numpy."""
    labels = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return labels
    while True:
        before = labels.copy()
        la, lb = labels[a], labels[b]
        low = np.minimum(la, lb)
        np.minimum.at(labels, la, low)
        np.minimum.at(labels, lb, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            return labels


MEMBERSHIP_CHUNK = 1 << 16  # bucket memberships turned into Python ints at a time
BLOCK = 1 << 16  # documents per storage block of MinHashLSH


@dataclass
class Duplicates:
    """Outcome of dedup: for document i, `root[i]` is the kept document it is
    dropped for (i itself when kept) and `sim[i]` their estimated Jaccard. With
    connected components, `link[i]` is the matching document that tied i into
    its cluster (which may be another dropped one)."""

    root: np.ndarray
    link: np.ndarray
    sim: np.ndarray
    edges: int
    candidates: int


class MinHashLSH:
    """Accumulates band keys and 16-bit signatures, then finds duplicates.

    Documents sharing any band key are candidates. Two ways to decide:

    - `keep_first` (default): documents are taken in input order and each is
      compared with the documents already *kept* that share one of its buckets,
      as an LSH index queried before insertion does (datasketch, rensa). It is
      dropped when its best estimated Jaccard reaches `threshold`, naming that
      kept document; otherwise it is kept and joins its buckets. A reject thus
      always names a kept record it is itself similar to.
    - `components`: verified candidate pairs (each bucket member against the
      bucket's first member and its predecessor) form a graph whose connected
      components are the clusters (datatrove's MinhashDedupCluster); the first
      of each is kept. Through a chain A~B~C, C can be dropped for A although
      the two are far less similar than `threshold`.
    """

    def __init__(self, bands: int, rows: int, hasher: MinHasher):
        if hasher.num_perm != bands * rows:
            raise ValueError("num_perm must be bands * rows")
        self.bands, self.rows, self.hasher = bands, rows, hasher
        # Fixed-size blocks, filled in place: no consolidation copy, so memory
        # stays at the data itself (untouched pages of the last block cost nothing).
        self._keys: list[np.ndarray] = []  # [bands, BLOCK] uint64
        self._sigs: list[np.ndarray] = []  # [BLOCK, num_perm] uint16
        self._has: list[np.ndarray] = []  # [BLOCK] bool
        self.count = 0

    def add(self, texts: Sequence[str]) -> None:
        sig, has = self.hasher.signatures(texts)
        self.add_signatures(band_keys(sig, self.bands, self.rows), sig, has)

    def add_signatures(self, keys: np.ndarray, sig: np.ndarray, has: np.ndarray) -> None:
        """Documents hashed before: band keys [bands, n], signatures [n, num_perm]
        (only their low 16 bits are kept) and has_shingles [n], as `add` makes them
        or as a persisted index stores them (`entries`)."""
        n = len(has)
        done = 0
        while done < n:
            pos = self.count % BLOCK
            if pos == 0:
                self._keys.append(np.empty((self.bands, BLOCK), dtype=_U64))
                self._sigs.append(np.empty((BLOCK, self.hasher.num_perm), dtype=np.uint16))
                self._has.append(np.zeros(BLOCK, dtype=bool))
            take = min(BLOCK - pos, n - done)
            self._keys[-1][:, pos : pos + take] = keys[:, done : done + take]
            self._sigs[-1][pos : pos + take] = sig[done : done + take]
            self._has[-1][pos : pos + take] = has[done : done + take]
            done += take
            self.count += take

    def _fill(self, blocks: list[np.ndarray], axis: int) -> list[np.ndarray]:
        """The blocks trimmed to the documents added."""
        out = list(blocks)
        if out and self.count % BLOCK:
            out[-1] = out[-1][:, : self.count % BLOCK] if axis else out[-1][: self.count % BLOCK]
        return out

    def _band(self, band: int) -> np.ndarray:
        parts = [k[band] for k in self._fill(self._keys, 1)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=_U64)

    def _has_all(self) -> np.ndarray:
        parts = self._fill(self._has, 0)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def signatures16(self) -> np.ndarray:
        """All 16-bit signatures [n, num_perm] (a copy)."""
        parts = self._fill(self._sigs, 0)
        if not parts:
            return np.zeros((0, self.hasher.num_perm), dtype=np.uint16)
        return np.concatenate(parts)

    def entries(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Band keys [bands, len(idx)], 16-bit signatures [len(idx), num_perm] and
        has_shingles of documents `idx`: what `add_signatures` takes back (an index
        persisted for later runs)."""
        idx = np.asarray(idx, dtype=np.int64)
        keys = np.empty((self.bands, len(idx)), dtype=_U64)
        sig = np.empty((len(idx), self.hasher.num_perm), dtype=np.uint16)
        has = np.empty(len(idx), dtype=bool)
        blk, pos = idx // BLOCK, idx % BLOCK
        for b in np.unique(blk).tolist():
            m = blk == b
            keys[:, m] = self._keys[b][:, pos[m]]
            sig[m] = self._sigs[b][pos[m]]
            has[m] = self._has[b][pos[m]]
        return keys, sig, has

    def has_shingles(self) -> np.ndarray:
        """has_shingles of every document (a copy)."""
        return self._has_all()

    def _sig(self, i: int) -> np.ndarray:
        return self._sigs[i // BLOCK][i % BLOCK]

    def _runs(self, band: int, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(documents in key order, is_start, positions continuing a run) of one band."""
        k = self._band(band)[valid]
        order = np.argsort(k, kind="stable")
        sk = k[order]
        same = np.flatnonzero(sk[1:] == sk[:-1]) + 1
        is_start = np.ones(len(sk), dtype=bool)
        is_start[same] = False
        return valid[order], is_start, same

    def buckets(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(document, bucket) of every membership of a bucket holding >= 2
        documents, sorted by document, and the number of buckets (int32 arrays:
        8 bytes a membership)."""
        valid = np.flatnonzero(self._has_all())
        docs: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        n_buckets = 0
        for band in range(self.bands):
            idx, is_start, same = self._runs(band, valid)
            if not len(same):
                continue
            member = np.zeros(len(idx), dtype=bool)
            member[same] = True
            member[same - 1] = True
            run = np.cumsum(is_start[member]) - 1  # one id per run of members
            docs.append(idx[member].astype(np.int32))
            ids.append(run.astype(np.int32) + np.int32(n_buckets))
            n_buckets += int(run[-1]) + 1
        if not docs:
            z = np.zeros(0, dtype=np.int32)
            return z, z, 0
        doc = np.concatenate(docs)
        del docs
        order = np.argsort(doc, kind="stable")
        doc = doc[order]
        bucket = np.concatenate(ids)[order]
        return doc, bucket, n_buckets

    def candidate_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique (a, b), a < b, of star and chain pairs within every bucket."""
        valid = np.flatnonzero(self._has_all())
        found: list[np.ndarray] = []
        for band in range(self.bands):
            idx, is_start, same = self._runs(band, valid)
            if not len(same):
                continue
            run_first = np.maximum.accumulate(np.where(is_start, np.arange(len(idx)), 0))
            b = idx[same]
            star = (idx[run_first[same]].astype(_U64) << _U64(32)) | b.astype(_U64)
            prev = same - 1
            chain_pos = prev[~is_start[prev]] + 1
            chain = (idx[chain_pos - 1].astype(_U64) << _U64(32)) | idx[chain_pos].astype(_U64)
            found += [star, chain]
        if not found:
            z = np.zeros(0, dtype=np.int64)
            return z, z
        pairs = np.unique(np.concatenate(found))
        return (pairs >> _U64(32)).astype(np.int64), (pairs & _U64(0xFFFFFFFF)).astype(np.int64)

    def duplicates(
        self, threshold: float, clusters: Literal["keep_first", "components"] = "keep_first",
        fixed: int = 0,
    ) -> Duplicates:
        """Documents below `fixed` were kept before (an earlier run's): with
        `keep_first` each is kept and joins its buckets whatever its similarity to
        the others, so a later document similar to any of them is dropped for it."""
        if clusters == "components":
            return self._components(threshold)
        return self._keep_first(threshold, fixed)

    def _keep_first(self, threshold: float, fixed: int = 0) -> Duplicates:
        doc, bucket, _ = self.buckets()
        root = np.arange(self.count, dtype=np.int64)
        sim = np.ones(self.count, dtype=np.float32)
        kept_in: dict[int, list[int]] = {}  # bucket -> its kept members, in order
        compared = 0
        step = MEMBERSHIP_CHUNK
        lo = 0
        while lo < len(doc):
            hi = min(len(doc), lo + step)
            if hi < len(doc):  # end on a document boundary
                hi = lo + int(np.searchsorted(doc[lo:], doc[hi], side="left"))
                hi = hi if hi > lo else int(lo + np.searchsorted(doc[lo:], doc[lo], "right"))
            d_part, b_part = doc[lo:hi], bucket[lo:hi].tolist()
            starts = np.flatnonzero(np.r_[True, d_part[1:] != d_part[:-1]])
            ends = np.r_[starts[1:], len(d_part)]
            for d, s, e in zip(d_part[starts].tolist(), starts.tolist(), ends.tolist(),
                               strict=True):
                mine = b_part[s:e]
                cands: set[int] = set()
                for b in mine:
                    cands.update(kept_in.get(b, ()))
                if cands and d >= fixed:
                    c = np.fromiter(sorted(cands), dtype=np.int64, count=len(cands))
                    rows = np.stack([self._sig(i) for i in c.tolist()])
                    sims = (rows == self._sig(d)).mean(axis=1)
                    compared += len(c)
                    best = int(sims.argmax())  # the most similar; ties: the first kept
                    if sims[best] >= threshold:
                        root[d], sim[d] = c[best], sims[best]
                        continue
                for b in mine:
                    kept_in.setdefault(b, []).append(d)
            lo = hi
        return Duplicates(root=root, link=root.copy(), sim=sim, edges=compared,
                          candidates=compared)

    def _components(self, threshold: float) -> Duplicates:
        a, b = self.candidate_pairs()
        sig16 = self.signatures16()
        if threshold > 0 and len(a):
            keep = estimated_jaccard(sig16, a, b) >= threshold
            ea, eb = a[keep], b[keep]
        else:
            ea, eb = a, b
        root = connected_min(self.count, ea, eb)
        link = np.full(self.count, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(link, eb, ea)
        np.minimum.at(link, ea, eb)
        ar = np.arange(self.count)
        link = np.where(root == ar, ar, link)
        sim = np.ones(self.count, dtype=np.float32)
        dropped = np.flatnonzero(root != ar)
        sim[dropped] = estimated_jaccard(sig16, dropped, root[dropped])
        return Duplicates(root=root, link=link, sim=sim, edges=len(ea), candidates=len(a))
