"""Registry-driven tests: every registered attack, every norm it supports."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.attacks.base import is_adversarial
from aegis.errors import CapabilityError, ConfigError, DataError
from aegis.model import Classifier, ModelInfo
from aegis.registry import create, get_spec, list_attacks
from aegis.threat import ThreatModel, norms

EPS = {"linf": 0.3, "l2": 2.0, "l1": 8.0, "l0": 6.0}  # l0 counts changed pixels
TARGETED_EPS = {"linf": 0.6, "l2": 5.0, "l1": 25.0, "l0": 40.0}
CASES = [(s.name, norm) for s in list_attacks() for norm in s.norms]
MINIMAL = [c for c in CASES if get_spec(c[0]).minimal and get_spec(c[0]).needs_gradients]
BLACK_BOX = [c for c in CASES if not get_spec(c[0]).needs_gradients]


def fast(name: str) -> dict[str, int]:
    """Small budgets so the registry-wide tests run in seconds."""
    params = get_spec(name).parameters()
    out = {"steps": 10} if "steps" in params else {}
    if "queries" in params:
        out["queries"] = 200
    if "search_steps" in params:
        out["search_steps"] = 3
    return out


@pytest.mark.parametrize(("name", "norm"), CASES)
@settings(max_examples=8, deadline=None)
@given(eps_scale=st.floats(0.0, 1.5), seed=st.integers(0, 2**16))
def test_budget_and_box_respected(tiny_net, data, name, norm, eps_scale, seed) -> None:
    model = Classifier(tiny_net, ModelInfo(num_classes=3, input_shape=(1, 8, 8)))
    x, y = data
    threat = ThreatModel(norm, EPS[norm] * eps_scale)
    x_adv = create(name, **fast(name))(
        model, x, y, threat, generator=torch.Generator().manual_seed(seed)
    )
    assert x_adv.shape == x.shape
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert threat.within(x_adv, x, model.bounds).all()


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_inputs_not_mutated_and_eps0_identity(tiny, data, name, norm) -> None:
    x, y = data
    x0, y0 = x.clone(), y.clone()
    attack = create(name, **fast(name))
    attack(tiny, x, y, ThreatModel(norm, EPS[norm]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    same = attack(tiny, x, y, ThreatModel(norm, 0.0))
    assert torch.equal(same, x)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_reproducible_with_seed(tiny, data, name, norm) -> None:
    x, y = data
    attack = create(name, **fast(name))
    threat = ThreatModel(norm, EPS[norm])
    a = attack(tiny, x, y, threat, generator=torch.Generator().manual_seed(7))
    b = attack(tiny, x, y, threat, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "norm"),
    [c for c in CASES if get_spec(c[0]).targeted and c[0] not in ("fgsm", "apgd-dlr")],
)  # targeted DLR needs >= 4 classes: tested on a 10-class model below
def test_targeted_reaches_target(tiny, data, name, norm) -> None:
    x, y = data
    target = 2
    keep = y != target
    x, y = x[keep], y[keep]
    threat = ThreatModel(norm, TARGETED_EPS[norm], targeted=True)
    params = {"steps": 60} if "steps" in get_spec(name).parameters() else {}
    if "queries" in get_spec(name).parameters():
        params["queries"] = 2000
    if "sparsity" in get_spec(name).parameters() and norm == "l1":
        params["sparsity"] = 0.9
    x_adv = create(name, **params)(
        tiny,
        x,
        y,
        threat,
        targets=torch.full_like(y, target),
        generator=torch.Generator().manual_seed(0),
    )
    hit = (tiny.predict(x_adv) == target).float().mean().item()
    assert hit >= 0.95, f"{name}/{norm} reached the target on only {hit:.0%}"


class _Recorder(torch.nn.Module):
    """Wraps a network and keeps every input it is asked about."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out: torch.Tensor = self.net(x)
        return out


@pytest.mark.parametrize(("name", "norm"), MINIMAL)
def test_minimal_norm_returns_smallest_successful_iterate(tiny_net, data, name, norm) -> None:
    """Run unbounded on one point at a time: of every input the attack evaluated that fooled
    the model, none is closer to x than what the attack returns."""
    x, y = data
    for i in range(4):
        rec = _Recorder(tiny_net)
        model = Classifier(rec, ModelInfo(num_classes=3, input_shape=(1, 8, 8)))
        xi, yi = x[i : i + 1], y[i : i + 1]
        x_adv = create(name, **fast(name))(
            model,
            xi,
            yi,
            ThreatModel(norm, float("inf")),
            generator=torch.Generator().manual_seed(0),
        )
        with torch.no_grad():
            fooled = tiny_net(x_adv).argmax(1) != yi
        seen = torch.cat(rec.seen)
        with torch.no_grad():  # decisively adversarial, as the attacks count it
            adv_seen = seen[is_adversarial(tiny_net(seen), yi.expand(seen.shape[0]), None)]
        if not fooled.item():
            assert torch.equal(x_adv, xi) or adv_seen.shape[0] == 0, (
                f"{name}/{norm} evaluated an adversarial input but returned a failure"
            )
            continue
        size = norms(x_adv - xi, norm).item()
        smallest = norms(adv_seen - xi, norm).min().item()
        assert size <= smallest * (1 + 1e-4) + 1e-6, f"{name}/{norm}: {size} > {smallest}"


