"""The frozen TorchScript copy serves no-gradient calls only where it is exactly the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _factories import SmallCNN
from torch import Tensor, nn

from aegis.engine import evaluate
from aegis.model import FROZEN_MIN_POINTS, Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel

INFO = ModelInfo(num_classes=4, input_shape=(1, 12, 12))


class Branchy(nn.Module):
    """A data-dependent branch: a trace would keep only the branch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(x.flatten(1))
        if x.mean() > 0.5:
            out = -out
        return out


class ThroughNumpy(nn.Module):
    """A numpy round trip: a trace would bake its result in as a constant."""

    def forward(self, x: Tensor) -> Tensor:
        z = torch.from_numpy(np.ascontiguousarray(x.flatten(1)[:, :4].numpy()) * 2.0)
        return z


def test_a_plain_cnn_switches_to_the_frozen_copy_with_the_same_logits() -> None:
    torch.manual_seed(0)
    net = SmallCNN()
    clf = Classifier(net, INFO)
    x = torch.rand(8, 1, 12, 12)
    assert clf.describe()["inference"] == "module"
    assert clf.prepare_frozen(x)
    assert clf.describe()["inference"] == "torchscript-frozen"
    other = torch.rand(5, 1, 12, 12)  # another batch size too
    with torch.no_grad():
        want = net(other)
    torch.testing.assert_close(clf.logits(other), want, rtol=1e-5, atol=1e-5)
    # Gradients still come from the module itself.
    _, _, grad = clf.value_and_grad(other, lambda z: z[:, 0])
    xg = other.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(net(xg)[:, 0].sum(), xg)
    torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("net", [Branchy(), ThroughNumpy()], ids=["branch", "numpy"])
def test_a_module_a_trace_would_get_wrong_keeps_the_module(net: nn.Module) -> None:
    clf = Classifier(net, INFO)
    assert not clf.prepare_frozen(torch.zeros(8, 1, 12, 12))
    assert clf.describe()["inference"] == "module"
    x = torch.ones(8, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), net(x).float())


def test_turned_off_by_flag_env_or_unfrozen_models(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(8, 1, 12, 12)
    for clf in (
        Classifier(SmallCNN(), INFO, frozen_inference=False),
        Classifier(SmallCNN(), INFO, freeze=False),
    ):
        assert not clf.prepare_frozen(x)
    monkeypatch.setenv("AEGIS_INFERENCE", "eager")
    assert not Classifier(SmallCNN(), INFO).prepare_frozen(x)


def test_the_engine_decides_once_before_attacking_and_stays_reproducible() -> None:
    torch.manual_seed(1)
    net = SmallCNN()
    x = torch.rand(FROZEN_MIN_POINTS, 1, 12, 12)
    y = net(x).argmax(1).detach()
    threat = ThreatModel("linf", 0.05)
    small = Classifier(net, INFO)
    evaluate(small, x[:10], y[:10], create("square", queries=20), threat)
    assert small.describe()["inference"] == "module"  # a short run is not worth a trace
    clf = Classifier(net, INFO)
    runs = [evaluate(clf, x, y, create("square", queries=20), threat, seed=3) for _ in range(2)]
    assert clf.describe()["inference"] == "torchscript-frozen"
    assert np.array_equal(runs[0].x_adv, runs[1].x_adv)
    eager = Classifier(net, INFO, frozen_inference=False)
    plain = evaluate(eager, x, y, create("square", queries=20), threat, seed=3)
    # Same search, logits equal to float rounding: the same verdicts.
    assert np.array_equal(plain.records.success, runs[0].records.success)
