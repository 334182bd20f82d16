"""The Classifier: everything that is about *the model*.

Attacks always see NCHW tensors in pixel space inside ``bounds``. The Classifier permutes to the
model's own layout, applies normalization, checks the output width, counts forward and gradient
calls per sample, and computes input gradients with ``torch.autograd.grad`` only (model parameters
never receive ``.grad``).

Calls without gradients (``logits``: every query of a black-box attack, every re-prediction) are
most of an evaluation's work. On CPU, ``prepare_frozen`` (which ``engine.evaluate`` calls before
an evaluation of ``FROZEN_MIN_POINTS`` points or more) traces the module, freezes the trace and
lets TorchScript fold and fuse it (about 2× on a small CNN); the copy is adopted only if tracing
raised no warning (a data-dependent branch or a Python number taken from a tensor can make a
trace wrong) and it matches the module on two other batches, and from then on it serves every
no-gradient call, so a run never changes path halfway. Gradients always go through the module
itself. ``AEGIS_INFERENCE=eager`` (or ``frozen_inference=False``) turns this off;
``describe()`` says which path served.

Gradients are most of a white-box attack's work. On CPU, a frozen Classifier whose module has
2-D convolutions converts, at its first call, the module's 4-D weights to channels-last memory
format and feeds it channels-last inputs (oneDNN's native layout: its convolutions and max
pooling run about 1.5× faster forward and backward on the reference CNN; the values of the
weights do not change). The switch is kept only if the module then gives the same logits and
input gradients on two probe batches in the input box (one with another batch size); a module
that fails on the layout (e.g. ``x.view(n, -1)`` on a feature map) or disagrees is converted
back and served as it was. The choice depends on the model alone, never on timing, so every
call of every run takes the same path. ``AEGIS_INFERENCE=eager`` (or ``fast_layout=False``)
turns it off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from aegis._fast_paths import close_enough, frozen_copy, logits_and_grad
from aegis.errors import AegisWarning, CapabilityError, ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor], Tensor]
"""Maps logits of shape (n, k) to a per-sample loss of shape (n,) that the attack *maximizes*."""

FROZEN_MIN_POINTS = 100
"""Evaluations of at least this many points first try a frozen TorchScript copy (CPU only)."""

LAYOUTS = ("NCHW", "NHWC", "flat")
"""The layout the wrapped callable expects; ``flat`` is (n, H*W*C) flattened in HWC order."""


class QueryCounter:
    """Per-sample forward and gradient calls for the batch the engine is working on.

    Row ids passed by attacks are kept on their device and counted once, when read, so
    counting never forces a device-to-host synchronization inside an attack's loop.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._all = {"forward": 0, "gradient": 0}
        self._rows: dict[str, list[Tensor]] = {"forward": [], "gradient": []}

    def add(self, kind: str, rows: Tensor | None) -> None:
        if rows is None:
            # All rows; a call on a subset without row ids is counted against every sample
            # (an over-count, never an under-count).
            self._all[kind] += 1
        else:
            self._rows[kind].append(rows.detach())

    def _resolve(self, kind: str) -> np.ndarray:
        out = np.full(self.n, self._all[kind], dtype=np.int64)
        pending = self._rows[kind]
        if pending:
            rows = torch.cat([r.reshape(-1).long() for r in pending])
            out += torch.bincount(rows, minlength=self.n).cpu().numpy()[: self.n]
        return out

    @property
    def forward(self) -> np.ndarray:
        return self._resolve("forward")

    @property
    def gradient(self) -> np.ndarray:
        return self._resolve("gradient")


@dataclass(frozen=True)
class ModelInfo:
    """Metadata that travels with a model (from flags, a ``model.json`` sidecar, or inference)."""

    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W), the shape attacks see
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "NCHW"  # the layout the wrapped callable expects

    def to_dict(self) -> dict[str, object]:
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "layout": self.layout,
        }


