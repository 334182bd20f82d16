"""Load a model file into a :class:`~aegis.model.Classifier`.

Formats (chosen by extension, then confirmed by the file's content):

- TorchScript (``.pt``/``.pth``/``.ts`` written by ``torch.jit.save``);
- ``torch.export`` programs (``.pt2``);
- weights plus a factory building the architecture: ``.safetensors`` or a ``.pt``/``.pth`` state
  dict (read with ``torch.load(weights_only=True)``); a sidecar may name only a registered
  architecture (:mod:`aegis.io.factories`), anything else needs ``factory=`` or
  ``trust_sidecar=True``;
- pickled modules (``.pt``/``.pth``/``.pkl``), only with ``allow_unsafe_pickle=True`` because
  unpickling executes code from the file;
- Keras 3 ``.keras`` and legacy ``.h5`` (run on keras' torch backend, so still differentiable);
- ONNX ``.onnx``, converted to torch by :mod:`aegis.io.onnx_torch`; a graph the converter cannot
  express is loaded query-only with onnxruntime.

The formats are read by :mod:`aegis.io.torch_formats`, :mod:`aegis.io.keras_format` and
:mod:`aegis.io.onnx_format` (weights-only files by :mod:`aegis.io.factories`); this module
dispatches to them, and :mod:`aegis.io.model_meta` resolves the metadata.

Metadata precedence: explicit keyword > sidecar (``model.json``) > inferred from the file > default.
``Classifier.provenance`` records where each field came from.

Example::

    model = load_classifier("net.onnx", bounds=(0, 1))
    model.provenance["input_shape"]  # 'inferred: model input (n, 1, 28, 28)'
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aegis.errors import AegisError, AegisWarning, ModelError
from aegis.io.digest import file_sha256
from aegis.io.factories import _build_from_factory
from aegis.io.keras_format import _KerasModule, _load_keras, torch_fast_path
from aegis.io.loaded import (
    Factory,
    _device_of,
    _first_tensor,
    _Loaded,
    _one_line,
    _to_layout,
)
from aegis.io.logits import probe_rows, settle_outputs
from aegis.io.model_meta import describe, resolve_input, resolve_num_classes
from aegis.io.onnx_format import _load_onnx, _verify_onnx
from aegis.io.sidecar import read_sidecar, sidecar_path
from aegis.io.torch_formats import (
    _load_exported,
    _load_pickle,
    _load_torchscript,
    _read_safetensors,
    _sniff_torch,
    _state_dict_of,
)
from aegis.model import Classifier, ModelInfo

__all__ = ["SUPPORTED_EXTENSIONS", "load_classifier"]

TORCH_EXTENSIONS = (".pt", ".pth", ".ts", ".pkl")
SUPPORTED_EXTENSIONS = (
    *TORCH_EXTENSIONS,
    ".pt2",
    ".safetensors",
    ".keras",
    ".h5",
    ".hdf5",
    ".onnx",
)


def load_classifier(
    path: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | str | None = None,
    bounds: Sequence[float] | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    layout: str | None = None,
    factory: str | Factory | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    allow_unsafe_pickle: bool = False,
    trust_sidecar: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    name: str | None = None,
    input_shape_hint: Sequence[int] | None = None,
    keep_softmax: bool = False,
) -> Classifier:
    """Load ``path`` as a Classifier (NCHW pixel-space inputs in ``bounds`` → logits).

    Args:
        path: the model file; the format follows from its extension and content.
        num_classes: number of classes; default: the output width of one forward pass.
        input_shape: (C, H, W) the attacks see, or a string ``"1,28,28"``; default: from the
            sidecar or the file (Keras, ONNX and torch.export files declare it).
        bounds: the valid input box in pixel space; default (0, 1).
        mean, std: per-channel normalization the Classifier applies before the model.
        layout: the layout the model itself expects: ``NCHW``, ``NHWC`` or ``flat``.
        factory: ``"package.module:function"`` (or a callable) building the architecture for a
            weights-only file (``.safetensors`` or a ``.pt`` state dict); imported as given.
        factory_kwargs: keyword arguments for the factory (default: the sidecar's).
        allow_unsafe_pickle: allow unpickling a full pickled module (executes code from the
            file) and Keras Lambda layers; only for files from a trusted source.
        trust_sidecar: import the sidecar's ``package.module:function`` factory even when it is
            not a registered architecture (as if given as ``factory``); only for a trusted sidecar.
        device: where the model runs; default CPU (Keras: where keras put it).
        batch_size: the largest batch the Classifier sends at once.
        name: shown in results; default: the file name without extension.
        input_shape_hint: the (C, H, W) of the data the model will see; the last resort for
            ``input_shape`` (after flag, sidecar and file) and a tie-breaker for the layout.
        keep_softmax: attack the model's outputs even where they are a visible final softmax;
            by default its input is attacked instead (:mod:`aegis.io.logits`).

    Raises:
        ModelError: the file is missing, corrupt, of an unknown format, or contradicts the
            metadata given; UnsafeFileError when loading it would execute code from it (or
            from its sidecar).
    """
    file = Path(path)
    loaded, sidecar, provenance = _read_model(
        file, factory, factory_kwargs, allow_unsafe=allow_unsafe_pickle, trust=trust_sidecar
    )
    # _settle_module, _verify_onnx and settle_outputs warn at the caller's line: call them here
    _settle_module(loaded, name or file.stem, device, provenance)
    inputs = resolve_input(file, loaded, sidecar, layout, input_shape, input_shape_hint, provenance)
    out = _probe(file, loaded, inputs.layout, inputs.shape, device)
    n_classes = resolve_num_classes(file, num_classes, sidecar, out.shape[1], provenance)
    if loaded.fmt.startswith("onnx") and loaded.module is not None:
        _verify_onnx(file, loaded, inputs.layout, inputs.shape, provenance)
    settle_outputs(
        file,
        loaded,
        out,
        layout=inputs.layout,
        shape=inputs.shape,
        device=device,
        provenance=provenance,
        keep_softmax=keep_softmax,
    )
    torch_fast_path(loaded, _to_layout(probe_rows(inputs.shape), inputs.layout))  # after softmax
    info = describe(
        sidecar, loaded, provenance, n_classes, inputs, bounds=bounds, mean=mean, std=std
    )
    return _classifier(
        file, loaded, info, provenance, device=device, batch_size=batch_size, name=name
    )


def _read_model(
    file: Path,
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
    *,
    allow_unsafe: bool,
    trust: bool,
) -> tuple[_Loaded, Mapping[str, Any], dict[str, str]]:
    """Check the file, read its sidecar and load it with the loader of its format; the
    provenance so far: the sidecar's path, the format and the file's SHA-256."""
    ext = _check_file(file)
    sidecar = read_sidecar(file)
    provenance: dict[str, str] = {}
    side_file = sidecar_path(file)
    if sidecar and side_file is not None:
        provenance["sidecar"] = str(side_file)
    loaded = _load_file(
        file,
        ext,
        sidecar,
        factory,
        factory_kwargs,
        allow_unsafe_pickle=allow_unsafe,
        trust_sidecar=trust,
    )
    provenance["format"] = loaded.fmt
    provenance["sha256"] = file_sha256(file)  # exactly which file was evaluated
    return loaded, sidecar, provenance


def _classifier(
    file: Path,
    loaded: _Loaded,
    info: ModelInfo,
    provenance: dict[str, str],
    *,
    device: torch.device | str | None,
    batch_size: int,
    name: str | None,
) -> Classifier:
    """The module (or, for a query-only model, the query function) behind ``info``."""
    return Classifier(
        loaded.module,
        info,
        query_fn=loaded.query_fn if loaded.module is None else None,
        device=device,
        batch_size=batch_size,
        name=name or file.stem,
        source=str(file),
        provenance=provenance,
    )


# -- dispatch ---------------------------------------------------------------------------------
def _check_file(file: Path) -> str:
    """The extension of a model file that exists, is not empty and has a known extension."""
    _check_exists(file)
    if file.is_dir():
        raise ModelError(f"{file} is a directory; pass the model file itself")
    ext = file.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ModelError(
            f"unknown model file extension {ext or '(none)'!r} for {file.name}; "
            f"save the model as one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if file.stat().st_size == 0:
        raise ModelError(f"model file {file} is empty; re-save or re-download it")
    return ext


def _check_exists(file: Path) -> None:
    try:
        os.stat(file)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelError(
                f"{file} is a symlink loop (a link that leads back to itself); point at the model "
                "file itself"
            ) from exc
        if exc.errno == errno.ENOENT and file.is_symlink():
            raise ModelError(
                f"{file} is a symlink to {os.readlink(file)!r}, which does not exist; fix the link"
            ) from exc
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise ModelError(
                f"cannot use {str(file)[:80]!r} as a model path ({_one_line(exc)}); check it"
            ) from exc
        raise ModelError(f"no such model file {file}; check the path") from exc
    except ValueError as exc:  # a NUL byte
        raise ModelError(
            f"cannot use {str(file)[:80]!r} as a model path ({exc}); check it"
        ) from exc


def _load_file(
    file: Path,
    ext: str,
    sidecar: Mapping[str, Any],
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
    *,
    allow_unsafe_pickle: bool,
    trust_sidecar: bool,
) -> _Loaded:
    head = _head(file)
    if ext == ".onnx":
        _refuse_explicit_factory(file, factory, "an ONNX graph")
        return _load_onnx(file)
    if ext in (".keras", ".h5", ".hdf5"):
        return _load_keras(
            file,
            ext,
            head,
            allow_unsafe=allow_unsafe_pickle,
            sidecar=sidecar,
            factory=factory,
            factory_kwargs=factory_kwargs,
            trust_sidecar=trust_sidecar,
        )
    if ext == ".pt2":
        _refuse_explicit_factory(file, factory, "a torch.export program")
        return _load_exported(file, allow_unsafe=allow_unsafe_pickle)
    if ext == ".safetensors":
        weights = _read_safetensors(file)
        return _build_from_factory(
            file,
            weights,
            "safetensors",
            sidecar,
            factory,
            factory_kwargs,
            trust_sidecar=trust_sidecar,
        )
    kind = _sniff_torch(file, head)
    if kind == "torchscript":
        _refuse_explicit_factory(file, factory, "a TorchScript archive")
        return _load_torchscript(file)
    if kind == "export":
        _refuse_explicit_factory(file, factory, "a torch.export program")
        return _load_exported(file, allow_unsafe=allow_unsafe_pickle)
    obj = _load_pickle(file, kind, allow_unsafe=allow_unsafe_pickle)
    if isinstance(obj, nn.Module):
        loaded = _Loaded(fmt="pickled torch module (unsafe pickle)", module=obj)
        loaded.default_layout = "NCHW"
        if factory is not None or sidecar.get("factory"):
            loaded.notes["factory"] = "ignored: the file holds a whole module"
        return loaded
    weights = _state_dict_of(file, obj)
    return _build_from_factory(
        file,
        weights,
        "torch state dict",
        sidecar,
        factory,
        factory_kwargs,
        trust_sidecar=trust_sidecar,
    )


def _head(file: Path) -> bytes:
    try:
        with file.open("rb") as fh:
            return fh.read(16)
    except OSError as exc:
        raise ModelError(
            f"cannot read model file {file} ({_one_line(exc)}); check its permissions"
        ) from exc


def _refuse_explicit_factory(file: Path, factory: str | Factory | None, what: str) -> None:
    if factory is not None:
        raise ModelError(
            f"{file.name} is {what}, which carries its own architecture; drop --factory"
        )


# -- the probe and the mode -------------------------------------------------------------------
def _probe(
    file: Path,
    loaded: _Loaded,
    layout: str,
    shape: tuple[int, int, int],
    device: torch.device | str | None,
) -> Tensor:
    """One forward pass on a zero and a random input: checks the shape, gives the width."""
    x = _to_layout(probe_rows(shape), layout)
    try:
        if loaded.query_fn is not None:  # ONNX: onnxruntime is the reference implementation
            out = torch.from_numpy(np.asarray(loaded.query_fn(x.numpy())))
        elif loaded.module is not None:
            target = torch.device(device) if device is not None else _device_of(loaded.module)
            with torch.no_grad():
                out = _first_tensor(loaded.module(x.to(target))).detach().cpu()
        else:  # pragma: no cover - every loader sets one of the two
            raise ModelError(f"{file.name} produced neither a module nor a query function")
    except AegisError:
        raise
    except Exception as exc:
        detail = _one_line(exc)
        raise ModelError(
            f"running {file.name} on a batch of shape {tuple(x.shape)} ({layout}) failed "
            f"({detail}); check --input-shape and --layout"
        ) from exc
    if out.ndim != 2 or out.shape[0] != 2:
        raise ModelError(
            f"{file.name} returns shape {tuple(out.shape)} for a batch of 2; aegis needs "
            "(n, num_classes) logits: wrap the model so it returns them"
        )
    return out


def _settle_module(
    loaded: _Loaded, name: str, device: torch.device | str | None, provenance: dict[str, str]
) -> None:
    """Put the module in eval mode before probing it (warn if the file saved it training),
    then move it to ``device`` (a Keras module stays where keras put it)."""
    module = loaded.module
    if module is None:
        return
    training = getattr(module, "training", False)  # a frozen TorchScript module has none
    if training and not loaded.fresh and not isinstance(module, _KerasModule):
        message = (
            f"{name} was saved in training mode; aegis puts it in eval mode (BatchNorm/dropout "
            "in training mode silently weaken attacks)"
        )
        warnings.warn(message, AegisWarning, stacklevel=3)
        provenance["mode"] = "saved in training mode; switched to eval"
    module.eval()
    if device is not None and not isinstance(module, _KerasModule):
        loaded.module = module.to(device)
