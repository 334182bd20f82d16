"""From raw arrays to a :class:`~aegis.io.data.Dataset`'s conventions: NCHW layout, float32
values scaled into [0, 1], int64 labels; every refusal is one DataError naming the fix.

The messages name the CLI options: ``--data-layout`` (the data's layout; ``--layout`` is the
model's), ``--input-shape``, ``--scale`` and ``--labels``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aegis.errors import DataError
from aegis.io.arrays import Loaded


def to_nchw(
    x: np.ndarray,
    layout: str | None,
    input_shape: tuple[int, int, int] | None,
    path: Path,
    declared: tuple[int, ...],
) -> tuple[np.ndarray, str, str]:
    """Return (NCHW array, layout name, how it was decided); ``declared`` is the file's shape
    (``x`` may be its first samples only), used in messages."""
    shape = declared
    if x.ndim == 2:
        return _flat_to_nchw(x, layout, input_shape, path, shape)
    if x.ndim == 3:
        if layout == "flat":
            raise DataError(
                f"{path} is 3-D {shape} but --data-layout flat needs 2-D (n, features) data"
            )
        return x[:, None, :, :], "NHW", "3-D (n, H, W): grayscale, channel axis added"
    if x.ndim != 4:
        raise DataError(
            f"{path} has shape {shape}; expected (n, H, W), (n, C, H, W), (n, H, W, C) or "
            "(n, features)"
        )
    if layout == "flat":
        raise DataError(
            f"{path} is 4-D {shape} but --data-layout flat needs 2-D (n, features) data"
        )
    if layout == "NCHW":
        return x, "NCHW", "flag --layout"
    if layout == "NHWC":
        return x.transpose(0, 3, 1, 2), "NHWC", "flag --layout"
    if input_shape is not None:
        c, h, w = input_shape
        if shape[1:] == (c, h, w):
            return x, "NCHW", "matches --input-shape as (C, H, W)"
        if shape[1:] == (h, w, c):
            return x.transpose(0, 3, 1, 2), "NHWC", "matches --input-shape as (H, W, C)"
        raise DataError(
            f"data samples have shape {shape[1:]}, which is neither {input_shape} (NCHW) nor "
            f"{(h, w, c)} (NHWC); fix --input-shape"
        )
    channel_like = (1, 3, 4)
    first = shape[1] in channel_like
    last = shape[3] in channel_like and shape[1] > 4 and shape[2] > 4
    if first and not last:
        return x, "NCHW", f"auto: axis 1 has {shape[1]} (channels), so NCHW"
    if last and not first:
        return (
            x.transpose(0, 3, 1, 2),
            "NHWC",
            f"auto: last axis has {shape[3]} (channels) and H, W > 4, so NHWC",
        )
    raise DataError(
        f"cannot tell the layout of {path} with shape {shape}; pass --data-layout NCHW or "
        "--data-layout NHWC"
    )


def _flat_to_nchw(
    x: np.ndarray,
    layout: str | None,
    input_shape: tuple[int, int, int] | None,
    path: Path,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, str, str]:
    """2-D (n, features) data: unflattened by --input-shape, or as a square grayscale image."""
    if layout in ("NCHW", "NHWC"):
        raise DataError(
            f"{path} is 2-D {shape} but --data-layout {layout} needs 4-D data; use "
            "--data-layout flat with --input-shape C,H,W"
        )
    d = shape[1]
    if input_shape is not None:
        c, h, w = input_shape
        if c * h * w != d:
            raise DataError(
                f"flat data has {d} features but --input-shape {c},{h},{w} needs {c * h * w}; "
                "fix --input-shape"
            )
        out = x.reshape(-1, h, w, c).transpose(0, 3, 1, 2)
        return (
            out,
            "flat",
            f"flat (n, {d}) unflattened in HWC order to {c}x{h}x{w} by --input-shape",
        )
    side = math.isqrt(d)
    if side * side != d or d == 0:
        raise DataError(
            f"flat data has {d} features, not a square grayscale image; pass "
            "--input-shape C,H,W (flattened in HWC order)"
        )
    out = x.reshape(-1, 1, side, side)
    return out, "flat", f"inferred: {d} features is a square, assumed 1x{side}x{side} grayscale"


def check_finite(x: np.ndarray, what: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{what} contains {bad} NaN or inf values; clean or drop those samples")


def scale_values(
    x: np.ndarray, scale: str, what: str, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[np.ndarray, str, float]:
    """Return (float32 values in the model's ``bounds``, how they were brought there, the
    divisor of 0–255 pixels: 255, else 1).

    0–255 pixels (uint8, or whole numbers up to 255 that do not fit the bounds) are mapped
    linearly onto the bounds: kept as they are for a 0–255 model, divided by 255 for [0, 1].
    Values that already lie within the bounds are kept. Anything else is an error naming both
    ranges."""
    if x.dtype == np.bool_:
        x = x.astype(np.float32)  # 0/1 masks are already in [0, 1]
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(
            f"{what} has dtype {x.dtype}; expected integer or floating-point pixel values"
        )
    check_finite(x, what)
    lo, hi = float(x.min()), float(x.max())
    low, high = bounds
    box = f"[{low:g}, {high:g}]"
    if scale == "none":
        out = x.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{what} has values beyond float32 range; rescale the data")
        if lo < low - 1e-6 or hi > high + 1e-6:
            raise DataError(
                f"{what} has values in [{lo:.4g}, {hi:.4g}], outside the model's bounds {box} "
                "(--scale none keeps them); fix --bounds, or pass --scale 255 for 0-255 pixels"
            )
        return out, "none: values kept as given", 1.0
    if scale == "255":
        if lo < 0 or hi > 255:
            raise DataError(
                f"{what} has values in [{lo:.4g}, {hi:.4g}], so they are not 0-255 pixels; "
                f"use --scale none for values already in the model's bounds {box}"
            )
        return _pixels(x, bounds), f"flag: 0-255 pixels mapped onto the bounds {box}", 255.0
    if x.dtype == np.uint8:
        return _pixels(x, bounds), f"auto: uint8 0-255 pixels mapped onto the bounds {box}", 255.0
    if lo >= low and hi <= high:
        return x.astype(np.float32), f"auto: values already within the bounds {box}, kept", 1.0
    integral = bool(np.all(np.floor(x) == x)) if np.issubdtype(x.dtype, np.floating) else True
    if lo >= 0 and hi <= 255 and integral:
        how = f"auto: whole numbers in 0-255, taken as pixels and mapped onto the bounds {box}"
        return _pixels(x, bounds), how, 255.0
    if lo >= 0 and hi <= 255:
        raise DataError(
            f"{what} has values in [{lo:.4g}, {hi:.4g}]: 0-255 pixel values that are not whole "
            f"numbers; pass --scale 255 to map them onto the model's bounds {box} (or --bounds "
            "0,255 for a model that takes 0-255)"
        )
    raise DataError(
        f"{what} has values in [{lo:.4g}, {hi:.4g}], which fit neither the model's bounds "
        f"{box} nor 0-255 pixels; give the model's real --bounds with --scale none, or rescale "
        "the data"
    )


def _pixels(x: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """0–255 pixels mapped linearly onto ``bounds`` (exact for [0, 1] and 0–255)."""
    low, high = bounds
    if (low, high) == (0.0, 255.0):
        return x.astype(np.float32)
    unit = x.astype(np.float64) / 255.0
    return (unit if (low, high) == (0.0, 1.0) else low + unit * (high - low)).astype(np.float32)


def check_input_shape(x: np.ndarray, input_shape: tuple[int, int, int] | None, layout: str) -> None:
    if input_shape is None:
        return
    got = tuple(int(s) for s in x.shape[1:])
    if got != tuple(int(v) for v in input_shape):
        raise DataError(
            f"data samples are {got} (C, H, W) after reading them as {layout}, but "
            f"--input-shape says {tuple(input_shape)}; fix --input-shape or --data-layout"
        )


def labels_from(
    labels: Loaded | None, n: int, source: str
) -> tuple[np.ndarray | None, int | None, dict[str, object]]:
    """Validate labels (the first samples of the ``source`` file or key, whose declared
    length must be the data's declared ``n``); return (int64 labels, number of classes,
    notes for the provenance)."""
    if labels is None:
        return None, None, {}
    y, declared = labels.x, labels.shape
    notes: dict[str, object] = {"original_dtype": str(y.dtype), "original_shape": list(declared)}
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        kind = " (text)" if y.dtype.kind in "US" else ""
        raise DataError(
            f"labels in {source} have dtype {y.dtype}{kind}; expected integer class indices, "
            "map the class names to 0..k-1 and save them with numpy.save"
        )
    check_finite(y, f"labels in {source}")
    k_from_onehot: int | None = None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] >= 2:
        k_from_onehot = int(y.shape[1])
        y = y.argmax(axis=1)
        notes["one_hot"] = f"2-D labels of width {k_from_onehot} (one-hot) → argmax"
    if y.ndim != 1:
        raise DataError(
            f"labels in {source} have shape {declared}; expected 1-D class indices or 2-D one-hot"
        )
    if declared[0] != n:
        raise DataError(
            f"labels in {source} have {declared[0]} entries but the data has {n} samples; pass "
            "the labels that belong to this data"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.floor(y) == y):
        raise DataError("labels have non-integral values; pass integer class indices")
    if y.size and float(y.min()) < 0:
        raise DataError(f"labels must be >= 0, got {y.min():g}; remap the classes to 0..k-1")
    if y.size and float(y.max()) > np.iinfo(np.int64).max / 2:
        raise DataError(f"labels are too large (max {y.max():g}); remap the classes to 0..k-1")
    out = y.astype(np.int64)
    if k_from_onehot is not None:
        k = k_from_onehot
        notes["num_classes_from"] = "one-hot width"
    else:
        k = int(out.max()) + 1 if out.size else 0
        notes["num_classes_from"] = "max label + 1"
    return out, k, notes
