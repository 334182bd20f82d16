"""The remedies for what the sanity checks find: views of a model that an attack can climb.

A sanity flag says an evaluation cannot be trusted; where a standard remedy exists, aegis runs
it instead of only flagging (Athalye et al. 2018, https://arxiv.org/abs/1802.00420; Tramèr et
al. 2020, https://arxiv.org/abs/2002.08347):

- ``probabilities`` (an opaque model that ends in a softmax aegis could not remove):
  :func:`log_probabilities` gives every attack the log of the probabilities, clamped, so the
  cross-entropy is −log p_y and margins compare log-probabilities; a torch module is run in
  float64 for it, where the softmax saturates far later; and a label-only attack
  (HopSkipJump), which does not care about saturation, joins the attacks;
- ``randomized`` (a model that draws at random inside): :class:`EOTClassifier` averages every
  gradient over several draws (Expectation over Transformation);
- ``zero-gradients`` from a rounding step inside a torch module (``round``, ``floor``,
  ``sign``, ...): :func:`bpda_view` differentiates each such step as the identity (BPDA).

    >>> attackable = log_probabilities(model)  # outputs log(max(p, 1e-30))
    >>> attackable = EOTClassifier(model, draws=10)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from aegis.errors import ConfigError
from aegis.model import Classifier, LossFn

FLOOR = 1e-30
"""Probabilities are clamped here before the log (float32 keeps ~1e-38 as a normal number)."""

EOT_DRAWS = 10
"""Draws each gradient averages for a randomized model (the preprocessing defenses' default)."""


class _LogOf(nn.Module):
    """log(max(p, floor)) of a module's probability outputs, computed in ``dtype``: in float64
    a softmax underflows only ~700 nats from its top class instead of ~100, so the
    log-probabilities of a saturated softmax are the logits again (up to a shift)."""

    def __init__(self, inner: Callable[[Tensor], Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x.to(self.dtype))
        if isinstance(out, (tuple, list)):
            out = out[0]
        floor = torch.finfo(self.dtype).tiny
        return torch.log(out.to(self.dtype).clamp_min(floor)).to(x.dtype)


def _double(module: Callable[[Tensor], Tensor]) -> nn.Module | None:
    """A float64 copy of ``module`` (the user's module is left as it is), or None where it
    does not copy or convert."""
    if not isinstance(module, nn.Module):
        return None
    try:
        twin = copy.deepcopy(module).double()
    except Exception:  # a module that cannot be copied or run in float64: float32 it is
        return None
    return twin


def log_probabilities(model: Classifier, x: Tensor | None = None) -> Classifier:
    """``model`` with its probability outputs turned into clamped log-probabilities (the same
    predictions: log is increasing). A torch module is run in float64 where a copy converts
    and, on ``x``, predicts as the original does; else in float32 (clamped at 1e-30)."""
    query = model.query_fn
    logq = None
    module: nn.Module | None = None
    twin: nn.Module | None = None
    how = f"float32, clamped at {FLOOR:g}"
    if model.module is None and query is not None:
        fn = query

        def logq(arr: np.ndarray) -> np.ndarray:
            return np.log(np.clip(np.asarray(fn(arr), np.float64), FLOOR, None))

    elif model.module is not None:
        twin = _double(model.module)
        module = _LogOf(model.module, torch.float32)
        if twin is not None:
            module, how = _LogOf(twin, torch.float64), "computed in float64"
    out = model.derive(module, logq, notes={"outputs": f"log-probabilities ({how})"})
    base = model.module
    float64 = base is not None and twin is not None
    if base is not None and float64 and x is not None and not _same_predictions(model, out, x):
        # float64 changes what the model says: keep float32
        out = model.derive(
            _LogOf(base, torch.float32), None, notes={"outputs": "log-probabilities"}
        )
    return out


def _same_predictions(a: Classifier, b: Classifier, x: Tensor) -> bool:
    with torch.no_grad():
        return bool((a.predict(x) == b.predict(x)).all())


class EOTClassifier(Classifier):
    """A randomized model whose every gradient is the mean over ``draws`` independent draws,
    each counted as one gradient call per sample. Its draws come from torch's global
    generator, which :meth:`reseed` restarts per batch so that runs repeat."""

    def __init__(self, base: Classifier, draws: int = EOT_DRAWS) -> None:
        if draws < 2:
            raise ConfigError(f"EOT needs at least 2 draws, got {draws}")
        super().__init__(
            base.module,
            base.info,
            query_fn=base.query_fn,
            device=base.device,
            batch_size=base.batch_size,
            name=base.name,
            source=base.source,
            provenance=base.provenance,
            freeze=False,
            frozen_inference=False,
            fast_layout=False,
        )
        self.units, self.own_info = base.units, base.own_info
        self._draws = draws

    @property
    def randomized(self) -> bool:
        return True

    @property
    def eot_samples(self) -> int:
        return self._draws

    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def value_and_grad(
        self, x: Tensor, loss_fn: LossFn, *, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return average_draws(lambda: super(EOTClassifier, self).value_and_grad(
            x, loss_fn, rows=rows
        ), self._draws)  # fmt: skip


def average_draws(
    call: Callable[[], tuple[Tensor, Tensor, Tensor]], draws: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The mean of ``draws`` calls of (logits, loss, gradient): EOT's estimate."""
    logits, loss, grad = call()
    for _ in range(draws - 1):
        z, v, g = call()
        logits, loss, grad = logits + z, loss + v, grad + g
    return logits / draws, loss / draws, grad / draws


# -- BPDA through rounding steps inside the model ----------------------------------------------

_ROUNDING = ("round", "floor", "ceil", "trunc", "sign")
"""Tensor operations whose derivative is zero (or undefined) almost everywhere."""


def _straight_through(name: str) -> Callable[..., Tensor]:
    op = getattr(torch, name)

    def step(x: Tensor, *args: object, **kwargs: object) -> Tensor:
        # forward: the step itself; backward: the identity (BPDA, Athalye et al. 2018)
        out: Tensor = x + (op(x, *args, **kwargs) - x).detach()
        return out

    step.__name__ = f"bpda_{name}"
    return step


_STRAIGHT = {name: _straight_through(name) for name in _ROUNDING}


def bpda_view(model: Classifier) -> tuple[Classifier, list[str]] | None:
    """``model`` with every rounding step of its torch module (``torch.round``, ``.floor()``,
    ``sign``, ...) differentiated as the identity, found by ``torch.fx`` tracing; None when the
    module does not trace (TorchScript, data-dependent control flow) or has no such step."""
    module = model.module
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return None
    try:
        graph_module = torch.fx.symbolic_trace(module)
    except Exception:  # data-dependent control flow, untraceable calls: no view
        return None
    found: list[str] = []
    for node in graph_module.graph.nodes:
        name = None
        if node.op == "call_function":
            name = next((n for n in _ROUNDING if node.target is getattr(torch, n)), None)
        elif node.op == "call_method" and node.target in _ROUNDING:
            name = str(node.target)
            node.op = "call_function"
        if name is not None:
            node.target = _STRAIGHT[name]
            found.append(name)
    if not found:
        return None
    graph_module.recompile()
    outputs = str(model.provenance.get("outputs", "logits"))
    view = model.derive(graph_module, None, notes={"outputs": outputs})
    view.provenance["bpda"] = f"straight-through gradients for {', '.join(sorted(set(found)))}"
    return view, sorted(set(found))
