"""Sparse attacks: l1-APGD, PGD₀ (pgd-l0) and JSMA, on the 10-class digits MLP."""

from __future__ import annotations

import pytest
import torch

from aegis.attacks.apgd import l1_stages, sparse_direction
from aegis.attacks.jsma import best_pair, best_single
from aegis.errors import ConfigError
from aegis.registry import create
from aegis.threat import ThreatModel, norms


def _acc(model, x_adv, y) -> float:
    return float((model.predict(x_adv) == y).float().mean())


@pytest.fixture(scope="module")
def digits100(digits_model):
    model, x, y = digits_model
    return model, x[:100], y[:100]


# -- l1-APGD --------------------------------------------------------------------------------


def test_l1_stages_golden() -> None:
    """AutoAttack's 3ε/2ε/ε schedule: ⌈0.3·N⌉ steps twice, the rest at ε; never an empty
    last stage."""
    assert l1_stages(100, True) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert l1_stages(10, True) == [(3.0, 3), (2.0, 3), (1.0, 4)]
    assert l1_stages(4, True) == [(3.0, 1), (2.0, 1), (1.0, 2)]
    assert l1_stages(2, True) == [(1.0, 2)]
    assert l1_stages(50, False) == [(1.0, 50)]


def test_sparse_direction_per_point_share() -> None:
    grad = torch.tensor([[0.1, -0.4, 0.3, 0.2], [0.5, -0.1, 0.2, -0.3]]).view(2, 1, 2, 2)
    d = sparse_direction(grad, torch.tensor([0.5, 0.75])).view(2, 4)
    # Point 0: the two largest |g|; point 1: three, each 1/3 of the unit L1 step.
    assert torch.allclose(d[0], torch.tensor([0.0, -0.5, 0.5, 0.0]))
    assert torch.allclose(d[1], torch.tensor([1 / 3, 0.0, 1 / 3, -1 / 3]))
    # A share of 0 still moves one coordinate.
    one = sparse_direction(grad, torch.zeros(2)).view(2, 4)
    assert torch.equal(one.abs().sum(1), torch.ones(2)) and one[0, 1] == -1


