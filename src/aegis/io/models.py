"""Load a model file into a :class:`~aegis.model.Classifier`.

Formats (chosen by extension, then confirmed by the file's content):

- TorchScript (``.pt``/``.pth``/``.ts`` written by ``torch.jit.save``);
- ``torch.export`` programs (``.pt2``);
- weights plus a factory ``"package.module:function"`` building the architecture: ``.safetensors``
  or a ``.pt``/``.pth`` state dict (read with ``torch.load(weights_only=True)``);
- pickled modules (``.pt``/``.pth``/``.pkl``), only with ``allow_unsafe_pickle=True`` because
  unpickling executes code from the file;
- Keras 3 ``.keras`` and legacy ``.h5`` (run on keras' torch backend, so still differentiable);
- ONNX ``.onnx``, converted to torch by :mod:`aegis.io.onnx_torch`; a graph the converter cannot
  express is loaded query-only with onnxruntime.

Metadata precedence: explicit keyword > sidecar (``model.json``) > inferred from the file > default.
``Classifier.provenance`` records where each field came from.

Example::

    model = load_classifier("net.onnx", bounds=(0, 1))
    model.provenance["input_shape"]  # 'inferred: model input (n, 1, 28, 28)'
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import math
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aegis.errors import AegisError, AegisWarning, ConfigError, ModelError, UnsafeFileError
from aegis.io.sidecar import read_sidecar, sidecar_path
from aegis.model import LAYOUTS, Classifier, ModelInfo

__all__ = ["SUPPORTED_EXTENSIONS", "load_classifier"]

log = logging.getLogger(__name__)

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

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"  # pickle protocol 2 + torch's LONG1 magic number
_SAFE_FACTORY_MODULE = "aegis.zoo"  # sidecar factories imported without --factory
_UNSAFE_HINT = (
    "pass --unsafe-pickle only if you trust its source, or re-save it safely as TorchScript "
    "(torch.jit.save) or as safetensors weights loaded with --factory"
)

Factory = Callable[..., Any]
QueryFn = Callable[[np.ndarray], np.ndarray]
Dims = tuple[int | None, ...]


@dataclass
class _Loaded:
    """What a format loader found: a torch module and/or a query function, plus what it knows."""

    fmt: str
    module: nn.Module | None = None
    query_fn: QueryFn | None = None
    dims: Dims | None = None  # per-sample input shape the file declares, None where symbolic
    default_layout: str | None = None  # the documented default layout for this format
    notes: dict[str, str] = field(default_factory=dict)
    probabilities: bool = False  # the file itself says its output is a softmax
    fresh: bool = False  # the module was built here (factory), so its train/eval mode is ours


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
    device: torch.device | str | None = None,
    batch_size: int = 256,
    name: str | None = None,
    input_shape_hint: Sequence[int] | None = None,
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
            weights-only file (``.safetensors`` or a ``.pt`` state dict).
        factory_kwargs: keyword arguments for the factory (default: the sidecar's).
        allow_unsafe_pickle: allow unpickling a full pickled module (executes code from the
            file) and Keras Lambda layers; only for files from a trusted source.
        device: where the model runs; default CPU (Keras: where keras put it).
        batch_size: the largest batch the Classifier sends at once.
        name: shown in results; default: the file name without extension.
        input_shape_hint: the (C, H, W) of the data the model will see; the last resort for
            ``input_shape`` (after flag, sidecar and file) and a tie-breaker for the layout.

    Raises:
        ModelError: the file is missing, corrupt, of an unknown format, or contradicts the
            metadata given; UnsafeFileError when loading it would execute code from it.
    """
    file = Path(path)
    if not file.exists():
        raise ModelError(f"no such model file {file}; check the path")
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
    sidecar = read_sidecar(file)
    provenance: dict[str, str] = {}
    side_file = sidecar_path(file)
    if sidecar and side_file is not None:
        provenance["sidecar"] = str(side_file)

    loaded = _load_file(
        file, ext, sidecar, factory, factory_kwargs, allow_unsafe_pickle=allow_unsafe_pickle
    )
    provenance["format"] = loaded.fmt
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
    _note_probabilities(file, loaded, out, provenance)

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
def _load_file(
    file: Path,
    ext: str,
    sidecar: Mapping[str, Any],
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
    *,
    allow_unsafe_pickle: bool,
) -> _Loaded:
    head = _head(file)
    if ext == ".onnx":
        _refuse_explicit_factory(file, factory, "an ONNX graph")
        return _load_onnx(file)
    if ext in (".keras", ".h5", ".hdf5"):
        _refuse_explicit_factory(file, factory, "a Keras model")
        return _load_keras(file, ext, head, allow_unsafe=allow_unsafe_pickle)
    if ext == ".pt2":
        _refuse_explicit_factory(file, factory, "a torch.export program")
        return _load_exported(file, allow_unsafe=allow_unsafe_pickle)
    if ext == ".safetensors":
        weights = _read_safetensors(file)
        return _build_from_factory(file, weights, "safetensors", sidecar, factory, factory_kwargs)
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
    return _build_from_factory(file, weights, "torch state dict", sidecar, factory, factory_kwargs)


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


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:limit]


