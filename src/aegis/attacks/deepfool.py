"""DeepFool — Moosavi-Dezfooli, Fawzi & Frossard (2016), https://arxiv.org/abs/1511.04599.

Minimal-norm, untargeted, for ``l2`` and ``linf``. At each step the classifier is linearized
around the current point: for each of the ``candidates`` − 1 most likely classes k ≠ y of the
clean input, f_k = z_k − z_y and w_k = ∇f_k; the closest linearized boundary is
k* = argmin_k |f_k| / ‖w_k‖_q (q the dual norm: 2 for l2, 1 for linf), and the step reaches it:
r = (|f_k*| / ‖w_k*‖_q + 10⁻⁴) · w_k*/‖w_k*‖₂ (l2) or · sign(w_k*) (linf). The steps add up to
r_total and the next point is clip(x + (1 + overshoot) · r_total): the overshoot applies to the
total perturbation, not to each step.

Always relative to the true label y: a point that is already misclassified is returned as it is,
never pushed back to y. A point stops at its first iterate that is misclassified (top logit
strictly above z_y). After ``steps`` steps a point not yet across gets a final check with the
overshoot grown (doubling, four more times). Returns the adversarial iterate, or the original x
for a point never fooled.

Batched: one ``value_and_grad`` call per step for the whole batch, on the rows repeated once per
candidate class (the call count does not grow with the batch, the per-sample count is one per
candidate and step). That call holds ``candidates`` − 1 copies of the batch: size batches for it.

    >>> x_adv = DeepFool(steps=50)(model, x, y, ThreatModel("l2", float("inf")))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack, is_adversarial
from aegis.errors import ConfigError
from aegis.model import Classifier, LossFn
from aegis.registry import register
from aegis.threat import ThreatModel, flat

GROWTHS = 4  # final check: overshoot doubled up to this many times
MIN_GROWTH = 0.01  # the overshoot increment used by the final check when overshoot = 0


def crossed(logits: Tensor, y: Tensor) -> Tensor:
    """Misclassified decisively (a tie, or a lead of a rounding error, is not a success)."""
    return is_adversarial(logits, y, None)


def _difference(cls: Tensor, y: Tensor) -> LossFn:
    """z_k − z_y per row, for the class ``cls`` of each row."""
    return lambda z: z.gather(1, cls[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)


@register(
    "deepfool",
    norms=("l2", "linf"),
    paper="https://arxiv.org/abs/1511.04599",
    targeted=False,
    needs_gradients=True,
    minimal=True,
)
@dataclass(frozen=True, kw_only=True)
class DeepFool(Attack):
    """DeepFool: steps to the closest linearized boundary, batched (Moosavi-Dezfooli et al.)."""

    steps: int = 50  # reference code
    candidates: int = 10  # classes considered, the true one included (reference code)
    overshoot: float = 0.02  # reference code

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.candidates < 2:
            raise ConfigError(f"candidates must be >= 2, got {self.candidates}")
        if not self.overshoot >= 0:
            raise ConfigError(f"overshoot must be >= 0, got {self.overshoot}")

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
        if targets is not None:
            raise ConfigError("deepfool is untargeted; it cannot take targets")
        lo, hi = model.bounds
        n = x.shape[0]
        all_rows = torch.arange(n, device=x.device)
        logits = model.logits(x, rows=all_rows)
        k = min(self.candidates, model.num_classes) - 1
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
        x_out = x.clone()  # a misclassified point stays as it is
        idx = all_rows[~crossed(logits, y)]
        r_total = torch.zeros_like(x)
        x_cur = x.clone()
        for _ in range(self.steps):
            if idx.numel() == 0:
                break
            xa, ya, na = x_cur[idx], y[idx], idx.numel()
            # Rows repeated once per candidate: block j asks for the gradient of z_{k_j} − z_y.
            cls = others[idx].T.reshape(-1)
            reps = xa.repeat(k, *([1] * (x.ndim - 1)))
            logits, f, grad = model.value_and_grad(
                reps, _difference(cls, ya.repeat(k)), rows=idx.repeat(k)
            )
            hit = crossed(logits[:na], ya)
            x_out[idx[hit]] = xa[hit]
            going = ~hit
            idx = idx[going]
            f = f.view(k, na).T[going]  # (points, candidates)
            w = flat(grad).view(k, na, -1).transpose(0, 1)[going]  # (points, candidates, D)
            dual = w.norm(dim=2) if threat.norm == "l2" else w.abs().sum(2)
            dist = f.abs() / dual.clamp_min(1e-12)
            j = dist.argmin(1)
            pick = torch.arange(idx.numel(), device=x.device)
            w_j, d_j = w[pick, j], dist[pick, j] + 1e-4
            if threat.norm == "l2":
                r = w_j * (d_j / w_j.norm(dim=1).clamp_min(1e-12))[:, None]
            else:
                r = w_j.sign() * d_j[:, None]
            r_total[idx] += torch.nan_to_num(r).view_as(x_cur[idx])
            x_cur[idx] = (x[idx] + (1 + self.overshoot) * r_total[idx]).clamp(lo, hi)
        # Final check of the last step (not evaluated yet), then with a growing overshoot.
        growth = max(self.overshoot, MIN_GROWTH)
        for g in range(GROWTHS + 1):
            if idx.numel() == 0:
                break
            factor = 1 + self.overshoot + growth * (2**g - 1)
            xa = (x[idx] + factor * r_total[idx]).clamp(lo, hi)
            hit = crossed(model.logits(xa, rows=idx), y[idx])
            x_out[idx[hit]] = xa[hit]
            idx = idx[~hit]
        return x_out
