"""Detection of poisoned training points from a model trained on them (data-side defenses).

A detector's hyper-parameters are a frozen, keyword-only dataclass; ``detector.detect(model,
x, y)`` reads the penultimate-layer representations (the input of the model's last
``nn.Linear``) of the training set and returns a :class:`PoisonFlags` (a boolean mask of the
points to remove, per-point scores and per-class details). ``metrics.flag_precision_recall``
scores the mask against the ground truth of a :class:`~aegis.poisoning.attacks.PoisonedSet`.

- ``ActivationClustering`` (Chen et al. 2018, https://arxiv.org/abs/1811.03728): per class
  (the model's predictions by default), the activations are reduced to ``dims`` dimensions
  (PCA by default, or ICA as in the paper) and split by 2-means. Which classes are poisoned is
  decided by one of the paper's three analyses: ``size`` (the smaller cluster is flagged when
  below ``max_size`` of its class), ``silhouette`` (well-separated clusters) or ``exclusion``
  (exclusionary reclassification: retrain without the suspect clusters and check whether their
  points are still classified as their label).
- ``SpectralSignatures`` (Tran et al. 2018, https://arxiv.org/abs/1811.00636): per label, the
  centred representations' top right singular vector v; the outlier score is ⟨r − μ, v⟩². The
  paper's ``fixed`` mode flags the ``round(multiplier · eps · n_class)`` highest scores of each
  class (``eps``: an upper bound on the poisoned share of a class); the ``adaptive`` mode (an
  aegis extension) splits the 1-D projections in two and flags the far mode when the two are
  separated.

When the poison is a large share of its class (BadNets at 10% of a set relabeled into one of
ten classes is about half of that class), the two clusters have similar sizes and the squared
spectral scores of both modes are alike, so neither "smaller" nor "highest score" says which
half is poison. aegis then takes the *far* cluster: the one on the other side, along the line
through the two cluster centroids, from most of the other classes' representations (the
backdoor's feature is one no clean point uses). This rule is an aegis extension, measured on
the digits and MNIST BadNets benches (``docs/benchmarks.md``).

The linear algebra runs on one BLAS/OpenMP thread: with torch's threads spinning next to
OpenBLAS's, a 400 × 128 SVD took 2 s instead of 20 ms on a loaded 2-core machine.

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

from aegis.defenses.detection import features, require_module
from aegis.errors import CapabilityError, ConfigError, DataError
from aegis.model import Classifier
from aegis.registry import Registry

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
    module = require_module(model)
    linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise CapabilityError(f"{model.name} has no nn.Linear layer to read representations")
    taps: list[tuple[nn.Module, bool]] = [(linear[-1], True)]
    preds, feats = [], []
    step = max(model.batch_size, 1024)  # no gradients: large batches are cheap
    with torch.no_grad():
        for i in range(0, x.shape[0], step):
            logits, (f,) = features(model, taps, x[i : i + step].to(model.device))
            preds.append(logits.argmax(1).cpu())
            feats.append(f.float().cpu())
    return torch.cat(preds).numpy(), torch.cat(feats).numpy()


def _far_cluster(a: np.ndarray, labels: np.ndarray, rest: np.ndarray) -> tuple[int, float]:
    """Of a class's two clusters (``labels`` 0/1 over its representations ``a``), the one
    farther from the representations ``rest`` of the other classes, and the share of ``rest``
    on that cluster's side of the bisector of the two centroids (small: clearly far)."""
    mu0, mu1 = a[labels == 0].mean(0), a[labels == 1].mean(0)
    if rest.shape[0] == 0:
        return int(np.argmin(np.bincount(labels, minlength=2))), 0.5
    side1 = float(((rest - (mu0 + mu1) / 2) @ (mu1 - mu0) > 0).mean())
    return (1, side1) if side1 < 0.5 else (0, 1.0 - side1)


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

    Per class, the representations are reduced to ``dims`` dimensions and split by 2-means;
    ``analysis`` decides which classes are poisoned and so which cluster is flagged:

    - ``size``: the smaller cluster, when it holds less than ``max_size`` of its class (the
      paper's relative-size test, as ART's default). It cannot flag a poison that is half of
      its class, the usual case of an all-to-one backdoor at 10% of the set.
    - ``silhouette``: the far cluster (module docstring), when the silhouette score of the
      split is at least ``min_silhouette`` (the paper's "well separated"). On the digits and
      MNIST benches, clean classes written in two styles reached the poisoned class's score
      (0.30–0.42 vs 0.30–0.36), so no threshold separates them there.
    - ``exclusion`` (default): the paper's exclusionary reclassification. The far cluster of
      every class is left out at once and a model of the same architecture is retrained, with
      :func:`aegis.training.train_classifier`, on the rest; a cluster is poison when less than
      ``min_own`` of its points are then classified as their own label (poison goes back to
      its source classes; a clean cluster is still recognised from the other half of its
      class). The paper retrains once per suspect cluster; retraining once for all classes is
      an aegis shortcut (one training run instead of ten), and taking the far cluster rather
      than the smaller one its extension for poison at about half of a class.

    Args:
        dims: dimensions after reduction (the paper: 10); fewer when a class has fewer points
            or the representation fewer features.
        reduce: ``pca`` (as ART's default) or ``ica`` (FastICA on the PCA components, as in the
            paper; on the scikit-learn digits it was slower and found less of a BadNets poison).
        analysis: ``exclusion``, ``silhouette`` or ``size`` (above).
        max_size: ``size``: the relative-size threshold (0.35 as in ART).
        min_silhouette: ``silhouette``: the score from which a split counts as separated.
        min_own: ``exclusion``: a cluster whose points are reclassified as their label less
            often than this is poison.
        arch, epochs, lr, batch_size: ``exclusion``'s retraining recipe (``arch`` default: the
            model's name, which is its architecture for models from ``train_classifier``);
            use the recipe the model was trained with.
        segment: ``prediction`` (the model's predicted class, as in the paper) or ``label``.
        seed: seeds the reduction, k-means and the retraining.
    """

    name: ClassVar[str] = "activation-clustering"

    dims: int = 10
    reduce: str = "pca"
    analysis: str = "exclusion"
    max_size: float = 0.35
    min_silhouette: float = 0.3
    min_own: float = 0.5
    arch: str | None = None
    epochs: int = 5
    lr: float = 2e-3
    batch_size: int = 64
    segment: str = "prediction"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dims < 1:
            raise ConfigError(f"dims must be >= 1, got {self.dims}")
        if self.reduce not in ("ica", "pca"):
            raise ConfigError(f"reduce must be ica or pca, got {self.reduce!r}")
        if self.analysis not in ANALYSES:
            raise ConfigError(
                f"analysis must be one of {', '.join(ANALYSES)}, got {self.analysis!r}"
            )
        if not 0 < self.max_size <= 0.5:
            raise ConfigError(f"max_size must be in (0, 0.5], got {self.max_size}")
        if not -1 <= self.min_silhouette <= 1:
            raise ConfigError(f"min_silhouette must be in [-1, 1], got {self.min_silhouette}")
        if not 0 < self.min_own <= 1:
            raise ConfigError(f"min_own must be in (0, 1], got {self.min_own}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(
                f"epochs and batch_size must be >= 1 and lr > 0, got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )
        if self.segment not in ("prediction", "label"):
            raise ConfigError(f"segment must be prediction or label, got {self.segment!r}")

    def detect(self, model: Classifier, x: Tensor, y: Tensor) -> PoisonFlags:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA, FastICA
        from sklearn.metrics import silhouette_score
        from threadpoolctl import threadpool_limits

        _check(model, x, y)
        arch = self._arch(model)
        pred, feats = penultimate(model, x)
        groups = pred if self.segment == "prediction" else y.numpy()
        flagged = np.zeros(x.shape[0], bool)
        scores = np.zeros(x.shape[0])
        classes: list[dict[str, Any]] = []
        suspects: dict[int, np.ndarray] = {}  # class → indices of its suspect cluster
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FastICA's convergence warning is not an error
            for c in np.unique(groups):
                idx = np.nonzero(groups == c)[0]
                info: dict[str, Any] = {"class": int(c), "n": int(idx.size), "flagged": 0}
                classes.append(info)
                a = feats[idx] - feats[idx].mean(0)
                dims = min(self.dims, idx.size - 1, a.shape[1])
                if idx.size < 4 or dims < 1 or not np.any(a.std(0) > 0):
                    info["skipped"] = "too few points or constant representations"
                    continue
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
                lab = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(z).labels_
                sizes = np.bincount(lab, minlength=2)
                if sizes.min() == 0:
                    info["skipped"] = "one cluster"
                    continue
                small = int(np.argmin(sizes))
                info["smaller_cluster_share"] = float(sizes[small] / idx.size)
                info["silhouette"] = float(silhouette_score(z, lab, random_state=self.seed))
                far, rest_share = _far_cluster(feats[idx], lab, feats[groups != c])
                info["far_cluster_share"] = float(sizes[far] / idx.size)
                info["others_on_far_side"] = rest_share
                pick = small if self.analysis == "size" else far
                info["suspect_share"] = float(sizes[pick] / idx.size)
                scores[idx[lab == pick]] = info["silhouette"]
                if self.analysis == "size":
                    poisoned = info["smaller_cluster_share"] < self.max_size
                elif self.analysis == "silhouette":
                    poisoned = info["silhouette"] >= self.min_silhouette
                else:
                    suspects[int(c)] = idx[lab == pick]
                    continue
                if poisoned:
                    flagged[idx[lab == pick]] = True
                    info["flagged"] = int(sizes[pick])
        if suspects:
            self._exclusion(model, arch, x, y, suspects, flagged, scores, classes)
        return PoisonFlags(flagged, scores, classes)

    def _arch(self, model: Classifier) -> str:
        from aegis.zoo.architectures import ARCHITECTURES

        arch = self.arch or model.name
        if self.analysis == "exclusion" and arch not in ARCHITECTURES:
            raise ConfigError(
                f"exclusionary reclassification retrains the model: pass arch (one of "
                f"{', '.join(ARCHITECTURES)}), or use analysis='silhouette' or 'size'"
            )
        return arch

    def _exclusion(
        self,
        model: Classifier,
        arch: str,
        x: Tensor,
        y: Tensor,
        suspects: dict[int, np.ndarray],
        flagged: np.ndarray,
        scores: np.ndarray,
        classes: list[dict[str, Any]],
    ) -> None:
        """Retrain without every suspect cluster; flag those mostly classified elsewhere."""
        from aegis.training import train_classifier

        keep = np.ones(x.shape[0], bool)
        for idx in suspects.values():
            keep[idx] = False
        if keep.sum() < 2:
            raise DataError("exclusionary reclassification would leave fewer than 2 points")
        keep_t = torch.from_numpy(keep)
        retrained = train_classifier(
            x[keep_t],
            y[keep_t],
            arch=arch,
            num_classes=model.info.num_classes,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        out = ~keep_t
        again = np.empty(x.shape[0], np.int64)
        again[out.numpy()] = retrained.predict(x[out]).cpu().numpy()
        labels = y.numpy()
        by_class = {info["class"]: info for info in classes}
        for c, idx in suspects.items():
            own = float((again[idx] == labels[idx]).mean())
            info = by_class[c]
            info["reclassified_as_own_label"] = own
            others = np.bincount(again[idx][again[idx] != labels[idx]], minlength=1)
            info["reclassified_mostly_as"] = int(np.argmax(others)) if others.sum() else None
            scores[idx] = 1.0 - own
            if own < self.min_own:
                flagged[idx] = True
                info["flagged"] = int(idx.size)


@dataclass(frozen=True, kw_only=True)
class SpectralSignatures(PoisonDetector):
    """Spectral signatures (Tran et al. 2018).

    Per label, the outlier score of a point is ⟨r − μ, v⟩², v the top right singular vector of
    the class's centred representations.

    - ``fixed`` (the paper): the ``round(multiplier · eps · n_class)`` highest scores of every
      class are flagged.
    - ``adaptive`` (an aegis extension): the signed projections ⟨r − μ, v⟩ of a class are split
      by 1-D 2-means; when the two modes are separated (Ashman's D = |m₁ − m₂| / √((s₁² + s₂²)
      / 2) ≥ ``separation``) and the far mode (module docstring) holds at most
      ``multiplier · eps`` of the class, the far mode is flagged. At about half of a class
      poisoned, the squared scores of both modes are alike and ``fixed`` cannot choose.

    Args:
        eps: upper bound on the share of a class that is poisoned (the paper's ε). A backdoor
            that relabels ``rate · n`` points into one class of size ``n_c`` makes it about
            ``rate · n / n_c`` of that class (not ``rate``); with ε = ``rate``, ``fixed``
            removes at most 1.5 · ε of the class.
        multiplier: ``fixed`` removes ``multiplier · eps · n_class`` points per class (the
            paper: 1.5); ``adaptive`` flags at most that many.
        mode: ``fixed`` or ``adaptive``.
        separation: ``adaptive``: Ashman's D from which the two modes count as separated.
    """

    name: ClassVar[str] = "spectral"

    eps: float = 0.1
    multiplier: float = 1.5
    mode: str = "fixed"
    separation: float = 3.5

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must be in (0, 1], got {self.eps}")
        if not self.multiplier > 0:
            raise ConfigError(f"multiplier must be > 0, got {self.multiplier}")
        if self.mode not in ("fixed", "adaptive"):
            raise ConfigError(f"mode must be fixed or adaptive, got {self.mode!r}")
        if not self.separation > 0:
            raise ConfigError(f"separation must be > 0, got {self.separation}")

    def detect(self, model: Classifier, x: Tensor, y: Tensor) -> PoisonFlags:
        from threadpoolctl import threadpool_limits

        _check(model, x, y)
        _, feats = penultimate(model, x)
        labels = y.numpy()
        flagged = np.zeros(x.shape[0], bool)
        scores = np.zeros(x.shape[0])
        classes: list[dict[str, Any]] = []
        with threadpool_limits(limits=1):
            for c in np.unique(labels):
                idx = np.nonzero(labels == c)[0]
                r = feats[idx] - feats[idx].mean(0)
                _, _, vt = np.linalg.svd(r, full_matrices=False)
                proj = (r @ vt[0]).astype(np.float64)
                scores[idx] = proj**2
                info: dict[str, Any] = {"class": int(c), "n": int(idx.size), "flagged": 0}
                classes.append(info)
                cap = min(idx.size, round(self.multiplier * self.eps * idx.size))
                if self.mode == "fixed":
                    if cap:
                        flagged[idx[np.argsort(-(proj**2), kind="stable")[:cap]]] = True
                    info["flagged"] = int(cap)
                    continue
                pick = self._far_mode(proj, feats[labels != c] - feats[idx].mean(0), vt[0], info)
                if pick is not None and 0 < pick.sum() <= cap:
                    flagged[idx[pick]] = True
                    info["flagged"] = int(pick.sum())
        return PoisonFlags(flagged, scores, classes)

    def _far_mode(
        self, proj: np.ndarray, rest: np.ndarray, v: np.ndarray, info: dict[str, Any]
    ) -> np.ndarray | None:
        """The far mode of the 1-D projections when the two modes are separated, else None."""
        if proj.size < 4:
            return None
        order = np.sort(proj)
        # exact 1-D 2-means: the split of the sorted values with the least within-cluster SS
        csum, csq = np.cumsum(order), np.cumsum(order**2)
        k = np.arange(1, proj.size)
        left = csq[:-1] - csum[:-1] ** 2 / k
        right = (csq[-1] - csq[:-1]) - (csum[-1] - csum[:-1]) ** 2 / (proj.size - k)
        cut = int(np.argmin(left + right))
        hi = proj > (order[cut] + order[cut + 1]) / 2
        lo_v, hi_v = proj[~hi], proj[hi]
        d = abs(hi_v.mean() - lo_v.mean()) / np.sqrt((hi_v.var() + lo_v.var()) / 2 + 1e-12)
        info["separation"] = float(d)
        # the far mode: the side of the cut away from most of the other classes' points
        rest_hi = float((rest @ v > (order[cut] + order[cut + 1]) / 2).mean()) if rest.size else 0.5
        far = hi if rest_hi < 0.5 else ~hi
        info["far_mode_share"] = float(far.mean())
        return far if d >= self.separation else None


ANALYSES = ("exclusion", "silhouette", "size")
"""The class-level analyses of :class:`ActivationClustering`."""


DETECTORS = Registry[type[PoisonDetector]]("poison detector")
"""Registry name → poison detector class (the vocabulary of ``aegis poison --defense``)."""
DETECTORS.register("activation-clustering", ActivationClustering)
DETECTORS.register("spectral", SpectralSignatures)
