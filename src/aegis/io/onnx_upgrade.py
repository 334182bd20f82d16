"""Graphs older than opset 7, upgraded with ``onnx.version_converter`` before they are converted.

onnxruntime runs opset 7 and newer, and opset 7 replaced the legacy broadcasting of the binary ops
(``broadcast=1`` with an ``axis``, as Caffe2 and CNTK exported conv biases) by numpy's. The
version converter turns the legacy form into an ``Unsqueeze`` of the second operand, but it pads
that operand with as many trailing axes as the rank difference and ignores ``axis``: a bias of
shape ``(C,)`` added at axis 1 of an NCHW tensor becomes ``(C, 1, 1, 1)`` and broadcasts to a
wrong shape. :func:`upgrade` gives such operands their right rank first (at opset 6, where shape
inference knows every legacy op), then calls the converter.

Example::

    result = upgrade(onnx.load("old.onnx"))
    result.note  # 'upgraded from opset 3 to 7 with onnx.version_converter'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper, shape_inference, version_converter

from aegis.io.loaded import _one_line

MIN_OPSET = 7  # the oldest opset onnxruntime runs and numpy broadcasting starts at

_LEGACY_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor"}
_LEGACY_BROADCAST |= {"Equal", "Greater", "Less"}


@dataclass(frozen=True)
class Upgrade:
    """The graph to convert and what happened to it: ``note`` when it was upgraded, ``failure``
    (the version converter's own reason) when it could not be."""

    model: onnx.ModelProto
    opset: int | None  # the file's default-domain opset
    note: str = ""
    failure: str = ""


def default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def upgrade(model: onnx.ModelProto) -> Upgrade:
    """``model`` itself when its opset is 7 or newer, else its upgrade to opset 7."""
    opset = default_opset(model)
    if opset is None or opset >= MIN_OPSET:
        return Upgrade(model, opset)
    try:
        # Opset 6 first: shape inference knows the opset-6 forms of the legacy ops, so the
        # ranks the broadcast fix and the converter need are known there.
        staged = model if opset >= MIN_OPSET - 1 else _convert(model, MIN_OPSET - 1)
        upgraded = _convert(_fix_legacy_broadcast(staged), MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ConvertError with its reason
        # The reason, without the C++ source location the converter starts it with.
        reason = re.sub(r"^\S+\.(?:cc|cpp|h):\d+: ", "", _one_line(exc))
        return Upgrade(model, opset, failure=reason)
    # The converter leaves value_info entries without an element type for the values it adds,
    # which onnxruntime refuses; they are optional, so they go.
    untyped = [v for v in upgraded.graph.value_info if not v.type.tensor_type.elem_type]
    for value in untyped:
        upgraded.graph.value_info.remove(value)
    note = f"upgraded from opset {opset} to {MIN_OPSET} with onnx.version_converter"
    return Upgrade(upgraded, opset, note=note)


def _convert(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    converted: onnx.ModelProto = version_converter.convert_version(model, opset)
    return converted


def _fix_legacy_broadcast(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where the second operand of each legacy broadcast at an ``axis`` is
    unsqueezed to rank ``rank(A) - axis``, so the version converter needs no axes of its own."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    nodes = list(fixed.graph.node)
    if not any(_legacy_at_axis(node) for node in nodes):
        return fixed
    ranks = _ranks(model)
    done: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        a, b = (
            (ranks.get(node.input[0]), ranks.get(node.input[1]))
            if _legacy_at_axis(node)
            else (None, None)
        )
        if a is not None and b is not None:
            axis = int(_attr(node, "axis")) % max(a, 1)
            extra = a - axis - b
            if extra > 0:
                name = f"{node.input[1]}__rank{b + extra}_{i}"
                axes = list(range(b, b + extra))
                done.append(helper.make_node("Unsqueeze", [node.input[1]], [name], axes=axes))
                node.input[1] = name
        done.append(node)
    del fixed.graph.node[:]
    fixed.graph.node.extend(done)
    return fixed


def _legacy_at_axis(node: onnx.NodeProto) -> bool:
    return (
        node.op_type in _LEGACY_BROADCAST
        and node.domain in ("", "ai.onnx")
        and len(node.input) == 2
        and _attr(node, "broadcast") == 1
        and _attr(node, "axis") is not None
    )


def _attr(node: onnx.NodeProto, name: str) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return None


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value shape inference (and the initializers) can tell."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # no ranks: the converter then decides (and says why it cannot)
        inferred = model
    graph = inferred.graph
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            ranks.setdefault(value.name, len(tensor.shape.dim))
    return ranks
