"""APGD — Auto-PGD (Croce & Hein, 2020, https://arxiv.org/abs/2003.01690).

PGD without a step size to tune: the step starts at 2ε and is halved at checkpoints
w_j = ⌈p_j·N⌉ (p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) whenever
(1) fewer than ρ = 75% of the steps since the last checkpoint increased the loss, or (2) the step
was not halved at the last checkpoint and the best loss did not move since; after a halving the
iterate restarts from the best point found. Each step has momentum 0.75:
z = Π(x_k + η·d(∇)), x_{k+1} = Π(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})).

L1 (l1-APGD, Croce & Hein 2021, https://arxiv.org/abs/2103.01208): the step moves only the
top-k coordinates of the gradient, with k adapted per point:
k₀ = 0.2·d, and at every checkpoint (each ⌊0.04·N⌋ ≥ 1 steps) k = ‖x_best − x‖₀ / 1.5. The step
starts at η = ε; at a checkpoint it is reset to ε (and the iterate to the best point) when the
best point became ≥ 5% sparser, else divided by 1.5, always within [ε/10, ε]. No momentum;
the exact L1 ∩ box projection. As in AutoAttack's L1 version (``large_eps``, on by default),
the run first optimizes inside 3ε then 2ε (30% of the steps each), each stage
starting from the previous stage's best point projected onto the smaller ball, with k₀ from
its sparsity; only the last stage, at ε, can report success.

Losses: ``ce`` (cross-entropy) and ``dlr`` (Difference of Logits Ratio, scale invariant, so it
is not fooled by rescaled logits); targeted variants push toward ``targets``. Returns, per point,
the first adversarial iterate found, else the iterate with the highest loss.

    >>> x_adv = APGD(loss="dlr", steps=100)(model, x, y, ThreatModel("linf", 8 / 255))
    >>> x_adv = APGD(loss="ce", restarts=5)(model, x, y, ThreatModel("l1", 12.0))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import check_iterative
from aegis.attacks.base import Attack, ce_loss, dlr_loss, is_adversarial, runner_up_targets
from aegis.errors import ConfigError
from aegis.model import Classifier, LossFn
from aegis.registry import register
from aegis.threat import ThreatModel, flat

log = logging.getLogger(__name__)


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size.

    In whole steps, as the reference implementation counts them: the first interval is
    0.22·N, each next one 0.03·N shorter, but never shorter than 0.06·N (N = 100 gives
    22, 41, 57, 70, 80, 87, 93, 99).
    """
    size = max(int(0.22 * steps), 1)
    shrink, smallest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, k = [], 0
    while k + size <= steps:
        k += size
        marks.append(k)
        size = max(size - shrink, smallest)
    return marks


