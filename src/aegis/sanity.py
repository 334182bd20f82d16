"""Sanity checks run after every evaluation: the warning signs of gradient masking.

Athalye, Carlini & Wagner 2018 (https://arxiv.org/abs/1802.00420) and Carlini et al. 2019,
"On Evaluating Adversarial Robustness" (https://arxiv.org/abs/1902.06705), list the signs
that an evaluation is broken rather than the model robust; AutoAttack checks some of them.
Each check returns a ``Flag`` with the evidence it measured, stored in ``results.json``. A run
with any flag raised is reported as SUSPICIOUS, never as robust.

- ``probabilities``: the outputs are probabilities (softmax inside the model), which flattens
  the cross-entropy gradient;
- ``randomized``: the same input gives different outputs (a randomized defense needs EOT);
- ``zero-gradients``: the margin's gradient is zero or NaN at clean points (shattered
  gradients: quantization, non-differentiable preprocessing);
- ``weak-attack-wins``: a black-box or single-step attack fools points the white-box
  iterative ones could not;
- ``eps-not-monotonic``: accuracy does not fall as ε grows;
- ``unbounded-not-total``: a budget that reaches every input in the box leaves points
  correctly classified.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from aegis.attacks.base import Attack
from aegis.model import Classifier
from aegis.records import Records
from aegis.threat import ThreatModel, flat

SINGLE_STEP = ("fgsm",)
"""Attacks that take one gradient step: a sound model cannot lose more to them than to PGD."""

SHARE = 0.002
"""The share of points a weak attack may add before it is a warning sign (AutoAttack's); a
single point is never enough (on small sets one unconverged point is noise, not masking)."""


@dataclass(frozen=True)
class Flag:
    name: str
    flagged: bool
    evidence: str
    advice: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def probe_model(model: Classifier, x: Tensor, y: Tensor) -> list[Flag]:
    """Checks that query the model on a few clean inputs (``x`` NCHW in the model's box)."""
    x = x.to(model.device, torch.float32)
    y = y.to(model.device)
    first = model.logits(x)
    second = model.logits(x)
    return [
        _probabilities(first),
        _randomized(first, second, model.eot_samples),
        _zero_gradients(model, x, y),
    ]


def _probabilities(z: Tensor) -> Flag:
    sums = z.sum(1)
    looks = bool(
        z.numel() and z.min() >= -1e-5 and z.max() <= 1 + 1e-5 and (sums - 1).abs().max() < 1e-4
    )
    lo, hi = (z.min().item(), z.max().item()) if z.numel() else (0.0, 0.0)
    return Flag(
        "probabilities",
        looks,
        f"outputs in [{lo:.3g}, {hi:.3g}], row sums in "
        f"[{sums.min().item() if z.numel() else 0:.4g}, "
        f"{sums.max().item() if z.numel() else 0:.4g}]",
        "the model seems to end in a softmax: cross-entropy gradients vanish on confident "
        "points; pass the logits (drop the softmax) or rely on DLR/margin attacks",
    )


def varies(model: Classifier, x: Tensor) -> bool:
    """Whether two passes over the same inputs differ: the ``randomized`` check's test."""
    x = x.to(model.device, torch.float32)
    return _randomized(model.logits(x), model.logits(x)).flagged


def _randomized(a: Tensor, b: Tensor, eot_samples: int = 1) -> Flag:
    scale = a.norm(dim=1, keepdim=True).clamp_min(1e-10)
    diff = ((a - b) / scale).norm(dim=1).max().item() if a.numel() else 0.0
    changed = int((a.argmax(1) != b.argmax(1)).sum()) if a.numel() else 0
    flagged = diff > 1e-4 or changed > 0
    evidence = (
        f"two passes over the same {a.shape[0]} inputs differ by up to {diff:.2e} "
        f"(relative L2 of the outputs); {changed} predictions changed"
    )
    if flagged:
        evidence += (
            f"; EOT in use: each gradient averages {eot_samples} random draws, and accuracy "
            "is one draw per input (as deployed)"
            if eot_samples > 1
            else "; EOT is not in use: each gradient sees a single random draw"
        )
    return Flag(
        "randomized",
        flagged,
        evidence,
        "the model is randomized: attack the expectation (EOT; raise --eot-samples if the "
        "attack looks unconverged) and report accuracy over several passes",
    )


def _zero_gradients(model: Classifier, x: Tensor, y: Tensor) -> Flag:
    if not model.differentiable:
        return Flag("zero-gradients", False, "not checked: the model is query-only")

    def margin(z: Tensor) -> Tensor:
        other = z.scatter(1, y[:, None], float("-inf")).amax(1)
        return other - z.gather(1, y[:, None]).squeeze(1)

    _, _, grad = model.value_and_grad(x, margin)
    g = flat(grad)
    nan = int((~torch.isfinite(g)).any(1).sum())
    zero = int((g.abs().sum(1) == 0).sum())
    return Flag(
        "zero-gradients",
        nan + zero > 0,
        f"of {x.shape[0]} clean inputs, {zero} have an all-zero and {nan} a NaN/inf gradient "
        "of the logit margin",
        "gradients are masked (quantization, rounding or a non-differentiable step in the "
        "model): use BPDA for that step, or black-box attacks",
    )


def check_ensemble(rec: Records, attacks: Sequence[Attack]) -> Flag:
    """A black-box or single-step member gaining points after the white-box iterative ones."""
    strong_seen: list[str] = []
    gains: list[str] = []
    n = max(len(rec), 1)
    for i, a in enumerate(attacks):
        weak = not a.needs_gradients or a.registry_name in SINGLE_STEP
        if not weak:
            strong_seen.append(a.registry_name)
            continue
        won = int((rec.attack_index == i).sum())
        if strong_seen and won > max(SHARE * n, 1):
            gains.append(f"{a.registry_name} fooled {won} of {len(rec)} inputs")
    if not strong_seen or len(attacks) < 2:
        evidence = "not applicable: no white-box iterative attack ran before a weaker one"
    elif gains:
        evidence = "; ".join(gains) + f" that {', '.join(strong_seen)} could not"
    else:
        evidence = "black-box and single-step members added at most 0.2% of the inputs (or one)"
    return Flag(
        "weak-attack-wins",
        bool(gains),
        evidence,
        "a weaker attack succeeding where gradient attacks fail is the mark of masked "
        "gradients: the gradient attacks' numbers are not to be trusted",
    )


def diameter(threat: ThreatModel, shape: Sequence[int], bounds: tuple[float, float]) -> float:
    """The smallest budget that reaches every input of the box from any other."""
    width = bounds[1] - bounds[0]
    d = math.prod(shape)
    return {
        "linf": width,
        "l2": width * math.sqrt(d),
        "l1": width * d,
        "l0": float(math.prod(shape[1:]) if len(shape) == 3 else d),
    }[threat.norm]


def check_unbounded(rec: Records, threat: ThreatModel, model: Classifier) -> Flag:
    """With a budget that covers the whole box, an attack should fool (nearly) every point."""
    unbounded = threat.eps >= diameter(threat, model.input_shape, model.bounds)
    attacked = int(rec.attacked.sum())
    rate = rec.success.sum() / attacked if attacked else 1.0
    flagged = bool(unbounded and attacked and rate < 0.99)
    evidence = (
        f"eps {threat.eps} covers the box: {rate:.1%} of {attacked} attacked inputs fooled"
        if unbounded
        else "not applicable: the budget is bounded"
    )
    return Flag(
        "unbounded-not-total",
        flagged,
        evidence,
        "an unbounded attack that does not reach ~100% is failing, not meeting a robust "
        "model: look for masked gradients or too few steps/queries",
    )


def check_sweep(eps: Sequence[float], accuracy: Sequence[float | None], n: int) -> Flag:
    """Accuracy under attack must fall (weakly) as ε grows, and not stay put from the
    smallest to the largest budget while points remain."""
    pairs = [(e, a) for e, a in zip(eps, accuracy, strict=True) if a is not None]
    if len(pairs) < 2:
        return Flag("eps-not-monotonic", False, "not applicable: fewer than two budgets")
    tol = max(SHARE, 1.0 / max(n, 1))
    rises = [
        f"{a0:.1%} at ε={e0:g} → {a1:.1%} at ε={e1:g}"
        for (e0, a0), (e1, a1) in itertools.pairwise(pairs)
        if a1 > a0 + tol
    ]
    flat_curve = pairs[-1][1] >= pairs[0][1] and pairs[0][1] > 0
    evidence = "; ".join(rises) if rises else ""
    if flat_curve and not rises:
        evidence = f"accuracy {pairs[0][1]:.1%} at ε={pairs[0][0]:g} and {pairs[-1][1]:.1%} at "
        evidence += f"ε={pairs[-1][0]:g}: larger budgets break nothing more"
    return Flag(
        "eps-not-monotonic",
        bool(rises) or flat_curve,
        evidence or "accuracy falls as ε grows",
        "a larger budget can only help the attacker: the attack is not converging "
        "(masked gradients, or too few steps)",
    )


def raised(flags: Sequence[Flag]) -> list[str]:
    return [f.name for f in flags if f.flagged]


def summary_line(flags: Sequence[Flag]) -> str:
    up = [f for f in flags if f.flagged]
    if not up:
        return "sanity checks: none of the warning signs of gradient masking"
    return "SUSPICIOUS: " + "; ".join(f"{f.name}: {f.evidence}" for f in up)


__all__ = [
    "Flag",
    "check_ensemble",
    "check_sweep",
    "check_unbounded",
    "diameter",
    "probe_model",
    "raised",
    "summary_line",
    "varies",
]
