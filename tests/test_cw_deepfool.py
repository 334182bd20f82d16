"""C&W L2, DeepFool and EAD: the minimal-norm gradient attacks, and the peers' bugs they avoid."""

from __future__ import annotations

import pytest
import torch

from aegis.errors import ConfigError
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel, norms

INF = float("inf")


def unbounded(norm: str, targeted: bool = False) -> ThreatModel:
    return ThreatModel(norm, INF, targeted=targeted)


def margin_to(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k≠y} z_k − z_y: > 0 means strictly misclassified (a tie is not)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], float("-inf")).amax(1) - own


def linear_model(seed: int = 0) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """A 3-class linear classifier on 8×8 inputs near 0.5, where the box never binds."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(3, 64, generator=g))
        net[1].bias.zero_()
    model = Classifier(net, ModelInfo(num_classes=3, input_shape=(1, 8, 8)))
    x = 0.5 + 0.02 * torch.randn(8, 1, 8, 8, generator=g)
    return model, x, model.predict(x)


# -- C&W --------------------------------------------------------------------------------------
def test_cw_moves_pixels_at_the_box_edges(digits_model) -> None:
    """PITFALLS (torchattacks): tanh maps pixels at exactly 0 or 1 to ±∞ and they never move.
    Digits have ~60% of their pixels at exactly 0 or 1; C&W must move some of both kinds."""
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    at_0, at_1 = x == 0, x == 1
    assert at_0.float().mean() > 0.3 and at_1.any()
    x_adv = create("cw", steps=50, search_steps=5)(model, x, y, unbounded("l2"))
    fooled = model.predict(x_adv) != y
    assert fooled.float().mean() >= 0.95
    rose = ((x_adv > 0) & at_0).flatten(1).sum(1)
    fell = ((x_adv < 1) & at_1).flatten(1).sum(1)
    assert (rose[fooled] > 0).float().mean() >= 0.9, "pixels at 0 must be able to rise"
    assert (fell[fooled] > 0).sum() >= 5, "pixels at 1 must be able to fall"


@pytest.mark.parametrize("name", ["cw", "ead"])
def test_failure_returns_the_original_input(digits_model, name) -> None:
    """PITFALLS (Foolbox): a failed point is returned as it was, never as a black image."""
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    norm = "l2" if name == "cw" else "l1"
    x_adv = create(name, steps=1, search_steps=1, initial_const=1e-6)(model, x, y, unbounded(norm))
    assert torch.equal(x_adv, x)
    assert (model.predict(x_adv) == y).all()


def test_cw_at_least_as_minimal_as_deepfool(digits_model) -> None:
    """Where both end in the same class, C&W's optimizer reaches DeepFool's distance (which is
    right on the boundary of this nearly linear MLP: a line search along DeepFool's perturbation
    shrinks it by 0.02% at the median). Untargeted C&W follows the runner-up class of the
    logits, DeepFool the closest linearized boundary among all its candidate classes; on ~40% of
    the points these differ and DeepFool's class is closer (medians 0.406 vs 0.375 on all 300
    points, 0.422 vs 0.376 on these 60), so the untargeted medians get a 15% margin."""
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    df = create("deepfool")(model, x, y, unbounded("l2"))
    cw = create("cw")(model, x, y, unbounded("l2"))
    assert (model.predict(cw) != y).all() and (model.predict(df) != y).all()
    n_df, n_cw = norms(df - x, "l2"), norms(cw - x, "l2")
    same = model.predict(cw) == model.predict(df)
    assert same.sum() >= 20
    assert (n_cw / n_df)[same].median() <= 1.01
    assert n_cw.median() <= 1.15 * n_df.median()


def test_cw_on_a_linear_model_finds_the_closest_boundary() -> None:
    """For z = Wx the smallest L2 perturbation is min_k (z_y − z_k)/‖w_k − w_y‖₂."""
    model, x, y = linear_model()
    w = model.module[1].weight  # type: ignore[index]
    z = model.logits(x)
    diff = w[None, :, :] - w[y][:, None, :]  # (n, classes, 64)
    gap = (z.gather(1, y[:, None]) - z).clamp_min(0)
    dist = gap / diff.norm(dim=2).clamp_min(1e-12)
    dist = dist.scatter(1, y[:, None], INF).amin(1)
    x_adv = create("cw")(model, x, y, unbounded("l2"))
    size = norms(x_adv - x, "l2")
    assert (model.predict(x_adv) != y).all()
    assert (size >= dist * (1 - 1e-4)).all() and (size <= dist * 1.03).all()


def test_cw_confidence(digits_model) -> None:
    """With kappa, what C&W returns is misclassified by a margin of at least kappa."""
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    x_adv = create("cw", kappa=2.0, steps=50)(model, x, y, unbounded("l2"))
    m = margin_to(model.logits(x_adv), y)
    assert (m >= 2.0 - 1e-4).float().mean() >= 0.95
    failed = m < 2.0 - 1e-4
    assert torch.equal(x_adv[failed], x[failed]), "a point not fooled with margin kappa is x"


@pytest.mark.parametrize(("name", "norm"), [("cw", "l2"), ("ead", "l1")])
def test_targeted_reaches_the_target_on_digits(digits_model, name, norm) -> None:
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    t = (y + 1) % 10
    x_adv = create(name, steps=50)(model, x, y, unbounded(norm, targeted=True), targets=t)
    assert (model.predict(x_adv) == t).float().mean() >= 0.95


def test_finite_budget_keeps_the_verdict(digits_model) -> None:
    """With a finite eps C&W stops a point once fooled within eps; the verdict is unchanged."""
    model, x, y = digits_model
    x, y = x[:30], y[:30]
    attack = create("cw", steps=50, search_steps=5)
    free = norms(attack(model, x, y, unbounded("l2")) - x, "l2")
    eps = free.median().item()
    x_adv = attack(model, x, y, ThreatModel("l2", eps))
    fooled = model.predict(x_adv) != y
    assert fooled[free <= eps * (1 - 1e-4)].all()


# -- EAD --------------------------------------------------------------------------------------
def test_ead_is_sparser_than_cw(digits_model) -> None:
    """EAD's L1 term: smaller L1 and fewer changed coordinates than C&W, at equal budgets."""
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    cw = create("cw", steps=50)(model, x, y, unbounded("l2"))
    ead = create("ead", steps=50)(model, x, y, unbounded("l1"))
    assert (model.predict(ead) != y).float().mean() >= 0.95
    assert norms(ead - x, "l1").median() < norms(cw - x, "l1").median()
    changed_ead = (ead != x).flatten(1).sum(1).float()
    changed_cw = (cw != x).flatten(1).sum(1).float()
    assert changed_ead.median() < 0.5 * changed_cw.median()


