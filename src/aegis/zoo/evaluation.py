"""How a freshly trained reference model is scored: test accuracy, accuracy under its training
noise, and PGD robust accuracy (``engine.evaluate`` in batches of ``EVAL_BATCH``; the metrics
are ``aegis.metrics``' over its records)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aegis.attacks._params import resolve_step
from aegis.attacks.pgd import PGD
from aegis.engine import evaluate
from aegis.errors import ConfigError, DataError, ModelError
from aegis.io.data import load_dataset
from aegis.metrics import adversarial_accuracy, clean_accuracy
from aegis.model import Classifier
from aegis.threat import ThreatModel
from aegis.training import frozen_weights

EVAL_BATCH = 500  # batch size of the robust evaluation


def evaluate_reference(
    clf: Classifier, params: dict[str, Any]
) -> tuple[float, float | None, float | None, dict[str, object] | None]:
    """Test accuracy; under the training noise (noise_sigma models); PGD robust accuracy and
    its settings (adversarially trained models).

    The robust accuracy is the share of test points classified correctly and not fooled by
    PGD (``eval_steps`` steps, random start, step 2.5 · ε / steps), run by ``engine.evaluate``
    with seed ``seed + 2``: like every evaluation it attacks only the correctly classified
    points, each batch from its own seed."""
    test = load_dataset(params["dataset"], split="test")
    x, y = test.tensors()
    if y is None:
        raise ConfigError(f"dataset {params['dataset']} has no test labels")
    noisy = None
    if params.get("noise_sigma") is not None:
        gen = torch.Generator().manual_seed(params["seed"] + 2)
        noise = params["noise_sigma"] * torch.randn(x.shape, generator=gen)
        noisy = float((clf.predict(x + noise) == y).float().mean())
    if not params["adversarial"]:
        return float((clf.predict(x) == y).float().mean()), noisy, None, None
    module = clf.module
    if not isinstance(module, nn.Module):
        raise ModelError("the trained classifier lost its module")
    steps = params["eval_steps"]
    attack = PGD(steps=steps)
    threat = ThreatModel("linf", params["eps"])
    with frozen_weights(module):
        ev = evaluate(clf, x, y, attack, threat, batch_size=EVAL_BATCH, seed=params["seed"] + 2)
    test_acc, robust_acc = clean_accuracy(ev.records), adversarial_accuracy(ev.records)
    if test_acc is None or robust_acc is None:
        raise DataError(f"dataset {params['dataset']} has an empty test split")
    evaluation: dict[str, object] = {
        "attack": attack.to_dict(),
        "step_size": resolve_step(None, params["eps"], steps),
        "threat": threat.to_dict(),
        "split": "test",
        "n": len(test),
        "seed": params["seed"] + 2,
    }
    return test_acc, noisy, robust_acc, evaluation
