"""load_classifier: every format gives the original model's logits and input gradients."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import types
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _factories
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aegis.errors import AegisWarning, CapabilityError, ModelError, UnsafeFileError
from aegis.io.models import load_classifier
from aegis.model import Classifier

TOL = 1e-4
IR = 8  # ONNX IR version of hand-built graphs: old enough for any onnxruntime we support
FACTORY = f"{_factories.__name__}:make_cnn"


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return _factories.make_cnn().eval()


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 1, 12, 12, generator=g), torch.tensor([0, 1, 2, 3, 0])


def _reference(fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xg = x.clone().requires_grad_(True)
    logits = fn(xg)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
    return logits.detach(), grad


def _assert_matches(
    clf: Classifier, fn: Callable[[Tensor], Tensor], batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    ref_logits, ref_grad = _reference(fn, x, y)
    torch.testing.assert_close(clf.logits(x), ref_logits, atol=TOL, rtol=0)
    logits, _, grad = clf.value_and_grad(x, lambda z: F.cross_entropy(z, y, reduction="none"))
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=TOL, rtol=0)


def _sidecar(path: Path, **data: Any) -> None:
    path.with_suffix(".json").write_text(json.dumps(data))


# -- PyTorch formats ----------------------------------------------------------------------------
def test_torchscript(tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    clf = load_classifier(path, input_shape="1,12,12")
    _assert_matches(clf, cnn, batch)
    assert clf.num_classes == 4 and clf.info.layout == "NCHW"
    assert clf.provenance["format"] == "torchscript"
    assert clf.provenance["input_shape"] == "flag"
    assert clf.provenance["num_classes"].startswith("inferred")
    assert clf.provenance["layout"].startswith("default")
    assert clf.provenance["bounds"].startswith("default")


def test_torchscript_without_shape_names_the_flag(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.trace(cnn, torch.zeros(1, 1, 12, 12)), str(path))
    with pytest.raises(ModelError, match="--input-shape 1,28,28"):
        load_classifier(path)
    assert load_classifier(path, input_shape_hint=(1, 12, 12)).input_shape == (1, 12, 12)


@pytest.mark.parametrize("dynamic", [True, False])
def test_torch_export(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor], dynamic: bool
) -> None:
    shapes = {"x": {0: torch.export.Dim("n", min=1, max=1024)}} if dynamic else None
    program = torch.export.export(cnn, (torch.zeros(2, 1, 12, 12),), dynamic_shapes=shapes)
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    clf = load_classifier(path)  # shape read off the program; batch 5 runs in chunks if static
    _assert_matches(clf, cnn, batch)
    assert clf.input_shape == (1, 12, 12)
    assert clf.provenance["input_shape"].startswith("inferred")
    assert ("batch" in clf.provenance) is not dynamic


def test_safetensors_with_factory(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "net.safetensors"
    save_file(cnn.state_dict(), str(path))
    clf = load_classifier(path, factory=FACTORY, input_shape=(1, 12, 12))
    _assert_matches(clf, cnn, batch)
    assert clf.provenance["factory"] == f"flag: {FACTORY}"


def test_state_dict_with_factory(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    path = tmp_path / "net.pth"
    torch.save({"epoch": 3, "state_dict": cnn.state_dict()}, path)
    with pytest.raises(ModelError, match="--factory"):
        load_classifier(path, input_shape=(1, 12, 12))
    clf = load_classifier(path, factory=_factories.make_cnn, input_shape=(1, 12, 12))
    _assert_matches(clf, cnn, batch)


def test_factory_weights_must_fit(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "net.pt"
    torch.save(cnn.state_dict(), path)
    with pytest.raises(ModelError, match=r"missing keys 1\.bias, 1\.weight.*conv\.bias"):
        load_classifier(path, factory=f"{_factories.__name__}:make_mlp", input_shape=(1, 12, 12))
    with pytest.raises(ModelError, match="size mismatch"):
        load_classifier(path, factory=FACTORY, factory_kwargs={"width": 8}, input_shape="1,12,12")
    with pytest.raises(ModelError, match=r"not a torch\.nn\.Module"):
        load_classifier(path, factory=f"{_factories.__name__}:not_a_module")
    with pytest.raises(ModelError, match="cannot import factory module"):
        load_classifier(path, factory="no_such_module_xyz:make")


def test_pickled_module_needs_opt_in(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    path = tmp_path / "net.pt"
    torch.save(cnn, path)
    with pytest.raises(UnsafeFileError, match="--unsafe-pickle") as info:
        load_classifier(path, input_shape=(1, 12, 12))
    message = str(info.value)
    assert "execute code" in message and "TorchScript" in message and "safetensors" in message
    clf = load_classifier(path, input_shape=(1, 12, 12), allow_unsafe_pickle=True)
    _assert_matches(clf, cnn, batch)

    plain = tmp_path / "net.pkl"
    plain.write_bytes(pickle.dumps(cnn))
    with pytest.raises(UnsafeFileError, match="--unsafe-pickle"):
        load_classifier(plain, input_shape=(1, 12, 12))
    _assert_matches(
        load_classifier(plain, input_shape=(1, 12, 12), allow_unsafe_pickle=True), cnn, batch
    )


def test_training_mode_file_warns_and_is_evaluated(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Dropout(0.5)).train()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    with pytest.warns(AegisWarning, match="training mode"):
        clf = load_classifier(path, input_shape=(1, 4, 4))
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(clf.logits(x), clf.logits(x))  # dropout is off
    assert clf.provenance["mode"].startswith("saved in training mode")


def test_pt2_with_pickled_parts_needs_opt_in(tmp_path: Path, cnn: nn.Module) -> None:
    program = torch.export.export(cnn, (torch.zeros(2, 1, 12, 12),))
    clean = tmp_path / "clean.pt2"
    torch.export.save(program, str(clean))
    with zipfile.ZipFile(clean) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config_name = next(n for n in members if n.endswith("_weights_config.json"))
    config = json.loads(members[config_name])
    entry = config["config"]["conv.bias"]
    entry["use_pickle"] = True  # torch.export.load would now run torch.load(weights_only=False)
    members[config_name] = json.dumps(config).encode()
    payload = io.BytesIO()
    torch.save(nn.Parameter(cnn.state_dict()["conv.bias"].clone()), payload)
    members[config_name.rsplit("/", 1)[0] + "/" + entry["path_name"]] = payload.getvalue()
    path = tmp_path / "net.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(UnsafeFileError, match=r"pickled parts .*conv\.bias.* --unsafe-pickle"):
        load_classifier(path)
    x = torch.rand(3, 1, 12, 12)
    loaded = load_classifier(path, allow_unsafe_pickle=True)
    torch.testing.assert_close(loaded.logits(x), cnn(x).detach(), atol=TOL, rtol=0)


def test_file_with_its_own_architecture_refuses_a_factory(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    with pytest.raises(ModelError, match="drop --factory"):
        load_classifier(path, factory=FACTORY, input_shape=(1, 12, 12))


# -- sidecar and metadata precedence ----------------------------------------------------------
def test_sidecar_is_honoured_and_flags_override_it(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    _sidecar(
        path,
        num_classes=4,
        input_shape=[1, 12, 12],
        bounds=[0, 255],
        mean=[0.5],
        std=[0.25],
        layout="nchw",
        dataset="toy",
    )
    clf = load_classifier(path)
    assert clf.info.bounds == (0.0, 255.0) and clf.info.mean == (0.5,) and clf.info.std == (0.25,)
    assert clf.num_classes == 4 and clf.input_shape == (1, 12, 12)
    for key in ("num_classes", "input_shape", "bounds", "mean", "std", "layout"):
        assert clf.provenance[key] == "sidecar", key
    assert clf.provenance["sidecar"] == str(path.with_suffix(".json"))

    x = torch.rand(2, 1, 12, 12) * 255
    torch.testing.assert_close(clf.logits(x), cnn((x - 0.5) / 0.25), atol=1e-3, rtol=1e-5)

    over = load_classifier(path, bounds=(0.0, 1.0), mean=0.0, std=1.0)
    assert over.info.bounds == (0.0, 1.0) and over.info.std == (1.0,)
    assert over.provenance["bounds"] == "flag" and over.provenance["input_shape"] == "sidecar"


def test_model_json_sidecar_fallback(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "weights.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    (tmp_path / "model.json").write_text(json.dumps({"input_shape": [1, 12, 12]}))
    assert load_classifier(path).provenance["input_shape"] == "sidecar"


def test_contradictions_raise(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    with pytest.raises(ModelError, match=r"--num-classes 5 contradicts .* outputs 4 scores"):
        load_classifier(path, input_shape=(1, 12, 12), num_classes=5)
    _sidecar(path, num_classes=10, input_shape=[1, 12, 12])
    with pytest.raises(ModelError, match="num_classes 10 from the sidecar contradicts"):
        load_classifier(path)
    assert load_classifier(path, num_classes=4).num_classes == 4  # the flag wins
    with pytest.raises(ModelError, match="check --input-shape"):
        load_classifier(path, num_classes=4, input_shape=(3, 12, 12))


def test_sidecar_factory_outside_aegis_needs_the_flag(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    from safetensors.torch import save_file

    wide = _factories.make_cnn(width=6).eval()
    path = tmp_path / "net.safetensors"
    save_file(wide.state_dict(), str(path))
    _sidecar(path, factory=FACTORY, factory_kwargs={"width": 6}, input_shape=[1, 12, 12])
    with pytest.raises(UnsafeFileError, match=f"pass --factory {FACTORY}"):
        load_classifier(path)
    clf = load_classifier(path, factory=FACTORY)  # trusted explicitly; sidecar kwargs apply
    _assert_matches(clf, wide, batch)
    assert "width" in clf.provenance["factory"]


def test_sidecar_factory_must_be_registered(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    zoo = types.ModuleType("aegis.zoo.testnets")
    zoo.make_cnn = _factories.make_cnn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aegis.zoo.testnets", zoo)
    path = tmp_path / "net.safetensors"
    save_file(cnn.state_dict(), str(path))
    # A module under aegis.zoo is not a registered architecture: a sidecar is data, not code.
    _sidecar(path, factory="aegis.zoo.testnets:make_cnn", input_shape=[1, 12, 12])
    with pytest.raises(UnsafeFileError, match="not a registered architecture"):
        load_classifier(path)
    clf = load_classifier(path, trust_sidecar=True)
    _assert_matches(clf, cnn, batch)
    assert clf.provenance["factory"] == "sidecar: aegis.zoo.testnets:make_cnn"
    # Elsewhere in aegis is not the zoo: a sidecar could call any function with its kwargs.
    _sidecar(path, factory="aegis.io.models:load_classifier", input_shape=[1, 12, 12])
    with pytest.raises(UnsafeFileError, match=r"--factory aegis\.io\.models:load_classifier"):
        load_classifier(path)


# -- broken files -------------------------------------------------------------------------------
def _truncated_torchscript(tmp_path: Path, cnn: nn.Module) -> Path:
    full = tmp_path / "full.pt"
    torch.jit.save(torch.jit.script(cnn), str(full))
    path = tmp_path / "net.pt"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("net.pt", b"", "is empty"),
        ("net.onnx", b"", "is empty"),
        ("net.pt", os.urandom(2048), "neither a TorchScript"),
        ("net.pth", b"\x80\x02\x8a\x0a" + os.urandom(64), "cannot read net.pth"),
        ("net.safetensors", os.urandom(512), "cannot read net.safetensors as safetensors"),
        ("net.onnx", os.urandom(512), "cannot read net.onnx as an ONNX model"),
        ("net.keras", os.urandom(512), "not a Keras 3 archive"),
        ("net.h5", os.urandom(512), "not an HDF5 file"),
        ("net.pt2", b"PK\x03\x04" + os.urandom(512), "cannot read net.pt2"),
        ("net.xyz", b"whatever", "unknown model file extension '.xyz'"),
        ("net", b"whatever", "unknown model file extension"),
    ],
)
def test_broken_files_raise_model_error(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match=match) as info:
        load_classifier(path, input_shape=(1, 12, 12), factory=None)
    assert "\n" not in str(info.value)


def test_truncated_and_missing_files(tmp_path: Path, cnn: nn.Module) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_classifier(_truncated_torchscript(tmp_path, cnn), input_shape=(1, 12, 12))
    with pytest.raises(ModelError, match="no such model file"):
        load_classifier(tmp_path / "missing.pt")


# -- ONNX ---------------------------------------------------------------------------------------
def _export_onnx(module: nn.Module, path: Path, *, dynamic: bool = True) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, 1, 12, 12),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}} if dynamic else None,
        )


def test_onnx_is_white_box(tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "net.onnx"
    _export_onnx(cnn, path)
    clf = load_classifier(path)
    assert clf.differentiable and clf.input_shape == (1, 12, 12) and clf.info.layout == "NCHW"
    assert clf.provenance["format"] == "onnx (converted to torch)"
    assert clf.provenance["layout"].startswith("inferred: channels-first")
    assert clf.provenance["onnx_check"].startswith("torch conversion matches onnxruntime")
    _assert_matches(clf, cnn, batch)
    with pytest.raises(ModelError, match="takes inputs of shape"):
        load_classifier(path, input_shape=(3, 12, 12))


def test_onnx_with_fixed_batch(
    tmp_path: Path, cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "net.onnx"
    _export_onnx(cnn, path, dynamic=False)
    clf = load_classifier(path)
    assert "batch" in clf.provenance
    _assert_matches(clf, cnn, batch)


def test_onnx_unsupported_op_loads_query_only(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from _factories import hardmax_onnx

    path = tmp_path / "net.onnx"
    hardmax_onnx(path, seed=0)
    with pytest.warns(AegisWarning, match="ONNX op Hardmax has no differentiable converter"):
        clf = load_classifier(path)
    assert not clf.differentiable
    assert clf.input_shape == (1, 4, 4) and clf.info.layout == "flat"
    assert clf.provenance["input_shape"] == "inferred: flat square grayscale (n, 16)"
    assert "query-only" in clf.provenance["gradients"]
    x = torch.rand(3, 1, 4, 4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, {"x": x.permute(0, 2, 3, 1).reshape(3, 16).numpy()})
    np.testing.assert_allclose(clf.logits(x).numpy(), ref, atol=TOL)
    with pytest.raises(CapabilityError):
        clf.value_and_grad(x, lambda z: z.sum(1))


def test_onnx_channels_last_graph(tmp_path: Path) -> None:
    """A tf2onnx-style graph: NHWC input, Transpose, SAME conv, softmax output."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 1, 3, 3)).astype(np.float32), "k"),
        numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "k"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__1", 9, 9, 1])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["unk__1", 5])],
        inits,
    )
    path = tmp_path / "tf.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR),
        str(path),
    )
    with pytest.warns(AegisWarning, match="probabilities"):
        clf = load_classifier(path, keep_softmax=True)  # the softmax as the file has it
    assert clf.info.layout == "NHWC" and clf.input_shape == (1, 9, 9) and clf.differentiable
    assert clf.provenance["outputs"] == "probabilities (softmax)"
    x = torch.rand(4, 1, 9, 9)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, {"x": x.permute(0, 2, 3, 1).numpy()})
    np.testing.assert_allclose(clf.logits(x).numpy(), ref, atol=TOL)


