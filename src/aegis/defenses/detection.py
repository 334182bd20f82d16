"""Detection of adversarial inputs: a detector scores inputs, higher = more adversarial.

A detector's hyper-parameters are a frozen dataclass; ``fit(model, x_clean)`` returns a
``FittedDetector`` bound to that model, whose ``score(x)`` is a tensor of shape (n,). Inputs
scoring above ``threshold_at_fpr(clean_scores, fpr)`` are flagged.

- ``Mahalanobis`` (Lee et al. 2018, https://arxiv.org/abs/1807.03888): class-conditional
  Gaussians with one tied covariance on intermediate features fitted on clean data; the score
  is the smallest squared Mahalanobis distance to a class mean, standardized by its mean and
  standard deviation on the fit data and summed over layers (by default only the penultimate
  layer: the input of the last ``nn.Linear``). The paper's input preprocessing (a step of size
  ``noise`` that lowers the distance before scoring) is off by default (``noise = 0``).
- ``FeatureSqueezing`` (Xu et al. 2018, https://arxiv.org/abs/1704.01155): the largest L1
  distance between the softmax on x and on each squeezed x (default: 1-bit depth and a 2×2
  median filter, the paper's MNIST squeezers).

Both scores are differentiable (bit-depth reduction with a straight-through gradient, BPDA), so
``DetectorAwarePGD`` attacks the classifier and the detector together: it pushes
misclassification while keeping the score below the threshold. ``evaluate_detector`` reports
ROC-AUC, TPR at a fixed FPR and the combined system's robust accuracy under a non-adaptive
attack (crafted with ``engine.evaluate``) and under the adaptive one.

    >>> fitted = Mahalanobis().fit(model, x_fit)
    >>> result = evaluate_detector(model, fitted, x, y, "pgd", ThreatModel("linf", 0.3))
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aegis.attacks._params import resolve_step
from aegis.attacks.base import Attack, margin
from aegis.attacks.iterative import gradient_ascent
from aegis.defenses.preprocessing import BitDepth, Median, Preprocessor, bpda
from aegis.engine import evaluate
from aegis.errors import CapabilityError, ConfigError, DataError
from aegis.metrics import (
    combined_accuracy,
    detection_rate,
    handled,
    roc_auc,
    threshold_at_fpr,
    worst_case_accuracy,
)
from aegis.model import Classifier
from aegis.registry import Registry
from aegis.threat import ThreatModel

log = logging.getLogger(__name__)

Squeezer = Callable[[Tensor], Tensor]

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorAwarePGD",
    "FeatureSqueezing",
    "FittedDetector",
    "Mahalanobis",
    "evaluate_detector",
    "threshold_at_fpr",
]


class FittedDetector(ABC):
    """A detector fitted for one model: ``score(x)`` (higher = more adversarial)."""

    name: ClassVar[str] = ""

    def __init__(self, model: Classifier) -> None:
        self.model = model

    @abstractmethod
    def logits_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The model's logits and the score of ``x``, both differentiable with respect to
        ``x`` (one shared forward where the detector allows it)."""

    def score(self, x: Tensor | np.ndarray) -> Tensor:
        """Scores of a batch, in chunks of the model's batch size, without a graph."""
        xt = torch.as_tensor(x).float()
        self.model.check_input(xt)
        parts = []
        for i in range(0, xt.shape[0], self.model.batch_size):
            xb = xt[i : i + self.model.batch_size].to(self.model.device)
            with torch.no_grad():  # a detector that needs gradients enables them itself
                parts.append(self.logits_and_score(xb)[1].detach())
        return torch.cat(parts).cpu() if parts else torch.empty(0)


class Detector(ABC):
    """Hyper-parameters of a detector; ``fit`` returns the fitted detector."""

    @abstractmethod
    def fit(
        self, model: Classifier, x_clean: Tensor | np.ndarray, y_clean: Tensor | None = None
    ) -> FittedDetector:
        """Fit on clean inputs (labels default to the model's predictions)."""


def require_module(model: Classifier) -> nn.Module:
    if not isinstance(model.module, nn.Module):
        raise CapabilityError(
            f"{model.name} is not a torch module: the detector needs its features or gradients"
        )
    return model.module


