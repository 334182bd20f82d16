"""ONNX ops of the converter: shapes and indexing (registered in :mod:`aegis.io.onnx_ops`'
table on import)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aegis.io.onnx_ops import (
    Inputs,
    OpFn,
    UnsupportedOnnxOp,
    _arg,
    _axes_input_or_attr,
    _ints,
    _NodeSpec,
    _norm_axes,
    _op,
    _opt,
)
from aegis.io.onnx_ops_nn import _pad_list


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