def test_ead_shrinkage_golden() -> None:
    from aegis.attacks.ead import shrink

    x = torch.tensor([0.5, 0.5, 0.5, 0.0, 1.0])
    z = torch.tensor([0.52, 0.505, 0.47, -0.3, 1.4])
    out = shrink(z, x, 0.01, 0.0, 1.0)
    assert torch.allclose(out, torch.tensor([0.51, 0.5, 0.48, 0.0, 1.0]))


# -- DeepFool ---------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_crosses_on_digits(digits_model, norm) -> None:
    """PITFALLS (torchattacks): overshoot on the total perturbation and a final check, so no
    point stalls with its top-2 logits tied to the true class."""
    model, x, y = digits_model
    x_adv = create("deepfool")(model, x, y, unbounded(norm))
    m = margin_to(model.logits(x_adv), y)
    moved = (x_adv != x).flatten(1).any(1)
    assert (m > 0).float().mean() >= 0.95
    assert (m[moved] > 0).all(), "every point DeepFool moved must be strictly misclassified"


def test_deepfool_linear_golden() -> None:
    """On a linear model one step reaches the closest boundary: x + (1 + overshoot)·r with
    r = (|f_k|/‖w_k‖₂ + 10⁻⁴)·w_k/‖w_k‖₂ for the closest class k (the paper's Algorithm 2)."""
    model, x, y = linear_model()
    w = model.module[1].weight  # type: ignore[index]
    z = model.logits(x)
    expected = []
    for i in range(x.shape[0]):
        best = None
        for k in range(3):
            if k == y[i]:
                continue
            wk = w[k] - w[y[i]]
            d = (z[i, y[i]] - z[i, k]).abs() / wk.norm()
            if best is None or d < best[0]:
                best = (d, wk)
        assert best is not None
        d, wk = best
        r = (d + 1e-4) * wk / wk.norm()
        expected.append(x[i] + 1.02 * r.view(1, 8, 8))
    x_adv = create("deepfool", overshoot=0.02)(model, x, y, unbounded("l2"))
    assert torch.allclose(x_adv, torch.stack(expected), atol=1e-5)


