"""Train a cheap classifier on an LLM judge's labels, then score everything with it.

The FineWeb-Edu recipe (Penedo et al. 2024): a judge scores a sample, a small
model learns the judge's score, and the small model scores the whole corpus.
`train_classifier` learns from the records that carry a label (`label_column`),
holds out a share (default 0.2, seeded by the recipe seed) and reports F1 at the
keep `threshold` (default 3), the confusion matrix and the Pearson/Spearman
correlation with the judge. `classify` applies one or several saved models;
several are combined as in Nemotron-CC (Su et al. 2024): each model's scores
become percentile buckets (default 20) over the data, and the maximum is taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, field_validator

from smolforge.classifier import (
    Classifier,
    SparseRows,
    evaluate,
    fit,
    hash_features,
    percentile_buckets,
)
from smolforge.context import StageContext, derive_seed
from smolforge.paths import RUN
from smolforge.registry import stages
from smolforge.stages.base import GlobalStage, Record, Result, Shards
from smolforge.store import RunDirError, atomic_write_json, run_path, run_path_problem

log = logging.getLogger(__name__)


def output_path(ctx: StageContext, path: str) -> Path:
    """Where a stage writes a file: inside the run directory, always (a relative
    path, checked when the recipe is loaded and again here against links)."""
    if ctx.run_dir is None:
        raise ValueError(f"{path!r}: a stage writes files only inside a run directory")
    return run_path(Path(ctx.run_dir), path)


def input_path(ctx: StageContext, path: str) -> Path:
    """A model to read: in the run directory when a stage of the run wrote it
    there (a relative path that stays inside), else the recipe's file, which the
    path policy checks (absolute, or relative to the recipe)."""
    run_dir = ctx.run_dir
    if run_dir is not None and run_path_problem(path) is None:
        with contextlib.suppress(RunDirError):
            if (p := run_path(Path(run_dir), path)).exists():
                return p
    return ctx.resolve_path(Path(path).expanduser())


def metrics_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".metrics.json")


def _label(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _below(x: float, bound: float) -> str:
    """`x` with as few decimals as keep it visibly below `bound` (never "3 < 3")."""
    for digits in (2, 3, 4, 6):
        text = f"{x:.{digits}f}"
        if float(text) < bound:
            return text
    return repr(x)


@stages.register
class TrainClassifier(GlobalStage):
    """Learn to predict a judge's score from text; records pass through unchanged.

    Records without a numeric `label_column` are not used for training (so a judge
    can score a sample only). Writes the model to `model_path` and its held-out
    metrics next to it (`<stem>.metrics.json`), both in the run directory (a
    relative `.npz` path that stays inside it), whose hashes the run keeps: a
    damaged, deleted or swapped model is caught on resume and trained again."""

    type: Literal["train_classifier"] = "train_classifier"
    label_column: str = Field(description="the judge's score column to learn, e.g. edu_score")
    text_column: str = Field("text", description="the column the classifier reads")
    features: Literal["hash", "embed"] = Field(
        "hash",
        description="hash: hashed word uni+bigrams (no torch); embed: all-MiniLM-L6-v2 "
        "embeddings (the [embed] extra)",
    )
    threshold: float = Field(3.0, description="keep threshold on the score, for F1")
    holdout: float = Field(0.2, ge=0, lt=1, description="share of labelled records held out")
    model_path: str = Field("classifier.npz", description="model file, a .npz path in the run directory")
    alpha: float = Field(1.0, gt=0, description="ridge penalty")
    n_features: int = Field(1 << 20, ge=2, description="hash buckets (a power of two)")
    embed_model: str = Field("all-MiniLM-L6-v2", description="embed: sentence-transformers model")
    min_labels: int = Field(10, ge=2, description="fewest labelled records to train on")

    _metrics: dict[str, Any] | None = PrivateAttr(None)

    @field_validator("model_path")
    @classmethod
    def _inside_the_run(cls, v: str) -> str:
        problem = run_path_problem(v)
        if problem is None and not v.endswith(".npz"):
            problem = "must end in .npz"
        if problem is not None:
            raise ValueError(f"model_path {problem} (the model is written in the run directory)")
        return v

    def requires(self) -> set[str]:
        return {self.text_column, self.label_column}

    def artefacts(self, ctx: StageContext) -> list[Path]:
        model = output_path(ctx, self.model_path)
        return [model, metrics_path(model)]

    def _featurize(self, texts: list[str]) -> SparseRows | np.ndarray:
        if self.features == "hash":
            return hash_features(texts, self.n_features)
        from smolforge.embed import embed

        return embed(texts, self.embed_model)

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        if self.n_features & (self.n_features - 1):
            raise ValueError(f"n_features must be a power of two, got {self.n_features}")
        parts: list[Any] = []
        labels: list[float] = []
        for i in range(len(shards)):
            texts = []
            for rec in shards.columns(i, ["id", self.text_column, self.label_column]):
                y = _label(rec.get(self.label_column))
                if y is not None:
                    texts.append(str(rec.get(self.text_column) or ""))
                    labels.append(y)
            if texts:
                parts.append(self._featurize(texts))
        if len(labels) < self.min_labels:
            raise ValueError(
                f"train_classifier: {len(labels)} records have a numeric {self.label_column!r}; "
                f"at least {self.min_labels} are needed"
            )
        y = np.asarray(labels, dtype=np.float64)
        X = SparseRows.concat(parts) if self.features == "hash" else np.concatenate(parts)
        rng = np.random.default_rng(derive_seed(ctx.seed, ctx.stage_name, "holdout"))
        perm = rng.permutation(len(y))
        n_test = int(round(len(y) * self.holdout))
        test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])

        def rows(idx: np.ndarray) -> SparseRows | np.ndarray:
            return X.take(idx) if isinstance(X, SparseRows) else X[idx]

        meta = {
            "label_column": self.label_column,
            "text_column": self.text_column,
            "threshold": self.threshold,
            "embed_model": self.embed_model if self.features == "embed" else None,
        }
        model = fit(
            rows(train), y[train], self.features, alpha=self.alpha,
            n_features=self.n_features, meta=meta,
        )
        train_rows = rows(train)
        metrics: dict[str, Any] = {
            "label_column": self.label_column,
            "features": self.features,
            "labelled": len(y),
            "train": evaluate(model.predict_features(train_rows), y[train], self.threshold),
            "heldout": (
                evaluate(model.predict_features(rows(test)), y[test], self.threshold)
                if n_test
                else None
            ),
        }
        path = model.save(output_path(ctx, self.model_path))
        metrics["model_path"] = str(path)
        atomic_write_json(metrics_path(path), metrics)
        self._metrics = metrics
        held = metrics["heldout"] or {}
        log.info(
            "train_classifier %s: %d labelled, held-out F1@%g=%s pearson=%s spearman=%s -> %s",
            self.label_column, len(y), self.threshold, held.get("f1"), held.get("pearson"),
            held.get("spearman"), path,
        )
        for i in range(len(shards)):
            yield i, Result(kept=list(shards[i]))


@stages.register
class Classify(GlobalStage):
    """Score records with saved classifiers; drops nothing unless `min_score` is set.

    One model: its predicted score goes to `score_column`. Several: each model's
    score goes to its own column (`model_columns`, default `<score_column>_<file
    stem>`) and `score_column` gets the maximum of their percentile buckets
    (0..buckets-1) over the whole input (Nemotron-CC)."""

    type: Literal["classify"] = "classify"
    models: Annotated[list[str], RUN] = Field(min_length=1, description="model files from train_classifier")
    score_column: str = Field("score", description="the score (or combined bucket) column")
    model_columns: list[str] | None = Field(None, description="per-model score columns")
    text_column: str | None = Field(None, description="default: the column the model was trained on")
    buckets: int = Field(20, ge=2, description="percentile buckets when combining models")
    min_score: float | None = Field(None, description="drop records scoring below this")
    batch_size: int = Field(4096, ge=1, description="records scored together")

    _loaded: list[Classifier] | None = PrivateAttr(None)

    def _columns(self) -> list[str]:
        if self.model_columns is not None:
            if len(self.model_columns) != len(self.models):
                raise ValueError("model_columns needs one name per model")
            return list(self.model_columns)
        cols = [f"{self.score_column}_{Path(m).stem}" for m in self.models]
        if len(set(cols)) != len(cols):
            raise ValueError("classify: two models share a file name; set model_columns")
        return cols

    def requires(self) -> set[str]:
        return {self.text_column or "text"}

    def provides(self) -> set[str] | None:
        cols = {self.score_column}
        return cols | set(self._columns()) if len(self.models) > 1 else cols

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        out = []
        for m in self.models:
            p = input_path(ctx, m)
            out.append(hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
        return out

    def _classifiers(self, ctx: StageContext) -> list[Classifier]:
        if self._loaded is None:
            loaded = []
            for m in self.models:
                p = input_path(ctx, m)
                if not p.is_file():
                    raise FileNotFoundError(f"classify: model {m!r} not found (looked at {p})")
                try:
                    loaded.append(Classifier.load(p))
                except ValueError as e:
                    raise ValueError(f"classify: model {m!r}: {e}; train it again (re-run the "
                                     "recipe with its train_classifier stage) or name another file") from None
            self._loaded = loaded
        return self._loaded

    def _text_column(self, model: Classifier) -> str:
        return self.text_column or model.meta.get("text_column") or "text"

    def _scores(self, model: Classifier, records: list[Record]) -> np.ndarray:
        col = self._text_column(model)
        out = [
            model.predict([str(r.get(col) or "") for r in records[s : s + self.batch_size]])
            for s in range(0, len(records), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _emit(self, records: list[Record], scores: np.ndarray, extra: dict[str, np.ndarray]) -> Result:
        res = Result()
        for k, rec in enumerate(records):
            s = scores[k].item()
            rec[self.score_column] = s
            for col, vals in extra.items():
                rec[col] = vals[k].item()
            if self.min_score is not None and s < self.min_score:
                res.reject(
                    rec,
                    f"{self.score_column} {_below(s, self.min_score)} < min_score "
                    f"{self.min_score:g} (classify)",
                )
            else:
                res.keep(rec)
        return res

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        models = self._classifiers(ctx)
        if len(models) == 1:
            for i in range(len(shards)):
                recs = shards[i]
                yield i, self._emit(recs, self._scores(models[0], recs), {})
            return
        # Several models: percentiles need every score first (floats only are held).
        cols = self._columns()
        need = sorted({"id"} | {self._text_column(m) for m in models})
        per_model: list[list[np.ndarray]] = [[] for _ in models]
        for i in range(len(shards)):
            recs = shards.columns(i, need)
            for k, m in enumerate(models):
                per_model[k].append(self._scores(m, recs))
        scores = [np.concatenate(p) if p else np.zeros(0) for p in per_model]
        combined = np.max([percentile_buckets(s, self.buckets) for s in scores], axis=0)
        offset = 0
        for i in range(len(shards)):
            recs = shards[i]
            sl = slice(offset, offset + len(recs))
            extra = {c: s[sl] for c, s in zip(cols, scores)}
            yield i, self._emit(recs, combined[sl], extra)
            offset += len(recs)
