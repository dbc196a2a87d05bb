"""Quality classifiers trained on judge labels (FineWeb-Edu, DCLM, Nemotron-CC).

An LLM judge is expensive; a linear model on cheap features, trained on a few
thousand judged documents, scores millions per core-minute. Two feature kinds:

- `hash` (default, numpy only): word unigrams and bigrams of the normalised text
  hashed into 2^20 buckets, log(1 + count), L2-normalised; in the spirit of
  DCLM's fastText filter (a bag of hashed uni/bigrams with a linear model).
- `embed` (the `[embed]` extra): all-MiniLM-L6-v2 sentence embeddings, as the
  FineWeb-Edu classifier uses a frozen embedding model with a regression head.

The head is ridge regression on the judge's score (FineWeb-Edu regresses the
0-5 score), fitted in closed form for embeddings and by conjugate gradients on
the sparse hash features. A model file is a numpy `.npz` (no pickle): weights,
bias and a JSON header saying how to featurise text.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smolforge.stats import pearson, ranks, spearman
from smolforge.store import atomic_write_bytes
from smolforge.text.minhash import Batch, prefix_hashes, segment_hashes

Features = Literal["hash", "embed"]
FORMAT_VERSION = 1


@dataclass
class SparseRows:
    """Rows of a sparse matrix: row `doc[k]` has `values[k]` at column `cols[k]`."""

    doc: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    n_rows: int

    @classmethod
    def concat(cls, parts: Sequence[SparseRows]) -> SparseRows:
        offsets = np.cumsum([0] + [p.n_rows for p in parts])
        return cls(
            np.concatenate([p.doc + o for p, o in zip(parts, offsets)] or [np.zeros(0, np.int64)]),
            np.concatenate([p.cols for p in parts] or [np.zeros(0, np.int64)]),
            np.concatenate([p.values for p in parts] or [np.zeros(0, np.float32)]),
            int(offsets[-1]),
        )

    def take(self, rows: np.ndarray) -> SparseRows:
        """The given rows, renumbered 0..len(rows)-1 in that order."""
        where = np.full(self.n_rows, -1, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        new = where[self.doc]
        keep = new >= 0
        order = np.argsort(new[keep], kind="stable")
        return SparseRows(
            new[keep][order], self.cols[keep][order], self.values[keep][order], len(rows)
        )

    def dot(self, w: np.ndarray) -> np.ndarray:
        """X @ w."""
        return np.bincount(self.doc, weights=w[self.cols] * self.values, minlength=self.n_rows)

    def tdot(self, u: np.ndarray, n_cols: int) -> np.ndarray:
        """X.T @ u."""
        return np.bincount(self.cols, weights=u[self.doc] * self.values, minlength=n_cols)


def hash_features(texts: Sequence[str], n_features: int = 1 << 20) -> SparseRows:
    """Hashed word uni- and bigrams, log(1 + count), L2-normalised per document."""
    if n_features & (n_features - 1):
        raise ValueError("n_features must be a power of two")
    batch = Batch.from_texts(texts)
    wstart, wend, wdoc = batch.words()
    word_h = segment_hashes(prefix_hashes(batch.codes), wstart, wend)
    same = np.flatnonzero(wdoc[1:] == wdoc[:-1]) if len(wdoc) else wdoc
    bigram_h = segment_hashes(prefix_hashes(word_h), same, same + 2)
    h = np.concatenate([word_h, bigram_h])
    doc = np.concatenate([wdoc, wdoc[same]])
    shift = np.uint64(64 - (n_features.bit_length() - 1))
    key = (doc.astype(np.uint64) << np.uint64(32)) | (h >> shift)
    uniq, counts = np.unique(key, return_counts=True)
    rows = (uniq >> np.uint64(32)).astype(np.int64)
    cols = (uniq & np.uint64(0xFFFFFFFF)).astype(np.int64)
    values = np.log1p(counts).astype(np.float32)
    norms = np.sqrt(np.bincount(rows, weights=values.astype(np.float64) ** 2, minlength=len(texts)))
    values /= norms[rows].astype(np.float32)
    return SparseRows(rows, cols, values, len(texts))


def ridge_sparse(
    X: SparseRows, y: np.ndarray, n_cols: int, alpha: float, iters: int = 200, tol: float = 1e-6
) -> tuple[np.ndarray, float]:
    """Ridge regression with an unpenalised intercept on sparse rows: conjugate
    gradients on (Xc'Xc + alpha I) w = Xc'yc, Xc the column-centred X (centred
    implicitly, so the matrix stays sparse). Columns no row uses get weight 0, so
    the solve runs over the used columns only."""
    used, cols = np.unique(X.cols, return_inverse=True)
    Xu = SparseRows(X.doc, cols.reshape(-1), X.values, X.n_rows)
    k = len(used)
    y = y.astype(np.float64)
    y_mean = float(y.mean())
    yc = y - y_mean
    mu = Xu.tdot(np.full(X.n_rows, 1.0 / X.n_rows), k)

    def A(v: np.ndarray) -> np.ndarray:
        xv = Xu.dot(v) - mu @ v
        return Xu.tdot(xv, k) - mu * xv.sum() + alpha * v

    b = Xu.tdot(yc, k) - mu * yc.sum()
    w = np.zeros(k)
    r = b.copy()
    p = r.copy()
    rs = r @ r
    stop = tol * tol * max(rs, 1e-30)
    for _ in range(iters):
        if rs <= stop:
            break
        ap = A(p)
        step = rs / (p @ ap)
        w += step * p
        r -= step * ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    full = np.zeros(n_cols, dtype=np.float32)
    full[used] = w
    return full, y_mean - float(mu @ w)


def ridge_dense(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge with an unpenalised intercept."""
    X = X.astype(np.float64)
    mu, y_mean = X.mean(axis=0), float(y.mean())
    Xc = X - mu
    w = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (y - y_mean))
    return w.astype(np.float32), y_mean - float(mu @ w)


