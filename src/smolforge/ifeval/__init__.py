"""Verifiable instruction-following constraints: IFEval's 25 instruction types and
an offline subset of IFBench's, with checkers that agree with the reference code
(see docs/verify-constraints.md)."""

from smolforge.ifeval.instructions import (
    CONFLICTS,
    IFBENCH_IDS,
    IFEVAL_IDS,
    REGISTRY,
    Instruction,
    compatible,
    get,
    sample_constraints,
)
from smolforge.ifeval.verify import Check, evaluate, loose_variants

__all__ = ["CONFLICTS", "IFBENCH_IDS", "IFEVAL_IDS", "REGISTRY", "Check", "Instruction",
           "compatible", "evaluate", "get", "loose_variants", "sample_constraints"]
