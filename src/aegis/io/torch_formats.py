"""PyTorch model files: TorchScript, ``torch.export`` programs (``.pt2``), pickles and state
dicts (``torch.load``), safetensors weights, and the factories that build an architecture for
weights-only files.

Unpickling executes code from the file, so it happens only with ``allow_unsafe=True``.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aegis.errors import AegisError, ConfigError, ModelError, UnsafeFileError
from aegis.io.loaded import (
    _ZIP_MAGIC,
    Dims,
    Factory,
    _corrupt,
    _first_tensor,
    _Loaded,
    _one_line,
    _StaticBatch,
)

log = logging.getLogger(__name__)

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"  # pickle protocol 2 + torch's LONG1 magic number
_SAFE_FACTORY_MODULE = "aegis.zoo"  # sidecar factories imported without --factory
_UNSAFE_HINT = (
    "pass --unsafe-pickle only if you trust its source, or re-save it safely as TorchScript "
    "(torch.jit.save) or as safetensors weights loaded with --factory"
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
