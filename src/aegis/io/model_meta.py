"""Resolve a model's metadata for :func:`aegis.io.models.load_classifier`.

Precedence: explicit keyword (a CLI flag) > sidecar (``model.json``) > inferred from the file >
default; each resolver also says where its value came from, for ``Classifier.provenance``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aegis import normalization
from aegis.errors import ConfigError, ModelError
from aegis.io.loaded import Dims, _Loaded
from aegis.model import LAYOUTS, ModelInfo


class ModelInput(NamedTuple):
    """What the model takes: its layout and the (C, H, W) the attacks see."""

    layout: str
    shape: tuple[int, int, int]


def resolve_input(
    file: Path,
    loaded: _Loaded,
    sidecar: Mapping[str, Any],
    layout: str | None,
    input_shape: Sequence[int] | str | None,
    hint: Sequence[int] | None,
    provenance: dict[str, str],
) -> ModelInput:
    """The layout the model expects and the (C, H, W) the attacks see, checked against the
    shape the file declares; records where each came from in ``provenance``."""
    data_shape = _parse_hint(hint)
    chosen_layout, layout_src = _resolve_layout(file, layout, sidecar, loaded, data_shape)
    shape, shape_src = _resolve_shape(file, input_shape, sidecar, loaded, chosen_layout, data_shape)
    _check_against_file(file, chosen_layout, shape, shape_src, loaded.dims)
    provenance["layout"] = layout_src
    provenance["input_shape"] = shape_src
    return ModelInput(chosen_layout, shape)


def describe(
    sidecar: Mapping[str, Any],
    loaded: _Loaded,
    provenance: dict[str, str],
    n_classes: int,
    inputs: ModelInput,
    *,
    bounds: Sequence[float] | None,
    mean: Sequence[float] | float | None,
    std: Sequence[float] | float | None,
) -> ModelInfo:
    """The :class:`ModelInfo` once the classes and the inputs are known: resolves the
    bounds and the normalization, and completes ``provenance`` with them and the loader's
    notes."""
    box, box_src = _resolve_floats("bounds", bounds, sidecar, length=2)
    mu, mu_src = _resolve_floats("mean", mean, sidecar)
    sigma, sigma_src = _resolve_floats("std", std, sidecar)
    provenance["bounds"] = box_src if box is not None else "default: (0, 1)"
    provenance["mean"] = mu_src if mu is not None else "default: none"
    provenance["std"] = sigma_src if sigma is not None else "default: none"
    provenance.update(loaded.notes)
    return ModelInfo(
        num_classes=n_classes,
        input_shape=inputs.shape,
        bounds=(box[0], box[1]) if box is not None else (0.0, 1.0),
        mean=mu,
        std=sigma,
        layout=inputs.layout,
    )


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


def resolve_num_classes(
    file: Path,
    num_classes: int | None,
    sidecar: Mapping[str, Any],
    width: int,
    provenance: dict[str, str],
) -> int:
    """The number of classes: ``width`` (the model's output width) unless a flag or the
    sidecar gives one, which must agree with it; records where it came from in ``provenance``."""
    picked = _pick("num_classes", num_classes, sidecar)
    if picked is None:
        provenance["num_classes"] = "inferred: output width of a forward pass"
        return width
    value, source = picked
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"num_classes ({source}) must be an integer, got {value!r}")
    if int(value) != width:
        raise ModelError(
            f"{_source_text('num_classes', source, value)} contradicts {file.name}, which "
            f"outputs {width} scores; drop or fix it"
        )
    provenance["num_classes"] = source
    return int(value)


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
