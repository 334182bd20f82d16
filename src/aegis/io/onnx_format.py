"""ONNX ``.onnx`` models: converted to torch by :mod:`aegis.io.onnx_torch` and checked against
onnxruntime once; a graph the converter cannot express (or gets wrong) is loaded query-only with
onnxruntime. A graph older than opset 7 (which onnxruntime does not run) is first upgraded with
``onnx.version_converter`` (:mod:`aegis.io.onnx_upgrade`), and the upgrade is noted in the
provenance. onnx and onnxruntime are imported only when such a file is loaded. External data
(tensors stored in other files) must lie in the model's folder: a location outside it (``../``,
an absolute path, a symlink out) is refused before onnx or onnxruntime reads anything.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aegis.errors import AegisWarning, ModelError, UnsafeFileError
from aegis.io.loaded import (
    Dims,
    QueryFn,
    _corrupt,
    _device_of,
    _first_tensor,
    _Loaded,
    _one_line,
    _StaticBatch,
    _to_layout,
)

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def _load_onnx(file: Path) -> _Loaded:
    try:
        import onnx
    except ImportError as exc:
        raise ModelError("loading .onnx needs onnx: pip install 'aegis-robust[onnx]'") from exc
    proto = _read_onnx(onnx, file)
    checker_note = ""
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        if not proto.graph.node or not proto.graph.output:
            raise _corrupt(file, "an ONNX model", exc) from exc
        # A strict checker complaint about a runnable graph is not fatal: onnxruntime and the
        # converter validate what they use.
        checker_note = _one_line(exc)
        log.warning("%s fails the ONNX checker (%s); loading it anyway", file.name, checker_note)
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise ModelError(
            f"{file.name} has {len(inputs)} inputs and {len(graph.output)} outputs; aegis needs "
            "one image input and a scores output: re-export the model"
        )
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    outputs = [v for v in graph.output if v.type.tensor_type.elem_type in floats]
    if not outputs:
        raise ModelError(
            f"{file.name} has no floating-point tensor output (only labels or maps?); re-export "
            "it to return scores as a tensor (skl2onnx: options={'zipmap': False})"
        )
    output = outputs[0].name
    loaded = _Loaded(fmt="onnx")
    if checker_note:
        loaded.notes["onnx_checker"] = checker_note
    if len(graph.output) > 1:
        loaded.notes["onnx_output"] = f"used output {output!r} of {len(graph.output)}"
    dims: Dims | None = None
    batch: int | None = None
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.HasField("shape"):
        all_dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        )
        if all_dims:
            batch, dims = all_dims[0], all_dims[1:]
    loaded.dims = dims
    producers = {out: node.op_type for node in graph.node for out in node.output}
    loaded.probabilities = producers.get(output) == "Softmax"
    if batch is not None and batch > 0:
        loaded.notes["batch"] = f"graph has a fixed batch of {batch}: run in chunks of {batch}"
    _attach_runtimes(file, proto, loaded, inputs[0].name, outputs[0], batch)
    return loaded


def _attach_runtimes(
    file: Path, proto: Any, loaded: _Loaded, input_name: str, output: Any, batch: int | None
) -> None:
    """The torch conversion (white-box) and the onnxruntime session (reference, or query-only
    fallback) of the graph, upgraded first when its opset is older than 7."""
    from aegis.io.onnx_torch import UnsupportedOnnxOp, convert
    from aegis.io.onnx_upgrade import MIN_OPSET, upgrade

    up = upgrade(proto)
    if up.note:
        loaded.notes["onnx_opset"] = up.note
    elif up.failure:
        loaded.notes["onnx_opset"] = (
            f"opset {up.opset} could not be upgraded to {MIN_OPSET} ({up.failure})"
        )
    squeeze = _trailing_ones(output)
    if squeeze:
        note = f"flattened its {squeeze} output to (n, {squeeze[1]})"
        previous = loaded.notes.get("onnx_output")
        loaded.notes["onnx_output"] = f"{previous}; {note}" if previous else note
    why = ""
    try:
        module: nn.Module = convert(up.model, outputs=[output.name])
        if batch is not None:
            module = _StaticBatch(module, batch)
        loaded.module = _Flat(module) if squeeze else module
        loaded.fresh = True
        loaded.fmt = "onnx (converted to torch)"
    except UnsupportedOnnxOp as exc:
        detail = f" ({exc.detail})" if exc.detail else ""
        why = f"ONNX op {exc.op}{detail} has no differentiable converter"
    except Exception as exc:  # a malformed node the converter trips over
        why = f"the ONNX to torch conversion failed ({_one_line(exc)})"
    source = up.model.SerializeToString() if up.note else str(file)
    query_fn, failure = _onnxruntime_fn(source, input_name, output.name, batch)
    loaded.query_fn = _flat_fn(query_fn) if query_fn is not None and squeeze else query_fn
    if failure and loaded.module is None:
        raise ModelError(_unrunnable(file, why, failure, up.opset, up.failure))
    if failure:
        loaded.notes["onnx_check"] = f"skipped: onnxruntime cannot run the file (...{failure})"
    if loaded.module is None:
        if loaded.query_fn is None:
            raise ModelError(
                f"{file.name}: {why} and onnxruntime is missing; pip install onnxruntime to "
                "load it query-only"
            )
        _go_query_only(
            file,
            loaded,
            f"{why}: loaded query-only; gradient attacks will refuse it, black-box attacks work",
        )
    elif loaded.query_fn is None and "onnx_check" not in loaded.notes:
        loaded.notes["onnx_check"] = "skipped: onnxruntime is not installed"


def _unrunnable(file: Path, why: str, failure: str, opset: int | None, upgrade: str) -> str:
    """Why neither the converter nor onnxruntime can run the graph, and what to do (one line)."""
    from aegis.io.onnx_upgrade import MIN_OPSET

    head = f"cannot load {file.name}: {why}, and onnxruntime cannot run it (...{failure})"
    if opset is None or opset >= MIN_OPSET:
        return f"{head}; upgrade onnxruntime, or re-export the model at an older opset"
    tried = (
        f"onnx.version_converter cannot upgrade its opset {opset} to {MIN_OPSET} ({upgrade})"
        if upgrade
        else f"it was upgraded from opset {opset} to {MIN_OPSET} with onnx.version_converter"
    )
    return f"{head}; {tried}; re-export the model at opset {MIN_OPSET} or newer"


def _trailing_ones(output: Any) -> tuple[int, ...] | None:
    """The declared shape of an output like (n, 1000, 1, 1) (scores with trailing 1s), else None."""
    tensor = output.type.tensor_type
    if not tensor.HasField("shape") or len(tensor.shape.dim) < 3:
        return None
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else 0 for d in tensor.shape.dim)
    return dims if dims[1] > 0 and all(d == 1 for d in dims[2:]) else None


class _Flat(nn.Module):
    """Scores of shape (n, c, 1, ..., 1) as (n, c)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _first_tensor(self.inner(x))
        return out.reshape(out.shape[0], -1)


