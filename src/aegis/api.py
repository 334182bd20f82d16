"""The one Python call behind ``aegis attack``, under its historical name: a re-export of
:mod:`aegis.workflows.attack`, where the workflow lives."""

from __future__ import annotations

from aegis.workflows.attack import AttackPlan, AttackRun, plan_attack, run_attack

__all__ = ["AttackPlan", "AttackRun", "plan_attack", "run_attack"]
