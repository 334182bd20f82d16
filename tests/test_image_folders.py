"""Image folders at ImageNet scale: resize + center crop, class-index files, CIFAR-style
uint8 NHWC archives, and streaming (``--limit`` opens only N files; a memory budget)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _factories import attack_argv
from PIL import Image

from aegis.cli import EXIT_OK
from aegis.errors import ConfigError, DataError
from aegis.io import arrays
from aegis.io.data import load_dataset

SIZES = ((300, 200), (180, 260), (240, 240), (200, 320))
CLASSES = ("n02", "n00", "n01")


def _folder(root: Path, mode: str = "RGB", sizes: tuple[tuple[int, int], ...] = SIZES) -> Path:
    """3 classes x len(sizes) noise images of different sizes."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            shape = (h, w) if mode == "L" else (h, w, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def _pixels(x: np.ndarray) -> np.ndarray:
    return np.rint(x * 255).astype(np.uint8)


def test_resize_and_center_crop(tmp_path: Path) -> None:
    root = _folder(tmp_path / "val")
    ds = load_dataset(str(root), resize=64, center_crop=56)
    assert ds.x.shape == (12, 3, 56, 56) and ds.x.dtype == np.float32
    t = ds.provenance["transform"]
    assert isinstance(t, dict) and t["resize"] == 64 and t["center_crop"] == 56
    assert t["output_size"] == [56, 56] and "BILINEAR" in str(t["steps"])
    assert ds.provenance["original_sizes"] == {
        "distinct": 4,
        "width": [180, 300],
        "height": [200, 320],
    }
    # by hand: 300x200 -> shorter side 64 -> 96x64, central 56x56 at (20, 4)
    with Image.open(root / "n00" / "0.png") as im:
        want = im.convert("RGB").resize((96, 64), Image.Resampling.BILINEAR)
        want = want.crop((20, 4, 76, 60))
    got = _pixels(ds.x[0]).transpose(1, 2, 0)
    assert np.array_equal(got, np.asarray(want))
    # 180x260 -> 64x92, crop top = round(18 / 2) = 9
    with Image.open(root / "n00" / "1.png") as im:
        want = im.convert("RGB").resize((64, 92), Image.Resampling.BILINEAR).crop((4, 18, 60, 74))
    assert np.array_equal(_pixels(ds.x[1]).transpose(1, 2, 0), np.asarray(want))


def test_imagenet_sizes_and_gray(tmp_path: Path) -> None:
    root = _folder(tmp_path / "val", mode="L", sizes=((300, 260), (260, 300)))
    ds = load_dataset(str(root), resize=256, center_crop=224, limit=2)
    assert ds.x.shape == (2, 1, 224, 224)
    assert ds.provenance["channels"] == "1 (all images grayscale)"


def test_crop_only_and_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "val")
    assert load_dataset(str(root), center_crop=100).x.shape == (12, 3, 100, 100)
    with pytest.raises(DataError, match=r"1\.png is 180x260 but the first image is 300x200.*"):
        load_dataset(str(root))  # without the options: one size required, as before
    with pytest.raises(DataError, match=r"after --resize.*pass --center-crop too"):
        load_dataset(str(root), resize=64)
    with pytest.raises(DataError, match="smaller than --center-crop 190"):
        load_dataset(str(root), center_crop=190)
    with pytest.raises(ConfigError, match="--center-crop must be an integer >= 1"):
        load_dataset(str(root), center_crop=0)
    with pytest.raises(ConfigError, match="--resize applies to image folders"):
        load_dataset("digits", resize=8)


