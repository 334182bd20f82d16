"""Logits recovered at load time from a model whose graph ends in a softmax.

A classifier that returns ``softmax(z)`` hides its logits ``z``: where the softmax saturates its
outputs are exactly 1 and 0, cross-entropy and DLR gradients vanish and score-based attacks see a
flat landscape (official AutoAttack reports 45% robust accuracy on a normally trained MNIST CNN
wrapped as ``softmax(40·logits)``, where PGD on ``z`` gives 0%). Where the graph is visible and
its output is a softmax (or log-softmax) of a tensor, aegis attacks that tensor instead:

- Keras: the final layer's ``softmax`` activation is set to linear (the layer's own weights), or
  a final ``Softmax`` layer is cut off (a model of the same layers up to its input);
- ONNX (aegis' converter): a final ``Softmax``/``LogSoftmax`` node is dropped; a query-only
  (onnxruntime) model keeps its outputs;
- TorchScript: a final ``aten::softmax``/``aten::log_softmax`` is removed from the graph of a
  frozen copy (``torch.jit.freeze`` inlines the submodules; the weights are shared);
- ``torch.export`` programs: the output is rewired to the input of a final ``aten.softmax``
  (or ``_softmax``, ``log_softmax``) in a copy of the graph module;
- factory-built and pickled modules: the same on the ``torch.fx`` trace (``nn.Softmax``,
  ``F.softmax``, ``torch.softmax``, ``Tensor.softmax`` and their log forms); a model that does
  not trace is left as it is, with a note.

Predictions do not change, and that is checked on the probe batch the loader already ran (a zero
and a random input): the outputs must be probability vectors (rows summing to 1; a softmax over
another axis is left alone, with a note and a warning), the softmax of the recovered tensor must
reproduce them, and its argmax must be a top class of the outputs. Any failure keeps the original
model and notes why. ``keep_softmax=True`` turns all of this off.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from aegis.errors import AegisWarning, ModelError
from aegis.io.keras_format import _KerasModule, keras_candidate
from aegis.io.loaded import _device_of, _first_tensor, _Loaded, _one_line, _StaticBatch, _to_layout
from aegis.io.onnx_format import _Flat
from aegis.io.torch_formats import _ExportedModule

__all__ = ["Candidate", "probe_rows", "settle_outputs"]

_SUM_TOL = 1e-4  # rows of probabilities sum to 1 within this
_NOTE = "logit_recovery"


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Candidate:
    """A final softmax found in a model's graph, and how to build the model without it."""

    how: str  # what was done, for the provenance: "ONNX Softmax node dropped"
    log: bool  # a log-softmax
    axis: int | None  # the axis the graph names, None where it is not a constant
    build: Callable[[], nn.Module]  # the model returning the softmax's input
    undo: Callable[[], None] = _nothing  # reverts what ``build`` changed in place


Found = Candidate | str | None  # str: a softmax may be there but cannot be removed (why)


