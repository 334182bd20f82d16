"""Keras 3 ``.keras`` and legacy HDF5 (``.h5``/``.hdf5``) models, run on keras' torch backend
so that they stay differentiable. keras is imported only when such a file is loaded.

HDF5 files (Keras 2.x, tf.keras or Keras 3; whole models or weights only) are read by
:mod:`aegis.io.keras_legacy`, which repairs Keras 2 configs for Keras 3.

Once the loader has settled the outputs (a final softmax removed, :mod:`aegis.io.logits`),
:func:`torch_fast_path` replaces the Keras call by the same layers in plain torch
(:mod:`aegis.io.keras_torch`) where they convert and give the same outputs and input gradients
on probe batches; ``provenance["keras_path"]`` says which ran. ``AEGIS_INFERENCE=eager`` keeps
the Keras call.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from aegis.errors import ModelError, UnsafeFileError
from aegis.io.keras_legacy import KerasBuild, _load_hdf5, keras_detail
from aegis.io.keras_repair import lambda_message
from aegis.io.keras_torch import Unsupported, same_as_keras, to_torch
from aegis.io.loaded import (
    _ZIP_MAGIC,
    Dims,
    Factory,
    _corrupt,
    _device_of,
    _first_tensor,
    _Loaded,
    _one_line,
)

if TYPE_CHECKING:
    from aegis.io.logits import Candidate

log = logging.getLogger(__name__)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _import_keras() -> Any:
    existing = sys.modules.get("keras")
    if existing is not None and hasattr(existing, "backend"):
        backend = existing.backend.backend()
        if backend != "torch":
            raise ModelError(
                f"keras is already imported with the {backend!r} backend, but aegis runs Keras "
                "models on torch: set KERAS_BACKEND=torch before anything imports keras"
            )
        return existing
    previous = os.environ.get("KERAS_BACKEND")
    if previous and previous != "torch":
        log.warning("KERAS_BACKEND=%s replaced by torch to load a Keras model", previous)
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        return importlib.import_module("keras")
    except Exception as exc:
        raise ModelError(
            f"cannot import keras ({_one_line(exc)}); install it with: "
            "pip install 'aegis-robust[keras]'"
        ) from exc


class _KerasModule(nn.Module):
    """A Keras 3 model on the torch backend, called in inference mode."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.keras_model = model

    def forward(self, x: Tensor) -> Tensor:
        out = _first_tensor(self.keras_model(x, training=False))
        return out


PATH_NOTE = "keras_path"
CONVERTED = "keras layers converted to torch (verified)"


def torch_fast_path(loaded: _Loaded, x: Tensor) -> None:
    """Where ``loaded.module`` is a Keras call, replace it by its torch conversion if that
    gives the Keras outputs and input gradients on ``x`` (a probe batch in the model's layout)
    and on random normal inputs; ``loaded.notes["keras_path"]`` says which path runs."""
    module = loaded.module
    if not isinstance(module, _KerasModule):
        return
    if os.environ.get("AEGIS_INFERENCE") == "eager":
        loaded.notes[PATH_NOTE] = "keras call (AEGIS_INFERENCE=eager)"
        return
    try:
        converted = to_torch(_import_keras(), module.keras_model)
        device = _device_of(converted)
        gen = torch.Generator().manual_seed(1)
        noise = 2 * torch.randn((3, *x.shape[1:]), generator=gen)
        probes = [x.to(device), noise.to(device)]
        why = same_as_keras(module, converted, probes)
    except Unsupported as exc:
        why = f"unsupported: {exc}"
    except Exception as exc:  # any failure means: keep the Keras call
        why = f"the conversion failed ({type(exc).__name__}: {_one_line(exc)})"
    if why:
        log.debug("Keras model not converted to torch: %s", why)
        loaded.notes[PATH_NOTE] = f"keras call (not converted to torch: {why})"
        return
    loaded.module = converted
    loaded.notes[PATH_NOTE] = CONVERTED


def _keras_dims(model: Any) -> Dims | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    if len(inputs) != 1:
        raise ModelError(
            f"the Keras model has {len(inputs)} inputs; aegis needs a model of one image tensor"
        )
    shape = tuple(inputs[0].shape)
    return tuple(d if isinstance(d, int) else None for d in shape[1:])


