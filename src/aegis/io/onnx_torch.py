"""Convert an ONNX graph into a differentiable torch module (white-box attacks on ONNX files).

The converted module interprets the graph with torch ops: initializers and ``Constant`` nodes become
buffers, and ``forward`` evaluates the nodes in topological order. Only the nodes the chosen output
depends on are kept (so a classifier exported with an extra ``ArgMax`` label output still converts).

Supported: the ops typical image CNN / MLP exports use (``torch.onnx.export`` at opsets 7-20,
tf2onnx / keras2onnx graphs, skl2onnx MLPs): convolutions, pooling, Gemm/MatMul, elementwise
arithmetic and activations, normalization, shape plumbing (Shape, Gather, Reshape, Slice, Concat,
...). Anything else raises :class:`UnsupportedOnnxOp` naming the op; the loader then falls back to a
query-only model run by onnxruntime.

Example::

    module = convert(onnx.load("net.onnx"))
    logits = module(torch.rand(8, 1, 28, 28))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import AttributeProto, numpy_helper
from torch import Tensor, nn

from aegis.errors import ModelError

__all__ = ["OnnxModule", "UnsupportedOnnxOp", "convert", "supported_ops"]

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
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"ONNX op {op}{extra} has no differentiable torch converter; load the model "
            "query-only with onnxruntime, or re-export it without this op"
        )


def supported_ops() -> list[str]:
    """The ONNX ops (default domain) :func:`convert` understands."""
    return sorted({*_BUILDERS, "Constant"})


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


def _spatial_pads(
    spec: _NodeSpec,
    size: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[list[int], list[int]]:
    """ONNX padding (explicit ``pads`` or ``auto_pad``) as (begin, end) per spatial axis."""
    n = len(size)
    auto_pad = spec.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = spec.attrs.get("pads", [0] * (2 * n))
        return list(pads[:n]), list(pads[n:])
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedOnnxOp(spec.op, f"auto_pad={auto_pad}")
    begin, end = [], []
    for length, k, s, d in zip(size, kernel, strides, dilations, strict=True):
        out = -(-length // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - length, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin, end


def _pad_list(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """(begin, end) per axis, first axis first → ``F.pad``'s last-axis-first list."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def _pool_out_size(length: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool) -> int:
    span = (k - 1) * d + 1
    num = length + pb + pe - span
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= length + pb:
        out -= 1
    return out


def _crop_spatial(y: Tensor, sizes: Sequence[int]) -> Tensor:
    for axis, size in enumerate(sizes):
        y = y.narrow(axis + 2, 0, min(size, y.shape[axis + 2]))
    return y


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


def _axes_input_or_attr(spec: _NodeSpec, ins: Inputs, since: int) -> list[int] | None:
    """``axes`` as an attribute before opset ``since`` and as the second input from then on."""
    if spec.opset < since:
        axes = spec.attrs.get("axes")
        return None if axes is None else list(axes)
    t = _opt(ins, 1)
    return None if t is None else _ints(t)


# -- convolution and pooling --------------------------------------------------------------------
_CONV = (F.conv1d, F.conv2d, F.conv3d)
_CONV_T = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
_MAX_POOL = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
_AVG_POOL = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


def _spatial_rank(op: str, x: Tensor) -> int:
    n = x.ndim - 2
    if n not in (1, 2, 3):
        raise UnsupportedOnnxOp(op, f"input of rank {x.ndim}")
    return n


@_op("Conv")
def _conv(spec: _NodeSpec) -> OpFn:
    group = int(spec.attrs.get("group", 1))

    def run(ins: Inputs) -> list[Tensor]:
        x, w, b = _arg(ins, 0, "Conv"), _arg(ins, 1, "Conv"), _opt(ins, 2)
        n = _spatial_rank("Conv", x)
        kernel = list(w.shape[2:])
        strides = spec.attrs.get("strides", [1] * n)
        dilations = spec.attrs.get("dilations", [1] * n)
        begin, end = _spatial_pads(spec, x.shape[2:], kernel, strides, dilations)
        padding = begin
        if begin != end:
            x = F.pad(x, _pad_list(begin, end))
            padding = [0] * n
        return [_CONV[n - 1](x, w, b, strides, padding, dilations, group)]

    return run