@dataclass
class Classifier:
    """A linear scorer over `features` of `meta["text_column"]`."""

    features: Features
    weights: np.ndarray
    bias: float
    meta: dict[str, Any] = field(default_factory=dict)

    def featurize(self, texts: Sequence[str]) -> SparseRows | np.ndarray:
        if self.features == "hash":
            return hash_features(texts, len(self.weights))
        from smolforge.embed import embed

        return embed(texts, self.meta.get("embed_model", "all-MiniLM-L6-v2"))

    def predict_features(self, X: SparseRows | np.ndarray) -> np.ndarray:
        if isinstance(X, SparseRows):
            raw = X.dot(self.weights) + self.bias
        else:
            raw = X @ self.weights + self.bias
        lo, hi = self.meta.get("label_min"), self.meta.get("label_max")
        return np.clip(raw, lo, hi).astype(np.float32) if lo is not None else raw.astype(np.float32)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted judge score per text, clipped to the range of the training labels."""
        return self.predict_features(self.featurize(texts))

    def to_bytes(self) -> bytes:
        header = {"format": FORMAT_VERSION, "features": self.features, **self.meta}
        buf = io.BytesIO()
        np.savez_compressed(
            buf, weights=self.weights, bias=np.float64(self.bias), header=np.array(json.dumps(header))
        )
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Written under a temporary name and renamed (never through a link)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """A saved model; ValueError naming the file when it is damaged or not one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                header = json.loads(str(f["header"]))
                weights, bias = f["weights"], float(f["bias"])
            if not isinstance(header, dict) or header.pop("format", None) != FORMAT_VERSION:
                raise ValueError(f"not a smolforge classifier of format {FORMAT_VERSION}")
            return cls(header.pop("features"), weights, bias, header)
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: damaged or not a smolforge classifier ({e})") from None


def fit(
    X: SparseRows | np.ndarray,
    y: np.ndarray,
    features: Features,
    *,
    alpha: float,
    n_features: int = 1 << 20,
    meta: dict[str, Any] | None = None,
) -> Classifier:
    if isinstance(X, SparseRows):
        w, b = ridge_sparse(X, y, n_features, alpha)
    else:
        w, b = ridge_dense(X, y, alpha)
    meta = {"label_min": float(y.min()), "label_max": float(y.max()), **(meta or {})}
    return Classifier(features, w, b, meta)


def evaluate(pred: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Held-out metrics: F1 of `score >= threshold` (what a filter keeps) against
    the judge, the confusion matrix of rounded scores, and correlations."""
    pred = np.asarray(pred, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    truth, guess = labels >= threshold, pred >= threshold
    tp = int((truth & guess).sum())
    fp = int((~truth & guess).sum())
    fn = int((truth & ~guess).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    classes = sorted({int(round(v)) for v in labels})
    lo, hi = (classes[0], classes[-1]) if classes else (0, 0)
    lab_i = np.rint(labels).astype(int)
    pred_i = np.clip(np.rint(pred), lo, hi).astype(int)
    matrix = [[int(((lab_i == t) & (pred_i == p)).sum()) for p in classes] for t in classes]
    return {
        "n": len(labels),
        "threshold": threshold,
        "f1": round(f1, 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "positives": int(truth.sum()),
        "accuracy_rounded": round(float((lab_i == pred_i).mean()), 4) if len(labels) else None,
        "mae": round(float(np.abs(pred - labels).mean()), 4) if len(labels) else None,
        "pearson": _round(pearson(pred, labels)),
        "spearman": _round(spearman(pred, labels)),
        "confusion": {"labels": classes, "matrix": matrix, "rows": "judge", "cols": "classifier"},
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def percentile_buckets(scores: np.ndarray, buckets: int = 20) -> np.ndarray:
    """Each score's percentile bucket 0..buckets-1 over `scores` (Nemotron-CC
    bins every classifier's scores into 20 percentile buckets, then takes the max)."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    r = ranks(scores) - 1  # 0-based average ranks: ties share a bucket
    return np.minimum((r * buckets / n).astype(np.int64), buckets - 1)
