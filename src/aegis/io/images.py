"""Image folders (one sub-folder per class) read a file at a time, for :mod:`aegis.io.data`.

Only the first ``limit`` files are ever opened. Each is decoded, optionally resized and
center-cropped with Pillow (ImageNet evaluation style: ``resize=256, center_crop=224`` scales
the shorter side to 256 with bilinear filtering, antialiased as Pillow does, then takes the
central 224x224), and written into one preallocated uint8 array, so a folder of 50,000 files
never holds more than one decoded image beside that array. The array's size is checked
against the memory budget before it is allocated.

Labels are the sorted sub-folder names' ranks, or their indices in a class-index file (JSON
``{"n01440764": 0, ...}`` or ``{"0": ["n01440764", "tench"], ...}``, CSV ``name,index``).

    >>> images = read_folder(Path("val"), limit=100, resize=256, center_crop=224)
    >>> images.x.shape  # (100, 3, 224, 224), uint8
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis.errors import ConfigError, DataError
from aegis.io import arrays

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GRAY_MODES = frozenset({"L", "1"})


@dataclass
class FolderImages:
    """The decoded images ``x`` (uint8, NCHW), labels ``y``, classes and provenance notes."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    provenance: dict[str, object] = field(default_factory=dict)


# -- class-index files ------------------------------------------------------------------------


def _as_index(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{where}: class index {value!r} is not an integer; fix the file")
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: class index {value!r} is not an integer; fix the file") from None


def _json_pairs(path: Path) -> tuple[list[tuple[str, int]], str]:
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read class-index file {path} ({exc}); fix the JSON") from exc
    if not isinstance(raw, dict):
        raise DataError(
            f"class-index file {path} must hold a JSON object ({{name: index}} or "
            '{"0": [name, label]}); fix the file'
        )
    if all(isinstance(v, list) and v and isinstance(v[0], str) for v in raw.values()):
        pairs = [(str(v[0]), _as_index(k, str(path))) for k, v in raw.items()]
        return pairs, "json index -> [name, label]"
    pairs = [(str(k), _as_index(v, f"{path} [{k!r}]")) for k, v in raw.items()]
    return pairs, "json name -> index"


def _csv_pairs(path: Path) -> tuple[list[tuple[str, int]], str]:
    try:
        with path.open(newline="", encoding="utf-8") as fp:
            rows = [
                [c.strip() for c in row] for row in csv.reader(fp) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read class-index file {path} ({exc}); fix the CSV") from exc
    pairs: list[tuple[str, int]] = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise DataError(f"{path} row {number} has no index; write rows as name,index")
        if number == 1 and not row[1].lstrip("-").isdigit():
            continue  # a header
        pairs.append((row[0], _as_index(row[1], f"{path} row {number}")))
    return pairs, "csv name,index"


def read_class_index(path: Path) -> tuple[dict[str, int], dict[str, object]]:
    """Class name -> index from a JSON or CSV file, and its provenance."""
    if not path.is_file():
        raise DataError(f"class-index file {path} does not exist; fix the --class-index path")
    suffix = path.suffix.lower()
    if suffix == ".json":
        pairs, form = _json_pairs(path)
    elif suffix == ".csv":
        pairs, form = _csv_pairs(path)
    else:
        raise DataError(f"class-index file {path} must be .json or .csv; rename or convert it")
    if not pairs:
        raise DataError(f"class-index file {path} maps no classes; add name,index entries")
    mapping: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name, index in pairs:
        if index < 0:
            raise DataError(f"{path}: class {name!r} has index {index} < 0; fix the file")
        if name in mapping:
            raise DataError(f"{path}: class {name!r} appears twice; keep one entry")
        if index in owner:
            raise DataError(
                f"{path}: classes {owner[index]!r} and {name!r} both have index {index}; "
                "give each class its own index"
            )
        mapping[name], owner[index] = index, name
    num_classes = max(owner) + 1
    prov: dict[str, object] = {
        "source": str(path),
        "format": form,
        "entries": len(mapping),
        "num_classes": num_classes,
    }
    return mapping, prov


# -- listing --------------------------------------------------------------------------------


def _classes(path: Path) -> list[str]:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"image folder {path} has no class sub-folders; put each class's images in its own "
            "sub-folder (class index = sorted folder names, or --class-index FILE)"
        )
    return classes


def _labels(
    path: Path, classes: list[str], class_index: str | Path | None
) -> tuple[dict[str, int], int, dict[str, object]]:
    """Each class folder's label, the number of classes, and the labels' provenance."""
    if class_index is None:
        return (
            {name: i for i, name in enumerate(classes)},
            len(classes),
            {"source": str(path), "how": "sorted sub-folder names"},
        )
    index_path = Path(class_index).expanduser()
    mapping, prov = read_class_index(index_path)
    missing = [name for name in classes if name not in mapping]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"class folder(s) {', '.join(map(repr, missing[:3]))}{more} of {path} are not in "
            f"the class-index file {index_path}; add them to it or remove those folders"
        )
    num_classes = int(prov["num_classes"])  # type: ignore[call-overload]
    labels = {name: mapping[name] for name in classes}
    return labels, num_classes, {"source": str(index_path), "how": "class-index file", **prov}


