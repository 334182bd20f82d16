"""Detection of poisoned training points from a model trained on them (data-side defenses).

A detector's hyper-parameters are a frozen, keyword-only dataclass; ``detector.detect(model,
x, y)`` reads the penultimate-layer representations (the input of the model's last
``nn.Linear``) of the training set and returns a :class:`PoisonFlags` (a boolean mask of the
points to remove, per-point scores and per-class details). ``metrics.flag_precision_recall``
scores the mask against the ground truth of a :class:`~aegis.poisoning.attacks.PoisonedSet`.

- ``ActivationClustering`` (Chen et al. 2018, https://arxiv.org/abs/1811.03728): per class
  (the model's predictions by default), the activations are reduced to ``dims`` dimensions
  (PCA by default, or ICA as in the paper) and split by 2-means; the smaller cluster is
  flagged when its relative size is below ``max_size``.
- ``SpectralSignatures`` (Tran et al. 2018, https://arxiv.org/abs/1811.00636): per label, the
  centred representations' top right singular vector v; the outlier score is ⟨r − μ, v⟩², and
  the ``round(multiplier · eps · n_class)`` highest scores of each class are flagged, where
  ``eps`` is an upper bound on the poisoned share of a class.

    >>> flags = SpectralSignatures(eps=0.5).detect(model, poisoned.x, poisoned.y)
    >>> flag_precision_recall(flags.flagged, poisoned.mask)["recall"]
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from aegis.defenses.detection import _features, _require_module
from aegis.errors import CapabilityError, ConfigError, DataError
from aegis.model import Classifier

log = logging.getLogger(__name__)

__all__ = [
    "DETECTORS",
    "ActivationClustering",
    "PoisonDetector",
    "PoisonFlags",
    "SpectralSignatures",
    "penultimate",
]


@dataclass(frozen=True)
class PoisonFlags:
    """What a poison detector flagged: ``flagged`` (n,) bool, ``scores`` (n,) float (higher =
    more suspicious) and per-class details for results.json."""

    flagged: np.ndarray
    scores: np.ndarray
    classes: list[dict[str, Any]] = field(default_factory=list)


def penultimate(model: Classifier, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and penultimate-layer representations (the input of the last
    ``nn.Linear``) of ``x``, as numpy arrays (n,) and (n, d)."""
    module = _require_module(model)
    linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise CapabilityError(f"{model.name} has no nn.Linear layer to read representations")
    taps: list[tuple[nn.Module, bool]] = [(linear[-1], True)]
    preds, feats = [], []
    for i in range(0, x.shape[0], model.batch_size):
        xb = x[i : i + model.batch_size].to(model.device)
        with torch.no_grad():
            logits, (f,) = _features(model, taps, xb)
        preds.append(logits.argmax(1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(preds).numpy(), torch.cat(feats).numpy()


def _check(model: Classifier, x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise DataError(
            f"poison detection needs (n, C, H, W) inputs and (n,) labels with n >= 2, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    model.check_input(x)


class PoisonDetector(ABC):
    """Hyper-parameters of a poison detector; ``detect`` flags training points."""

    name: ClassVar[str] = ""

    @abstractmethod
    def detect(self, model: Classifier, x: Tensor, y: Tensor) -> PoisonFlags:
        """Flag the suspicious points of the training set ``(x, y)`` that ``model`` was
        trained on."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict, is_dataclass

        return {"name": self.name, **(asdict(self) if is_dataclass(self) else {})}


@dataclass(frozen=True, kw_only=True)
class ActivationClustering(PoisonDetector):
    """Activation clustering (Chen et al. 2018).

    Args:
        dims: dimensions after reduction (the paper: 10); fewer when a class has fewer points
            or the representation fewer features.
        reduce: ``pca`` (as ART's default) or ``ica`` (FastICA on the PCA components, as in the
            paper; on the scikit-learn digits it was slower and found less of a BadNets poison).
        max_size: the smaller of the two clusters is flagged when it holds less than this share
            of its class (the paper's relative-size test; 0.35 as in ART).
        segment: ``prediction`` (the model's predicted class, as in the paper) or ``label``.
        seed: seeds the reduction and k-means.
    """

    name: ClassVar[str] = "activation-clustering"

    dims: int = 10
    reduce: str = "pca"
    max_size: float = 0.35
    segment: str = "prediction"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dims < 1:
            raise ConfigError(f"dims must be >= 1, got {self.dims}")
        if self.reduce not in ("ica", "pca"):
            raise ConfigError(f"reduce must be ica or pca, got {self.reduce!r}")
        if not 0 < self.max_size <= 0.5:
            raise ConfigError(f"max_size must be in (0, 0.5], got {self.max_size}")
        if self.segment not in ("prediction", "label"):
            raise ConfigError(f"segment must be prediction or label, got {self.segment!r}")

    def detect(self, model: Classifier, x: Tensor, y: Tensor) -> PoisonFlags:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA, FastICA

        _check(model, x, y)
        pred, feats = penultimate(model, x)
        groups = pred if self.segment == "prediction" else y.numpy()
        flagged = np.zeros(x.shape[0], bool)
        scores = np.zeros(x.shape[0])
        classes: list[dict[str, Any]] = []
        for c in np.unique(groups):
            idx = np.nonzero(groups == c)[0]
            info: dict[str, Any] = {"class": int(c), "n": int(idx.size), "flagged": 0}
            classes.append(info)
            a = feats[idx]
            a = a - a.mean(0)
            dims = min(self.dims, idx.size - 1, a.shape[1])
            if idx.size < 4 or dims < 1 or not np.any(a.std(0) > 0):
                info["skipped"] = "too few points or constant representations"
                continue
            with warnings.catch_warnings():  # FastICA's convergence warning is not an error
                warnings.simplefilter("ignore")
                # PCA first drops dead (constant) ReLU features, on which FastICA's whitening
                # breaks down; ICA then rotates the PCA components, as the paper's ICA would.
                z = PCA(n_components=dims, random_state=self.seed).fit_transform(a)
                if self.reduce == "ica":
                    zi = FastICA(
                        n_components=dims, random_state=self.seed, max_iter=400
                    ).fit_transform(z)
                    if np.isfinite(zi).all():
                        z = zi
                    else:
                        info["reduce"] = "pca (ica diverged)"
                km = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(z)
            sizes = np.bincount(km.labels_, minlength=2)
            small = int(np.argmin(sizes))
            share = float(sizes[small] / idx.size)
            info["smaller_cluster_share"] = share
            scores[idx] = np.where(km.labels_ == small, 1.0 - share, 0.0)
            if share < self.max_size:
                flagged[idx[km.labels_ == small]] = True
                info["flagged"] = int(sizes[small])
        return PoisonFlags(flagged, scores, classes)


@dataclass(frozen=True, kw_only=True)
class SpectralSignatures(PoisonDetector):
    """Spectral signatures (Tran et al. 2018).

    Args:
        eps: upper bound on the share of a class that is poisoned (the paper's ε); for a
            backdoor that relabels ``rate · n`` points into one class of size ``n_c`` it is
            about ``rate · n / n_c``.
        multiplier: the paper removes ``multiplier · eps · n_class`` points per class (1.5).
    """

    name: ClassVar[str] = "spectral"

    eps: float = 0.1
    multiplier: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must be in (0, 1], got {self.eps}")
        if not self.multiplier > 0:
            raise ConfigError(f"multiplier must be > 0, got {self.multiplier}")

    def detect(self, model: Classifier, x: Tensor, y: Tensor) -> PoisonFlags:
        _check(model, x, y)
        _, feats = penultimate(model, x)
        labels = y.numpy()
        flagged = np.zeros(x.shape[0], bool)
        scores = np.zeros(x.shape[0])
        classes: list[dict[str, Any]] = []
        for c in np.unique(labels):
            idx = np.nonzero(labels == c)[0]
            r = feats[idx] - feats[idx].mean(0)
            _, _, vt = np.linalg.svd(r, full_matrices=False)
            s = (r @ vt[0]) ** 2
            scores[idx] = s
            k = min(idx.size, round(self.multiplier * self.eps * idx.size))
            if k:
                flagged[idx[np.argsort(-s, kind="stable")[:k]]] = True
            classes.append({"class": int(c), "n": int(idx.size), "flagged": int(k)})
        return PoisonFlags(flagged, scores, classes)


DETECTORS: dict[str, type[PoisonDetector]] = {
    "activation-clustering": ActivationClustering,
    "spectral": SpectralSignatures,
}
"""Registry name → poison detector class (the vocabulary of ``aegis poison --defense``)."""
