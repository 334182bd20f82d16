"""FAB and FAB-T: the hyperplane ∩ box projection, strength, budgets, call counts, validation."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from aegis.attacks.fab import FABT, project_hyperplane_box
from aegis.errors import ConfigError
from aegis.registry import create, list_ensembles
from aegis.threat import ThreatModel, norms


def _optimum(p: np.ndarray, w: np.ndarray, c: float, lo: float, hi: float, norm: str) -> float:
    """min ‖d‖ s.t. w·d = c, lo ≤ p + d ≤ hi, by scipy (LPs for linf / l1, SLSQP for l2)."""
    n = p.size
    box = [(lo - v, hi - v) for v in p]
    if norm == "linf":  # variables (d, τ)
        a_ub = np.r_[np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)]]
        r = linprog(
            np.r_[np.zeros(n), 1.0],
            A_ub=a_ub,
            b_ub=np.zeros(2 * n),
            A_eq=np.r_[w, 0.0][None],
            b_eq=[c],
            bounds=[*box, (0, None)],
        )
    elif norm == "l1":  # d = u − v, u, v ≥ 0
        r = linprog(
            np.ones(2 * n),
            A_eq=np.r_[w, -w][None],
            b_eq=[c],
            bounds=[(0, hi - v) for v in p] + [(0, v - lo) for v in p],
        )
    else:
        r = minimize(
            lambda d: d @ d,
            np.zeros(n),
            jac=lambda d: 2 * d,
            constraints=[{"type": "eq", "fun": lambda d: w @ d - c, "jac": lambda d: w}],
            bounds=box,
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
    assert r.success
    return float(np.sqrt(r.fun) if norm == "l2" else r.fun)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_matches_scipy(norm) -> None:
    """Feasible cases (the hyperplane meets the box, here [−1, 2]): on the hyperplane, in the
    box, and exactly as short as the convex solver's optimum; some weights are zero."""
    g = torch.Generator().manual_seed(0)
    lo, hi = -1.0, 2.0
    for trial in range(25):
        p = torch.rand(1, 7, generator=g, dtype=torch.float64) * 3 - 1
        w = torch.randn(1, 7, generator=g, dtype=torch.float64)
        if trial % 3 == 0:
            w[0, :2] = 0
        inside = torch.rand(1, 7, generator=g, dtype=torch.float64) * 3 - 1
        b = (w * inside).sum(1)
        d = project_hyperplane_box(p, w, b, norm, (lo, hi))
        assert torch.allclose((w * (p + d)).sum(1), b, atol=1e-10)
        assert ((p + d) >= lo - 1e-12).all() and ((p + d) <= hi + 1e-12).all()
        assert (d[w == 0] == 0).all()
        c = float(b.item() - (w * p).sum().item())
        best = _optimum(p[0].numpy(), w[0].numpy(), c, lo, hi, norm)
        assert norms(d, norm).item() == pytest.approx(best, abs=1e-7)


def test_projection_by_hand() -> None:
    """p = (0.9, 0.5), w = (1, 1), b = 1.8 in [0, 1]²: the unconstrained L2 / L∞ step (0.2, 0.2)
    would leave the box, so the first coordinate stops at 1 and the second makes up the rest:
    (0.1, 0.3). L1 moves 0.4 in total. When b is out of the box's reach, every coordinate goes to
    the bound that helps."""
    p, w = torch.tensor([[0.9, 0.5]]), torch.tensor([[1.0, 1.0]])
    for norm in ("l2", "linf"):
        d = project_hyperplane_box(p, w, torch.tensor([1.8]), norm, (0.0, 1.0))
        assert torch.allclose(d, torch.tensor([[0.1, 0.3]]), atol=1e-6)
    d = project_hyperplane_box(p, w, torch.tensor([1.8]), "l1", (0.0, 1.0))
    assert d.abs().sum().item() == pytest.approx(0.4, abs=1e-6)
    assert ((p + d) <= 1 + 1e-7).all()
    # Already on the hyperplane: no step. Out of reach (w·z ≤ 2 in the box): the corner.
    for norm in ("l2", "linf", "l1"):
        on = project_hyperplane_box(p, w, torch.tensor([1.4]), norm, (0.0, 1.0))
        assert on.abs().max() < 1e-6
        d = project_hyperplane_box(p, -w, torch.tensor([-5.0]), norm, (0.0, 1.0))
        assert torch.allclose(p + d, torch.ones(1, 2))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fab_as_small_as_pgd_bisection(digits_model, norm) -> None:
    """Unbounded FAB fools every point, and its median norm is at most 1.05× the smallest ε at
    which PGD-50 fools half the points: PGD at ε = median / 1.05 must fool fewer than half
    (PGD's success grows with ε, so this is the bisection's verdict without the bisection)."""
    model, x, y = digits_model
    x, y = x[:80], y[:80]
    gen = torch.Generator().manual_seed(0)
    x_adv = create("fab", steps=20)(model, x, y, ThreatModel(norm, float("inf")), generator=gen)
    assert (model.predict(x_adv) != y).float().mean() >= 0.99
    median = norms(x_adv - x, norm).median().item()
    threat = ThreatModel(norm, median / 1.05)
    pgd = create("pgd", steps=50)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert (model.predict(pgd) != y).float().mean() < 0.5


