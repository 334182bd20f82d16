"""PGD₀ — PGD under an L0 budget (Croce & Hein, 2019, https://arxiv.org/abs/1909.05040).

"Sparse and Imperceivable Adversarial Attacks", the white-box PGD attack for the L0 threat
model: at most k = ε pixels may change, each by anything the box allows. From a random start
(a uniformly random image, of which the projection keeps k pixels) it repeats

    x ← Π₀( x + η · ∇ₓL / ‖∇ₓL‖₁ ),

where Π₀ projects onto {k pixels changed} ∩ box (``ThreatModel.project``: clip to the box, keep
the k most-changed pixels). The gradient is normalized by its L1 norm, so the step η grows with
the input size: the default η ≈ 0.46·H·W is the reference's CIFAR-10 setting, 120000/255 for
32×32 pixels, carried over per pixel. L is the cross-entropy (away from ``y``, or toward
``targets``). Defaults as the reference's PyTorch runner: 100 steps, 5 restarts (on the points
not yet fooled). Returns, per point, the first adversarial iterate found, else the original
input (as the reference does).

    >>> x_adv = PGDL0(steps=100, restarts=5)(model, x, y, ThreatModel("l0", 10))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import check_iterative
from aegis.attacks.base import Attack, ce_loss, is_adversarial
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel, flat

STEP_PER_PIXEL = 120000 / 255 / 1024  # the reference's CIFAR-10 step, per pixel


@register("pgd-l0", norms=("l0",), paper="https://arxiv.org/abs/1909.05040")
@dataclass(frozen=True, kw_only=True)
class PGDL0(Attack):
    """PGD₀: gradient steps projected onto k changed pixels ∩ box (Croce & Hein 2019)."""

    steps: int = 100
    step_size: float | None = None  # default: 0.46 · H·W, see the docstring
    restarts: int = 5
    random_start: bool = True

    def __post_init__(self) -> None:
        check_iterative(self.steps, self.step_size, self.restarts, 0.0)

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
        x_out = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        eta = (
            self.step_size
            if self.step_size is not None
            else STEP_PER_PIXEL * x.shape[2] * x.shape[3]
        )
        for restart in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            t = None if targets is None else targets[idx]
            random = self.random_start or restart > 0
            adv, hit = self._one_run(model, x[idx], y[idx], t, idx, threat, eta, random, generator)
            x_out[idx] = torch.where(hit.view(-1, 1, 1, 1), adv, x_out[idx])
            found[idx] = hit
        return x_out

    def _one_run(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        threat: ThreatModel,
        eta: float,
        random: bool,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """One PGD₀ run: (first adversarial iterate per point, found). Points stop once fooled."""
        lo, hi = model.bounds
        x_cur = x.clone()
        if random:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_cur = threat.project(lo + (hi - lo) * u, x, model.bounds)
        x_adv = x.clone()
        hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)  # positions still being attacked
        for step in range(self.steps + 1):
            xa, ya = x_cur[active], y[active]
            ta = None if t is None else t[active]
            if step < self.steps:
                logits, _, grad = model.value_and_grad(xa, ce_loss(ya, ta), rows=rows[active])
            else:  # the last iterate only needs checking
                logits = model.logits(xa, rows=rows[active])
            now = is_adversarial(logits, ya, ta)
            x_adv[active[now]] = xa[now]
            hit[active[now]] = True
            if step == self.steps or bool(now.all()):
                break
            keep = ~now
            active, xa, grad = active[keep], xa[keep], grad[keep]
            g = grad / flat(grad).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x_cur[active] = threat.project(xa + eta * g, x[active], model.bounds)
        return x_adv, hit