def _flat_fn(query_fn: QueryFn) -> QueryFn:
    def run(arr: np.ndarray) -> np.ndarray:
        out = query_fn(arr)
        return out.reshape(out.shape[0], -1)

    return run


def _read_onnx(onnx: Any, file: Path) -> Any:
    """The model proto with its external data, which must lie in the model's folder."""
    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception as exc:
        raise _corrupt(file, "an ONNX model", exc) from exc
    if _check_external_data(file, proto):
        try:
            onnx.load_external_data_for_model(proto, str(file.parent))
        except Exception as exc:
            raise _corrupt(file, "an ONNX model with external data", exc) from exc
    return proto


def _check_external_data(file: Path, proto: Any) -> bool:
    """Refuse external data outside the model's folder (before onnx or onnxruntime reads any);
    True if the model has external data."""
    import onnx

    folder = file.parent.resolve()
    found = False
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        if not location or "\x00" in location:
            raise ModelError(
                f"{file.name}: tensor {_shown(tensor.name)} keeps its data outside the file but "
                "names no location; the file is corrupt: re-export it"
            )
        for candidate in (location, os.path.join(entries.get("basepath", ""), location)):
            _refuse_outside(file, folder, tensor.name, candidate)
    return found


def _refuse_outside(file: Path, folder: Path, tensor: str, location: str) -> None:
    lexical = os.path.normpath(location)
    outside = os.path.isabs(location) or lexical == ".." or lexical.startswith("../")
    try:
        inside = not outside and (file.parent / location).resolve().is_relative_to(folder)
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafeFileError(
            f"{file.name}: tensor {_shown(tensor)} keeps its data in {_shown(location)}, refused: "
            f"it cannot be resolved ({_one_line(exc)}); keep external data files in the folder of "
            "the .onnx file"
        ) from exc
    if inside:
        return
    via = "" if outside else " (through a symlink)"
    raise UnsafeFileError(
        f"{file.name}: tensor {_shown(tensor)} keeps its data in {_shown(location)}, refused: "
        f"{_shown(location)} points outside the model's folder{via}; keep external data files "
        "in the folder of the .onnx file"
    )


