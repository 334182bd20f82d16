"""Membership inference: was this example in the model's training set?

Two attacks, both scoring each candidate example (higher = "member"):

- **threshold** (Yeom et al. 2018, https://arxiv.org/abs/1709.01604): the model's confidence in
  the true label, log p_y (minus the cross-entropy loss); training examples have lower loss.
- **LiRA** (Carlini et al. 2022, https://arxiv.org/abs/2112.03570): the attacker trains
  ``shadows`` models with the target's recipe, each on a random half of a pool it holds (here
  the candidate set itself, as in the paper), and fits per example the logit-scaled
  confidence φ = log(p_y / (1 − p_y)) of the shadow models that trained on it ("in") and of
  those that did not ("out"), as Gaussians. *Online* LiRA scores the likelihood ratio
  log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out) of the target's φ; *offline* LiRA uses the out
  models only, (φ − μ_out) / σ_out (one-sided). With few shadow models the variances are
  global (pooled over examples, the paper's "fixed variance" for small shadow counts); an
  example no shadow model trained on (or every one did) takes the global mean for the missing
  side. No test-time augmentation.

Scores are reported as ROC-AUC and TPR at low FPR (1% and 0.1%: the regime that matters,
Carlini et al. 2022), computed by :mod:`aegis.metrics` with members as positives.

:func:`aegis.workflows.membership.run_membership` trains the target itself on a random
``member_fraction`` of the data (the rest are the non-members), once per training recipe
("variant"), to show how regularization changes the leakage: weight decay, fewer epochs,
augmentation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aegis.errors import ConfigError, DataError
from aegis.model import Classifier

log = logging.getLogger(__name__)

FPRS = (0.01, 0.001)
ATTACKS = ("threshold", "lira-online", "lira-offline")
_KEYS = {"epochs": "epochs", "lr": "lr", "wd": "weight_decay", "shift": "augment_shift"}


@dataclass(frozen=True, kw_only=True)
class TargetRecipe:
    """How the target (and, with the same recipe, every shadow model) is trained.

    Args:
        name: shown in the table (``base``, or the variant text that made it).
        arch: ``mnist_cnn``, ``digits_cnn`` or ``tiny_mlp``; ``None`` picks by input shape.
        epochs, lr, batch_size, weight_decay, augment_shift: as in ``train_classifier``.
    """

    name: str = "base"
    arch: str | None = None
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    augment_shift: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.augment_shift < 0:
            raise ConfigError(f"shift must be >= 0, got {self.augment_shift}")

    def variant(self, text: str) -> TargetRecipe:
        """This recipe changed by ``base`` or ``KEY=VALUE[+KEY=VALUE...]`` with keys
        ``epochs``, ``lr``, ``wd`` (weight decay) and ``shift`` (augmentation, pixels)."""
        t = text.strip()
        if t in ("", "base"):
            return replace(self, name="base")
        changes: dict[str, Any] = {}
        for part in t.split("+"):
            key, sep, value = part.partition("=")
            field = _KEYS.get(key.strip())
            if not sep or field is None:
                raise ConfigError(
                    f"variant {text!r}: use base or KEY=VALUE joined by +, keys "
                    f"{', '.join(_KEYS)} (e.g. wd=5e-4+shift=1)"
                )
            try:
                changes[field] = (
                    float(value) if field in ("lr", "weight_decay") else int(value.strip())
                )
            except ValueError as exc:
                raise ConfigError(f"variant {text!r}: {key}= needs a number") from exc
        return replace(self, name=t, **changes)

    def arch_for(self, shape: tuple[int, int, int]) -> str:
        if self.arch is not None:
            return self.arch
        return {(1, 28, 28): "mnist_cnn", (1, 8, 8): "digits_cnn"}.get(shape, "tiny_mlp")

    def train(self, x: Tensor, y: Tensor, *, num_classes: int, seed: int) -> Classifier:
        from aegis.training import train_classifier

        return train_classifier(
            x,
            y,
            arch=self.arch_for((int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))),
            num_classes=num_classes,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
            augment_shift=self.augment_shift,
            weight_decay=self.weight_decay,
        )


def logit_confidence(logits: Tensor, y: Tensor) -> np.ndarray:
    """φ = log(p_y / (1 − p_y)), computed stably as z_y − logsumexp_{j≠y} z_j."""
    z = logits.double()
    zy = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), float("-inf"))
    return (zy - torch.logsumexp(others, 1)).numpy()


def _logits(model: Classifier, x: Tensor) -> Tensor:
    bs = model.batch_size
    return torch.cat([model.logits(x[i : i + bs]) for i in range(0, x.shape[0], bs)])


def threshold_scores(model: Classifier, x: Tensor, y: Tensor) -> np.ndarray:
    """Yeom et al.'s score: log p_y = −cross-entropy (higher = more likely a member)."""
    return (-F.cross_entropy(_logits(model, x).double(), y, reduction="none")).numpy()


