"""Detectors of adversarial inputs: metrics, thresholds, beating chance, the adaptive attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from aegis.defenses.detection import (
    DetectorAwarePGD,
    FeatureSqueezing,
    Mahalanobis,
    evaluate_detector,
)
from aegis.errors import CapabilityError, ConfigError, DataError
from aegis.metrics import combined_accuracy, roc_auc, threshold_at_fpr, worst_case_accuracy
from aegis.model import Classifier, ModelInfo
from aegis.records import Records
from aegis.registry import create
from aegis.threat import ThreatModel

THREAT = ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def fit_x() -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images / 16, dtype=torch.float32)[:, None][300:1300]


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 5, 50).astype(float)
    adv = rng.integers(2, 8, 40).astype(float)
    labels = np.r_[np.zeros(50), np.ones(40)]
    assert roc_auc(clean, adv) == pytest.approx(roc_auc_score(labels, np.r_[clean, adv]))
    assert roc_auc(np.zeros(3), np.ones(2)) == 1.0
    assert roc_auc(np.zeros(0), np.ones(2)) is None


@pytest.mark.parametrize("fpr", [0.0, 0.05, 0.1, 0.5])
def test_threshold_flags_at_most_fpr_of_the_clean_scores(fpr: float) -> None:
    rng = np.random.default_rng(1)
    for scores in (rng.normal(size=203), np.round(rng.normal(size=100), 1)):
        t = threshold_at_fpr(scores, fpr)
        assert (scores > t).mean() <= fpr
        # and it is the tightest: any lower clean score as threshold flags too many
        lower = scores[scores < t]
        if lower.size:
            assert (scores > lower.max()).mean() > fpr
    with pytest.raises(ConfigError):
        threshold_at_fpr(np.zeros(3), 1.5)
    with pytest.raises(DataError):
        threshold_at_fpr(np.zeros(0), 0.05)


def _records(y, clean_pred, adv_pred) -> Records:
    n = len(y)
    z = np.zeros(n)
    return Records(
        index=np.arange(n), y=np.array(y), target=np.full(n, -1), clean_pred=np.array(clean_pred),
        adv_pred=np.array(adv_pred), eligible=np.ones(n, bool),
        attacked=np.array(clean_pred) == np.array(y), success=np.array(adv_pred) != np.array(y),
        attack_index=np.zeros(n, np.int64), l0=z, l1=z, l2=z, linf=z,
        forward_calls=np.zeros(n, np.int64), gradient_calls=np.zeros(n, np.int64), seconds=z,
    )  # fmt: skip


def test_combined_accuracy_counts_false_alarms_and_detections() -> None:
    rec = _records([0, 1, 2, 3], [0, 1, 2, 0], [5, 1, 5, 0])
    out = combined_accuracy(
        rec, clean_detected=np.array([True, False, False, False]),
        adv_detected=np.array([True, False, False, False]),
    )  # fmt: skip
    assert out["clean_accuracy"] == 0.5  # point 0 is a false alarm, point 3 is wrong
    assert out["classifier_clean_accuracy"] == 0.75
    assert out["robust_accuracy"] == 0.5  # point 0 detected, point 1 survives
    assert out["classifier_robust_accuracy"] == 0.25
    assert worst_case_accuracy([np.array([1, 1, 0], bool), np.array([1, 0, 1], bool)]) == 1 / 3


def test_squeezers_are_the_preprocessing_steps_with_bpda() -> None:
    x = torch.tensor([[[[0.1, 0.6], [0.4, 0.9]]]], requires_grad=True)
    bits, median = FeatureSqueezing(bits=1, median_size=3).chain((0.0, 1.0))
    np.testing.assert_allclose(bits(x).detach().numpy(), [[[[0, 1], [0, 1]]]])
    (g,) = torch.autograd.grad(bits(x).sum(), x)
    assert (g == 1).all()  # straight-through
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0  # salt noise vanishes under a median filter
    assert median(img).abs().max() == 0
    assert FeatureSqueezing(bits=0, median_size=2).chain((0.0, 1.0))[0](img).shape == img.shape
    # Other bounds: the squeezed input stays in them.
    wide = FeatureSqueezing(bits=1, median_size=0).chain((-1.0, 1.0))[0](img * 2 - 1)
    assert wide.min() >= -1 and wide.max() <= 1 and set(wide.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "detector", [Mahalanobis(), FeatureSqueezing(bits=2, median_size=2)], ids=str
)
def test_detectors_beat_chance_and_the_adaptive_attack_evades(digits_model, fit_x, detector):
    model, x, y = digits_model
    fitted = detector.fit(model, fit_x)
    scores = fitted.score(x[:100])
    assert scores.shape == (100,) and torch.isfinite(scores).all()
    aware = DetectorAwarePGD(detector=fitted, threshold=0.0, steps=50, weights=(10.0,))
    out = evaluate_detector(
        model, fitted, x[:150], y[:150], create("pgd", steps=20), THREAT, adaptive=aware
    )
    na, ad = out["non_adaptive"], out["adaptive"]
    assert na["successful"] >= 50
    assert na["roc_auc"] > 0.65
    assert na["fpr"] <= 0.05 and out["clean_flagged"] <= 0.05
    assert na["combined"]["clean_accuracy"] >= 0.94
    # the adaptive attack hides its successes from the detector
    assert ad["tpr"] < na["tpr"] or ad["tpr"] == 0.0
    assert out["worst_case"]["robust_accuracy"] <= na["combined"]["robust_accuracy"]
    assert out["worst_case"]["robust_accuracy"] <= ad["combined"]["robust_accuracy"]


def test_adaptive_attack_lowers_mahalanobis_detection(digits_model, fit_x) -> None:
    model, x, y = digits_model
    fitted = Mahalanobis().fit(model, fit_x)
    aware = DetectorAwarePGD(detector=fitted, threshold=0.0, steps=50, weights=(10.0,))
    out = evaluate_detector(
        model, fitted, x[:150], y[:150], create("pgd", steps=20), THREAT, adaptive=aware
    )
    na, ad = out["non_adaptive"], out["adaptive"]
    assert na["tpr"] > 0.05
    assert ad["tpr"] <= na["tpr"] / 2
    assert out["worst_case"]["robust_accuracy"] < na["combined"]["robust_accuracy"]


def test_named_layers_and_noise(digits_model, fit_x) -> None:
    model, x, _ = digits_model
    plain = Mahalanobis(layers=("1", "2")).fit(model, fit_x)
    noisy = Mahalanobis(layers=("2",), noise=0.01).fit(model, fit_x)
    assert plain.score(x[:10]).shape == (10,)
    assert noisy.score(x[:10]).shape == (10,)


def test_bad_input(digits_model, fit_x, tiny) -> None:
    model, x, y = digits_model
    with pytest.raises(ConfigError, match="no module named"):
        Mahalanobis(layers=("nope",)).fit(model, fit_x)
    with pytest.raises(ConfigError):
        Mahalanobis(noise=-1.0)
    with pytest.raises(ConfigError):
        FeatureSqueezing(bits=0, median_size=0)
    with pytest.raises(DataError):
        Mahalanobis().fit(model, fit_x[:1])
    with pytest.raises(DataError):
        Mahalanobis().fit(model, torch.zeros(4, 1, 5, 5))
    query_only = Classifier(
        None, ModelInfo(num_classes=10, input_shape=(1, 8, 8)), query_fn=lambda a: a[:, :10]
    )
    with pytest.raises(CapabilityError):
        Mahalanobis().fit(query_only, fit_x)
    fitted = FeatureSqueezing().fit(tiny, torch.rand(4, 1, 8, 8))
    with pytest.raises(ConfigError, match="another model"):
        DetectorAwarePGD(detector=fitted, threshold=0.0)(model, x[:2], y[:2], THREAT)
    with pytest.raises(ConfigError):
        DetectorAwarePGD(detector=fitted, threshold=float("nan"))


def test_logits_graph_keeps_the_graph_and_counts_gradients(tiny) -> None:
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    before = tiny.total_gradient
    out = tiny.logits_graph(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0 and tiny.total_gradient == before + 3
    assert not any(p.requires_grad for p in tiny.module.parameters())  # type: ignore[union-attr]
    query_only = Classifier(
        None, ModelInfo(num_classes=3, input_shape=(1, 8, 8)), query_fn=lambda a: a[:, :3]
    )
    with pytest.raises(CapabilityError):
        query_only.logits_graph(x)
