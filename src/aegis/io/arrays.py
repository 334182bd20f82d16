"""Reading ``.npy`` files and ``.npz`` members lazily and safely, for :mod:`aegis.io.data`.

Only the header is read before deciding anything: object (pickled) dtypes are refused before
any data is touched, the declared size is checked against the bytes present and against a
memory budget, and then only the first ``limit`` samples are read. A small compressed archive
that declares gigabytes (a zip bomb) therefore costs only what ``--limit`` asks for, and the
dtype conversion, scaling and checks that follow see only those samples.

    >>> loaded = read_npy(Path("x.npy"), limit=100)
    >>> loaded.x.shape[0], loaded.shape  # at most 100 read; the shape the file declares

The file's magic bytes are checked first, so a PNG saved as ``.npy`` or a pickle is named for
what it is; nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from aegis.errors import DataError

NPZ_KEY_PAIRS = (("x", "y"), ("X", "Y"), ("images", "labels"), ("x_test", "y_test"))
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
IMAGE_MAGICS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
)
FLOAT_COPY_BYTES = 8
"""Bytes per value of the float working copy that scaling makes (float64), on top of the
array itself: counted against the memory budget."""


@dataclass(frozen=True)
class Loaded:
    """The first samples of an array (``x``) and the ``shape`` the file declares for all of it."""

    x: np.ndarray
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def memory_budget() -> int:
    """The most bytes one array may need once loaded and converted: a quarter of this
    machine's physical memory (4 GiB where that cannot be read)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30
    return max(int(total) // 4, 1 << 20)


def _size(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# -- errors ---------------------------------------------------------------------------------


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn every way a corrupt or hostile file can fail into one DataError."""
    try:
        yield
    except DataError:
        raise
    except MemoryError as exc:
        raise DataError(
            f"{path} declares an array too large to allocate; pass --limit N to read only the "
            "first N samples, or a smaller file"
        ) from exc
    except (
        ValueError,
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


def refuse_pickle(where: str) -> DataError:
    return DataError(
        f"{where} is an object (pickled) array, which aegis refuses to load because unpickling "
        "can run code; re-save it with numeric arrays (numpy.save)"
    )


def _sniff(path: Path, suffix: str) -> None:
    """Name what the file is when its magic bytes say it is not the expected numpy file."""
    with path.open("rb") as fp:
        head = fp.read(8)
    if head.startswith(NPY_MAGIC):
        if suffix == ".npz":
            raise DataError(f"{path} is a .npy file, not an .npz archive; rename it to .npy")
        return
    if head.startswith(ZIP_MAGICS):
        if suffix == ".npy":
            raise DataError(f"{path} is an .npz archive, not a .npy file; rename it to .npz")
        return
    for magic, what in IMAGE_MAGICS:
        if head.startswith(magic):
            raise DataError(
                f"{path} is {what}, not a numpy array; put images in one sub-folder per class "
                "and pass the folder (an image-folder dataset), or save arrays with numpy.save"
            )
    if head.startswith(b"\x80"):
        raise DataError(
            f"{path} is a pickle, which aegis refuses to load because unpickling can run "
            "code; re-save it with numeric arrays (numpy.save)"
        )
    if not head:
        raise DataError(f"{path} is empty; re-export it with numpy.save / numpy.savez")
    raise DataError(
        f"{path} is not a numpy {suffix} file (it starts with {head!r}); re-export it with "
        "numpy.save / numpy.savez"
    )


# -- headers and rows -----------------------------------------------------------------------


def _read_header(fp: IO[bytes], where: str) -> _Header:
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(fp)
    else:
        raise DataError(
            f"{where} uses .npy format version {version[0]}.{version[1]}, which aegis does "
            "not read; re-save it with numeric arrays (numpy.save)"
        )
    header = _Header(tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype))
    if header.dtype.hasobject:
        raise refuse_pickle(where)
    return header


def _check_budget(where: str, header: _Header, rows: int) -> None:
    shape, dtype = header.shape, header.dtype
    per_row = math.prod(shape[1:]) * (dtype.itemsize + FLOAT_COPY_BYTES)
    need = rows * per_row
    budget = memory_budget()
    if need <= budget:
        return
    fit = max(budget // max(per_row, 1), 1)
    raise DataError(
        f"{where} declares {shape[0]} samples of shape {shape[1:]} {dtype} "
        f"({_size(header.nbytes)}); reading {rows} of them needs about {_size(need)}, over "
        f"the memory budget of {_size(budget)} (a quarter of this machine's memory); pass "
        f"--limit N (N <= {fit}) to read only the first N samples"
    )


def _read_rows(
    fp: IO[bytes], header: _Header, where: str, limit: int | None, available: int
) -> Loaded:
    """Read the first ``limit`` samples (rows of axis 0) after a header, and no more."""
    shape, dtype = header.shape, header.dtype
    if header.nbytes > available:
        raise DataError(
            f"{where} is truncated: its header declares {header.nbytes} bytes of data but only "
            f"{max(available, 0)} are present; re-export the file"
        )
    if not shape:  # a 0-d array: one value
        data = fp.read(dtype.itemsize)
        return Loaded(np.frombuffer(data, dtype).reshape(()), shape)
    n = shape[0]
    rows = n if limit is None else min(limit, n)
    whole = header.fortran and len(shape) > 1  # column-major: the first rows are not contiguous
    _check_budget(where, header, n if whole else rows)
    count = (n if whole else rows) * math.prod(shape[1:]) * dtype.itemsize
    data = fp.read(count)
    if len(data) < count:
        raise DataError(
            f"{where} is truncated: {count} bytes of data were expected but only {len(data)} "
            "could be read; re-export the file"
        )
    flat = np.frombuffer(data, dtype)
    if whole:
        return Loaded(flat.reshape(shape, order="F")[:rows], shape)
    return Loaded(flat.reshape((rows, *shape[1:])), shape)


# -- files ----------------------------------------------------------------------------------


def read_npy(path: Path, limit: int | None = None) -> Loaded:
    """The first ``limit`` samples of a ``.npy`` file (all when ``None``), read lazily."""
    with reading(path):
        _sniff(path, ".npy")
        with path.open("rb") as fp:
            header = _read_header(fp, str(path))
            available = os.fstat(fp.fileno()).st_size - fp.tell()
            return _read_rows(fp, header, str(path), limit, available)


def _read_member(zf: zipfile.ZipFile, name: str, where: str, limit: int | None) -> Loaded:
    info = zf.getinfo(name)
    with zf.open(info) as fp:
        header = _read_header(fp, where)
        return _read_rows(fp, header, where, limit, info.file_size - fp.tell())


def _choose_keys(path: Path, keys: list[str], split: str) -> tuple[str, str]:
    pairs = list(NPZ_KEY_PAIRS)
    if split == "train":
        pairs.insert(0, ("x_train", "y_train"))
    chosen = next(((kx, ky) for kx, ky in pairs if kx in keys), None)
    if chosen is not None:
        return chosen
    if keys in (["arr_0"], ["arr_0", "arr_1"]):
        return "arr_0", "arr_1"
    shown = f"{keys[:10]} (and {len(keys) - 10} more)" if len(keys) > 10 else str(keys)
    raise DataError(
        f"{path} has arrays {shown if keys else 'none'} but no inputs under x, X, images or "
        "x_test; save the inputs as x= (and labels as y=) with numpy.savez"
    )


def read_npz(
    path: Path, split: str, limit: int | None = None
) -> tuple[Loaded, Loaded | None, dict[str, object]]:
    """Inputs and labels (if the archive has them) of an ``.npz`` archive, each its first
    ``limit`` samples, read lazily from the zip members; and which keys were used."""
    with reading(path):
        _sniff(path, ".npz")
        with zipfile.ZipFile(path) as zf:
            members = {name.removesuffix(".npy"): name for name in zf.namelist()}
            keys = list(members)
            kx, ky = _choose_keys(path, keys, split)
            x = _read_member(zf, members[kx], f"{path}[{kx!r}]", limit)
            y = _read_member(zf, members[ky], f"{path}[{ky!r}]", limit) if ky in members else None
    info: dict[str, object] = {
        "npz_keys": keys,
        "x_key": kx,
        "y_key": ky if y is not None else None,
    }
    return x, y, info