def probe_rows(shape: tuple[int, int, int]) -> Tensor:
    """The loader's probe batch (NCHW): a zero input and a random one (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    return torch.stack([torch.zeros(shape), torch.rand(shape, generator=gen)])


def settle_outputs(
    file: Path,
    loaded: _Loaded,
    out: Tensor,
    *,
    layout: str,
    shape: tuple[int, int, int],
    device: torch.device | str | None,
    provenance: dict[str, str],
    keep_softmax: bool = False,
) -> None:
    """Replace ``loaded.module`` by the model without its final softmax where that is sound
    (``out``: the outputs of the probe batch); otherwise say whether the outputs are
    probabilities, with a warning."""
    if not keep_softmax and loaded.module is not None and _may_be_softmax(out):
        x = _to_layout(probe_rows(shape), layout)
        if _recover(file, loaded, out, x, device, provenance):
            return
    elif not keep_softmax and loaded.module is None and loaded.probabilities:
        provenance[_NOTE] = "not possible: the model is query-only (no graph to edit)"
    _note_probabilities(file, loaded, out, provenance)


def _may_be_softmax(out: Tensor) -> bool:
    """Whether a softmax (in [0, 1]) or a log-softmax (<= 0) could have produced ``out``."""
    if not bool(torch.isfinite(out).all()):
        return False
    return bool(((out >= 0) & (out <= 1 + _SUM_TOL)).all()) or bool((out <= 0).all())


def _normalized(out: Tensor) -> bool:
    """Whether the rows of ``out`` are probabilities or log-probabilities."""
    for probs in (out, out.exp()):
        sums = probs.sum(dim=1)
        if bool((probs >= 0).all()) and bool(
            torch.allclose(sums, torch.ones_like(sums), atol=_SUM_TOL)
        ):
            return True
    return False


def _recover(
    file: Path,
    loaded: _Loaded,
    out: Tensor,
    x: Tensor,
    device: torch.device | str | None,
    provenance: dict[str, str],
) -> bool:
    if loaded.module is None:  # pragma: no cover - checked by the caller
        return False
    core, wrap = _peel(loaded.module)
    found = _find(loaded, core)
    if found is None:
        return False
    if isinstance(found, str):
        if _normalized(out.double()):  # else: likely logits that happen to look bounded
            provenance[_NOTE] = f"not possible: {found}; outputs left as they are"
        return False
    reason = _not_probabilities(out.double(), found)
    if reason:
        provenance[_NOTE] = f"not done: {reason}; outputs left as they are"
        batch = " (over the batch, each prediction depends on the rest of its batch)"
        warnings.warn(
            f"{file.name}: {reason}; aegis attacks its outputs as they are"
            + (batch if found.axis == 0 else ""),
            AegisWarning,
            stacklevel=4,
        )
        return False
    try:
        module = wrap(found.build())
        target = torch.device(device) if device is not None else _device_of(module)
        with torch.no_grad():
            z = _first_tensor(module(x.to(target))).detach().cpu()
        reason = _mismatch(out.double(), z.double(), found.log)
    except Exception as exc:  # any failure means: keep the model as it was
        module, reason = None, f"building the model without it failed ({_one_line(exc)})"
    if module is None or reason:
        found.undo()
        provenance[_NOTE] = f"not done: {reason}; outputs left as they are"
        return False
    loaded.module = module
    provenance["outputs"] = f"logits recovered from {_kind(found)} ({found.how})"
    provenance[_NOTE] = (
        f"checked on the probe batch: the {_kind(found)} of the recovered logits gives the "
        "model's outputs, and the same predictions"
    )
    return True


def _kind(found: Candidate) -> str:
    return "log-softmax" if found.log else "softmax"


def _not_probabilities(out: Tensor, found: Candidate) -> str:
    """Why the outputs cannot come from a softmax over the class axis ("" if they can)."""
    probs = out.exp() if found.log else out
    sums = probs.sum(dim=1)
    if bool(torch.allclose(sums, torch.ones_like(sums), atol=_SUM_TOL)):
        return ""
    axis = "" if found.axis is None else f" (axis {found.axis})"
    return (
        f"the {_kind(found)}{axis} is not over the class axis: rows of its outputs sum to "
        f"{float(sums.min()):.3g}..{float(sums.max()):.3g}, not 1"
    )


def _mismatch(out: Tensor, z: Tensor, log: bool) -> str:
    """Why ``z`` is not the tensor under the softmax that gave ``out`` ("" if it is)."""
    if z.shape != out.shape:
        return f"the tensor under it has shape {tuple(z.shape)}, not {tuple(out.shape)}"
    if not bool(torch.isfinite(z).all()):
        return "the tensor under it is not finite on the probe batch"
    again = F.log_softmax(z, dim=1) if log else F.softmax(z, dim=1)
    error = float((again - out).abs().max())
    tolerance = _SUM_TOL * (1.0 + float(out.abs().max()))
    if error > tolerance:
        return f"its input does not reproduce the outputs (max difference {error:.2g})"
    chosen = out.gather(1, z.argmax(dim=1, keepdim=True)).squeeze(1)
    if bool((chosen < out.max(dim=1).values).any()):
        return "the argmax of its input differs from the model's predictions"
    return ""


# -- wrappers the loaders put around a graph --------------------------------------------------
def _peel(module: nn.Module) -> tuple[nn.Module, Callable[[nn.Module], nn.Module]]:
    """The graph inside the loaders' wrappers, and how to wrap a replacement the same way."""
    if isinstance(module, _StaticBatch):
        core, wrap = _peel(module.inner)
        size = module.size
        return core, lambda m: _StaticBatch(wrap(m), size)
    if isinstance(module, _ExportedModule):
        core, wrap = _peel(module.inner)
        return core, lambda m: _ExportedModule(wrap(m))
    if isinstance(module, _Flat):
        core, wrap = _peel(module.inner)
        return core, lambda m: _Flat(wrap(m))
    return module, lambda m: m


