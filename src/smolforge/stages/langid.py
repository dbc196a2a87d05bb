"""Language identification with py3langid (langid.py's model, 97 languages, shipped
inside the pip package, so it works offline).

Writes the detected language and its probability into two columns of every record
(kept and dropped alike, so `smolforge show` can tell why), and drops records whose
language is not wanted or whose probability is below `min_score` (0.65, the
threshold FineWeb used with fastText's language id).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

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


@stages.register("language")
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

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        for rec in batch:
            value = rec.get(self.column)
            lang, score = self.detect("" if value is None else str(value))
            out = {**rec, self.language_column: lang, self.score_column: score}
            reason = self._reason(lang, score)
            if reason is None:
                res.keep(out)
            else:
                res.reject(out, reason)
        return res