def test_fab_t_not_weaker_than_one_target(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    threat = ThreatModel("linf", 0.08)

    def acc(target_classes: int) -> float:
        x_adv = create("fab-t", steps=10, target_classes=target_classes)(
            model, x, y, threat, generator=torch.Generator().manual_seed(0)
        )
        return (model.predict(x_adv) == y).float().mean().item()

    one, nine = acc(1), acc(9)
    assert 0 < one < 1, "the budget should leave FAB-T a partial success"
    assert nine <= one


def test_calls_per_step(digits_model) -> None:
    """FAB: K − 1 = 9 gradient rows (one call on the repeated batch) and one forward per point
    and step; targeted FAB: one gradient row and one forward."""
    model, x, y = digits_model
    x, y = x[:5], y[:5]
    unbounded = ThreatModel("l2", float("inf"))
    with model.counting(5) as counter:
        create("fab", steps=3)(model, x, y, unbounded)
    assert (counter.gradient == 27).all() and (counter.forward == 3).all()
    with model.counting(5) as counter:
        create("fab", steps=3)(model, x, y, unbounded, targets=(y + 1) % 10)
    assert (counter.gradient == 3).all() and (counter.forward == 3).all()


def test_restarts_only_shrink_unbounded_norms(digits_model) -> None:
    """The first run starts at x (deterministic); random restarts, at half the best norm found,
    can only replace a point's adversarial with a smaller one."""
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    unbounded = ThreatModel("l2", float("inf"))
    one = create("fab", steps=10)(model, x, y, unbounded)
    three = create("fab", steps=10, restarts=3)(
        model, x, y, unbounded, generator=torch.Generator().manual_seed(0)
    )
    assert (model.predict(three) != y).all()
    assert (norms(three - x, "l2") <= norms(one - x, "l2") + 1e-6).all()


def test_targeted_fab_on_ten_classes(digits_model) -> None:
    """With targets, the boundary is the target against its strongest rival, so the target
    (not merely some other class) is reached, at the smallest norm found."""
    model, x, y = digits_model
    keep = y != 3
    x, y = x[keep][:40], y[keep][:40]
    t = torch.full_like(y, 3)
    for name in ("fab", "fab-t"):
        x_adv = create(name, steps=30)(
            model, x, y, ThreatModel("l2", float("inf"), targeted=True), targets=t
        )
        assert (model.predict(x_adv) == 3).float().mean() >= 0.95


def test_misclassified_point_is_its_own_minimal_adversarial(digits_model) -> None:
    model, x, y = digits_model
    wrong = (y[:4] + 1) % 10
    x_adv = create("fab", steps=5)(model, x[:4], wrong, ThreatModel("linf", float("inf")))
    assert torch.equal(x_adv, x[:4])


def test_fab_t_defaults_are_autoattack_standard() -> None:
    """AutoAttack's standard FAB-T: 100 steps, 1 restart, 9 targets, α_max 0.1, η 1.05, β 0.9."""
    defaults = {f.name: f.default for f in fields(FABT)}
    assert defaults == {
        "steps": 100,
        "restarts": 1,
        "alpha_max": 0.1,
        "eta": 1.05,
        "beta": 0.9,
        "target_classes": 9,
    }
    (standard,) = [s for s in list_ensembles() if s.name == "standard"]
    for members in standard.members.values():
        assert dict(members)["fab-t"] == {"steps": 100, "restarts": 1, "target_classes": 9}


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fab", {"steps": 0}, "steps must be >= 1"),
        ("fab", {"restarts": 0}, "restarts must be >= 1"),
        ("fab", {"alpha_max": 1.5}, r"alpha_max must be in \[0, 1\]"),
        ("fab", {"eta": 0.9}, "eta must be >= 1"),
        ("fab-t", {"beta": 1.0}, r"beta must be in \(0, 1\)"),
        ("fab-t", {"target_classes": 0}, "target_classes must be >= 1"),
        ("fab", {"target_classes": 3}, "has no parameter target_classes"),
    ],
)
def test_invalid_parameters(name, params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        create(name, **params)


def test_l0_refused(digits_model) -> None:
    model, x, y = digits_model
    with pytest.raises(ConfigError, match="supports norms"):
        create("fab")(model, x[:2], y[:2], ThreatModel("l0", 3))
