"""PyTorch model files: TorchScript, ``torch.export`` programs (``.pt2``), pickles and state
dicts (``torch.load``) and safetensors weights. The factories that build an architecture for
weights-only files live in :mod:`aegis.io.factories`.

Unpickling executes code from the file, so it happens only with ``allow_unsafe=True``. Every
check of a zip archive reads it through :func:`aegis.io.archive.open_archive`, which sees the
bytes torch will load.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import pickletools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aegis.errors import ModelError, UnsafeFileError
from aegis.io.archive import open_archive
from aegis.io.loaded import (
    _ZIP_MAGIC,
    Dims,
    _corrupt,
    _first_tensor,
    _Loaded,
    _StaticBatch,
)

log = logging.getLogger(__name__)

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"  # pickle protocol 2 + torch's LONG1 magic number
_PICKLE_WINDOW = 1 << 20  # bytes of a file parsed (never executed) to recognise a pickle
# What torch's weights_only unpickler says when a file holds Python objects beyond tensors.
_OBJECT_REFUSALS = re.compile(
    r"Can only (?:build|create new object)|Trying to call reduce|Only persistent_load of storage"
)
_UNSAFE_HINT = (
    "pass --unsafe-pickle only if you trust its source, or re-save it safely as TorchScript "
    "(torch.jit.save) or as safetensors weights loaded with --factory"
)


# -- PyTorch formats ----------------------------------------------------------------------------
def _sniff_torch(file: Path, head: bytes) -> str:
    """``torchscript``, ``export``, ``torch-pickle`` (torch.save) or ``plain-pickle``."""
    if head.startswith(_ZIP_MAGIC):
        archive = open_archive(file, "a PyTorch zip archive")
        inner = [archive.inner(n) for n in archive.names]
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
    if (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or _is_pickle(file):
        return "plain-pickle"
    raise ModelError(
        f"{file.name} is neither a TorchScript/torch.save archive nor a pickle; re-save it with "
        "torch.jit.save, or use the extension of its real format (.onnx, .keras, .safetensors)"
    )


def _is_pickle(file: Path) -> bool:
    """Whether ``file`` is a pickle of any protocol (0 and 1 have no header): its opcodes are
    decoded and its stack checked by :mod:`pickletools`, which executes none of them."""
    try:
        with file.open("rb") as fh:
            data = fh.read(_PICKLE_WINDOW + 1)
    except OSError:
        return False
    whole = len(data) <= _PICKLE_WINDOW
    stream = io.BytesIO(data[:_PICKLE_WINDOW])
    count, end = 0, -1
    try:
        for op, _arg, pos in pickletools.genops(stream):
            count += 1
            if op.name == "STOP":
                end = (pos or 0) + 1
                break
    except Exception:
        # Only a pickle longer than the window may run out of bytes before its end.
        return not whole and count >= 2 and stream.tell() >= _PICKLE_WINDOW
    if count < 2 or (whole and end != len(data)):  # a small file must end at its STOP
        return False
    try:
        pickletools.dis(data[:end], out=_Discard())
    except Exception:  # an opcode stream no unpickler would accept
        return False
    return True


class _Discard(io.StringIO):
    """Where :func:`pickletools.dis` writes its listing: nowhere."""

    def write(self, text: str) -> int:
        return len(text)


def _load_torchscript(file: Path) -> _Loaded:
    open_archive(file, "TorchScript")
    try:
        module = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise _corrupt(file, "TorchScript", exc) from exc
    loaded = _Loaded(fmt="torchscript", module=module, default_layout="NCHW")
    if not hasattr(module, "training"):
        # torch.jit.freeze drops the attribute: the mode was fixed (eval) when it was frozen.
        module.training = False
        loaded.fresh = True
        loaded.notes["mode"] = "frozen TorchScript: eval mode fixed when it was frozen"
    return loaded


def _pt2_pickled_parts(file: Path) -> list[str]:
    """Parts of a ``.pt2`` archive that ``torch.export.load`` would unpickle unsafely, read
    through torch's own zip reader (see :mod:`aegis.io.archive`).

    torch unpickles ``use_pickle`` weights and constants and opaque objects with plain pickle, and
    retries any ``.pt`` payload (sample inputs, legacy weights) with ``weights_only=False``.
    """
    archive = open_archive(file, "a torch.export program (.pt2)")
    risky: list[str] = []
    for name in archive.names:
        inner = archive.inner(name)
        low = inner.lower()
        if low.endswith((".pt", ".pkl")):
            try:
                torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
            except Exception:
                risky.append(inner)
        elif low.startswith(("data/weights/", "data/constants/")) and low.endswith("_config.json"):
            risky += [f"{inner}:{key}" for key in _pickled_entries(archive.read(name))]
    return risky


def _pickled_entries(raw: bytes) -> list[str]:
    try:
        config = json.loads(raw.decode()).get("config", {})  # decoded as torch decodes it
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
    """The global a ``weights_only`` load refused, from torch's message: "Unsupported global:
    GLOBAL x.y was not an allowed global" or "Trying to load unsupported GLOBAL x.y whose module
    x is blocked" (torch 2.4 to 2.13)."""
    match = re.search(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)", message)
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
        if culprit is None and not _OBJECT_REFUSALS.search(str(exc)):
            raise _corrupt(file, "a torch.save file", exc) from exc
        if not allow_unsafe:
            what = f"it references {culprit}" if culprit else "objects beyond tensors"
            raise UnsafeFileError(
                f"{file.name} is a pickled object ({what}): loading it would execute code from "
                f"the file; {_UNSAFE_HINT}"
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


def _few(keys: Sequence[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:5])
    return f"{shown} (+{len(keys) - 5} more)" if len(keys) > 5 else shown
