"""Leakage: what a model gives away through its outputs — model extraction (Copycat, Knockoff
Nets) and membership inference (loss threshold, LiRA)."""

from aegis.leakage.extraction import (
    BudgetExceeded,
    OutputPolicy,
    QueryOracle,
    SubstituteRecipe,
    extract,
    run_extraction,
    transfer_attack,
)
from aegis.leakage.membership import (
    TargetRecipe,
    attack_target,
    lira_scores,
    membership_metrics,
    run_membership,
    threshold_scores,
)

__all__ = [
    "BudgetExceeded",
    "OutputPolicy",
    "QueryOracle",
    "SubstituteRecipe",
    "TargetRecipe",
    "attack_target",
    "extract",
    "lira_scores",
    "membership_metrics",
    "run_extraction",
    "run_membership",
    "threshold_scores",
    "transfer_attack",
]
