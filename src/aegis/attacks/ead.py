"""EAD — Elastic-net attack, Chen, Sharma, Zhang, Yi & Hsieh (2018), https://arxiv.org/abs/1709.04114.

Minimal-norm L1 attack, untargeted or targeted: C&W with an L1 term. For each point it minimizes

    c · f(x + δ) + ‖δ‖₂² + β · ‖δ‖₁   over x + δ in the box,

with f the C&W margin loss with confidence κ (see ``cw``). The L1 term is not differentiable, so
the paper uses FISTA: a gradient step on the smooth part g = c·f + ‖δ‖₂² at the slack point y_k,
then the projected shrinkage-thresholding S_β (coordinates within β of x go back to x, the others
move β toward x and are clipped to the box),

    x_{k+1} = S_β(y_k − α_k ∇g(y_k)),   y_{k+1} = x_{k+1} + k/(k+3) · (x_{k+1} − x_k),

with α_k = α₀·√(1 − k/N) (α₀ = ``step_size``, N = ``steps``). The constant c is binary-searched
per point as in C&W, and a point stops early once its elastic-net loss at x_k stalls.

Deviations: the slack point y_{k+1} is clipped to the box (the extrapolation can leave it, and
every input the model sees should be a valid one); the decision rule is L1 (the paper's "L1
rule"): per point, the smallest-L1 adversarial input among every point evaluated (the x_k and the
y_k, for every constant), or the original x for a point never fooled. With a finite ``eps``, a
point stops once it has an adversarial input within ``eps`` (same verdict, norm not minimized).

Two model calls per iteration: a forward + backward at y_k and a forward at x_{k+1}.

    >>> attack = EAD(steps=100, beta=1e-2)
    >>> x_adv = attack(model, x, y, ThreatModel("l1", float("inf")))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, is_adversarial, margin
from aegis.attacks.cw import STALL, Best, check_search, margin_loss, next_consts
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel, flat


def shrink(z: Tensor, x: Tensor, beta: float, lo: float, hi: float) -> Tensor:
    """Projected shrinkage-thresholding S_β: soft-threshold z − x at β, then clip to the box."""
    d = z - x
    out = torch.where(d > beta, (z - beta).clamp_max(hi), x)
    return torch.where(d < -beta, (z + beta).clamp_min(lo), out)


@register(
    "ead",
    norms=("l1",),
    paper="https://arxiv.org/abs/1709.04114",
    targeted=True,
    needs_gradients=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class EAD(Attack):
    """EAD: elastic-net (L1 + L2) regularized C&W, solved by FISTA (L1 decision rule)."""

    steps: int = 100  # per constant; reference code: 1,000, Foolbox: 10,000, ART: 100
    search_steps: int = 9  # reference code, Foolbox, ART
    initial_const: float = 1e-3  # reference code, Foolbox, ART
    step_size: float = 0.01  # α₀, the initial FISTA step (reference code, Foolbox, ART)
    beta: float = 1e-2  # L1 weight (Foolbox; the reference code and ART use 1e-3)
    kappa: float = 0.0  # confidence
    abort_early: bool = True

    def __post_init__(self) -> None:
        check_search(self.steps, self.search_steps, self.initial_const, self.kappa)
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if not self.beta >= 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")

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
        n = x.shape[0]
        lo, hi = model.bounds
        check = max(self.steps // 10, 1)
        best = Best(x)
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, float("inf"))
        for search in range(self.search_steps):
            if self.search_steps >= 10 and search == self.search_steps - 1:
                const = torch.where(torch.isinf(upper), const, upper)
            # With a finite budget, a point already fooled within it is done (same verdict).
            idx = torch.arange(n, device=x.device)
            idx = idx[best.pending(idx, threat.eps)]
            if idx.numel() == 0:
                break
            success = torch.zeros(n, dtype=torch.bool, device=x.device)
            x_k, y_k = x[idx], x[idx]
            prev = torch.full_like(const[idx], float("inf"))
            for k in range(self.steps):
                x0, y0, c = x[idx], y[idx], const[idx]
                t0 = None if targets is None else targets[idx]
                alpha = self.step_size * (1 - k / self.steps) ** 0.5
                logits, _, grad = model.value_and_grad(
                    y_k, margin_loss(y0, t0, c, self.kappa), rows=idx
                )
                hit = (margin(logits, y0, t0) < -self.kappa) & is_adversarial(logits, y0, t0)
                best.offer(idx, y_k, flat(y_k - x0).abs().sum(1), hit)
                success[idx] |= hit
                x_next = shrink(y_k - alpha * (grad + 2 * (y_k - x0)), x0, self.beta, lo, hi)
                y_k = (x_next + k / (k + 3) * (x_next - x_k)).clamp(lo, hi)
                x_k = x_next
                logits = model.logits(x_k, rows=idx)
                m = margin(logits, y0, t0)
                hit = (m < -self.kappa) & is_adversarial(logits, y0, t0)
                l1 = flat(x_k - x0).abs().sum(1)
                best.offer(idx, x_k, l1, hit)
                success[idx] |= hit
                if k % check == 0 and k < self.steps - 1:
                    going = best.pending(idx, threat.eps)
                    if self.abort_early:
                        loss = c * m.clamp_min(-self.kappa) + flat(x_k - x0).pow(2).sum(1)
                        loss = loss + self.beta * l1
                        going &= ~(loss > STALL * prev)
                        prev = loss
                    if not going.all():
                        idx, x_k, y_k, prev = idx[going], x_k[going], y_k[going], prev[going]
                        if idx.numel() == 0:
                            break
            const, lower, upper = next_consts(const, lower, upper, success)
        return best.x
