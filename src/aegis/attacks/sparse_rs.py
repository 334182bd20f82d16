"""Sparse-RS, L0 pixels (Croce, Andriushchenko, Singh, Flammarion & Hein, 2022,
https://arxiv.org/abs/2006.12834).

A score-based black-box random search over sets of k = ε pixels (threat ``l0``; all channels of
a pixel count once). Start: k random pixels, each channel set at random to the low or high bound
(a corner of the colour cube). Each iteration, a share α(t) of the k pixels goes back to its
original value and as many pixels from outside the set get a fresh random corner; the candidate
is kept if the loss does not get worse. α(t) = α_init / {1, 2, 4, 5, 6, 8, 10, 12, 15, 20}
stepping down at 50, 200, 500, 1000, 2000, 4000, 6000, 8000 iterations of a 10,000-query run,
scaled to ``queries`` (as the reference does).

Loss: the margin z_y − max_{k≠y} z_k (untargeted) or the cross-entropy toward the target
(targeted). Only points not yet fooled are queried, one forward per active point and iteration,
the start included, so a run spends at most ``queries`` queries per point and restart. Returns,
per point, the first adversarial candidate, else the one with the best loss.

    >>> x_adv = SparseRS(queries=10000)(model, x, y, ThreatModel("l0", 10))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, best_of_restarts, is_adversarial
from aegis.attacks.square import score
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel

_ALPHA_MARKS = (0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_ALPHA_DIVISORS = (1, 2, 4, 5, 6, 8, 10, 12, 15, 20)


def alpha_schedule(it: int, queries: int, alpha_init: float) -> float:
    """Share of the k pixels resampled at iteration ``it`` (the start is iteration 0)."""
    it = int(it / queries * 10000)
    return alpha_init / _ALPHA_DIVISORS[sum(it > m for m in _ALPHA_MARKS)]


@register(
    "sparse-rs",
    norms=("l0",),
    paper="https://arxiv.org/abs/2006.12834",
    targeted=True,
    needs_gradients=False,
)
@dataclass(frozen=True, kw_only=True)
class SparseRS(Attack):
    """Sparse-RS for L0 pixel budgets: random search over k-pixel sets (Croce et al. 2022).

    Defaults are the paper's untargeted L0 setting (10,000 queries, α_init = 0.3); for targeted
    attacks the paper uses 100,000 queries and α_init = 0.1.
    """

    queries: int = 10000
    alpha_init: float = 0.3
    restarts: int = 1

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise ConfigError(f"queries must be >= 1, got {self.queries}")
        if not 0 < self.alpha_init <= 1:
            raise ConfigError(f"alpha_init must be in (0, 1], got {self.alpha_init}")
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
        pixels = x.shape[2] * x.shape[3]
        k = pixels if math.isinf(threat.eps) else min(int(threat.eps), pixels)
        if k == 0:
            return x.clone()
        return best_of_restarts(
            self.restarts,
            x,
            lambda idx: self._one_run(
                model, x[idx], y[idx], None if targets is None else targets[idx], idx, k, generator
            ),
        )

    def _one_run(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        k: int,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Random search over k-pixel sets; returns (x_best, its score, fooled)."""
        n, c, h, w = x.shape
        pixels = h * w
        bounds = model.bounds
        flat_x = x.reshape(n, c, pixels)
        # Each point's pixels in random order: the first k are perturbed, the rest are not.
        order = torch.rand(n, pixels, generator=generator, device=x.device).argsort(1)
        inside, outside = order[:, :k].contiguous(), order[:, k:].contiguous()
        x_best = flat_x.clone()
        x_best.scatter_(2, _spread(inside, c), _corners((n, c, k), x, bounds, generator))
        logits = model.logits(x_best.view_as(x), rows=rows)
        best = score(logits, y, t)
        hit = is_adversarial(logits, y, t)
        for it in range(1, self.queries):
            act = (~hit).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            m = min(max(int(alpha_schedule(it, self.queries, self.alpha_init) * k), 1), k)
            slots = torch.randperm(k, generator=generator, device=x.device)[:m]
            old = inside[act][:, slots]
            if pixels > k:  # swap m pixels of the set for m pixels outside it
                m = min(m, pixels - k)
                slots = slots[:m]
                old = old[:, :m]
                spots = torch.randperm(pixels - k, generator=generator, device=x.device)[:m]
                new = outside[act][:, spots]
            else:  # every pixel is in the set: recolour m of them
                new, spots = old, slots
            xa = flat_x[act]
            cand = x_best[act].clone()
            cand.scatter_(2, _spread(old, c), xa.gather(2, _spread(old, c)))
            colours = _corners((act.numel(), c, m), x, bounds, generator)
            cand.scatter_(2, _spread(new, c), colours)
            logits = model.logits(cand.view(-1, c, h, w), rows=rows[act])
            now = score(logits, y[act], None if t is None else t[act])
            fooled = is_adversarial(logits, y[act], None if t is None else t[act])
            accept = (now >= best[act]) | fooled
            take = act[accept]
            x_best[take] = cand[accept]
            best[take] = now[accept]
            hit[act] = fooled
            if pixels > k:
                a_in, a_out = inside[take], outside[take]
                a_in[:, slots], a_out[:, spots] = new[accept], old[accept]
                inside[take], outside[take] = a_in, a_out
        return x_best.view_as(x), best, hit


def _spread(pixel_ids: Tensor, c: int) -> Tensor:
    """(n, m) pixel ids → (n, c, m) indices into a (n, c, h·w) tensor."""
    return pixel_ids[:, None, :].expand(-1, c, -1)


def _corners(
    shape: tuple[int, int, int],
    x: Tensor,
    bounds: tuple[float, float],
    generator: torch.Generator | None,
) -> Tensor:
    """Random corners of the colour cube: each channel at the low or the high bound."""
    u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(u < 0.5, bounds[0], bounds[1]).to(x.dtype)
