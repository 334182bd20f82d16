"""The fast paths a Classifier may take, each verified before it serves: a frozen,
inference-optimized TorchScript copy for no-gradient calls, and the probes that check a
channels-last layout gives the same logits and gradients (see :mod:`aegis.model`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.jit._trace import TracerWarning

log = logging.getLogger("aegis.model")


def frozen_copy(module: object, z: Tensor, name: str) -> Callable[[Tensor], Tensor] | None:
    """A traced, frozen and inference-optimized copy of ``module``, verified on two batches
    other than the one traced (one of another size); None where any of that fails (the module
    then serves)."""
    if (
        not isinstance(module, torch.nn.Module)
        or z.device.type != "cpu"
        or module.training
        or any(p.requires_grad for p in module.parameters())
    ):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", TracerWarning)
            traced = (  # a scripted module keeps its control flow: no trace needed
                module
                if isinstance(module, torch.jit.ScriptModule)
                else torch.jit.trace(module, z, check_trace=False)  # type: ignore[no-untyped-call]
            )
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        gen = torch.Generator().manual_seed(0)
        lo, hi = float(z.min()), float(z.max())
        noise = lo + (hi - lo) * torch.rand((z.shape[0] + 1, *z.shape[1:]), generator=gen)
        # Other values, and another batch size (a trace can bake the one it saw into a shape).
        others = (z.flip(-1), noise)
        for other in others:
            want, got = module(other), frozen(other)
            if not (isinstance(want, Tensor) and isinstance(got, Tensor)):
                return None
            if not close_enough(want, got):
                log.debug("%s: the frozen copy differs from the module; not used", name)
                return None
    except Exception as exc:  # any failure means: keep the module
        log.debug("%s: no frozen copy (%s: %s)", name, type(exc).__name__, exc)
        return None
    log.debug("%s: no-gradient calls use a frozen TorchScript copy", name)
    return frozen  # type: ignore[no-any-return]


def logits_and_grad(module: torch.nn.Module, z: Tensor) -> tuple[Tensor, Tensor]:
    """Logits of ``z`` and the gradient of their sum of squares w.r.t. ``z`` (a probe)."""
    zg = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = module(zg)
        if isinstance(out, (tuple, list)):
            out = out[0]
        (grad,) = torch.autograd.grad((out * out).sum(), zg)
    return out.detach(), grad.detach()


def close_enough(a: Tensor, b: Tensor) -> bool:
    """Equal within 1e-4 (relative, and absolute on the scale of ``a``), of the same shape."""
    tol = 1e-4 * max(1.0, float(a.abs().max()))
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=tol)
