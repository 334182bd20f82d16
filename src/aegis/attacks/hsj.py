"""HopSkipJumpAttack (Chen, Jordan & Wainwright, 2020, https://arxiv.org/abs/1904.02144).

A decision-based, minimal-norm attack (L2 and L∞): it sees only predicted labels. From an
adversarial starting point it repeats, for t = 1, 2, …:

1. binary search between x and the current point to the decision boundary, to precision
   θ = γ / d^{3/2} (L2, on the blend coefficient) or γ / d² (L∞, on the L∞ radius);
2. estimate the boundary's normal direction from n_t = min(init_evals·√t, max_evals) labels at
   x_b + δ_t·u (u uniform on the sphere; δ_1 = 0.1·(box width), then δ_t = γ·d_{t−1}/d, the
   paper's √d·θ·d_{t−1} for L2 and d·θ·d_{t−1} for L∞), with the mean label as a baseline;
3. step along that direction (its sign for L∞) by ξ = d_{t−1}/√t, halved until adversarial
   (geometric progression), and go back to 1.

Start (as the reference implementation): uniform noise until adversarial, then a binary search of
the blend toward x. Targeted: a batch input already classified as the target, else noise. A
noise image drawn for one point that happens to be adversarial for another is used by it too, and
an untargeted point that noise cannot fool starts from the nearest batch input classified
otherwise; a point with no start is returned unchanged.

Budget: at most ``queries`` forward queries per point, counted exactly (the clean check, the
start, every search step and gradient sample); a point stops when the rest of its budget cannot
pay one more iteration's searches, after ``steps`` iterations, or (finite ε) once its smallest
perturbation fits in ε. All points move in lock-step, each on its own budget. Returns, per point,
the smallest-norm adversarial input among everything evaluated (gradient samples included), or x.

    >>> x_adv = HopSkipJump(queries=5000)(model, x, y, ThreatModel("l2", float("inf")))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._queries import rows_per_call
from aegis.attacks.base import Attack, is_adversarial
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel, flat, norms

INIT_TRIALS = 50  # rounds of uniform noise looking for a start (one query per pending point each)
BLEND_TOLERANCE = 0.001  # precision of the start's blend search toward x (as the reference)
MAX_HALVINGS = 30  # geometric step search: give up the step after this many halvings


class _Oracle:
    """Labels only: is each query adversarial for its point. Counts every query against its
    point's budget and keeps each point's smallest adversarial input seen (the running best)."""

    def __init__(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        norm: str,
        budget: int,
    ) -> None:
        self.model, self.x, self.y, self.targets = model, x, y, targets
        self.norm, self.budget = norm, budget
        self.used = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.best = x.clone()
        self.best_norm = torch.full((x.shape[0],), math.inf, device=x.device)

    def left(self, idx: Tensor) -> Tensor:
        return self.budget - self.used[idx]

    def adversarial_for(self, pred: Tensor, idx: Tensor) -> Tensor:
        return pred == self.targets[idx] if self.targets is not None else pred != self.y[idx]

    def _query(self, z: Tensor, idx: Tensor) -> Tensor:
        """The model's outputs for ``z``, each row counted as a query of point ``idx[i]``."""
        self.used.index_add_(0, idx, torch.ones_like(idx))
        return self.model.logits(z, rows=idx)

    def labels(self, z: Tensor, idx: Tensor) -> Tensor:
        """Predicted labels of ``z``, each row a query of point ``idx[i]``."""
        return self._query(z, idx).argmax(1)

    def ask(self, z: Tensor, idx: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Whether each row of ``z`` is adversarial for its point ``idx[i]`` (``sizes``: the
        rows' perturbation norms, when the caller has them). One query per row; only the
        decision is used (decisive, see ``is_adversarial``)."""
        goal = None if self.targets is None else self.targets[idx]
        adv = is_adversarial(self._query(z, idx), self.y[idx], goal)
        self.offer(z, idx, adv, sizes)
        return adv

    def offer(self, z: Tensor, idx: Tensor, adv: Tensor, sizes: Tensor | None = None) -> None:
        """Keep, per point, the closest of the adversarial rows of ``z`` if it beats its best."""
        if not adv.any():
            return
        size = norms(z - self.x[idx], self.norm) if sizes is None else sizes
        size = size.masked_fill(~adv, math.inf)
        low = torch.full_like(self.best_norm, math.inf).scatter_reduce(0, idx, size, "amin")
        better = low < self.best_norm
        if not better.any():
            return
        win = ((size == low[idx]) & better[idx]).nonzero().squeeze(1)
        pick = torch.full_like(self.used, -1).scatter_reduce(0, idx[win], win, "amax")
        pts = better.nonzero().squeeze(1)
        self.best[pts] = z[pick[pts]]
        self.best_norm[pts] = low[pts]


@register(
    "hsj",
    norms=("l2", "linf"),
    paper="https://arxiv.org/abs/1904.02144",
    targeted=True,
    needs_gradients=False,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class HopSkipJump(Attack):
    """HopSkipJumpAttack: decision-based minimal-norm attack (Chen, Jordan & Wainwright 2020)."""

    steps: int = 64  # iterations (Foolbox's default; the reference uses 40, ART 50)
    queries: int = 10000  # query budget per point
    init_evals: int = 100  # gradient samples at iteration 1, growing as √t
    max_evals: int = 10000  # cap on the gradient samples of one iteration
    gamma: float = 1.0  # binary-search precision θ = γ / d^{3/2} (L2) or γ / d² (L∞)

    def __post_init__(self) -> None:
        for name in ("steps", "queries", "init_evals"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_evals < self.init_evals:
            raise ConfigError(
                f"max_evals must be >= init_evals ({self.init_evals}), got {self.max_evals}"
            )
        if not self.gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {self.gamma}")

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
        n, d = x.shape[0], x[0].numel()
        lo, hi = model.bounds
        oracle = _Oracle(model, x, y, targets, threat.norm, self.queries)
        theta = self.gamma / (d**1.5 if threat.norm == "l2" else d**2)
        # A point whose clean input is already adversarial is done at distance 0.
        everyone = torch.arange(n, device=x.device)
        pred = oracle.labels(x, everyone)
        done = oracle.adversarial_for(pred, everyone)
        oracle.offer(x, everyone, done)
        start, found = self._start(oracle, x, pred, done, generator)
        idx = (found & ~done).nonzero().squeeze(1)
        xb = x.clone()
        dist = torch.zeros(n, device=x.device)
        if idx.numel():
            xb[idx] = self._blend(oracle, x[idx], start[idx], idx)
            xb[idx], dist[idx] = self._boundary(oracle, threat.norm, x[idx], xb[idx], idx, theta)
        # Each iteration's searches need this many queries beyond its gradient samples.
        reserve = math.ceil(math.log2(1 / theta)) + 2
        for t in range(1, self.steps + 1):
            alive = found & ~done & (oracle.left(everyone) > reserve)
            if math.isfinite(threat.eps):
                alive &= oracle.best_norm > threat.eps
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if t == 1:
                delta = torch.full_like(dist[idx], 0.1 * (hi - lo))
            else:
                delta = self.gamma * dist[idx] / d
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            counts = (oracle.left(idx) - reserve).clamp(1, evals)
            grad = self._direction(oracle, xb[idx], idx, delta, counts, threat.norm, generator)
            update = grad.sign() if threat.norm == "linf" else grad
            moved, cand = self._step(oracle, xb[idx], idx, update, dist[idx] / math.sqrt(t))
            if moved.numel():
                pts = idx[moved]
                xb[pts], dist[pts] = self._boundary(
                    oracle, threat.norm, x[pts], cand[moved], pts, theta
                )
        return oracle.best

    # -- the steps of the paper ----------------------------------------------------------------
    def _start(
        self,
        oracle: _Oracle,
        x: Tensor,
        pred: Tensor,
        done: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """An adversarial input for every point that can get one: (starts, found)."""
        lo, hi = oracle.model.bounds
        start, found = x.clone(), done.clone()
        if oracle.targets is not None:
            self._nearest(oracle, x, x, pred, start, found)
        for _ in range(INIT_TRIALS):
            pending = ~found & (oracle.left(torch.arange(x.shape[0], device=x.device)) > 0)
            idx = pending.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            u = torch.rand(x[idx].shape, generator=generator, device=x.device, dtype=x.dtype)
            noise = lo + (hi - lo) * u
            labels = oracle.labels(noise, idx)
            self._nearest(oracle, x, noise, labels, start, found)
        if oracle.targets is None:
            self._nearest(oracle, x, x, pred, start, found)
        return start, found

    @staticmethod
    def _nearest(
        oracle: _Oracle, x: Tensor, pool: Tensor, labels: Tensor, start: Tensor, found: Tensor
    ) -> None:
        """Give each point without a start the nearest ``pool`` input adversarial for it."""
        idx = (~found).nonzero().squeeze(1)
        if idx.numel() == 0 or pool.shape[0] == 0:
            return
        k = pool.shape[0]
        ok = oracle.adversarial_for(
            labels[None, :].expand(idx.numel(), k).reshape(-1), idx.repeat_interleave(k)
        ).view(idx.numel(), k)
        p = math.inf if oracle.norm == "linf" else 2.0
        gap = torch.cdist(flat(x[idx]), flat(pool), p=p).masked_fill(~ok, math.inf)
        size, j = gap.min(1)
        got = torch.isfinite(size)
        start[idx[got]] = pool[j[got]]
        found[idx[got]] = True
        oracle.offer(pool[j[got]], idx[got], torch.ones_like(got[got]))

    @staticmethod
    def _blend(oracle: _Oracle, x: Tensor, start: Tensor, idx: Tensor) -> Tensor:
        """Binary search of (1 − a)·x + a·start toward x while staying adversarial."""
        low, high = torch.zeros(idx.shape, device=x.device), torch.ones(idx.shape, device=x.device)
        view = (-1, *([1] * (x.ndim - 1)))
        while True:
            sel = ((high - low > BLEND_TOLERANCE) & (oracle.left(idx) > 0)).nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            mid = (low[sel] + high[sel]) / 2
            z = x[sel] + mid.view(view).to(x.dtype) * (start[sel] - x[sel])
            adv = oracle.ask(z, idx[sel])
            high[sel] = torch.where(adv, mid, high[sel])
            low[sel] = torch.where(adv, low[sel], mid)
        return x + high.view(view).to(x.dtype) * (start - x)

    @staticmethod
    def _boundary(
        oracle: _Oracle, norm: str, x: Tensor, p: Tensor, idx: Tensor, theta: float
    ) -> tuple[Tensor, Tensor]:
        """Binary search from adversarial ``p`` toward ``x`` to the boundary (adversarial side):
        on the blend coefficient (L2) or the L∞ radius of a clip around x (L∞)."""
        view = (-1, *([1] * (x.ndim - 1)))
        # The search runs in float64: θ can be far below float32's resolution (d = 10⁵: 10⁻¹⁰).
        size = norms(p - x, norm).double()

        def toward(a: Tensor, rows: Tensor | slice) -> Tensor:
            r = a.view(view).to(x.dtype)
            if norm == "l2":
                return x[rows] + r * (p[rows] - x[rows])
            return torch.maximum(torch.minimum(p[rows], x[rows] + r), x[rows] - r)

        if norm == "linf":
            high, tol = size.clone(), torch.clamp(size * theta, max=theta)
        else:
            high, tol = torch.ones_like(size), torch.full_like(size, theta)
        low = torch.zeros_like(size)
        while True:
            go = ((high - low) / tol > 1) & (oracle.left(idx) > 0)
            sel = go.nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            mid = (low[sel] + high[sel]) / 2
            adv = oracle.ask(toward(mid, sel), idx[sel])
            high[sel] = torch.where(adv, mid, high[sel])
            low[sel] = torch.where(adv, low[sel], mid)
        out = toward(high, slice(None))
        return out, norms(out - x, norm)

    @staticmethod
    def _direction(
        oracle: _Oracle,
        xb: Tensor,
        idx: Tensor,
        delta: Tensor,
        counts: Tensor,
        norm: str,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Monte-Carlo estimate of the boundary normal at each ``xb`` (unit L2 norm), from
        ``counts[i]`` labels at xb + δ·u, baseline-corrected by their mean. Sent in chunks of
        whole points (or of one point's samples), each sample a query of its point."""
        lo, hi = oracle.model.bounds
        k, evals = xb.shape[0], int(counts.max())
        xf, x0 = flat(xb), flat(oracle.x[idx])
        s_fu, s_u = torch.zeros_like(xf), torch.zeros_like(xf)
        s_f = torch.zeros(k, device=xb.device, dtype=xb.dtype)
        size = rows_per_call(xb)
        per = max(1, size // evals)
        for a in range(0, k, per):
            c = min(per, k - a)
            pts = slice(a, a + c)
            for b in range(0, evals, size):
                e = min(evals - b, size)
                shape = (c, e, xf.shape[1])
                if norm == "l2":
                    u = torch.randn(shape, generator=generator, device=xb.device, dtype=xb.dtype)
                else:
                    u = torch.rand(shape, generator=generator, device=xb.device, dtype=xb.dtype)
                    u = 2 * u - 1
                u /= u.norm(dim=2, keepdim=True).clamp_min(1e-12)
                step = delta[pts].view(c, 1, 1)
                z = (xf[pts, None] + step * u).clamp_(lo, hi)
                u = (z - xf[pts, None]) / step  # the displacement actually queried
                used = torch.arange(b, b + e, device=xb.device)[None, :] < counts[pts, None]
                owner = idx[pts, None].expand(c, e)[used]
                zq = z[used]
                adv = oracle.ask(
                    zq.view(-1, *xb.shape[1:]),
                    owner,
                    sizes=norms((z - x0[pts, None]).flatten(0, 1), oracle.norm).view(c, e)[used],
                )
                f = torch.zeros(c, e, device=xb.device, dtype=xb.dtype)
                f[used] = adv.to(xb.dtype) * 2 - 1
                s_fu[pts] += (f[:, :, None] * u).sum(1)
                s_u[pts] += (used[:, :, None] * u).sum(1)
                s_f[pts] += f.sum(1)
        m = counts.to(xb.dtype)
        mean_f = (s_f / m)[:, None]
        g = torch.where(mean_f.abs() == 1, s_fu, s_fu - mean_f * s_u) / m[:, None]
        g = g / norms(g, "l2").clamp_min(1e-12)[:, None]
        return g.view_as(xb)

    @staticmethod
    def _step(
        oracle: _Oracle, xb: Tensor, idx: Tensor, update: Tensor, xi: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Geometric step search: ξ halved until xb + ξ·update (in the box) is adversarial.
        Returns the positions that found a step and the stepped points."""
        lo, hi = oracle.model.bounds
        view = (-1, *([1] * (xb.ndim - 1)))
        cand = xb.clone()
        accepted = torch.zeros(xb.shape[0], dtype=torch.bool, device=xb.device)
        xi = xi.clone()
        for _ in range(MAX_HALVINGS):
            sel = (~accepted & (oracle.left(idx) > 0)).nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            z = (xb[sel] + xi[sel].view(view) * update[sel]).clamp(lo, hi)
            adv = oracle.ask(z, idx[sel])
            cand[sel[adv]] = z[adv]
            accepted[sel[adv]] = True
            xi[sel[~adv]] /= 2
        return accepted.nonzero().squeeze(1), cand
