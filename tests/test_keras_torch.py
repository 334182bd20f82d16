"""Keras models converted to plain torch (:mod:`aegis.io.keras_torch`): the same logits and input
gradients as the Keras call, logit recovery first, and the Keras call kept (and said) wherever a
layer does not convert or the conversion disagrees."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _factories import randomize_keras

import aegis.io.keras_format as keras_format
from aegis.errors import AegisWarning
from aegis.io.keras_format import CONVERTED, _KerasModule
from aegis.io.keras_torch import KerasGraph, Unsupported, same_as_keras, to_torch
from aegis.io.models import load_classifier
from aegis.model import Classifier

TOL = 1e-4


def _cnn(keras: Any, final: str | None = None) -> Any:
    """Conv (same padding, strides), pooling, BatchNormalization, Dropout, Flatten, Dense."""
    layers = keras.layers
    return randomize_keras(
        keras.Sequential(
            [
                keras.Input((11, 11, 3)),
                layers.Conv2D(4, 3, padding="same", activation="relu"),
                layers.BatchNormalization(),
                layers.MaxPooling2D(2, padding="same"),
                layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False),
                layers.Dropout(0.5),
                layers.Flatten(),
                layers.Dense(8, activation="tanh"),
                layers.Dense(5, activation=final),
            ]
        ),
        0,
    )


def _functional(keras: Any) -> Any:
    """Branches and the rarer layers: padding, depthwise and dilated convolutions, merges."""
    layers = keras.layers
    inp = keras.Input((10, 10, 3))
    x = layers.Rescaling(2.0, offset=-1.0)(inp)
    x = layers.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 0.5])(x)
    x = layers.ZeroPadding2D(((1, 0), (2, 1)))(x)
    a = layers.Conv2D(4, 3, dilation_rate=2, padding="same")(x)
    b = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    b = layers.Conv2D(4, 1, activation="swish")(b)
    x = layers.Add()([a, b])
    x = layers.ReLU(max_value=2.0)(x)
    c = layers.AveragePooling2D(2, strides=1, padding="same")(x)
    x = layers.Concatenate()([x, layers.LeakyReLU(0.1)(c)])
    x = layers.Cropping2D(((1, 1), (0, 2)))(x)
    x = layers.Dense(3)(x)  # on the channels of a feature map
    g = layers.GlobalAveragePooling2D()(x)
    x = layers.Reshape((3, -1))(layers.Flatten()(x))
    x = layers.Flatten()(x)
    out = layers.Dense(4)(layers.Concatenate()([x, g]))
    return randomize_keras(keras.Model(inp, out), 1)


def _load(path: Path, **kwargs: Any) -> Classifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AegisWarning)
        return load_classifier(path, **kwargs)


def _assert_same(clf: Classifier, keras_fn: Any, shape: tuple[int, ...]) -> None:
    """The Classifier's logits and input gradients equal those of ``keras_fn`` (NHWC)."""
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(2))
    xg = x.clone().requires_grad_(True)
    ref = keras_fn(xg.permute(0, 2, 3, 1))
    (ref_grad,) = torch.autograd.grad(ref[:, 1].sum(), xg)
    torch.testing.assert_close(clf.logits(x), ref.detach(), atol=TOL, rtol=TOL)
    _, _, grad = clf.value_and_grad(x, lambda z: z[:, 1])
    assert bool(grad.abs().sum() > 0)
    torch.testing.assert_close(grad, ref_grad, atol=TOL, rtol=TOL)


def test_a_cnn_converts_and_matches_keras(tmp_path: Path, keras: Any) -> None:
    model = _cnn(keras)
    path = tmp_path / "cnn.keras"
    model.save(str(path))
    clf = _load(path)
    assert isinstance(clf.module, KerasGraph)
    assert clf.provenance["keras_path"] == CONVERTED
    assert clf.describe()["provenance"]["keras_path"] == CONVERTED  # type: ignore[index]
    assert clf.info.layout == "NHWC" and clf.input_shape == (3, 11, 11)
    _assert_same(clf, lambda z: model(z, training=False), (3, 11, 11))
    with torch.no_grad():
        assert not bool(clf.module(torch.rand(2, 11, 11, 3)).requires_grad)  # weights frozen


