"""Square Attack and Sparse-RS: score-based random search, query accounting, sparsity."""

from __future__ import annotations

import pytest
import torch

from aegis.attacks.sparse_rs import alpha_schedule
from aegis.attacks.square import p_schedule, pyramid
from aegis.errors import ConfigError
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel, norms


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_square_linf_beats_random_signs(digits_model) -> None:
    """1,000 queries of Square fool far more points than the best of 10 random ±ε vertices."""
    model, x, y = digits_model
    x, y = x[:150], y[:150]
    eps = 0.1
    g = seeded(1)
    random_fooled = torch.zeros_like(y, dtype=torch.bool)
    for _ in range(10):
        signs = torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0)
        random_fooled |= model.predict((x + eps * signs).clamp(0, 1)) != y
    x_adv = create("square", queries=1000)(
        model, x, y, ThreatModel("linf", eps), generator=seeded()
    )
    square_fooled = model.predict(x_adv) != y
    assert ThreatModel("linf", eps).within(x_adv, x, model.bounds).all()
    assert square_fooled.sum() >= 3 * random_fooled.sum(), (
        square_fooled.sum(),
        random_fooled.sum(),
    )
    assert square_fooled.float().mean() > 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_query_accounting(digits_model, norm) -> None:
    """At most queries + 1 forwards per point (the start counts one); points fooled early are
    queried less, points never fooled use the whole budget."""
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    queries = 150
    threat = ThreatModel(norm, {"linf": 0.1, "l2": 0.75}[norm])
    with model.counting(x.shape[0]) as counter:
        x_adv = create("square", queries=queries)(model, x, y, threat, generator=seeded())
    used = torch.from_numpy(counter.forward)
    fooled = model.predict(x_adv) != y
    assert counter.gradient.max() == 0
    assert used.min() >= 1 and used.max() <= queries + 1
    assert fooled.any() and (~fooled).any(), "the budget should leave a partial success"
    assert (used[~fooled] == queries + 1).all()
    assert used[fooled].max() < queries + 1


