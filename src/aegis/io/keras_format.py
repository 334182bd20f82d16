"""Keras 3 ``.keras`` and legacy HDF5 (``.h5``/``.hdf5``) models, run on keras' torch backend
so that they stay differentiable. keras is imported only when such a file is loaded.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aegis.errors import ModelError, UnsafeFileError
from aegis.io.loaded import _ZIP_MAGIC, Dims, _corrupt, _first_tensor, _Loaded, _one_line

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
            f"cannot import keras ({_one_line(exc)}); install it with: pip install 'aegis[keras]'"
        ) from exc


class _KerasModule(nn.Module):
    """A Keras 3 model on the torch backend, called in inference mode."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.keras_model = model

    def forward(self, x: Tensor) -> Tensor:
        out = _first_tensor(self.keras_model(x, training=False))
        return out


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


def _keras_softmax(model: Any) -> bool:
    layers = getattr(model, "layers", None) or []
    if not layers:
        return False
    last = layers[-1]
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def _load_keras(file: Path, ext: str, head: bytes, *, allow_unsafe: bool) -> _Loaded:
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
    keras = _import_keras()
    try:
        model = keras.saving.load_model(str(file), compile=False, safe_mode=not allow_unsafe)
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise UnsafeFileError(
                f"{file.name} has a Keras Lambda layer whose Python bytecode would run on load; "
                "pass --unsafe-pickle only if you trust its source, or rebuild it without Lambda"
            ) from exc
        raise _corrupt(file, "a Keras model", exc) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"keras loaded {type(model).__name__} from {file.name}, not a torch module; "
            "set KERAS_BACKEND=torch before importing keras"
        )
    legacy = " (legacy HDF5)" if ext != ".keras" else ""
    loaded = _Loaded(fmt=f"keras{legacy}", module=_KerasModule(model), dims=_keras_dims(model))
    loaded.probabilities = _keras_softmax(model)
    return loaded
