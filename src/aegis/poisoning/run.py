"""Building blocks of a poisoning evaluation: a poisoning attack or a poison detector by name,
and the measures of a model trained on a (poisoned) training set (clean accuracy, per-class
precision/recall/F1, backdoor success rate). The workflow that uses them, the Python call behind
``aegis poison``, is :func:`aegis.workflows.poison.run_poisoning`.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from aegis.errors import ConfigError
from aegis.metrics import backdoor_success_rate, precision_recall_f1
from aegis.model import Classifier
from aegis.poisoning.attacks import (
    ATTACKS,
    BadNets,
    Blend,
    LabelConsistent,
    LabelFlip,
    PoisoningAttack,
    Trigger,
)
from aegis.poisoning.detection import DETECTORS, PoisonDetector

log = logging.getLogger(__name__)

__all__ = ["create_attack", "create_detector", "evaluate_model"]


def create_attack(
    name: str,
    *,
    rate: float = 0.1,
    target: int | None = 0,
    source: int | None = None,
    trigger: str | Trigger = "square:size=3,pos=br",
    pattern: str = "checkerboard",
    alpha: float = 0.2,
    eps: float = 0.3,
    steps: int = 20,
) -> PoisoningAttack:
    """The attack registered as ``name`` with the parameters that apply to it."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown poisoning attack {name!r}; use one of {', '.join(ATTACKS)}")
    trig = Trigger.parse(trigger) if isinstance(trigger, str) else trigger
    if name == "label-flip":
        return LabelFlip(rate=rate, source=source, target=target if source is not None else None)
    if target is None:
        raise ConfigError(f"{name} needs a target class; pass --target")
    if source is not None:
        raise ConfigError(f"--source applies to label-flip only, not {name}")
    if name == "badnets":
        return BadNets(rate=rate, target=target, trigger=trig)
    if name == "blend":
        return Blend(rate=rate, target=target, pattern=pattern, alpha=alpha)
    return LabelConsistent(rate=rate, target=target, trigger=trig, eps=eps, steps=steps)


def create_detector(name: str, **params: Any) -> PoisonDetector:
    """The poison detector registered as ``name``; ``None`` parameters keep the defaults."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown poison detector {name!r}; use one of {', '.join(DETECTORS)}")
    kept = {k: v for k, v in params.items() if v is not None}
    try:
        return DETECTORS[name](**kept)
    except TypeError as exc:
        raise ConfigError(f"detector {name!r} does not take {sorted(kept)}") from exc


def evaluate_model(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    num_classes: int,
    attack: PoisoningAttack | None = None,
) -> dict[str, Any]:
    """Clean accuracy, per-class precision/recall/F1 and (for a backdoor ``attack``) the
    backdoor success rate on ``x`` with the trigger, excluding inputs of the target class."""
    pred = model.predict(x).cpu().numpy()
    yn = y.numpy()
    out: dict[str, Any] = {
        "clean_accuracy": float((pred == yn).mean()),
        "per_class": precision_recall_f1(yn, pred, num_classes),
        "backdoor": None,
    }
    target = getattr(attack, "target", None)
    if attack is not None and attack.backdoor and target is not None:
        trig_pred = model.predict(attack.apply_trigger(x)).cpu().numpy()
        out["backdoor"] = backdoor_success_rate(trig_pred, yn, target)
    return out