@_op("ConvTranspose")
def _conv_transpose(spec: _NodeSpec) -> OpFn:
    group = int(spec.attrs.get("group", 1))

    def run(ins: Inputs) -> list[Tensor]:
        x, w, b = _arg(ins, 0, "ConvTranspose"), _arg(ins, 1, "ConvTranspose"), _opt(ins, 2)
        n = _spatial_rank("ConvTranspose", x)
        kernel = list(w.shape[2:])
        strides = spec.attrs.get("strides", [1] * n)
        dilations = spec.attrs.get("dilations", [1] * n)
        out_pad = spec.attrs.get("output_padding", [0] * n)
        size = x.shape[2:]
        full = [
            (size[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + out_pad[i]
            for i in range(n)
        ]
        auto_pad = spec.attrs.get("auto_pad", "NOTSET")
        target = spec.attrs.get("output_shape")
        if target is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = [size[i] * strides[i] for i in range(n)]
        if target is not None:
            target = list(target)[-n:]
            total = [full[i] - target[i] for i in range(n)]
            if min(total) < 0:
                raise UnsupportedOnnxOp("ConvTranspose", "output_shape larger than the full output")
            upper = auto_pad == "SAME_UPPER"
            begin = [t // 2 if upper else t - t // 2 for t in total]
            end = [t - t // 2 if upper else t // 2 for t in total]
        elif auto_pad == "VALID":
            begin, end = [0] * n, [0] * n
        else:
            pads = spec.attrs.get("pads", [0] * (2 * n))
            begin, end = list(pads[:n]), list(pads[n:])
        y = _CONV_T[n - 1](x, w, b, strides, 0, out_pad, group, dilations)
        for i in range(n):
            y = y.narrow(i + 2, begin[i], y.shape[i + 2] - begin[i] - end[i])
        return [y]

    return run


@_op("MaxPool")
def _max_pool(spec: _NodeSpec) -> OpFn:
    if spec.n_outputs > 1:
        raise UnsupportedOnnxOp("MaxPool", "Indices output")
    kernel = list(spec.attrs["kernel_shape"])
    n = len(kernel)
    strides = list(spec.attrs.get("strides", [1] * n))
    dilations = list(spec.attrs.get("dilations", [1] * n))
    ceil_mode = bool(spec.attrs.get("ceil_mode", 0))

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "MaxPool")
        size = list(x.shape[2:])
        begin, end = _spatial_pads(spec, size, kernel, strides, dilations)
        pool = _MAX_POOL[n - 1]
        if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel, strict=True)):
            return [pool(x, kernel, strides, begin, dilations, ceil_mode)]
        out = [
            _pool_out_size(
                size[i], kernel[i], strides[i], dilations[i], begin[i], end[i], ceil_mode
            )
            for i in range(n)
        ]
        xp = F.pad(x, _pad_list(begin, end), value=-math.inf)
        return [_crop_spatial(pool(xp, kernel, strides, 0, dilations, ceil_mode), out)]

    return run


@_op("AveragePool")
def _avg_pool(spec: _NodeSpec) -> OpFn:
    kernel = list(spec.attrs["kernel_shape"])
    n = len(kernel)
    strides = list(spec.attrs.get("strides", [1] * n))
    if any(d != 1 for d in spec.attrs.get("dilations", [1] * n)):
        raise UnsupportedOnnxOp("AveragePool", "dilations")
    ceil_mode = bool(spec.attrs.get("ceil_mode", 0))
    include_pad = bool(spec.attrs.get("count_include_pad", 0))

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "AveragePool")
        size = list(x.shape[2:])
        begin, end = _spatial_pads(spec, size, kernel, strides, [1] * n)
        pool = _AVG_POOL[n - 1]
        if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel, strict=True)):
            return [pool(x, kernel, strides, begin, ceil_mode, include_pad)]
        out = [
            _pool_out_size(size[i], kernel[i], strides[i], 1, begin[i], end[i], ceil_mode)
            for i in range(n)
        ]
        pads = _pad_list(begin, end)
        y = pool(F.pad(x, pads), kernel, strides, 0, ceil_mode, True)
        if not include_pad:
            ones = F.pad(torch.ones_like(x[:1, :1]), pads)
            y = y / pool(ones, kernel, strides, 0, ceil_mode, True)
        return [_crop_spatial(y, out)]

    return run


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, spec.op)
        dims = tuple(range(2, x.ndim))
        if spec.op == "GlobalAveragePool":
            return [x.mean(dim=dims, keepdim=True)]
        return [x.amax(dim=dims, keepdim=True)]

    return run