def test_branches_and_rarer_layers_convert(tmp_path: Path, keras: Any) -> None:
    model = _functional(keras)
    module = to_torch(keras, model)
    probes = [torch.rand(2, 10, 10, 3), 2 * torch.randn(3, 10, 10, 3)]
    assert same_as_keras(lambda z: model(z, training=False), module, probes) == ""
    path = tmp_path / "functional.h5"  # Keras 3 HDF5 goes through the legacy reader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(path))
    clf = _load(path)
    assert clf.provenance["keras_path"] == CONVERTED
    _assert_same(clf, lambda z: model(z, training=False), (3, 10, 10))
    copy = pickle.loads(pickle.dumps(clf))  # what a Ray worker gets
    x = torch.rand(2, 3, 10, 10)
    torch.testing.assert_close(copy.logits(x), clf.logits(x))


@pytest.mark.parametrize("how", ["activation", "layer"])
def test_logits_are_recovered_before_the_conversion(tmp_path: Path, keras: Any, how: str) -> None:
    logits_model = _cnn(keras)
    if how == "activation":
        model = _cnn(keras, "softmax")
        model.set_weights(logits_model.get_weights())
    else:
        model = keras.Model(logits_model.inputs, keras.layers.Softmax()(logits_model.outputs[0]))
    path = tmp_path / "probs.keras"
    model.save(str(path))
    clf = _load(path)
    assert clf.provenance["outputs"].startswith("logits recovered from softmax")
    assert clf.provenance["keras_path"] == CONVERTED
    _assert_same(clf, lambda z: logits_model(z, training=False), (3, 11, 11))
    kept = _load(path, keep_softmax=True)
    assert kept.provenance["keras_path"] == CONVERTED
    _assert_same(kept, lambda z: model(z, training=False), (3, 11, 11))


def test_an_unsupported_layer_keeps_the_keras_call(tmp_path: Path, keras: Any) -> None:
    layers = keras.layers
    model = randomize_keras(
        keras.Sequential(
            [
                keras.Input((6, 6, 1)),
                layers.Conv2D(2, 3),
                layers.Reshape((4, 8)),
                layers.LSTM(3),
                layers.Dense(3),
            ]
        ),
        3,
    )
    with pytest.raises(Unsupported, match="layer class LSTM"):
        to_torch(keras, model)
    path = tmp_path / "lstm.keras"
    model.save(str(path))
    clf = _load(path)
    assert isinstance(clf.module, _KerasModule)
    assert clf.provenance["keras_path"].startswith("keras call (not converted to torch: ")
    assert "LSTM" in clf.provenance["keras_path"]
    x = torch.rand(3, 1, 6, 6)
    want = model(x.permute(0, 2, 3, 1), training=False)
    torch.testing.assert_close(clf.logits(x), want.detach(), atol=1e-6, rtol=0)


def test_a_disagreeing_conversion_is_not_used(
    tmp_path: Path, keras: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _cnn(keras)
    path = tmp_path / "cnn.keras"
    model.save(str(path))
    monkeypatch.setattr(keras_format, "same_as_keras", lambda *a: "outputs differ (test)")
    clf = _load(path)
    assert isinstance(clf.module, _KerasModule)
    assert (
        clf.provenance["keras_path"] == "keras call (not converted to torch: outputs differ (test))"
    )
    _assert_same(clf, lambda z: model(z, training=False), (3, 11, 11))
    monkeypatch.undo()
    monkeypatch.setenv("AEGIS_INFERENCE", "eager")
    assert _load(path).provenance["keras_path"] == "keras call (AEGIS_INFERENCE=eager)"


def test_the_check_catches_a_wrong_conversion(keras: Any) -> None:
    model = _cnn(keras)
    module = to_torch(keras, model)
    probes = [torch.rand(2, 11, 11, 3)]
    assert same_as_keras(lambda z: model(z, training=False), module, probes) == ""
    with torch.no_grad():
        module.steps[-1].bias.add_(1e-3)
    why = same_as_keras(lambda z: model(z, training=False), module, probes)
    assert why.startswith("outputs differ from Keras'")
