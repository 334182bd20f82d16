"""aegis: attack, harden and measure the security of image classifiers.

``import aegis`` stays light: heavy optional dependencies (keras, onnx) load on first use.

    >>> import aegis
    >>> run = aegis.run_attack("model.keras", "attack_dataset.npy", labels="labels.npy",
    ...                        attack="pgd", eps=0.3, step_size=0.01, steps=100, targets=5,
    ...                        success_threshold=0.9)
    >>> print(run.verdict)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aegis._version import __version__ as __version__

__all__ = [
    "Classifier",
    "ModelInfo",
    "ThreatModel",
    "create",
    "evaluate",
    "list_attacks",
    "load_classifier",
    "load_dataset",
    "run_attack",
]

if TYPE_CHECKING:
    from aegis.engine import evaluate
    from aegis.io.data import load_dataset
    from aegis.io.models import load_classifier
    from aegis.model import Classifier, ModelInfo
    from aegis.registry import create, list_attacks
    from aegis.threat import ThreatModel
    from aegis.workflows.attack import run_attack

_LAZY = {
    "Classifier": "aegis.model",
    "ModelInfo": "aegis.model",
    "ThreatModel": "aegis.threat",
    "create": "aegis.registry",
    "list_attacks": "aegis.registry",
    "evaluate": "aegis.engine",
    "load_classifier": "aegis.io.models",
    "load_dataset": "aegis.io.data",
    "run_attack": "aegis.workflows.attack",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aegis' has no attribute {name!r}")
