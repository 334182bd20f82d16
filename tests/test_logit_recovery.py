"""Logits recovered at load time from models whose graph ends in a softmax (aegis.io.logits).

For each format the loaded Classifier must return the tensor under the softmax (compared with
the same network without it), predict what the original predicts, say in its provenance what
was done, and keep the probabilities with ``keep_softmax=True``. A saturated softmax (40·logits)
shows why: its input gradients are exactly zero where the recovered logits' are not.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aegis.attacks.base import ce_loss, dlr_loss, margin
from aegis.errors import AegisWarning
from aegis.io.models import load_classifier
from aegis.model import Classifier

TOL = 1e-4
SHAPE = (1, 4, 4)
IR = 8  # ONNX IR version of hand-built graphs


def _x(n: int = 6, seed: int = 1) -> Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _load(path: Path, **kwargs: Any) -> Classifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AegisWarning)
        return load_classifier(path, **kwargs)


def _assert_recovered(clf: Classifier, logits: Tensor, probs: Tensor, x: Tensor, how: str) -> None:
    """``clf`` returns ``logits``, predicts like ``probs`` and says it recovered them by ``how``."""
    torch.testing.assert_close(clf.logits(x), logits, atol=TOL, rtol=0)
    assert torch.equal(clf.predict(x), probs.argmax(1))
    assert clf.provenance["outputs"].startswith("logits recovered from ")
    assert clf.provenance["outputs"].endswith(f"({how})")
    assert clf.provenance["logit_recovery"].startswith("checked on the probe batch")


def _assert_kept(clf: Classifier, probs: Tensor, x: Tensor) -> None:
    torch.testing.assert_close(clf.logits(x), probs, atol=TOL, rtol=0)
    assert clf.provenance["outputs"].startswith("probabilities")
    assert "logit_recovery" not in clf.provenance


# -- torch models -----------------------------------------------------------------------------
class Body(nn.Module):
    """The logits: flatten → linear → ReLU → linear (3 classes), times ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1)))) * self.scale


class Head(nn.Module):
    """``Body`` followed by a softmax written as ``kind``."""

    def __init__(self, kind: str, scale: float = 1.0) -> None:
        super().__init__()
        self.body = Body(scale)
        self.kind = kind
        self.sm = nn.LogSoftmax(dim=1) if kind == "nn.LogSoftmax" else nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.body(x)
        if self.kind in ("nn.Softmax", "nn.LogSoftmax"):
            return self.sm(z)
        if self.kind == "F.log_softmax":
            return F.log_softmax(z, dim=1)
        if self.kind == "Tensor.softmax":
            return z.softmax(-1)
        if self.kind == "wrong-axis":
            return F.softmax(z, dim=0)
        return F.softmax(z, dim=1)


class Branchy(Head):
    """A softmax model torch.fx cannot trace (control flow on values)."""

    def forward(self, x: Tensor) -> Tensor:
        z = self.body(x)
        if bool(z.sum() > 1e9):
            z = z * 2
        return F.softmax(z, dim=1)


def make_head(kind: str = "F.softmax", scale: float = 1.0) -> nn.Module:
    return Head(kind, scale)


def _head(kind: str, scale: float = 1.0, seed: int = 0) -> Head:
    torch.manual_seed(seed)
    net = Head(kind, scale).eval()
    with torch.no_grad():  # logits a few units apart, as a trained network's are
        for p in net.parameters():
            p.normal_()
    return net


def _state_dict_file(tmp_path: Path, net: nn.Module) -> Path:
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), str(path))
    return path


FX_KINDS = ["nn.Softmax", "F.softmax", "Tensor.softmax", "nn.LogSoftmax", "F.log_softmax"]


