"""FGSM — Fast Gradient Sign Method (Goodfellow et al., 2015, https://arxiv.org/abs/1412.6572).

One step of size ε along the steepest-ascent direction of the loss: x' = x + ε·sign(∇ₓJ) for L∞,
ε·∇/‖∇‖₂ for L2, and the sparse top-k step for L1.

    >>> attack = FGSM()
    >>> x_adv = attack(model, x, y, ThreatModel("linf", 0.3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack
from aegis.attacks.iterative import gradient_ascent
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel


@register("fgsm", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/1412.6572")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """Fast Gradient (Sign) Method: one step of size eps (Goodfellow et al. 2015)."""

    sparsity: float = 0.99

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")

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
        return gradient_ascent(
            model,
            x,
            y,
            threat,
            targets=targets,
            generator=generator,
            steps=1,
            step_size=threat.eps,
            random_start=False,
            sparsity=self.sparsity,
            early_stop=False,
        )
