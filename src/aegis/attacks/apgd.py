"""APGD — Auto-PGD (Croce & Hein, 2020, https://arxiv.org/abs/2003.01690).

PGD without a step size to tune: the step starts at 2ε and is halved at checkpoints
w_j = ⌈p_j·N⌉ (p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) whenever
(1) fewer than ρ = 75% of the steps since the last checkpoint increased the loss, or (2) the step
was not halved at the last checkpoint and the best loss did not move since; after a halving the
iterate restarts from the best point found. Each step has momentum 0.75:
z = Π(x_k + η·d(∇)), x_{k+1} = Π(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})).

Losses: ``ce`` (cross-entropy) and ``dlr`` (Difference of Logits Ratio, scale invariant, so it
is not fooled by rescaled logits); targeted variants push toward ``targets``. Returns, per point,
the first adversarial iterate found, else the iterate with the highest loss.

    >>> x_adv = APGD(loss="dlr", steps=100)(model, x, y, ThreatModel("linf", 8 / 255))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks._params import check_iterative
from aegis.attacks.base import Attack, ce_loss, dlr_loss, is_adversarial
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import register
from aegis.threat import ThreatModel

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


@dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """Auto-PGD with step-size schedule and momentum (Croce & Hein 2020)."""

    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    random_start: bool = True

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
        bounds = model.bounds
        n = x.shape[0]
        view = (-1, *([1] * (x.ndim - 1)))
        loss_fn = ce_loss(y, t) if (loss or self.loss) == "ce" else dlr_loss(y, t)
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
        for k in range(self.steps):
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
        return torch.where(hit.view(view), x_adv, x_best), hit


@register("apgd-ce", norms=("linf", "l2"), paper="https://arxiv.org/abs/2003.01690")
@dataclass(frozen=True, kw_only=True)
class APGDCE(APGD):
    """Auto-PGD on the cross-entropy loss (Croce & Hein 2020)."""

    loss: str = "ce"


@register("apgd-dlr", norms=("linf", "l2"), paper="https://arxiv.org/abs/2003.01690")
@dataclass(frozen=True, kw_only=True)
class APGDDLR(APGD):
    """Auto-PGD on the scale-invariant DLR loss (Croce & Hein 2020); needs ≥ 3 classes."""

    loss: str = "dlr"


@register("apgd-t", norms=("linf", "l2"), paper="https://arxiv.org/abs/2003.01690")
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
        order = model.logits(x).argsort(1, descending=True)
        for j in range(1, min(self.target_classes, model.num_classes - 1) + 1):
            # A misclassified input's ranking may put its true class here: aim at the top.
            t = torch.where(order[:, j] == y, order[:, 0], order[:, j])
            self._restarts(
                model, x, y, t, threat, generator, x_out, found, loss=loss, any_error=True
            )
        return x_out
