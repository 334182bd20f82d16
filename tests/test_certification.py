"""Randomized smoothing: the bound, the radius, certificates that hold, seeds, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import beta, norm

from aegis.defenses.certification import (
    Smoothing,
    certified_radius,
    certify,
    clopper_pearson_lower,
    noise_counts,
    predict,
)
from aegis.errors import ConfigError
from aegis.metrics import certification_summary, certified_accuracy
from aegis.model import Classifier, ModelInfo
from aegis.records import ABSTAIN, Certificates

SIGMA = 0.25


@pytest.fixture(scope="module")
def noisy_digits() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """A digits MLP trained on Gaussian noise (σ = 0.25), and held-out points."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = x[200:1000], y[200:1000]
    for _ in range(150):
        opt.zero_grad()
        noisy = xt + SIGMA * torch.randn(xt.shape, generator=g)
        F.cross_entropy(net(noisy), yt).backward()
        opt.step()
    model = Classifier(net.eval(), ModelInfo(num_classes=10, input_shape=(1, 8, 8)))
    return model, x[:40], y[:40]


def test_clopper_pearson_matches_scipy_and_closed_form() -> None:
    for k, n, a in [(990, 1000, 0.001), (600, 1000, 0.01), (7, 10, 0.05), (1, 1, 0.5)]:
        assert clopper_pearson_lower(k, n, a) == pytest.approx(beta.ppf(a, k, n - k + 1))
    # all n successes: the bound solves p^n = α
    assert clopper_pearson_lower(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000))
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0
    # one success in one trial: P(X >= 1) = p = α
    assert clopper_pearson_lower(1, 1, 0.05) == pytest.approx(0.05)


def test_radius_is_sigma_times_inverse_normal() -> None:
    assert certified_radius(float(norm.cdf(1.0)), 0.5) == pytest.approx(0.5)
    assert certified_radius(0.5, 0.5) == 0.0
    assert certified_radius(0.3, 0.5) == 0.0