def _as_input(model: Classifier, x: Tensor | np.ndarray, what: str) -> Tensor:
    xt = torch.as_tensor(x).float()
    model.check_input(xt)
    if xt.shape[0] < 2:
        raise DataError(f"{what} needs at least 2 clean inputs, got {xt.shape[0]}")
    if not torch.isfinite(xt).all():
        raise DataError(f"{what}: inputs contain NaN or inf")
    return xt


# -- Mahalanobis ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Mahalanobis(Detector):
    """Mahalanobis-distance detector (Lee et al. 2018) on the model's features.

    Args:
        layers: names of modules of the torch model (``dict(module.named_modules())``) whose
            outputs are features (4-D outputs are averaged over space, as in the paper); empty:
            the penultimate layer (the input of the last ``nn.Linear``).
        noise: size of the paper's input preprocessing step x − noise·sign(∇ distance), in the
            model's input units (0: off).
        ridge: added to the covariance's diagonal before inverting it.
    """

    layers: tuple[str, ...] = ()
    noise: float = 0.0
    ridge: float = 1e-6

    def __post_init__(self) -> None:
        if not self.noise >= 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")
        if not self.ridge >= 0:
            raise ConfigError(f"ridge must be >= 0, got {self.ridge}")

    def fit(
        self, model: Classifier, x_clean: Tensor | np.ndarray, y_clean: Tensor | None = None
    ) -> FittedMahalanobis:
        module = require_module(model)
        xt = _as_input(model, x_clean, "Mahalanobis.fit")
        named = dict(module.named_modules())
        if self.layers:
            missing = [n for n in self.layers if n not in named or not n]
            if missing:
                raise ConfigError(
                    f"no module named {missing[0]!r} in {model.name}; its modules are "
                    f"{', '.join(n for n in named if n)}"
                )
            taps = [(named[n], False) for n in self.layers]
        else:
            linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
            if not linear:
                raise CapabilityError(
                    f"{model.name} has no nn.Linear layer; name the feature layers explicitly"
                )
            taps = [(linear[-1], True)]
        labels = model.predict(xt) if y_clean is None else torch.as_tensor(y_clean).long()
        if labels.shape != (xt.shape[0],):
            raise DataError(f"y_clean must have shape ({xt.shape[0]},), got {labels.shape}")
        feats: list[list[Tensor]] = [[] for _ in taps]
        for i in range(0, xt.shape[0], model.batch_size):
            xb = xt[i : i + model.batch_size].to(model.device)
            with torch.no_grad():
                for store, f in zip(feats, features(model, taps, xb)[1], strict=True):
                    store.append(f.double().cpu())
        means, precisions = [], []
        labels = labels.cpu()
        classes = torch.unique(labels)
        for store in feats:
            f = torch.cat(store)
            mu = torch.stack([f[labels == c].mean(0) for c in classes])
            centred = f - mu[torch.searchsorted(classes, labels)]
            cov = centred.T @ centred / f.shape[0]
            cov = cov + self.ridge * torch.eye(cov.shape[0], dtype=cov.dtype)
            means.append(mu)
            precisions.append(torch.linalg.pinv(cov, hermitian=True))
        fitted = FittedMahalanobis(model, self, taps, means, precisions, classes)
        with torch.no_grad():
            raw = torch.cat(
                [
                    fitted._raw(xt[i : i + model.batch_size].to(model.device))
                    for i in range(0, xt.shape[0], model.batch_size)
                ]
            ).cpu()
        fitted.centre = raw.mean(0)
        fitted.scale = raw.std(0).clamp_min(1e-12)
        return fitted


