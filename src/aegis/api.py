"""The one Python call behind ``aegis attack``, under its historical name: a re-export of
:mod:`aegis.workflows.attack`, where the workflow lives, and of the one typed result every other
workflow returns (:class:`~aegis.workflows.result.WorkflowResult`)."""

from __future__ import annotations

from aegis.workflows.attack import AttackPlan, AttackRun, plan_attack, run_attack
from aegis.workflows.result import WorkflowResult

__all__ = ["AttackPlan", "AttackRun", "WorkflowResult", "plan_attack", "run_attack"]
