"""The one gradient-ascent loop behind FGSM, BIM, PGD and MI-FGSM.

x_{t+1} = Π_{B(x, ε) ∩ box}( x_t + η · d(g_t) ), with d the steepest-ascent direction of the
threat's norm (sign for L∞, normalized for L2, top-k sparse for L1) and g_t the gradient of the
loss — or its momentum accumulation for MI-FGSM. Δx = −η·∇ₓJ for a targeted loss J, +η·∇ₓJ
for the untargeted one; both are "ascend the loss returned by ``ce_loss``".

Soundness: a point that is adversarial at some iterate is frozen there (its logits were computed
on that very iterate, so the engine's re-prediction agrees; not on a randomized model, where
no point is frozen). Freezing is a mask, so it costs no
device-to-host synchronization; every ``COMPACT_EVERY`` steps the loop checks how many points are
still active and drops the frozen ones from the batch when that saves enough work. Restarts run
only on points not yet fooled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aegis.attacks.base import ce_loss, is_adversarial
from aegis.model import Classifier
from aegis.threat import ThreatModel, flat

COMPACT_EVERY = 4  # steps between checks of the active set (each check is one host sync)
COMPACT_BELOW = {"cpu": 0.75}  # shrink the batch when at most this share is still active
COMPACT_BELOW_ACCELERATOR = 0.5  # GPUs are often launch-bound on small batches: shrink later


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
) -> Tensor:
    bounds = model.bounds
    n = x.shape[0]
    # On a randomized model an iterate that fooled one draw may not fool the engine's: keep
    # ascending the (EOT) loss on every point instead of freezing borderline ones.
    early_stop = early_stop and not model.randomized
    compact_below = COMPACT_BELOW.get(x.device.type, COMPACT_BELOW_ACCELERATOR)
    x_out = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for restart in range(restarts):
        idx = (~found).nonzero().squeeze(1) if restart else torch.arange(n, device=x.device)
        if idx.numel() == 0:
            break
        x0, y0 = x[idx], y[idx]
        t0 = None if targets is None else targets[idx]
        x_cur = threat.random_start(x0, bounds, generator) if random_start else x0.clone()
        done = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        momentum = torch.zeros_like(x0)
        active: Tensor | None = None  # positions within idx still computed; None: all of them
        for step in range(steps):
            xa, x0a, ya = (
                (x_cur, x0, y0) if active is None else (x_cur[active], x0[active], y0[active])
            )
            ta = t0 if t0 is None or active is None else t0[active]
            rows = (None if restart == 0 else idx) if active is None else idx[active]
            logits, _, grad = model.value_and_grad(xa, ce_loss(ya, ta), rows=rows)
            if decay > 0:
                g = grad / flat(grad).abs().mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                mom = decay * (momentum if active is None else momentum[active]) + g
                grad = mom
            direction = threat.ascent_direction(grad, sparsity=sparsity, x=xa, bounds=bounds)
            stepped = threat.project(xa + step_size * direction, x0a, bounds)
            if early_stop:
                frozen = (done if active is None else done[active]) | is_adversarial(logits, ya, ta)
                stepped = torch.where(frozen.view(-1, 1, 1, 1), xa, stepped)
            if active is None:
                x_cur = stepped
                if decay > 0:
                    momentum = mom
                if early_stop:
                    done = frozen
            else:
                x_cur[active] = stepped
                if decay > 0:
                    momentum[active] = mom
                if early_stop:
                    done[active] = frozen
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
            hit = is_adversarial(model.logits(x_cur[pos], rows=idx[pos]), y0[pos], ta)
            found[idx[pos[hit]]] = True
    return x_out
