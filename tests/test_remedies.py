"""Sanity flags that have a remedy get it: the numbers come out right on gradient-masking
models (a saturated softmax, a randomized model), and honest models are left alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from aegis.api import run_attack
from aegis.model import Classifier, ModelInfo
from aegis.remedies import EOTClassifier, bpda_view, log_probabilities

N = 60


class _Saturated(nn.Module):
    """softmax(t · logits): the textbook Keras head, saturated."""

    def __init__(self, inner: nn.Module, t: float) -> None:
        super().__init__()
        self.inner, self.t = inner, t

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.t * self.inner(x), 1)


class _Noisy(nn.Module):
    """Gaussian noise on the input before the network: a randomized model."""

    def __init__(self, inner: nn.Module, sigma: float) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


def _wrap(digits_model: Any, module: nn.Module) -> Classifier:
    clf = digits_model[0]
    return Classifier(module, ModelInfo(num_classes=10, input_shape=clf.input_shape))


def test_log_probabilities_recover_the_logits_in_float64(digits_model: Any) -> None:
    clf, x, _ = digits_model
    sat = _wrap(digits_model, _Saturated(clf.module, 40.0))
    view = log_probabilities(sat, x[:8])
    z, lp = clf.logits(x[:8]), view.logits(x[:8])
    shifted = 40 * z - (40 * z).logsumexp(1, keepdim=True)
    kept = shifted > -700  # float64 holds a softmax down to e^-708; below, the floor
    assert kept.float().mean() > 0.5 and (shifted < -100).any()  # float32 would keep none
    torch.testing.assert_close(lp[kept], shifted[kept], atol=1e-3, rtol=1e-4)
    assert "float64" in view.provenance["outputs"]
    assert torch.equal(view.predict(x), sat.predict(x))


def test_a_saturated_softmax_is_remedied_to_the_adaptive_number(digits_model: Any) -> None:
    clf, x, y = digits_model
    data = (x[:N].numpy(), y[:N].numpy())
    reference = run_attack(clf, data, attack="pgd", eps=0.1, steps=50)  # PGD on the logits
    sat = _wrap(digits_model, _Saturated(clf.module, 40.0))
    run = run_attack(sat, data, attack="fast", eps=0.1)
    rem = run.results["remedies"]
    truth = reference.metrics["adversarial_accuracy"]
    assert rem["flags"] == ["probabilities"] and rem["remedied"] == ["probabilities"]
    assert rem["naive_adversarial_accuracy"] > truth + 0.1  # the flagged number was wrong
    assert run.metrics["adversarial_accuracy"] <= truth + 0.05  # the remedied one is right
    assert "hsj" in rem["attacks"] and run.verdict.startswith("REMEDIED (probabilities")
    raised = [f["name"] for f in run.results["sanity"] if f["flagged"]]
    assert "probabilities" in raised  # the flag stays in results.json with its evidence


def test_a_randomized_model_gets_eot(digits_model: Any) -> None:
    clf, x, y = digits_model
    noisy = _wrap(digits_model, _Noisy(clf.module, 0.05))
    run = run_attack(noisy, (x[:N].numpy(), y[:N].numpy()), attack="pgd", eps=0.1, steps=10)
    rem = run.results["remedies"]
    assert rem["flags"] == ["randomized"] and rem["remedied"] == ["randomized"]
    assert any("EOT" in w for w in rem["what"])
    assert rem["remedied_adversarial_accuracy"] <= rem["naive_adversarial_accuracy"]
    assert "randomized" in run.metrics["verdict"]["remedied"]


def test_eot_classifier_averages_draws_and_counts_them(digits_model: Any) -> None:
    clf, x, _ = digits_model
    eot = EOTClassifier(_wrap(digits_model, _Noisy(clf.module, 0.05)), draws=4)
    with eot.counting(4) as counter:
        eot.value_and_grad(x[:4], lambda z: z.sum(1), rows=torch.arange(4))
    assert counter.gradient.tolist() == [4, 4, 4, 4]
    eot.reseed(3)
    a = eot.value_and_grad(x[:4], lambda z: z.sum(1))[2]
    eot.reseed(3)
    assert torch.equal(a, eot.value_and_grad(x[:4], lambda z: z.sum(1))[2])  # repeatable


def test_an_honest_model_is_left_alone(digits_model: Any) -> None:
    clf, x, y = digits_model
    run = run_attack(clf, (x[:N].numpy(), y[:N].numpy()), attack="pgd", eps=0.1, steps=10)
    assert "remedies" not in run.results
    assert not run.verdict.startswith(("REMEDIED", "SUSPICIOUS"))


@pytest.mark.parametrize("t", [10.0])
def test_query_only_probabilities_use_log_scores(digits_model: Any, t: float) -> None:
    """An opaque callable that returns probabilities: Square scores log-probabilities (a
    label-only attack joins only the suites, which promise a complete evaluation)."""
    clf, x, y = digits_model
    module = _Saturated(clf.module, t)

    def query(arr: Any) -> Any:
        with torch.no_grad():
            return module(torch.from_numpy(arr)).numpy()

    opaque = Classifier(
        None, ModelInfo(num_classes=10, input_shape=clf.input_shape), query_fn=query
    )
    run = run_attack(
        opaque, (x[:30].numpy(), y[:30].numpy()), attack="square", eps=0.1, queries=200
    )
    rem = run.results["remedies"]
    assert rem["flags"] == ["probabilities"] and rem["attacks"] == ["square"]
    assert "log-probabilities" in rem["what"][0]
    assert rem["remedied_adversarial_accuracy"] <= rem["naive_adversarial_accuracy"]


class _Quantized(nn.Module):
    """Input quantization to 8 levels in front of the network: zero gradients everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 8) / 8)


def test_rounding_inside_the_model_gets_bpda(digits_model: Any) -> None:
    clf, x, y = digits_model
    quant = _wrap(digits_model, _Quantized(clf.module))
    data = (x[:N].numpy(), y[:N].numpy())
    run = run_attack(quant, data, attack="fast", eps=0.1)
    rem = run.results["remedies"]
    assert rem["flags"] == ["zero-gradients"] and rem["remedied"] == ["zero-gradients"]
    assert rem["naive_adversarial_accuracy"] > rem["remedied_adversarial_accuracy"] + 0.2
    assert run.verdict.startswith("REMEDIED (zero-gradients")
    # the hand-written adaptive attack: PGD through a straight-through rounding
    view, found = bpda_view(quant) or (None, [])
    assert found == ["round"] and view is not None
    assert torch.equal(view.predict(x), quant.predict(x))
    by_hand = run_attack(view, data, attack="pgd", eps=0.1, steps=50)
    assert run.metrics["adversarial_accuracy"] <= by_hand.metrics["adversarial_accuracy"] + 0.05


def test_a_model_without_rounding_has_no_bpda_view(digits_model: Any) -> None:
    assert bpda_view(digits_model[0]) is None


def test_flags_are_moot_when_no_input_withstood(digits_model: Any) -> None:
    """softmax(100·logits): some gradients stay zero even in float64, but the attack fools
    every point; a flag cannot hide a gap that does not exist."""
    clf, x, y = digits_model
    sat = _wrap(digits_model, _Saturated(clf.module, 100.0))
    run = run_attack(sat, (x[:20].numpy(), y[:20].numpy()), attack="fast", eps=0.5)
    assert run.metrics["adversarial_accuracy"] == 0.0
    assert not run.metrics["verdict"]["suspicious"]
    assert run.metrics["verdict"]["moot"] == ["zero-gradients"]  # raised, not remedied
    assert "zero-gradients are moot" in run.verdict
