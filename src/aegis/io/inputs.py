"""The one resolver of a workflow's inputs: the data, the model loaded for it, and the labels.

- The data is brought to the model's declared bounds (flags, else its sidecar, else [0, 1])
  while it is read, and only its first ``limit`` samples are read from a file.
- A model whose bounds are not [0, 1] is then seen on [0, 1] (``Classifier.in_unit_box``) with
  the data mapped alike, so budgets, step sizes and norms are fractions of the bounds' width.
- Data without labels may stand on the model's own clean predictions where the workflow allows
  it (an attack: success is reaching the target, or changing the prediction).

    >>> clf, ds, y = load_inputs("net.onnx", "x.npy", None, 200, {}, {"bounds": (0, 255)})
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aegis.errors import ConfigError, DataError
from aegis.io.data import Dataset, load_dataset
from aegis.model import Classifier

log = logging.getLogger(__name__)

PREDICTED = "none in the data: the model's own clean predictions stand in"
"""``data.labels`` of an unlabeled attack set."""


def as_dataset(
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray | None],
    labels: str | Path | None,
    data_options: dict[str, Any],
) -> Dataset:
    """A Dataset, a file / folder / built-in name, or ``(x, y)`` arrays (``y`` may be None)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple):
        x, y = data
        return Dataset(
            x=np.asarray(x, np.float32),
            y=None if y is None else np.asarray(y, np.int64),
            name="arrays",
            num_classes=None,
            provenance={"source": "in-memory arrays"},
        )
    return load_dataset(str(data), labels=None if labels is None else str(labels), **data_options)


def as_classifier(
    model: Classifier | str | Path, dataset: Dataset, model_options: dict[str, Any]
) -> Classifier:
    if isinstance(model, Classifier):
        return model
    from aegis.io.models import load_classifier

    options = dict(model_options)
    options.setdefault("input_shape_hint", tuple(dataset.x.shape[1:]))
    return load_classifier(str(model), **options)


def declared_bounds(
    model: Classifier | str | Path, model_options: dict[str, Any]
) -> tuple[float, float]:
    """The bounds the model will have, known before it is loaded: a Classifier's own, the
    ``bounds`` option, else its sidecar's, else [0, 1]."""
    if isinstance(model, Classifier):
        return model.units or model.bounds
    raw: Any = model_options.get("bounds")
    if raw is None:
        from aegis.io.sidecar import read_sidecar

        try:
            raw = read_sidecar(Path(model)).get("bounds")
        except (OSError, ValueError):
            raw = None  # the model loader reports a broken sidecar in its own words
    try:
        low, high = (float(v) for v in raw)
    except (TypeError, ValueError):
        return (0.0, 1.0)  # absent or malformed: the model loader decides and reports
    return (low, high) if low < high else (0.0, 1.0)


def load_inputs(
    model: Classifier | str | Path,
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray | None],
    labels: str | Path | None,
    limit: int | None,
    data_options: dict[str, Any] | None,
    model_options: dict[str, Any] | None,
    *,
    unlabeled: bool = False,
) -> tuple[Classifier, Dataset, np.ndarray]:
    """The dataset (its first ``limit`` inputs, in the model's bounds), the model loaded for it
    (seen on [0, 1]: see the module doc) and the labels checked against the model's outputs.
    With ``unlabeled``, data without labels gets the model's clean predictions as labels
    (``dataset.y`` stays None, and ``data.labels`` says so)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    options = dict(data_options or {})
    bounds = declared_bounds(model, dict(model_options or {}))
    from_file = isinstance(data, (str, Path))
    if from_file:
        options["bounds"] = bounds
        if limit is not None:
            options["limit"] = limit  # read only the first rows of the file, never all of it
    dataset = as_dataset(data, labels, options)
    if limit is not None and not from_file:
        dataset = dataset.subset(limit)
    clf = as_classifier(model, dataset, dict(model_options or {}))
    clf, dataset = to_unit_box(clf, dataset)
    if dataset.y is None and unlabeled:
        return clf, dataset, _predicted_labels(clf, dataset)
    return clf, dataset, check_compatible(clf, dataset)


def to_unit_box(clf: Classifier, dataset: Dataset) -> tuple[Classifier, Dataset]:
    """``clf`` seen on [0, 1] and ``dataset`` mapped alike (unchanged for a [0, 1] model)."""
    if clf.bounds == (0.0, 1.0):
        return clf, dataset
    lo, hi = clf.bounds
    x = dataset.x
    if x.size and (float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6):
        raise DataError(
            f"data values lie in [{float(x.min()):.4g}, {float(x.max()):.4g}] outside the "
            f"model's bounds [{lo:g}, {hi:g}]; fix --bounds, or --scale for the data"
        )
    unit = ((x.astype(np.float64) - lo) / (hi - lo)).clip(0.0, 1.0).astype(np.float32)
    prov = {**dataset.provenance, "units": f"mapped from the bounds [{lo:g}, {hi:g}] to [0, 1]"}
    return clf.in_unit_box(), replace(dataset, x=unit, provenance=prov)


def _predicted_labels(clf: Classifier, dataset: Dataset) -> np.ndarray:
    import torch

    check_compatible(clf, dataset, need_labels=False)
    with torch.no_grad():
        pred = clf.predict(torch.from_numpy(np.ascontiguousarray(dataset.x))).cpu().numpy()
    dataset.provenance["labels"] = PREDICTED
    log.warning("the data has no labels: the model's own clean predictions stand in for them")
    return pred.astype(np.int64)


def check_compatible(
    model: Classifier, dataset: Dataset, *, need_labels: bool = True
) -> np.ndarray:
    """Data and model must agree on the input shape, and the data needs labels; returns them.

    Label ranges and the input box are checked by ``engine.evaluate`` for every caller."""
    shape = tuple(dataset.x.shape[1:])
    if shape != model.input_shape:
        what = "channels" if shape[1:] == model.input_shape[1:] else "shape (C, H, W)"
        raise DataError(
            f"the data has {what} {shape if what != 'channels' else shape[0]} but the model "
            f"expects {model.input_shape if what != 'channels' else model.input_shape[0]}; "
            "pass --data-layout NCHW/NHWC if the data file was misread, else --input-shape / "
            "--layout for the model"
        )
    y = dataset.y
    if y is None:
        if not need_labels:
            return np.zeros(0, np.int64)
        raise DataError("the data has no labels; pass --labels FILE.npy")
    return y
