"""How a freshly trained reference model is scored: test accuracy, accuracy under its training
noise, and PGD robust accuracy (one generator across batches of ``EVAL_BATCH``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aegis.attacks._params import resolve_step
from aegis.attacks.pgd import PGD
from aegis.errors import ConfigError, ModelError
from aegis.io.data import load_dataset
from aegis.model import Classifier
from aegis.threat import ThreatModel
from aegis.training import frozen_weights

EVAL_BATCH = 500  # batch size of the robust evaluation


def evaluate_reference(
    clf: Classifier, params: dict[str, Any]
) -> tuple[float, float | None, float | None, dict[str, object] | None]:
    """Test accuracy; under the training noise (noise_sigma models); PGD robust accuracy and
    its settings (adversarially trained models)."""
    test = load_dataset(params["dataset"], split="test")
    x, y = test.tensors()
    if y is None:
        raise ConfigError(f"dataset {params['dataset']} has no test labels")
    clean = clf.predict(x) == y
    test_acc = float(clean.float().mean())
    noisy = None
    if params.get("noise_sigma") is not None:
        gen = torch.Generator().manual_seed(params["seed"] + 2)
        noise = params["noise_sigma"] * torch.randn(x.shape, generator=gen)
        noisy = float((clf.predict(x + noise) == y).float().mean())
    if not params["adversarial"]:
        return test_acc, noisy, None, None
    module = clf.module
    if not isinstance(module, nn.Module):
        raise ModelError("the trained classifier lost its module")
    steps = params["eval_steps"]
    attack = PGD(steps=steps)
    threat = ThreatModel("linf", params["eps"])
    # Not engine.evaluate: its per-batch seeds and its attacking only the correctly classified
    # points draw other random starts, which changes the recorded number (digits, pgd-at, 2
    # epochs, eval_steps=10: 0.0833 here, 0.0972 through the engine); sidecars must not change.
    gen = torch.Generator().manual_seed(params["seed"] + 2)
    robust = torch.zeros_like(clean)
    with frozen_weights(module):
        for i in range(0, len(test), EVAL_BATCH):
            rows = slice(i, i + EVAL_BATCH)
            xa = attack(clf, x[rows], y[rows], threat, generator=gen)
            robust[rows] = clf.predict(xa) == y[rows]
    robust_acc = float((robust & clean).float().mean())
    evaluation: dict[str, object] = {
        "attack": attack.to_dict(),
        "step_size": resolve_step(None, params["eps"], steps),
        "threat": threat.to_dict(),
        "split": "test",
        "n": len(test),
        "seed": params["seed"] + 2,
    }
    return test_acc, noisy, robust_acc, evaluation
