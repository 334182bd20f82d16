"""FAB — Fast Adaptive Boundary attack (Croce & Hein, 2020, https://arxiv.org/abs/1907.02044).

A minimal-norm attack (``linf``, ``l2``, ``l1``). At each step the classifier is linearized
around the iterate x_k; among the linearized decision boundaries f_j(x_k) + ∇f_j(x_k)·(z − x_k)
= 0, f_j = z_j − z_y, it takes the closest, |f_j| / ‖∇f_j‖_q (q the dual norm), and projects
onto that hyperplane ∩ box both the iterate (δ_k) and the original point (δ_orig). The step is
biased toward the original point:

    x_{k+1} = clip((1 − α)(x_k + η·δ_k) + α(x_orig + η·δ_orig)),
    α = min(‖δ_k‖ / (‖δ_k‖ + ‖δ_orig‖), α_max),

with extrapolation η; an adversarial x_{k+1} is recorded and pulled back toward the original
point, x_orig + β(x_{k+1} − x_orig). The first run starts at x, each further restart at a random
point at distance ½·min(best norm so far, ε) from x (ε: the threat's, or 0.3 / 1 / 5 times the
box width for linf / l2 / l1 when unbounded, as in the reference implementation).

``fab`` linearizes every class j ≠ y at each step (K − 1 gradient rows per point, one
``value_and_grad`` call on the batch repeated K − 1 times). ``fab-t`` is AutoAttack's FAB-T: for
each of the ``target_classes`` most likely other classes of the clean input in turn, FAB with the
single boundary z_t − z_y (one gradient row per point per step) on the points not yet fooled;
any misclassification counts. With ``targets`` given, both are targeted FAB: the boundary is
z_t − z_c with c the strongest non-target class, and only the target counts.

Returns, per point, the smallest adversarial input evaluated (the original x when none); with
a finite ε a point stops once it is fooled within ε, and the base projects onto the ε-ball.

    >>> x_adv = FABT()(model, x, y, ThreatModel("linf", 8 / 255))
    >>> x_min = FAB(steps=100)(model, x, y, ThreatModel("l2", float("inf")))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import check_iterative
from aegis.attacks.base import Attack, is_adversarial, runner_up_targets
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel, flat, norms

DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}
START_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}  # reference's default ε, per unit box width
CHECK_EVERY = 5  # steps between drops of points already fooled within a finite ε


# -- projection onto a hyperplane ∩ box -----------------------------------------------------


def _water_fill(a: Tensor, room: Tensor, need: Tensor, g: Tensor) -> Tensor:
    """Solve Σᵢ aᵢ·clip(λ·gᵢ, 0, roomᵢ) = need for λ ≥ 0 exactly and return the clipped steps.

    The left side is piecewise linear and nondecreasing in λ with breakpoints roomᵢ / gᵢ:
    sorting them and taking cumulative sums gives its value at every breakpoint, so the
    segment holding the solution, and λ within it, follow in closed form.
    """
    brk = torch.where(g > 0, room / g.clamp_min(1e-30), torch.zeros_like(room))
    order = brk.argsort(1)
    a_s, r_s, g_s, b_s = (t.gather(1, order) for t in (a, room, g, brk))
    saturated = (a_s * r_s).cumsum(1)  # Σ over breakpoints ≤ the j-th: those coordinates are full
    free = (a_s * g_s).sum(1, keepdim=True) - (a_s * g_s).cumsum(1)  # slope beyond the j-th
    value = saturated + b_s * free
    j = (value < need[:, None]).sum(1, keepdim=True)  # first breakpoint reaching `need`
    zero = a.new_zeros(a.shape[0], 1)
    sat_before = torch.cat([zero, saturated], 1).gather(1, j)
    free_before = torch.cat([(a_s * g_s).sum(1, keepdim=True), free], 1).gather(1, j)
    lam = (need[:, None] - sat_before) / free_before.clamp_min(1e-30)
    out = torch.minimum(lam * g, room)
    return torch.where(j == a.shape[1], room, out)  # the box cannot reach it: go all the way


def _greedy_fill(a: Tensor, room: Tensor, need: Tensor) -> Tensor:
    """L1: fill the coordinates with the largest aᵢ first (a fractional knapsack)."""
    order = a.argsort(1, descending=True)
    a_s, r_s = a.gather(1, order), room.gather(1, order)
    cum = (a_s * r_s).cumsum(1)
    j = (cum < need[:, None]).sum(1, keepdim=True)
    before = torch.cat([a.new_zeros(a.shape[0], 1), cum], 1).gather(1, j)
    jc = j.clamp_max(a.shape[1] - 1)
    part = ((need[:, None] - before) / a_s.gather(1, jc).clamp_min(1e-30)).clamp_min(0)
    pos = torch.arange(a.shape[1], device=a.device)[None]
    e_s = torch.where(pos < j, r_s, torch.where(pos == j, torch.minimum(part, r_s), 0.0))
    return torch.zeros_like(a).scatter(1, order, e_s)


def project_hyperplane_box(
    point: Tensor, w: Tensor, b: Tensor, norm: str, bounds: tuple[float, float]
) -> Tensor:
    """The smallest step d (in ``norm``) with w·(point + d) = b and point + d in the box.

    ``point`` and ``w`` are (n, D), ``b`` is (n,). Where the box cannot reach the hyperplane,
    the step to the box point closest to it (every helpful coordinate moved to its bound).
    Signs are folded first: with c = b − w·point, coordinate i only ever moves by
    eᵢ ≥ 0 in the direction sign(c·wᵢ), up to its room to the box, so the problem is
    min ‖e‖ s.t. Σ |wᵢ| eᵢ = |c|, 0 ≤ eᵢ ≤ roomᵢ: for l2 eᵢ = min(λ|wᵢ|, roomᵢ), for linf
    eᵢ = min(τ, roomᵢ), for l1 the largest |wᵢ| are filled first.
    """
    lo, hi = bounds
    c = b - (w * point).sum(1)
    direction = torch.where(c >= 0, 1.0, -1.0)[:, None] * w.sign()
    a = w.abs()
    room = torch.where(direction > 0, hi - point, point - lo).clamp_min(0)
    room = torch.where(a > 0, room, torch.zeros_like(room))
    need = c.abs()
    if norm == "l2":
        e = _water_fill(a, room, need, a)
    elif norm == "linf":
        e = _water_fill(a, room, need, (a > 0).to(a.dtype))
    elif norm == "l1":
        e = _greedy_fill(a, room, need)
    else:
        raise ConfigError(f"FAB supports norms linf, l2, l1, not {norm!r}")
    return direction * e


# -- the attack -----------------------------------------------------------------------------


def _sphere_start(
    x: Tensor,
    radius: Tensor,
    norm: str,
    bounds: tuple[float, float],
    generator: torch.Generator | None,
) -> Tensor:
    """A random point at distance ``radius`` (per sample) from x, clipped to the box."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    else:
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    u = u / norms(u, norm).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
    return (x + radius.view(-1, *([1] * (x.ndim - 1))) * u).clamp(*bounds)


