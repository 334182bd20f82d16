"""The one gradient-ascent loop behind FGSM, BIM, PGD and MI-FGSM.

x_{t+1} = Π_{B(x, ε) ∩ box}( x_t + η · d(g_t) ), with d the steepest-ascent direction of the
threat's norm (sign for L∞, normalized for L2, top-k sparse for L1) and g_t the gradient of the
loss — or its momentum accumulation for MI-FGSM. Δx = −η·∇ₓJ for a targeted loss J, +η·∇ₓJ
for the untargeted one; both are "ascend the loss returned by ``ce_loss``".

Soundness: a point that is adversarial at some iterate is frozen there (its logits were computed
on that very iterate, so the engine's re-prediction agrees); it leaves the active set, which only
saves work. Restarts run only on points not yet fooled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aegis.attacks.base import ce_loss, is_adversarial
from aegis.model import Classifier
from aegis.threat import ThreatModel, flat


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
    x_out = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for restart in range(restarts):
        idx = (~found).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        x0, y0 = x[idx], y[idx]
        t0 = None if targets is None else targets[idx]
        x_cur = threat.random_start(x0, bounds, generator) if random_start else x0.clone()
        momentum = torch.zeros_like(x0)
        active = torch.arange(idx.numel(), device=x.device)  # positions within idx
        everyone = idx.numel() == n  # rows of the call are rows of x: count without ids
        full = True  # every point of this restart is still active: no gather / scatter
        for _ in range(steps):
            if full:
                xa, ya, ta = x_cur, y0, t0
            else:
                xa, ya = x_cur[active], y0[active]
                ta = None if t0 is None else t0[active]
            rows = None if full and everyone else idx[active]
            logits, _, grad = model.value_and_grad(xa, ce_loss(ya, ta), rows=rows)
            if early_stop:
                hit = is_adversarial(logits, ya, ta)
                if hit.any():
                    done = active[hit]
                    x_out[idx[done]] = x_cur[done]
                    found[idx[done]] = True
                    keep = ~hit
                    active, xa, grad = active[keep], xa[keep], grad[keep]
                    full = False
                    if active.numel() == 0:
                        break
            if decay > 0:
                g = grad / flat(grad).abs().mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                if full:
                    momentum = decay * momentum + g
                    grad = momentum
                else:
                    momentum[active] = decay * momentum[active] + g
                    grad = momentum[active]
            direction = threat.ascent_direction(grad, sparsity=sparsity, x=xa, bounds=bounds)
            x0a = x0 if full else x0[active]
            stepped = threat.project(xa + step_size * direction, x0a, bounds)
            if full:
                x_cur = stepped
            else:
                x_cur[active] = stepped
        remaining = idx[~found[idx]]
        if remaining.numel() == 0:
            break
        pos = (~found[idx]).nonzero().squeeze(1)
        x_out[remaining] = x_cur[pos]
        if restart < restarts - 1:
            # Decide which points the next restart must work on (one forward pass).
            ta = None if t0 is None else t0[pos]
            hit = is_adversarial(model.logits(x_cur[pos], rows=remaining), y0[pos], ta)
            found[remaining[hit]] = True
    return x_out
