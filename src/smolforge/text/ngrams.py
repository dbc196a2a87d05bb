"""Word n-gram hashing shared by the repetition filter and decontamination.

A word is hashed once; every n-word window's hash then comes from a prefix sum
(a polynomial rolling hash modulo 2**64), so all n-grams of a text cost a few
numpy operations instead of building a string or tuple per window.

`word_hashes` uses Python's string hash: fast, stable within one process, which is
enough for statistics computed on one text. An index shared between processes
needs `stable_word_hashes` (BLAKE2b, the same in every process and on every run).
"""

from __future__ import annotations

import hashlib

import numpy as np

# Odd 64-bit multiplier for the polynomial combination of word hashes, and its
# inverse modulo 2**64.
_MULT = 0x9E3779B97F4A7C15
_MULT_INV = pow(_MULT, -1, 1 << 64)


def word_hashes(words: list[str]) -> np.ndarray:
    """64-bit hashes of words (Python's string hash: stable within one process)."""
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def _stable(word: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def stable_word_hashes(words: list[str]) -> np.ndarray:
    """64-bit hashes of words that are the same in every process (BLAKE2b)."""
    return np.fromiter(map(_stable, words), dtype=np.uint64, count=len(words))


def _power_table(base: int, size: int) -> np.ndarray:
    out = np.full(size, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)  # wraps modulo 2**64


_powers = _power_table(_MULT, 1 << 12)
_inverse_powers = _power_table(_MULT_INV, 1 << 12)


def prefix_hashes(wh: np.ndarray) -> np.ndarray:
    """H[i] = sum of wh[j] * M**-j for j < i (mod 2**64): any window's hash is then
    two array operations away (`window_hashes`)."""
    global _powers, _inverse_powers
    if len(wh) > len(_powers):
        size = max(len(wh), 2 * len(_powers))
        _powers, _inverse_powers = _power_table(_MULT, size), _power_table(_MULT_INV, size)
    h = np.zeros(len(wh) + 1, dtype=np.uint64)
    np.cumsum(wh * _inverse_powers[: len(wh)], out=h[1:])
    return h


def window_hashes(prefix: np.ndarray, k: int) -> np.ndarray:
    """Hash of every k-word window, sum of wh[i+j] * M**(k-1-j): the same value
    wherever the window sits, in a document or in a benchmark item."""
    m = len(prefix) - k
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    return (prefix[k:] - prefix[:m]) * _powers[k - 1 : k - 1 + m]


def gram_hashes(wh: np.ndarray, k: int) -> np.ndarray:
    """Hashes of every k-word window of a text given its word hashes."""
    return window_hashes(prefix_hashes(wh), k)


def word_grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """Distinct n-grams of words; a text shorter than n words is one gram."""
    if len(words) < n:
        return {tuple(words)}
    return set(zip(*(words[i:] for i in range(n)), strict=False))
