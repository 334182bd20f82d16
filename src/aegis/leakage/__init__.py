"""Leakage: what a model gives away through its outputs — model extraction (Copycat, Knockoff
Nets) and membership inference (loss threshold, LiRA). The workflows over them, behind
``aegis extract`` and ``aegis membership``, are :mod:`aegis.workflows.extract` and
:mod:`aegis.workflows.membership`.

The names below are imported on first use, so ``aegis --help`` does not import torch."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aegis.leakage.extraction import (
        BudgetExceeded,
        OutputPolicy,
        QueryOracle,
        SubstituteRecipe,
        extract,
        transfer_attack,
    )
    from aegis.leakage.membership import (
        TargetRecipe,
        attack_target,
        lira_scores,
        membership_metrics,
        threshold_scores,
    )

_WHERE = {
    "BudgetExceeded": "extraction",
    "OutputPolicy": "extraction",
    "QueryOracle": "extraction",
    "SubstituteRecipe": "extraction",
    "extract": "extraction",
    "transfer_attack": "extraction",
    "TargetRecipe": "membership",
    "attack_target": "membership",
    "lira_scores": "membership",
    "membership_metrics": "membership",
    "threshold_scores": "membership",
}

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
    "threshold_scores",
    "transfer_attack",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aegis.leakage' has no attribute {name!r}")
    return getattr(import_module(f"aegis.leakage.{module}"), name)