@pytest.mark.parametrize(("name", "norm"), BLACK_BOX)
def test_black_box_runs_on_query_only_model(tiny_net, data, name, norm) -> None:
    """A model with no gradients (numpy in, numpy out); queries are counted per sample."""
    info = ModelInfo(num_classes=3, input_shape=(1, 8, 8))

    def query(a):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return tiny_net(torch.from_numpy(a)).numpy()

    model = Classifier(None, info, query_fn=query)
    x, y = data
    threat = ThreatModel(norm, TARGETED_EPS[norm])
    with model.counting(x.shape[0]) as counter:
        x_adv = create(name, **fast(name))(
            model, x, y, threat, generator=torch.Generator().manual_seed(0)
        )
    assert threat.within(x_adv, x, model.bounds).all()
    assert (model.predict(x_adv) != y).float().mean() >= 0.5
    assert counter.forward.min() >= 1


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_iterative_not_weaker_than_fgsm(tiny, data, norm) -> None:
    x, y = data
    threat = ThreatModel(norm, {"linf": 0.25, "l2": 1.5, "l1": 6.0}[norm])
    fgsm_acc = (tiny.predict(create("fgsm")(tiny, x, y, threat)) == y).float().mean()
    names = ["bim", "pgd", "mifgsm", "apgd-ce"]
    for name in names:
        x_adv = create(name, steps=20)(
            tiny, x, y, threat, generator=torch.Generator().manual_seed(0)
        )
        acc = (tiny.predict(x_adv) == y).float().mean()
        assert acc <= fgsm_acc + 1e-9, f"{name}/{norm}: {acc:.2f} > fgsm {fgsm_acc:.2f}"


def test_pgd_restarts_never_weaker(tiny, data) -> None:
    x, y = data
    threat = ThreatModel("linf", 0.2)
    one = create("pgd", steps=5)(tiny, x, y, threat, generator=torch.Generator().manual_seed(0))
    three = create("pgd", steps=5, restarts=3)(
        tiny, x, y, threat, generator=torch.Generator().manual_seed(0)
    )
    assert (tiny.predict(three) != y).sum() >= (tiny.predict(one) != y).sum()


def test_parameter_free_model(param_free, data) -> None:
    x, y = data
    x_adv = create("pgd", steps=20)(
        param_free, x, y, ThreatModel("linf", 0.5), generator=torch.Generator().manual_seed(0)
    )
    assert (param_free.predict(x_adv) != y).float().mean() > 0.9


def test_l1_steps_are_sparse(tiny, data) -> None:
    x, y = data
    x_adv = create("fgsm", sparsity=0.95)(tiny, x, y, ThreatModel("l1", 100.0))
    changed = ((x_adv - x).abs().flatten(1) > 0).sum(1)
    assert changed.max() <= round(0.05 * 64)


def test_gradients_refused_on_query_only(data) -> None:
    info = ModelInfo(num_classes=3, input_shape=(1, 8, 8))
    model = Classifier(None, info, query_fn=lambda a: a.reshape(a.shape[0], -1)[:, :3])
    x, y = data
    with pytest.raises(CapabilityError, match="query-only"):
        create("pgd")(model, x, y, ThreatModel("linf", 0.1))


def test_bad_calls(tiny, data) -> None:
    x, y = data
    pgd = create("pgd")
    with pytest.raises(DataError, match="NaN"):
        pgd(tiny, x.clone().fill_(float("nan")), y, ThreatModel())
    with pytest.raises(DataError, match="outside"):
        pgd(tiny, x * 3, y, ThreatModel())
    with pytest.raises(DataError, match="shape"):
        pgd(tiny, x[:, :, :4], y, ThreatModel())
    with pytest.raises(DataError, match=r"\[0, 2\]"):
        pgd(tiny, x, y + 5, ThreatModel())
    with pytest.raises(ConfigError, match="no targets"):
        pgd(tiny, x, y, ThreatModel(targeted=True))
    with pytest.raises(ConfigError, match="supports norms"):
        pgd(tiny, x, y, ThreatModel("l0", 3))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("pgd", {"steps": 0}, "steps must be >= 1"),
        ("pgd", {"step_size": -1.0}, "step_size must be > 0"),
        ("pgd", {"restarts": 0}, "restarts must be >= 1"),
        ("mifgsm", {"decay": -0.5}, "decay must be >= 0"),
        ("bim", {"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
        ("pgd", {"stepz": 3}, "has no parameter stepz"),
        ("pgdd", {}, "did you mean 'pgd'"),
    ],
)
def test_impossible_parameters(name, params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        create(name, **params)


def test_negative_eps() -> None:
    with pytest.raises(ConfigError, match="eps must be a number >= 0"):
        ThreatModel("linf", -0.1)


def test_no_parameter_gradients_and_eval_mode(data) -> None:
    """PITFALLS: attacks differentiate w.r.t. the input only; a model in training mode is fixed."""
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3)
    )
    net.train()
    with pytest.warns(UserWarning, match="training mode"):
        model = Classifier(net, ModelInfo(num_classes=3, input_shape=(1, 8, 8)))
    assert not net.training
    x, y = data
    create("pgd", steps=3)(model, x, y, ThreatModel("linf", 0.1))
    assert all(p.grad is None for p in net.parameters())
    a, b = model.logits(x), model.logits(x)
    assert torch.equal(a, b), "dropout must be off during attacks"