class _Constant(torch.nn.Module):
    """Always predicts class 0, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 3)
        out[:, 0] = 1.0
        return out


@pytest.mark.parametrize(
    ("name", "norm", "eps"),
    [("square", "linf", 0.1), ("square", "l2", 1.0), ("sparse-rs", "l0", 3.0)],
)
def test_fooled_point_stops_being_queried(data, name, norm, eps) -> None:
    """Points labelled 1 are misclassified by the first query: they get exactly one; points
    labelled 0 can never be fooled and get the whole budget."""
    model = Classifier(_Constant(), ModelInfo(num_classes=3, input_shape=(1, 8, 8)))
    x, _ = data
    x = x[:10]
    y = torch.tensor([0, 1] * 5)
    queries = 40
    with model.counting(10) as counter:
        create(name, queries=queries)(model, x, y, ThreatModel(norm, eps), generator=seeded())
    used = torch.from_numpy(counter.forward)
    full = queries + 1 if name == "square" else queries
    assert (used[y == 1] == 1).all()
    assert (used[y == 0] == full).all()


def test_square_restarts_only_on_unfooled_points(data) -> None:
    model = Classifier(_Constant(), ModelInfo(num_classes=3, input_shape=(1, 8, 8)))
    x, _ = data
    y = torch.tensor([0, 1] * 5)
    with model.counting(10) as counter:
        create("square", queries=20, restarts=3)(
            model, x[:10], y, ThreatModel("linf", 0.1), generator=seeded()
        )
    used = torch.from_numpy(counter.forward)
    assert (used[y == 1] == 1).all() and (used[y == 0] == 3 * 21).all()


def test_square_l2_budget_and_success(digits_model) -> None:
    """The search itself (before the base's projection) stays in the ε-ball and the box."""
    model, x, y = digits_model
    x, y = x[:100], y[:100]
    threat = ThreatModel("l2", 1.0)
    attack = create("square", queries=300)
    x_adv = attack.run(model, x, y, threat, targets=None, generator=seeded())
    assert threat.within(x_adv, x, model.bounds, tol=1e-5).all()
    assert norms(x_adv - x, "l2").max() <= 1.0 + 1e-5
    assert (model.predict(x_adv) != y).float().mean() > 0.5


def test_square_targeted_digits(digits_model) -> None:
    model, x, y = digits_model
    keep = y != 3
    x, y = x[keep][:40], y[keep][:40]
    t = torch.full_like(y, 3)
    x_adv = create("square", queries=1000)(
        model, x, y, ThreatModel("linf", 0.3, targeted=True), targets=t, generator=seeded()
    )
    assert (model.predict(x_adv) == 3).float().mean() >= 0.9


def test_sparse_rs_changes_at_most_k_pixels_at_the_bounds(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:100], y[:100]
    k = 2
    x_adv = create("sparse-rs", queries=300).run(
        model, x, y, ThreatModel("l0", k), targets=None, generator=seeded()
    )
    changed = (x_adv != x).any(1)  # a pixel counts once, whatever its channels do
    assert changed.flatten(1).sum(1).max() <= k
    values = x_adv[(x_adv != x)]
    assert ((values == 0) | (values == 1)).all()


def test_sparse_rs_rgb_pixels_and_bounds() -> None:
    """Three channels, bounds [-1, 1]: a changed pixel is a corner of the colour cube."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4))
    model = Classifier(net, ModelInfo(num_classes=4, input_shape=(3, 6, 6), bounds=(-1.0, 1.0)))
    x = torch.rand(20, 3, 6, 6, generator=seeded(3)) * 1.6 - 0.8
    y = net(x).argmax(1)
    k = 4
    x_adv = create("sparse-rs", queries=50).run(
        model, x, y, ThreatModel("l0", k), targets=None, generator=seeded()
    )
    changed = (x_adv != x).any(1)
    assert changed.flatten(1).sum(1).max() <= k
    pix = x_adv.permute(0, 2, 3, 1)[changed]  # (changed pixels, 3)
    assert ((pix == -1) | (pix == 1)).all()
    # Through the public call the base's L0 projection returns x + δ, exact up to rounding.
    out = create("sparse-rs", queries=50)(model, x, y, ThreatModel("l0", k), generator=seeded())
    moved = (out - x).abs().amax(1) > 1e-6
    assert moved.flatten(1).sum(1).max() <= k
    assert ((out.permute(0, 2, 3, 1)[moved].abs() - 1).abs() <= 1e-6).all()


def test_sparse_rs_beats_random_pixels(digits_model) -> None:
    """Random search fools far more points than the best of 10 random k-pixel corruptions."""
    model, x, y = digits_model
    x, y = x[:150], y[:150]
    n, _, h, w = x.shape
    k = 1
    g = seeded(1)
    random_fooled = torch.zeros_like(y, dtype=torch.bool)
    for _ in range(10):
        pick = torch.rand(n, h * w, generator=g).argsort(1)[:, :k]
        mask = torch.zeros(n, h * w, dtype=torch.bool).scatter(1, pick, True).view(n, 1, h, w)
        corner = (torch.rand(x.shape, generator=g) < 0.5).float()
        random_fooled |= model.predict(torch.where(mask, corner, x)) != y
    x_adv = create("sparse-rs", queries=300)(model, x, y, ThreatModel("l0", k), generator=seeded())
    fooled = model.predict(x_adv) != y
    assert fooled.sum() >= 2 * random_fooled.sum() and fooled.sum() > 0


def test_sparse_rs_targeted_digits(digits_model) -> None:
    model, x, y = digits_model
    keep = y != 3
    x, y = x[keep][:40], y[keep][:40]
    x_adv = create("sparse-rs", queries=1000)(
        model,
        x,
        y,
        ThreatModel("l0", 8, targeted=True),
        targets=torch.full_like(y, 3),
        generator=seeded(),
    )
    assert (model.predict(x_adv) == 3).float().mean() >= 0.9


def test_schedules_golden() -> None:
    # AutoAttack's standard Square: 5,000 queries, marks not rescaled.
    assert [p_schedule(i, 5000, 0.8, False) for i in (0, 10, 11, 50, 51, 201, 4001, 4999)] == [
        0.8,
        0.8,
        0.4,
        0.4,
        0.2,
        0.1,
        0.8 / 128,
        0.8 / 128,
    ]
    # Rescaled to 1,000 queries: iteration i behaves like 10·i of a 10,000 run.
    assert p_schedule(1, 1000, 0.8, True) == 0.8 and p_schedule(2, 1000, 0.8, True) == 0.4
    assert p_schedule(999, 1000, 0.8, True) == 0.8 / 512
    # Sparse-RS L0: α/2 from the first iteration on, α/20 at the end.
    assert alpha_schedule(1, 10000, 0.3) == 0.15
    assert alpha_schedule(300, 10000, 0.3) == 0.3 / 5
    assert alpha_schedule(9999, 10000, 0.3) == 0.3 / 20
    assert alpha_schedule(100, 1000, 0.3) == 0.3 / 6


def test_pyramid_profile() -> None:
    eta = pyramid(5, torch.device("cpu"))
    assert eta.shape == (5, 5)
    assert torch.isclose(eta.norm(), torch.tensor(1.0))
    assert (eta[:2] > 0).all() and (eta[2:] < 0).all()
    # Mass peaks at the centre of each half and falls off ring by ring.
    assert eta[1, 2] == eta[:2].max() and eta[3, 2] == eta[2:].min()
    assert torch.allclose(eta, eta.flip(1))


def test_square_rejects_l0_and_sparse_rs_rejects_linf(tiny, data) -> None:
    x, y = data
    with pytest.raises(ConfigError, match="supports norms"):
        create("square", queries=5)(tiny, x, y, ThreatModel("l0", 3))
    with pytest.raises(ConfigError, match="supports norms"):
        create("sparse-rs", queries=5)(tiny, x, y, ThreatModel("linf", 0.1))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("square", {"queries": 0}, "queries must be >= 1"),
        ("square", {"p_init": 0.0}, r"p_init must be in \(0, 1\]"),
        ("square", {"p_init": 1.5}, r"p_init must be in \(0, 1\]"),
        ("square", {"restarts": 0}, "restarts must be >= 1"),
        ("sparse-rs", {"queries": -3}, "queries must be >= 1"),
        ("sparse-rs", {"alpha_init": 0.0}, r"alpha_init must be in \(0, 1\]"),
        ("sparse-rs", {"restarts": 0}, "restarts must be >= 1"),
        ("sparse-rs", {"steps": 3}, "has no parameter steps"),
    ],
)
def test_validation(name, params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        create(name, **params)


def test_defaults_match_published_budgets() -> None:
    sq = create("square")
    assert (sq.queries, sq.p_init, sq.restarts, sq.rescale_schedule) == (5000, 0.8, 1, False)
    rs = create("sparse-rs")
    assert (rs.queries, rs.alpha_init, rs.restarts) == (10000, 0.3, 1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_square_rgb_non_square_images(norm, eps) -> None:
    """Three channels, a 12×17 image and bounds [-1, 1]: windows fit, the budget holds."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 17, 5))
    model = Classifier(net, ModelInfo(num_classes=5, input_shape=(3, 12, 17), bounds=(-1.0, 1.0)))
    x = torch.rand(16, 3, 12, 17, generator=seeded(2)) * 1.8 - 0.9
    y = net(x).argmax(1)
    threat = ThreatModel(norm, eps)
    x_adv = create("square", queries=60).run(model, x, y, threat, targets=None, generator=seeded())
    assert torch.isfinite(x_adv).all()
    assert threat.within(x_adv, x, model.bounds).all()
    assert (x_adv != x).any()


def test_square_needs_finite_eps(tiny, data) -> None:
    x, y = data
    with pytest.raises(ConfigError, match="finite eps"):
        create("square", queries=5)(tiny, x, y, ThreatModel("l2", float("inf")))
