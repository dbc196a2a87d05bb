"""Fast ROUGE-L (Lin 2004), and the novelty filter Self-Instruct runs on every
new instruction (Wang et al. 2023: keep it only if its ROUGE-L F1 against every
kept instruction is below 0.7).

Done naively the filter is quadratic in pure Python (one dynamic-programming LCS
per pair). Here:
- texts are tokenised once into integer ids (the tokenizer of Google's
  `rouge-score` package: lower case, runs of letters and digits);
- a candidate pair is pruned by an upper bound first: the LCS is at most the
  multiset overlap of the two token bags, so F1 <= 2*overlap/(m+n). The overlap
  against every kept text comes from one inverted-index lookup and a `bincount`;
- the pairs that survive get their exact LCS from the bit-parallel algorithm of
  Allison and Dix (1986) / Hyyrö (2004), run with numpy on all surviving pairs at
  once: one step per token of the longest candidate, each step a handful of
  vectorised 64-bit operations (several words when the query is longer than 64).

ROUGE-L F1 = 2*LCS/(m+n) (precision LCS/m, recall LCS/n, beta 1), 0 when either
text has no tokens, as in `rouge-score`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TOKEN = re.compile(r"[^\W_]+")
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (for ASCII text exactly the tokens
    of `rouge-score`'s default tokenizer without stemming)."""
    return _TOKEN.findall((text or "").lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, bit-parallel on Python ints:
    O(len(b)) big-int steps of len(a) bits each."""
    if not a or not b:
        return 0
    masks: dict = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = (v + u) | (v - u)
    return len(a) - bin(v & full).count("1")


def f_measure(lcs: int, m: int, n: int) -> float:
    return 2.0 * lcs / (m + n) if m and n else 0.0


def rouge_l(a: str | Sequence, b: str | Sequence) -> float:
    """ROUGE-L F1 of two texts (or two token sequences)."""
    ta = tokenize(a) if isinstance(a, str) else a
    tb = tokenize(b) if isinstance(b, str) else b
    return f_measure(lcs_length(ta, tb), len(ta), len(tb))


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element summed over the last axis (uint64 words)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    b = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape[:-1], -1)
    return table[b].sum(axis=-1)


@dataclass
class Match:
    """The most similar kept text: its index (in order of `add`) and ROUGE-L F1."""

    index: int
    score: float


class NoveltyFilter:
    """Texts added in order; `check` finds the most similar kept text whose ROUGE-L
    F1 with a query reaches `threshold` (None: the query is novel)."""

    def __init__(self, threshold: float = 0.7):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._vocab: dict[str, int] = {}  # token -> id; 0 is padding
        self._features: dict[tuple[int, int], int] = {}  # (token id, k-th occurrence) -> id
        self._postings: dict[int, list] = {}  # feature id -> [int32 buffer, used]
        self._rows = np.zeros((64, 32), dtype=np.int32)
        self._lens = np.zeros(64, dtype=np.int64)
        self._lut = np.zeros((256, 1), dtype=np.uint64)  # token id -> query bit mask
        self.n = 0
        self.pairs_bounded = 0  # candidate pairs seen by the bound
        self.pairs_lcs = 0  # pairs that needed an exact LCS

    def __len__(self) -> int:
        return self.n

    # -- tokens

    def ids(self, text: str | Sequence[str], grow: bool = False) -> list[int]:
        toks = tokenize(text) if isinstance(text, str) else text
        if grow:
            vocab = self._vocab
            return [vocab.setdefault(t, len(vocab) + 1) for t in toks]
        return [self._vocab.get(t, -1) for t in toks]  # -1: never seen, matches nothing

    @staticmethod
    def _bag(ids: list[int]) -> list[tuple[int, int]]:
        seen: dict[int, int] = {}
        out = []
        for t in ids:
            k = seen.get(t, 0)
            seen[t] = k + 1
            out.append((t, k))
        return out

    # -- queries

    def check(self, text: str | Sequence[str]) -> Match | None:
        """The kept text most similar to `text` if its ROUGE-L F1 >= threshold."""
        return self._check(self.ids(text))

    def _check(self, ids: list[int]) -> Match | None:
        m = len(ids)
        if m == 0 or self.n == 0:
            return None
        arrays = []
        for f in self._bag(ids):
            fid = self._features.get(f)
            if fid is not None:
                buf, used = self._postings[fid]
                arrays.append(buf[:used])
        if not arrays:
            return None
        overlap = np.bincount(np.concatenate(arrays), minlength=self.n)
        lens = self._lens[: self.n]
        # F1 <= 2*overlap/(m+n): the same float formula as the exact score, so
        # the bound is never below it.
        cand = np.flatnonzero((2.0 * overlap) / (m + lens) >= self.threshold)
        self.pairs_bounded += self.n
        if not len(cand):
            return None
        self.pairs_lcs += len(cand)
        lcs = self._lcs_many(ids, cand)
        scores = (2.0 * lcs) / (m + lens[cand])
        best = int(np.argmax(scores))
        if scores[best] >= self.threshold:
            return Match(int(cand[best]), float(scores[best]))
        return None

    def _lcs_many(self, ids: list[int], cand: np.ndarray) -> np.ndarray:
        """Exact LCS of the query against the kept rows `cand`, all at once: the
        query's positions are the bits (W 64-bit words), the rows' tokens the steps."""
        m = len(ids)
        words = (m + 63) // 64
        rows_needed = len(self._vocab) + 1
        if self._lut.shape[0] < rows_needed or self._lut.shape[1] < words:
            shape = (max(self._lut.shape[0], 2 * rows_needed), max(self._lut.shape[1], words))
            self._lut = np.zeros(shape, dtype=np.uint64)
        known = [(i, t) for i, t in enumerate(ids) if t > 0]
        lut = self._lut
        for i, t in known:
            lut[t, i // 64] |= np.uint64(1 << (i % 64))
        try:
            rows = self._rows[cand, : int(self._lens[cand].max())]
            v = np.full((len(cand), words), _ONES, dtype=np.uint64)
            for col in rows.T:
                u = v & lut[col, :words]
                if words == 1:
                    v = (v + u) | (v - u)
                else:  # u is a subset of v word by word: only the sum carries
                    s = v + u
                    carry = np.zeros(len(cand), dtype=bool)
                    for w in range(words):
                        t1 = s[:, w]
                        t2 = t1 + carry.astype(np.uint64)
                        carry = (t1 < v[:, w]) | (t2 < t1)
                        s[:, w] = t2
                    v = s | (v - u)
            low = np.full(words, _ONES, dtype=np.uint64)
            if m % 64:
                low[-1] = np.uint64((1 << (m % 64)) - 1)
            return m - _popcount(v & low)
        finally:
            for _i, t in known:
                lut[t] = 0

    # -- adding

    def add(self, text: str | Sequence[str]) -> int:
        """Keep a text (novel or not); returns its index."""
        return self._add(self.ids(text, grow=True))

    def _add(self, ids: list[int]) -> int:
        idx = self.n
        if idx == len(self._lens):
            self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
            self._lens = np.concatenate([self._lens, np.zeros_like(self._lens)])
        if len(ids) > self._rows.shape[1]:
            width = max(len(ids), 2 * self._rows.shape[1])
            grown = np.zeros((len(self._rows), width), dtype=np.int32)
            grown[:, : self._rows.shape[1]] = self._rows
            self._rows = grown
        self._rows[idx, : len(ids)] = ids
        self._lens[idx] = len(ids)
        for f in self._bag(ids):
            fid = self._features.setdefault(f, len(self._features))
            post = self._postings.get(fid)
            if post is None:
                post = self._postings[fid] = [np.empty(4, dtype=np.int32), 0]
            if post[1] == len(post[0]):
                post[0] = np.concatenate([post[0], np.empty_like(post[0])])
            post[0][post[1]] = idx
            post[1] += 1
        self.n += 1
        return idx

    def add_if_novel(self, text: str | Sequence[str]) -> Match | None:
        """Keep `text` unless a kept text is at least `threshold` similar; returns
        that text's match (not added) or None (added)."""
        ids = self.ids(text, grow=True)
        match = self._check(ids)
        if match is None:
            self._add(ids)
        return match


def lcs_length_dp(a: list[str], b: list[str]) -> int:
    """Textbook O(len(a) * len(b)) LCS: the reference the fast path is checked and
    benchmarked against."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]
