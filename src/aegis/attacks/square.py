"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, 2020, https://arxiv.org/abs/1912.00049).

A score-based black-box random search: each iteration changes the current best point inside one
random s×s window and keeps the change if the loss improves. The window's area is a share p of
the image, p = p_init halved at fixed iterations (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
of a 10,000-query run; with ``rescale_schedule`` these marks are scaled to ``queries``).

- ``linf``: start from vertical stripes x + ε·(±1 per column and channel); a step sets the
  window, per channel, to x ± ε.
- ``l2``: start from a grid of s×s "double pyramid" squares (s = h // 5) with random signs,
  scaled to ‖δ‖₂ = ε; a step moves the mass of a second random window into the first, reshaped
  as a fresh pyramid, and rescales δ to ε.

Loss: the margin z_y − max_{k≠y} z_k (untargeted, minimized) or the cross-entropy toward the
target (targeted), as in the reference implementation. Only points not yet fooled are queried:
each iteration costs one forward per active point, the start one more, so a run spends at most
``queries + 1`` queries per point and restart. Returns, per point, the first adversarial iterate,
else the iterate with the best loss.

    >>> x_adv = Square(queries=5000)(model, x, y, ThreatModel("linf", 8 / 255))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, best_of_restarts, ce_loss, is_adversarial, margin
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel, flat

_P_MARKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # in iterations of a 10,000 run


def p_schedule(it: int, queries: int, p_init: float, rescale: bool) -> float:
    """Share of the image covered by the window at iteration ``it`` (0-based): ``p_init``
    halved after each mark of ``_P_MARKS`` passed; with ``rescale`` the marks are scaled
    from a 10,000-query run to ``queries``."""
    if rescale:
        it = int(it / queries * 10000)
    halvings = sum(it > m for m in _P_MARKS)
    return p_init / float(2**halvings)


def score(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """What the random search maximizes: −margin (untargeted), −CE toward the target."""
    return -margin(logits, y) if targets is None else ce_loss(y, targets)(logits)


def pyramid(s: int, device: torch.device) -> Tensor:
    """The reference's s×s L2 update profile, unit L2 norm: the top s//2 rows a positive stack
    of concentric rectangles (ring r weighted Σ_{j≥r} 1/(j+1)²), the bottom rows a negative one."""

    def rectangles(a: int, b: int) -> Tensor:
        rings = max(a // 2, b // 2) + 1
        w = 1.0 / torch.arange(1, rings + 1, device=device, dtype=torch.float32) ** 2
        tail = w.flip(0).cumsum(0).flip(0)  # tail[r] = Σ_{j ≥ r} w_j
        ri = (torch.arange(a, device=device) - a // 2).abs()
        ci = (torch.arange(b, device=device) - b // 2).abs()
        ring = tail[torch.maximum(ri[:, None], ci[None, :])]
        out: Tensor = ring / ring.norm().clamp_min(1e-12)
        return out

    eta = torch.cat([rectangles(s // 2, s), -rectangles(s - s // 2, s)])
    out: Tensor = eta / eta.norm()
    return out


def _window_mask(corner_h: Tensor, corner_w: Tensor, s: int, h: int, w: int) -> Tensor:
    """Boolean (n, 1, h, w) mask of each point's s×s window with top-left corner given."""
    rows = torch.arange(h, device=corner_h.device)
    cols = torch.arange(w, device=corner_h.device)
    in_r = (rows >= corner_h[:, None]) & (rows < corner_h[:, None] + s)
    in_c = (cols >= corner_w[:, None]) & (cols < corner_w[:, None] + s)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


@register(
    "square",
    norms=("linf", "l2"),
    paper="https://arxiv.org/abs/1912.00049",
    targeted=True,
    needs_gradients=False,
)
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square Attack: score-based random search over square windows (Andriushchenko et al. 2020).

    Defaults are AutoAttack's "standard" Square: 5,000 queries, p_init = 0.8, one restart, and
    the schedule not rescaled (AutoAttack passes ``resc_schedule=False``).
    """

    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    rescale_schedule: bool = False

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise ConfigError(f"queries must be >= 1, got {self.queries}")
        if not 0 < self.p_init <= 1:
            raise ConfigError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")

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
        if math.isinf(threat.eps):
            raise ConfigError("square needs a finite eps (it is not a minimal-norm attack)")
        return best_of_restarts(
            self.restarts,
            x,
            lambda idx: self._one_run(
                model,
                x[idx],
                y[idx],
                None if targets is None else targets[idx],
                idx,
                threat,
                generator,
            ),
        )

    # -- one run ------------------------------------------------------------------------------
    def _one_run(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Random search from the norm's start; returns (x_best, its score, fooled)."""
        bounds = model.bounds
        x_best = threat.project(self._start(x, threat, generator), x, bounds)
        logits = model.logits(x_best, rows=rows)
        best = score(logits, y, t)
        hit = is_adversarial(logits, y, t)
        profiles: dict[int, Tensor] = {}  # the L2 window profile of each size used
        for it in range(self.queries):
            act = (~hit).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xa, xb, ya = x[act], x_best[act], y[act]
            ta = None if t is None else t[act]
            p = p_schedule(it, self.queries, self.p_init, self.rescale_schedule)
            if threat.norm == "linf":
                cand = self._linf_step(xa, xb, p, threat.eps, bounds, generator)
            else:
                cand = self._l2_step(xa, xb, p, threat.eps, bounds, generator, profiles)
            cand = threat.project(cand, xa, bounds)
            logits = model.logits(cand, rows=rows[act])
            now = score(logits, ya, ta)
            fooled = is_adversarial(logits, ya, ta)
            accept = (now > best[act]) | fooled
            # Rows not accepted are written back unchanged: no boolean-mask sync.
            x_best[act] = torch.where(accept.view(-1, 1, 1, 1), cand, xb)
            best[act] = torch.where(accept, now, best[act])
            hit[act] = fooled
        return x_best, best, hit

    # -- initialisation -----------------------------------------------------------------------
    def _start(self, x: Tensor, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        if threat.norm == "linf":
            # Vertical stripes: one sign per column and channel.
            return x + threat.eps * _signs((n, c, 1, w), x, generator)
        # A grid of s×s pyramids (s = h // 5) with one random sign per square and channel,
        # starting at the reference's offset; squares that would leave the image are skipped.
        s = max(h // 5, 1)
        offset = (h - 5 * s) // 2 if h >= 5 else 0
        eta = pyramid(s, x.device)
        delta = torch.zeros_like(x)
        for vh in range(offset, h - s + 1, s):
            for vw in range(offset, w - s + 1, s):
                sign = _signs((n, c, 1, 1), x, generator)
                delta[:, :, vh : vh + s, vw : vw + s] += eta * sign
        return x + delta * _unit_l2(delta) * threat.eps

    # -- one proposal per norm ----------------------------------------------------------------
    def _linf_step(
        self,
        x: Tensor,
        x_best: Tensor,
        p: float,
        eps: float,
        bounds: tuple[float, float],
        generator: torch.Generator | None,
    ) -> Tensor:
        """Set one random s×s window of each point to x ± ε (one sign per channel)."""
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
        vh, vw = _corners(n, h, w, s, x, generator)
        mask = _window_mask(vh, vw, s, h, w)
        corner = (x + eps * _signs((n, c, 1, 1), x, generator)).clamp(*bounds)
        return torch.where(mask, corner, x_best)

    def _l2_step(
        self,
        x: Tensor,
        x_best: Tensor,
        p: float,
        eps: float,
        bounds: tuple[float, float],
        generator: torch.Generator | None,
        profiles: dict[int, Tensor],
    ) -> Tensor:
        """Move the perturbation mass of windows 1 and 2 into window 1 as a fresh pyramid (random
        sign per channel, plus the old window-1 pattern), empty window 2, rescale to ‖δ‖₂ = ε."""
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 3), h, w)
        if s % 2 == 0 and s + 1 <= min(h, w):
            s += 1
        delta = x_best - x
        vh, vw = _corners(n, h, w, s, x, generator)
        vh2, vw2 = _corners(n, h, w, s, x, generator)
        mask1 = _window_mask(vh, vw, s, h, w)
        mask2 = _window_mask(vh2, vw2, s, h, w)
        # Gather window 1 of every point as an (n, c, s, s) block.
        r = (vh[:, None] + torch.arange(s, device=x.device))[:, None, :, None]
        q = (vw[:, None] + torch.arange(s, device=x.device))[:, None, None, :]
        pn = torch.arange(n, device=x.device)[:, None, None, None]
        pc = torch.arange(c, device=x.device)[None, :, None, None]
        old = delta[pn, pc, r, q]
        old_norm = old.square().sum((2, 3), keepdim=True).sqrt()
        image_norm = flat(delta).norm(dim=1).view(-1, 1, 1, 1)
        windows_norm = flat(delta * (mask1 | mask2)).norm(dim=1).view(-1, 1, 1, 1)
        if s not in profiles:
            profiles[s] = pyramid(s, x.device)
        eta = profiles[s]
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        eta = torch.where(flip.view(-1, 1, 1, 1), eta.t(), eta)
        new = eta * _signs((n, c, 1, 1), x, generator) + old / (old_norm + 1e-12)
        room = (eps**2 - image_norm.square()).clamp_min(0) / c + windows_norm.square()
        new = new / (new.square().sum((2, 3), keepdim=True).sqrt() + 1e-12) * room.sqrt()
        delta = delta.masked_fill(mask2, 0.0)
        delta[pn, pc, r, q] = new
        return (x + delta * _unit_l2(delta) * eps).clamp(*bounds)


def _unit_l2(delta: Tensor) -> Tensor:
    """1 / (‖δ‖₂ + 1e-12) per sample, shaped to broadcast over δ."""
    out: Tensor = 1.0 / (flat(delta).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
    return out


def _signs(shape: tuple[int, ...], x: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(u < 0.5, -1.0, 1.0).to(x.dtype)


def _corners(
    n: int, h: int, w: int, s: int, x: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Top-left corners of s×s windows, uniform over every position inside the image."""
    vh = torch.randint(0, h - s + 1, (n,), generator=generator, device=x.device)
    vw = torch.randint(0, w - s + 1, (n,), generator=generator, device=x.device)
    return vh, vw
