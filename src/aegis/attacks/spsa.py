"""SPSA — gradient-free PGD with Adam (Uesato et al., 2018, https://arxiv.org/abs/1802.05666).

A score-based attack: it sees only the logits. Each step estimates the gradient of the margin
loss ℓ(x) = z_y − max_{j≠y} z_j (targeted: max_{j≠t} z_j − z_t; ℓ < 0 means fooled) by
Simultaneous Perturbation Stochastic Approximation,

    g = 1/(2δ) · mean_i [ℓ(x + δvᵢ) − ℓ(x − δvᵢ)] · vᵢ,  vᵢ ∈ {−1, +1}^D Rademacher,

from ``samples`` queries (``samples / 2`` ± pairs; each query is clipped to the box, as the model
is only defined there), takes an Adam step of learning rate ``step_size`` to decrease ℓ, and
projects onto the ε-ball ∩ box (L∞ as in the paper; L2 uses the same step with the L2
projection). It starts from a random point of the ball, as the reference implementation does.
The default learning rate is the paper's 0.01, raised to PGD's 2.5·ε/steps (per coordinate)
when 0.01 could not cross the ball in the given steps.

Queries: before each step, one query checks the current iterate; a point that is fooled stops
there and is never queried again. A point fooled at the k-th check (k = 0 … ``steps``) costs
k·(samples + 1) + 1 queries; one never fooled costs steps·(samples + 1) + 1. Returns, per
point, its first adversarial iterate, else the checked iterate with the lowest margin.

    >>> x_adv = SPSA(steps=100, samples=128)(model, x, y, ThreatModel("linf", 8 / 255))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import resolve_step
from aegis.attacks._queries import rows_per_call
from aegis.attacks.base import Attack, is_adversarial, margin
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel

BETAS = (0.9, 0.999)  # Adam's moment decays, as in the reference (TF / torch defaults)
ADAM_EPS = 1e-8


@register(
    "spsa",
    norms=("linf", "l2"),
    paper="https://arxiv.org/abs/1802.05666",
    targeted=True,
    needs_gradients=False,
)
@dataclass(frozen=True, kw_only=True)
class SPSA(Attack):
    """SPSA gradient estimates with Adam steps, projected on the ball (Uesato et al. 2018)."""

    steps: int = 100
    step_size: float | None = None  # Adam's learning rate; None: see ``learning_rate``
    samples: int = 128  # queries per gradient estimate: samples / 2 antithetic pairs
    delta: float = 0.01  # finite-difference scale
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if self.samples < 2 or self.samples % 2:
            raise ConfigError(f"samples must be an even number >= 2, got {self.samples}")
        if not self.delta > 0:
            raise ConfigError(f"delta must be > 0, got {self.delta}")

    def learning_rate(self, threat: ThreatModel, dim: int) -> float:
        """``step_size``, or by default the paper's 0.01, raised to the PGD rule 2.5·ε/steps
        (per coordinate: ε/√dim for L2) when 0.01 could not cross the ball in ``steps``."""
        if self.step_size is not None:
            return self.step_size
        scale = threat.eps if threat.norm == "linf" else threat.eps / math.sqrt(dim)
        return max(0.01, resolve_step(None, scale, self.steps)) if math.isfinite(scale) else 0.01

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
        bounds = model.bounds
        lr = self.learning_rate(threat, x[0].numel())
        x_cur = threat.random_start(x, bounds, generator) if self.random_start else x.clone()
        x_out = x_cur.clone()
        lowest = torch.full((x.shape[0],), float("inf"), device=x.device)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)
        for k in range(self.steps + 1):
            # Check the current iterate: a fooled point is kept and leaves the active set.
            xa, ya = x_cur[active], y[active]
            ta = None if targets is None else targets[active]
            logits = model.logits(xa, rows=active)
            loss, hit = margin(logits, ya, ta), is_adversarial(logits, ya, ta)
            keep = hit | (loss < lowest[active])
            x_out[active[keep]] = xa[keep]
            lowest[active] = torch.minimum(loss, lowest[active])
            active = active[~hit]
            if k == self.steps or active.numel() == 0:
                break
            ta = None if targets is None else targets[active]
            g = self._gradient(model, x_cur[active], y[active], ta, active, generator)
            # Adam on the margin loss (every active point has taken exactly k steps).
            b1, b2 = BETAS
            m[active] = b1 * m[active] + (1 - b1) * g
            v[active] = b2 * v[active] + (1 - b2) * g * g
            m_hat, v_hat = m[active] / (1 - b1 ** (k + 1)), v[active] / (1 - b2 ** (k + 1))
            step = lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
            x_cur[active] = threat.project(x_cur[active] - step, x[active], bounds)
        return x_out

    def _gradient(
        self,
        model: Classifier,
        xa: Tensor,
        ya: Tensor,
        ta: Tensor | None,
        rows: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The SPSA estimate of ∇ℓ at each row of ``xa``, from ``samples`` queries per row,
        sent in chunks of whole points (each copy counted as a query of its point)."""
        lo, hi = model.bounds
        s, half = self.samples, self.samples // 2
        per_call = max(1, rows_per_call(xa) // s)
        out = torch.empty_like(xa)
        for a in range(0, xa.shape[0], per_call):
            xs = xa[a : a + per_call]
            c = xs.shape[0]
            signs = torch.randint(
                0, 2, (c, half, *xs.shape[1:]), generator=generator, device=xs.device
            )
            u = signs.to(xs.dtype) * 2 - 1
            u = torch.cat([u, -u], 1)  # antithetic pairs: (c, samples, C, H, W)
            queries = (xs[:, None] + self.delta * u).clamp(lo, hi).flatten(0, 1)
            logits = model.logits(queries, rows=rows[a : a + c].repeat_interleave(s))
            tq = None if ta is None else ta[a : a + c].repeat_interleave(s)
            loss = margin(logits, ya[a : a + c].repeat_interleave(s), tq)
            out[a : a + c] = (loss.view(c, s, *([1] * (xs.ndim - 1))) * u).mean(1) / self.delta
        return out
