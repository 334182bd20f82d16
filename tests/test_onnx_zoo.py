"""The classic ImageNet classifiers the onnx package ships as "light" graphs load white-box.

The nine graphs under ``onnx/backend/test/data/light`` (AlexNet, DenseNet-121, Inception v1/v2,
ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512: Caffe2 exports at opset 9) build every
weight with ``ConstantOfShape`` from the single value 0.02, so every class gets the same logit and
their softmax output is exactly 1/1000 whatever the input: the shipped graphs can show that they
convert and match their shipped output, but not that the conversion computes the right function
or that gradients flow. So each graph is also tested with seeded random weights in place of the
constants and without its final softmax (:func:`with_random_weights`, :func:`logits_graph`):
there its logits must match onnxruntime to 1e-4 relative (``max |ours - ort| / max |ort|``) and
its input gradient must be non-zero. ``bench/bench_onnx_zoo.py`` reuses these helpers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from aegis.errors import ModelError
from aegis.io.models import load_classifier

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
GRAPHS = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)
RTOL = 1e-4


def light_path(name: str) -> Path:
    path = LIGHT / f"light_{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped with this onnx ({onnx.__version__})")
    return path


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The graph with each constant weight (``ConstantOfShape`` of an initializer shape) replaced
    by a seeded random initializer: He-uniform conv and dense weights, batch-norm scales and
    variances and ``Mul`` scales in [0.5, 1.5], other values (biases, means) N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    shapes = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    uses = _uses(graph)
    nodes, weights = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            nodes.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        kind = uses.get(node.output[0], ("", 0, 0))
        weights.append(numpy_helper.from_array(_draw(rng, shape, kind), node.output[0]))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(weights)
    if out.ir_version < 4:  # IR 3 lists every initializer among the graph inputs
        out.graph.input.extend(
            helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)) for w in weights
        )
    return out


def _uses(graph: onnx.GraphProto) -> dict[str, tuple[str, int, int]]:
    """For each value: the (op, input index, transB) of its first consumer, seen through
    ``Unsqueeze`` (DenseNet and Inception v2 unsqueeze their scales before a ``Mul``)."""
    direct: dict[str, tuple[str, int, int]] = {}
    unsqueezed: dict[str, str] = {}
    for node in graph.node:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        for i, name in enumerate(node.input):
            direct.setdefault(name, (node.op_type, i, trans_b))
        if node.op_type == "Unsqueeze":
            unsqueezed[node.input[0]] = node.output[0]
    return {
        name: direct.get(unsqueezed[name], use) if use[0] == "Unsqueeze" else use
        for name, use in direct.items()
    }


def _draw(
    rng: np.random.Generator, shape: tuple[int, ...], kind: tuple[str, int, int]
) -> np.ndarray:
    op, index, trans_b = kind
    if (op, index) in (("Conv", 1), ("Gemm", 1)):
        fan_in = math.prod(shape[1:]) if op == "Conv" or trans_b else shape[0]
        bound = np.float32(math.sqrt(6.0 / fan_in))  # He-uniform: the variance of He-normal
        values = rng.random(shape, dtype=np.float32)
        values -= np.float32(0.5)
        values *= 2 * bound
    elif (op, index) in (("BatchNormalization", 1), ("BatchNormalization", 4)) or op == "Mul":
        values = rng.uniform(0.5, 1.5, shape)
    else:
        values = rng.normal(0.0, 0.1, shape)
    return values.astype(np.float32)


def logits_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its final ``Softmax`` dropped: its output is the softmax's input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    last = next((n for n in graph.node if graph.output[0].name in n.output), None)
    if last is None or last.op_type != "Softmax":
        return out
    graph.output[0].name = last.input[0]
    graph.node.remove(last)
    return out


def onnxruntime_scores(source: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The graph's output for ``x`` (a batch of 1) according to onnxruntime, as (1, classes)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # plain kernels
    data = str(source) if isinstance(source, Path) else source.SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(out).reshape(x.shape[0], -1)


def relative_error(ours: Tensor | np.ndarray, ref: np.ndarray) -> float:
    """``max |ours - ref| / max |ref|``."""
    a = ours.detach().cpu().numpy() if isinstance(ours, Tensor) else ours
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.filterwarnings("ignore:.*outputs probabilities, not logits")
@pytest.mark.parametrize("name", GRAPHS)
def test_light_graph_as_shipped_is_white_box(name: str) -> None:
    path = light_path(name)
    clf = load_classifier(path, keep_softmax=True)  # compared with the shipped probabilities
    assert clf.differentiable, clf.provenance.get("gradients")
    assert clf.provenance["format"] == "onnx (converted to torch)"
    assert clf.provenance["onnx_check"].startswith("torch conversion matches onnxruntime")
    assert clf.input_shape == (3, 224, 224) and clf.num_classes == 1000
    # The input onnx's backend runner feeds these graphs: arange(n) / n in the input's shape.
    x = torch.arange(3 * 224 * 224, dtype=torch.float32).reshape(1, 3, 224, 224) / (3 * 224**2)
    shipped = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    assert relative_error(clf.logits(x), shipped.reshape(1, -1)) <= RTOL
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert relative_error(clf.logits(x), onnxruntime_scores(path, x.numpy())) <= RTOL


@pytest.mark.parametrize("name", GRAPHS)
def test_light_graph_with_random_weights_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    model = with_random_weights(logits_graph(onnx.load(str(light_path(name)))), seed=0)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    clf = load_classifier(path)
    assert clf.differentiable, clf.provenance.get("gradients")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = onnxruntime_scores(model, x.numpy())
    assert np.ptp(ref) > 0  # the classes differ: the comparison means something
    logits, _, grad = clf.value_and_grad(x, lambda z: z[:, int(ref.argmax())] - z.mean(1))
    assert relative_error(logits, ref) <= RTOL
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0


# -- LRN against the ONNX spec and onnxruntime ---------------------------------------------------
def _lrn_spec(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """The ONNX spec's LRN, channel by channel (onnxruntime refuses even sizes)."""
    squares = np.zeros_like(x, dtype=np.float64)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(x.shape[1] - 1, c + math.ceil((size - 1) / 2))
        squares[:, c] = (x[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)
    return x / (bias + alpha / size * squares) ** beta


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "bias"),
    [(1, 0.5, 0.75, 1.0), (3, 2.0, 0.5, 2.0), (4, 1.0, 0.75, 1.0), (5, 1e-4, 0.75, 1.0)],
)
def test_lrn_matches_the_spec_and_onnxruntime(
    size: int, alpha: float, beta: float, bias: float
) -> None:
    from aegis.io.onnx_torch import convert

    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph(
        [node],
        "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7, 3, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.random.default_rng(size).normal(0.0, 3.0, (2, 7, 3, 5)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = convert(model)(xt)
    assert isinstance(out, Tensor)
    ours = out.detach().numpy()
    np.testing.assert_allclose(ours, _lrn_spec(x, size, alpha, beta, bias), rtol=1e-5, atol=1e-6)
    if size % 2:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_allclose(ours, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), xt)
    assert bool(torch.isfinite(grad).all())