@pytest.mark.parametrize("form", ["json", "keras", "csv", "csv-header"])
def test_class_index_files(tmp_path: Path, form: str) -> None:
    root = _folder(tmp_path / "val", sizes=((20, 20), (20, 20)))
    index = {"n02": 7, "n00": 5, "n01": 0}
    if form == "json":
        path, text = tmp_path / "idx.json", json.dumps({**index, "n99": 1})
    elif form == "keras":
        keras = {str(i): [name, f"label {name}"] for name, i in index.items()}
        path, text = tmp_path / "idx.json", json.dumps(keras)
    else:
        rows = [f"{name},{i}" for name, i in index.items()]
        header = ["synset,index"] if form == "csv-header" else []
        path, text = tmp_path / "idx.csv", "\n".join(header + rows) + "\n"
    path.write_text(text)
    ds = load_dataset(str(root), class_index=str(path))
    assert ds.y is not None and list(ds.y) == [5, 5, 0, 0, 7, 7]  # n00, n01, n02
    assert ds.num_classes == 8
    assert ds.provenance["class_to_index"] == index
    labels = ds.provenance["labels"]
    assert isinstance(labels, dict) and labels["how"] == "class-index file"
    assert labels["source"] == str(path) and labels["num_classes"] == 8


def test_class_index_missing_class_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "val", sizes=((20, 20),))
    path = tmp_path / "idx.json"
    path.write_text(json.dumps({"n00": 0, "n02": 1}))
    with pytest.raises(DataError) as exc:
        load_dataset(str(root), class_index=path)
    message = str(exc.value)
    assert "'n01'" in message and "'n00'" not in message and "add them" in message
    assert "\n" not in message
    bad = tmp_path / "bad.csv"
    bad.write_text("n00,0\nn01,x\n")
    with pytest.raises(DataError, match="row 2: class index 'x' is not an integer"):
        load_dataset(str(root), class_index=bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("n00,0\nn01,0\nn02,1\n")
    with pytest.raises(DataError, match="both have index 0"):
        load_dataset(str(root), class_index=dup)


def test_cifar_nhwc_uint8_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    y = np.arange(6) % 10
    np.savez(tmp_path / "cifar.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "cifar.npz"))
    assert ds.x.shape == (6, 3, 32, 32) and ds.provenance["layout"] == "NHWC"
    assert np.array_equal(_pixels(ds.x), x.transpose(0, 3, 1, 2))
    assert ds.y is not None and list(ds.y) == list(y)


def test_limit_opens_only_n_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "val", sizes=((20, 20),) * 4)
    opened: list[str] = []
    real_open = Image.open

    def counting_open(fp: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    ds = load_dataset(str(root), limit=5)
    assert len(ds) == 5 and len(opened) == 5
    assert ds.provenance["decoding"].startswith("5 files opened one at a time")  # type: ignore[union-attr]


def test_memory_budget_refuses_then_limit_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path / "val")
    per_image = 56 * 56 * 3 * (1 + arrays.FLOAT_COPY_BYTES)
    monkeypatch.setattr(arrays, "memory_budget", lambda: 4 * per_image)
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a: opened.append(fp) or real_open(fp, *a))
    with pytest.raises(DataError, match=r"12 images of 56x56 .* pass --limit N \(N <= 4\)"):
        load_dataset(str(root), resize=64, center_crop=56)
    assert opened == []  # refused before any file was opened
    assert len(load_dataset(str(root), resize=64, center_crop=56, limit=4)) == 4
    same = _folder(tmp_path / "same", sizes=((56, 56),) * 4)
    with pytest.raises(DataError, match="memory budget"):
        load_dataset(str(same))  # without a crop: checked once the first image is decoded


def test_cli_attack_on_a_resized_folder(
    cli: Any, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    root = _folder(tmp_path / "val", mode="L", sizes=((12, 10), (10, 14)))
    index = tmp_path / "idx.csv"
    index.write_text("n00,2\nn01,0\nn02,1\n")
    files = {**tiny_files, "x": root}
    argv = attack_argv(files, tmp_path / "run")
    i = argv.index("--labels")
    argv = argv[:i] + argv[i + 2 :]
    extra = ("--resize", "9", "--center-crop", "8", "--class-index", str(index), "--eps", "0.1")
    code, _, err = cli(*argv, *extra)
    assert code == EXIT_OK, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    prov = res["data"]["provenance"]
    assert prov["transform"]["output_size"] == [8, 8]
    assert prov["labels"]["how"] == "class-index file"
    assert prov["class_to_index"] == {"n00": 2, "n01": 0, "n02": 1}
