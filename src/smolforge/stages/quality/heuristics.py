"""The heuristic filters' old module: they now live one rule family per module
(`gopher`, `c4`, `fineweb`, `length`, and the tokenizers in `smolforge.text.tokenizers`);
these names are re-exported for code that imported them from here."""

from smolforge.stages.quality.c4 import C4Filter
from smolforge.stages.quality.fineweb import FineWebFilter
from smolforge.stages.quality.gopher import GopherQuality, GopherRepetition
from smolforge.stages.quality.length import Length
from smolforge.text.tokenizers import (
           Tokenizer,
           all_tokens,
           count_sentences,
           spacy_rules_tokens,
           spacy_tokens,
)

__all__ = ["C4Filter", "FineWebFilter", "GopherQuality", "GopherRepetition", "Length", "Tokenizer",
           "all_tokens", "count_sentences", "spacy_rules_tokens", "spacy_tokens"]