def validate_info(info: ModelInfo) -> None:
    lo, hi = info.bounds
    if not lo < hi:
        raise ConfigError(f"bounds must satisfy low < high, got {info.bounds}")
    if info.num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {info.num_classes}")
    if info.layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {info.layout!r}")
    if len(info.input_shape) != 3 or min(info.input_shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W), got {info.input_shape}")
    channels = info.input_shape[0]
    for name, value in (("mean", info.mean), ("std", info.std)):
        if value is not None and len(value) not in (1, channels):
            need = "1 value" if channels == 1 else f"1 value (all channels) or {channels}"
            raise ConfigError(
                f"--{name} needs {need} for this {channels}-channel model, got {len(value)} "
                f"({', '.join(f'{v:g}' for v in value)})"
            )
    for name, value in (("bounds", info.bounds), ("mean", info.mean), ("std", info.std)):
        if value is not None and not all(math.isfinite(v) for v in value):
            raise ConfigError(f"--{name} must be finite numbers, got {value}")
    if info.std is not None and min(info.std) <= 0:
        raise ConfigError(f"--std must be > 0, got {info.std}")


class Classifier:
    """A classifier seen by attacks: NCHW pixel-space input in ``bounds`` → logits ``(n, k)``.

    Args:
        module: a torch callable taking the model's own input (layout, normalization) and
            returning logits; ``None`` for a query-only model, which then needs ``query_fn``.
        info: the model's metadata.
        query_fn: for query-only models, a numpy function from model input to scores.
        device: where inputs are moved before the call; default: the module's parameters'
            device, or CPU for a parameter-free module.
        batch_size: the largest batch sent to the model at once by ``predict``.
        name: shown in results.
        source: where the model came from (a path), for the results.
        provenance: how each metadata field was decided (flag, sidecar, inferred, default).
        freeze: put the module in eval mode and stop parameter gradients (the default). Trainers
            that attack the model they are training pass ``False`` and manage modes themselves.
        frozen_inference: let no-gradient calls use a verified frozen TorchScript copy of the
            module (CPU, frozen Classifiers only; see the module docstring).
        fast_layout: let a CPU convolutional module run in channels-last memory format where
            that is verified to give the same outputs and gradients (frozen Classifiers only;
            see the module docstring).
    """

    def __init__(
        self,
        module: Callable[[Tensor], Tensor] | None,
        info: ModelInfo,
        *,
        query_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 256,
        name: str = "model",
        source: str | None = None,
        provenance: dict[str, str] | None = None,
        freeze: bool = True,
        frozen_inference: bool = True,
        fast_layout: bool = True,
    ) -> None:
        validate_info(info)
        if module is None and query_fn is None:
            raise ConfigError("a Classifier needs a torch module or a query function")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.module = module
        self.info = info
        self.query_fn = query_fn
        self.batch_size = batch_size
        self.name = name
        self.source = source
        self.provenance = dict(provenance or {})
        self.device = torch.device(device) if device is not None else _module_device(module)
        self.counter: QueryCounter | None = None
        self.total_forward = 0
        self.total_gradient = 0
        if freeze and isinstance(module, torch.nn.Module):
            if module.training and _mode_sensitive(module):
                warnings.warn(
                    f"{name} was in training mode; aegis puts it in eval mode "
                    "(BatchNorm/dropout in training mode silently weaken attacks)",
                    AegisWarning,
                    stacklevel=2,
                )
            try:
                module.eval()
            except NotImplementedError:  # torch.export modules: already in inference form
                log.debug("%s does not support .eval(); used as exported", name)
            for p in module.parameters():
                p.requires_grad_(False)
        self._frozen: Callable[[Tensor], Tensor] | None = None
        eager = os.environ.get("AEGIS_INFERENCE") == "eager"
        self._try_frozen = freeze and frozen_inference and not eager
        self._try_layout = freeze and fast_layout and not eager
        self._channels_last = False
        c = info.input_shape[0]
        self._mean = None if info.mean is None else _channel_tensor(info.mean, c, self.device)
        self._std = None if info.std is None else _channel_tensor(info.std, c, self.device)

    # -- other processes ------------------------------------------------------------------
    def __getstate__(self) -> dict[str, object]:
        """The state a copy in another process (a Ray worker) gets: everything but the frozen
        TorchScript copy, which does not pickle; ``prepare_frozen`` on the batch it was traced
        on rebuilds it there (only if it served here), so both take the same path."""
        state = self.__dict__.copy()
        state["_try_frozen"] = self._try_frozen or self._frozen is not None
        state["_frozen"] = None
        state["counter"] = None
        return state

    def move_to(self, device: torch.device | str) -> None:
        """Move this Classifier, in place, to ``device``: for a worker's own copy (the engine
        never moves the user's model). A frozen copy is dropped: it is CPU-only."""
        self.device = torch.device(device)
        if isinstance(self.module, torch.nn.Module):
            self.module.to(self.device)
        if self._mean is not None:
            self._mean = self._mean.to(self.device)
        if self._std is not None:
            self._std = self._std.to(self.device)
        if self.device.type != "cpu":
            self._frozen = None
            self._try_frozen = False

    # -- metadata -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def bounds(self) -> tuple[float, float]:
        return self.info.bounds

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape

    @property
    def differentiable(self) -> bool:
        return self.module is not None

    @property
    def randomized(self) -> bool:
        """Whether the same input can give different outputs (a random defense). Attacks then
        do not stop early on an iterate that fooled one draw: another draw may not agree."""
        return False

    @property
    def eot_samples(self) -> int:
        """Random draws each gradient call averages (EOT); 1 for a deterministic model."""
        return 1

    def reseed(self, seed: int) -> None:
        """Start the model's own random draws (a random defense) afresh from ``seed``. The
        engine calls it at the start of every batch with the batch's seed, so a batch's
        records do not depend on the batches before it: resumed and Ray runs match a local,
        uninterrupted one. A deterministic model has nothing to reseed."""

    # -- counting -------------------------------------------------------------------------
    @contextlib.contextmanager
    def counting(self, n: int) -> Iterator[QueryCounter]:
        """Count calls per sample for a batch of ``n`` samples (rows passed by attacks)."""
        previous = self.counter
        self.counter = QueryCounter(n)
        try:
            yield self.counter
        finally:
            self.counter = previous

    def _count(self, kind: str, rows: Tensor | None, batch: int) -> None:
        if kind == "forward":
            self.total_forward += batch
        else:
            self.total_gradient += batch
        if self.counter is not None:
            self.counter.add(kind, rows)

    # -- calls ----------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise DataError(
                f"model expects inputs of shape (n, {', '.join(map(str, self.input_shape))}) "
                f"(NCHW), got {tuple(x.shape)}; check the data layout and channel count"
            )

    def _module_input(self, x: Tensor) -> Tensor:
        """NCHW pixel space → the module's own layout and normalization."""
        z = x.to(self.device)
        if self._mean is not None:
            z = z - self._mean
        if self._std is not None:
            z = z / self._std
        if self.info.layout == "NHWC":
            z = z.permute(0, 2, 3, 1)
        elif self.info.layout == "flat":
            z = z.permute(0, 2, 3, 1).reshape(z.shape[0], -1)
        return z

    def _forward(self, x: Tensor, *, plain: bool = False) -> Tensor:
        if self.module is None:
            raise CapabilityError(f"{self.name} is query-only")
        self.choose_layout()
        z = self._module_input(x)
        if plain and self._frozen is not None and z.dtype == torch.float32:
            out = self._frozen(z)
        elif self._channels_last:
            out = self.module(z.contiguous(memory_format=torch.channels_last))
        else:
            out = self.module(z)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor):
            raise ModelError(f"model returned {type(out).__name__}, expected a tensor of logits")
        if out.ndim != 2 or out.shape[1] != self.num_classes or out.shape[0] != x.shape[0]:
            raise ModelError(
                f"model output has shape {tuple(out.shape)} but {self.num_classes} classes were "
                f"declared for a batch of {x.shape[0]}; pass the right --num-classes"
            )
        return out.to(x.device)

    def prepare_frozen(self, x: Tensor) -> bool:
        """Try, once, a frozen TorchScript copy for no-gradient calls, traced on the batch ``x``
        (NCHW, pixel space); whether it serves them from now on."""
        self.choose_layout()
        if self._try_frozen and self.module is not None:
            self._try_frozen = False
            z = self._module_input(x.float()).contiguous()
            self._frozen = frozen_copy(self.module, z, self.name)
        return self._frozen is not None

    def choose_layout(self) -> None:
        """Decide, once, whether the module runs in channels-last format (module docstring);
        the first call does it, or this (before forward hooks that must not see its probes)."""
        if not self._try_layout:
            return
        self._try_layout = False
        module = self.module
        if (
            not isinstance(module, torch.nn.Module)
            or self.device.type != "cpu"
            or self.info.layout != "NCHW"
            or not any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
        ):
            return
        gen = torch.Generator().manual_seed(0)
        lo, hi = self.bounds
        probes = [
            self._module_input(lo + (hi - lo) * torch.rand((n, *self.input_shape), generator=gen))
            for n in (3, 4)
        ]
        try:
            want = [logits_and_grad(module, z) for z in probes]
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            cl = torch.channels_last
            got = [logits_and_grad(module, z.contiguous(memory_format=cl)) for z in probes]
            same = all(
                close_enough(a, b) and close_enough(c, d)
                for (a, c), (b, d) in zip(want, got, strict=True)
            )
        except Exception as exc:  # any failure means: keep the module as it was
            log.debug("%s: channels-last refused (%s: %s)", self.name, type(exc).__name__, exc)
            same = False
        if same:
            self._channels_last = True
            log.debug("%s: the module runs in channels-last memory format", self.name)
            return
        with contextlib.suppress(Exception):
            module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    def _query(self, x: Tensor) -> Tensor:
        if self.query_fn is None:
            raise CapabilityError(f"{self.name} has no query function")
        arr = x.detach().cpu().numpy().astype(np.float32)
        if self.info.mean is not None:
            arr = arr - np.asarray(self.info.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        if self.info.std is not None:
            arr = arr / np.asarray(self.info.std, dtype=np.float32).reshape(1, -1, 1, 1)
        if self.info.layout in ("NHWC", "flat"):
            arr = arr.transpose(0, 2, 3, 1)
        if self.info.layout == "flat":
            arr = arr.reshape(arr.shape[0], -1)
        out = np.asarray(self.query_fn(np.ascontiguousarray(arr)))
        if out.ndim != 2 or out.shape[1] != self.num_classes or out.shape[0] != x.shape[0]:
            raise ModelError(
                f"model output has shape {out.shape} but {self.num_classes} classes were "
                f"declared for a batch of {x.shape[0]}; pass the right --num-classes"
            )
        return torch.from_numpy(out.astype(np.float32)).to(x.device)

    def logits(
        self, x: Tensor, *, rows: Tensor | None = None, through_module: bool = False
    ) -> Tensor:
        """Logits of a batch, without gradients, counted as one forward call per sample.
        ``through_module``: call the module itself, never the frozen copy (its forward hooks
        fire, e.g. to read intermediate features)."""
        self.check_input(x)
        self._count("forward", rows, x.shape[0])
        with torch.no_grad():
            if self.module is None:
                return self._query(x)
            return self._forward(x, plain=not through_module)

    __call__ = logits

    def value_and_grad(
        self, x: Tensor, loss_fn: LossFn, *, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, per-sample loss and the gradient of ``loss.sum()`` w.r.t. ``x`` only."""
        if self.module is None:
            raise CapabilityError(
                f"{self.name} is query-only (no gradients); use a black-box attack"
            )
        self.check_input(x)
        self._count("gradient", rows, x.shape[0])
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._forward(xg)
            loss = loss_fn(out)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        return out.detach(), loss.detach(), grad.detach().contiguous()

    def logits_graph(self, x: Tensor, *, rows: Tensor | None = None) -> Tensor:
        """Logits that keep the autograd graph to ``x`` (for losses that need more than one
        forward or the model's intermediate features, e.g. attacks on a detector), counted as
        one gradient call per sample. The caller differentiates with ``torch.autograd.grad``
        with respect to the input only."""
        if self.module is None:
            raise CapabilityError(
                f"{self.name} is query-only (no gradients); use a black-box attack"
            )
        self.check_input(x)
        self._count("gradient", rows, x.shape[0])
        with torch.enable_grad():
            return self._forward(x)

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels, in chunks of ``batch_size``."""
        parts = [
            self.logits(x[i : i + self.batch_size]).argmax(1)
            for i in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "differentiable": self.differentiable,
            "device": str(self.device),
            "inference": "module" if self._frozen is None else "torchscript-frozen",
            "memory_format": "channels_last" if self._channels_last else "contiguous",
            **self.info.to_dict(),
            **({} if self.units is None else {"units": list(self.units)}),
            "provenance": self.provenance,
        }

    units: tuple[float, float] | None = None
    """The model's own bounds, where this Classifier sees them as [0, 1] (``in_unit_box``)."""

    own_info: ModelInfo | None = None
    """The model's own metadata, where this Classifier sees it on [0, 1] (``in_unit_box``)."""

    def derive(
        self,
        module: Callable[[Tensor], Tensor] | None,
        query_fn: Callable[[np.ndarray], np.ndarray] | None,
        *,
        info: ModelInfo | None = None,
        notes: dict[str, str] | None = None,
        freeze: bool = False,
        fast: bool = False,
    ) -> Classifier:
        """Another view of this model: ``module``/``query_fn`` and ``info`` (default: this
        one's) as given, ``notes`` added to the provenance. It runs where this one runs, with
        its batch size, name and source, and keeps ``units``/``own_info``. ``freeze``: put the
        module in eval mode again; ``fast``: let it try the frozen and channels-last paths as
        this one does."""
        out = Classifier(
            module,
            info or self.info,
            query_fn=query_fn,
            device=self.device,
            batch_size=self.batch_size,
            name=self.name,
            source=self.source,
            provenance={**self.provenance, **(notes or {})},
            freeze=freeze,
            frozen_inference=fast and self._try_frozen,
            fast_layout=fast and self._try_layout,
        )
        out.units, out.own_info = self.units, self.own_info
        return out

    def in_unit_box(self) -> Classifier:
        """This model seen on [0, 1]: input ``u`` is the model's ``low + u·(high − low)``, so
        every budget, step size and norm is a fraction of the bounds' width (RobustBench's
        convention: ε = 8/255 is 8 grey levels on [0, 1] and on 0–255 alike). The mapping is
        folded into the normalization; the module and its predictions are unchanged."""
        lo, hi = self.bounds
        if (lo, hi) == (0.0, 1.0):
            return self
        width = hi - lo
        mean = self.info.mean or (0.0,)
        std = self.info.std or (1.0,)
        info = dataclasses.replace(
            self.info,
            bounds=(0.0, 1.0),
            mean=tuple((m - lo) / width for m in mean),
            std=tuple(s / width for s in std),
        )
        note = (
            f"model bounds [{lo:g}, {hi:g}]: attacked in units of their width "
            f"(input = {lo:g} + {width:g}·u for u in [0, 1]); eps, step sizes and norms are "
            f"fractions of {width:g}"
        )
        unit = self.derive(
            self.module, self.query_fn, info=info, notes={"units": note}, freeze=True, fast=True
        )
        unit.units = (lo, hi)
        unit.own_info = self.info
        return unit


def _mode_sensitive(module: torch.nn.Module) -> bool:
    """Whether train and eval mode differ: BatchNorm-like or dropout layers."""
    kinds = (torch.nn.modules.batchnorm._NormBase, torch.nn.modules.dropout._DropoutNd)
    return any(isinstance(m, kinds) for m in module.modules())


def _module_device(module: object) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for tensor in [*module.parameters(), *module.buffers()]:
            return tensor.device
    return torch.device("cpu")


def _channel_tensor(values: Sequence[float], channels: int, device: torch.device) -> Tensor:
    t = torch.tensor(list(values), dtype=torch.float32, device=device)
    if t.numel() == 1:
        t = t.repeat(channels)
    return t.view(1, channels, 1, 1)