@pytest.mark.parametrize("kind", FX_KINDS)
def test_factory_model_ending_in_softmax(tmp_path: Path, kind: str) -> None:
    net, x = _head(kind), _x()
    path = _state_dict_file(tmp_path, net)
    kwargs: dict[str, Any] = {"factory": make_head, "factory_kwargs": {"kind": kind}}
    clf = _load(path, input_shape=SHAPE, **kwargs)
    with torch.no_grad():
        _assert_recovered(clf, net.body(x), net(x), x, f"torch.fx: trailing {kind} removed")
        shipped = pickle.loads(pickle.dumps(clf.module))  # how a Ray worker gets it
        torch.testing.assert_close(shipped(x), net.body(x), atol=TOL, rtol=0)
    log = "log" in kind.lower()
    assert clf.provenance["outputs"].startswith(f"logits recovered from {'log-' if log else ''}")
    if not log:
        with pytest.warns(AegisWarning, match="probabilities"):
            kept = load_classifier(path, input_shape=SHAPE, keep_softmax=True, **kwargs)
        with torch.no_grad():
            _assert_kept(kept, net(x), x)


def test_pickled_module_ending_in_softmax(tmp_path: Path) -> None:
    net, x = _head("nn.Softmax"), _x()
    path = tmp_path / "whole.pt"
    torch.save(net, str(path))
    clf = _load(path, input_shape=SHAPE, allow_unsafe_pickle=True)
    with torch.no_grad():
        _assert_recovered(clf, net.body(x), net(x), x, "torch.fx: trailing nn.Softmax removed")


@pytest.mark.parametrize("how", ["script", "trace", "frozen"])
@pytest.mark.parametrize("kind", ["nn.Softmax", "F.log_softmax"])
def test_torchscript_ending_in_softmax(tmp_path: Path, how: str, kind: str) -> None:
    net, x = _head(kind), _x()
    ts = torch.jit.trace(net, x[:2]) if how == "trace" else torch.jit.script(net)
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.freeze(ts) if how == "frozen" else ts, str(path))
    clf = _load(path, input_shape=SHAPE)
    op = "aten::log_softmax" if "log" in kind else "aten::softmax"
    with torch.no_grad():
        _assert_recovered(clf, net.body(x), net(x), x, f"{op} removed from the TorchScript graph")
        reloaded = torch.jit.load(str(path))
        torch.testing.assert_close(reloaded(x), net(x))  # the file's module is untouched
        # How a Ray worker gets it: a TorchScript archive, with a train/eval mode.
        buffer = io.BytesIO()
        torch.jit.save(clf.module, buffer)
        buffer.seek(0)
        shipped = torch.jit.load(buffer)
        assert how == "frozen" or shipped.training is False  # a frozen file had none to keep
        torch.testing.assert_close(shipped(x), net.body(x), atol=TOL, rtol=0)
    if "log" not in kind:
        with pytest.warns(AegisWarning, match="probabilities"):
            kept = load_classifier(path, input_shape=SHAPE, keep_softmax=True)
        with torch.no_grad():
            _assert_kept(kept, net(x), x)


@pytest.mark.parametrize("batch", ["dynamic", "static"])
def test_torch_export_program_ending_in_softmax(tmp_path: Path, batch: str) -> None:
    net, x = _head("F.softmax"), _x()
    dynamic = {"x": {0: torch.export.Dim("n")}} if batch == "dynamic" else None
    program = torch.export.export(net, (x[:2],), dynamic_shapes=dynamic)
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    clf = _load(path)
    with torch.no_grad():
        _assert_recovered(
            clf, net.body(x), net(x), x, "aten.softmax removed from the torch.export graph"
        )
    kept = _load(path, keep_softmax=True)
    with torch.no_grad():
        _assert_kept(kept, net(x), x)