# -- graphs older than opset 7 ---------------------------------------------------------------
def _legacy_graph(
    opset: int, *, shaped: bool = True
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv, a bias added with legacy broadcasting at axis 1 (as Caffe2 and CNTK exported it),
    Relu, Flatten and a Gemm with a broadcast bias; IR 3, initializers listed as inputs."""
    rng = np.random.default_rng(opset)
    weights = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "fc": rng.normal(size=(5, 4 * 6 * 6)).astype(np.float32) / 12,
        "fc_b": rng.normal(size=5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Add", ["c", "b"], ["cb"], broadcast=1, axis=1),
        helper.make_node("Relu", ["cb"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], transB=1, broadcast=1),
    ]
    shape = [1, 3, 8, 8] if shaped else None
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    inputs += [
        helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in weights.items()
    ]
    graph = helper.make_graph(
        nodes,
        "legacy",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5] if shaped else None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=3
    ), weights


@pytest.mark.parametrize("opset", [1, 6])
def test_graph_below_opset_7_is_upgraded(opset: int, tmp_path: Path) -> None:
    model, w = _legacy_graph(opset)
    path = tmp_path / "legacy.onnx"
    onnx.save(model, str(path))
    clf = load_classifier(path)
    assert (
        clf.provenance["onnx_opset"]
        == f"upgraded from opset {opset} to 7 with onnx.version_converter"
    )
    assert clf.provenance["onnx_check"].startswith("torch conversion matches onnxruntime")
    assert clf.differentiable
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # The reference, by hand: the bias belongs to the channels (axis 1), not to the batch.
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    hidden = torch.relu(torch.nn.functional.conv2d(x, t["w"]) + t["b"][:, None, None])
    ref = hidden.flatten(1) @ t["fc"].T + t["fc_b"]
    np.testing.assert_allclose(clf.logits(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_graph_below_opset_7_that_cannot_be_upgraded_says_why_and_to_re_export_newer(
    tmp_path: Path,
) -> None:
    model, _ = _legacy_graph(1, shaped=False)  # no shapes: the converter cannot place the bias
    path = tmp_path / "cntk.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        load_classifier(path, input_shape=(3, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "onnx.version_converter cannot upgrade its opset 1 to 7" in message
    assert "Shape of input 0 is not available" in message  # the converter's own reason
    assert "legacy broadcast" in message  # aegis' converter's reason
    assert message.endswith("re-export the model at opset 7 or newer")
    assert "older opset" not in message
