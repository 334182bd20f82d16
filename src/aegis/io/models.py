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
dispatches to them and resolves the metadata.

Metadata precedence: explicit keyword > sidecar (``model.json``) > inferred from the file > default.
``Classifier.provenance`` records where each field came from.

Example::

    model = load_classifier("net.onnx", bounds=(0, 1))
    model.provenance["input_shape"]  # 'inferred: model input (n, 1, 28, 28)'
"""

from __future__ import annotations

import errno
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aegis import normalization
from aegis.errors import AegisError, AegisWarning, ConfigError, ModelError
from aegis.io.digest import file_sha256
from aegis.io.factories import _build_from_factory
from aegis.io.keras_format import _KerasModule, _load_keras
from aegis.io.loaded import (
    Dims,
    Factory,
    _device_of,
    _first_tensor,
    _Loaded,
    _one_line,
    _to_layout,
)
from aegis.io.logits import probe_rows, settle_outputs
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
from aegis.model import LAYOUTS, Classifier, ModelInfo

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
        allow_unsafe_pickle=allow_unsafe_pickle,
        trust_sidecar=trust_sidecar,
    )
    provenance["format"] = loaded.fmt
    provenance["sha256"] = file_sha256(file)  # exactly which file was evaluated
    module = loaded.module
    if module is not None:
        _settle_mode(module, loaded, name or file.stem, provenance)
        if device is not None and not isinstance(module, _KerasModule):
            module = module.to(device)
            loaded.module = module

    hint = _parse_hint(input_shape_hint)
    chosen_layout, layout_src = _resolve_layout(file, layout, sidecar, loaded, hint)
    shape, shape_src = _resolve_shape(file, input_shape, sidecar, loaded, chosen_layout, hint)
    _check_against_file(file, chosen_layout, shape, shape_src, loaded.dims)
    provenance["layout"] = layout_src
    provenance["input_shape"] = shape_src

    out = _probe(file, loaded, chosen_layout, shape, device)
    n_classes, classes_src = _resolve_num_classes(file, num_classes, sidecar, out.shape[1])
    provenance["num_classes"] = classes_src
    if loaded.fmt.startswith("onnx") and loaded.module is not None:
        _verify_onnx(file, loaded, chosen_layout, shape, provenance)
    settle_outputs(
        file,
        loaded,
        out,
        layout=chosen_layout,
        shape=shape,
        device=device,
        provenance=provenance,
        keep_softmax=keep_softmax,
    )

    box, box_src = _resolve_floats("bounds", bounds, sidecar, length=2)
    mu, mu_src = _resolve_floats("mean", mean, sidecar)
    sigma, sigma_src = _resolve_floats("std", std, sidecar)
    provenance["bounds"] = box_src if box is not None else "default: (0, 1)"
    provenance["mean"] = mu_src if mu is not None else "default: none"
    provenance["std"] = sigma_src if sigma is not None else "default: none"
    provenance.update(loaded.notes)

    info = ModelInfo(
        num_classes=n_classes,
        input_shape=shape,
        bounds=(box[0], box[1]) if box is not None else (0.0, 1.0),
        mean=mu,
        std=sigma,
        layout=chosen_layout,
    )
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


# -- metadata -----------------------------------------------------------------------------------
def _pick(key: str, flag: Any, sidecar: Mapping[str, Any]) -> tuple[Any, str] | None:
    if flag is not None:
        return flag, "flag"
    if sidecar.get(key) is not None:
        return sidecar[key], "sidecar"
    return None


def _flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _parse_shape(value: Any, source: str) -> tuple[int, int, int]:
    items: list[Any]
    if isinstance(value, str):
        items = [v for v in re.split(r"[,x× ]+", value.strip("()[] ")) if v]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = []
    try:
        dims = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or min(dims) < 1 or any(isinstance(v, float) and v != int(v) for v in items):
        raise ConfigError(
            f"input_shape ({source}) must be three positive integers C,H,W, got {value!r}; "
            "e.g. --input-shape 1,28,28"
        )
    return dims[0], dims[1], dims[2]


def _parse_layout(value: Any, source: str) -> str:
    text = str(value).strip()
    for candidate in LAYOUTS:
        if text.lower() == candidate.lower():
            return candidate
    raise ConfigError(f"layout ({source}) must be one of {', '.join(LAYOUTS)}, got {value!r}")


def _source_text(key: str, source: str, value: Any) -> str:
    if source == "flag":
        return f"{_flag_name(key)} {value}"
    return f"{key} {value} from the sidecar"


def _infer_layout(dims: Dims) -> tuple[str, str] | None:
    """Layout read off a per-sample input shape, or None if the shape is ambiguous."""
    if len(dims) == 1:
        return "flat", f"inferred: flat input (n, {_fmt(dims)})"
    if len(dims) != 3:
        return None
    a, b, c = dims
    small = (1, 3, 4)

    def spatial(d: int | None) -> bool:
        return d is None or d > 4

    nhwc = c in small and spatial(a) and spatial(b)
    nchw = a in small and spatial(b) and spatial(c)
    if nhwc and not nchw:
        return "NHWC", f"inferred: channels-last input (n, {_fmt(dims)})"
    if nchw and not nhwc:
        return "NCHW", f"inferred: channels-first input (n, {_fmt(dims)})"
    return None


def _fmt(dims: Sequence[int | None]) -> str:
    return ", ".join("?" if d is None else str(d) for d in dims)


def _parse_hint(hint: Sequence[int] | None) -> tuple[int, int, int] | None:
    if hint is None or len(hint) != 3:
        return None
    try:
        c, h, w = (int(v) for v in hint)
    except (TypeError, ValueError):
        return None
    return (c, h, w) if min(c, h, w) >= 1 else None


def _fits(dims: Dims, want: Sequence[int]) -> bool:
    if len(dims) != len(want):
        return False
    return all(d is None or d == w for d, w in zip(dims, want, strict=True))


def _resolve_layout(
    file: Path,
    layout: str | None,
    sidecar: Mapping[str, Any],
    loaded: _Loaded,
    hint: tuple[int, int, int] | None,
) -> tuple[str, str]:
    picked = _pick("layout", layout, sidecar)
    if picked is not None:
        return _parse_layout(picked[0], picked[1]), picked[1]
    if loaded.dims is not None:
        inferred = _infer_layout(loaded.dims)
        if inferred is not None:
            return inferred
        if hint is not None:
            matches = [c for c in LAYOUTS if _fits(loaded.dims, _model_dims(c, hint))]
            if len(matches) == 1:
                return matches[0], f"inferred: file input (n, {_fmt(loaded.dims)}) fits the data"
    if loaded.default_layout is not None:
        return loaded.default_layout, f"default: {loaded.default_layout} (PyTorch)"
    seen = f" from its input shape (n, {_fmt(loaded.dims)})" if loaded.dims else ""
    raise ModelError(
        f"cannot tell the input layout of {file.name}{seen}; pass --layout NCHW, NHWC or flat"
    )


def _shape_from_dims(layout: str, dims: Dims) -> tuple[tuple[int, int, int], str] | None:
    if any(d is None for d in dims):
        return None
    known = [int(d) for d in dims if d is not None]
    note = f"inferred: model input (n, {_fmt(dims)})"
    if layout == "NCHW" and len(known) == 3:
        return (known[0], known[1], known[2]), note
    if layout == "NHWC" and len(known) == 3:
        return (known[2], known[0], known[1]), note
    if layout == "flat" and len(known) == 1:
        side = math.isqrt(known[0])
        if side * side == known[0] and side > 1:
            return (1, side, side), f"inferred: flat square grayscale (n, {known[0]})"
    return None


def _resolve_shape(
    file: Path,
    input_shape: Sequence[int] | str | None,
    sidecar: Mapping[str, Any],
    loaded: _Loaded,
    layout: str,
    hint: tuple[int, int, int] | None,
) -> tuple[tuple[int, int, int], str]:
    picked = _pick("input_shape", input_shape, sidecar)
    if picked is not None:
        return _parse_shape(picked[0], picked[1]), picked[1]
    if loaded.dims is not None:
        found = _shape_from_dims(layout, loaded.dims)
        if found is not None and (hint is None or found[0] == hint or layout != "flat"):
            return found
    if hint is not None:
        return hint, "hint: the shape of the data"
    seen = f" (the file declares (n, {_fmt(loaded.dims)}))" if loaded.dims else ""
    raise ModelError(
        f"cannot tell the input shape of {file.name}{seen}; pass --input-shape C,H,W "
        "(e.g. --input-shape 1,28,28) or add input_shape to a model.json sidecar"
    )


def _model_dims(layout: str, shape: tuple[int, int, int]) -> tuple[int, ...]:
    c, h, w = shape
    if layout == "NHWC":
        return (h, w, c)
    if layout == "flat":
        return (c * h * w,)
    return shape


def _check_against_file(
    file: Path, layout: str, shape: tuple[int, int, int], source: str, dims: Dims | None
) -> None:
    if dims is None:
        return
    want = _model_dims(layout, shape)
    if _fits(dims, want):
        return
    origins = {"flag": "the flags", "sidecar": "the sidecar"}
    origin = origins.get(source, source)
    raise ModelError(
        f"{file.name} takes inputs of shape (n, {_fmt(dims)}), but input_shape {shape} with "
        f"layout {layout} (from {origin}) means (n, {_fmt(want)}); fix or drop --input-shape "
        "/ --layout"
    )


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


def _resolve_num_classes(
    file: Path, num_classes: int | None, sidecar: Mapping[str, Any], width: int
) -> tuple[int, str]:
    picked = _pick("num_classes", num_classes, sidecar)
    if picked is None:
        return width, "inferred: output width of a forward pass"
    value, source = picked
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"num_classes ({source}) must be an integer, got {value!r}")
    if int(value) != width:
        raise ModelError(
            f"{_source_text('num_classes', source, value)} contradicts {file.name}, which "
            f"outputs {width} scores; drop or fix it"
        )
    return int(value), source


def _resolve_floats(
    key: str, flag: Any, sidecar: Mapping[str, Any], length: int | None = None
) -> tuple[tuple[float, ...] | None, str]:
    picked = _pick(key, flag, sidecar)
    if picked is None:
        return None, ""
    value, source = picked
    if isinstance(value, str) and key in ("mean", "std"):
        value = normalization.parse(value, key)  # a preset name (cifar10, ...) or numbers
    items = [value] if isinstance(value, (int, float)) else value
    try:
        floats = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        floats = ()
    if not floats or (length is not None and len(floats) != length):
        count = f"{length} numbers" if length else "numbers (one per channel)"
        raise ConfigError(f"{key} ({source}) must be {count}, got {value!r}")
    return floats, source


def _settle_mode(module: nn.Module, loaded: _Loaded, name: str, provenance: dict[str, str]) -> None:
    """Put the module in eval mode before probing it; warn if the file saved it training."""
    training = getattr(module, "training", False)  # a frozen TorchScript module has none
    if training and not loaded.fresh and not isinstance(module, _KerasModule):
        message = (
            f"{name} was saved in training mode; aegis puts it in eval mode (BatchNorm/dropout "
            "in training mode silently weaken attacks)"
        )
        warnings.warn(message, AegisWarning, stacklevel=3)
        provenance["mode"] = "saved in training mode; switched to eval"
    module.eval()