# -- linear algebra and arithmetic ----------------------------------------------------------------
@_op("Gemm")
def _gemm(spec: _NodeSpec) -> OpFn:
    alpha = float(spec.attrs.get("alpha", 1.0))
    beta = float(spec.attrs.get("beta", 1.0))
    trans_a = bool(spec.attrs.get("transA", 0))
    trans_b = bool(spec.attrs.get("transB", 0))

    def run(ins: Inputs) -> list[Tensor]:
        a, b, c = _arg(ins, 0, "Gemm"), _arg(ins, 1, "Gemm"), _opt(ins, 2)
        y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
        if alpha != 1.0:
            y = alpha * y
        if c is not None:
            y = y + (c if beta == 1.0 else beta * c)
        return [y]

    return run


@_op("MatMul")
def _matmul(spec: _NodeSpec) -> OpFn:
    return lambda ins: [torch.matmul(_arg(ins, 0, "MatMul"), _arg(ins, 1, "MatMul"))]


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


@_op("Softmax", "LogSoftmax")
def _softmax(spec: _NodeSpec) -> OpFn:
    legacy = spec.opset < 13
    axis = int(spec.attrs.get("axis", 1 if legacy else -1))
    fn = F.softmax if spec.op == "Softmax" else F.log_softmax

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, spec.op)
        ax = axis + x.ndim if axis < 0 else axis
        if not legacy:
            return [fn(x, dim=ax)]
        # Before opset 13 the input is coerced to 2-D at ``axis`` and normalized over the rest.
        shape = x.shape
        flat = x.reshape(math.prod(shape[:ax]), math.prod(shape[ax:]))
        return [fn(flat, dim=1).reshape(shape)]

    return run


# -- normalization ------------------------------------------------------------------------------
@_op("BatchNormalization")
def _batch_norm(spec: _NodeSpec) -> OpFn:
    if int(spec.attrs.get("training_mode", 0)) or spec.n_outputs > 1:
        raise UnsupportedOnnxOp("BatchNormalization", "training mode")
    eps = float(spec.attrs.get("epsilon", 1e-5))

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, spec.op)
        scale, bias = _arg(ins, 1, spec.op), _arg(ins, 2, spec.op)
        mean, var = _arg(ins, 3, spec.op), _arg(ins, 4, spec.op)
        return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)]

    return run


@_op("InstanceNormalization")
def _instance_norm(spec: _NodeSpec) -> OpFn:
    eps = float(spec.attrs.get("epsilon", 1e-5))

    def run(ins: Inputs) -> list[Tensor]:
        x, scale, bias = (_arg(ins, i, spec.op) for i in range(3))
        return [F.instance_norm(x, weight=scale, bias=bias, eps=eps)]

    return run


