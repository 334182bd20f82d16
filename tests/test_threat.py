"""Projections and norms of the ThreatModel."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aegis.threat import ThreatModel, norms, project_l1_box


def l1_ball_projection_sorted(v: np.ndarray, eps: float) -> np.ndarray:
    """Exact projection onto the L1 ball by sorting (Duchi et al. 2008), no box."""
    if np.abs(v).sum() <= eps:
        return v
    u = np.sort(np.abs(v))[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(u) + 1) > (css - eps))[0][-1]
    theta = (css[rho] - eps) / (rho + 1.0)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0)


@settings(max_examples=40, deadline=None)
@given(v=arrays(np.float64, 12, elements=st.floats(-3, 3)), eps=st.floats(0.01, 10))
def test_l1_projection_matches_exact_without_box(v, eps) -> None:
    t = torch.from_numpy(v)[None]
    big = torch.full_like(t, 100.0)
    got = project_l1_box(t, -big, big, eps, iters=60)[0].numpy()
    want = l1_ball_projection_sorted(v, eps)
    assert np.abs(got).sum() <= eps + 1e-9
    np.testing.assert_allclose(got, want, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(np.float64, 10, elements=st.floats(0, 1)),
    v=arrays(np.float64, 10, elements=st.floats(-2, 2)),
    eps=st.floats(0.0, 5),
)
def test_l1_box_projection_is_feasible_and_optimal(x, v, eps) -> None:
    xt, vt = torch.from_numpy(x)[None], torch.from_numpy(v)[None]
    d = project_l1_box(vt, -xt, 1 - xt, eps)[0].numpy()
    assert np.abs(d).sum() <= eps + 1e-9
    assert (x + d >= -1e-12).all() and (x + d <= 1 + 1e-12).all()
    # No feasible random point is closer to v than the projection.
    rng = np.random.default_rng(0)
    best = np.sum((d - v) ** 2)
    for _ in range(200):
        c = rng.uniform(-x, 1 - x)
        if np.abs(c).sum() > eps:
            c = c * eps / np.abs(c).sum()
        assert np.sum((c - v) ** 2) >= best - 1e-7


@settings(max_examples=30, deadline=None)
@given(norm=st.sampled_from(["linf", "l2", "l1"]), eps=st.floats(0, 4), seed=st.integers(0, 99))
def test_project_and_random_start_stay_inside(norm, eps, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 1, 4, 4, generator=g)
    threat = ThreatModel(norm, eps)
    far = x + 3 * torch.randn(5, 1, 4, 4, generator=g)
    assert threat.within(threat.project(far, x, (0.0, 1.0)), x, (0.0, 1.0)).all()
    assert threat.within(threat.random_start(x, (0.0, 1.0), g), x, (0.0, 1.0)).all()


def test_l0_projection_keeps_k_pixels() -> None:
    x = torch.zeros(2, 3, 4, 4)
    threat = ThreatModel("l0", 5)
    out = threat.project(torch.rand(2, 3, 4, 4), x, (0.0, 1.0))
    pixels = (out != 0).any(1).flatten(1).sum(1)
    assert (pixels <= 5).all()
    assert torch.equal(norms(out - x, "l0"), pixels.float())
    assert threat.within(out, x, (0.0, 1.0)).all()  # the budget counts pixels, not channels


def test_norms() -> None:
    d = torch.tensor([[[[3.0, -4.0]]]])
    assert norms(d, "l2").item() == 5.0
    assert norms(d, "l1").item() == 7.0
    assert norms(d, "linf").item() == 4.0
    assert norms(d, "l0").item() == 2.0
