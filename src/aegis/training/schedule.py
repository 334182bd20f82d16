"""Seeding, optimizers and learning-rate schedules of the training loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

SGD_WEIGHT_DECAY = 5e-4  # with optimizer="sgd" (the usual value for SGD-trained CNNs)
SCHEDULES = ("onecycle", "triangle")
"""LR schedules: torch's one-cycle (cosine, peak at 30%, momentum cycled for SGD), or a
linear triangle from 0 to the peak at 40% of the steps and back to 0 (Wong et al.'s Fast-AT,
ART's FBF), momentum constant."""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG without leaking it, and enforce deterministic algorithms."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def make_optimizer(
    parameters: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float | None
) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, weight decay ``SGD_WEIGHT_DECAY`` unless set) or Adam (none unless
    set)."""
    if name == "sgd":
        decay = SGD_WEIGHT_DECAY if weight_decay is None else weight_decay
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay or 0.0)


def triangle(total: int) -> Callable[[int], float]:
    """LR factor of the triangle schedule: linear from 0 to 1 at 40% of ``total`` steps, then
    back to 0 at the end; step ``s`` (0-based) trains at the factor of (s + 1) / total."""
    peak = 0.4

    def factor(s: int) -> float:
        t = min(1.0, (s + 1) / total)
        return t / peak if t <= peak else (1.0 - t) / (1.0 - peak)

    return factor


def make_scheduler(
    opt: torch.optim.Optimizer, schedule: str, lr: float, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(opt, triangle(total))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