def l1_stages(steps: int, large_eps: bool) -> list[tuple[float, int]]:
    """(ε multiplier, steps) of each stage of an L1 run.

    With ``large_eps``, AutoAttack's schedule 3ε, 2ε, ε over ⌈0.3·N⌉, ⌈0.3·N⌉ and the rest of
    the N steps (N = 100 gives 30, 30, 40); the last stage keeps at least one step, so short
    runs (N = 1, 2, 4) give the first stages fewer than the reference would.
    """
    if not large_eps:
        return [(1.0, steps)]
    first = min(math.ceil(0.3 * steps), (steps - 1) // 2)
    stages = [(3.0, first), (2.0, first), (1.0, steps - 2 * first)]
    return [(f, s) for f, s in stages if s > 0]


def sparse_direction(grad: Tensor, share: Tensor) -> Tensor:
    """The L1 steepest-ascent step with a per-point share of coordinates: sign(g) on the
    ⌈share·d⌉ largest |g|, normalized to unit L1 norm. Unlike ``ThreatModel.ascent_direction``
    it keeps coordinates pinned at the box, as the l1-APGD reference does (the exact L1 ∩ box
    projection then drops their share; on the digits MLP this was ~3 points stronger at small
    ε and ~1 point weaker at large ε than excluding them)."""
    g = flat(grad)
    d = g.shape[1]
    k = (share * d).ceil().clamp(1, d).long()
    thresh = g.abs().sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    step = g.sign() * ((g.abs() >= thresh) & (g != 0)).to(g.dtype)
    step = step / step.abs().sum(1, keepdim=True).clamp_min(1.0)
    return step.view_as(grad)


def _l0(delta: Tensor) -> Tensor:
    """Changed coordinates per point (l1-APGD counts coordinates, not pixels)."""
    return (flat(delta) != 0).sum(1).to(delta.dtype)


@dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """Auto-PGD with step-size schedule and momentum (Croce & Hein 2020); l1-APGD for L1."""

    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75  # linf / l2 only
    momentum: float = 0.75  # linf / l2 only (l1-APGD has none)
    random_start: bool = True
    large_eps: bool = True  # l1 only: AutoAttack's 3ε → 2ε → ε schedule
    early_stop: bool = True  # drop a point from the batch once it is fooled (same results)

    def __post_init__(self) -> None:
        check_iterative(self.steps, None, self.restarts, 0.0)
        if self.loss not in ("ce", "dlr"):
            raise ConfigError(f"loss must be 'ce' or 'dlr', got {self.loss!r}")
        if not 0 < self.rho <= 1 or not 0 <= self.momentum <= 1:
            raise ConfigError(
                f"rho must be in (0, 1] and momentum in [0, 1], got {self.rho}, {self.momentum}"
            )

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
        if self.loss == "dlr" and model.num_classes < (4 if targets is not None else 3):
            raise ConfigError(
                f"the DLR loss needs at least {4 if targets is not None else 3} classes, the "
                f"model has {model.num_classes}; use loss='ce'"
            )
        x_out = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self._restarts(model, x, y, targets, threat, generator, x_out, found)
        return x_out

    def _restarts(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        threat: ThreatModel,
        generator: torch.Generator | None,
        x_out: Tensor,
        found: Tensor,
        *,
        loss: str | None = None,
        any_error: bool = False,
    ) -> None:
        """Run the restarts on the points not yet ``found``, updating ``x_out`` and ``found``."""
        for restart in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            t = None if targets is None else targets[idx]
            adv, hit = self._one_run(
                model,
                x[idx],
                y[idx],
                t,
                idx,
                threat,
                generator,
                random=self.random_start or restart > 0,
                loss=loss,
                any_error=any_error,
            )
            x_out[idx] = adv
            found[idx] = hit

    def _one_run(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None,
        random: bool,
        *,
        loss: str | None = None,
        any_error: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """One APGD run; ``loss`` overrides the attack's, ``any_error`` counts any
        misclassification as success (APGD-T: targets steer the loss, not the goal)."""
        if threat.norm == "l1":
            return self._one_run_l1(
                model, x, y, t, rows, threat, generator, random, loss=loss, any_error=any_error
            )
        bounds = model.bounds
        n = x.shape[0]
        view = (-1, *([1] * (x.ndim - 1)))
        make_loss = ce_loss if (loss or self.loss) == "ce" else dlr_loss
        loss_fn = make_loss(y, t)
        goal = None if any_error else t
        x_cur = threat.random_start(x, bounds, generator) if random else x.clone()
        logits, loss_now, grad = model.value_and_grad(x_cur, loss_fn, rows=rows)
        hit = is_adversarial(logits, y, goal)
        x_adv = x_cur.clone()
        best_loss, x_best, grad_best = loss_now.clone(), x_cur.clone(), grad.clone()
        eta = torch.full((n,), 2.0 * threat.eps, device=x.device, dtype=x.dtype)
        marks = set(checkpoints(self.steps))
        last_mark = 0
        increases = torch.zeros(n, device=x.device)
        best_at_mark = best_loss.clone()
        halved_at_mark = torch.ones(n, dtype=torch.bool, device=x.device)
        x_prev = x_cur.clone()
        # Early stop: a point's result is its first adversarial iterate, so once found, the
        # point leaves the batch (every 4 steps, to spare accelerators a sync per step). Every
        # quantity below is per point, so the others' trajectories do not change.
        out_adv, out_hit = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        act = torch.arange(n, device=x.device)
        # A randomized model's hit is one draw's: another draw may disagree, so every point
        # runs all steps and returns its highest-loss (EOT) iterate instead.
        stop_early = self.early_stop and not model.randomized
        for k in range(self.steps):
            # One sync a check: integer positions gather without a boolean mask's sync each.
            keep = (~hit).nonzero().squeeze(1) if stop_early and k % 4 == 0 else None
            if keep is not None and keep.numel() < act.numel():
                out_adv[act] = torch.where(hit.view(view), x_adv, out_adv[act])
                out_hit[act] = hit
                act, x, y, rows = act[keep], x[keep], y[keep], rows[keep]
                t = None if t is None else t[keep]
                goal = None if any_error else t
                loss_fn = make_loss(y, t)
                x_cur, x_prev, grad, x_adv, hit = (
                    x_cur[keep],
                    x_prev[keep],
                    grad[keep],
                    x_adv[keep],
                    hit[keep],
                )
                best_loss, x_best, grad_best = best_loss[keep], x_best[keep], grad_best[keep]
                eta, increases = eta[keep], increases[keep]
                best_at_mark, halved_at_mark = best_at_mark[keep], halved_at_mark[keep]
                if act.numel() == 0:
                    break
            direction = threat.ascent_direction(grad, x=x_cur, bounds=bounds)
            z = threat.project(x_cur + eta.view(view) * direction, x, bounds)
            a = self.momentum if k > 0 else 1.0
            x_next = threat.project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, bounds)
            x_prev = x_cur
            x_cur = x_next
            logits, loss_now, grad = model.value_and_grad(x_cur, loss_fn, rows=rows)
            now = is_adversarial(logits, y, goal)
            newly = now & ~hit
            x_adv = torch.where(newly.view(view), x_cur, x_adv)
            hit |= now
            improved = loss_now > best_loss
            increases += improved.float()
            best_loss = torch.where(improved, loss_now, best_loss)
            x_best = torch.where(improved.view(view), x_cur, x_best)
            grad_best = torch.where(improved.view(view), grad, grad_best)
            if k + 1 in marks:
                window = k + 1 - last_mark
                cond1 = increases < self.rho * window
                cond2 = ~halved_at_mark & (best_at_mark >= best_loss)
                halve = cond1 | cond2
                eta = torch.where(halve, eta / 2, eta)
                # After a halving, restart from the best point with its gradient.
                x_cur = torch.where(halve.view(view), x_best, x_cur)
                grad = torch.where(halve.view(view), grad_best, grad)
                x_prev = torch.where(halve.view(view), x_best, x_prev)
                halved_at_mark = halve
                best_at_mark = best_loss.clone()
                increases.zero_()
                last_mark = k + 1
        keep_first = hit & (not model.randomized)
        out_adv[act] = torch.where(keep_first.view(view), x_adv, x_best)
        out_hit[act] = hit
        return out_adv, out_hit

    def _one_run_l1(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        t: Tensor | None,
        rows: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None,
        random: bool,
        *,
        loss: str | None = None,
        any_error: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """One l1-APGD run: its stages (see ``l1_stages``), each from the last one's best point."""
        bounds = model.bounds
        loss_fn = ce_loss(y, t) if (loss or self.loss) == "ce" else dlr_loss(y, t)
        goal = None if any_error else t
        stages = l1_stages(self.steps, self.large_eps)
        start = ThreatModel("l1", stages[0][0] * threat.eps)
        x_cur = start.random_start(x, bounds, generator) if random else x.clone()
        x_adv, hit = x_cur, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for factor, steps in stages:
            ball = ThreatModel("l1", factor * threat.eps)
            x_cur = ball.project(x_cur, x, bounds)
            x_cur, x_adv, hit = self._l1_stage(
                model, x, y, goal, rows, ball, loss_fn, x_cur, steps, warm=self.large_eps
            )
        # Only the last stage (at ε) decides success: earlier hits lie outside the budget.
        view = (-1, *([1] * (x.ndim - 1)))
        return torch.where(hit.view(view), x_adv, x_cur), hit

    def _l1_stage(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        goal: Tensor | None,
        rows: Tensor,
        ball: ThreatModel,
        loss_fn: LossFn,
        x_cur: Tensor,
        steps: int,
        *,
        warm: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``steps`` l1-APGD steps in ``ball`` from ``x_cur``: (best point, first adversarial
        iterate, found). ``warm``: the start carries a perturbation, whose sparsity sets k₀."""
        bounds = model.bounds
        n, d = x.shape[0], x[0].numel()
        view = (-1, *([1] * (x.ndim - 1)))
        eps = ball.eps
        logits, loss_now, grad = model.value_and_grad(x_cur, loss_fn, rows=rows)
        hit = is_adversarial(logits, y, goal)
        x_adv = x_cur.clone()
        best_loss, x_best, grad_best = loss_now.clone(), x_cur.clone(), grad.clone()
        eta = torch.full((n,), eps, device=x.device, dtype=x.dtype)
        sp0 = _l0(x_cur - x)
        known = sp0 > 0 if warm else torch.zeros_like(sp0, dtype=torch.bool)
        sp_old = torch.where(known, sp0, torch.full_like(sp0, float(d)))
        share = torch.where(known, sp0 / d / 1.5, torch.full_like(sp0, 0.2))
        every = max(int(0.04 * steps), 1)
        for k in range(steps):
            direction = sparse_direction(grad, share)
            x_cur = ball.project(x_cur + eta.view(view) * direction, x, bounds)
            logits, loss_now, grad = model.value_and_grad(x_cur, loss_fn, rows=rows)
            now = is_adversarial(logits, y, goal)
            x_adv = torch.where((now & ~hit).view(view), x_cur, x_adv)
            hit |= now
            improved = loss_now > best_loss
            best_loss = torch.where(improved, loss_now, best_loss)
            x_best = torch.where(improved.view(view), x_cur, x_best)
            grad_best = torch.where(improved.view(view), grad, grad_best)
            if (k + 1) % every == 0:
                # Adapt the sparsity to the best point's; a much sparser best point resets
                # the step to ε and the iterate to it, otherwise the step shrinks.
                sp = _l0(x_best - x)
                sparser = sp / sp_old.clamp_min(1.0) < 0.95
                share = sp / d / 1.5
                eta = torch.where(sparser, torch.full_like(eta, eps), eta / 1.5)
                eta = eta.clamp(eps / 10, eps)
                sp_old = sp
                x_cur = torch.where(sparser.view(view), x_best, x_cur)
                grad = torch.where(sparser.view(view), grad_best, grad)
        return x_best, x_adv, hit


@register("apgd-ce", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/2003.01690")
@dataclass(frozen=True, kw_only=True)
class APGDCE(APGD):
    """Auto-PGD on the cross-entropy loss (Croce & Hein 2020)."""

    loss: str = "ce"


@register("apgd-dlr", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/2003.01690")
@dataclass(frozen=True, kw_only=True)
class APGDDLR(APGD):
    """Auto-PGD on the scale-invariant DLR loss (Croce & Hein 2020); needs ≥ 3 classes."""

    loss: str = "dlr"


@register("apgd-t", norms=("linf", "l2", "l1"), paper="https://arxiv.org/abs/2003.01690")
@dataclass(frozen=True, kw_only=True)
class APGDT(APGD):
    """APGD-T: targeted DLR toward each of the top-k other classes in turn (Croce & Hein 2020).

    Untargeted use (the AutoAttack component): for j = 2 … k + 1, the j-th most likely class
    of the clean input becomes the target of one APGD run on the points not yet misclassified;
    any misclassification counts as success. With ``targets`` given it is APGD with the
    targeted loss. The targeted DLR needs 4 classes; below that the targeted CE loss is used.
    """

    loss: str = "dlr"
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
        loss = self.loss if model.num_classes >= 4 else "ce"
        if loss != self.loss:
            log.info("apgd-t: %d classes, targeted DLR undefined; using CE", model.num_classes)
        x_out = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if targets is not None:
            self._restarts(model, x, y, targets, threat, generator, x_out, found, loss=loss)
            return x_out
        for t in runner_up_targets(model, x, y, self.target_classes):
            self._restarts(
                model, x, y, t, threat, generator, x_out, found, loss=loss, any_error=True
            )
        return x_out
