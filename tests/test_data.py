"""Dataset loading: every loader path, layout detection, scaling, and every bad input."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aegis.errors import ConfigError, DataError
from aegis.io.data import Dataset, list_datasets, load_dataset

RNG = np.random.default_rng(0)


def _save(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


# -- built-ins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "sizes"),
    [("mnist", (1, 28, 28), (4000, 1000, 5000)), ("digits", (1, 8, 8), (1437, 360, 1797))],
)
def test_builtin_sizes_split_and_scaling(
    name: str, shape: tuple[int, int, int], sizes: tuple[int, int, int]
) -> None:
    train, test, every = (load_dataset(name, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == sizes
    for ds in (train, test, every):
        assert ds.x.dtype == np.float32 and ds.x.shape[1:] == shape
        assert ds.y is not None and ds.y.dtype == np.int64
        assert ds.num_classes == 10
        assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    # The split is a fixed seeded permutation: reproducible, disjoint, and covering "all".
    again = load_dataset(name, split="test")
    assert np.array_equal(again.x, test.x) and np.array_equal(again.y, test.y)  # type: ignore[arg-type]
    assert np.array_equal(every.x[: sizes[0]], train.x)
    assert np.array_equal(every.x[sizes[0] :], test.x)
    assert set(np.unique(test.y)) == set(range(10))  # shuffled, not class-sorted
    assert test.provenance["split"] == "test"
    assert "seed 0" in str(test.provenance["split_rule"])


def test_digits_scaled_from_16() -> None:
    ds = load_dataset("digits", split="all")
    assert ds.provenance["scale_divisor"] == 16.0
    assert np.allclose(ds.x * 16, np.round(ds.x * 16))


def test_builtin_rejects_labels_and_checks_input_shape() -> None:
    with pytest.raises(ConfigError, match="drop --labels"):
        load_dataset("digits", labels="y.npy")
    with pytest.raises(DataError, match="--input-shape"):
        load_dataset("digits", input_shape=(1, 28, 28))
    assert load_dataset("digits", input_shape=(1, 8, 8)).input_shape == (1, 8, 8)


def test_list_datasets() -> None:
    info = {d["name"]: d for d in list_datasets()}
    assert set(info) == {"mnist", "digits"}
    assert info["mnist"]["splits"] == {"train": 4000, "test": 1000, "all": 5000}
    assert info["digits"]["shape"] == [1, 8, 8]
    json.dumps(list_datasets())


def test_dataset_helpers() -> None:
    ds = load_dataset("digits", limit=10)
    assert len(ds) == 10 and ds.provenance["limit"] == 10
    sub = ds.subset(3)
    assert len(sub) == 3 and np.array_equal(sub.x, ds.x[:3])
    x, y = sub.tensors()
    assert x.dtype == torch.float32 and x.shape == (3, 1, 8, 8)
    assert y is not None and y.dtype == torch.int64
    d = ds.to_dict()
    json.dumps(d)
    assert d["n"] == 10 and d["input_shape"] == [1, 8, 8] and d["labeled"] is True
    with pytest.raises(ConfigError):
        ds.subset(-1)
    unlabeled = Dataset(x=ds.x, y=None, name="u", num_classes=None)
    assert unlabeled.tensors()[1] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "val"}, "split must be one of"),
        ({"scale": "16"}, "scale must be one of"),
        ({"layout": "CHW"}, "layout must be one of"),
        ({"limit": 0}, "limit must be >= 1"),
        ({"input_shape": (1, 8)}, "input_shape must be"),
    ],
)
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dataset("digits", **kwargs)  # type: ignore[arg-type]


def test_unknown_spec_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a built-in"):
        load_dataset("cifar100")
    bad = tmp_path / "data.csv"
    bad.write_text("1,2,3")
    with pytest.raises(DataError, match="unsupported suffix"):
        load_dataset(str(bad))


# -- .npy: layouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected", "layout"),
    [
        ((5, 28, 28), (1, 28, 28), "NHW"),
        ((5, 1, 28, 28), (1, 28, 28), "NCHW"),
        ((5, 3, 32, 32), (3, 32, 32), "NCHW"),
        ((5, 32, 32, 3), (3, 32, 32), "NHWC"),
        ((5, 28, 28, 1), (1, 28, 28), "NHWC"),
        ((5, 10, 12, 4), (4, 10, 12), "NHWC"),
        ((5, 784), (1, 28, 28), "flat"),
    ],
)
def test_layout_detection(
    tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, int, int], layout: str
) -> None:
    arr = RNG.random(shape).astype(np.float32)
    ds = load_dataset(str(_save(tmp_path / "x.npy", arr)))
    assert ds.input_shape == expected
    assert ds.provenance["layout"] == layout
    assert ds.provenance["original_shape"] == list(shape)
    assert ds.y is None and ds.num_classes is None
    if layout == "NHWC":
        assert np.array_equal(ds.x, arr.transpose(0, 3, 1, 2))
    if layout == "flat":
        assert "inferred" in str(ds.provenance["layout_decided_by"])


def test_flat_with_input_shape_unflattens_hwc(tmp_path: Path) -> None:
    nhwc = RNG.random((4, 5, 6, 3)).astype(np.float32)
    path = _save(tmp_path / "flat.npy", nhwc.reshape(4, -1))
    ds = load_dataset(str(path), input_shape=(3, 5, 6))
    assert np.array_equal(ds.x, nhwc.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match="--input-shape 3,4,4 needs 48"):
        load_dataset(str(path), input_shape=(3, 4, 4))


def test_flat_not_square_needs_input_shape(tmp_path: Path) -> None:
    path = _save(tmp_path / "flat.npy", RNG.random((4, 30)))
    with pytest.raises(DataError, match="--input-shape C,H,W"):
        load_dataset(str(path))


@pytest.mark.parametrize("shape", [(4, 2, 8, 8), (4, 5, 5, 5), (4, 8, 8, 2)])
def test_ambiguous_layout_asks_for_flag(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _save(tmp_path / "x.npy", RNG.random(shape).astype(np.float32))
    with pytest.raises(DataError, match="--data-layout NCHW"):
        load_dataset(str(path))
    ds = load_dataset(str(path), layout="NHWC")
    assert ds.input_shape == (shape[3], shape[1], shape[2])
    assert ds.provenance["layout_decided_by"] == "flag --layout"


def test_explicit_layout_wins_and_input_shape_decides(tmp_path: Path) -> None:
    arr = RNG.random((4, 3, 8, 3)).astype(np.float32)  # auto: NCHW (axis 1 is 3)
    path = _save(tmp_path / "x.npy", arr)
    assert load_dataset(str(path)).input_shape == (3, 8, 3)
    assert load_dataset(str(path), layout="NHWC").input_shape == (3, 3, 8)
    square = _save(tmp_path / "s.npy", RNG.random((4, 6, 6, 6)).astype(np.float32))
    ds = load_dataset(str(square), input_shape=(6, 6, 6))
    assert ds.provenance["layout"] == "NCHW"
    with pytest.raises(DataError, match="fix --input-shape"):
        load_dataset(str(square), input_shape=(3, 6, 6))
    with pytest.raises(DataError, match="--input-shape"):
        load_dataset(str(path), layout="NCHW", input_shape=(3, 3, 8))


@pytest.mark.parametrize(
    ("shape", "layout", "message"),
    [
        ((4, 64), "NCHW", "needs 4-D data"),
        ((4, 8, 8), "flat", "needs 2-D"),
        ((4, 1, 8, 8), "flat", "needs 2-D"),
        ((4,), None, "expected"),
        ((2, 1, 1, 8, 8), None, "expected"),
    ],
)
def test_layout_errors(
    tmp_path: Path, shape: tuple[int, ...], layout: str | None, message: str
) -> None:
    path = _save(tmp_path / "x.npy", RNG.random(shape).astype(np.float32))
    with pytest.raises(DataError, match=message):
        load_dataset(str(path), layout=layout)


# -- .npy: scaling and values ---------------------------------------------------------------


def test_uint8_scaled(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    ds = load_dataset(str(_save(tmp_path / "x.npy", arr)))
    assert np.allclose(ds.x[:, 0], arr / 255.0)
    assert "uint8" in str(ds.provenance["scaling"]) and ds.provenance["scale_divisor"] == 255.0
    assert ds.provenance["original_dtype"] == "uint8"


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.int16, np.float32])
def test_integral_values_up_to_255_scaled(tmp_path: Path, dtype: type) -> None:
    arr = RNG.integers(0, 256, (6, 8, 8)).astype(dtype)
    arr[0, 0, 0] = 255
    ds = load_dataset(str(_save(tmp_path / "x.npy", arr)))
    assert ds.x.max() == 1.0
    assert "whole numbers in 0-255" in str(ds.provenance["scaling"])


def test_unit_range_kept_and_scale_flags(tmp_path: Path) -> None:
    arr = RNG.random((6, 8, 8))
    ds = load_dataset(str(_save(tmp_path / "x.npy", arr)))
    assert np.allclose(ds.x[:, 0], arr) and "kept" in str(ds.provenance["scaling"])
    wide = _save(tmp_path / "w.npy", (RNG.random((6, 8, 8)) * 4 - 2).astype(np.float32))
    with pytest.raises(DataError, match="--scale none"):
        load_dataset(str(wide))
    with pytest.raises(DataError, match=r"outside the model's bounds \[0, 1\]"):
        load_dataset(str(wide), scale="none")  # kept as given, so it must fit the bounds
    kept = load_dataset(str(wide), scale="none", bounds=(-2.0, 2.0))
    assert kept.x.min() < 0 and "none" in str(kept.provenance["scaling"])
    auto = load_dataset(str(wide), bounds=(-2.0, 2.0))  # within the bounds: kept
    assert np.array_equal(auto.x, kept.x) and "within the bounds" in str(auto.provenance["scaling"])
    ints = _save(tmp_path / "i.npy", np.full((3, 8, 8), 51, dtype=np.int32))
    assert np.allclose(load_dataset(str(ints), scale="255").x, 0.2)
    with pytest.raises(DataError, match="--scale none"):
        load_dataset(str(wide), scale="255")


@pytest.mark.parametrize("value", [300.0, 1.5, -1.0])
def test_out_of_range_values(tmp_path: Path, value: float) -> None:
    arr = np.zeros((3, 8, 8), dtype=np.float32)
    arr[0, 0, 0] = value
    with pytest.raises(DataError, match=r"--scale none|--scale 255") as info:
        load_dataset(str(_save(tmp_path / "x.npy", arr)))
    assert "[0, 1]" in str(info.value) and "--bounds" in str(info.value)  # both ranges, the fix


def test_uint8_data_for_a_0_255_model_stays_0_255(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, (5, 8, 8)).astype(np.uint8)
    ds = load_dataset(str(_save(tmp_path / "x.npy", arr)), bounds=(0.0, 255.0))
    assert np.array_equal(ds.x[:, 0], arr.astype(np.float32))  # exact, not 255·(k/255)
    assert ds.provenance["original_range"] == [float(arr.min()), float(arr.max())]
    minus = load_dataset(str(_save(tmp_path / "y.npy", arr)), bounds=(-1.0, 1.0))
    np.testing.assert_allclose(minus.x[:, 0], arr / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path: Path, bad: float) -> None:
    arr = np.zeros((3, 8, 8), dtype=np.float32)
    arr[1, 2, 3] = bad
    with pytest.raises(DataError, match="NaN or inf"):
        load_dataset(str(_save(tmp_path / "x.npy", arr)))
    with pytest.raises(DataError, match="NaN or inf"):
        load_dataset(str(tmp_path / "x.npy"), scale="none")


@pytest.mark.parametrize("shape", [(0, 8, 8), (0, 64), (3, 0)])
def test_empty_data(tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match="no samples"):
        load_dataset(str(_save(tmp_path / "x.npy", np.zeros(shape, np.float32))))


def test_unsupported_dtypes(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.npy", np.zeros((3, 8, 8), dtype=np.complex64))
    with pytest.raises(DataError, match="dtype complex64"):
        load_dataset(str(path))
    path = _save(tmp_path / "s.npy", np.full((3, 8, 8), "a"))
    with pytest.raises(DataError, match="dtype"):
        load_dataset(str(path))


def test_bool_data_allowed(tmp_path: Path) -> None:
    ds = load_dataset(str(_save(tmp_path / "b.npy", RNG.random((3, 8, 8)) > 0.5)))
    assert set(np.unique(ds.x)) <= {0.0, 1.0}


# -- .npy: pickles and corrupt files --------------------------------------------------------


def test_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refuses"):
        load_dataset(str(path))


def test_pickle_file_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "p.npy"
    path.write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    with pytest.raises(DataError, match="refuses"):
        load_dataset(str(path))


def test_truncated_npy(tmp_path: Path) -> None:
    path = _save(tmp_path / "t.npy", RNG.random((10, 8, 8)))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(str(path))


def test_huge_header_is_a_data_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    path = tmp_path / "h.npy"
    path.write_bytes(buf.getvalue() + b"\0" * 64)
    with pytest.raises(DataError, match="truncated"):
        load_dataset(str(path))


def test_npz_named_npy(tmp_path: Path) -> None:
    path = tmp_path / "z.npy"
    with path.open("wb") as fh:
        np.savez(fh, x=np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match=r"rename it to \.npz"):
        load_dataset(str(path))


# -- labels ---------------------------------------------------------------------------------


def test_sibling_labels_detected(tmp_path: Path) -> None:
    x = _save(tmp_path / "images.npy", RNG.random((6, 8, 8)))
    _save(tmp_path / "images_labels.npy", np.arange(6) % 3)
    ds = load_dataset(str(x))
    assert ds.y is not None and list(ds.y) == [0, 1, 2, 0, 1, 2] and ds.num_classes == 3
    labels = ds.provenance["labels"]
    assert isinstance(labels, dict) and labels["how"] == "auto-detected sibling file"
    assert str(labels["source"]).endswith("images_labels.npy")


def test_labels_npy_sibling_and_explicit_flag(tmp_path: Path) -> None:
    x = _save(tmp_path / "x.npy", RNG.random((4, 8, 8)))
    _save(tmp_path / "labels.npy", np.array([1, 1, 0, 0]))
    assert list(load_dataset(str(x)).y) == [1, 1, 0, 0]  # type: ignore[arg-type]
    other = _save(tmp_path / "other.npy", np.array([3, 2, 1, 0]))
    ds = load_dataset(str(x), labels=str(other))
    assert list(ds.y) == [3, 2, 1, 0] and ds.num_classes == 4  # type: ignore[arg-type]
    assert ds.provenance["labels"]["how"] == "flag --labels"  # type: ignore[index]


def test_one_hot_and_float_labels(tmp_path: Path) -> None:
    x = _save(tmp_path / "x.npy", RNG.random((4, 8, 8)))
    onehot = _save(tmp_path / "oh.npy", np.eye(5)[[4, 0, 2, 1]])
    ds = load_dataset(str(x), labels=str(onehot))
    assert list(ds.y) == [4, 0, 2, 1] and ds.num_classes == 5  # type: ignore[arg-type]
    assert "one-hot" in str(ds.provenance["labels"])
    col = _save(tmp_path / "col.npy", np.array([[1.0], [0.0], [2.0], [2.0]]))
    ds = load_dataset(str(x), labels=str(col))
    assert ds.y is not None and ds.y.dtype == np.int64 and list(ds.y) == [1, 0, 2, 2]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 2]), "3 entries but the data has 4 samples"),
        (np.array([0, 1, -1, 2]), "must be >= 0"),
        (np.array([0.5, 1, 1, 2]), "non-integral"),
        (np.array([0, np.nan, 1, 2]), "NaN or inf"),
        (np.zeros((4, 2, 2)), "expected 1-D"),
        (np.array(["a", "b", "c", "d"]), "integer class indices"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: np.ndarray, message: str) -> None:
    x = _save(tmp_path / "x.npy", RNG.random((4, 8, 8)))
    y = _save(tmp_path / "y.npy", labels)
    with pytest.raises(DataError, match=message):
        load_dataset(str(x), labels=str(y))


def test_labels_file_problems(tmp_path: Path) -> None:
    x = _save(tmp_path / "x.npy", RNG.random((4, 8, 8)))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(x), labels=str(tmp_path / "missing.npy"))
    txt = tmp_path / "y.txt"
    txt.write_text("0\n1\n")
    with pytest.raises(DataError, match=r"must be a \.npy"):
        load_dataset(str(x), labels=str(txt))
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([None] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refuses"):
        load_dataset(str(x), labels=str(obj))


# -- .npz -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kx", "ky"),
    [("x", "y"), ("X", "Y"), ("images", "labels"), ("x_test", "y_test"), ("arr_0", "arr_1")],
)
def test_npz_keys(tmp_path: Path, kx: str, ky: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **{kx: RNG.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8), ky: np.arange(5)})
    ds = load_dataset(str(path))
    assert ds.input_shape == (1, 28, 28) and ds.provenance["layout"] == "NHWC"
    assert list(ds.y) == [0, 1, 2, 3, 4]  # type: ignore[arg-type]
    assert ds.provenance["x_key"] == kx and ds.provenance["format"] == "npz"


def test_npz_train_split_and_missing_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(
        path,
        x_train=np.zeros((3, 8, 8)),
        y_train=np.arange(3),
        x_test=np.ones((2, 8, 8)),
        y_test=np.arange(2),
    )
    assert len(load_dataset(str(path))) == 2
    assert len(load_dataset(str(path), split="train")) == 3
    only_x = tmp_path / "o.npz"
    np.savez(only_x, x=np.zeros((3, 8, 8)))
    ds = load_dataset(str(only_x))
    assert ds.y is None
    y = _save(tmp_path / "y.npy", np.array([2, 1, 0]))
    assert list(load_dataset(str(only_x), labels=str(y)).y) == [2, 1, 0]  # type: ignore[arg-type]


def test_npz_unknown_keys_listed(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, data=np.zeros((3, 8, 8)), target=np.arange(3))
    with pytest.raises(DataError, match=r"\['data', 'target'\].*x="):
        load_dataset(str(path))


def test_npz_object_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "o.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="refuses"):
        load_dataset(str(path))
    good = tmp_path / "g.npz"
    np.savez(good, x=np.zeros((3, 8, 8)))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:150])
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(str(cut))
    npy = _save(tmp_path / "plain.npy", np.zeros((3, 8, 8)))
    renamed = tmp_path / "plain.npz"
    renamed.write_bytes(npy.read_bytes())
    with pytest.raises(DataError, match=r"rename it to \.npy"):
        load_dataset(str(renamed))


# -- image folders --------------------------------------------------------------------------


def _png(path: Path, mode: str, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, int, int] = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_image_folder_grayscale(tmp_path: Path) -> None:
    for cls, value in (("cat", 10), ("ant", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", "L", (6, 4), value)
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    ds = load_dataset(str(tmp_path))
    assert ds.x.shape == (6, 1, 4, 6) and ds.x.dtype == np.float32
    assert ds.provenance["class_names"] == ["ant", "cat"] and ds.num_classes == 2
    assert list(ds.y) == [0, 0, 0, 1, 1, 1]  # type: ignore[arg-type]
    assert np.allclose(ds.x[0], 200 / 255) and np.allclose(ds.x[3], 10 / 255)
    assert "uint8" in str(ds.provenance["scaling"])


def test_image_folder_rgb_when_any_color(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", "L", (5, 5), 100)
    _png(tmp_path / "b" / "0.png", "RGB", (5, 5), 100)
    _png(tmp_path / "b" / "1.bmp", "RGB", (5, 5), 50)
    ds = load_dataset(str(tmp_path), input_shape=(3, 5, 5))
    assert ds.x.shape == (3, 3, 5, 5)
    assert np.allclose(ds.x[0], 100 / 255)  # gray replicated over channels
    assert np.allclose(ds.x[1, 2], 155 / 255)


def test_image_folder_errors(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", "L", (5, 5), 1)
    _png(tmp_path / "b" / "1.png", "L", (6, 5), 1)
    with pytest.raises(DataError, match=r"1\.png is 6x5 but the first image is 5x5"):
        load_dataset(str(tmp_path))
    with pytest.raises(ConfigError, match="sub-folder names"):
        load_dataset(str(tmp_path), labels="y.npy")
    flat = tmp_path / "flat"
    _png(flat / "x.png", "L", (5, 5), 1)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(str(flat))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no PNG/JPEG/BMP"):
        load_dataset(str(empty))
    broken = tmp_path / "broken"
    _png(broken / "a" / "0.png", "L", (5, 5), 1)
    (broken / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"1\.png"):
        load_dataset(str(broken))


# -- fuzz: any bytes → a Dataset or a DataError, never another exception --------------------


def _load_or_data_error(path: Path) -> None:
    try:
        ds = load_dataset(str(path))
    except DataError:
        return
    assert isinstance(ds, Dataset)
    assert ds.x.dtype == np.float32 and ds.x.ndim == 4


NPY_MAGIC = b"\x93NUMPY\x01\x00"
FUZZ = settings(
    max_examples=int(os.environ.get("AEGIS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", NPY_MAGIC, b"PK\x03\x04"]))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    for suffix in (".npy", ".npz"):
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(prefix + data)
        _load_or_data_error(path)


@FUZZ
@given(header=st.text(max_size=120), body=st.binary(max_size=200))
def test_fuzz_npy_headers(tmp_path: Path, header: str, body: bytes) -> None:
    raw = header.encode("latin1", errors="replace")
    path = tmp_path / "h.npy"
    path.write_bytes(NPY_MAGIC + len(raw).to_bytes(2, "little") + raw + body)
    _load_or_data_error(path)


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=2000),
    flip=st.integers(min_value=0, max_value=2000),
    member=st.binary(max_size=300),
)
def test_fuzz_damaged_archives(tmp_path: Path, cut: int, flip: int, member: bytes) -> None:
    good = io.BytesIO()
    np.savez_compressed(good, x=np.arange(64, dtype=np.uint8).reshape(1, 8, 8), y=np.array([3]))
    raw = bytearray(good.getvalue())
    if flip < len(raw):
        raw[flip] ^= 0xFF
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(raw[: max(cut, 1)]))
    _load_or_data_error(path)
    path.write_bytes(bytes(raw))
    _load_or_data_error(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", member)
    _load_or_data_error(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", NPY_MAGIC + member)
    _load_or_data_error(path)