def _corrupt(file: Path, what: str, exc: BaseException) -> ModelError:
    lines = str(exc).strip().splitlines()
    detail = " ".join(lines[0].split())[:200] if lines else type(exc).__name__
    return ModelError(
        f"cannot read {file.name} as {what} ({detail}); the file is corrupt, truncated or not "
        "that format: re-save or re-download it"
    )


# -- PyTorch formats ----------------------------------------------------------------------------
def _sniff_torch(file: Path, head: bytes) -> str:
    """``torchscript``, ``export``, ``torch-pickle`` (torch.save) or ``plain-pickle``."""
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(file) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise _corrupt(file, "a PyTorch zip archive", exc) from exc
        inner = [n.split("/", 1)[1] if "/" in n else n for n in names]
        if any(n.startswith("code/") or n == "constants.pkl" for n in inner):
            return "torchscript"
        if any(n == "archive_format" or n.startswith("models/") for n in inner):
            return "export"
        if "data.pkl" in inner:
            return "torch-pickle"
        raise ModelError(
            f"{file.name} is a zip archive but not one torch wrote (no data.pkl or code/); "
            "re-save it with torch.jit.save or torch.save(model.state_dict())"
        )
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch-pickle"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "plain-pickle"
    raise ModelError(
        f"{file.name} is neither a TorchScript/torch.save archive nor a pickle; re-save it with "
        "torch.jit.save, or use the extension of its real format (.onnx, .keras, .safetensors)"
    )


def _load_torchscript(file: Path) -> _Loaded:
    try:
        module = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise _corrupt(file, "TorchScript", exc) from exc
    return _Loaded(fmt="torchscript", module=module, default_layout="NCHW")


def _pt2_pickled_parts(file: Path) -> list[str]:
    """Parts of a ``.pt2`` archive that ``torch.export.load`` would unpickle unsafely.

    torch unpickles ``use_pickle`` weights and constants and opaque objects with plain pickle, and
    retries any ``.pt`` payload (sample inputs, legacy weights) with ``weights_only=False``.
    """
    risky: list[str] = []
    try:
        with zipfile.ZipFile(file) as zf:
            for name in zf.namelist():
                inner = name.split("/", 1)[1] if "/" in name else name
                if inner.endswith((".pt", ".pkl")):
                    try:
                        torch.load(io.BytesIO(zf.read(name)), map_location="cpu", weights_only=True)
                    except Exception:
                        risky.append(inner)
                elif inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(
                    "_config.json"
                ):
                    risky += [f"{inner}:{key}" for key in _pickled_entries(zf.read(name))]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _corrupt(file, "a torch.export program (.pt2)", exc) from exc
    return risky


def _pickled_entries(raw: bytes) -> list[str]:
    try:
        config = json.loads(raw).get("config", {})
    except (ValueError, AttributeError):
        return []  # malformed: torch.export.load reports it
    found = []
    for key, entry in config.items() if isinstance(config, dict) else ():
        if not isinstance(entry, dict):
            continue
        path_name = str(entry.get("path_name", ""))
        if entry.get("use_pickle") or path_name.startswith(("custom_obj_", "opaque_obj_")):
            found.append(str(key))
    return found


