"""The op table of the ONNX → torch converter: the registry, the helpers every op uses, and the
elementwise ops (arithmetic, comparisons, activations), reductions and casts.

Each op is a *builder*: given a node's attributes and the graph's opset it returns a function from
the node's input tensors to its output tensors. :mod:`aegis.io.onnx_ops_nn` (convolution, pooling,
normalization) and :mod:`aegis.io.onnx_ops_shape` (shapes and indexing) register the rest;
:mod:`aegis.io.onnx_torch` walks the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import AttributeProto, numpy_helper
from torch import Tensor

from aegis.errors import ModelError

Inputs = Sequence[Tensor | None]
OpFn = Callable[[Inputs], list[Tensor]]


@dataclass(frozen=True)
class _NodeSpec:
    op: str
    attrs: dict[str, Any]
    opset: int
    n_outputs: int  # outputs with a non-empty name


Builder = Callable[[_NodeSpec], OpFn]
_BUILDERS: dict[str, Builder] = {}

_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


class UnsupportedOnnxOp(ModelError):
    """The graph uses an op (or an op setting) the converter cannot express with torch ops."""

    def __init__(self, op: str, detail: str = "") -> None:
        self.op = op
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"ONNX op {op}{extra} has no differentiable torch converter; load the model "
            "query-only with onnxruntime, or re-export it without this op"
        )


def _op(*names: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        for name in names:
            _BUILDERS[name] = builder
        return builder

    return register


# -- small helpers ----------------------------------------------------------------------------
def _arg(ins: Inputs, i: int, op: str) -> Tensor:
    t = ins[i] if i < len(ins) else None
    if t is None:
        raise UnsupportedOnnxOp(op, f"required input {i} is missing")
    return t


def _opt(ins: Inputs, i: int) -> Tensor | None:
    return ins[i] if i < len(ins) else None


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.detach().reshape(-1).tolist()]


def _to_tensor(arr: np.ndarray) -> Tensor:
    if arr.dtype.kind not in "biufc" or arr.dtype.name == "bfloat16":
        if arr.dtype.name == "bfloat16":
            return torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
        raise UnsupportedOnnxOp("tensor", f"dtype {arr.dtype} cannot be a torch tensor")
    return torch.from_numpy(np.array(arr, copy=True))


def _attr_value(attr: AttributeProto, op: str) -> Any:
    kind = attr.type
    if kind == AttributeProto.FLOAT:
        return float(attr.f)
    if kind == AttributeProto.INT:
        return int(attr.i)
    if kind == AttributeProto.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if kind == AttributeProto.TENSOR:
        return _to_tensor(numpy_helper.to_array(attr.t))
    if kind == AttributeProto.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == AttributeProto.INTS:
        return [int(v) for v in attr.ints]
    if kind == AttributeProto.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in attr.strings]
    if kind in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise UnsupportedOnnxOp(op, "control flow with subgraphs")
    raise UnsupportedOnnxOp(op, f"attribute {attr.name!r} of type {kind}")


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


def _axes_input_or_attr(spec: _NodeSpec, ins: Inputs, since: int) -> list[int] | None:
    """``axes`` as an attribute before opset ``since`` and as the second input from then on."""
    if spec.opset < since:
        axes = spec.attrs.get("axes")
        return None if axes is None else list(axes)
    t = _opt(ins, 1)
    return None if t is None else _ints(t)


# -- arithmetic, comparisons and activations ---------------------------------------------------
def _is_int(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex())


def _div(a: Tensor, b: Tensor) -> Tensor:
    if _is_int(a) and _is_int(b):
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(a: Tensor, b: Tensor) -> Tensor:
    y = torch.pow(a, b)
    return y if y.dtype == a.dtype else y.to(a.dtype)


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": _pow,
    "Equal": torch.eq,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}


@_op(*_BINARY)
def _binary(spec: _NodeSpec) -> OpFn:
    if spec.opset < 7 and spec.attrs.get("axis") is not None:
        raise UnsupportedOnnxOp(spec.op, "legacy broadcast with axis (opset < 7)")
    fn = _BINARY[spec.op]
    return lambda ins: [fn(_arg(ins, 0, spec.op), _arg(ins, 1, spec.op))]


_VARIADIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Max": torch.maximum,
    "Min": torch.minimum,
    "Sum": torch.add,
    "Mean": torch.add,
}


@_op(*_VARIADIC)
def _variadic(spec: _NodeSpec) -> OpFn:
    fn = _VARIADIC[spec.op]

    def run(ins: Inputs) -> list[Tensor]:
        items = [t for t in ins if t is not None]
        if not items:
            raise UnsupportedOnnxOp(spec.op, "no inputs")
        y = items[0]
        for t in items[1:]:
            y = fn(y, t)
        return [y / len(items) if spec.op == "Mean" else y]

    return run


def _selu(x: Tensor, alpha: float, gamma: float) -> Tensor:
    # expm1 of min(x, 0) keeps both branches finite, so gradients never see inf * 0.
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0.0)))


def _unary_table(spec: _NodeSpec) -> Callable[[Tensor], Tensor]:
    a = spec.attrs
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "Relu": F.relu,
        "Sigmoid": torch.sigmoid,
        "Tanh": torch.tanh,
        "Exp": torch.exp,
        "Log": torch.log,
        "Sqrt": torch.sqrt,
        "Neg": torch.neg,
        "Erf": torch.erf,
        "Abs": torch.abs,
        "Reciprocal": torch.reciprocal,
        "Floor": torch.floor,
        "Ceil": torch.ceil,
        "Sin": torch.sin,
        "Cos": torch.cos,
        "Not": torch.logical_not,
        "Softplus": F.softplus,
        "Softsign": F.softsign,
        "Identity": lambda x: x,
        "LeakyRelu": lambda x: F.leaky_relu(x, float(a.get("alpha", 0.01))),
        "Elu": lambda x: _selu(x, float(a.get("alpha", 1.0)), 1.0),
        "Selu": lambda x: _selu(
            x,
            float(a.get("alpha", 1.67326319217681884765625)),
            float(a.get("gamma", 1.05070102214813232421875)),
        ),
        "HardSigmoid": lambda x: torch.clamp(
            float(a.get("alpha", 0.2)) * x + float(a.get("beta", 0.5)), 0.0, 1.0
        ),
        "HardSwish": F.hardswish,
        "Gelu": lambda x: F.gelu(x, approximate=str(a.get("approximate", "none"))),
    }
    return table[spec.op]


@_op(
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Erf",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Sin",
    "Cos",
    "Not",
    "Softplus",
    "Softsign",
    "Identity",
    "LeakyRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
)
def _unary(spec: _NodeSpec) -> OpFn:
    if spec.op == "Gelu" and spec.attrs.get("approximate", "none") not in ("none", "tanh"):
        raise UnsupportedOnnxOp("Gelu", f"approximate={spec.attrs['approximate']}")
    fn = _unary_table(spec)
    return lambda ins: [fn(_arg(ins, 0, spec.op))]


@_op("PRelu")
def _prelu(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x, slope = _arg(ins, 0, "PRelu"), _arg(ins, 1, "PRelu")
        return [torch.where(x < 0, x * slope, x)]

    return run


@_op("Clip")
def _clip(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Clip")
        if spec.opset < 11:
            lo, hi = spec.attrs.get("min"), spec.attrs.get("max")
            return [torch.clamp(x, min=lo, max=hi)]
        lo_t, hi_t = _opt(ins, 1), _opt(ins, 2)
        if lo_t is not None:
            x = torch.maximum(x, lo_t.to(x.dtype))
        if hi_t is not None:
            x = torch.minimum(x, hi_t.to(x.dtype))
        return [x]

    return run


@_op("Cast", "CastLike")
def _cast(spec: _NodeSpec) -> OpFn:
    if spec.op == "Cast":
        to = int(spec.attrs.get("to", 0))
        if to not in _DTYPES:
            raise UnsupportedOnnxOp("Cast", f"to type {to}")
        dtype = _DTYPES[to]
        return lambda ins: [_arg(ins, 0, "Cast").to(dtype)]
    return lambda ins: [_arg(ins, 0, spec.op).to(_arg(ins, 1, spec.op).dtype)]


# -- reductions -----------------------------------------------------------------------------------
_REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduce(op: str, x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    if op == "ReduceMean":
        return x.mean(dim=dims, keepdim=keep)
    if op == "ReduceSum":
        return x.sum(dim=dims, keepdim=keep)
    if op == "ReduceMax":
        return x.amax(dim=dims, keepdim=keep)
    if op == "ReduceMin":
        return x.amin(dim=dims, keepdim=keep)
    if op == "ReduceSumSquare":
        return (x * x).sum(dim=dims, keepdim=keep)
    if op == "ReduceL1":
        return x.abs().sum(dim=dims, keepdim=keep)
    if op == "ReduceL2":
        return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dim=dims, keepdim=keep)
    y = x
    for d in sorted(dims, reverse=True):  # ReduceProd: torch.prod takes one dim at a time
        y = y.prod(dim=d, keepdim=keep)
    return y


@_op(
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
)
def _reduce_op(spec: _NodeSpec) -> OpFn:
    keep = bool(spec.attrs.get("keepdims", 1))
    noop = bool(spec.attrs.get("noop_with_empty_axes", 0))
    since = _REDUCE_AXES_INPUT_SINCE.get(spec.op, 18)

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, spec.op)
        axes = _axes_input_or_attr(spec, ins, since)
        if not axes:
            if noop:
                return [x]
            axes = list(range(x.ndim))
        return [_reduce(spec.op, x, tuple(_norm_axes(axes, x.ndim)), keep)]

    return run
