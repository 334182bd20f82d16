"""Convert an ONNX graph into a differentiable torch module (white-box attacks on ONNX files).

The converted module interprets the graph with torch ops: initializers and ``Constant`` nodes become
buffers, and ``forward`` evaluates the nodes in topological order. Only the nodes the chosen output
depends on are kept (so a classifier exported with an extra ``ArgMax`` label output still converts).

Supported: the ops typical image CNN / MLP exports use (``torch.onnx.export`` at opsets 7-20,
tf2onnx / keras2onnx graphs, skl2onnx MLPs, the Caffe2 ImageNet classifiers of the ONNX model
zoo): convolutions, pooling, Gemm/MatMul, elementwise arithmetic and activations, normalization
(batch, instance, layer, LRN), shape plumbing (Shape, Gather, Reshape, Slice, Concat,
...). Anything else raises :class:`UnsupportedOnnxOp` naming the op; the loader then falls back to a
query-only model run by onnxruntime. The op table lives in :mod:`aegis.io.onnx_ops`
(elementwise, reductions), :mod:`aegis.io.onnx_ops_nn` (convolution, pooling, normalization) and
:mod:`aegis.io.onnx_ops_shape` (shapes and indexing); this module walks the graph. A node whose
inputs are all constants (weights built by ``ConstantOfShape``, shapes of initializers) is
evaluated once here and kept as a buffer.

Example::

    module = convert(onnx.load("net.onnx"))
    logits = module(torch.rand(8, 1, 28, 28))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from aegis.errors import ModelError
from aegis.io import onnx_ops_nn, onnx_ops_shape
from aegis.io.onnx_ops import (
    _BUILDERS,
    _DTYPES,
    OpFn,
    UnsupportedOnnxOp,
    _attr_value,
    _NodeSpec,
    _to_tensor,
)

__all__ = ["OnnxModule", "UnsupportedOnnxOp", "convert", "supported_ops"]

_REGISTERED = (onnx_ops_nn, onnx_ops_shape)  # imported for the ops they add to the table


def supported_ops() -> list[str]:
    """The ONNX ops (default domain) :func:`convert` understands."""
    return sorted({*_BUILDERS, "Constant"})


# -- the module -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    op: str
    name: str
    fn: OpFn
    inputs: tuple[str, ...]  # "" for an omitted optional input
    outputs: tuple[str, ...]
    drop: tuple[str, ...]  # values whose last use is this step
    attrs: Mapping[str, Any] = field(default_factory=dict)


class OnnxModule(nn.Module):
    """An ONNX graph evaluated with torch ops; differentiable w.r.t. its inputs."""

    def __init__(
        self,
        inputs: Sequence[tuple[str, torch.dtype | None]],
        outputs: Sequence[str],
        constants: dict[str, Tensor],
        steps: Sequence[_Step],
        opset: int = 13,
    ) -> None:
        super().__init__()
        self.opset = opset
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

    def final_op(self) -> tuple[str, int] | None:
        """The op producing the only output, and its ``axis`` (the opset's default where the
        node gives none), when that op is ``Softmax`` or ``LogSoftmax``; else None."""
        if len(self.output_names) != 1 or not self._steps:
            return None
        last = self._steps[-1]
        if last.op not in ("Softmax", "LogSoftmax") or last.outputs[:1] != (self.output_names[0],):
            return None
        default = 1 if self.opset < 13 else -1
        return last.op, int(last.attrs.get("axis", default))

    def without_final_op(self) -> OnnxModule:
        """The same graph without its final node: it returns that node's input. The weights are
        shared, not copied."""
        last = self._steps[-1]
        constants = {}
        for name, attr in self._constant_attrs.items():
            buf = self._buffers[attr]
            if buf is not None:
                constants[name] = buf
        inputs = list(zip(self.input_names, self.input_dtypes, strict=True))
        return OnnxModule(inputs, [last.inputs[0]], constants, self._steps[:-1], self.opset)


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
    initializers = {init.name: init for init in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    wanted = list(outputs) if outputs is not None else [v.name for v in graph.output]
    known_outputs = {v.name for v in graph.output}
    for name in wanted:
        if name not in known_outputs:
            raise ModelError(
                f"ONNX graph has no output {name!r}; choose one of {sorted(known_outputs)}"
            )
    order = _needed_nodes(graph, wanted)
    used = {inp for node in order for inp in node.input} | set(wanted)
    constants = {
        name: _to_tensor(numpy_helper.to_array(init))
        for name, init in initializers.items()
        if name in used
    }
    opset = _default_opset(model)
    pending = _build(order, constants, {v.name for v in graph_inputs}, opset)
    steps = _steps(pending, wanted)
    needed = {n for step in steps for n in step.inputs} | set(wanted)
    kept = {name: value for name, value in constants.items() if name in needed}
    inputs = [(v.name, _tensor_dtype(v)) for v in graph_inputs]
    return OnnxModule(inputs, wanted, kept, steps, opset)


def _needed_nodes(graph: onnx.GraphProto, wanted: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes the wanted outputs depend on, in a topological order (an iterative DFS, so deep
    graphs do not hit the recursion limit)."""
    producer = {out: node for node in graph.node for out in node.output if out}
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
    return order


def _build(
    order: Sequence[onnx.NodeProto], constants: dict[str, Tensor], inputs: set[str], opset: int
) -> list[tuple[onnx.NodeProto, OpFn]]:
    """One torch function per node; nodes computed from constants alone are evaluated now and
    their outputs added to ``constants``."""
    pending: list[tuple[onnx.NodeProto, OpFn]] = []
    available = set(constants) | inputs
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
        fn = builder(_NodeSpec(node.op_type, attrs, opset, sum(1 for o in node.output if o)))
        available.update(o for o in node.output if o)
        if all(inp in constants for inp in node.input if inp):
            with torch.no_grad():
                results = fn([constants[inp] if inp else None for inp in node.input])
            for out_name, value in zip(node.output, results, strict=False):
                if out_name:
                    constants[out_name] = value
            continue
        pending.append((node, fn))
    return pending


def _steps(pending: Sequence[tuple[onnx.NodeProto, OpFn]], wanted: Sequence[str]) -> list[_Step]:
    """The steps of the module, each dropping the values whose last use it is."""
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
    return [
        _Step(
            op=node.op_type,
            name=node.name,
            fn=fn,
            inputs=tuple(node.input),
            outputs=tuple(node.output),
            drop=tuple(drops.get(i, ())),
            attrs={a.name: _attr_value(a, node.op_type) for a in node.attribute},
        )
        for i, (node, fn) in enumerate(pending)
    ]


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
