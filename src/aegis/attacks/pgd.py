"""PGD — Projected Gradient Descent (Madry et al., 2018, https://arxiv.org/abs/1706.06083).

BIM from a uniformly random start inside the ε-ball, with optional restarts (each restart runs
only on the points not yet fooled). For ``l1`` it is the sparse gradient attack: each step moves
only the top (1 − sparsity) share of the gradient's coordinates (SLIDE, Tramèr & Boneh 2019,
https://arxiv.org/abs/1904.13000), projected onto the L1 ball ∩ box.

    >>> x_adv = PGD(steps=40, step_size=0.01)(model, x, y, ThreatModel("linf", 0.3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import check_iterative, resolve_step
from aegis.attacks.base import Attack
from aegis.attacks.iterative import gradient_ascent
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel


@register("pgd", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/1706.06083")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected Gradient Descent with random start and restarts (Madry et al. 2018)."""

    steps: int = 40
    step_size: float | None = None  # default: 2.5 * eps / steps
    random_start: bool = True
    restarts: int = 1
    sparsity: float = 0.99
    early_stop: bool = True  # freeze points once fooled: saves work, never changes a verdict

    def __post_init__(self) -> None:
        check_iterative(self.steps, self.step_size, self.restarts, self.sparsity)

    def run(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        step = resolve_step(self.step_size, threat.eps, self.steps)
        return gradient_ascent(
            model,
            x,
            y,
            threat,
            targets=targets,
            generator=generator,
            steps=self.steps,
            step_size=step,
            random_start=self.random_start,
            restarts=self.restarts,
            sparsity=self.sparsity,
            early_stop=self.early_stop,
        )
