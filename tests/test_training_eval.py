"""The one gradient-ascent loop takes the loss (or a whole objective) from its caller, and a
reference model's robust accuracy is the engine's evaluation scored by ``aegis.metrics``."""

from __future__ import annotations

import torch
from torch import Tensor

from aegis.attacks.base import ce_loss, is_adversarial
from aegis.attacks.iterative import gradient_ascent
from aegis.engine import evaluate
from aegis.io.data import load_dataset
from aegis.metrics import adversarial_accuracy, clean_accuracy
from aegis.model import Classifier, LossFn
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.evaluation import EVAL_BATCH, evaluate_reference

THREAT = ThreatModel("linf", 0.1)


def _ascend(model: Classifier, x: Tensor, y: Tensor, **kwargs: object) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return gradient_ascent(
        model,
        x,
        y,
        THREAT,
        targets=None,
        generator=gen,
        steps=8,
        step_size=0.03,
        random_start=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_gradient_ascent_ascends_the_loss_it_is_given(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    assert torch.equal(_ascend(model, x, y), _ascend(model, x, y, loss=ce_loss))

    def flat_loss(y: Tensor, targets: Tensor | None) -> LossFn:
        return lambda logits: 0 * logits.sum(1)  # no gradient: no step moves

    start = THREAT.random_start(x, model.bounds, torch.Generator().manual_seed(0))
    assert torch.equal(_ascend(model, x, y, loss=flat_loss), start)


def test_gradient_ascent_freezes_by_the_objectives_own_test(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    seen: list[int] = []

    def objective(
        xa: Tensor, ya: Tensor, targets: Tensor | None, rows: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        _, _, grad = model.value_and_grad(xa, ce_loss(ya, targets), rows=rows)
        seen.append(xa.shape[0])
        return torch.zeros(xa.shape[0], dtype=torch.bool), grad  # never succeeds

    out = _ascend(model, x, y, objective=objective)
    assert seen == [40] * 8  # nothing frozen, so no point leaves the batch
    assert torch.equal(out, _ascend(model, x, y, early_stop=False))
    assert is_adversarial(model.logits(out), y, None).any()


def test_reference_robust_accuracy_is_the_engines(digits_model) -> None:
    model, _, _ = digits_model
    params = {"dataset": "digits", "seed": 3, "adversarial": "pgd", "eps": 0.1, "eval_steps": 5}
    test_acc, noisy, robust, spec = evaluate_reference(model, params)
    x, y = load_dataset("digits", split="test").tensors()
    assert y is not None
    ev = evaluate(
        model, x, y, create("pgd", steps=5), THREAT, batch_size=EVAL_BATCH, seed=params["seed"] + 2
    )
    assert test_acc == clean_accuracy(ev.records) and robust == adversarial_accuracy(ev.records)
    # robust: correct and not fooled (the engine attacks only the correctly classified points)
    correct_kept = (ev.records.adv_pred == ev.records.y) & (ev.records.clean_pred == ev.records.y)
    assert robust == correct_kept.mean() and robust is not None and robust < test_acc
    assert noisy is None and spec is not None and spec["n"] == 360 and spec["seed"] == 5