def _load_exported(file: Path, *, allow_unsafe: bool) -> _Loaded:
    risky = _pt2_pickled_parts(file)
    if risky and not allow_unsafe:
        raise UnsafeFileError(
            f"{file.name} holds pickled parts ({_few(risky)}) that torch.export.load would "
            f"unpickle, executing code from the file; {_UNSAFE_HINT}"
        )
    try:
        program = torch.export.load(str(file))
        inner = program.module()
    except Exception as exc:
        raise _corrupt(file, "a torch.export program (.pt2)", exc) from exc
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise ModelError(
            f"{file.name} takes {len(user_inputs)} inputs; aegis needs a model of one image "
            "tensor: re-export it with a single input"
        )
    dims: Dims | None = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            if isinstance(val, Tensor):
                dims = tuple(d if isinstance(d, int) else None for d in val.shape)
    loaded = _Loaded(fmt="torch.export", default_layout="NCHW")
    module: nn.Module = _ExportedModule(inner)
    if dims is not None and dims:
        batch, dims = dims[0], dims[1:]
        if batch is not None:
            module = _StaticBatch(module, batch)
            loaded.notes["batch"] = (
                f"exported with a fixed batch of {batch}: run in chunks of {batch} (re-export "
                "with dynamic_shapes for speed)"
            )
    loaded.module = module
    loaded.dims = dims
    loaded.fresh = True  # its mode was fixed at export time; there is nothing to switch
    return loaded


