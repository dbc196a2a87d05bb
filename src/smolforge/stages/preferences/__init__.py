"""Preference data: `candidates` -> `rate` -> `pairs` (UltraFeedback-style).

Follows UltraFeedback (Cui et al. 2023, arXiv:2310.01377): several completions per
instruction from several models (multi-teacher), rated 1-5 on four aspects
(instruction following, truthfulness, honesty, helpfulness) by a judge that sees
all completions of one instruction together, in shuffled order; then binarised
as in the cleaned UltraFeedback sets (Argilla's
`ultrafeedback-binarized-preferences-cleaned`): chosen = the best mean of the
aspects, rejected = a random one rated strictly lower, ties dropped (the original
`overall_score` column was buggy, so it is not used).

Data shape: one record per prompt all the way to `pairs`. `candidates` adds a
list column `candidates`, each item
`{text, teacher, engine, model, sampling, finish_reason, tokens}`; `rate` adds
`score` (mean of the aspects, or the reward), `ratings` ({aspect: 1-5}) and
`rate_error` to every item. Keeping a prompt's candidates in one record makes
`rate` (the judge must see them together) and `pairs` plain map stages: no
global pass, and shards stay independent. `pairs` then writes one record per
pair: `prompt`, `chosen`, `rejected`, their scores, teachers and models, and the
margin. docs/preference.md describes every knob.
"""

from smolforge.engines.reward import RewardEngine as RewardEndpoint  # noqa: F401 - the old name
from smolforge.engines.reward import reward_value  # noqa: F401
from smolforge.stages.preferences.candidates import Candidates, Teacher
from smolforge.stages.preferences.pairs import Pairs, make_pairs
from smolforge.stages.preferences.rate import (
    Rate,
    parse_listwise,
    presentation_order,
    rubric_criteria,
)

__all__ = ["Candidates", "Pairs", "Rate", "Teacher", "make_pairs", "parse_listwise", "presentation_order",
           "rubric_criteria"]
