"""ONNX ops of the converter: convolution, pooling, linear layers, softmax and normalization
(registered in :mod:`aegis.io.onnx_ops`' table on import)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from aegis.io.onnx_ops import (
    Inputs,
    OpFn,
    UnsupportedOnnxOp,
    _arg,
    _NodeSpec,
    _op,
    _opt,
)


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


# -- softmax and normalization ------------------------------------------------------------------
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


@_op("LRN")
def _lrn(spec: _NodeSpec) -> OpFn:
    """Local response normalization across channels, as the ONNX spec words it: ``x / (bias +
    alpha / size * sum(x[c'] ** 2)) ** beta``, the sum over channels ``c - floor((size - 1) / 2)``
    to ``c + ceil((size - 1) / 2)``. torch's ``local_response_norm`` scales alpha the same way but
    puts the extra channel of an even window before ``c``, not after, so it is written out here."""
    if "size" not in spec.attrs or int(spec.attrs["size"]) < 1:
        raise UnsupportedOnnxOp("LRN", f"size={spec.attrs.get('size')}")
    size = int(spec.attrs["size"])
    alpha = float(spec.attrs.get("alpha", 1e-4))
    beta = float(spec.attrs.get("beta", 0.75))
    bias = float(spec.attrs.get("bias", 1.0))
    before, after = (size - 1) // 2, size // 2

    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "LRN")
        if x.ndim < 2:
            raise UnsupportedOnnxOp("LRN", f"input of rank {x.ndim}")
        squares = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
        squares = F.pad(squares, (0, 0, before, after))
        mean = F.avg_pool2d(squares, (size, 1), stride=1).reshape(x.shape)
        return [x / (bias + alpha * mean) ** beta]

    return run


@_op("Dropout")
def _dropout(spec: _NodeSpec) -> OpFn:
    def run(ins: Inputs) -> list[Tensor]:
        x = _arg(ins, 0, "Dropout")
        return [x, torch.ones_like(x, dtype=torch.bool)][: max(spec.n_outputs, 1)]

    return run