def features(
    model: Classifier, taps: list[tuple[nn.Module, bool]], x: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Logits and the features at ``taps`` (module, take its input) for ``x``, keeping the
    graph when gradients are enabled."""
    captured: list[Tensor | None] = [None] * len(taps)
    handles = []
    model.choose_layout()  # its probe batches run before the hooks, not through them

    def keep(i: int, value: Tensor) -> None:
        v = value.mean((2, 3)) if value.ndim == 4 else value.flatten(1)
        captured[i] = v

    try:
        for i, (m, take_input) in enumerate(taps):
            if take_input:
                handles.append(
                    m.register_forward_pre_hook(lambda _m, args, i=i: keep(i, args[0]))  # type: ignore[misc]
                )
            else:
                handles.append(
                    m.register_forward_hook(lambda _m, _a, out, i=i: keep(i, out))  # type: ignore[misc]
                )
    except RuntimeError as exc:  # TorchScript modules take no hooks
        for h in handles:
            h.remove()
        raise CapabilityError(
            f"cannot read the features of {model.name} ({exc}); load it as a state dict with "
            "--factory, or use the squeeze detector"
        ) from exc
    try:
        logits = (
            model.logits_graph(x)
            if torch.is_grad_enabled()
            else model.logits(x, through_module=True)
        )
    finally:
        for h in handles:
            h.remove()
    out = [c for c in captured if c is not None]
    if len(out) != len(taps):
        raise CapabilityError("a feature layer was not used in the forward pass")
    return logits, out


class FittedMahalanobis(FittedDetector):
    name = "mahalanobis"

    def __init__(
        self,
        model: Classifier,
        config: Mahalanobis,
        taps: list[tuple[nn.Module, bool]],
        means: list[Tensor],
        precisions: list[Tensor],
        classes: Tensor,
    ) -> None:
        super().__init__(model)
        self.config = config
        self.taps = taps
        dev = model.device
        self.means = [m.float().to(dev) for m in means]
        self.precisions = [p.float().to(dev) for p in precisions]
        self.classes = classes
        self.centre = torch.zeros(len(taps))
        self.scale = torch.ones(len(taps))

    def _distances(self, feats: list[Tensor]) -> Tensor:
        """(n, layers): the smallest squared Mahalanobis distance to a class mean per layer."""
        cols = []
        for f, mu, prec in zip(feats, self.means, self.precisions, strict=True):
            f = f.float()
            fp = f @ prec
            d = (fp * f).sum(1, keepdim=True) - 2 * fp @ mu.T + ((mu @ prec) * mu).sum(1)[None]
            cols.append(d.clamp_min(0).amin(1))
        return torch.stack(cols, 1)

    def _raw(self, x: Tensor) -> Tensor:
        return self._distances(features(self.model, self.taps, x)[1])

    def _combine(self, raw: Tensor) -> Tensor:
        centre, scale = self.centre.to(raw.device), self.scale.to(raw.device)
        return ((raw - centre) / scale).sum(1)

    def logits_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.config.noise > 0:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                d = self._combine(self._raw(xg)).sum()
                (g,) = torch.autograd.grad(d, xg)
            lo, hi = self.model.bounds
            x = (x - self.config.noise * g.sign()).clamp(lo, hi)
        logits, feats = features(self.model, self.taps, x)
        return logits, self._combine(self._distances(feats))


# -- feature squeezing ------------------------------------------------------------------------


def squeezer(step: Preprocessor, bounds: tuple[float, float]) -> Squeezer:
    """A preprocessing step as a squeezer; BPDA where the step is not differentiable, so the
    adaptive attack gets a gradient through it."""
    if step.differentiable:
        return lambda x: step(x, bounds)
    return lambda x: bpda(step, x, bounds)


@dataclass(frozen=True, kw_only=True)
class FeatureSqueezing(Detector):
    """Feature squeezing (Xu et al. 2018): score = max over squeezers of ‖softmax(x) −
    softmax(squeeze(x))‖₁.

    Args:
        bits: bit depth of the bit-depth squeezer (0: none).
        median_size: window of the median-filter squeezer (0 or 1: none).
        squeezers: squeezers to use instead of the two above (functions of [0, 1] NCHW inputs).
    """

    bits: int = 1
    median_size: int = 2
    squeezers: tuple[Squeezer, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 0 <= self.bits <= 16:
            raise ConfigError(f"bits must be in [0, 16], got {self.bits}")
        if self.median_size < 0:
            raise ConfigError(f"median_size must be >= 0, got {self.median_size}")
        if not self.chain((0.0, 1.0)):
            raise ConfigError("feature squeezing needs at least one squeezer")

    def chain(self, bounds: tuple[float, float]) -> list[Squeezer]:
        """The squeezers, for inputs in ``bounds``."""
        if self.squeezers:
            return list(self.squeezers)
        steps: list[Preprocessor] = []
        if self.bits:
            steps.append(BitDepth(bits=self.bits))
        if self.median_size > 1:
            steps.append(Median(size=self.median_size))
        return [squeezer(step, bounds) for step in steps]

    def fit(
        self, model: Classifier, x_clean: Tensor | np.ndarray, y_clean: Tensor | None = None
    ) -> FittedSqueezing:
        require_module(model)
        _as_input(model, x_clean, "FeatureSqueezing.fit")
        return FittedSqueezing(model, self.chain(model.bounds))


class FittedSqueezing(FittedDetector):
    name = "squeeze"

    def __init__(self, model: Classifier, squeezers: Sequence[Squeezer]) -> None:
        super().__init__(model)
        self.squeezers = list(squeezers)

    def logits_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        grad = torch.is_grad_enabled()
        forward = self.model.logits_graph if grad else self.model.logits
        logits = forward(x)
        p = logits.softmax(1)
        dists = [(p - forward(s(x)).softmax(1)).abs().sum(1) for s in self.squeezers]
        return logits, torch.stack(dists, 1).amax(1)


DETECTORS = Registry[type[Detector]]("detector")
"""Registry name → adversarial-input detector class (the vocabulary of ``aegis detect``)."""
DETECTORS.register("mahalanobis", Mahalanobis)
DETECTORS.register("squeeze", FeatureSqueezing)


# -- the adaptive attack ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DetectorAwarePGD(Attack):
    """PGD against classifier + detector together (the adaptive attack of Carlini & Wagner
    2017, https://arxiv.org/abs/1705.07263): maximize −max(margin, −κ) − w·relu(score −
    threshold + slack), so the input is misclassified with margin κ while its score drops
    below the threshold. One run per penalty weight w in ``weights``, each (from a fresh random
    start) only on the points no earlier run got through, as restarts are. Each point keeps the
    first iterate that is misclassified and not flagged; otherwise the last misclassified
    iterate, otherwise the last one. The step loop is ``gradient_ascent``'s (hidden points are
    frozen and leave the batch), ascending the objective ``_Hiding``.
    """

    registry_name: ClassVar[str] = "pgd-detector-aware"

    detector: FittedDetector
    threshold: float
    steps: int = 100
    step_size: float | None = None  # default 2.5 · eps / steps
    weights: tuple[float, ...] = (1.0, 10.0, 0.1)
    kappa: float = 2.0
    slack: float = 0.0
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if not self.weights or any(not w >= 0 for w in self.weights):
            raise ConfigError(f"weights must be one or more values >= 0, got {self.weights}")
        if not self.kappa >= 0 or not self.slack >= 0:
            raise ConfigError("kappa and slack must be >= 0")
        if not np.isfinite(self.threshold):
            raise ConfigError(f"threshold must be finite, got {self.threshold}")

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
        if self.detector.model is not model:
            raise ConfigError("the detector was fitted for another model")
        step = resolve_step(self.step_size, threat.eps, self.steps)
        if not np.isfinite(step):
            raise ConfigError("an unbounded threat needs an explicit step_size")
        out = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        kept = torch.zeros_like(done)  # out holds a misclassified iterate
        for weight in self.weights:
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            t = None if targets is None else targets[idx]
            hiding = _Hiding(self, x[idx], weight)
            last = gradient_ascent(
                model,
                x[idx],
                y[idx],
                threat,
                targets=t,
                generator=generator,
                steps=self.steps,
                step_size=step,
                random_start=self.random_start,
                objective=hiding,
            )
            hiding(last, y[idx], t, None)  # records the last iterate (no step follows)
            hidden, fooled = hiding.done, hiding.kept
            adv = torch.where(fooled.view(-1, 1, 1, 1), hiding.out, last)
            take = hidden | (fooled & ~kept[idx]) | ~(kept[idx] | fooled)
            out[idx[take]] = adv[take]
            kept[idx[fooled]] = True
            done[idx[hidden]] = True
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.registry_name,
            "detector": self.detector.name,
            "threshold": self.threshold,
            "steps": self.steps,
            "step_size": self.step_size,
            "weights": list(self.weights),
            "kappa": self.kappa,
            "slack": self.slack,
            "random_start": self.random_start,
        }


class _Hiding:
    """The objective of one ``DetectorAwarePGD`` run for ``gradient_ascent``: ascend
    −max(margin, −κ) − w·relu(score − threshold + slack); a point succeeds once hidden
    (misclassified and not flagged). Every iterate it sees is recorded: per point the first
    hidden one, else the last misclassified one (``out``, where ``kept``); ``done``: hidden."""

    def __init__(self, attack: DetectorAwarePGD, x: Tensor, weight: float) -> None:
        self.attack, self.weight, self.out = attack, weight, x.clone()
        self.done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.kept = torch.zeros_like(self.done)

    def __call__(
        self, x: Tensor, y: Tensor, targets: Tensor | None, rows: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        a, at = self.attack, slice(None) if rows is None else rows
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, score = a.detector.logits_and_score(xg)
            m = margin(logits, y, targets)
            loss = -m.clamp_min(-a.kappa) - self.weight * F.relu(score - a.threshold + a.slack)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        fooled = (m < 0).detach()
        take = ~self.done[at] & fooled
        self.out[at] = torch.where(take.view(-1, 1, 1, 1), x.detach(), self.out[at])
        self.kept[at] |= take
        self.done[at] |= fooled & (score.detach() <= a.threshold)
        return self.done[at], grad


# -- evaluation -------------------------------------------------------------------------------


def evaluate_detector(
    model: Classifier,
    detector: FittedDetector,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    attack: Attack | Sequence[Attack],
    threat: ThreatModel,
    *,
    fpr: float = 0.05,
    adaptive: DetectorAwarePGD | bool = True,
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Detection metrics of a fitted detector against an attack, and against the adaptive one.

    The attack runs through ``engine.evaluate`` (only correctly classified points are
    attacked). The threshold is chosen on the clean scores of ``x`` for ``fpr``; ROC-AUC and
    TPR use the successful adversarial examples; the combined-system accuracies count a false
    alarm on a clean input as an error and a flagged adversarial input as handled
    (``metrics.combined_accuracy``). ``adaptive``: True for a ``DetectorAwarePGD`` with its
    defaults (steps 100) at the same threat, an instance to set its parameters, or False. The
    adaptive attack also runs on misclassified points (an attacker hides those too).
    """
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).long()
    clean = detector.score(xt).numpy().astype(np.float64)
    t = threshold_at_fpr(clean, fpr)
    clean_flag = clean > t
    ev = evaluate(model, xt, yt, attack, threat, batch_size=batch_size, seed=seed)
    out: dict[str, Any] = {
        "detector": detector.name,
        "fpr": fpr,
        "threshold": t,
        "n": len(ev.records),
        "clean_flagged": float(clean_flag.mean()) if clean.size else None,
        "attack": ev.config["attack"],
        "threat": threat.to_dict(),
        "non_adaptive": _attack_metrics(detector, ev.records, ev.x_adv, clean, t, clean_flag),
        "seconds": ev.seconds,
    }
    if adaptive is not False:
        aware = (
            replace(adaptive, threshold=t)
            if isinstance(adaptive, DetectorAwarePGD)
            else DetectorAwarePGD(detector=detector, threshold=t)
        )
        ev2 = evaluate(
            model,
            xt,
            yt,
            aware,
            threat,
            batch_size=batch_size,
            seed=seed,
            attack_misclassified=True,
        )
        out["adaptive"] = {
            "attack": aware.to_dict(),
            **_attack_metrics(detector, ev2.records, ev2.x_adv, clean, t, clean_flag),
        }
        # The attacker submits, per point, whichever input gets through: the headline.
        out["worst_case"] = {
            "robust_accuracy": worst_case_accuracy(
                [out["non_adaptive"].pop("_handled"), out["adaptive"].pop("_handled")]
            )
        }
        out["seconds"] += ev2.seconds
    else:
        out["non_adaptive"].pop("_handled")
    return out


def _attack_metrics(
    detector: FittedDetector,
    rec: Any,
    x_adv: np.ndarray,
    clean: np.ndarray,
    threshold: float,
    clean_flag: np.ndarray,
) -> dict[str, Any]:
    adv = detector.score(x_adv).numpy().astype(np.float64)
    ok = rec.success
    return {
        "successful": int(ok.sum()),
        "attacked": int(rec.attacked.sum()),
        "roc_auc": roc_auc(clean, adv[ok]),
        "tpr": detection_rate(adv[ok], threshold),
        "fpr": detection_rate(clean, threshold),
        "combined": combined_accuracy(rec, clean_flag, adv > threshold),
        "_handled": handled(rec, adv > threshold),
    }