def test_saturated_softmax_gradients_vanish_and_recovered_ones_do_not(tmp_path: Path) -> None:
    """softmax(40·logits): exactly 1 and 0 on most points, so every loss's input gradient
    through the softmax is exactly zero there; the margin losses (DLR, C&W) of the recovered
    logits have their full gradient. Cross-entropy cannot be rescued this way: its gradient is
    softmax(z) − onehot(y), which underflows in float32 at the same margins (> ~104) as the
    model's own softmax did."""
    net, x = _head("F.softmax", scale=40.0), _x(32)
    path = _state_dict_file(tmp_path, net)
    kwargs: dict[str, Any] = {"factory": make_head, "factory_kwargs": {"scale": 40.0}}
    recovered = _load(path, input_shape=SHAPE, **kwargs)
    kept = _load(path, input_shape=SHAPE, keep_softmax=True, **kwargs)
    probs = kept.logits(x)
    y = probs.argmax(1)
    saturated = ((probs == 0) | (probs == 1)).all(1)
    assert int(saturated.sum()) >= 16  # most points: the flat landscape the attacks see
    assert torch.equal(recovered.predict(x), y)

    def grad_norms(clf: Classifier, loss: Callable[[Tensor], Tensor]) -> Tensor:
        _, _, grad = clf.value_and_grad(x, loss)
        return grad[saturated].flatten(1).abs().sum(1)

    for loss in (dlr_loss(y, None), lambda z: -margin(z, y)):
        assert bool((grad_norms(kept, loss) == 0).all())
        assert bool((grad_norms(recovered, loss) > 0).all())
    ce = ce_loss(y, None)
    assert bool((grad_norms(kept, ce) == 0).all())
    assert bool((grad_norms(recovered, ce) == 0).all())  # float32 underflow, both ways


def test_softmax_over_the_wrong_axis_is_left_with_a_note(tmp_path: Path) -> None:
    net, x = _head("wrong-axis"), _x()
    path = _state_dict_file(tmp_path, net)
    with pytest.warns(AegisWarning, match="not over the class axis"):
        clf = load_classifier(
            path, input_shape=SHAPE, factory=make_head, factory_kwargs={"kind": "wrong-axis"}
        )
    note = clf.provenance["logit_recovery"]
    assert note.startswith("not done: the softmax (axis 0) is not over the class axis")
    assert "outputs" not in clf.provenance  # neither logits nor probability vectors
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), net(x), atol=TOL, rtol=0)


def test_untraceable_module_is_left_with_a_note(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, x = Branchy("F.softmax").eval(), _x()
    path = tmp_path / "branchy.pt"
    torch.save(net, str(path))
    with pytest.warns(AegisWarning, match="probabilities"):
        clf = load_classifier(path, input_shape=SHAPE, allow_unsafe_pickle=True)
    assert clf.provenance["logit_recovery"].startswith("not possible: torch.fx cannot trace")
    assert clf.provenance["outputs"] == "probabilities (non-negative, summing to 1)"
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), net(x), atol=TOL, rtol=0)


class NegativeLogits(Body):
    """Logits that are all negative (they could be log-probabilities, but are not), from a
    model torch.fx cannot trace."""

    def forward(self, x: Tensor) -> Tensor:
        z = super().forward(x)
        if bool(z.sum() > 1e9):
            z = z * 2
        return -z.abs() - 1


@pytest.mark.parametrize("net_class", [Body, NegativeLogits])
def test_logits_model_is_left_alone(tmp_path: Path, net_class: type[Body]) -> None:
    torch.manual_seed(0)
    net, x = net_class().eval(), _x()
    path = tmp_path / "body.pt"
    if net_class is Body:
        torch.jit.save(torch.jit.script(net), str(path))
    else:
        torch.save(net, str(path))
    clf = load_classifier(path, input_shape=SHAPE, allow_unsafe_pickle=True)
    assert "outputs" not in clf.provenance and "logit_recovery" not in clf.provenance
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), net(x), atol=TOL, rtol=0)