def keras_candidate(module: _KerasModule) -> Candidate | str | None:
    """The final softmax of a Keras model as a :class:`aegis.io.logits.Candidate`: a layer's
    ``softmax``/``log_softmax`` activation (set to linear when built, reverted by ``undo``) or a
    final ``Softmax`` layer (a model of the same layers up to its input); None if there is none,
    a string saying why where it cannot be removed."""
    from aegis.io.logits import Candidate

    keras = _import_keras()
    model = module.keras_model
    found = _output_layer(keras, model)
    if found is None or isinstance(found, str):
        return found
    layer, nested = found
    name = type(layer).__name__
    if name == "Softmax":
        if nested:
            return "the final Keras Softmax layer is inside a nested model"
        axis = getattr(layer, "axis", None)
        return Candidate(
            "Keras Softmax layer dropped",
            False,
            axis if isinstance(axis, int) else None,
            lambda: _KerasModule(keras.Model(model.inputs, layer.input)),
        )
    activation = getattr(layer, "activation", None)
    kind = getattr(activation, "__name__", "")
    if kind not in ("softmax", "log_softmax"):
        return None

    def build() -> nn.Module:
        layer.activation = keras.activations.linear  # the same layer, so the same weights
        return module

    def undo() -> None:
        layer.activation = activation

    what = f"Activation('{kind}') layer" if name == "Activation" else f"{name} activation"
    return Candidate(f"Keras {what} replaced by linear", kind == "log_softmax", -1, build, undo)


def _output_layer(keras: Any, model: Any) -> tuple[Any, bool] | str | None:
    """The layer producing a Keras model's only output (inside nested models) and whether it
    is nested; why not where the model is subclassed (its call order is not visible)."""
    nested = False
    for _ in range(32):
        try:
            outputs = model.outputs
        except (AttributeError, ValueError):
            outputs = None
        single = outputs is not None and len(outputs) == 1
        history = getattr(outputs[0], "_keras_history", None) if single else None
        if history is None:
            if outputs is None and _keras_softmax(model):
                return "a subclassed Keras model does not show which layer computes its output"
            return None
        layer = history.operation
        if not (isinstance(layer, keras.Model) and layer is not model):
            return layer, nested
        model, nested = layer, True
    return None


def _keras_softmax(model: Any) -> bool:
    layers = getattr(model, "layers", None) or []
    if not layers:
        return False
    last = layers[-1]
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def _load_keras(
    file: Path,
    ext: str,
    head: bytes,
    *,
    allow_unsafe: bool,
    sidecar: Mapping[str, Any] | None = None,
    factory: str | Factory | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    trust_sidecar: bool = False,
) -> _Loaded:
    """A ``.keras`` archive, or an HDF5 file: a whole model, or weights plus ``factory`` (or the
    ``model.to_json()`` architecture where the sidecar is)."""
    if ext == ".keras" and not head.startswith(_ZIP_MAGIC):
        raise ModelError(
            f"{file.name} is not a Keras 3 archive (not a zip); the file is corrupt or truncated: "
            "re-save it with model.save('model.keras')"
        )
    if ext in (".h5", ".hdf5") and not head.startswith(_HDF5_MAGIC):
        raise ModelError(
            f"{file.name} is not an HDF5 file; the file is corrupt or truncated: re-save it with "
            "model.save('model.keras')"
        )
    if ext == ".keras" and factory is not None:
        raise ModelError(
            f"{file.name} is a Keras 3 archive, which carries its own architecture; drop --factory"
        )
    keras = _import_keras()
    notes: dict[str, str] = {}
    if ext == ".keras":
        model, fmt = _load_archive(keras, file, allow_unsafe=allow_unsafe), "keras"
    else:
        build = KerasBuild(
            sidecar=sidecar or {},
            factory=factory,
            factory_kwargs=factory_kwargs,
            trust_sidecar=trust_sidecar,
            allow_unsafe=allow_unsafe,
        )
        model, fmt, notes = _load_hdf5(keras, file, build)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"keras loaded {type(model).__name__} from {file.name}, not a torch module; "
            "set KERAS_BACKEND=torch before importing keras"
        )
    loaded = _Loaded(fmt=fmt, module=_KerasModule(model), dims=_keras_dims(model))
    loaded.notes.update(notes)
    loaded.probabilities = _keras_softmax(model)
    return loaded


def _load_archive(keras: Any, file: Path, *, allow_unsafe: bool) -> Any:
    try:
        return keras.saving.load_model(str(file), compile=False, safe_mode=not allow_unsafe)
    except Exception as exc:
        text = str(exc)
        if not allow_unsafe and ("safe_mode" in text or "Lambda" in text):
            raise UnsafeFileError(lambda_message(file.name)) from exc
        if not zipfile.is_zipfile(file):
            raise _corrupt(file, "a Keras model", exc) from exc
        raise ModelError(
            f"keras {keras.__version__} cannot load {file.name} ({keras_detail(exc)}); re-save "
            "it with this keras version, or as .h5 or weights (model.save_weights) to load with "
            "--factory"
        ) from exc
