"""DDN — Decoupled Direction and Norm (Rony et al., CVPR 2019, https://arxiv.org/abs/1811.09600).

Minimal-norm ``l2`` attack, untargeted or targeted. The direction and the norm of the
perturbation are updated separately. Each step evaluates x_k = x + δ_k (one forward + backward
pass on the active batch) on the cross-entropy, then:

1. takes a gradient step of norm α_k: δ ← δ + α_k g / ‖g‖₂ (g ascends the CE away from y, or
   descends it toward the target), with α_k cosine-annealed from ``step_size`` to
   ``step_size_final``;
2. shrinks the norm ε ← ε(1 − γ) if x_k was adversarial, grows it ε ← ε(1 + γ) otherwise
   (starting from ``init_eps``, never above the largest norm the box allows);
3. puts δ on the sphere of radius ε and clips x + δ to the box.

Returns, per point, the smallest-norm adversarial input it evaluated, or the original x when it
found none. With a finite ``eps`` a point stops once its best adversarial is within ``eps``.

    >>> x_adv = DDN(steps=100)(model, x, y, ThreatModel("l2", float("inf")))
    >>> sizes = norms(x_adv - x, "l2")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, ce_loss, is_adversarial
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel, norms


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


@register(
    "ddn",
    norms=("l2",),
    paper="https://arxiv.org/abs/1811.09600",
    targeted=True,
    needs_gradients=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class DDN(Attack):
    """Decoupled Direction and Norm L2 attack (Rony et al. 2019)."""

    steps: int = 100
    gamma: float = 0.05  # relative change of the norm per step
    init_eps: float = 1.0  # the norm ε₀ the search starts from
    step_size: float = 1.0  # α₀, annealed (cosine) to step_size_final
    step_size_final: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.gamma < 1:
            raise ConfigError(f"gamma must be in (0, 1), got {self.gamma}")
        if not self.init_eps > 0:
            raise ConfigError(f"init_eps must be > 0, got {self.init_eps}")
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if not 0 < self.step_size_final <= self.step_size:
            raise ConfigError(
                f"step_size_final must be in (0, step_size], got {self.step_size_final}"
            )

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
        lo, hi = model.bounds
        n = x.shape[0]
        worst = norms(torch.maximum(x - lo, hi - x), "l2")
        eps = torch.minimum(x.new_full((n,), self.init_eps), worst)
        x_cur, x_best = x.clone(), x.clone()
        best = x.new_full((n,), float("inf"))
        bounded = math.isfinite(threat.eps)
        idx = torch.arange(n, device=x.device)
        for k in range(self.steps):
            if bounded:  # points whose best is already within the budget are finished
                idx = (best > threat.eps).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
            cos = (1 + math.cos(math.pi * k / self.steps)) / 2
            alpha = self.step_size_final + (self.step_size - self.step_size_final) * cos
            xa, x0, ya = x_cur[idx], x[idx], y[idx]
            ta = None if targets is None else targets[idx]
            rows = None if idx.numel() == n else idx
            logits, _, grad = model.value_and_grad(xa, ce_loss(ya, ta), rows=rows)
            delta = xa - x0
            size = norms(delta, "l2")
            adv = is_adversarial(logits, ya, ta)
            better = adv & (size < best[idx])
            best[idx] = torch.where(better, size, best[idx])
            x_best[idx] = torch.where(_view(better, xa), xa, x_best[idx])
            g_norm = norms(grad, "l2")
            flat_grad = g_norm < 1e-12
            if bool(flat_grad.any()):  # no signal: a random direction, as the reference does
                noise = torch.randn(
                    grad.shape, generator=generator, device=x.device, dtype=grad.dtype
                )
                grad = torch.where(_view(flat_grad, grad), noise, grad)
                g_norm = norms(grad, "l2")
            delta = delta + alpha * grad / _view(g_norm.clamp_min(1e-12), grad)
            e = eps[idx] * torch.where(adv, 1 - self.gamma, 1 + self.gamma)
            e = torch.minimum(e, worst[idx])
            eps[idx] = e
            delta = delta * _view(e / norms(delta, "l2").clamp_min(1e-12), delta)
            x_cur[idx] = (x0 + delta).clamp(lo, hi)
        return x_best