def _find(loaded: _Loaded, core: nn.Module) -> Found:
    if isinstance(core, _KerasModule):
        return keras_candidate(core)
    if loaded.fmt.startswith("onnx"):
        return _onnx_candidate(core)
    if isinstance(core, torch.jit.ScriptModule):
        return _script_candidate(core)
    if isinstance(core, fx.GraphModule) and loaded.fmt.startswith("torch.export"):
        return _graph_candidate(core, "{} removed from the torch.export graph")
    try:
        traced = fx.symbolic_trace(core)
    except Exception as exc:
        return f"torch.fx cannot trace the model to find a final softmax ({_one_line(exc, 160)})"
    return _graph_candidate(traced, "torch.fx: trailing {} removed")


# -- ONNX -------------------------------------------------------------------------------------
def _onnx_candidate(core: nn.Module) -> Found:
    from aegis.io.onnx_torch import OnnxModule

    if not isinstance(core, OnnxModule):
        return None
    final = core.final_op()
    if final is None:
        return None
    op, axis = final
    return Candidate(f"ONNX {op} node dropped", op == "LogSoftmax", axis, core.without_final_op)


# -- TorchScript ------------------------------------------------------------------------------
_SCRIPT_OPS = {
    "aten::softmax": False,
    "aten::_softmax": False,
    "aten::log_softmax": True,
    "aten::_log_softmax": True,
}


def _script_final(graph: Any) -> Any:
    """The node whose output the graph returns, if it is a softmax; else None."""
    outputs = list(graph.return_node().inputs())
    if len(outputs) != 1:
        return None
    node = outputs[0].node()
    return node if node.kind() in _SCRIPT_OPS else None


def _script_candidate(module: torch.jit.ScriptModule) -> Found:
    try:
        # A frozen copy: submodules, functions and constant attributes (and the branches they
        # decide) folded into one graph of its own; the weights are shared, not copied.
        # ``training`` is kept (where the module has it) so that the copy still has a mode.
        keep = ["training"] if module._c.hasattr("training") else []
        frozen = torch.jit.freeze(  # type: ignore[no-untyped-call]
            module, preserved_attrs=keep, optimize_numerics=False
        )
        node = _script_final(frozen.graph)
    except Exception as exc:
        return f"torch.jit.freeze cannot make a copy to inspect ({_one_line(exc, 160)})"
    if node is None:
        return None
    kind = node.kind()
    dim = node.inputsAt(1)
    axis = dim.toIValue() if dim.node().kind() == "prim::Constant" else None

    def build() -> nn.Module:
        graph = frozen.graph
        graph.return_node().replaceInput(0, node.inputsAt(0))
        torch._C._jit_pass_dce(graph)
        if not keep:  # a module frozen before: its mode was fixed then, as the loader notes
            frozen.training = False
        built: nn.Module = frozen
        return built

    how = f"{kind} removed from the TorchScript graph"
    return Candidate(how, _SCRIPT_OPS[kind], axis if isinstance(axis, int) else None, build)