def _list_files(path: Path, classes: list[str], limit: int | None) -> list[tuple[Path, str]]:
    """(file, class) in class then file-name order; folders past ``limit`` files are not listed."""
    files: list[tuple[Path, str]] = []
    for name in classes:
        if limit is not None and len(files) >= limit:
            break
        found = sorted(
            p
            for p in (path / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            log.warning("class folder %s has no PNG/JPEG/BMP images", path / name)
        files.extend((p, name) for p in found)
    if not files:
        raise DataError(
            f"image folder {path} has no PNG/JPEG/BMP images in its class sub-folders; add images"
        )
    return files[:limit]


# -- decoding ---------------------------------------------------------------------------------


def check_transform(resize: int | None, center_crop: int | None) -> None:
    for flag, value in (("--resize", resize), ("--center-crop", center_crop)):
        if value is not None and (isinstance(value, bool) or int(value) < 1):
            raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}")


def resized_size(size: tuple[int, int], resize: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``resize`` and the aspect kept (as torchvision)."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    return (resize, new_long) if w <= h else (new_long, resize)


def crop_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """The central ``crop`` x ``crop`` box (left, top, right, bottom), rounded as torchvision."""
    w, h = size
    left, top = round((w - crop) / 2.0), round((h - crop) / 2.0)
    return (left, top, left + crop, top + crop)


def _transform(im: Any, p: Path, resize: int | None, center_crop: int | None) -> Any:
    from PIL import Image

    if resize is not None:
        new = resized_size(im.size, resize)
        if new != im.size:
            im = im.resize(new, Image.Resampling.BILINEAR)
    if center_crop is not None:
        if min(im.size) < center_crop:
            after = " after --resize" if resize is not None else ""
            raise DataError(
                f"{p} is {im.size[0]}x{im.size[1]}{after}, smaller than --center-crop "
                f"{center_crop}; pass a smaller --center-crop or a --resize >= it"
            )
        im = im.crop(crop_box(im.size, center_crop))
    return im


def _size_text(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_budget(path: Path, n: int, size: tuple[int, int]) -> None:
    """Refuse ``n`` images of ``size`` (w, h) whose decoded array and the float copy that
    scaling makes would exceed :func:`aegis.io.arrays.memory_budget`."""
    per_image = size[0] * size[1] * 3 * (1 + arrays.FLOAT_COPY_BYTES)
    need, budget = n * per_image, arrays.memory_budget()
    if need <= budget:
        return
    fit = max(budget // per_image, 1)
    raise DataError(
        f"image folder {path}: {n} images of {size[0]}x{size[1]} need about "
        f"{_size_text(need)} once decoded and scaled, over the memory budget of "
        f"{_size_text(budget)} (a quarter of this machine's memory); pass --limit N "
        f"(N <= {fit}) to read only the first N images"
    )


def _decode(
    path: Path, files: list[tuple[Path, str]], resize: int | None, center_crop: int | None
) -> tuple[np.ndarray, set[str], list[tuple[int, int]]]:
    """The images as one (N, H, W, 3) uint8 array (gray replicated), their modes and the
    original sizes; each file is opened once and closed before the next."""
    from PIL import Image, UnidentifiedImageError

    out: np.ndarray | None = None
    if center_crop is not None:
        check_budget(path, len(files), (center_crop, center_crop))
    modes: set[str] = set()
    sizes: list[tuple[int, int]] = []
    for i, (p, _) in enumerate(files):
        try:
            with Image.open(p) as im:
                im.load()
                modes.add(im.mode)
                sizes.append(im.size)
                target = "L" if im.mode in GRAY_MODES else "RGB"
                img = _transform(im.convert(target), p, resize, center_crop)
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {p} ({exc}); fix or remove the file") from exc
        if out is None:
            if center_crop is None:
                check_budget(path, len(files), img.size)
            out = np.empty((len(files), img.size[1], img.size[0], 3), dtype=np.uint8)
        elif img.size != (out.shape[2], out.shape[1]):
            fix = (
                "pass --center-crop too"
                if resize is not None
                else "resize all images to one size, or pass --resize/--center-crop"
            )
            after = " after --resize" if resize is not None else ""
            raise DataError(
                f"{p} is {img.size[0]}x{img.size[1]}{after} but the first image is "
                f"{out.shape[2]}x{out.shape[1]}; {fix}"
            )
        pixels = np.asarray(img, dtype=np.uint8)
        out[i] = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if out is None:
        raise DataError(f"image folder {path} has no images to read; add images")
    return out, modes, sizes


def read_folder(
    path: Path,
    *,
    limit: int | None = None,
    resize: int | None = None,
    center_crop: int | None = None,
    class_index: str | Path | None = None,
) -> FolderImages:
    """The first ``limit`` images of a class-folder tree as uint8 NCHW, with their labels:
    see the module doc. Grayscale only when every image is (``L`` / ``1``), else RGB."""
    check_transform(resize, center_crop)
    classes = _classes(path)
    labels, num_classes, label_prov = _labels(path, classes, class_index)
    files = _list_files(path, classes, limit)
    arr, modes, sizes = _decode(path, files, resize, center_crop)
    gray = modes <= GRAY_MODES
    x = np.ascontiguousarray(arr[:, None, :, :, 0]) if gray else arr.transpose(0, 3, 1, 2)
    y = np.array([labels[name] for _, name in files], dtype=np.int64)
    widths, heights = [s[0] for s in sizes], [s[1] for s in sizes]
    prov: dict[str, object] = {
        "source": str(path),
        "format": "image-folder",
        "original_dtype": "uint8",
        "original_shape": [len(files), *x.shape[1:]],
        "original_sizes": {
            "distinct": len(set(sizes)),
            "width": [min(widths), max(widths)],
            "height": [min(heights), max(heights)],
        },
        "image_modes": sorted(modes),
        "channels": "1 (all images grayscale)" if gray else "3 (converted to RGB)",
        "transform": _transform_note(resize, center_crop, (int(x.shape[3]), int(x.shape[2]))),
        "decoding": f"{len(files)} files opened one at a time into a preallocated uint8 array",
        "layout": "HWC images",
        "layout_decided_by": "image files are HWC; transposed to NCHW",
        "split": "whole folder",
        "class_names": classes,
        "class_to_index": labels,
        "labels": label_prov,
    }
    return FolderImages(x=x, y=y, num_classes=num_classes, provenance=prov)


def _transform_note(
    resize: int | None, center_crop: int | None, size: tuple[int, int]
) -> dict[str, object] | None:
    if resize is None and center_crop is None:
        return None
    steps: list[str] = []
    if resize is not None:
        steps.append(
            f"resize: shorter side to {resize}, aspect kept, Pillow BILINEAR (antialiased)"
        )
    if center_crop is not None:
        steps.append(f"center crop: {center_crop}x{center_crop}")
    return {
        "resize": resize,
        "center_crop": center_crop,
        "steps": steps,
        "library": "Pillow",
        "output_size": [size[1], size[0]],
    }
