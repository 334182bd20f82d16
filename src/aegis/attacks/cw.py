"""C&W L2 — Carlini & Wagner (2017), https://arxiv.org/abs/1608.04644.

Minimal-norm L2 attack, untargeted or targeted. For each point it minimizes

    ‖δ‖₂² + c · f(x + δ)   over x + δ in the box,

with f the margin loss on the logits z and confidence κ (``kappa``):
untargeted f = max(z_y − max_{j≠y} z_j, −κ), targeted f = max(max_{j≠t} z_j − z_t, −κ).
Adam (learning rate ``step_size``) runs ``steps`` iterations from δ = 0 for each constant c, and
c is binary-searched per point over ``search_steps`` rounds from ``initial_const``: ×10 until a
first success, then bisection between the largest failing and the smallest succeeding c. Every
tenth of the steps each point's loss is compared with the last check, and a point whose loss fell
by less than 0.01% stops (abort early).

The box. The paper's change of variables x + δ = (tanh(w) + 1)/2 sends pixels at exactly 0 or 1
to w = ±∞ with zero gradient, so they never move (and the reference's ×0.999999 leaves them at
tanh′ ≈ 2·10⁻⁶, nearly as stuck); on MNIST-like images most pixels sit there. Here Adam works on δ
in pixel space and each step is projected onto the box (x + δ is clipped): a pixel at an edge
moves inward as soon as the loss asks and only the outward direction is blocked. The learning
rate is in units of the box width (0.01 as in the paper).

One forward + backward per iteration for the whole batch (the gradient of ‖δ‖² is 2δ, no model
call). Returns, per point, the smallest-L2 input among every iterate evaluated, for every
constant, whose margin is below −κ; a point never fooled gets its original x back. With a finite
``eps``, a point stops once it has an adversarial input within ``eps`` (the verdict is the same;
its norm is then not minimized further).

    >>> attack = CarliniWagnerL2(steps=100, search_steps=9)
    >>> x_adv = attack(model, x, y, ThreatModel("l2", float("inf")))
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
from aegis.threat import ThreatModel, flat

ADAM_BETAS = (0.9, 0.999)  # the paper's Adam (TensorFlow defaults)
ADAM_EPS = 1e-8
STALL = 0.9999  # abort early when the loss did not fall below 99.99% of the last check's


def margin_loss(y: Tensor, targets: Tensor | None, const: Tensor, kappa: float) -> LossFn:
    """c · max(margin, −κ), per sample: the classification term C&W and EAD minimize."""
    return lambda z: const * margin(z, y, targets).clamp_min(-kappa)


def check_search(steps: int, search_steps: int, initial_const: float, kappa: float) -> None:
    """Validation shared by the attacks that binary-search a constant (C&W, EAD)."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if search_steps < 1:
        raise ConfigError(f"search_steps must be >= 1, got {search_steps}")
    if not initial_const > 0:
        raise ConfigError(f"initial_const must be > 0, got {initial_const}")
    if not kappa >= 0:
        raise ConfigError(f"kappa must be >= 0, got {kappa}")


def next_consts(
    const: Tensor, lower: Tensor, upper: Tensor, success: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One binary-search update of c per point: a success lowers the upper bound, a failure
    raises the lower one; without any success yet, c grows tenfold."""
    upper = torch.where(success, torch.minimum(upper, const), upper)
    lower = torch.where(success, lower, torch.maximum(lower, const))
    const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return const, lower, upper


class Best:
    """The running best per point: the smallest-norm adversarial input evaluated so far."""

    def __init__(self, x: Tensor) -> None:
        self.x = x.clone()
        self.size = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)

    def pending(self, idx: Tensor, eps: float) -> Tensor:
        """Which of the points ``idx`` still need work: with a finite budget, those not yet
        fooled within it (their verdict cannot change); unbounded, all of them."""
        if math.isinf(eps):
            return torch.ones_like(idx, dtype=torch.bool)
        return self.size[idx] > eps

    def offer(self, idx: Tensor, candidate: Tensor, size: Tensor, hit: Tensor) -> None:
        """Keep ``candidate`` (rows ``idx``) where it is adversarial and smaller than the best."""
        better = hit & (size < self.size[idx])
        rows = idx[better]
        self.x[rows] = candidate[better]
        self.size[rows] = size[better]


@register(
    "cw",
    norms=("l2",),
    paper="https://arxiv.org/abs/1608.04644",
    targeted=True,
    needs_gradients=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(Attack):
    """Carlini & Wagner L2: Adam on ‖δ‖² + c·margin, binary search over c (minimal norm)."""

    steps: int = 100  # per constant; reference code and Foolbox: 10,000, ART: 10
    search_steps: int = 9  # reference code and Foolbox (ART: 10)
    initial_const: float = 1e-3  # reference code and Foolbox (ART: 1e-2)
    step_size: float = 0.01  # Adam's learning rate, in units of the box width (paper: 1e-2)
    kappa: float = 0.0  # confidence
    abort_early: bool = True

    def __post_init__(self) -> None:
        check_search(self.steps, self.search_steps, self.initial_const, self.kappa)
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")

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
        lr = self.step_size * (hi - lo)
        b1, b2 = ADAM_BETAS
        check = max(self.steps // 10, 1)
        best = Best(x)
        const = torch.full((n,), self.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, float("inf"))
        for search in range(self.search_steps):
            if self.search_steps >= 10 and search == self.search_steps - 1:
                const = torch.where(torch.isinf(upper), const, upper)  # the paper's last repeat
            # With a finite budget, a point already fooled within it is done (same verdict).
            idx = torch.arange(n, device=x.device)
            idx = idx[best.pending(idx, threat.eps)]
            if idx.numel() == 0:
                break
            success = torch.zeros(n, dtype=torch.bool, device=x.device)
            x_cur = x[idx]  # the iterate; kept inside the box by construction
            m, v = torch.zeros_like(x_cur), torch.zeros_like(x_cur)
            prev = torch.full_like(const[idx], float("inf"))
            for k in range(self.steps):
                x0, y0 = x[idx], y[idx]
                t0 = None if targets is None else targets[idx]
                delta = x_cur - x0
                loss_fn = margin_loss(y0, t0, const[idx], self.kappa)
                logits, class_loss, grad = model.value_and_grad(x_cur, loss_fn, rows=idx)
                size = flat(delta).pow(2).sum(1)
                hit = (margin(logits, y0, t0) < -self.kappa) & is_adversarial(logits, y0, t0)
                best.offer(idx, x_cur, size.sqrt(), hit)
                success[idx] |= hit
                if k == self.steps - 1:
                    break  # the next step would not be evaluated
                if k % check == 0:
                    going = best.pending(idx, threat.eps)
                    if self.abort_early:
                        loss = size + class_loss
                        going &= ~(loss > STALL * prev)
                        prev = loss
                    if not going.all():
                        idx, x_cur, delta = idx[going], x_cur[going], delta[going]
                        m, v, grad, prev = m[going], v[going], grad[going], prev[going]
                        if idx.numel() == 0:
                            break
                g = grad + 2 * delta
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                m_hat, v_hat = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
                step = lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
                x_cur = (x_cur - step).clamp(lo, hi)
            const, lower, upper = next_consts(const, lower, upper, success)
        return best.x
