"""AI proxy words: vocabulary whose frequency jumped once LLMs wrote text.

- Kobak et al. 2024, "Delving into ChatGPT usage in academic writing through
  excess vocabulary" (arXiv:2406.07016): PubMed abstracts of 2024 use style words
  such as *delves*, *showcasing* and *underscores* far more often than the trend of
  earlier years predicts. We track a selection of their excess style words.
- Liang et al. 2024, "Monitoring AI-Modified Content at Scale" (ICML 2024): the
  adjectives (*commendable*, *innovative*, *meticulous*, *intricate*, *notable*,
  *versatile*) and adverbs (*meticulously*, *reportedly*, *lucidly*, ...) whose
  frequency in peer reviews rose most after ChatGPT.

A rate is occurrences per 1,000 words (word = `[a-z]+` after lower-casing; each
entry counts its listed inflections). The reference rates come from real human text
that every machine has offline (see `proxy_reference.py` and `compute_reference`):
the Python documentation's language reference (`pydoc_data.topics`) and the
standard library's docstrings, written by people, mostly before 2022. It is
technical prose, so a synthetic textbook and the reference differ in genre as well;
compare teachers and runs with each other first, and read the ratio to the
reference as a flag, not a measurement.

Regenerate the shipped figures: `python -m smolforge.report.proxy > src/smolforge/report/proxy_reference.py`.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable

# entry -> the word forms counted for it
KOBAK: dict[str, tuple[str, ...]] = {
    "delves": ("delve", "delves", "delved", "delving"),
    "showcasing": ("showcase", "showcases", "showcased", "showcasing"),
    "underscores": ("underscore", "underscores", "underscored", "underscoring"),
    "crucial": ("crucial",),
    "pivotal": ("pivotal",),
    "notably": ("notably",),
    "comprehensive": ("comprehensive",),
    "intricate": ("intricate",),
    "realm": ("realm", "realms"),
    "emphasizing": ("emphasize", "emphasizes", "emphasizing", "emphasise", "emphasises", "emphasising"),
    "enhancing": ("enhance", "enhances", "enhancing", "enhanced"),
    "additionally": ("additionally",),
    "insights": ("insight", "insights"),
    "boasts": ("boast", "boasts", "boasting"),
}
LIANG: dict[str, tuple[str, ...]] = {
    "commendable": ("commendable",),
    "innovative": ("innovative",),
    "meticulous": ("meticulous",),
    "intricate": ("intricate",),
    "notable": ("notable",),
    "versatile": ("versatile",),
    "meticulously": ("meticulously",),
    "reportedly": ("reportedly",),
    "lucidly": ("lucidly",),
    "innovatively": ("innovatively",),
    "aptly": ("aptly",),
    "methodically": ("methodically",),
    "excellently": ("excellently",),
    "compellingly": ("compellingly",),
    "impressively": ("impressively",),
    "undoubtedly": ("undoubtedly",),
}
LISTS = {"kobak2024": KOBAK, "liang2024": LIANG}
_WORD = re.compile(r"[a-z]+")
_FORM: dict[str, list[tuple[str, str]]] = {}
for _list, _entries in LISTS.items():
    for _entry, _forms in _entries.items():
        for _f in _forms:
            _FORM.setdefault(_f, []).append((_list, _entry))


class ProxyCounter:
    """Counts proxy words over many texts; `result()` gives rates per 1,000 words."""

    def __init__(self) -> None:
        self.words = 0
        self.texts = 0
        self.texts_with = 0
        self.counts: Counter = Counter()  # (list, entry) -> occurrences

    def add(self, text: str) -> int:
        """Count one text; returns its number of proxy-word occurrences."""
        tokens = _WORD.findall((text or "").lower())
        self.words += len(tokens)
        self.texts += 1
        hits = 0
        for t in tokens:
            for key in _FORM.get(t, ()):
                self.counts[key] += 1
                hits += 1
        self.texts_with += hits > 0
        return hits

    def rates(self) -> dict[str, dict[str, float]]:
        per = 1000 / self.words if self.words else 0.0
        return {name: {e: round(self.counts[(name, e)] * per, 4) for e in entries}
                for name, entries in LISTS.items()}

    def result(self) -> dict:
        per = 1000 / self.words if self.words else 0.0
        totals = {name: round(sum(self.counts[(name, e)] for e in entries) * per, 4)
                  for name, entries in LISTS.items()}
        return {"words": self.words, "texts": self.texts,
                "share_of_texts_with_any": round(self.texts_with / self.texts, 4) if self.texts else 0.0,
                "per_1000_words": totals, "entries": self.rates(),
                "counts": {f"{k[0]}:{k[1]}": v for k, v in sorted(self.counts.items())}}


def count(texts: Iterable[str]) -> dict:
    c = ProxyCounter()
    for t in texts:
        c.add(t)
    return c.result()


def reference_texts() -> Iterable[str]:
    """The real-text reference: Python's language reference and stdlib docstrings."""
    import pydoc_data.topics

    from smolforge.corpora import stdlib_docstrings

    topics = pydoc_data.topics.topics
    for key in sorted(topics):
        yield topics[key]
    yield from stdlib_docstrings()


def compute_reference() -> dict:
    import platform

    res = count(reference_texts())
    res["corpus"] = ("Python " + platform.python_version() + " documentation: pydoc_data.topics (the "
                     "language reference) and every distinct standard-library docstring "
                     "(smolforge.corpora.stdlib_docstrings)")
    res["method"] = "lower-cased [a-z]+ words; listed inflections per entry; rate per 1,000 words"
    return res


def reference() -> dict:
    from smolforge.report.proxy_reference import REFERENCE

    return REFERENCE


if __name__ == "__main__":
    import pprint

    sys.stdout.write('"""Proxy-word rates of real human text (generated by '
                     '`python -m smolforge.report.proxy`; see proxy.py)."""\n\n')
    sys.stdout.write("REFERENCE = " + pprint.pformat(compute_reference(), width=100, sort_dicts=False) + "\n")
