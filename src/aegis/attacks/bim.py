"""BIM — Basic Iterative Method (Kurakin et al., 2017, https://arxiv.org/abs/1607.02533).

FGSM iterated ``steps`` times with step size η from the clean input, projected onto the ε-ball
∩ box after every step; no random start. The seed's "gradient attack Δx = −η·∇ₓJ".

    >>> x_adv = BIM(steps=100, step_size=0.01)(model, x, y, ThreatModel("linf", 0.3))
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


@register("bim", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/1607.02533")
@dataclass(frozen=True, kw_only=True)
class BIM(Attack):
    """Basic Iterative Method: iterated FGSM from the clean input (Kurakin et al. 2017)."""

    steps: int = 10
    step_size: float | None = None  # default: eps / steps
    sparsity: float = 0.99
    early_stop: bool = True  # freeze points once fooled: saves work, never changes a verdict

    def __post_init__(self) -> None:
        check_iterative(self.steps, self.step_size, 1, self.sparsity)

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
            sparsity=self.sparsity,
            early_stop=self.early_stop,
        )
