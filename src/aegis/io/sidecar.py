"""The ``model.json`` sidecar: metadata that travels with a model file.

For a model file ``path/to/net.ext`` the sidecar is ``path/to/net.json`` if it exists, else
``path/to/model.json``. Keys (all optional): ``num_classes``, ``input_shape`` ([C, H, W]),
``bounds`` ([low, high]), ``mean``, ``std``, ``layout`` (NCHW | NHWC | flat), ``factory``
("package.module:function") with ``factory_kwargs``, plus free-form provenance (dataset,
accuracy, seed, training hyper-parameters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aegis.errors import ModelError
from aegis.model import ModelInfo

METADATA_KEYS = ("num_classes", "input_shape", "bounds", "mean", "std", "layout")


def sidecar_path(model_path: Path) -> Path | None:
    for candidate in (model_path.with_suffix(".json"), model_path.parent / "model.json"):
        if candidate.is_file() and candidate != model_path:
            return candidate
    return None


def read_sidecar(model_path: Path) -> dict[str, Any]:
    path = sidecar_path(model_path)
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"sidecar {path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(data, dict):
        raise ModelError(f"sidecar {path} must hold a JSON object; fix or remove it")
    return data


def write_sidecar(model_path: Path, info: ModelInfo, **extra: Any) -> Path:
    """Write ``<model stem>.json`` beside ``model_path`` with the metadata and ``extra`` keys."""
    path = model_path.with_suffix(".json")
    payload = {**info.to_dict(), **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)
    return path