# -- ONNX -------------------------------------------------------------------------------------
def _onnx_file(
    tmp_path: Path, op: str, axis: int, opset: int = 13, before: str = ""
) -> tuple[Path, np.ndarray]:
    """A flat 16 → 3 MatMul + Add (then the op ``before``, if any) followed by ``op`` over
    ``axis``; returns the file and W|b."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 3)).astype("f4")
    b = rng.normal(size=(3,)).astype("f4")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["z" if not before else "a"]),
        helper.make_node(op, ["z"], ["p"], axis=axis),
    ]
    if before:
        nodes.insert(2, helper.make_node(before, ["a"], ["z"], axis=1))
    graph = helper.make_graph(
        nodes,
        "softmax_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    path = tmp_path / f"{op}.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR)
    onnx.save(model, str(path))
    return path, np.concatenate([w, b[None]])


@pytest.mark.parametrize(("op", "opset"), [("Softmax", 13), ("LogSoftmax", 13), ("Softmax", 11)])
def test_onnx_final_softmax_node_is_dropped(tmp_path: Path, op: str, opset: int) -> None:
    path, wb = _onnx_file(tmp_path, op, axis=1, opset=opset)
    x = _x()
    z = x.flatten(1) @ torch.from_numpy(wb[:16]) + torch.from_numpy(wb[16])
    out = F.log_softmax(z, 1) if op == "LogSoftmax" else F.softmax(z, 1)
    clf = _load(path)
    assert clf.differentiable and clf.info.layout == "flat"
    _assert_recovered(clf, z, out, x, f"ONNX {op} node dropped")
    if op == "Softmax":
        with pytest.warns(AegisWarning, match="probabilities"):
            kept = load_classifier(path, keep_softmax=True)
        _assert_kept(kept, out, x)
        assert kept.provenance["outputs"] == "probabilities (softmax)"


def test_onnx_softmax_over_the_batch_axis_is_left_with_a_note(tmp_path: Path) -> None:
    path, wb = _onnx_file(tmp_path, "Softmax", axis=0)
    with pytest.warns(AegisWarning, match="not over the class axis"):
        clf = load_classifier(path)
    assert clf.provenance["logit_recovery"].startswith("not done: the softmax (axis 0)")
    assert "outputs" not in clf.provenance
    x = _x()
    z = x.flatten(1) @ torch.from_numpy(wb[:16]) + torch.from_numpy(wb[16])
    torch.testing.assert_close(clf.logits(x), F.softmax(z, 0), atol=TOL, rtol=0)


def test_query_only_onnx_softmax_keeps_its_probabilities(tmp_path: Path) -> None:
    """Hardmax has no differentiable converter: onnxruntime runs the graph, which aegis cannot
    edit; the probability warning stays."""
    path, _ = _onnx_file(tmp_path, "Softmax", axis=1, before="Hardmax")
    with pytest.warns(AegisWarning) as caught:
        clf = load_classifier(path)
    messages = " ".join(str(w.message) for w in caught)
    assert "query-only" in messages and "outputs probabilities, not logits" in messages
    assert not clf.differentiable
    assert clf.provenance["logit_recovery"] == (
        "not possible: the model is query-only (no graph to edit)"
    )
    assert clf.provenance["outputs"] == "probabilities (softmax)"


# -- Keras ------------------------------------------------------------------------------------
def _keras_net(keras: Any, head: str) -> Any:
    """Flatten → Dense(8, relu) → Dense(3) on 6×6×1 inputs, with the softmax as ``head``."""
    layers = keras.layers
    final = {"softmax-dense": "softmax", "log-softmax-dense": "log_softmax"}.get(head)
    stack = [
        keras.Input((6, 6, 1)),
        layers.Flatten(),
        layers.Dense(8, activation="relu"),
        layers.Dense(3, activation=final),
    ]
    if head == "softmax-layer":
        stack.append(layers.Softmax())
    elif head == "activation-layer":
        stack.append(layers.Activation("softmax"))
    model = keras.Sequential(stack)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 1, w.shape).astype("f4") for w in model.get_weights()])
    return model


KERAS_HOW = {
    "softmax-dense": "Keras Dense activation replaced by linear",
    "log-softmax-dense": "Keras Dense activation replaced by linear",
    "softmax-layer": "Keras Softmax layer dropped",
    "activation-layer": "Keras Activation('softmax') layer replaced by linear",
}


KERAS_CASES = [(".keras", head) for head in KERAS_HOW] + [
    (".h5", "softmax-dense"),
    (".h5", "softmax-layer"),
]


@pytest.mark.parametrize(("ext", "head"), KERAS_CASES)
def test_keras_final_softmax_is_removed(tmp_path: Path, keras: Any, ext: str, head: str) -> None:
    model = _keras_net(keras, head)
    plain = _keras_net(keras, "linear")
    plain.set_weights(model.get_weights())  # the same network without its softmax
    path = tmp_path / f"net{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(path))
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    nhwc = x.permute(0, 2, 3, 1)
    out = model(nhwc, training=False).detach()
    clf = _load(path)
    assert clf.info.layout == "NHWC"
    _assert_recovered(clf, plain(nhwc, training=False).detach(), out, x, KERAS_HOW[head])
    if head == "softmax-dense":
        with pytest.warns(AegisWarning, match="probabilities"):
            kept = load_classifier(path, keep_softmax=True)
        _assert_kept(kept, out, x)
        assert kept.provenance["outputs"] == "probabilities (softmax)"


def test_keras_check_failure_restores_the_activation(tmp_path: Path, keras: Any) -> None:
    """A softmax Dense applied twice: its activation set to linear changes the inner call too,
    so the result does not reproduce the outputs; the check fails, the layer gets its softmax
    back and the model is attacked as it is."""
    inputs = keras.Input((9,))
    dense = keras.layers.Dense(9, activation="softmax")
    model = keras.Model(inputs, dense(dense(inputs)))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 1, w.shape).astype("f4") for w in model.get_weights()])
    path = tmp_path / "twice.keras"
    model.save(str(path))
    with pytest.warns(AegisWarning, match="probabilities"):
        clf = load_classifier(path, input_shape=(1, 3, 3))
    note = clf.provenance["logit_recovery"]
    assert note.startswith("not done: its input does not reproduce the outputs"), note
    assert clf.provenance["outputs"] == "probabilities (softmax)"
    x = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    expected = model(x.reshape(4, 9), training=False).detach()
    torch.testing.assert_close(clf.logits(x), expected, atol=TOL, rtol=0)


def test_subclassed_keras_model_is_left_with_a_note(keras: Any) -> None:
    """Which layer a subclassed model calls last is not visible: no guessing."""
    from aegis.io.keras_format import _KerasModule
    from aegis.io.loaded import _Loaded
    from aegis.io.logits import probe_rows, settle_outputs

    class Mixed(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, x: Any) -> Any:
            p = self.dense(x)
            return 0.5 * p + 0.5 * keras.ops.flip(p, axis=1)

    model = Mixed()
    module = _KerasModule(model)
    rows = probe_rows((1, 2, 2)).reshape(2, 4)
    with torch.no_grad():
        out = module(rows)
    loaded = _Loaded(fmt="keras", module=module, probabilities=True)
    provenance: dict[str, str] = {}
    with pytest.warns(AegisWarning, match="probabilities"):
        settle_outputs(
            Path("mixed.keras"),
            loaded,
            out,
            layout="flat",
            shape=(1, 2, 2),
            device=None,
            provenance=provenance,
        )
    assert provenance["logit_recovery"].startswith("not possible: a subclassed Keras model")
    assert provenance["outputs"] == "probabilities (softmax)"
    assert loaded.module is module and model.dense.activation is keras.activations.softmax


def test_keep_softmax_on_a_query_only_model_is_a_usage_error(cli: Any, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from _factories import hardmax_onnx

    model = tmp_path / "net.onnx"
    hardmax_onnx(model)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4, 1, 4, 4), np.float32))
    code, _, err = cli(
        "attack", str(model), str(tmp_path / "x.npy"), "--attack", "square", "--target", "1",
        "--keep-softmax", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 2 and "--keep-softmax" in err and "query-only" in err
