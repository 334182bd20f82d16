"""ThreatModel: the norm, the budget, and the projections onto the ball ∩ box (written once).

Every norm-dependent piece of maths lives here: norms of a perturbation, projection onto the
ε-ball intersected with the valid input box, the steepest-ascent direction of a gradient, and
uniform random starts inside the ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.errors import ConfigError

NORMS = ("linf", "l2", "l1", "l0")


def flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))  # works on an empty batch too


def norms(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of ``delta`` (shape (n,)). ``l0`` counts changed pixels: on an NCHW
    batch, a pixel whose channels change counts once, as in the L0 projection."""
    if norm == "l0" and delta.ndim == 4:
        return (delta != 0).any(1).flatten(1).sum(1).to(delta.dtype)
    d = flat(delta)
    if norm == "linf":
        return d.abs().amax(1) if d.shape[1] else d.new_zeros(d.shape[0])
    if norm == "l2":
        out: Tensor = d.norm(p=2, dim=1)
        return out
    if norm == "l1":
        return d.abs().sum(1)
    if norm == "l0":
        return (d != 0).sum(1).to(d.dtype)
    raise ConfigError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def project_l1_box(v: Tensor, low: Tensor, high: Tensor, eps: float, iters: int = 40) -> Tensor:
    """Euclidean projection of ``v`` onto {δ : ‖δ‖₁ ≤ eps, low ≤ δ ≤ high} (low ≤ 0 ≤ high).

    The KKT conditions give δᵢ(λ) = clip(sign(vᵢ)·max(|vᵢ| − λ, 0), lowᵢ, highᵢ) for the λ ≥ 0
    at which ‖δ(λ)‖₁ = eps (or λ = 0 when the clipped v is already inside). ‖δ(λ)‖₁ falls
    monotonically with λ, so λ is found by bisection; the feasible end is returned, so the
    budget is never exceeded.
    """
    shape = v.shape
    v2, lo2, hi2 = flat(v), flat(low), flat(high)

    def at(lam: Tensor) -> Tensor:
        soft = v2.sign() * (v2.abs() - lam[:, None]).clamp_min(0)
        return torch.minimum(torch.maximum(soft, lo2), hi2)

    zero = v2.new_zeros(v2.shape[0])
    inside = at(zero).abs().sum(1) <= eps
    lam_lo = zero.clone()
    lam_hi = v2.abs().amax(1) if v2.shape[1] else zero.clone()
    for _ in range(iters):
        mid = (lam_lo + lam_hi) / 2
        over = at(mid).abs().sum(1) > eps
        lam_lo = torch.where(over, mid, lam_lo)
        lam_hi = torch.where(over, lam_hi, mid)
    out = torch.where(inside[:, None], at(zero), at(lam_hi))
    # Bisection leaves ‖out‖₁ ≤ eps up to float rounding; rescale the last ulp away.
    total = out.abs().sum(1)
    scale = torch.where(total > eps, eps / total.clamp_min(1e-30), torch.ones_like(total))
    return (out * scale[:, None]).view(shape)


