"""Per-epoch checkpoints of the training loop: written atomically, read back only when they
belong to the same hyper-parameters (tensors and primitive types only, ``weights_only=True``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def params_hash(params: dict[str, Any]) -> str:
    """The digest of a run's hyper-parameters that ties a checkpoint to its run."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write the end-of-epoch state (tensors and primitive types only)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, digest: str) -> dict[str, Any] | None:
    """The checkpoint's state if it belongs to these hyper-parameters, else ``None``."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        # A truncated file, a foreign one, or one holding objects other than tensors and
        # primitive types (refused by weights_only): start over, and say so.
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        log.warning("ignoring checkpoint %s of another format; training from scratch", path)
        return None
    if state.get("params_hash") != digest:
        log.warning(
            "ignoring checkpoint %s: it was written with other hyper-parameters; training "
            "from scratch (it is overwritten after the first epoch)",
            path,
        )
        return None
    return state
