"""The report's gallery, stored in ``results.json``: a few originals, their perturbations and
adversarial examples as small base64 PNGs, with labels, softmax confidences and norms.

The images stay at the dataset's resolution (the browser upscales them with
``image-rendering: pixelated``); inputs larger than ``MAX_SIDE`` pixels are block-averaged
down by an integer factor so that ``results.json`` stays small.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
from PIL import Image

from aegis.records import NORM_FIELDS, Records

EXAMPLES = 8
"""Examples in the gallery (successful ones first)."""

MAX_SIDE = 64
"""Largest side, in pixels, of a stored image."""


def shown_indices(rec: Records, k: int = EXAMPLES) -> np.ndarray:
    """Up to ``k`` inputs to show: successful adversarial examples first, then the others."""
    shown = np.flatnonzero(rec.success)
    if shown.size < k:
        shown = np.concatenate([shown, np.flatnonzero(~rec.success)])
    return shown[:k].astype(np.int64)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a CHW image in [0, 1] (1 or 3 channels) as an 8-bit PNG (Pillow writes it)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a CHW image with 1 or 3 channels, got shape {image.shape}")
    pixels = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    hwc = np.ascontiguousarray(np.transpose(pixels, (1, 2, 0)))
    picture = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)  # uint8: L or RGB
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def _shrink(x: np.ndarray, factor: int) -> np.ndarray:
    """Block-average NCHW images by ``factor`` (cropping the remainder)."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    h2, w2 = h // factor, w // factor
    blocks = x[:, :, : h2 * factor, : w2 * factor].reshape(n, c, h2, factor, w2, factor)
    return np.asarray(blocks.mean((3, 5)))


def _display(x: np.ndarray) -> np.ndarray:
    """Images the PNG encoder accepts: 1 or 3 channels (others show their first channel)."""
    return x if x.shape[1] in (1, 3) else x[:, :1]


def build_gallery(
    x: np.ndarray,
    x_adv: np.ndarray,
    rec: Records,
    shown: np.ndarray,
    clean_probs: np.ndarray,
    adv_probs: np.ndarray,
    bounds: tuple[float, float],
) -> dict[str, Any]:
    """The ``gallery`` section of an attack run's results.

    ``x``/``x_adv`` are the shown inputs (NCHW, in ``bounds``), ``clean_probs``/``adv_probs``
    the model's softmax outputs on them, computed once when the run was made.
    """
    lo, hi = bounds
    width = hi - lo if hi > lo else 1.0
    orig = (x - lo) / width
    adv = (x_adv - lo) / width
    delta = adv - orig
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    gain = 0.5 / peak if peak > 0 else 1.0
    side = max(x.shape[2:]) if x.ndim == 4 else 0
    factor = max(1, math.ceil(side / MAX_SIDE))
    pictures = [
        _display(_shrink(a, factor)) for a in (orig, 0.5 + gain * delta, adv) if a.ndim == 4
    ]
    examples = []
    for j, i in enumerate(shown.tolist()):
        clean_pred = int(rec.clean_pred[i])
        adv_pred = int(rec.adv_pred[i])
        examples.append(
            {
                "index": int(rec.index[i]),
                "y": int(rec.y[i]),
                "target": int(rec.target[i]),
                "clean_pred": clean_pred,
                "clean_confidence": float(clean_probs[j, clean_pred]),
                "adv_pred": adv_pred,
                "adv_confidence": float(adv_probs[j, adv_pred]),
                "true_class_confidence_adv": float(adv_probs[j, int(rec.y[i])]),
                "success": bool(rec.success[i]),
                "attacked": bool(rec.attacked[i]),
                "norms": {name: float(getattr(rec, name)[i]) for name in NORM_FIELDS},
                "original_png": png_base64(pictures[0][j]),
                "perturbation_png": png_base64(pictures[1][j]),
                "adversarial_png": png_base64(pictures[2][j]),
            }
        )
    return {
        "examples": examples,
        "perturbation_gain": gain,
        "downscale": factor,
        "confidence": "softmax of the model's outputs, computed when the run was made",
    }
