"""Each sanity flag fires on a model built to trigger it, and stays down on an honest one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aegis import sanity
from aegis.api import run_attack
from aegis.engine import evaluate
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel

INFO = ModelInfo(num_classes=3, input_shape=(1, 8, 8))


class Softmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), 1)


class Noisy(nn.Module):
    """A randomized defense: Gaussian noise on the input at every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x + 0.1 * torch.randn_like(x))
        return out


class Quantized(nn.Module):
    """A step function of the input: rounding to 2 levels has zero gradient everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.round(x))
        return out


def flags_of(module: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, bool]:
    x, y = data
    found = sanity.probe_model(Classifier(module, INFO), x, y)
    return {f.name: f.flagged for f in found}


def test_honest_model_raises_nothing(tiny_net, data) -> None:
    assert flags_of(tiny_net, data) == {
        "probabilities": False,
        "randomized": False,
        "zero-gradients": False,
    }


def test_softmax_outputs_flagged(tiny_net, data) -> None:
    assert flags_of(Softmax(tiny_net), data)["probabilities"]


def test_randomized_model_flagged(tiny_net, data) -> None:
    assert flags_of(Noisy(tiny_net), data)["randomized"]


def test_zero_gradients_flagged(tiny_net, data) -> None:
    assert flags_of(Quantized(tiny_net), data)["zero-gradients"]


def test_query_only_model_is_not_probed_for_gradients(tiny_net, data) -> None:
    def query(a):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return tiny_net(torch.from_numpy(a)).numpy()

    x, y = data
    found = sanity.probe_model(Classifier(None, INFO, query_fn=query), x, y)
    grads = next(f for f in found if f.name == "zero-gradients")
    assert not grads.flagged and "query-only" in grads.evidence


def test_weak_attack_winning_after_strong_is_flagged(tiny, data) -> None:
    """A one-step PGD with a negligible step stands in for a gradient attack that masking
    defeats; FGSM then fools what it could not."""
    x, y = data
    crippled = [create("pgd", steps=1, step_size=1e-6, random_start=False), create("fgsm")]
    ev = evaluate(tiny, x, y, crippled, ThreatModel("linf", 0.3))
    flag = sanity.check_ensemble(ev.records, crippled)
    assert flag.flagged and "fgsm fooled" in flag.evidence
    honest = [create("pgd", steps=20), create("fgsm")]
    ev = evaluate(tiny, x, y, honest, ThreatModel("linf", 0.3))
    assert not sanity.check_ensemble(ev.records, honest).flagged


def test_unbounded_attack_not_total_is_flagged(tiny_net, tiny, data) -> None:
    x, y = data
    masked = Classifier(Quantized(tiny_net), INFO)
    run = run_attack(masked, (x.numpy(), y.numpy()), attack="pgd", eps=1.0, steps=10)
    raised = {f["name"] for f in run.results["sanity"] if f["flagged"]}
    assert {"zero-gradients", "unbounded-not-total"} <= raised
    # the rounding gets BPDA; the unbounded attack then fools every point: both remedied
    assert set(run.results["remedies"]["remedied"]) == {"zero-gradients", "unbounded-not-total"}
    assert run.metrics["adversarial_accuracy"] == 0.0
    assert run.verdict.startswith("REMEDIED (unbounded-not-total, zero-gradients")
    assert not run.metrics["verdict"]["suspicious"]
    honest = run_attack(tiny, (x.numpy(), y.numpy()), attack="pgd", eps=1.0, steps=10)
    assert not any(f["flagged"] for f in honest.results["sanity"]), honest.results["sanity"]
    assert "SUSPICIOUS" not in honest.verdict


def test_sweep_flat_or_rising_accuracy_is_flagged(tiny_net, tiny, data) -> None:
    x, y = data
    masked = Classifier(Quantized(tiny_net), INFO)
    run = run_attack(masked, (x.numpy(), y.numpy()), attack="pgd", eps=[0.1, 0.2, 0.4], steps=5)
    flag = next(f for f in run.results["sanity"] if f["name"] == "eps-not-monotonic")
    assert flag["flagged"], flag
    honest = run_attack(tiny, (x.numpy(), y.numpy()), attack="pgd", eps=[0.05, 0.2, 0.4], steps=10)
    flag = next(f for f in honest.results["sanity"] if f["name"] == "eps-not-monotonic")
    assert not flag["flagged"], flag
    accs = [p["metrics"]["adversarial_accuracy"] for p in honest.results["sweep"]]
    assert accs == sorted(accs, reverse=True)


@pytest.mark.parametrize(
    ("accs", "flagged"),
    [
        ([0.9, 0.6, 0.2], False),
        ([0.9, 0.6, 0.7], True),  # rises
        ([0.8, 0.8, 0.8], True),  # flat: larger budgets break nothing
        ([0.0, 0.0, 0.0], False),  # nothing left to break
    ],
)
def test_check_sweep_table(accs, flagged) -> None:
    assert sanity.check_sweep([0.1, 0.2, 0.3], accs, 1000).flagged is flagged


def test_diameter() -> None:
    shape, box = (3, 4, 4), (0.0, 1.0)
    assert sanity.diameter(ThreatModel("linf", 1), shape, box) == 1.0
    assert sanity.diameter(ThreatModel("l2", 1), shape, box) == pytest.approx(48**0.5)
    assert sanity.diameter(ThreatModel("l1", 1), shape, box) == 48
    assert sanity.diameter(ThreatModel("l0", 1), shape, box) == 16