def test_apgd_checkpoints_golden() -> None:
    from aegis.attacks.apgd import checkpoints

    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_strength(digits_model, norm) -> None:
    """APGD-CE is not weaker than PGD at equal steps; APGD-DLR is not weaker than FGSM.

    DLR is a different loss, not a stronger one on every model (on this MLP it leaves ~3 points
    more accuracy than CE at L∞): that is why the standard ensemble runs both.
    """
    model, x, y = digits_model
    threat = ThreatModel(norm, {"linf": 0.08, "l2": 0.6}[norm])

    def acc(name: str, **params: int) -> float:
        x_adv = create(name, **params)(
            model, x, y, threat, generator=torch.Generator().manual_seed(0)
        )
        return (model.predict(x_adv) == y).float().mean().item()

    pgd, fgsm = acc("pgd", steps=50), acc("fgsm")
    assert 0 < pgd < 1, "the budget should leave PGD a partial success"
    assert acc("apgd-ce", steps=50) <= pgd
    assert acc("apgd-dlr", steps=50) <= fgsm


def test_apgd_dlr_targeted_and_class_count(digits_model, tiny, data) -> None:
    model, x, y = digits_model
    keep = y != 3
    threat = ThreatModel("linf", 0.3, targeted=True)
    t = torch.full_like(y[keep], 3)
    x_adv = create("apgd-dlr", steps=50)(
        model, x[keep], y[keep], threat, targets=t, generator=torch.Generator().manual_seed(0)
    )
    assert (model.predict(x_adv) == 3).float().mean() >= 0.95
    xs, ys = data
    with pytest.raises(ConfigError, match="at least 4 classes"):
        create("apgd-dlr")(tiny, xs, ys, threat, targets=torch.zeros_like(ys))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_t_not_weaker_than_apgd_dlr(digits_model, norm) -> None:
    """APGD-T's first target is the runner-up class, the direction untargeted DLR mostly takes;
    eight more targets can only add successes."""
    model, x, y = digits_model
    threat = ThreatModel(norm, {"linf": 0.08, "l2": 0.6}[norm])

    def acc(name: str) -> float:
        x_adv = create(name, steps=30)(
            model, x, y, threat, generator=torch.Generator().manual_seed(0)
        )
        return (model.predict(x_adv) == y).float().mean().item()

    assert acc("apgd-t") <= acc("apgd-dlr") + 0.01


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_early_stop_changes_nothing_but_cost(digits_model, name, norm) -> None:
    """Fooled points leave the batch; every other point's trajectory is the same."""
    model, x, y = digits_model
    x, y = x[:80], y[:80]
    threat = ThreatModel(norm, {"linf": 0.08, "l2": 0.6}[norm])
    out, calls = [], []
    for early in (True, False):
        with model.counting(x.shape[0]) as counter:
            out.append(
                create(name, steps=30, early_stop=early)(
                    model, x, y, threat, generator=torch.Generator().manual_seed(0)
                )
            )
        calls.append(int(counter.gradient.sum()))
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert calls[0] < calls[1]


def test_a_near_tie_is_not_adversarial() -> None:
    """A point that wins by a rounding error is not counted: re-predicted in another batch or
    memory layout, it may lose (the engine predicts every returned point again)."""
    y = torch.tensor([0, 0, 0, 0])
    logits = torch.tensor(
        [[6.0, 6.0, 0.0], [6.0, 6.0 + 1e-6, 0.0], [6.0, 6.01, 0.0], [6.0, 5.0, 0.0]]
    )
    assert is_adversarial(logits, y, None).tolist() == [False, False, True, False]
    targets = torch.tensor([1, 1, 1, 2])
    assert is_adversarial(logits, y, targets).tolist() == [False, False, True, False]
