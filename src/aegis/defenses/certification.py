"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, https://arxiv.org/abs/1902.02918).

The smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ² I), predicts the class the
base classifier f most often returns under Gaussian noise. ``certify`` returns, per input, g's
class with a certified L2 radius R = σ · Φ⁻¹(p_A) (p_A a Clopper–Pearson lower bound at confidence
1 − α on the top class's probability): with probability at least 1 − α over the noise drawn,
g's prediction is constant on the L2 ball of radius R. ``predict`` is the paper's PREDICT: it
abstains unless a two-sided binomial test at level α separates the two most frequent classes.

As in the paper, the noise is added in pixel space and is NOT clipped to the input box: the
guarantee is about the Gaussian convolution of f, which clipping would change. The base model
therefore sees inputs outside ``bounds``; it should be trained on the same noise
(``aegis.workflows.certify.train_smoothed_base``). Samples are drawn from a
``torch.Generator`` seeded per input from the run seed and the input's index, so an input's
certificate does not depend on batching or ``limit``.

    >>> cert = certify(model, x, y, Smoothing(sigma=0.25, n0=100, n=1000, alpha=0.001))
    >>> certification_summary(cert, [0.0, 0.25, 0.5])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from aegis.engine import batch_seed
from aegis.errors import ConfigError, DataError
from aegis.model import Classifier
from aegis.records import ABSTAIN, Certificates

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Smoothing:
    """Randomized-smoothing parameters.

    Args:
        sigma: standard deviation σ of the Gaussian noise, in pixel units.
        n0: noise samples that select the top class (certify).
        n: noise samples that estimate its probability (certify) or vote (predict).
        alpha: failure probability: certificates hold with probability ≥ 1 − α.
        batch_size: noisy copies sent to the base model at once.
    """

    sigma: float = 0.25
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be > 0, got {self.sigma}")
        if self.n0 < 1:
            raise ConfigError(f"n0 must be >= 1, got {self.n0}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.n0 > self.n:
            raise ConfigError(
                f"n0 (selection samples) must be <= n (estimation samples), got n0={self.n0} "
                f"> n={self.n}"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def clopper_pearson_lower(count: int, n: int, alpha: float) -> float:
    """One-sided Clopper–Pearson lower bound on a binomial proportion at confidence 1 − α:
    the α-quantile of Beta(count, n − count + 1); 0 when ``count`` is 0."""
    if not 0 <= count <= n or n < 1:
        raise ConfigError(f"need 0 <= count <= n and n >= 1, got count={count}, n={n}")
    if count == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(alpha, count, n - count + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """σ · Φ⁻¹(p_lower), the certified L2 radius for p_lower > 1/2 (0 otherwise)."""
    if p_lower <= 0.5:
        return 0.0
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_lower))


def noise_counts(
    model: Classifier,
    x: Tensor,
    num: int,
    sigma: float,
    batch_size: int,
    generator: torch.Generator,
) -> np.ndarray:
    """How often the base model predicts each class on ``num`` noisy copies of one input
    ``x`` (shape (C, H, W)), in batches of ``batch_size`` copies."""
    counts = np.zeros(model.num_classes, np.int64)
    left = num
    while left > 0:
        m = min(batch_size, left)
        noise = torch.randn(
            (m, *x.shape), generator=generator, device=generator.device, dtype=x.dtype
        )
        pred = model.logits(x.unsqueeze(0) + sigma * noise.to(x.device)).argmax(1)
        counts += torch.bincount(pred, minlength=model.num_classes).cpu().numpy()
        left -= m
    return counts


def _generator(model: Classifier, seed: int, index: int) -> torch.Generator:
    device = model.device if model.device.type != "mps" else torch.device("cpu")
    return torch.Generator(device=device).manual_seed(batch_seed(seed, index))


def _check(model: Classifier, x: Tensor) -> None:
    model.check_input(x)
    if not torch.is_floating_point(x) or not torch.isfinite(x).all():
        raise DataError("inputs must be finite floating-point tensors")


def predict(
    model: Classifier,
    x: Tensor,
    smoothing: Smoothing,
    *,
    seed: int = 0,
    start: int = 0,
) -> Tensor:
    """The smoothed prediction of each input, or ``ABSTAIN`` (−1): Cohen et al.'s PREDICT with
    ``smoothing.n`` samples; abstains unless the two-sided binomial test of the top two counts
    rejects equality at level α (then the prediction is wrong with probability ≤ α).
    ``start`` is the index of ``x[0]`` in the dataset (it seeds each input's noise)."""
    from scipy.stats import binomtest

    _check(model, x)
    out = torch.full((x.shape[0],), ABSTAIN, dtype=torch.long)
    for i in range(x.shape[0]):
        gen = _generator(model, seed, start + i)
        counts = noise_counts(model, x[i], smoothing.n, smoothing.sigma, smoothing.batch_size, gen)
        top2 = np.argsort(counts, kind="stable")[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue <= smoothing.alpha:
            out[i] = int(top2[0])
    return out


def certify(
    model: Classifier,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    smoothing: Smoothing,
    *,
    seed: int = 0,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Certificates:
    """Cohen et al.'s CERTIFY for each input: the top class of ``n0`` noisy predictions, a
    Clopper–Pearson lower bound p_A on its probability from ``n`` fresh samples, and the radius
    σ · Φ⁻¹(p_A); abstains (radius 0) when p_A < 1/2. ``progress`` gets the inputs done."""
    xt = torch.as_tensor(x).float()
    yt = torch.as_tensor(y).long()
    _check(model, xt)
    m = xt.shape[0]
    if yt.shape != (m,):
        raise DataError(f"labels must have one entry per input ({m}), got {tuple(yt.shape)}")
    pred = np.full(m, ABSTAIN, np.int64)
    radius = np.zeros(m)
    p_lower = np.zeros(m)
    count = np.zeros(m, np.int64)
    seconds = np.zeros(m)
    s = smoothing
    for i in range(m):
        t0 = time.perf_counter()
        xi = xt[i].to(model.device)
        gen = _generator(model, seed, start + i)
        c_a = int(noise_counts(model, xi, s.n0, s.sigma, s.batch_size, gen).argmax())
        n_a = int(noise_counts(model, xi, s.n, s.sigma, s.batch_size, gen)[c_a])
        p = clopper_pearson_lower(n_a, s.n, s.alpha)
        count[i], p_lower[i] = n_a, p
        if p >= 0.5:
            pred[i] = c_a
            radius[i] = certified_radius(p, s.sigma)
        seconds[i] = time.perf_counter() - t0
        if progress is not None:
            progress(i + 1)
    return Certificates(
        index=np.arange(start, start + m),
        y=yt.cpu().numpy().astype(np.int64),
        prediction=pred,
        radius=radius,
        p_lower=p_lower,
        count=count,
        seconds=seconds,
    )


# -- Gaussian-noise training of the base classifier -------------------------------------------