def _all_tensors(proto: Any) -> Iterator[Any]:
    """Every TensorProto of a model: initializers and attribute tensors, in every subgraph and
    function."""
    graphs = [proto.graph]
    nodes = [node for fn in proto.functions for node in fn.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for one in graph.sparse_initializer:
                yield from (one.values, one.indices)
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = [*attr.sparse_tensors]
            if attr.HasField("sparse_tensor"):
                sparse.append(attr.sparse_tensor)
            for one in sparse:
                yield from (one.values, one.indices)
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def _shown(text: str, limit: int = 120) -> str:
    """A name from the file, safe to put in a one-line message."""
    shown = text if text.isprintable() and text.strip() == text and text else repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _go_query_only(file: Path, loaded: _Loaded, message: str) -> None:
    loaded.module = None
    loaded.fmt = "onnx (query-only, onnxruntime)"
    loaded.notes["gradients"] = message
    log.warning("%s: %s", file.name, message)
    warnings.warn(f"{file.name}: {message}", AegisWarning, stacklevel=4)


def _onnxruntime_fn(
    source: str | bytes, input_name: str, output: str, batch: int | None
) -> tuple[QueryFn | None, str]:
    """onnxruntime on the file (or on the bytes of its upgraded graph): the query function, or
    None and why onnxruntime cannot run it ("" when onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, ""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        # onnxruntime puts the reason (e.g. an IR version it is too old for) at the end.
        return None, " ".join(str(exc).split())[-160:] or type(exc).__name__
    dtype = _ORT_DTYPES.get(session.get_inputs()[0].type, np.float32)

    def run(arr: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(arr, dtype=dtype)
        if batch is None or x.shape[0] == batch:
            return np.asarray(session.run([output], {input_name: x})[0])
        parts = []
        for i in range(0, x.shape[0], batch):
            chunk = x[i : i + batch]
            m = chunk.shape[0]
            if m < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - m, axis=0)])
            parts.append(np.asarray(session.run([output], {input_name: chunk})[0])[:m])
        return np.concatenate(parts)

    return run, ""


def _verify_onnx(
    file: Path,
    loaded: _Loaded,
    layout: str,
    shape: tuple[int, int, int],
    provenance: dict[str, str],
) -> None:
    """Compare the torch conversion with onnxruntime once; disagreeing → query-only."""
    if loaded.query_fn is None or loaded.module is None:
        return
    gen = torch.Generator().manual_seed(0)
    x = _to_layout(torch.rand(2, *shape, generator=gen), layout)
    try:
        with torch.no_grad():
            ours = _first_tensor(loaded.module(x.to(_device_of(loaded.module)))).float().cpu()
        ref = torch.from_numpy(np.asarray(loaded.query_fn(x.numpy()), dtype=np.float32))
        error = float((ours - ref).abs().max()) if ours.shape == ref.shape else math.inf
    except Exception as exc:
        error, reason = math.inf, f"{type(exc).__name__}: {_one_line(exc)}"
    else:
        reason = f"max difference {error:.2g}"
    tolerance = 1e-3 * (1.0 + (float(ref.abs().max()) if math.isfinite(error) else 0.0))
    if error <= tolerance:
        provenance["onnx_check"] = f"torch conversion matches onnxruntime ({reason})"
        return
    _go_query_only(
        file,
        loaded,
        f"the torch conversion disagrees with onnxruntime ({reason[:200]}): loaded query-only; "
        "gradient attacks will refuse it, black-box attacks work",
    )
