"""The Attack contract and the shared losses.

``attack(model, x, y, threat, *, targets=None, generator=None) -> x_adv``. Passing ``targets``
makes the attack targeted. The base validates the call once, short-cuts ``eps = 0``, and projects
every output through the ThreatModel, so no attack can exceed its budget or leave the box. Success
is never reported by an attack: the engine predicts again on what is returned.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from aegis.errors import CapabilityError, ConfigError, DataError
from aegis.model import Classifier, LossFn
from aegis.threat import ThreatModel


@dataclass(frozen=True)
class Wording:
    """How :func:`check_batch` words its errors, and in which order it checks: an attack
    call's (``ATTACK_WORDING``) or ``engine.evaluate``'s (``EVALUATE_WORDING``). The templates
    are ``str.format`` strings; each uses a subset of the fields :func:`check_batch` passes."""

    dtype: str
    finite: str
    box: str
    label_shape: str
    label_range: str
    labels_first: bool = False  # check the labels before the inputs
    shape_when_empty: bool = True  # check the input shape of an empty batch too


ATTACK_WORDING = Wording(
    dtype="x must be a floating-point tensor, got {dtype}",
    finite="x contains NaN or inf; clean the data before attacking",
    box="x has values in [{lo:.4g}, {hi:.4g}] outside the model's bounds [{blo}, {bhi}]; "
    "rescale the data or declare --bounds",
    label_shape="{name} must have shape ({n},), got {shape}",
    label_range="{name} must lie in [0, {last}], got values in [{low}, {high}]",
)
EVALUATE_WORDING = Wording(
    dtype="inputs must be floating point in the model's bounds, got {dtype}",
    finite="inputs contain NaN or inf; clean the data before attacking",
    box="data values lie in [{lo:.4g}, {hi:.4g}] outside the model's bounds [{blo}, {bhi}]; "
    "use --scale or --bounds",
    label_shape="labels must have one entry per input ({n}), got shape {shape}",
    label_range="labels must lie in [0, {last}] for this {k}-class model, got a label "
    "{label}; check --labels and --num-classes",
    labels_first=True,
    shape_when_empty=False,
)


def check_batch(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None,
    *,
    wording: Wording = ATTACK_WORDING,
) -> None:
    """Validate a batch (the one place inputs are checked, for attacks and ``evaluate``):
    shapes, floating point, finiteness, the box, label and target ranges."""
    if wording.labels_first:
        _check_labels(model, x.shape[0], y, targets, wording)
    if x.shape[0] or wording.shape_when_empty:
        model.check_input(x)
    if not torch.is_floating_point(x):
        raise DataError(wording.dtype.format(dtype=x.dtype))
    if not torch.isfinite(x).all():
        raise DataError(wording.finite)
    lo, hi = model.bounds
    if x.numel() and (x.min() < lo - 1e-6 or x.max() > hi + 1e-6):
        raise DataError(wording.box.format(lo=x.min().item(), hi=x.max().item(), blo=lo, bhi=hi))
    if not wording.labels_first:
        _check_labels(model, x.shape[0], y, targets, wording)


def _check_labels(
    model: Classifier, n: int, y: Tensor, targets: Tensor | None, wording: Wording
) -> None:
    k = model.num_classes
    for name, labels in (("y", y), ("targets", targets)):
        if labels is None:
            continue
        if labels.shape != (n,):
            raise DataError(wording.label_shape.format(name=name, n=n, shape=tuple(labels.shape)))
        if labels.numel() and (labels.min() < 0 or labels.max() >= k):
            low, high = labels.min().item(), labels.max().item()
            raise DataError(
                wording.label_range.format(
                    name=name,
                    k=k,
                    last=k - 1,
                    low=low,
                    high=high,
                    label=int(high) if high >= 0 else int(low),
                )
            )


def ce_loss(y: Tensor, targets: Tensor | None) -> LossFn:
    """Cross-entropy to maximize: away from ``y``, or (targeted) toward ``targets``."""
    if targets is None:
        return lambda logits: F.cross_entropy(logits, y, reduction="none")
    return lambda logits: -F.cross_entropy(logits, targets, reduction="none")


def dlr_loss(y: Tensor, targets: Tensor | None) -> LossFn:
    """Difference of Logits Ratio to maximize (Croce & Hein 2020): invariant to shifting and
    rescaling the logits. Untargeted: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3); targeted:
    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2), with π the logits sorted in decreasing order."""

    def untargeted(z: Tensor) -> Tensor:
        s = z.sort(dim=1, descending=True).values
        zy = z.gather(1, y[:, None]).squeeze(1)
        other = z.scatter(1, y[:, None], float("-inf")).amax(1)
        return -(zy - other) / (s[:, 0] - s[:, 2] + 1e-12)

    def targeted(z: Tensor, t: Tensor) -> Tensor:
        s = z.sort(dim=1, descending=True).values
        zy = z.gather(1, y[:, None]).squeeze(1)
        zt = z.gather(1, t[:, None]).squeeze(1)
        return -(zy - zt) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2 + 1e-12)

    if targets is None:
        return untargeted
    goal = targets
    return lambda z: targeted(z, goal)


def margin(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """The logit margin, negative once the point is adversarial: z_y − max_{j≠y} z_j, or
    (targeted) max_{j≠t} z_j − z_t. C&W, FMN, SPSA and Square all work on it."""
    label = y if targets is None else targets
    own = logits.gather(1, label[:, None]).squeeze(1)
    other = logits.scatter(1, label[:, None], float("-inf")).amax(1)
    return own - other if targets is None else other - own


def runner_up_targets(model: Classifier, x: Tensor, y: Tensor, k: int) -> list[Tensor]:
    """The 2nd … (k+1)-th most likely classes of each clean input, one tensor per rank: the
    targets APGD-T, FAB-T and untargeted JSMA try in turn (AutoAttack's choice). A
    misclassified input's ranking may hold its true class; that rank aims at the top class."""
    order = model.logits(x).argsort(1, descending=True)
    return [
        torch.where(order[:, j] == y, order[:, 0], order[:, j])
        for j in range(1, min(k, model.num_classes - 1) + 1)
    ]


def best_of_restarts(
    restarts: int,
    x: Tensor,
    one_run: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
) -> Tensor:
    """Restarts of a score-based search, each only on the points no earlier run fooled.

    ``one_run(idx)`` attacks the rows ``idx`` and returns (inputs, score, fooled); a point
    keeps its first fooling input, else the input with the highest score over the runs.
    """
    x_out = x.clone()
    best = torch.full((x.shape[0],), float("-inf"), device=x.device)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        idx = (~found).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        adv, score, hit = one_run(idx)
        keep = hit | (score > best[idx])
        x_out[idx[keep]] = adv[keep]
        best[idx[keep]] = score[keep]
        found[idx] = hit
    return x_out


DECISIVE = 1e-5  # margin an iterate must clear, relative to its largest logit (see below)


def is_adversarial(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """Whether each row is adversarial *decisively*: the winning class leads by more than
    ``DECISIVE · (1 + max |z|)``. Minimal-norm attacks stop right at the boundary; a point
    that wins by a rounding error there can lose when the engine predicts it again in another
    batch or memory layout (seen: a near-tie input flipped back by 1e-6 in its logits)."""
    tol = DECISIVE * (1 + logits.detach().abs().amax(1))
    return margin(logits.detach(), y, targets) < -tol


@dataclass(frozen=True, kw_only=True)
class Attack(ABC):
    """Base of every attack: frozen, keyword-only hyper-parameters, no model, no global state."""

    registry_name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")
    needs_gradients: ClassVar[bool] = True
    minimal: ClassVar[bool] = False

    def __call__(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        targets: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if threat.norm not in self.norms:
            raise ConfigError(
                f"{self.registry_name or type(self).__name__} supports norms "
                f"{', '.join(self.norms)}, not {threat.norm!r}"
            )
        if self.needs_gradients and not model.differentiable:
            raise CapabilityError(
                f"{self.registry_name} needs gradients but {model.name} is query-only; "
                "use a black-box attack"
            )
        if threat.targeted and targets is None:
            raise ConfigError("the threat model is targeted but no targets were given")
        check_batch(model, x, y, targets)
        x = x.detach()
        if threat.eps == 0 or x.shape[0] == 0:
            return x.clone()
        x_adv = self.run(
            model,
            x,
            y.to(x.device),
            threat,
            targets=None if targets is None else targets.to(x.device),
            generator=generator,
        )
        x_adv = torch.where(torch.isfinite(x_adv), x_adv, x)
        return threat.project(x_adv.detach(), x, model.bounds)

    @abstractmethod
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
        """The algorithm itself, on a validated batch; the base projects what it returns."""

    def memory_rows(self, num_classes: int, targeted: bool) -> int:
        """Copies of each point the attack sends through the model at once (the batch sizing
        of ``executors.memory`` multiplies a point's memory by it); most send one."""
        return 1

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        out: dict[str, object] = {"name": self.registry_name}
        for k, v in asdict(self).items():
            out[k] = None if isinstance(v, float) and math.isinf(v) else v
        return out
