"""Keras files as users have them: Keras 2.x / tf.keras HDF5 models, weights-only files with a
factory or a ``model.to_json()`` architecture, and the errors that name what is wrong.

Keras 2 files are made here from Keras 3 models: saved as ``.h5``, then the stored config and
attributes are rewritten with h5py the way Keras 2.2.4 wrote them (no InputLayer, the first layer
carrying ``batch_input_shape``, ``"class_name": "Model"``, ``name/kernel:0`` weight names,
``keras_version`` 2.2.4 on the tensorflow backend).
"""

from __future__ import annotations

import copy
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _factories import randomize_keras
from torch import nn

from aegis.errors import AegisWarning, ModelError, UnsafeFileError
from aegis.io.models import load_classifier
from aegis.model import Classifier

h5py = pytest.importorskip("h5py")
TOL = 1e-4
KERAS2 = "2.2.4"
_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None},
}


def _cnn(keras: Any) -> Any:
    """Conv2D, MaxPooling2D, Flatten, Dropout, Dense with a softmax: the Keras 2 tutorial CNN."""
    layers = keras.layers
    return randomize_keras(
        keras.Sequential(
            [
                keras.Input((12, 12, 1)),
                layers.Conv2D(4, 3, activation="relu", name="conv2d_1"),
                layers.MaxPooling2D(2, name="max_pooling2d_1"),
                layers.Flatten(name="flatten_1"),
                layers.Dropout(0.5, name="dropout_1"),
                layers.Dense(3, activation="softmax", name="dense_1"),
            ],
            name="sequential_1",
        ),
        0,
    )


def _functional(keras: Any) -> Any:
    layers = keras.layers
    inp = keras.Input((8, 8, 3), name="input_1")
    x = layers.Conv2D(4, 3, padding="same", name="conv2d_1")(inp)
    x = layers.BatchNormalization(name="batch_normalization_1")(x)
    x = layers.DepthwiseConv2D(3, name="depthwise_conv2d_1")(x)
    x = layers.ReLU(name="re_lu_1")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d_1")(x)
    out = layers.Dense(5, name="dense_1")(x)
    return randomize_keras(keras.Model(inp, out, name="model_1"), 1)


# -- writing files the way Keras 2 did --------------------------------------------------------
def _layer2(layer: dict[str, Any]) -> dict[str, Any]:
    """One layer config as Keras 2 wrote it: plain dtype, Keras 2 initializers, no new keys."""
    cfg = layer["config"]
    for key in ("quantization_config", "optional", "build_config"):
        cfg.pop(key, None)
    if layer["class_name"] == "InputLayer":
        cfg["batch_input_shape"] = cfg.pop("batch_shape")
    else:
        cfg["dtype"] = "float32"
    for key in [k for k in cfg if k.endswith("_initializer")]:
        zeros = key.startswith(("bias", "beta", "moving_mean"))
        cfg[key] = {"class_name": "Zeros", "config": {}} if zeros else copy.deepcopy(_INIT)
    if layer["class_name"] == "BatchNormalization":
        cfg["axis"] = [3]
    if layer["class_name"] == "DepthwiseConv2D":
        cfg["groups"] = 1  # tf.keras wrote it; Keras 3 rejects it
    nodes = layer.get("inbound_nodes")
    if nodes:  # Keras 3 node dicts -> Keras 2 [[[layer, node, tensor, kwargs]]]
        history = [a["config"]["keras_history"] for a in nodes[0]["args"]]
        layer["inbound_nodes"] = [[[*h, {}] for h in history]]
    return layer