@_op("LayerNormalization")
def _layer_norm(spec: _NodeSpec) -> OpFn:
    if spec.n_outputs > 1:
        raise UnsupportedOnnxOp("LayerNormalization", "Mean/InvStdDev outputs")
    axis = int(spec.attrs.get("axis", -1))
    eps = float(spec.attrs.get("epsilon", 1e-5))

    def run(ins: Inputs) -> list[Tensor]:
        x, scale, bias = _arg(ins, 0, spec.op), _arg(ins, 1, spec.op), _opt(ins, 2)
        ax = axis + x.ndim if axis < 0 else axis
        dims = tuple(range(ax, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        y = (x - mean) / torch.sqrt(var + eps) * scale
        return [y if bias is None else y + bias]

    return run


@_op("Dropout")
def _dropout(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Dropout")
        return [x, torch.ones_like(x, dtype=torch.bool)][: max(spec.n_outputs, 1)]

    return run


# -- shapes and indexing ----------------------------------------------------------------------
@_op("Flatten")
def _flatten(spec: _NodeSpec) -> OpFn:
    axis = int(spec.attrs.get("axis", 1))

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Flatten")
        ax = axis + x.ndim if axis < 0 else axis
        return [x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))]

    return run


@_op("Reshape")
def _reshape(spec: _NodeSpec) -> OpFn:
    allow_zero = bool(spec.attrs.get("allowzero", 0))

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Reshape")
        shape = list(spec.attrs["shape"]) if spec.opset < 5 else _ints(_arg(ins, 1, "Reshape"))
        if not allow_zero:
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [x.reshape(shape)]

    return run


@_op("Transpose")
def _transpose(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Transpose")
        perm = spec.attrs.get("perm") or list(reversed(range(x.ndim)))
        return [x.permute(*perm)]

    return run


@_op("Squeeze")
def _squeeze(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Squeeze")
        axes = _axes_input_or_attr(spec, ins, 13)
        if axes is None:
            return [x.squeeze()]
        return [x.squeeze(dim=tuple(_norm_axes(axes, x.ndim)))] if axes else [x]

    return run


@_op("Unsqueeze")
def _unsqueeze(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Unsqueeze")
        axes = _axes_input_or_attr(spec, ins, 13) or []
        for a in sorted(_norm_axes(axes, x.ndim + len(axes))):
            x = x.unsqueeze(a)
        return [x]

    return run


@_op("Concat")
def _concat(spec: _NodeSpec) -> OpFn:
    axis = int(spec.attrs.get("axis", 0))

    def run(ins: Inputs) -> list[Tensor]:
        items = [t for t in ins if t is not None]
        return [torch.cat(items, dim=axis)]

    return run


@_op("Split")
def _split(spec: _NodeSpec) -> OpFn:
    axis = int(spec.attrs.get("axis", 0))

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Split")
        if spec.opset < 13:
            sizes = spec.attrs.get("split")
        else:
            t = _opt(ins, 1)
            sizes = None if t is None else _ints(t)
        if sizes is None:
            parts = int(spec.attrs.get("num_outputs", spec.n_outputs))
            chunk = -(-x.shape[axis] // parts)
            return list(torch.split(x, chunk, dim=axis))
        return list(torch.split(x, list(sizes), dim=axis))

    return run


@_op("Shape")
def _shape(spec: _NodeSpec) -> OpFn:
    start = spec.attrs.get("start", 0)
    end = spec.attrs.get("end")

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Shape")
        dims = list(x.shape)[start:end]
        return [torch.tensor(dims, dtype=torch.int64, device=x.device)]

    return run


@_op("Size")
def _size(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Size")
        return [torch.tensor(x.numel(), dtype=torch.int64, device=x.device)]

    return run


@_op("Gather")
def _gather(spec: _NodeSpec) -> OpFn:
    axis = int(spec.attrs.get("axis", 0))

    def run(ins: Inputs) -> list[Tensor]:
        data, idx = _arg(ins, 0, "Gather"), _arg(ins, 1, "Gather").long()
        ax = axis + data.ndim if axis < 0 else axis
        idx = torch.where(idx < 0, idx + data.shape[ax], idx)
        out = data.index_select(ax, idx.reshape(-1))
        return [out.reshape((*data.shape[:ax], *idx.shape, *data.shape[ax + 1 :]))]

    return run


@_op("Slice")
def _slice(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Slice")
        if spec.opset < 10:
            starts = list(spec.attrs["starts"])
            ends = list(spec.attrs["ends"])
            axes = list(spec.attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts, ends = _ints(_arg(ins, 1, "Slice")), _ints(_arg(ins, 2, "Slice"))
            axes_t, steps_t = _opt(ins, 3), _opt(ins, 4)
            axes = list(range(len(starts))) if axes_t is None else _ints(axes_t)
            steps = [1] * len(starts) if steps_t is None else _ints(steps_t)
        for a, start, end, step in zip(axes, starts, ends, steps, strict=True):
            ax = a + x.ndim if a < 0 else a
            dim = x.shape[ax]
            if step == 0:
                raise UnsupportedOnnxOp("Slice", "step 0")
            lo, hi = (0, dim) if step > 0 else (-1, dim - 1)
            s = max(lo, min(start + dim if start < 0 else start, hi))
            e = max(lo, min(end + dim if end < 0 else end, hi))
            if step > 0:
                x = x[(slice(None),) * ax + (slice(s, e, step),)]
            else:
                idx = torch.arange(s, e, step, device=x.device)
                x = x.index_select(ax, idx)
        return [x]

    return run


@_op("Pad")
def _pad(spec: _NodeSpec) -> OpFn:
    mode = str(spec.attrs.get("mode", "constant"))
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise UnsupportedOnnxOp("Pad", f"mode={mode}")

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Pad")
        n = x.ndim
        if spec.opset < 11:
            pads = list(spec.attrs["pads"])
            value = float(spec.attrs.get("value", 0.0))
            axes = list(range(n))
        else:
            pads = _ints(_arg(ins, 1, "Pad"))
            v, axes_t = _opt(ins, 2), _opt(ins, 3)
            value = 0.0 if v is None or v.numel() == 0 else float(v.reshape(-1)[0])
            axes = list(range(n)) if axes_t is None else _norm_axes(_ints(axes_t), n)
        begin, end = [0] * n, [0] * n
        for i, a in enumerate(axes):
            begin[a], end[a] = pads[i], pads[i + len(axes)]
        first = next((a for a in range(n) if begin[a] or end[a]), n)
        if first == n:
            return [x]
        if mode == "constant":
            return [F.pad(x, _pad_list(begin[first:], end[first:]), mode="constant", value=value)]
        # torch pads the last k dims of a (k+1)- or (k+2)-dim input in the other modes.
        k = next((k for k in range(n - first, 4) if n - k in (1, 2)), None)
        if k is None:
            raise UnsupportedOnnxOp("Pad", f"mode={mode} over {n - first} of {n} dims")
        return [F.pad(x, _pad_list(begin[n - k :], end[n - k :]), mode=modes[mode])]

    return run


def _broadcast(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    return [y if x == 1 else x for x, y in zip(a, b, strict=True)]


@_op("Expand")
def _expand(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x, shape = _arg(ins, 0, "Expand"), _ints(_arg(ins, 1, "Expand"))
        return [x.expand(_broadcast(list(x.shape), shape))]

    return run


@_op("Tile")
def _tile(spec: _NodeSpec) -> OpFn:
    return lambda ins: [_arg(ins, 0, "Tile").repeat(*_ints(_arg(ins, 1, "Tile")))]


@_op("Where")
def _where(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        cond, a, b = (_arg(ins, i, "Where") for i in range(3))
        return [torch.where(cond.bool(), a, b)]

    return run


@_op("ConstantOfShape")
def _constant_of_shape(spec: _NodeSpec) -> OpFn:
    value = spec.attrs.get("value")
    fill = torch.zeros(1) if value is None else value.reshape(-1)

    def run(ins: Inputs) -> list[Tensor]:
        shape = _arg(ins, 0, "ConstantOfShape")
        return [fill.to(shape.device).expand(_ints(shape)).clone()]

    return run


@_op("Range")
def _range(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        start, limit, delta = (_arg(ins, i, "Range") for i in range(3))
        return [
            torch.arange(
                start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device
            )
        ]

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


# -- the module -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    op: str
    name: str
    fn: OpFn
    inputs: tuple[str, ...]  # "" for an omitted optional input
    outputs: tuple[str, ...]
    drop: tuple[str, ...]  # values whose last use is this step


class OnnxModule(nn.Module):
    """An ONNX graph evaluated with torch ops; differentiable w.r.t. its inputs."""

    def __init__(
        self,
        inputs: Sequence[tuple[str, torch.dtype | None]],
        outputs: Sequence[str],
        constants: dict[str, Tensor],
        steps: Sequence[_Step],
    ) -> None:
        super().__init__()
        self.input_names = [name for name, _ in inputs]
        self.input_dtypes = [dtype for _, dtype in inputs]
        self.output_names = list(outputs)
        self.ops = [step.op for step in steps]
        self._steps = list(steps)
        self._constant_attrs: dict[str, str] = {}
        for i, (name, value) in enumerate(constants.items()):
            attr = f"const_{i}"
            self.register_buffer(attr, value)
            self._constant_attrs[name] = attr

    def forward(self, *xs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(xs) != len(self.input_names):
            raise ModelError(
                f"the ONNX graph takes {len(self.input_names)} input(s) "
                f"({', '.join(self.input_names)}), got {len(xs)}; pass one tensor per input"
            )
        env: dict[str, Tensor] = {}
        for name, attr in self._constant_attrs.items():
            buf = self._buffers[attr]
            if buf is not None:
                env[name] = buf
        for name, dtype, x in zip(self.input_names, self.input_dtypes, xs, strict=True):
            env[name] = x if dtype is None or x.dtype == dtype else x.to(dtype)
        for step in self._steps:
            args = [env[n] if n else None for n in step.inputs]
            results = step.fn(args)
            for out_name, value in zip(step.outputs, results, strict=False):
                if out_name:
                    env[out_name] = value
            for name in step.drop:
                env.pop(name, None)
        outs = tuple(env[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 13


def _tensor_dtype(value: onnx.ValueInfoProto) -> torch.dtype | None:
    if not value.type.HasField("tensor_type"):
        return None
    return _DTYPES.get(value.type.tensor_type.elem_type)


def convert(
    onnx_model: onnx.ModelProto | str | Path, *, outputs: Sequence[str] | None = None
) -> OnnxModule:
    """Build a torch module computing ``outputs`` (default: all graph outputs) of the graph.

    Raises:
        UnsupportedOnnxOp: the part of the graph the outputs depend on uses an op or setting
            the converter does not support.
        ModelError: the graph is malformed (unknown value names, a cycle).
    """
    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    graph = model.graph
    opset = _default_opset(model)
    initializers = {init.name: init for init in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    wanted = list(outputs) if outputs is not None else [v.name for v in graph.output]
    known_outputs = {v.name for v in graph.output}
    for name in wanted:
        if name not in known_outputs:
            raise ModelError(
                f"ONNX graph has no output {name!r}; choose one of {sorted(known_outputs)}"
            )

    producer = {out: node for node in graph.node for out in node.output if out}
    # Keep only the nodes the wanted outputs depend on, in a topological order (iterative DFS,
    # so deep graphs do not hit the recursion limit).
    order: list[onnx.NodeProto] = []
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for name in wanted:
        root = producer.get(name)
        if root is None or state.get(id(root)) == 2:
            continue
        stack: list[tuple[onnx.NodeProto, int]] = [(root, 0)]
        state[id(root)] = 1
        while stack:
            node, i = stack[-1]
            if i < len(node.input):
                stack[-1] = (node, i + 1)
                child = producer.get(node.input[i]) if node.input[i] else None
                if child is None or state.get(id(child)) == 2:
                    continue
                if state.get(id(child)) == 1:
                    raise ModelError("ONNX graph has a cycle; re-export the model")
                state[id(child)] = 1
                stack.append((child, 0))
            else:
                stack.pop()
                state[id(node)] = 2
                order.append(node)

    constants: dict[str, Tensor] = {}
    used_inputs = {inp for node in order for inp in node.input} | set(wanted)
    for name, init in initializers.items():
        if name in used_inputs:
            constants[name] = _to_tensor(numpy_helper.to_array(init))
    available = set(constants) | {v.name for v in graph_inputs}

    pending: list[tuple[onnx.NodeProto, OpFn]] = []
    for node in order:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOnnxOp(f"{node.domain}:{node.op_type}")
        attrs = {a.name: _attr_value(a, node.op_type) for a in node.attribute}
        for inp in node.input:
            if inp and inp not in available:
                raise ModelError(
                    f"ONNX node {node.name or node.op_type} reads {inp!r}, which nothing "
                    "produces; the file is malformed, re-export the model"
                )
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_value(attrs)
            available.add(node.output[0])
            continue
        builder = _BUILDERS.get(node.op_type)
        if builder is None:
            raise UnsupportedOnnxOp(node.op_type)
        spec = _NodeSpec(node.op_type, attrs, opset, sum(1 for o in node.output if o))
        pending.append((node, builder(spec)))
        available.update(o for o in node.output if o)

    last_use: dict[str, int] = {}
    for i, (node, _) in enumerate(pending):
        for inp in node.input:
            if inp:
                last_use[inp] = i
    keep = set(wanted)
    drops: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name not in keep:
            drops.setdefault(i, []).append(name)
    steps = [
        _Step(
            op=node.op_type,
            name=node.name,
            fn=fn,
            inputs=tuple(node.input),
            outputs=tuple(node.output),
            drop=tuple(drops.get(i, ())),
        )
        for i, (node, fn) in enumerate(pending)
    ]
    inputs = [(v.name, _tensor_dtype(v)) for v in graph_inputs]
    return OnnxModule(inputs, wanted, constants, steps)


def _constant_value(attrs: dict[str, Any]) -> Tensor:
    if "value" in attrs:
        value = attrs["value"]
        if isinstance(value, Tensor):
            return value
    if "value_float" in attrs:
        return torch.tensor(float(attrs["value_float"]), dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor(list(attrs["value_floats"]), dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(int(attrs["value_int"]), dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(list(attrs["value_ints"]), dtype=torch.int64)
    raise UnsupportedOnnxOp("Constant", f"attributes {sorted(attrs)}")
