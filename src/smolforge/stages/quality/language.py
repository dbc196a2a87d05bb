"""Language identification with py3langid (langid.py's model, 97 languages, shipped
inside the pip package, so it works offline).

Writes the detected language and its probability into two columns of every record
(kept and dropped alike, so `smolforge show` can tell why), and drops records whose
language is not wanted or whose probability is below `min_score` (0.65, the
threshold FineWeb used with fastText's language id).

Speed: a batch is classified at once, not text by text. langid's byte automaton is
walked for all texts of the batch in lock step with numpy (one array step per byte
position while at least 32 texts are still running, then the long tails in
Python), and the naive Bayes scores use a float32 copy of the model's float16
table (about 57 MB, made once per process), which spares a conversion per text.
The arithmetic is py3langid's own (`LanguageIdentifier._decide`), so the answers
are the library's; a self-check on load falls back to `classify` per text if a
py3langid version lays its model out differently.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record, Result


@functools.cache
def _load_identifier() -> Any:
    """The model, loaded once per process (about a second) and shared: it is read-only."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # py3langid >= 0.4 names the loader from_model_file; older ones from_pickled_model.
    if hasattr(LanguageIdentifier, "from_model_file"):
        return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


_MIN_ACTIVE = 32  # below this many running texts, a numpy step costs more than Python
_CHUNK = 256
_CHECK_TEXTS = ("The water cycle describes how water moves.", "Der Wasserkreislauf beschreibt.",
                "", "DAS IST EIN TEST", "Le cycle de l'eau décrit comment l'eau circule.")


class _BatchModel:
    """py3langid's model, scored for many texts at once (same arithmetic)."""

    def __init__(self, ident: Any):
        nm = ident.tk_nextmove
        self.ident = ident
        self.nm_py, self.rowbase_py, self.out_py = nm, ident._rowbase, ident.tk_output
        self.nm = np.frombuffer(nm, dtype=np.dtype(nm.typecode)).astype(np.int64)
        self.rowbase = np.asarray(ident._rowbase, dtype=np.int64)
        self.out = np.asarray(ident.tk_output, dtype=np.int64)
        self.table = np.asarray(ident.nb_ptc, dtype=np.float32)
        self.pc = ident.nb_pc
        self.classes = ident.nb_classes
        self.alias = ident._alias_pairs

    @staticmethod
    def encode(text: str) -> bytes:
        if text.isupper():
            text = text.lower()
        return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")

    def features(self, encoded: list[bytes]) -> list[list[int]]:
        """Feature ids each text visits, in order (py3langid's `visit_counts` walk)."""
        n = len(encoded)
        lens = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        order = np.argsort(-lens, kind="stable")
        slens = lens[order]
        steps = int(slens[_MIN_ACTIVE - 1]) if n >= _MIN_ACTIVE else 0
        states = np.zeros(n, dtype=np.int64)
        visited = np.empty((n, steps), dtype=np.int32)
        if steps:
            grid = np.zeros((n, steps), dtype=np.uint8)
            for r, i in enumerate(order):
                b = encoded[i][:steps]
                grid[r, : len(b)] = np.frombuffer(b, dtype=np.uint8)
            active = np.searchsorted(-slens, -np.arange(steps), side="left")
            for t in range(steps):
                a = int(active[t])
                st = self.nm[self.rowbase[states[:a]] + grid[:a, t]]
                states[:a] = st
                visited[:a, t] = st
        res: list[list[int]] = [[] for _ in range(n)]
        nm, rowbase, out = self.nm_py, self.rowbase_py, self.out_py
        for r, i in enumerate(order):
            b = encoded[i]
            head = self.out[visited[r, : min(len(b), steps)]]
            feats = head[head >= 0].tolist()
            if len(b) > steps:
                s = int(states[r])
                for letter in b[steps:]:
                    s = nm[rowbase[s] + letter]
                    f = out[s]
                    if f >= 0:
                        feats.append(f)
            res[i] = feats
        return res

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        encoded = [self.encode(t) for t in texts]
        # Texts of similar length walk together, _CHUNK at a time (bounded memory).
        by_len = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        feats_of: list[list[int]] = [[] for _ in encoded]
        for c in range(0, len(by_len), _CHUNK):
            part = by_len[c : c + _CHUNK]
            for i, feats in zip(part, self.features([encoded[i] for i in part]), strict=True):
                feats_of[i] = feats
        result = []
        for b, feats in zip(encoded, feats_of, strict=True):
            if feats:
                visits = Counter(feats)
                idx = np.fromiter(visits.keys(), dtype=np.intp, count=len(visits))
                counts = np.fromiter(visits.values(), dtype=np.float32, count=len(visits))
                scores = np.log1p(counts) @ self.table[idx] + self.pc
            else:
                scores = np.zeros(len(self.classes), dtype=np.float32)
            scores *= 1.0 / math.sqrt(len(b) or 1)
            np.exp(scores - scores.max(), out=scores)
            scores /= scores.sum()
            for i, j in self.alias:
                scores[i] += scores[j]
                scores[j] = 0.0
            k = int(scores.argmax())
            result.append((self.classes[k], float(scores[k])))
        return result


