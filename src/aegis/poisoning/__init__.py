"""Poisoning: attacks on a training set (label flipping, BadNets, blended and label-consistent
backdoors), detection of the poisoned points (activation clustering, spectral signatures), and
``run_poisoning``, the Python call behind ``aegis poison``.

    >>> from aegis.poisoning import BadNets, Trigger, run_poisoning
    >>> results = run_poisoning("digits", attack="badnets", rate=0.1, target=0, epochs=5)
"""

from __future__ import annotations

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
from aegis.poisoning.run import create_attack, create_detector, evaluate_model, run_poisoning

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
    "run_poisoning",
]
