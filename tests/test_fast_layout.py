"""Channels-last memory format and the allocator tuning: faster, never different."""

from __future__ import annotations

import copy

import pytest
import torch
from _factories import SmallCNN
from torch import Tensor, nn

from aegis import _alloc
from aegis.engine import evaluate
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel

INFO = ModelInfo(num_classes=4, input_shape=(1, 12, 12))


class ViewsItsFeatures(nn.Module):
    """``x.view(n, -1)`` on a feature map: fails on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 144, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


class PermutesChannels(nn.Module):
    """Reads the storage order of its feature map: channels-last changes what it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 144, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        flat = h.as_strided((h.shape[0], h[0].numel()), (h[0].numel(), 1))
        return self.fc(flat)


def _reference(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    xg = x.clone().requires_grad_(True)
    out = net(xg)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), xg)
    return out.detach(), grad


def test_a_cnn_runs_channels_last_with_the_same_logits_and_gradients() -> None:
    torch.manual_seed(0)
    net = SmallCNN(width=8)
    twin = copy.deepcopy(net).eval()
    clf = Classifier(net, INFO)
    x = torch.rand(6, 1, 12, 12)
    logits, _, grad = clf.value_and_grad(x, lambda z: z[:, 1])
    assert clf.describe()["memory_format"] == "channels_last"
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    want_logits, want_grad = _reference(twin, x)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5)
    assert grad.is_contiguous()  # attacks get plain NCHW tensors back
    torch.testing.assert_close(clf.logits(x), want_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [ViewsItsFeatures, PermutesChannels], ids=["view", "strides"])
def test_a_module_that_breaks_on_the_layout_keeps_its_own(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = cls()
    twin = copy.deepcopy(net).eval()
    clf = Classifier(net, INFO)
    x = torch.rand(5, 1, 12, 12)
    logits, _, grad = clf.value_and_grad(x, lambda z: z[:, 1])
    assert clf.describe()["memory_format"] == "contiguous"
    assert net.conv.weight.is_contiguous()  # converted back
    want_logits, want_grad = _reference(twin, x)
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(grad, want_grad)


def test_the_layout_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(2, 1, 12, 12)
    off = Classifier(SmallCNN(), INFO, fast_layout=False)
    off.logits(x)
    assert off.describe()["memory_format"] == "contiguous"
    monkeypatch.setenv("AEGIS_INFERENCE", "eager")
    env = Classifier(SmallCNN(), INFO)
    env.logits(x)
    assert env.describe()["memory_format"] == "contiguous"
    # Models without 2-D convolutions, and unfrozen ones (trainers), are left alone.
    monkeypatch.delenv("AEGIS_INFERENCE")
    mlp = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(144, 4)), INFO)
    mlp.logits(x)
    assert mlp.describe()["memory_format"] == "contiguous"
    training = Classifier(SmallCNN(), INFO, freeze=False)
    training.logits(x)
    assert training.describe()["memory_format"] == "contiguous"


def test_an_attack_run_gives_the_same_verdicts_in_either_layout() -> None:
    torch.manual_seed(0)
    net = SmallCNN(width=8)
    fast = Classifier(net, INFO)
    plain = Classifier(copy.deepcopy(net), INFO, fast_layout=False)
    x = torch.rand(24, 1, 12, 12)
    y = plain.predict(x)
    threat = ThreatModel("linf", 0.1)
    attack = create("apgd-ce", steps=10)
    a = evaluate(fast, x, y, attack, threat, seed=3)
    b = evaluate(plain, x, y, attack, threat, seed=3)
    assert fast.describe()["memory_format"] == "channels_last"
    assert (a.records.success == b.records.success).all()
    assert abs(a.records.linf - b.records.linf).max() < 1e-4


def test_the_allocator_tuning_runs_once_and_can_be_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_alloc, "_state", None)
    monkeypatch.setenv("AEGIS_MALLOC", "system")
    assert _alloc.keep_freed_memory() is False
    assert _alloc._state is False  # decided: not asked again in this process
    monkeypatch.setattr(_alloc, "_state", None)
    monkeypatch.delenv("AEGIS_MALLOC")
    first = _alloc.keep_freed_memory()
    assert isinstance(first, bool)
    assert _alloc.keep_freed_memory() is first
