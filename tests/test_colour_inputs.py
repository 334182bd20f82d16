"""Registry-driven, in colour: every registered attack, every norm it supports, on 3-channel
inputs at CIFAR (32×32) and ImageNet (224×224) size, through the engine."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from aegis.engine import evaluate
from aegis.model import Classifier, ModelInfo
from aegis.registry import create, get_spec, list_attacks
from aegis.threat import ThreatModel

SLOW_AT_224 = {"jsma": "its O((H·W)²) pair search takes 51 s a point and iteration at 224×224 "
               "(bounded memory: tests/test_memory.py checks its row blocks)"}  # fmt: skip
CASES = [
    (side, s.name, norm)
    for side in (32, 224)
    for s in list_attacks()
    for norm in s.norms
    if not (side == 224 and s.name in SLOW_AT_224)
]
EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 10.0, "l0": 12.0}


def _budget(name: str) -> dict[str, int]:
    """The smallest budgets that still run each algorithm's every stage."""
    params = get_spec(name).parameters()
    out = {"steps": 3} if "steps" in params else {}
    out |= {
        k: v for k, v in {"queries": 30, "search_steps": 2, "samples": 4}.items() if k in params
    }
    if "target_classes" in params:
        out["target_classes"] = 2
    return out


def _colour_model(side: int) -> Classifier:
    torch.manual_seed(side)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    return Classifier(net.eval(), ModelInfo(num_classes=3, input_shape=(3, side, side)))


@functools.cache
def _colour(side: int) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    model = _colour_model(side)
    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    return model, x, model.predict(x)  # every point correctly classified: every one attacked


@pytest.mark.parametrize(("side", "name", "norm"), CASES)
def test_every_attack_runs_on_colour_images(side, name, norm) -> None:
    model, x, y = _colour(side)
    threat = ThreatModel(norm, EPS[norm])
    run = evaluate(model, x, y, create(name, **_budget(name)), threat, seed=0)
    assert run.x_adv.shape == tuple(x.shape)
    assert run.records.attacked.all()
    x_adv = torch.from_numpy(run.x_adv)
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert threat.within(x_adv, x, model.bounds).all()
    # A success is a point whose class changed, re-predicted on what the attack returned.
    flipped = (model.predict(x_adv) != y).numpy()
    assert (run.records.success == flipped).all()