def test_onnx_extra_label_output_is_pruned(tmp_path: Path) -> None:
    """skl2onnx-style: a label output (ArgMax, not convertible) beside the scores output."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 3)).astype("f4"), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
        ],
        [w],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR),
        str(path),
    )
    with pytest.warns(AegisWarning, match="probabilities"):
        clf = load_classifier(path, keep_softmax=True)  # the softmax as the file has it
    assert clf.differentiable and clf.num_classes == 3 and clf.input_shape == (1, 8, 8)
    assert "probabilities" in clf.provenance["onnx_output"]


def test_onnx_conversion_disagreeing_with_onnxruntime_falls_back(tmp_path: Path) -> None:
    """onnxruntime sizes SAME padding of a dilated MaxPool unlike the ONNX spec (and torch)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    pool = {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [1, 2]}
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], auto_pad="SAME_UPPER", **pool),
        helper.make_node("ReduceMean", ["p"], ["a"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceSum", ["x"], ["b"], axes=[2, 3], keepdims=0),
        helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "quirk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 7, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    )
    path = tmp_path / "quirk.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=IR),
        str(path),
    )
    with pytest.warns(AegisWarning, match="disagrees with onnxruntime"):
        clf = load_classifier(path)
    assert not clf.differentiable and clf.num_classes == 2
    assert clf.logits(torch.rand(2, 1, 7, 9)).shape == (2, 2)


# -- Keras --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_mod() -> Any:
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    return keras


def _keras_copy(keras: Any, cnn: nn.Module) -> Any:
    """The torch CNN rebuilt channels-last in Keras, with the same weights."""
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    sd = {k: v.detach().numpy() for k, v in cnn.state_dict().items()}
    dense = sd["fc.weight"].reshape(4, 4, 6, 6).transpose(2, 3, 1, 0).reshape(144, 4)
    model.set_weights(
        [sd["conv.weight"].transpose(2, 3, 1, 0), sd["conv.bias"], dense, sd["fc.bias"]]
    )
    return model


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_keras(
    tmp_path: Path, keras_mod: Any, cnn: nn.Module, batch: tuple[Tensor, Tensor], ext: str
) -> None:
    path = tmp_path / f"net{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _keras_copy(keras_mod, cnn).save(str(path))
    clf = load_classifier(path)
    assert clf.info.layout == "NHWC" and clf.input_shape == (1, 12, 12)
    assert clf.provenance["layout"].startswith("inferred: channels-last")
    assert clf.provenance["format"] == ("keras" if ext == ".keras" else "keras (legacy HDF5)")
    _assert_matches(clf, cnn, batch)


def test_keras_softmax_flat_and_lambda(tmp_path: Path, keras_mod: Any) -> None:
    keras = keras_mod
    flat = keras.Sequential([keras.Input((16,)), keras.layers.Dense(3, activation="softmax")])
    path = tmp_path / "flat.keras"
    flat.save(str(path))
    with pytest.warns(AegisWarning, match="probabilities"):
        clf = load_classifier(path, keep_softmax=True)  # the softmax as the file has it
    assert clf.provenance["outputs"] == "probabilities (softmax)"
    assert clf.info.layout == "flat" and clf.input_shape == (1, 4, 4)
    assert clf.provenance["input_shape"].startswith("inferred: flat square grayscale")
    x = torch.rand(2, 1, 4, 4)
    expected = flat(x.reshape(2, 16), training=False).detach()
    torch.testing.assert_close(clf.logits(x), expected, atol=TOL, rtol=0)

    lam = keras.Sequential(
        [keras.Input((16,)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(3)]
    )
    path = tmp_path / "lambda.keras"
    lam.save(str(path))
    with pytest.raises(UnsafeFileError, match=r"Lambda layer .* --unsafe-pickle"):
        load_classifier(path)
    assert load_classifier(path, allow_unsafe_pickle=True).num_classes == 3


# -- the ONNX → torch converter, op by op, against onnxruntime ------------------------------------
Node = tuple[str, list[str], list[str], dict[str, Any]]


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Node:
    return op, inputs, outputs, attrs


def _onnx_cases() -> dict[str, tuple[list[Node], dict[str, np.ndarray], int]]:
    """name → (nodes reading "x" and writing "y", initializers, opset)."""
    rng = np.random.default_rng(0)

    def f(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    def i64(*values: int) -> np.ndarray:
        return np.array(values, dtype=np.int64)

    n = _node
    return {
        "conv-same-upper": (
            [n("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
            {"w": f(4, 3, 3, 3)},
            13,
        ),
        "conv-same-lower": (
            [n("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_LOWER", strides=[2, 3])],
            {"w": f(2, 3, 3, 2), "b": f(2)},
            13,
        ),
        "conv-asymmetric-grouped": (
            [n("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1], group=3, strides=[1, 2])],
            {"w": f(6, 1, 3, 3)},
            11,
        ),
        "conv-transpose-output-shape": (
            [n("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[13, 16])],
            {"w": f(3, 2, 3, 3)},
            13,
        ),
        "conv-transpose-pads": (
            [
                n(
                    "ConvTranspose",
                    ["x", "w", "b"],
                    ["y"],
                    strides=[2, 1],
                    pads=[1, 0, 0, 1],
                    output_padding=[1, 0],
                )
            ],
            {"w": f(3, 2, 3, 2), "b": f(2)},
            13,
        ),
        "maxpool-asymmetric-ceil": (
            [
                n(
                    "MaxPool",
                    ["x"],
                    ["y"],
                    kernel_shape=[3, 3],
                    strides=[2, 2],
                    pads=[0, 0, 1, 1],
                    ceil_mode=1,
                )
            ],
            {},
            13,
        ),
        "maxpool-dilated": (
            [
                n(
                    "MaxPool",
                    ["x"],
                    ["y"],
                    kernel_shape=[3, 2],
                    strides=[2, 1],
                    dilations=[1, 2],
                    pads=[1, 1, 1, 1],
                )
            ],
            {},
            12,
        ),
        "maxpool-same": (
            [
                n(
                    "MaxPool",
                    ["x"],
                    ["y"],
                    kernel_shape=[2, 3],
                    strides=[2, 2],
                    auto_pad="SAME_UPPER",
                )
            ],
            {},
            12,
        ),
        "conv-dilated": (
            [n("Conv", ["x", "w"], ["y"], dilations=[2, 1], pads=[2, 0, 1, 1])],
            {"w": f(2, 3, 3, 2)},
            13,
        ),
        "avgpool-exclude-pad": (
            [n("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
            {},
            13,
        ),
        "avgpool-asymmetric": (
            [
                n(
                    "AveragePool",
                    ["x"],
                    ["y"],
                    kernel_shape=[2, 3],
                    strides=[2, 2],
                    pads=[0, 0, 1, 2],
                )
            ],
            {},
            13,
        ),
        "avgpool-include-pad-same": (
            [
                n(
                    "AveragePool",
                    ["x"],
                    ["y"],
                    kernel_shape=[3, 3],
                    strides=[2, 2],
                    auto_pad="SAME_UPPER",
                    count_include_pad=1,
                )
            ],
            {},
            13,
        ),
        "global-pools-concat": (
            [
                n("GlobalMaxPool", ["x"], ["a"]),
                n("GlobalAveragePool", ["x"], ["b"]),
                n("Concat", ["a", "b"], ["y"], axis=1),
            ],
            {},
            13,
        ),
        "softmax-legacy-coerced": ([n("Softmax", ["x"], ["y"], axis=1)], {}, 11),
        "logsoftmax-axis": ([n("LogSoftmax", ["x"], ["y"], axis=1)], {}, 13),
        "gemm-transposed": (
            [
                n("Flatten", ["x"], ["a"], axis=2),
                n("Gemm", ["a", "w", "c"], ["y"], alpha=0.5, beta=2.0, transA=1, transB=1),
            ],
            {"w": f(5, 2), "c": f(5)},
            13,
        ),
        "matmul-batched": ([n("MatMul", ["x", "w"], ["y"])], {"w": f(8, 3)}, 13),
        "reshape-zero-minus-one": (
            [n("Reshape", ["x", "s"], ["y"])],
            {"s": i64(0, -1, 4)},
            13,
        ),
        "unsqueeze-attr-squeeze-attr": (
            [n("Unsqueeze", ["x"], ["a"], axes=[0, 3]), n("Squeeze", ["a"], ["y"], axes=[0])],
            {},
            11,
        ),
        "unsqueeze-squeeze-inputs": (
            [n("Unsqueeze", ["x", "ax"], ["a"]), n("Squeeze", ["a", "sq"], ["y"])],
            {"ax": i64(1, -1), "sq": i64(-1)},
            13,
        ),
        "slice-negative-step": (
            [n("Slice", ["x", "s", "e", "a", "st"], ["y"])],
            {"s": i64(-1, 0), "e": i64(-100, 10), "a": i64(2, 3), "st": i64(-2, 3)},
            13,
        ),
        "slice-attrs": (
            [n("Slice", ["x"], ["y"], starts=[1, 2], ends=[3, 1000], axes=[1, -1])],
            {},
            9,
        ),
        "pad-constant": (
            [n("Pad", ["x", "p", "v"], ["y"])],
            {"p": i64(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5, np.float32)},
            13,
        ),
        "pad-reflect": (
            [n("Pad", ["x", "p"], ["y"], mode="reflect")],
            {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)},
            13,
        ),
        "pad-edge-axes": (
            [n("Pad", ["x", "p", "", "a"], ["y"], mode="edge")],
            {"p": i64(2, 1), "a": i64(-1)},
            18,
        ),
        "pad-legacy-attrs": (
            [n("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=-1.0)],
            {},
            10,
        ),
        "clip-min-only": ([n("Clip", ["x", "lo"], ["y"])], {"lo": np.array(-0.3, np.float32)}, 13),
        "clip-legacy-attrs": ([n("Clip", ["x"], ["y"], min=-0.5, max=0.25)], {}, 6),
        "activations": (
            [
                n("LeakyRelu", ["x"], ["a"], alpha=0.2),
                n("Elu", ["a"], ["b"], alpha=0.7),
                n("Selu", ["b"], ["c"]),
                n("HardSigmoid", ["c"], ["d"], alpha=0.3, beta=0.4),
                n("Tanh", ["x"], ["e"]),
                n("Sigmoid", ["e"], ["g"]),
                n("Relu", ["x"], ["h"]),
                n("Sum", ["d", "g", "h"], ["y"]),
            ],
            {},
            13,
        ),
        "arithmetic": (
            [
                n("Abs", ["x"], ["a"]),
                n("Add", ["a", "one"], ["b"]),
                n("Sqrt", ["b"], ["c"]),
                n("Log", ["c"], ["d"]),
                n("Exp", ["d"], ["e"]),
                n("Pow", ["e", "two"], ["g"]),
                n("Neg", ["g"], ["h"]),
                n("Erf", ["x"], ["i"]),
                n("Div", ["h", "b"], ["j"]),
                n("Sub", ["j", "i"], ["k"]),
                n("Mul", ["k", "x"], ["y"]),
            ],
            {"one": np.array(1.0, np.float32), "two": np.array(2.0, np.float32)},
            13,
        ),
        "reduce-mean-attr": ([n("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=0)], {}, 13),
        "reduce-mean-input": ([n("ReduceMean", ["x", "a"], ["y"])], {"a": i64(-1)}, 18),
        "reduce-sum-input": ([n("ReduceSum", ["x", "a"], ["y"], keepdims=0)], {"a": i64(1)}, 13),
        "gather-negative": ([n("Gather", ["x", "i"], ["y"], axis=1)], {"i": i64(-1, 0)}, 13),
        "batchnorm": (
            [n("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
            {"s": f(3), "b": f(3), "m": f(3), "v": np.abs(f(3)) + 0.5},
            13,
        ),
        "shape-plumbing": (
            [
                n("Shape", ["x"], ["s"]),
                n("Gather", ["s", "zero"], ["n"], axis=0),
                n("Unsqueeze", ["n", "ax"], ["n1"]),
                n("Concat", ["n1", "m1"], ["shape"], axis=0),
                n("Reshape", ["x", "shape"], ["flat"]),
                n("Cast", ["flat"], ["d"], to=11),
                n("Cast", ["d"], ["y"], to=1),
            ],
            {"zero": np.array(0, np.int64), "ax": i64(0), "m1": i64(-1)},
            13,
        ),
        "split-where-constant": (
            [
                n("Split", ["x", "sp"], ["a", "b"], axis=1),
                n("Constant", [], ["k"], value_float=0.1),
                n("Greater", ["a", "k"], ["cond"]),
                n("Where", ["cond", "a", "b"], ["w"]),
                n("Expand", ["w", "shape"], ["y"]),
            ],
            {"sp": i64(1, 2), "shape": i64(1, 2, 1, 1)},
            13,
        ),
        "dropout-identity": (
            [n("Dropout", ["x"], ["a"]), n("Identity", ["a"], ["y"])],
            {},
            13,
        ),
    }


_ONNX_INPUTS = {
    "conv-transpose-output-shape": (2, 3, 6, 8),
    "conv-transpose-pads": (2, 3, 5, 4),
    "matmul-batched": (2, 3, 4, 8),
    "reshape-zero-minus-one": (2, 3, 4, 8),
    "gemm-transposed": (1, 2, 3),
}


@pytest.mark.parametrize("case", sorted(_onnx_cases()))
def test_onnx_converter_matches_onnxruntime(case: str) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from aegis.io.onnx_torch import convert

    nodes, inits, opset = _onnx_cases()[case]
    shape = _ONNX_INPUTS.get(case, (2, 3, 7, 9))
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, i, o, **a) for op, i, o, a in nodes],
        case,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, {"x": x})
    xt = torch.from_numpy(x).requires_grad_(True)
    out = convert(model)(xt)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=TOL, rtol=TOL)
    (grad,) = torch.autograd.grad(out.sum(), xt, allow_unused=True)
    assert grad is None or bool(torch.isfinite(grad).all())
