"""MI-FGSM — Momentum Iterative FGSM (Dong et al., 2018, https://arxiv.org/abs/1710.06081).

g_{t+1} = μ·g_t + ∇ₓJ / ‖∇ₓJ‖₁ and x_{t+1} = Π(x_t + η·d(g_{t+1})): the momentum stabilizes
the direction and improves transfer to other models.

    >>> x_adv = MIFGSM(steps=10, decay=1.0)(model, x, y, ThreatModel("linf", 0.3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import check_iterative, resolve_step
from aegis.attacks.base import Attack
from aegis.attacks.iterative import gradient_ascent
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel


@register("mifgsm", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/1710.06081")
@dataclass(frozen=True, kw_only=True)
class MIFGSM(Attack):
    """Momentum Iterative FGSM (Dong et al. 2018)."""

    steps: int = 10
    step_size: float | None = None  # default: eps / steps
    decay: float = 1.0
    sparsity: float = 0.99
    early_stop: bool = True  # freeze points once fooled: saves work, never changes a verdict

    def __post_init__(self) -> None:
        check_iterative(self.steps, self.step_size, 1, self.sparsity)
        if self.decay < 0:
            raise ConfigError(f"decay must be >= 0, got {self.decay}")

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
        step = resolve_step(self.step_size, threat.eps, self.steps, 1.0)
        return gradient_ascent(
            model,
            x,
            y,
            threat,
            targets=targets,
            generator=generator,
            steps=self.steps,
            step_size=step,
            random_start=False,
            decay=self.decay,
            sparsity=self.sparsity,
            early_stop=self.early_stop,
        )