def _as_keras2(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    inner = config["config"]
    for key in ("build_input_shape", "dtype", "trainable"):
        inner.pop(key, None)
    inner["layers"] = [_layer2(layer) for layer in inner["layers"]]
    if config["class_name"] == "Sequential":
        first = inner["layers"].pop(0)  # Keras 2 kept no InputLayer in a Sequential config
        inner["layers"][0]["config"]["batch_input_shape"] = first["config"]["batch_input_shape"]
    else:
        config["class_name"] = "Model"
        inner["input_layers"] = [inner["input_layers"]]
        inner["output_layers"] = [inner["output_layers"]]
    return config


def _rename_weights(group: Any) -> None:
    """``conv2d_1/kernel:0`` weight names, as Keras 2 stored them."""
    for layer in group.attrs["layer_names"]:
        layer = layer.decode() if hasattr(layer, "decode") else str(layer)
        sub = group[layer]
        names = [n.decode() if hasattr(n, "decode") else str(n) for n in sub.attrs["weight_names"]]
        new = [f"{layer}/{n.rsplit('/', 1)[-1]}:0" for n in names]
        for old, name in zip(names, new, strict=True):
            sub.move(old, name)
        sub.attrs["weight_names"] = [n.encode() for n in new]
        for key in list(sub):
            if isinstance(sub[key], h5py.Group) and not _datasets(sub[key]):
                del sub[key]  # the emptied Keras 3 path groups
    for key, value in (("keras_version", KERAS2), ("backend", "tensorflow")):
        group.attrs[key] = value.encode()


Edit = Callable[[dict[str, Any]], dict[str, Any]]


def _save_keras2(
    keras: Any, model: Any, path: Path, *, edit: Edit | None = None, version: str = KERAS2
) -> dict[str, Any]:
    """Save ``model`` as ``path`` (.h5) with a Keras 2.2.4 config; returns that config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(path))
    with h5py.File(path, "r+") as f:
        config = _as_keras2(json.loads(f.attrs["model_config"]))
        if edit is not None:
            config = edit(config)
        f.attrs["model_config"] = json.dumps(config).encode("utf-8")
        f.attrs["keras_version"] = version.encode()
        f.attrs["backend"] = b"tensorflow"
        _rename_weights(f["model_weights"])
    return config


def _datasets(group: Any) -> list[str]:
    found: list[str] = []
    group.visit(lambda name: found.append(name) if isinstance(group[name], h5py.Dataset) else None)
    return found


def _save_weights_only(keras: Any, model: Any, path: Path) -> None:
    """Keras 2's ``model.save_weights('w.h5')``: the layer groups at the root, no config."""
    full = path.with_name("full.h5")
    _save_keras2(keras, model, full)
    with h5py.File(full, "r") as src, h5py.File(path, "w") as dst:
        group = src["model_weights"]
        for name in group:
            group.copy(name, dst)
        for key, value in group.attrs.items():
            dst.attrs[key] = value
    full.unlink()


# -- checks -----------------------------------------------------------------------------------
def _assert_same(clf: Classifier, model: Any, shape: tuple[int, ...]) -> None:
    """Same outputs as the Keras 3 original, and input gradients that match its own."""
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2))
    xg = x.clone().requires_grad_(True)
    ref = model(xg.permute(0, 2, 3, 1), training=False)
    (ref_grad,) = torch.autograd.grad(ref[:, 0].sum(), xg)
    torch.testing.assert_close(clf.logits(x), ref.detach(), atol=TOL, rtol=0)
    _, _, grad = clf.value_and_grad(x, lambda z: z[:, 0])
    assert bool(grad.abs().sum() > 0)
    torch.testing.assert_close(grad, ref_grad, atol=TOL, rtol=0)