def _trim_l1(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """``x_adv`` with its smallest moves undone until ‖x_adv − x‖₁ ≤ eps as stored.

    Adding δ to x rounds every coordinate to x's float grid, and a move below half a grid step
    comes back a whole step: on 3×224×224 inputs the L1 norm of what is stored can exceed the
    projected δ's by 2e-5 of ε. Undone moves are exactly x again, so no rounding is left."""
    moved = flat(x_adv - x).abs()
    over = moved.sum(1) - eps
    small, order = moved.sort(1)
    # Undo the smallest moves while what was undone before them is still short of the excess.
    undo = (small.cumsum(1) - small) < over[:, None]
    undo = torch.zeros_like(undo).scatter(1, order, undo)
    return torch.where(undo.view_as(x_adv), x, x_adv)


def project_l0(delta: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest-magnitude pixels (all channels of a pixel count as one)."""
    n = delta.shape[0]
    if delta.ndim == 4:
        score = delta.abs().sum(1).reshape(n, -1)
        keep = torch.zeros_like(score, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, score.topk(min(k, score.shape[1]), dim=1).indices, True)
        mask = keep.view(n, 1, *delta.shape[2:])
    else:
        score = flat(delta).abs()
        keep = torch.zeros_like(score, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, score.topk(min(k, score.shape[1]), dim=1).indices, True)
        mask = keep.view_as(delta)
    return delta * mask


@dataclass(frozen=True)
class ThreatModel:
    """A perturbation budget: ``norm`` ∈ {linf, l2, l1, l0}, radius ``eps``, targeted or not.

    For ``l0`` the budget counts changed pixels. ``eps = inf`` means unbounded (minimal-norm
    attacks); the box still applies.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    targeted: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)}")
        if not self.eps >= 0:  # also rejects NaN
            raise ConfigError(f"eps must be a number >= 0 (or inf), got {self.eps}")

    # -- projections ------------------------------------------------------------------------
    def project(self, x_adv: Tensor, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        """Project ``x_adv`` onto the ε-ball around ``x`` intersected with the box."""
        lo, hi = bounds
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
            return (x + delta).clamp(lo, hi)
        if self.norm == "l2":
            d = (x + delta).clamp(lo, hi) - x
            n = norms(d, "l2")
            factor = torch.where(n > self.eps, self.eps / n.clamp_min(1e-12), torch.ones_like(n))
            # Scaling toward x stays inside the box, which is convex and contains x.
            out = (x + d * _view(factor, d)).clamp(lo, hi)
            return out
        if self.norm == "l1":
            d = project_l1_box(delta, lo - x, hi - x, self.eps)
            return _trim_l1((x + d).clamp(lo, hi), x, self.eps)
        k = int(self.eps) if self.eps != float("inf") else delta[0].numel()
        moved = (x + delta).clamp(lo, hi)
        kept = project_l0(moved - x, k) != 0
        # Kept pixels take the clamped value itself (x + d could round 1 ulp off the bound).
        return torch.where(kept, moved, x)

    def within(
        self, x_adv: Tensor, x: Tensor, bounds: tuple[float, float], tol: float = 1e-5
    ) -> Tensor:
        """Per-sample check that ``x_adv`` respects the budget and the box (up to ``tol``)."""
        lo, hi = bounds
        size = norms(x_adv - x, self.norm)
        in_box = (flat(x_adv) >= lo - tol).all(1) & (flat(x_adv) <= hi + tol).all(1)
        slack = tol if self.norm == "l0" else tol * max(1.0, self.eps if self.eps < 1e9 else 1.0)
        return in_box & (size <= self.eps + slack)

    # -- shared attack maths ---------------------------------------------------------------
    def random_start(
        self, x: Tensor, bounds: tuple[float, float], generator: torch.Generator | None
    ) -> Tensor:
        """A random point of the ε-ball around ``x`` (uniform for linf, in-ball for l2/l1)."""
        if self.eps == 0:
            return x.clone()
        shape = x.shape
        if self.norm == "linf":
            u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * self.eps
        elif self.norm == "l2":
            g = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
            g = g / _view(norms(g, "l2").clamp_min(1e-12), g)
            r = torch.rand(shape[0], generator=generator, device=x.device, dtype=x.dtype)
            delta = g * _view(r ** (1.0 / flat(x).shape[1]) * self.eps, g)
        elif self.norm == "l1":
            # Laplace direction, radius uniform in [0, eps]: a point inside the L1 ball.
            e = torch.empty(shape, device=x.device, dtype=x.dtype).exponential_(generator=generator)
            s = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
            g = e * s
            g = g / _view(norms(g, "l1").clamp_min(1e-12), g)
            r = torch.rand(shape[0], generator=generator, device=x.device, dtype=x.dtype)
            delta = g * _view(r * self.eps, g)
        else:
            delta = torch.zeros_like(x)
        return self.project(x + delta, x, bounds)

    def ascent_direction(
        self,
        grad: Tensor,
        *,
        sparsity: float = 0.99,
        x: Tensor | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> Tensor:
        """The steepest-ascent step of unit size for this norm.

        linf: sign(g); l2: g/‖g‖₂; l1 (the sparse gradient attack, as in SLIDE / L1-APGD): only
        the top (1 − ``sparsity``) share of coordinates by |g| move, by sign(g), normalized to unit
        L1 norm. Coordinates that are pinned at the box in the direction of the gradient are
        excluded first, so the sparse step is not wasted on pixels that cannot move.
        """
        if self.norm == "linf":
            return grad.sign()
        if self.norm == "l2":
            return grad / _view(norms(grad, "l2").clamp_min(1e-12), grad)
        g = flat(grad)
        if x is not None and bounds is not None:
            xf = flat(x)
            blocked = ((xf <= bounds[0]) & (g < 0)) | ((xf >= bounds[1]) & (g > 0))
            g = g.masked_fill(blocked, 0.0)
        if self.norm == "l1":
            d = g.shape[1]
            k = max(1, round((1 - sparsity) * d))
            thresh = g.abs().topk(k, dim=1).values[:, -1:]
            step = g.sign() * (g.abs() >= thresh).to(g.dtype) * (g != 0).to(g.dtype)
            step = step / step.abs().sum(1, keepdim=True).clamp_min(1.0)
            return step.view_as(grad)
        # l0: move the highest-|g| pixels fully (projection then keeps the budget).
        return grad.sign()

    def to_dict(self) -> dict[str, object]:
        eps: float | str = "inf" if self.eps == float("inf") else self.eps  # strict JSON
        return {"norm": self.norm, "eps": eps, "targeted": self.targeted}