@functools.cache
def _batch_model() -> _BatchModel | None:
    """The batched scorer, or None if it does not reproduce `classify` here."""
    ident = _load_identifier()
    try:
        model = _BatchModel(ident)
        texts = list(_CHECK_TEXTS) * 12  # enough texts to take the lock-step path
        got = model.classify(texts)
    except (AttributeError, TypeError, ValueError):
        return None
    want = [ident.classify(t) for t in texts]
    same = all(a[0] == b[0] and abs(a[1] - b[1]) < 1e-5 for a, b in zip(got, want, strict=True))
    return model if same else None


@stages.register
class Language(FilterStage):
    """Keep records in the given languages (ISO 639-1 codes) with a probability of at
    least `min_score`; an empty `languages` list keeps any confident language."""

    type: Literal["language"] = "language"
    column: str = Field("text", description="the text column checked")
    languages: list[str] = Field(["en"], description="languages kept (empty: any)")
    min_score: float = Field(0.65, description="smallest probability of the detected language")
    language_column: str = Field("language", description="column receiving the language code")
    score_column: str = Field("language_score", description="column receiving its probability")
    max_chars: int | None = Field(
        None, description="classify only the first N characters (faster on long texts)"
    )

    _identifier: Any = PrivateAttr(None)

    def requires(self) -> set[str]:
        return {self.column}

    def provides(self) -> set[str]:
        return {self.language_column, self.score_column}

    def _model(self) -> Any:
        if self._identifier is None:
            self._identifier = _load_identifier()
        return self._identifier

    def detect(self, text: str) -> tuple[str, float]:
        """(language code, probability)."""
        if self.max_chars is not None:
            text = text[: self.max_chars]
        lang, score = self._model().classify(text.replace("\n", " "))
        return str(lang), round(float(score), 4)

    def _reason(self, lang: str, score: float) -> str | None:
        if self.languages and lang not in self.languages:
            return f"language: {lang} ({score:.2f}) not in {self.languages}"
        if score < self.min_score:
            return f"language: {lang} score {score:.2f} < {self.min_score}"
        return None

    def check(self, record: Record) -> str | None:
        value = record.get(self.column)
        return self._reason(*self.detect("" if value is None else str(value)))

    def detect_many(self, texts: list[str]) -> list[tuple[str, float]]:
        """`detect` for a batch, scored at once (same answers)."""
        if self.max_chars is not None:
            texts = [t[: self.max_chars] for t in texts]
        texts = [t.replace("\n", " ") for t in texts]
        model = _batch_model()
        found = model.classify(texts) if model else [self._model().classify(t) for t in texts]
        return [(str(lang), round(float(score), 4)) for lang, score in found]

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        texts = ["" if (v := rec.get(self.column)) is None else str(v) for rec in batch]
        for rec, (lang, score) in zip(batch, self.detect_many(texts), strict=True):
            rec[self.language_column], rec[self.score_column] = lang, score
            reason = self._reason(lang, score)
            if reason is None:
                res.keep(rec)
            else:
                res.reject(rec, reason)
        return res
