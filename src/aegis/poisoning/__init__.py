"""Poisoning: attacks on a training set (label flipping, BadNets, blended and label-consistent
backdoors), detection of the poisoned points (activation clustering, spectral signatures), and the
measures of a trained model. ``run_poisoning``, the Python call behind ``aegis poison``, is in
:mod:`aegis.workflows.poison`.

The names load on first use, so ``aegis --help`` does not import torch for this package.

    >>> from aegis.poisoning import BadNets, Trigger
    >>> from aegis.workflows.poison import run_poisoning
    >>> results = run_poisoning("digits", attack="badnets", rate=0.1, target=0, epochs=5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aegis.poisoning.attacks import (
        ATTACKS,
        BadNets,
        Blend,
        LabelConsistent,
        LabelFlip,
        PoisonedSet,
        PoisoningAttack,
        Trigger,
        load_pattern,
    )
    from aegis.poisoning.detection import (
        DETECTORS,
        ActivationClustering,
        PoisonDetector,
        PoisonFlags,
        SpectralSignatures,
    )
    from aegis.poisoning.run import create_attack, create_detector, evaluate_model

_ATTACKS: tuple[str, ...] = ("ATTACKS", "BadNets", "Blend", "LabelConsistent", "LabelFlip")
_ATTACKS += ("PoisonedSet", "PoisoningAttack", "Trigger", "load_pattern")
_DETECTION: tuple[str, ...] = ("DETECTORS", "ActivationClustering", "PoisonDetector")
_DETECTION += ("PoisonFlags", "SpectralSignatures")
_RUN = ("create_attack", "create_detector", "evaluate_model")
_LAZY = {
    **{n: "aegis.poisoning.attacks" for n in _ATTACKS},
    **{n: "aegis.poisoning.detection" for n in _DETECTION},
    **{n: "aegis.poisoning.run" for n in _RUN},
}

__all__ = [
    "ATTACKS",
    "DETECTORS",
    "ActivationClustering",
    "BadNets",
    "Blend",
    "LabelConsistent",
    "LabelFlip",
    "PoisonDetector",
    "PoisonFlags",
    "PoisonedSet",
    "PoisoningAttack",
    "SpectralSignatures",
    "Trigger",
    "create_attack",
    "create_detector",
    "evaluate_model",
    "load_pattern",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aegis.poisoning' has no attribute {name!r}")