@register(
    "fab",
    norms=("linf", "l2", "l1"),
    paper="https://arxiv.org/abs/1907.02044",
    targeted=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class FAB(Attack):
    """Fast Adaptive Boundary attack: minimal-norm, all classes linearized (Croce & Hein 2020)."""

    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self) -> None:
        check_iterative(self.steps, None, self.restarts, 0.0)
        if not 0 <= self.alpha_max <= 1:
            raise ConfigError(f"alpha_max must be in [0, 1], got {self.alpha_max}")
        if not self.eta >= 1:
            raise ConfigError(f"eta must be >= 1, got {self.eta}")
        if not 0 < self.beta < 1:
            raise ConfigError(f"beta must be in (0, 1), got {self.beta}")

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
        best = x.clone()
        best_norm = torch.full((x.shape[0],), math.inf, device=x.device)
        self._restarts(model, x, y, targets, threat, generator, best, best_norm, any_error=False)
        return best

    def memory_rows(self, num_classes: int, targeted: bool) -> int:
        """Untargeted, every class j ≠ y is linearized in one call: K − 1 copies a point."""
        return 1 if targeted else max(num_classes - 1, 1)

    def _restarts(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        threat: ThreatModel,
        generator: torch.Generator | None,
        best: Tensor,
        best_norm: Tensor,
        *,
        any_error: bool,
    ) -> None:
        """Run the restarts, updating ``best`` / ``best_norm`` in place. With a finite ε only
        the points not yet fooled within ε are attacked; unbounded, every point is, and the
        smallest adversarial wins."""
        lo, hi = model.bounds
        scale = threat.eps if math.isfinite(threat.eps) else START_RADIUS[threat.norm] * (hi - lo)
        for restart in range(self.restarts):
            idx = (
                torch.arange(x.shape[0], device=x.device)
                if math.isinf(threat.eps)
                else (best_norm > threat.eps).nonzero().squeeze(1)
            )
            if idx.numel() == 0:
                return
            x0 = x[idx]
            if restart == 0:
                start = x0.clone()
            else:
                radius = 0.5 * best_norm[idx].clamp_max(scale)
                start = _sphere_start(x0, radius, threat.norm, model.bounds, generator)
            t = None if targets is None else targets[idx]
            adv, size = self._one_run(model, x0, y[idx], t, idx, threat, start, any_error)
            better = size < best_norm[idx]
            best[idx] = torch.where(better.view(-1, *([1] * (x.ndim - 1))), adv, best[idx])
            best_norm[idx] = torch.minimum(size, best_norm[idx])

    def _linearize(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        any_error: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits at x, and the boundary functions f (n, m) with their gradients (n, m, D).

        Untargeted: f_j = z_j − z_y for the m = K − 1 classes j ≠ y, from one call on the batch
        repeated m times (copy j differentiates class j; each copy counts as a gradient row).
        Targeted: m = 1, f = z_t − z_c with c = y (FAB-T's use) or the strongest non-target.
        """
        n, k = x.shape[0], model.num_classes
        if t is None:
            others = torch.arange(k - 1, device=x.device)[None]
            others = others + (others >= y[:, None]).long()  # the classes j ≠ y, (n, K − 1)
            cls = others.t().reshape(-1)  # copy j of point i sits at row j·n + i
            yy = y.repeat(k - 1)

            def diff(z: Tensor) -> Tensor:
                return z.gather(1, cls[:, None]).squeeze(1) - z.gather(1, yy[:, None]).squeeze(1)

            rep = x.repeat(k - 1, *([1] * (x.ndim - 1)))
            logits, f, grad = model.value_and_grad(rep, diff, rows=rows.repeat(k - 1))
            return logits[:n], f.view(k - 1, n).t(), flat(grad).view(k - 1, n, -1).transpose(0, 1)
        goal = t

        def toward(z: Tensor) -> Tensor:
            zt = z.gather(1, goal[:, None]).squeeze(1)
            # FAB-T's boundary is z_t − z_y; a targeted one is against the strongest rival.
            rival = y if any_error else z.detach().scatter(1, goal[:, None], -math.inf).argmax(1)
            return zt - z.gather(1, rival[:, None]).squeeze(1)

        logits, f, grad = model.value_and_grad(x, toward, rows=rows)
        return logits, f[:, None], flat(grad)[:, None]

    def _one_run(
        self,
        model: Classifier,
        x0: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        threat: ThreatModel,
        start: Tensor,
        any_error: bool,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run from ``start``: the smallest adversarial evaluated and its norm (inf where
        none was found)."""
        norm, bounds = threat.norm, model.bounds
        goal = None if any_error else t
        view = (-1, *([1] * (x0.ndim - 1)))
        best = x0.clone()
        best_norm = torch.full((x0.shape[0],), math.inf, device=x0.device)
        x_cur = start.clone()
        active = torch.arange(x0.shape[0], device=x0.device)

        def keep(pos: Tensor, x_new: Tensor, logits: Tensor) -> Tensor:
            adv = is_adversarial(logits, y[pos], None if goal is None else goal[pos])
            size = norms(x_new - x0[pos], norm)
            better = adv & (size < best_norm[pos])
            best[pos] = torch.where(better.view(view), x_new, best[pos])
            best_norm[pos] = torch.where(better, size, best_norm[pos])
            return adv

        for step in range(self.steps):
            if math.isfinite(threat.eps) and step % CHECK_EVERY == 0:
                active = active[best_norm[active] > threat.eps]  # fooled within ε: done
                if active.numel() == 0:
                    break
            xa, xo = x_cur[active], x0[active]
            ta = None if t is None else t[active]
            logits, f, g = self._linearize(model, xa, y[active], ta, rows[active], any_error)
            keep(active, xa, logits)  # the iterate itself may already be adversarial
            # The closest linearized boundary, in the threat's norm.
            dist = f.abs() / (norms(g.reshape(-1, g.shape[-1]), DUAL[norm]).view(f.shape) + 1e-12)
            j = dist.argmin(1)
            ar = torch.arange(j.shape[0], device=j.device)
            w, fj = g[ar, j], f[ar, j]
            xf, x0f = flat(xa), flat(xo)
            b = (w * xf).sum(1) - fj
            d = project_hyperplane_box(
                torch.cat([xf, x0f]), torch.cat([w, w]), torch.cat([b, b]), norm, bounds
            )
            d_cur, d_orig = d[: xf.shape[0]], d[xf.shape[0] :]
            n_cur = norms(d_cur, norm).clamp_min(1e-8)
            n_orig = norms(d_orig, norm).clamp_min(1e-8)
            alpha = (n_cur / (n_cur + n_orig)).clamp(0, self.alpha_max)[:, None]
            x_new = (1 - alpha) * (xf + self.eta * d_cur) + alpha * (x0f + self.eta * d_orig)
            x_new = x_new.clamp(*bounds).view_as(xa)
            adv = keep(active, x_new, model.logits(x_new, rows=rows[active]))
            # Backward step: an adversarial point moves toward the original one.
            x_cur[active] = torch.where(adv.view(view), xo + self.beta * (x_new - xo), x_new)
        return best, best_norm


@register(
    "fab-t",
    norms=("linf", "l2", "l1"),
    paper="https://arxiv.org/abs/1907.02044",
    targeted=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class FABT(FAB):
    """FAB-T: targeted FAB toward each of the top-k other classes in turn (AutoAttack's FAB-T).

    Defaults are AutoAttack's standard budgets: 100 steps, 1 restart, 9 target classes,
    α_max = 0.1, η = 1.05, β = 0.9.
    """

    target_classes: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
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
        best = x.clone()
        best_norm = torch.full((x.shape[0],), math.inf, device=x.device)
        if targets is not None:
            self._restarts(
                model, x, y, targets, threat, generator, best, best_norm, any_error=False
            )
            return best
        for t in runner_up_targets(model, x, y, self.target_classes):
            self._restarts(model, x, y, t, threat, generator, best, best_norm, any_error=True)
        return best

    def memory_rows(self, num_classes: int, targeted: bool) -> int:
        """FAB-T linearizes one target class at a time: one copy a point."""
        return 1
