"""FMN — Fast Minimum-Norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021,
https://arxiv.org/abs/2102.12827).

Minimal-norm attack for ``l0``, ``l1``, ``l2`` and ``linf``, untargeted or targeted. Each step
evaluates the current point x_k = x + δ_k (one forward + backward pass on the active batch) on
the logit difference L = max_{j≠y} z_j − z_y (targeted: z_t − max_{j≠t} z_j), then:

1. adapts the radius ε_k of the constraint ball: if x_k is adversarial, ε_k = min(ε_{k−1}(1 − γ_k),
   best norm so far); otherwise ε_k = ε_{k−1}(1 + γ_k) once an adversarial has been found, and
   the linear estimate of the boundary (‖δ_k‖ + |L| / ‖∇L‖_*)(1 + γ_k) before that (‖·‖_* the
   dual norm). The reference omits that (1 + γ_k): its estimate then approaches the boundary
   from inside and can stall on it (a tie, never adversarial). For ``l0`` the radius is a
   pixel count, moved by at least one pixel per step;
2. takes a gradient step δ ← δ + α_k ∇L / ‖∇L‖₂;
3. projects onto {‖δ‖ ≤ ε_k} ∩ box: exact for ``linf`` and ``l1`` (the reference projects on
   the ball, then clips, which for ``l1`` wastes budget on pixels the box blocks); for ``l2``
   clip first, then scale toward x, so the full radius is used (ball-then-clip loses much
   of it on images with saturated pixels, and the reference then rarely crosses the
   boundary); for ``l0`` clip, then keep the ε_k largest pixels (hard thresholding).

α_k and γ_k follow cosine annealing from ``step_size`` to ``step_size_final`` (default
``step_size / 100``) and from ``gamma`` to ``gamma_final``. Returns, per point, the smallest-norm
adversarial input it evaluated, or the original x when it found none. With a finite ``eps`` a
point stops once its best adversarial is within ``eps``.

    >>> x_adv = FMN(steps=100)(model, x, y, ThreatModel("l2", float("inf")))
    >>> sizes = norms(x_adv - x, "l2")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, is_adversarial, margin
from aegis.errors import ConfigError
from aegis.model import Classifier, LossFn
from aegis.registry import register
from aegis.threat import ThreatModel, norms, project_l1_box

DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def logit_difference(y: Tensor, targets: Tensor | None) -> LossFn:
    """Margin to maximize: max_{j≠y} z_j − z_y, or (targeted) z_t − max_{j≠t} z_j."""
    return lambda z: -margin(z, y, targets)


def cosine(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` (k = 0) toward ``end`` (k = steps)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def project_ball(
    x_new: Tensor, x: Tensor, eps: Tensor, norm: str, bounds: tuple[float, float]
) -> Tensor:
    """Project ``x_new`` onto the ball of per-sample radius ``eps`` around ``x``, and the box."""
    lo, hi = bounds
    delta = x_new - x
    e = _view(eps, x)
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, e), -e)
    elif norm == "l2":
        # Box first, then scale toward x (which stays inside the box): the radius is used in full.
        delta = (x + delta).clamp(lo, hi) - x
        delta = delta * _view((eps / norms(delta, "l2").clamp_min(1e-12)).clamp(max=1.0), x)
    elif norm == "l1":
        # Euclidean projection commutes with scaling: P_{εC}(v) = ε·P_C(v / ε).
        s = e.clamp_min(1e-12)
        delta = project_l1_box(delta / s, (lo - x) / s, (hi - x) / s, 1.0) * s
    else:
        # Hard thresholding to the ε largest pixels, after the box so no kept pixel is pinned.
        delta = (x + delta).clamp(lo, hi) - x
        for k in torch.unique(eps).tolist():
            rows = eps == k
            kept = ThreatModel("l0", k).project(x[rows] + delta[rows], x[rows], bounds)
            delta[rows] = kept - x[rows]
    return (x + delta).clamp(lo, hi)


@register(
    "fmn",
    norms=("linf", "l2", "l1", "l0"),
    paper="https://arxiv.org/abs/2102.12827",
    targeted=True,
    needs_gradients=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class FMN(Attack):
    """Fast Minimum-Norm attack with an adaptive ε-ball (Pintor et al. 2021)."""

    steps: int = 100
    step_size: float = 1.0  # α₀, on the L2-normalized gradient (all norms, as the reference)
    step_size_final: float | None = None  # default: step_size / 100
    gamma: float = 0.05  # γ₀: relative change of ε per step
    gamma_final: float = 0.001

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if self.step_size_final is not None and not 0 < self.step_size_final <= self.step_size:
            raise ConfigError(
                f"step_size_final must be in (0, step_size], got {self.step_size_final}"
            )
        if not 0 < self.gamma < 1:
            raise ConfigError(f"gamma must be in (0, 1), got {self.gamma}")
        if not 0 <= self.gamma_final <= self.gamma:
            raise ConfigError(f"gamma_final must be in [0, gamma], got {self.gamma_final}")

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
        norm, bounds, n = threat.norm, model.bounds, x.shape[0]
        lo, hi = bounds
        alpha_end = self.step_size_final or self.step_size / 100
        if norm == "l0":
            pixels = x[0, 0].numel() if x.ndim == 4 else x[0].numel()
            worst = x.new_full((n,), float(pixels))
            eps = x.new_ones(n)
        else:
            worst = norms(torch.maximum(x - lo, hi - x), norm)
            eps = x.new_full((n,), float("inf"))
        x_cur = x.clone()
        x_best = x.clone()
        best = x.new_full((n,), float("inf"))
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        bounded = math.isfinite(threat.eps)
        idx = torch.arange(n, device=x.device)
        for k in range(self.steps):
            if bounded:  # points whose best is already within the budget are finished
                idx = (best > threat.eps).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
            alpha = cosine(self.step_size, alpha_end, k, self.steps)
            gamma = cosine(self.gamma, self.gamma_final, k, self.steps)
            xa, x0, ya = x_cur[idx], x[idx], y[idx]
            ta = None if targets is None else targets[idx]
            rows = None if idx.numel() == n else idx
            logits, loss, grad = model.value_and_grad(xa, logit_difference(ya, ta), rows=rows)
            size = norms(xa - x0, norm)
            adv = is_adversarial(logits, ya, ta)
            better = adv & (size < best[idx])
            best[idx] = torch.where(better, size, best[idx])
            x_best[idx] = torch.where(_view(better, xa), xa, x_best[idx])
            seen = found[idx] | adv
            found[idx] = seen
            e = eps[idx]
            if norm == "l0":
                shrink = torch.minimum(torch.minimum(e - 1, (e * (1 - gamma)).floor()), best[idx])
                grow = torch.maximum(e + 1, (e * (1 + gamma)).floor())
                e = torch.where(adv, shrink, grow).clamp_min(0)
            else:
                to_boundary = loss.abs() / norms(grad, DUAL[norm]).clamp_min(1e-12)
                e = torch.where(
                    adv,
                    torch.minimum(e * (1 - gamma), best[idx]),
                    torch.where(seen, e, size + to_boundary) * (1 + gamma),
                )
            e = torch.minimum(e, worst[idx])
            eps[idx] = e
            step = grad / _view(norms(grad, "l2").clamp_min(1e-12), grad)
            x_cur[idx] = project_ball(xa + alpha * step, x0, e, norm, bounds)
        return x_best