def test_l1_apgd_stronger_than_fixed_sparsity_pgd_and_fgsm(digits100) -> None:
    """At equal steps, the adaptive sparsity and step size beat PGD's fixed 1% sparse step
    (measured: 6% vs 9% robust accuracy; FGSM 53%)."""
    model, x, y = digits100
    threat = ThreatModel("l1", 2.0)

    def acc(name: str, **params: int) -> float:
        x_adv = create(name, **params)(
            model, x, y, threat, generator=torch.Generator().manual_seed(0)
        )
        assert threat.within(x_adv, x, model.bounds).all()
        return _acc(model, x_adv, y)

    apgd, pgd, fgsm = acc("apgd-ce", steps=20), acc("pgd", steps=20), acc("fgsm")
    assert 0 < pgd < fgsm, "the budget should leave PGD a partial success"
    assert apgd < pgd
    assert acc("apgd-ce", steps=20, large_eps=False) < fgsm


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_l1_apgd_within_ball_and_box(digits100, name) -> None:
    model, x, y = digits100
    x, y = x[:40], y[:40]
    threat = ThreatModel("l1", 1.5)
    x_adv = create(name, steps=10)(model, x, y, threat, generator=torch.Generator().manual_seed(1))
    size = norms(x_adv - x, "l1")
    assert (size <= 1.5 * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert size.max() > 0.5, "the attack should use its budget"
    assert _acc(model, x_adv, y) < 0.9


def test_l1_apgd_targeted(digits100) -> None:
    model, x, y = digits100
    keep = y != 3
    x, y = x[keep][:40], y[keep][:40]
    t = torch.full_like(y, 3)
    x_adv = create("apgd-ce", steps=20)(
        model,
        x,
        y,
        ThreatModel("l1", 6.0, targeted=True),
        targets=t,
        generator=torch.Generator().manual_seed(0),
    )
    assert (model.predict(x_adv) == 3).float().mean() >= 0.9


# -- PGD₀ -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
def test_pgd_l0_sparse_and_stronger_than_random_pixels(digits100, k) -> None:
    """Measured: 6% / 1% robust accuracy at 3 / 5 pixels, vs 80% / 62% for k random pixels."""
    model, x, y = digits100
    threat = ThreatModel("l0", k)
    x_adv = create("pgd-l0", steps=20, restarts=1)(
        model, x, y, threat, generator=torch.Generator().manual_seed(0)
    )
    assert norms(x_adv - x, "l0").max() <= k
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    corrupted = threat.project(noise, x, model.bounds)  # k pixels set to random values
    assert _acc(model, x_adv, y) + 0.3 < _acc(model, corrupted, y)


def test_pgd_l0_targeted_and_counts(digits100) -> None:
    model, x, y = digits100
    x, y = x[:40], y[:40]
    t = (y + 1) % 10
    with model.counting(x.shape[0]) as counter:
        x_adv = create("pgd-l0", steps=20, restarts=2)(
            model,
            x,
            y,
            ThreatModel("l0", 10, targeted=True),
            targets=t,
            generator=torch.Generator().manual_seed(0),
        )
    assert (model.predict(x_adv) == t).float().mean() >= 0.9
    assert norms(x_adv - x, "l0").max() <= 10
    # Fooled points leave the batch: nobody takes more than steps × restarts gradients.
    assert counter.gradient.max() <= 40 and counter.gradient.min() >= 1


# -- JSMA -------------------------------------------------------------------------------------


def test_jsma_saliency_choice() -> None:
    alpha = torch.tensor([[0.5, 0.2, -0.1, 0.9]])
    beta = torch.tensor([[-0.5, -0.1, -1.0, 0.3]])
    domain = torch.tensor([[True, True, True, True]])
    p, q, ok = best_pair(alpha, beta, domain)
    # (0, 2): α = 0.4, β = −1.5 → 0.6 beats (2, 3) 0.56, (0, 1) 0.42, (0, 3) 0.28, (1, 2) 0.11.
    assert ok.item() and {p.item(), q.item()} == {0, 2}
    domain[0, 2] = False
    p, q, ok = best_pair(alpha, beta, domain)
    assert ok.item() and {p.item(), q.item()} == {0, 1}
    s, ok = best_single(alpha, beta, domain)
    assert ok.item() and s.item() == 0
    _, _, ok = best_pair(alpha, torch.ones_like(beta), domain)
    assert not ok.item(), "no pair lowers the other classes: nothing is admissible"


def test_jsma_targeted_reaches_target_within_budget(digits100) -> None:
    """Measured on 100 points, target y + 1: 48% / 72% / 89% at 4 / 8 / 16 pixels."""
    model, x, y = digits100
    t = (y + 1) % 10
    hits = []
    for k in (4, 8, 16):
        threat = ThreatModel("l0", k, targeted=True)
        with model.counting(x.shape[0]) as counter:
            x_adv = create("jsma")(model, x, y, threat, targets=t)
        assert norms(x_adv - x, "l0").max() <= k
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        # Increasing pixels only (θ = +1).
        assert (x_adv >= x).all()
        # Two gradient calls per pair, one more to check the last: at most k + 1 per point.
        assert counter.gradient.max() <= k + 1
        hits.append(float((model.predict(x_adv) == t).float().mean()))
    assert hits[-1] >= 0.8
    assert hits == sorted(hits), f"a larger budget must not lower success: {hits}"


def test_jsma_untargeted_and_gamma(digits100) -> None:
    model, x, y = digits100
    threat = ThreatModel("l0", 10)
    one = create("jsma")(model, x, y, threat)
    three = create("jsma", target_classes=3)(model, x, y, threat)
    assert _acc(model, one, y) < 0.2
    assert _acc(model, three, y) <= _acc(model, one, y)
    assert norms(three - x, "l0").max() <= 10
    capped = create("jsma", gamma=4 / 64)(model, x, y, threat)  # at most 4 of 64 pixels
    assert norms(capped - x, "l0").max() <= 4
    lowered = create("jsma", theta=-1.0)(model, x, y, threat)
    assert (lowered <= x).all()


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("jsma", {"theta": 0.0}, "theta must be in"),
        ("jsma", {"theta": 1.5}, "theta must be in"),
        ("jsma", {"gamma": 0.0}, r"gamma must be in \(0, 1\]"),
        ("jsma", {"target_classes": 0}, "target_classes must be >= 1"),
        ("pgd-l0", {"steps": 0}, "steps must be >= 1"),
        ("pgd-l0", {"step_size": -1.0}, "step_size must be > 0"),
        ("pgd-l0", {"restarts": 0}, "restarts must be >= 1"),
        ("apgd-ce", {"steps": 0}, "steps must be >= 1"),
    ],
)
def test_impossible_parameters(name, params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        create(name, **params)


@pytest.mark.parametrize("name", ["pgd-l0", "jsma"])
def test_l0_attacks_refuse_other_norms(tiny, data, name) -> None:
    x, y = data
    with pytest.raises(ConfigError, match="supports norms l0"):
        create(name)(tiny, x, y, ThreatModel("linf", 0.1))