def lira_scores(
    target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray
) -> dict[str, np.ndarray]:
    """Online and offline LiRA scores from the target's φ (n,) and the shadow models' φ (S, n)
    with their membership mask (S, n); fixed (global) variances, see the module docstring."""
    t = np.asarray(target_phi, np.float64)
    phi = np.asarray(shadow_phi, np.float64)
    inn = np.asarray(shadow_in, bool)
    if phi.ndim != 2 or phi.shape != inn.shape or phi.shape[1] != t.shape[0]:
        raise DataError(
            f"shadow confidences {phi.shape} and mask {inn.shape} must be (shadows, {t.shape[0]})"
        )
    out = ~inn

    def side(mask: np.ndarray) -> tuple[np.ndarray, float]:
        count = mask.sum(0)
        glob = float(phi[mask].mean()) if mask.any() else float(phi.mean())
        total = np.where(mask, phi, 0.0).sum(0)
        mu = np.where(count > 0, total / np.maximum(count, 1), glob)
        resid = (phi - mu[None, :])[mask]
        sd = float(np.sqrt(np.mean(resid**2))) if resid.size > 1 else float(phi.std())
        return mu, max(sd, 1e-6)

    mu_in, sd_in = side(inn)
    mu_out, sd_out = side(out)

    def logpdf(v: np.ndarray, mu: np.ndarray, sd: float) -> np.ndarray:
        return np.asarray(-0.5 * ((v - mu) / sd) ** 2 - math.log(sd))

    return {
        "lira-online": logpdf(t, mu_in, sd_in) - logpdf(t, mu_out, sd_out),
        "lira-offline": (t - mu_out) / sd_out,
    }


def membership_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, Any]:
    """ROC-AUC (members positive) and TPR at 1% and 0.1% FPR (thresholds on non-members)."""
    from aegis.metrics import roc_auc, tpr_at_fpr

    m = np.asarray(member_scores, np.float64)
    nm = np.asarray(nonmember_scores, np.float64)
    if not m.size or not nm.size:
        raise DataError("membership metrics need at least one member and one non-member score")
    out: dict[str, Any] = {"roc_auc": roc_auc(nm, m), "members": m.size, "non_members": nm.size}
    for fpr in FPRS:
        point = tpr_at_fpr(nm, m, fpr)
        out[f"tpr_at_{fpr:g}_fpr"] = point["tpr"]
        out[f"fpr_at_{fpr:g}_fpr"] = point["fpr"]  # the FPR really reached (n is finite)
    return out


def split_members(n: int, member_fraction: float, seed: int) -> np.ndarray:
    """A seeded boolean mask of ``round(member_fraction · n)`` members among ``n`` examples."""
    if not 0 < member_fraction < 1:
        raise ConfigError(f"member_fraction must be in (0, 1), got {member_fraction}")
    k = round(member_fraction * n)
    if k < 1 or k > n - 1:
        raise ConfigError(
            f"member_fraction {member_fraction} of {n} examples leaves no members or no "
            "non-members; use more data or a fraction nearer 0.5"
        )
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:k]] = True
    return mask


def attack_target(
    target: Classifier,
    x: Tensor,
    y: Tensor,
    recipe: TargetRecipe,
    *,
    shadows: int = 4,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, np.ndarray]:
    """Every attack's per-example scores for candidates ``(x, y)`` against ``target``; the
    shadow models are trained with ``recipe`` on random halves of the candidates (0: LiRA is
    skipped)."""
    if shadows < 0:
        raise ConfigError(f"shadows must be >= 0, got {shadows}")
    k = num_classes if num_classes is not None else target.num_classes
    scores = {"threshold": threshold_scores(target, x, y)}
    if shadows == 0:
        return scores
    n = int(x.shape[0])
    rng = np.random.default_rng(seed + 7919)
    shadow_in = np.zeros((shadows, n), bool)
    shadow_phi = np.zeros((shadows, n))
    for s in range(shadows):
        shadow_in[s, rng.permutation(n)[: n // 2]] = True
        idx = torch.from_numpy(np.flatnonzero(shadow_in[s]))
        model = recipe.train(x[idx], y[idx], num_classes=k, seed=seed + 1 + s)
        shadow_phi[s] = logit_confidence(_logits(model, x), y)
    scores.update(lira_scores(logit_confidence(_logits(target, x), y), shadow_phi, shadow_in))
    return scores