class _ExportedModule(nn.Module):
    """A ``torch.export`` module: its train/eval behaviour was fixed when it was exported."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.training = False

    def train(self, mode: bool = True) -> _ExportedModule:
        # Exported graphs refuse .train()/.eval(); their mode is baked into the graph.
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        return _first_tensor(self.inner(x))


class _StaticBatch(nn.Module):
    """Runs a model that only accepts batches of exactly ``size`` in chunks of that size."""

    def __init__(self, inner: nn.Module, size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if n == self.size:
            return _first_tensor(self.inner(x))
        parts = []
        for i in range(0, n, self.size):
            chunk = x[i : i + self.size]
            m = chunk.shape[0]
            if m < self.size:
                # Pad with detached copies of the last row: no gradient leaks into the pad.
                pad = chunk[-1:].detach().expand(self.size - m, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            parts.append(_first_tensor(self.inner(chunk))[:m])
        return torch.cat(parts)


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, Mapping) and out:
        out = next(iter(out.values()))
    if not isinstance(out, Tensor):
        raise ModelError(
            f"model returned {type(out).__name__}, not a tensor of logits; wrap it so that "
            "forward returns the logits tensor"
        )
    return out


def _unsupported_global(message: str) -> str | None:
    match = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return match.group(1) if match else None


def _load_pickle(file: Path, kind: str, *, allow_unsafe: bool) -> Any:
    if kind == "plain-pickle":
        if not allow_unsafe:
            raise UnsafeFileError(
                f"{file.name} is a plain Python pickle: loading it would execute code from the "
                f"file; {_UNSAFE_HINT}"
            )
        return _unsafe_unpickle(file)
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsupported_global(str(exc))
        if culprit is None:
            raise _corrupt(file, "a torch.save file", exc) from exc
        if not allow_unsafe:
            raise UnsafeFileError(
                f"{file.name} is a pickled object (it references {culprit}): loading it would "
                f"execute code from the file; {_UNSAFE_HINT}"
            ) from exc
    except Exception as exc:
        raise _corrupt(file, "a torch.save file", exc) from exc
    log.warning("unpickling %s with weights_only=False (allowed by --unsafe-pickle)", file)
    try:
        return torch.load(str(file), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _corrupt(file, "a pickled torch module", exc) from exc


def _unsafe_unpickle(file: Path) -> Any:
    log.warning("unpickling %s (allowed by --unsafe-pickle)", file)
    try:
        with file.open("rb") as fh:
            return pickle.load(fh)  # the user opted in with allow_unsafe_pickle
    except Exception as exc:
        raise _corrupt(file, "a pickle", exc) from exc


def _as_state_dict(obj: object) -> dict[str, Tensor] | None:
    if not isinstance(obj, Mapping) or not obj:
        return None
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            return None
        out[k] = v
    return out


def _state_dict_of(file: Path, obj: object) -> dict[str, Tensor]:
    direct = _as_state_dict(obj)
    if direct is not None:
        return direct
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = _as_state_dict(obj.get(key))
            if inner is not None:
                log.info("using the %r entry of the checkpoint %s", key, file)
                return inner
        keys = ", ".join(map(str, list(obj)[:6]))
        raise ModelError(
            f"{file.name} holds a dict (keys {keys}) with no state dict of tensors; save "
            "model.state_dict() or TorchScript"
        )
    raise ModelError(
        f"{file.name} holds a {type(obj).__name__}, not a model or a state dict; save "
        "model.state_dict() or TorchScript"
    )


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - safetensors is a core dependency
        raise ModelError("reading .safetensors needs safetensors: pip install safetensors") from exc
    try:
        return dict(load_file(str(file), device="cpu"))
    except Exception as exc:
        raise _corrupt(file, "safetensors", exc) from exc


# -- factories ----------------------------------------------------------------------------------
def _resolve_factory(
    file: Path,
    sidecar: Mapping[str, Any],
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
) -> tuple[Factory, dict[str, Any], str]:
    side_factory = sidecar.get("factory")
    side_kwargs = sidecar.get("factory_kwargs") or {}
    if not isinstance(side_kwargs, Mapping):
        raise ModelError(f"factory_kwargs in the sidecar of {file.name} must be a JSON object")
    if factory is None:
        if not side_factory:
            raise ModelError(
                f"{file.name} holds weights only; pass --factory package.module:function "
                "that builds the architecture (or a model.json sidecar naming an aegis factory)"
            )
        if not _is_zoo_factory(side_factory):
            raise UnsafeFileError(
                f"the sidecar of {file.name} names factory {side_factory!r} outside aegis, and "
                f"importing it would run its code; pass --factory {side_factory} to trust it"
            )
        spec: str | Factory = side_factory
        source = f"sidecar: {side_factory}"
    else:
        spec = factory
        source = f"flag: {factory if isinstance(factory, str) else _qualname(factory)}"
    kwargs: dict[str, Any]
    if factory_kwargs is not None:
        kwargs = dict(factory_kwargs)
    elif factory is None or not side_factory or side_factory == factory:
        kwargs = dict(side_kwargs)
    else:
        kwargs = {}
    fn = spec if callable(spec) else _import_factory(spec)
    return fn, kwargs, source


def _is_zoo_factory(spec: object) -> bool:
    """Only our own zoo is trusted from a sidecar: any other module (even elsewhere in aegis,
    whose functions could be called with sidecar kwargs) needs an explicit --factory."""
    if not isinstance(spec, str):
        return False
    module, _, attr = spec.partition(":")
    in_zoo = module == _SAFE_FACTORY_MODULE or module.startswith(_SAFE_FACTORY_MODULE + ".")
    return in_zoo and bool(attr) and not attr.startswith("_")


def _qualname(fn: Factory) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _import_factory(spec: str) -> Factory:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"factory must look like 'package.module:function', got {spec!r}; fix --factory"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import factory module {module_name!r} ({_one_line(exc)}); check --factory "
            "and that its package is installed"
        ) from exc
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ModelError(f"module {module_name!r} has no {attr!r}; check --factory")
    if not callable(fn):
        raise ModelError(f"factory {spec!r} is not callable; point --factory at a function")
    built: Factory = fn
    return built


def _build_from_factory(
    file: Path,
    weights: dict[str, Tensor],
    what: str,
    sidecar: Mapping[str, Any],
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
) -> _Loaded:
    fn, kwargs, source = _resolve_factory(file, sidecar, factory, factory_kwargs)
    try:
        module = fn(**kwargs)
    except AegisError:
        raise
    except Exception as exc:
        raise ModelError(
            f"factory {source.split(': ', 1)[1]}(**{kwargs}) failed ({_one_line(exc)}); check "
            "--factory and factory_kwargs"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"factory {source.split(': ', 1)[1]} returned {type(module).__name__}, not a "
            "torch.nn.Module; point --factory at a function that builds the model"
        )
    weights, note = _strip_prefix(weights, set(module.state_dict()))
    expected = set(module.state_dict())
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ModelError(
            f"weights in {file.name} do not fit the factory's model: missing keys "
            f"{_few(missing)}, unexpected keys {_few(unexpected)}; check --factory and "
            "factory_kwargs"
        )
    try:
        module.load_state_dict(weights, strict=True)
    except Exception as exc:
        detail = _one_line(exc, 300)
        raise ModelError(
            f"weights in {file.name} do not fit the factory's model ({detail}); check "
            "--factory and factory_kwargs"
        ) from exc
    loaded = _Loaded(fmt=f"{what} + factory", module=module, default_layout="NCHW", fresh=True)
    loaded.notes["factory"] = source + (f" with {kwargs}" if kwargs else "")
    if note:
        loaded.notes["weights"] = note
    return loaded


def _strip_prefix(weights: dict[str, Tensor], expected: set[str]) -> tuple[dict[str, Tensor], str]:
    """Drop a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix if it fits."""
    if set(weights) == expected:
        return weights, ""
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            stripped = {k[len(prefix) :]: v for k, v in weights.items()}
            if set(stripped) == expected:
                return stripped, f"stripped the {prefix!r} prefix from every key"
    return weights, ""


def _few(keys: Sequence[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:5])
    return f"{shown} (+{len(keys) - 5} more)" if len(keys) > 5 else shown


# -- Keras --------------------------------------------------------------------------------------
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


# -- ONNX ---------------------------------------------------------------------------------------
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def _load_onnx(file: Path) -> _Loaded:
    try:
        import onnx
    except ImportError as exc:
        raise ModelError("loading .onnx needs onnx: pip install 'aegis[onnx]'") from exc
    try:
        proto = onnx.load(str(file))
    except Exception as exc:
        raise _corrupt(file, "an ONNX model", exc) from exc
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

    from aegis.io.onnx_torch import UnsupportedOnnxOp, convert

    why = ""
    try:
        module: nn.Module = convert(proto, outputs=[output])
        if batch is not None:
            module = _StaticBatch(module, batch)
        loaded.module = module
        loaded.fresh = True
        loaded.fmt = "onnx (converted to torch)"
    except UnsupportedOnnxOp as exc:
        why = f"ONNX op {exc.op} has no differentiable converter"
    except Exception as exc:  # a malformed node the converter trips over
        why = f"the ONNX to torch conversion failed ({_one_line(exc)})"
    loaded.query_fn = _onnxruntime_fn(file, inputs[0].name, output, batch, loaded)
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
    return loaded


def _go_query_only(file: Path, loaded: _Loaded, message: str) -> None:
    loaded.module = None
    loaded.fmt = "onnx (query-only, onnxruntime)"
    loaded.notes["gradients"] = message
    log.warning("%s: %s", file.name, message)
    warnings.warn(f"{file.name}: {message}", AegisWarning, stacklevel=4)


def _onnxruntime_fn(
    file: Path, input_name: str, output: str, batch: int | None, loaded: _Loaded
) -> QueryFn | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as exc:
        # onnxruntime puts the reason (e.g. an IR version it is too old for) at the end.
        reason = " ".join(str(exc).split())[-160:] or type(exc).__name__
        if loaded.module is None:
            raise ModelError(
                f"onnxruntime cannot run {file.name} (...{reason}); upgrade onnxruntime or "
                "re-export the model at an older opset"
            ) from exc
        loaded.notes["onnx_check"] = f"skipped: onnxruntime cannot run the file (...{reason})"
        return None
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

    return run


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


def _device_of(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device
    return torch.device("cpu")


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


def _to_layout(x: Tensor, layout: str) -> Tensor:
    if layout == "NHWC":
        return x.permute(0, 2, 3, 1).contiguous()
    if layout == "flat":
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x


def _probe(
    file: Path,
    loaded: _Loaded,
    layout: str,
    shape: tuple[int, int, int],
    device: torch.device | str | None,
) -> Tensor:
    """One forward pass on a zero and a random input: checks the shape, gives the width."""
    rows = torch.stack(
        [torch.zeros(shape), torch.rand(shape, generator=torch.Generator().manual_seed(0))]
    )
    x = _to_layout(rows, layout)
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
    if module.training and not loaded.fresh and not isinstance(module, _KerasModule):
        message = (
            f"{name} was saved in training mode; aegis puts it in eval mode (BatchNorm/dropout "
            "in training mode silently weaken attacks)"
        )
        warnings.warn(message, AegisWarning, stacklevel=3)
        provenance["mode"] = "saved in training mode; switched to eval"
    module.eval()


def _note_probabilities(
    file: Path, loaded: _Loaded, out: Tensor, provenance: dict[str, str]
) -> None:
    if loaded.probabilities:
        provenance["outputs"] = "probabilities (softmax)"
    else:
        rows = out.double()
        sums = rows.sum(dim=1)
        if bool((rows >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)):
            provenance["outputs"] = "probabilities (non-negative, summing to 1)"
    if "outputs" in provenance:
        warnings.warn(
            f"{file.name} outputs probabilities, not logits: logit-based losses (CW, DLR) are "
            "weakened; export the model without its final softmax for a strong evaluation",
            AegisWarning,
            stacklevel=3,
        )