def _load(path: Path, **kwargs: Any) -> Classifier:
    """The model as the file has it (its softmax kept: these tests compare with Keras)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AegisWarning)
        return load_classifier(path, keep_softmax=True, **kwargs)


def test_keras2_sequential_cnn_without_input_layer_loads(tmp_path: Path, keras: Any) -> None:
    model = _cnn(keras)
    path = tmp_path / "cnn.h5"
    config = _save_keras2(keras, model, path)
    assert config["config"]["layers"][0]["class_name"] == "Conv2D"  # the Keras 2 shape
    with pytest.warns(AegisWarning, match="probabilities"):
        clf = load_classifier(path, keep_softmax=True)  # compared with Keras' own outputs
    assert clf.provenance["format"] == "keras (legacy HDF5)"
    assert clf.provenance["keras"] == (
        "Keras 2.2.4 HDF5 (backend tensorflow): config repaired: InputLayer added from "
        "batch_input_shape"
    )
    assert clf.provenance["outputs"] == "probabilities (softmax)"
    assert clf.info.layout == "NHWC" and clf.input_shape == (1, 12, 12)
    _assert_same(clf, model, (1, 12, 12))


def test_keras2_functional_model_loads(tmp_path: Path, keras: Any) -> None:
    model = _functional(keras)
    path = tmp_path / "functional.hdf5"
    _save_keras2(keras, model, path)
    clf = _load(path)
    note = clf.provenance["keras"]
    assert note.startswith("Keras 2.2.4 HDF5 (backend tensorflow): config repaired: ")
    assert "class Model renamed Functional" in note
    assert "InputLayer batch_input_shape renamed batch_shape" in note
    assert "dropped settings Keras 3 lacks: DepthwiseConv2D.groups=1" in note
    assert clf.input_shape == (3, 8, 8) and clf.num_classes == 5
    _assert_same(clf, model, (3, 8, 8))


def make_cnn() -> Any:
    """A factory as users write it: returns the Keras model (weights not loaded)."""
    import keras

    return _cnn(keras)


def test_weights_only_files_need_and_take_a_factory(tmp_path: Path, keras: Any) -> None:
    model = _cnn(keras)
    legacy = tmp_path / "weights.h5"
    _save_weights_only(keras, model, legacy)
    current = tmp_path / "net.weights.h5"
    model.save_weights(str(current))
    for path in (legacy, current):
        with pytest.raises(ModelError, match=r"weights-only file .* pass --factory") as info:
            load_classifier(path)
        assert "corrupt" not in str(info.value) and "\n" not in str(info.value)
    clf = _load(legacy, factory=f"{__name__}:make_cnn")
    assert clf.provenance["factory"] == f"flag: {__name__}:make_cnn"
    assert clf.provenance["format"] == "keras HDF5 weights + factory"
    _assert_same(clf, model, (1, 12, 12))
    _assert_same(_load(current, factory=make_cnn), model, (1, 12, 12))
    renamed = tmp_path / "net.h5"  # Keras 3 layout under a plain .h5 name
    renamed.write_bytes(current.read_bytes())
    _assert_same(_load(renamed, factory=make_cnn), model, (1, 12, 12))


def test_weights_only_file_with_a_to_json_architecture(tmp_path: Path, keras: Any) -> None:
    model = _functional(keras)
    path = tmp_path / "net.h5"
    _save_weights_only(keras, model, path)
    full = tmp_path / "full.h5"
    architecture = {**_save_keras2(keras, model, full), "keras_version": KERAS2}
    (tmp_path / "model.json").write_text(json.dumps({**architecture, "backend": "tensorflow"}))
    clf = _load(path)
    assert clf.provenance["format"] == "keras HDF5 weights + JSON config"
    assert clf.provenance["architecture"] == "model.to_json() config from the sidecar"
    assert clf.provenance["keras"].startswith("Keras 2.2.4 HDF5 (backend tensorflow): config ")
    _assert_same(clf, model, (3, 8, 8))

    current = tmp_path / "k3" / "net.weights.h5"  # Keras 3: save_weights + to_json
    current.parent.mkdir()
    model.save_weights(str(current))
    current.with_name("model.json").write_text(model.to_json())
    clf = _load(current)
    assert clf.provenance["keras"] == "Keras HDF5"
    _assert_same(clf, model, (3, 8, 8))


def test_a_factory_rebuilds_what_keras3_cannot(tmp_path: Path, keras: Any) -> None:
    model = _cnn(keras)
    path = tmp_path / "custom.h5"

    def custom(config: dict[str, Any]) -> dict[str, Any]:
        config["config"]["layers"][3]["class_name"] = "MyDropout"
        return config

    _save_keras2(keras, model, path, edit=custom)
    with pytest.raises(ModelError, match=r"layer 'dropout_1' of class MyDropout .* --factory"):
        load_classifier(path)
    clf = _load(path, factory=make_cnn)  # the weights still come from the file
    assert clf.provenance["keras"].endswith("weights loaded into the factory's model")
    _assert_same(clf, model, (1, 12, 12))

    def torch_net() -> nn.Module:
        return nn.Linear(2, 2)

    with pytest.raises(ModelError, match="returned Linear, not a Keras model"):
        load_classifier(path, factory=torch_net)
    with pytest.raises(ModelError, match="do not fit the model"):
        load_classifier(path, factory=lambda: _functional(keras))


def test_failures_name_their_cause(tmp_path: Path, keras: Any) -> None:
    model = _cnn(keras)
    old = tmp_path / "old.h5"
    _save_keras2(keras, model, old, version="1.2.2")
    with pytest.raises(ModelError, match=r"saved by Keras 1\.2\.2, .* re-save"):
        load_classifier(old)

    tf_op = tmp_path / "tfop.h5"

    def op(config: dict[str, Any]) -> dict[str, Any]:
        config["config"]["layers"][2]["class_name"] = "TFOpLambda"
        return config

    _save_keras2(keras, model, tf_op, edit=op)
    with pytest.raises(ModelError, match=r"class TFOpLambda \(a TensorFlow operation"):
        load_classifier(tf_op)

    odd = tmp_path / "odd.h5"

    def unknown_setting(config: dict[str, Any]) -> dict[str, Any]:
        config["config"]["layers"][0]["config"]["kernel_flip"] = 3
        return config

    _save_keras2(keras, model, odd, edit=unknown_setting)
    with pytest.raises(ModelError, match=r"Keras 2\.2\.4\): layer class Conv2D: .*kernel_flip"):
        load_classifier(odd)

    lam = tmp_path / "lambda.h5"

    def with_lambda(config: dict[str, Any]) -> dict[str, Any]:
        code = ["base64 marshalled bytecode", None, None]  # never decoded: refused before
        lam_cfg = {"name": "lambda_1", "function": code, "function_type": "lambda"}
        config["config"]["layers"].insert(3, {"class_name": "Lambda", "config": lam_cfg})
        return config

    _save_keras2(keras, model, lam, edit=with_lambda)
    with pytest.raises(UnsafeFileError, match=r"Lambda layer .* --unsafe-pickle"):
        load_classifier(lam)

    other = tmp_path / "data.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelError, match="without a Keras model or weights"):
        load_classifier(other)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(old.read_bytes()[:600])
    with pytest.raises(ModelError, match="corrupt"):
        load_classifier(broken)
    archive = tmp_path / "net.keras"
    model.save(str(archive))
    with pytest.raises(ModelError, match=r"Keras 3 archive, .* drop --factory"):
        load_classifier(archive, factory=make_cnn)
    custom = tmp_path / "custom.keras"  # a sound archive naming a layer keras does not know
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(custom, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                data = data.replace(b'"Dropout"', b'"MyDropout"')
            dst.writestr(item, data)
    with pytest.raises(ModelError, match=r"cannot load custom\.keras \(.*MyDropout") as info:
        load_classifier(custom)
    assert "corrupt" not in str(info.value)


def test_keras3_h5_still_loads_as_saved(tmp_path: Path, keras: Any) -> None:
    model = _functional(keras)
    path = tmp_path / "k3.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(path))
    clf = _load(path)
    assert clf.provenance["keras"] == f"Keras {keras.__version__} HDF5 (backend torch)"
    _assert_same(clf, model, (3, 8, 8))