# -- torch.fx graphs (torch.export programs, traced modules) -----------------------------------
def _fx_ops() -> dict[Any, tuple[str, bool]]:
    aten = torch.ops.aten
    return {
        F.softmax: ("F.softmax", False),
        F.log_softmax: ("F.log_softmax", True),
        torch.softmax: ("torch.softmax", False),
        torch.log_softmax: ("torch.log_softmax", True),
        aten.softmax.int: ("aten.softmax", False),
        aten._softmax.default: ("aten._softmax", False),
        aten.log_softmax.int: ("aten.log_softmax", True),
        aten._log_softmax.default: ("aten._log_softmax", True),
    }


def _final_node(graph: fx.Graph) -> fx.Node | None:
    """The node a graph returns (the first of a tuple or list it returns)."""
    out = next((n for n in graph.nodes if n.op == "output"), None)
    value = out.args[0] if out is not None and out.args else None
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, fx.Node) else None


def _softmax_of(gm: fx.GraphModule, node: fx.Node) -> tuple[str, bool, Any] | None:
    """(name, log, dim) if ``node`` computes a softmax of its first argument; else None."""
    if node.op == "call_module" and isinstance(node.target, str):
        sub = gm.get_submodule(node.target)
        if isinstance(sub, (nn.Softmax, nn.LogSoftmax)):
            return f"nn.{type(sub).__name__}", isinstance(sub, nn.LogSoftmax), sub.dim
        return None
    if node.op == "call_method" and node.target in ("softmax", "log_softmax"):
        name, log = f"Tensor.{node.target}", node.target == "log_softmax"
    elif node.op == "call_function" and node.target in _fx_ops():
        name, log = _fx_ops()[node.target]
    else:
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return name, log, dim


def _graph_candidate(gm: fx.GraphModule, how: str) -> Found:
    node = _final_node(gm.graph)
    found = _softmax_of(gm, node) if node is not None else None
    if node is None or found is None or not node.args:
        return None
    name, log, dim = found

    def build() -> nn.Module:
        with warnings.catch_warnings():  # deep-copying pytree specs warns on some torch versions
            warnings.simplefilter("ignore")
            graph = copy.deepcopy(gm.graph)
        new = fx.GraphModule(gm, graph)  # the submodules and weights of gm, shared
        final = _final_node(new.graph)
        out = next(n for n in new.graph.nodes if n.op == "output")
        if final is None or not isinstance(final.args[0], fx.Node):
            raise ModelError("the copied graph does not end in the softmax")
        out.replace_input_with(final, final.args[0])
        new.graph.eliminate_dead_code()
        for each in new.graph.nodes:  # string annotations (PEP 563) would not pickle
            each.type = None
        new.recompile()
        return new

    return Candidate(how.format(name), log, dim if isinstance(dim, int) else None, build)


# -- probabilities that stay --------------------------------------------------------------------
def _note_probabilities(
    file: Path, loaded: _Loaded, out: Tensor, provenance: dict[str, str]
) -> None:
    rows = out.double()
    sums = rows.sum(dim=1)
    summing = bool((rows >= 0).all()) and bool(
        torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
    )
    if loaded.probabilities and summing:
        provenance["outputs"] = "probabilities (softmax)"
    elif summing:
        provenance["outputs"] = "probabilities (non-negative, summing to 1)"
    if "outputs" in provenance:
        warnings.warn(
            f"{file.name} outputs probabilities, not logits: logit-based losses (CW, DLR) are "
            "weakened; export the model without its final softmax for a strong evaluation",
            AegisWarning,
            stacklevel=4,
        )
