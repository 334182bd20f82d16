"""JSMA — Jacobian-based Saliency Map Attack (Papernot et al., 2016,
https://arxiv.org/abs/1511.07528).

A greedy L0 attack toward a target class t. Each iteration takes the forward derivatives of
the target logit, α = ∂z_t/∂x, and of the other logits, β = ∂(Σ_{j≠t} z_j)/∂x (two gradient
calls on the batch), and picks, among the pixels still in the search domain, the pair (p, q)
with α_p + α_q > 0 and β_p + β_q < 0 that maximizes (α_p + α_q)·|β_p + β_q| (the pairwise
saliency map). Both pixels move by θ·(box width) (θ = +1: set to the maximum) and leave the
search domain. It stops once the point is classified as t, or when the next pair would exceed
the pixel budget min(ε, γ·H·W); a point with no admissible pair gives up.

A feature is a pixel: on a C-channel input its channels move together and its saliency is the
sum over them, so the feature count is the L0 budget (on grayscale inputs this is the paper's
algorithm). If the budget is odd, the last iteration moves the single best pixel. The pair
search costs O((H·W)²) per point and iteration (computed in chunks of ``PAIR_CHUNK`` scores, so
memory stays bounded), as in the paper: fine up to ~64×64 inputs, slow on ImageNet-sized ones
(2.5·10⁹ pair scores per point and iteration at 224×224).

Untargeted use: the target is the runner-up class of the clean input (the cheapest direction
in logit space), and the run stops at any misclassification. With ``target_classes = m > 1``
the m most likely other classes are each tried on every point and the success with the fewest
changed pixels is kept. Returns the first adversarial input found on the greedy path (the
sparsest it saw), else the original input.

    >>> x_adv = JSMA(gamma=0.15)(model, x, y, ThreatModel("l0", 10, targeted=True), targets=t)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, is_adversarial, runner_up_targets
from aegis.errors import ConfigError
from aegis.model import Classifier, LossFn
from aegis.registry import register
from aegis.threat import ThreatModel, norms

PAIR_CHUNK = 1 << 22  # pair scores computed at once (points × pixels²), to bound memory


def _logit_of(t: Tensor) -> LossFn:
    return lambda z: z.gather(1, t[:, None]).squeeze(1)


def _others_of(t: Tensor) -> LossFn:
    return lambda z: z.sum(1) - z.gather(1, t[:, None]).squeeze(1)


def _pixels(grad: Tensor) -> Tensor:
    """Per-pixel derivative: the sum over channels, shape (n, H·W)."""
    return grad.sum(1).flatten(1)


def best_pair(alpha: Tensor, beta: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The pairwise saliency map's choice: (p, q, admissible) per point, p ≠ q in ``domain``
    with α_p + α_q > 0, β_p + β_q < 0, maximizing (α_p + α_q)·|β_p + β_q|. The scores are
    computed ``PAIR_CHUNK`` at a time: whole points where they fit, else rows p of one point,
    so memory stays bounded at any input size (the time is O((H·W)²) regardless)."""
    n, d = alpha.shape
    ps, qs, oks = [], [], []
    points = max(1, PAIR_CHUNK // max(d * d, 1))
    rows = d if points > 1 else max(1, PAIR_CHUNK // max(d, 1))
    cols = torch.arange(d, device=alpha.device)
    for s in range(0, n, points):
        a, b, dom = alpha[s : s + points], beta[s : s + points], domain[s : s + points]
        top = torch.full((a.shape[0],), -1.0, device=a.device, dtype=a.dtype)
        arg = torch.zeros(a.shape[0], dtype=torch.long, device=a.device)
        for r in range(0, d, rows):
            pa = a[:, r : r + rows, None] + a[:, None, :]
            pb = b[:, r : r + rows, None] + b[:, None, :]
            off_diagonal = cols[r : r + rows, None] != cols[None, :]
            ok = (pa > 0) & (pb < 0) & dom[:, r : r + rows, None] & dom[:, None, :] & off_diagonal
            block_top, block_arg = torch.where(ok, pa * -pb, -1.0).flatten(1).max(1)
            better = block_top > top
            top = torch.where(better, block_top, top)
            arg = torch.where(better, block_arg + r * d, arg)
        ps.append(arg // d)
        qs.append(arg % d)
        oks.append(top > 0)
    return torch.cat(ps), torch.cat(qs), torch.cat(oks)


def best_single(alpha: Tensor, beta: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
    """The single pixel with α_p > 0, β_p < 0 maximizing α_p·|β_p|: (p, admissible)."""
    ok = (alpha > 0) & (beta < 0) & domain
    score = torch.where(ok, alpha * -beta, torch.full_like(alpha, -1.0))
    top, arg = score.max(1)
    return arg, top > 0


@register("jsma", norms=("l0",), paper="https://arxiv.org/abs/1511.07528")
@dataclass(frozen=True, kw_only=True)
class JSMA(Attack):
    """Jacobian-based Saliency Map Attack: greedy pixel pairs (Papernot et al. 2016)."""

    theta: float = 1.0  # change per chosen pixel, in box widths; > 0 increases, < 0 decreases
    gamma: float = 1.0  # largest share of the pixels that may change (the paper: 0.145)
    target_classes: int = 1  # untargeted use: how many runner-up classes to try

    def __post_init__(self) -> None:
        if self.theta == 0 or not -1 <= self.theta <= 1:
            raise ConfigError(f"theta must be in [-1, 0) or (0, 1], got {self.theta}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.target_classes < 1:
            raise ConfigError(f"target_classes must be >= 1, got {self.target_classes}")

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
        pixels = x.shape[2] * x.shape[3]
        budget = math.floor(min(threat.eps, self.gamma * pixels))
        if targets is not None:
            return self._greedy(model, x, y, targets, budget, any_error=False)
        x_out = x.clone()
        size = torch.full((x.shape[0],), math.inf, device=x.device)
        for t in runner_up_targets(model, x, y, self.target_classes):
            adv = self._greedy(model, x, y, t, budget, any_error=True)
            changed = norms(adv - x, "l0")
            better = (changed > 0) & (changed < size)
            x_out = torch.where(better.view(-1, 1, 1, 1), adv, x_out)
            size = torch.where(better, changed, size)
        return x_out

    def _greedy(
        self, model: Classifier, x: Tensor, y: Tensor, t: Tensor, budget: int, *, any_error: bool
    ) -> Tensor:
        """The JSMA loop toward ``t`` on every point: the first adversarial input on the path,
        or ``x`` where none was found."""
        lo, hi = model.bounds
        n, c = x.shape[0], x.shape[1]
        goal = None if any_error else t
        x_cur = x.clone()
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        # Search domain: pixels not yet used that can still move in the direction of θ.
        movable = (x < hi) if self.theta > 0 else (x > lo)
        domain = movable.any(1).flatten(1)
        active = torch.arange(n, device=x.device)
        used = 0
        while True:
            xa, ta = x_cur[active], t[active]
            if used < budget:
                logits, _, g_t = model.value_and_grad(xa, _logit_of(ta), rows=active)
            else:  # the budget is spent: only check the last change
                logits = model.logits(xa, rows=active)
            now = is_adversarial(logits, y[active], None if goal is None else goal[active])
            hit[active[now]] = True
            if used >= budget or bool(now.all()):
                break
            keep = ~now
            active, xa, ta, g_t = active[keep], xa[keep], ta[keep], g_t[keep]
            _, _, g_o = model.value_and_grad(xa, _others_of(ta), rows=active)
            # Only the channels that can still move in the direction of θ contribute.
            free = (xa < hi) if self.theta > 0 else (xa > lo)
            alpha, beta, dom = _pixels(g_t * free), _pixels(g_o * free), domain[active]
            if budget - used >= 2:
                p, q, ok = best_pair(alpha, beta, dom)
                chosen = torch.stack([p, q], 1)
                used += 2
            else:
                p, ok = best_single(alpha, beta, dom)
                chosen = p[:, None]
                used += 1
            # A point without an admissible choice stops: the map says no pixel helps.
            active, chosen, xa, dom = active[ok], chosen[ok], xa[ok], dom[ok]
            if active.numel() == 0:
                break
            mask = torch.zeros_like(dom).scatter_(1, chosen, True)
            domain[active] = dom & ~mask
            move = mask.view(-1, 1, *x.shape[2:]).expand(-1, c, -1, -1)
            stepped = (xa + self.theta * (hi - lo)).clamp(lo, hi)
            x_cur[active] = torch.where(move, stepped, xa)
        return torch.where(hit.view(-1, 1, 1, 1), x_cur, x)