@pytest.mark.parametrize(
    "params",
    [
        {"sigma": 0.0},
        {"sigma": -0.1},
        {"n0": 200, "n": 100},
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"n": 0},
        {"batch_size": 0},
    ],
)
def test_bad_parameters(params: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Smoothing(**params)  # type: ignore[arg-type]


def test_certified_accuracy_counts_abstains_as_wrong() -> None:
    cert = Certificates(
        index=np.arange(4),
        y=np.array([0, 1, 2, 1]),  # the last one is wrong
        prediction=np.array([0, 1, ABSTAIN, 0]),
        radius=np.array([0.6, 0.2, 0.0, 0.0]),
        p_lower=np.zeros(4),
        count=np.zeros(4, np.int64),
        seconds=np.zeros(4),
    )
    assert certified_accuracy(cert, 0.0) == 0.5
    assert certified_accuracy(cert, 0.25) == 0.25
    assert certified_accuracy(cert, 1.0) == 0.0
    s = certification_summary(cert, [0.5, 0.0])
    assert s["abstain_rate"] == 0.25
    assert [p["radius"] for p in s["certified_accuracy"]] == [0.0, 0.5]


class Coin(torch.nn.Module):
    """Two classes split by the mean pixel at 0.5: at x = 0.5 the noise makes a coin toss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([m, -m], 1) * 100


def test_coin_toss_abstains() -> None:
    model = Classifier(Coin(), ModelInfo(num_classes=2, input_shape=(1, 4, 4)))
    x = torch.full((3, 1, 4, 4), 0.5)
    s = Smoothing(sigma=0.5, n0=50, n=400, alpha=0.001)
    cert = certify(model, x, torch.zeros(3, dtype=torch.long), s)
    assert (cert.prediction == ABSTAIN).all() and (cert.radius == 0).all()
    assert certified_accuracy(cert, 0.0) == 0.0
    assert (predict(model, x, s) == ABSTAIN).all()


def test_seed_reproducibility_and_independence_from_batching(noisy_digits) -> None:
    model, x, y = noisy_digits
    s = Smoothing(sigma=SIGMA, n0=20, n=100, alpha=0.01, batch_size=64)
    a = certify(model, x[:6], y[:6], s, seed=3)
    b = certify(
        model, x[:6], y[:6], Smoothing(sigma=SIGMA, n0=20, n=100, alpha=0.01, batch_size=7), seed=3
    )
    c = certify(model, x[:6], y[:6], s, seed=3)
    np.testing.assert_array_equal(a.count, c.count)
    np.testing.assert_array_equal(a.radius, c.radius)
    # an input's certificate does not depend on the inputs before it
    tail = certify(model, x[3:6], y[3:6], s, seed=3, start=3)
    np.testing.assert_array_equal(a.count[3:], tail.count)
    other = certify(model, x[:6], y[:6], s, seed=4)
    assert not np.array_equal(a.p_lower, other.p_lower) or not np.array_equal(a.count, other.count)
    assert len(b) == 6


def _smoothed_top(model: Classifier, x: torch.Tensor, n: int, seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    return int(noise_counts(model, x, n, SIGMA, 1000, gen).argmax())


def _eot_pgd_l2(
    model: Classifier, x: torch.Tensor, label: int, radius: float, steps: int = 30
) -> torch.Tensor:
    """L2 PGD on the smoothed classifier: the gradient of the log of the mean softmax over
    noise samples (EOT), projected on the ball of ``radius`` (noise not clipped, no box)."""
    gen = torch.Generator().manual_seed(1)
    delta = torch.zeros_like(x)
    target = torch.tensor([label])
    for _ in range(steps):
        d = delta.detach().requires_grad_(True)
        noise = SIGMA * torch.randn((64, *x.shape), generator=gen)
        probs = model.logits_graph(x + d + noise).softmax(1).mean(0, keepdim=True)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), target)
        (g,) = torch.autograd.grad(loss, d)
        delta = delta + 2.5 * radius / steps * g / g.norm().clamp_min(1e-12)
        delta = delta * min(1.0, radius / float(delta.norm().clamp_min(1e-12)))
    return x + delta.detach()


def test_certificates_hold_against_random_and_eot_pgd_perturbations(noisy_digits) -> None:
    model, x, y = noisy_digits
    s = Smoothing(sigma=SIGMA, n0=50, n=500, alpha=0.001)
    cert = certify(model, x[:20], y[:20], s, seed=0)
    certified = np.flatnonzero(cert.radius > 0.05)
    assert certified.size >= 8, "the noise-trained model should certify most points"
    assert certified_accuracy(cert, 0.0) is not None and certified_accuracy(cert, 0.0) >= 0.6
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for i in certified[:8]:
        xi, r, c = x[int(i)], float(cert.radius[i]), int(cert.prediction[i])
        u = torch.randn(xi.shape, generator=gen)
        for delta in (0.95 * r * u / u.norm(),):
            assert _smoothed_top(model, xi + delta, 2000, seed=10 + int(i)) == c
        adv = _eot_pgd_l2(model, xi, c, 0.95 * r)
        assert float((adv - xi).norm()) <= r
        assert _smoothed_top(model, adv, 2000, seed=20 + int(i)) == c
        checked += 1
    assert checked >= 8
    # the attack is not toothless: far beyond the certified radii it flips the smoothed vote
    flipped = sum(
        _smoothed_top(model, _eot_pgd_l2(model, x[int(i)], int(cert.prediction[i]), 3.0), 500, 0)
        != int(cert.prediction[i])
        for i in certified[:8]
    )
    assert flipped >= 4


def test_noise_training_goes_through_the_reference_trainer(tmp_path) -> None:
    """`aegis train --noise-sigma`: the one training loop adds the noise; the model is named,
    recorded and better under that noise than the same recipe without it."""
    from aegis.io.data import load_dataset
    from aegis.zoo.train import load_reference, train_reference

    sigma = 0.5
    plain = train_reference("digits", out_dir=tmp_path, epochs=10, progress=False)
    noisy = train_reference(
        "digits", out_dir=tmp_path, epochs=10, noise_sigma=sigma, progress=False
    )
    assert noisy.model_path.name == "digits_cnn_noise0.5.safetensors"
    side = json.loads(noisy.sidecar_path.read_text())
    assert side["training"]["noise_sigma"] == sigma
    assert side["noisy_test_accuracy"] == noisy.noisy_test_accuracy
    assert plain.noisy_test_accuracy is None
    x, y = load_dataset("digits", split="test").tensors()
    gen = torch.Generator().manual_seed(0)
    xn = x + sigma * torch.randn(x.shape, generator=gen)
    acc = {
        name: float((load_reference(r.model_path).predict(xn) == y).float().mean())
        for name, r in (("plain", plain), ("noisy", noisy))
    }
    assert acc["noisy"] > acc["plain"] + 0.08, acc
    with pytest.raises(ConfigError, match="does not combine"):
        train_reference("digits", out_dir=tmp_path, defense="fast-at", noise_sigma=sigma)
    with pytest.raises(ConfigError, match="noise_sigma must be > 0"):
        train_reference("digits", out_dir=tmp_path, noise_sigma=-1.0)