def test_deepfool_attacks_away_from_the_true_label(digits_model) -> None:
    """PITFALLS (ART): the given label counts, not the prediction; a misclassified input is
    reported as it is, not pushed back to its true class."""
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    wrong = create("deepfool")(model, x, y, unbounded("l2"))
    assert (model.predict(wrong) != y).all()
    again = create("deepfool")(model, wrong, y, unbounded("l2"))
    assert torch.equal(again, wrong)
    assert (model.predict(again) != y).all()


def test_deepfool_is_batched(digits_model) -> None:
    """One value_and_grad call per step for the whole batch, not one per image."""
    model, x, y = digits_model
    calls: list[int] = []
    counted = Classifier(model.module, model.info)
    inner = counted.value_and_grad

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return inner(*args, **kwargs)

    counted.value_and_grad = wrapper  # type: ignore[method-assign]
    attack = create("deepfool", steps=50)
    attack(counted, x[:1], y[:1], unbounded("l2"))
    one = len(calls)
    calls.clear()
    with counted.counting(x.shape[0]) as counter:
        attack(counted, x, y, unbounded("l2"))
    assert 1 <= one <= len(calls) <= 50 < x.shape[0]  # at most `steps` calls
    # Per sample: one gradient per candidate class (9) and step, counted on its own row.
    assert (counter.gradient % 9 == 0).all() and counter.gradient.min() >= 9


def test_deepfool_rejects_targets(digits_model) -> None:
    model, x, y = digits_model
    with pytest.raises(ConfigError, match="untargeted"):
        create("deepfool")(model, x[:2], y[:2], unbounded("l2"), targets=(y[:2] + 1) % 10)
    with pytest.raises(ConfigError, match="supports norms"):
        create("deepfool")(model, x[:2], y[:2], unbounded("l1"))


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("cw", {"steps": 0}, "steps must be >= 1"),
        ("cw", {"search_steps": 0}, "search_steps must be >= 1"),
        ("cw", {"initial_const": 0.0}, "initial_const must be > 0"),
        ("cw", {"kappa": -1.0}, "kappa must be >= 0"),
        ("cw", {"step_size": 0.0}, "step_size must be > 0"),
        ("ead", {"beta": -0.1}, "beta must be >= 0"),
        ("ead", {"step_size": -1.0}, "step_size must be > 0"),
        ("ead", {"search_steps": 0}, "search_steps must be >= 1"),
        ("deepfool", {"steps": 0}, "steps must be >= 1"),
        ("deepfool", {"candidates": 1}, "candidates must be >= 2"),
        ("deepfool", {"overshoot": -0.1}, "overshoot must be >= 0"),
    ],
)
def test_impossible_parameters(name, params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        create(name, **params)
