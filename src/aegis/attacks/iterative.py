"""The one gradient-ascent loop behind FGSM, BIM, PGD and MI-FGSM (and the detector-aware PGD).

x_{t+1} = Π_{B(x, ε) ∩ box}( x_t + η · d(g_t) ), with d the steepest-ascent direction of the
threat's norm (sign for L∞, normalized for L2, top-k sparse for L1) and g_t the gradient of the
loss — or its momentum accumulation for MI-FGSM. Δx = −η·∇ₓJ for a targeted loss J, +η·∇ₓJ
for the untargeted one; both are "ascend the loss" (by default the one returned by
``ce_loss``; an attack passes its own ``loss``, or an ``objective`` where the loss needs more
than the logits, e.g. a detector's score).

Soundness: a point that is adversarial at some iterate is frozen there (its logits were computed
on that very iterate, so the engine's re-prediction agrees; not on a randomized model, where
no point is frozen). Freezing is a mask, so it costs no
device-to-host synchronization; every ``COMPACT_EVERY`` steps the loop checks how many points are
still active and drops the frozen ones from the batch when that saves enough work. Restarts run
only on points not yet fooled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from aegis.attacks.base import ce_loss, is_adversarial
from aegis.model import Classifier, LossFn
from aegis.threat import ThreatModel, flat

COMPACT_EVERY = 4  # steps between checks of the active set (each check is one host sync)
COMPACT_BELOW = {"cpu": 0.75}  # shrink the batch when at most this share is still active
COMPACT_BELOW_ACCELERATOR = 0.5  # GPUs are often launch-bound on small batches: shrink later

LossFactory = Callable[[Tensor, Tensor | None], LossFn]
"""``(y, targets)`` of the rows being attacked → the per-sample loss of their logits to ascend
(``ce_loss``, ``dlr_loss``, …)."""

Objective = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], tuple[Tensor | None, Tensor]]
"""``(x, y, targets, rows)`` → ``(succeeded, grad)``: which rows of ``x`` already succeed
(``None``: not decided, nothing is frozen) and the gradient with respect to ``x`` of the summed
per-sample loss to ascend. ``rows`` are the positions of ``x``'s rows in the input of
``gradient_ascent`` (``None``: all of them, in order), for query counting and for objectives
that keep per-point state."""


def gradient_ascent(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    targets: Tensor | None,
    generator: torch.Generator | None,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int = 1,
    decay: float = 0.0,
    sparsity: float = 0.99,
    early_stop: bool = True,
    loss: LossFactory = ce_loss,
    objective: Objective | None = None,
) -> Tensor:
    """Ascend ``loss`` from ``x`` (or its random start) and return the iterates, each point
    frozen at its first adversarial one (``early_stop``). ``objective`` replaces ``loss`` and
    the adversarial test where the loss needs more than the logits (e.g. a detector's score)."""
    n = x.shape[0]
    # On a randomized model an iterate that fooled one draw may not fool the engine's: keep
    # ascending the (EOT) loss on every point instead of freezing borderline ones.
    early_stop = early_stop and not model.randomized
    compact_below = COMPACT_BELOW.get(x.device.type, COMPACT_BELOW_ACCELERATOR)
    ascend = objective or _logit_objective(model, loss, early_stop)
    x_out = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for restart in range(restarts):
        idx = (~found).nonzero().squeeze(1) if restart else torch.arange(n, device=x.device)
        if idx.numel() == 0:
            break
        x0, y0 = x[idx], y[idx]
        t0 = None if targets is None else targets[idx]
        x_cur = threat.random_start(x0, model.bounds, generator) if random_start else x0.clone()
        done = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        momentum = torch.zeros_like(x0)
        active: Tensor | None = None  # positions within idx still computed; None: all of them
        for step in range(steps):
            xa, x0a, ya = _take(x_cur, active), _take(x0, active), _take(y0, active)
            ta = None if t0 is None else _take(t0, active)
            rows = (None if restart == 0 else idx) if active is None else idx[active]
            succeeded, grad = ascend(xa, ya, ta, rows)
            if decay > 0:
                g = grad / flat(grad).abs().mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                grad = decay * _take(momentum, active) + g
                momentum = _put(momentum, active, grad)
            direction = threat.ascent_direction(grad, sparsity=sparsity, x=xa, bounds=model.bounds)
            stepped = threat.project(xa + step_size * direction, x0a, model.bounds)
            if early_stop and succeeded is not None:
                frozen = _take(done, active) | succeeded
                stepped = torch.where(frozen.view(-1, 1, 1, 1), xa, stepped)
                done = _put(done, active, frozen)
            x_cur = _put(x_cur, active, stepped)
            if early_stop and (step + 1) % COMPACT_EVERY == 0 and step + 1 < steps:
                left = (~done).nonzero().squeeze(1)
                if left.numel() == 0:
                    break
                size = idx.numel() if active is None else active.numel()
                if left.numel() <= compact_below * size:
                    active = left
        x_out[idx] = x_cur
        found[idx] |= done
        if restart < restarts - 1:
            # Decide which points the next restart must work on (one forward pass).
            pos = (~done).nonzero().squeeze(1)
            ta = None if t0 is None else t0[pos]
            found[idx[pos[_succeeds(model, objective, x_cur[pos], y0[pos], ta, idx[pos])]]] = True
    return x_out


def _logit_objective(model: Classifier, loss: LossFactory, early_stop: bool) -> Objective:
    """The objective of a loss of the logits: one forward and input gradient per step; the
    adversarial test only when it freezes points."""

    def ascend(
        x: Tensor, y: Tensor, targets: Tensor | None, rows: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        logits, _, grad = model.value_and_grad(x, loss(y, targets), rows=rows)
        return (is_adversarial(logits, y, targets) if early_stop else None), grad

    return ascend


def _succeeds(
    model: Classifier,
    objective: Objective | None,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None,
    rows: Tensor,
) -> Tensor:
    """Which rows of ``x`` succeed: adversarial (one forward pass), or by the objective's own
    test where it has one."""
    succeeded = None if objective is None else objective(x, y, targets, rows)[0]
    if succeeded is None:
        return is_adversarial(model.logits(x, rows=rows), y, targets)
    return succeeded


def _take(whole: Tensor, active: Tensor | None) -> Tensor:
    """The rows of ``whole`` at ``active`` (None: ``whole`` itself, no copy)."""
    return whole if active is None else whole[active]


def _put(whole: Tensor, active: Tensor | None, part: Tensor) -> Tensor:
    """``part`` written into ``whole`` at ``active`` (None: ``part`` replaces ``whole``)."""
    if active is None:
        return part
    whole[active] = part
    return whole
