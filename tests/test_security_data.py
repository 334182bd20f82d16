"""Hostile inputs found by an attacker: YAML alias bombs and duplicate keys in ``aegis audit``
configs, ``.npz`` zip bombs, and files whose error messages named the wrong cause. Each is
refused fast with one line naming the cause and the fix, or loaded within a bounded budget."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from aegis.audit.config import load_config
from aegis.errors import ConfigError, DataError
from aegis.io import arrays
from aegis.io.data import load_dataset
from aegis.io.safe_yaml import load_yaml

# -- YAML: alias bombs, duplicate keys, size ------------------------------------------------


def _bomb(depth: int) -> str:
    """A "billion laughs" config: 9**depth strings under ``params:`` from a few hundred bytes."""
    lines = [
        "models: [m.pt]",
        "evaluations:",
        "  - type: attack",
        "    params:",
        '      l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    ]
    for i in range(1, depth + 1):
        lines.append(f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("audit.yaml: "), message
    return message


@pytest.mark.parametrize("depth", [7, 9, 30])
def test_alias_bomb_refused_fast_and_short(tmp_path: Path, depth: int) -> None:
    assert len(_bomb(9)) < 1000
    start = time.perf_counter()
    message = _refusal(tmp_path, _bomb(depth))
    assert time.perf_counter() - start < 0.5
    assert "expands aliases to more than 100000 values (an alias bomb?)" in message
    assert "write the values out" in message and len(message) < 300


def test_small_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "audit.yaml"
    path.write_text(_bomb(3))
    params = load_config(path).evaluations[0].params  # type: ignore[union-attr]
    assert len(params["l3"]) == 9 and params["l3"][0][0][0][0] == "lol"


def test_duplicate_require_cannot_override_a_strict_gate(tmp_path: Path) -> None:
    text = (
        "models: [m.pt]\n"
        "evaluations:\n"
        "  - type: attack\n"
        "    require:\n"
        "      max_success_rate: 0.0\n"
        "    eps: 0.3\n"
        "    norm: linf\n"
        "    attack: pgd\n"
        "    require: {max_success_rate: 1.0}\n"
    )
    assert yaml.safe_load(text)["evaluations"][0]["require"]["max_success_rate"] == 1.0
    message = _refusal(tmp_path, text)
    assert message == "audit.yaml: duplicate key 'require' at lines 4 and 9; keep one"


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("models: [a.pt]\ndata: digits\nmodels: [b.pt]\n", "models", (1, 3)),
        ("a:\n  b:\n    - c: 1\n      d: 2\n      'c': 3\n", "c", (3, 5)),
        ("x: {k: 1, k: 2}\n", "k", (1, 1)),
    ],
)
def test_duplicate_keys_refused_at_any_level(text: str, key: str, lines: tuple[int, int]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_yaml(text, "audit.yaml")
    assert str(exc.value) == (
        f"audit.yaml: duplicate key {key!r} at lines {lines[0]} and {lines[1]}; keep one"
    )


def test_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "audit.yaml"
    path.write_text(
        "strict: &strict {max_success_rate: 0.1, min_clean_accuracy: 0.9}\n"
        "models: [m.pt]\n"
        "evaluations:\n"
        "  - type: attack\n"
        "    require:\n"
        "      <<: *strict\n"
        "      max_success_rate: 0.0\n"
    )
    raw = load_yaml(path.read_text(), "audit.yaml")
    assert raw["evaluations"][0]["require"] == {"max_success_rate": 0.0, "min_clean_accuracy": 0.9}
    raw.pop("strict")
    from aegis.audit.config import parse_config

    require = parse_config(raw).evaluations[0].require  # type: ignore[union-attr]
    assert require.max_success_rate == 0.0 and require.min_clean_accuracy == 0.9  # type: ignore[union-attr]


def test_large_document_refused_before_parsing(tmp_path: Path) -> None:
    big = "models: [m.pt]\n# " + "x" * (1 << 20) + "\n"
    start = time.perf_counter()
    message = _refusal(tmp_path, big)
    assert time.perf_counter() - start < 0.5
    assert "larger than 1024 KiB" in message and "check the path" in message
    with pytest.raises(ConfigError, match="over the 1048576-byte limit"):
        load_yaml(big, "audit.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [1, *a]\n", "contains an alias to itself (a recursive alias)"),
        ("[" * 500 + "]" * 500, "nested deeper than 64 levels at line 1"),
        (
            "a: &a [[[[[[[[[[1]]]]]]]]]]\n"
            + "".join(
                f"b{i}: &b{i} [[[[[[[[[[*{'a' if i == 0 else f'b{i - 1}'}]]]]]]]]]]\n"
                for i in range(8)
            ),
            "nests deeper than 64 levels once its aliases are expanded",
        ),
        ("a: !!python/object/apply:os.system ['true']\n", "invalid YAML at line 1"),
    ],
)
def test_recursion_depth_and_unsafe_tags_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_yaml(text, "audit.yaml")


@pytest.mark.parametrize(
    "evaluation",
    [
        "{type: attack, norm: " + "x" * 5000 + "}",
        "{type: " + "y" * 5000 + "}",
        "{type: attack, norm: [" + ", ".join(["abc"] * 3000) + "]}",
        "{type: attack, require: {? " + "k" * 5000 + " : 1}}",
    ],
)
def test_validation_errors_echo_a_short_value(tmp_path: Path, evaluation: str) -> None:
    message = _refusal(tmp_path, f"models: [m.pt]\nevaluations: [{evaluation}]\n")
    assert len(message) < 300 and "..." in message, message


# -- .npz / .npy bombs: only the first `limit` samples are read ----------------------------

BOMB_SHAPE = (200_000, 1, 28, 28)  # float32: 627 MB declared


def _write_zero_bomb(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose ``x`` member declares ``shape`` float32 zeros, deflated while streamed
    in chunks (never held in memory); a few MB on disk."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    left = int(np.prod(shape)) * 4
    chunk = bytes(1 << 24)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open("x.npy", "w", force_zip64=True) as member,
    ):
        member.write(header.getvalue())
        while left > 0:
            member.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    _write_zero_bomb(path, BOMB_SHAPE)
    assert path.stat().st_size < 5_000_000
    return path


def test_npz_bomb_with_limit_stays_small(npz_bomb: Path) -> None:
    script = (
        "import resource, sys\n"
        "from aegis.io.data import load_dataset\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "ds = load_dataset(sys.argv[1], limit=10)\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(len(ds), ds.provenance['limit'], ds.provenance['original_shape'][0], grew * 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(npz_bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    n, limit, declared, grew = done.stdout.split()
    assert (n, limit, declared) == ("10", "10", str(BOMB_SHAPE[0]))
    assert int(grew) < 64_000_000  # against 627 MB declared


def test_npz_bomb_without_limit_refused_over_budget(
    npz_bomb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "memory_budget", lambda: 100_000_000)
    with pytest.raises(DataError) as exc:
        load_dataset(str(npz_bomb))
    message = str(exc.value)
    assert "bomb.npz['x'] declares 200000 samples" in message and "627.2 MB" in message
    assert "pass --limit N (N <= 10629)" in message and "\n" not in message
    ds = load_dataset(str(npz_bomb), limit=10)
    assert ds.x.shape == (10, 1, 28, 28) and ds.provenance["original_shape"] == list(BOMB_SHAPE)


def test_npy_declaring_hundreds_of_gigabytes(tmp_path: Path) -> None:
    """A sparse .npy file: 314 GB declared and "present", over any machine's budget."""
    header = io.BytesIO()
    shape = (10**8, 1, 28, 28)
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    path = tmp_path / "huge.npy"
    with path.open("wb") as fh:
        fh.write(header.getvalue())
        fh.truncate(len(header.getvalue()) + int(np.prod(shape)) * 4)
    with pytest.raises(DataError, match=r"over the memory budget .* pass --limit N"):
        load_dataset(str(path))
    ds = load_dataset(str(path), limit=5)
    assert ds.x.shape == (5, 1, 28, 28) and ds.provenance["limit"] == 5


def test_limit_reads_the_same_first_samples_and_is_recorded(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((50, 8, 8))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x_labels.npy", np.arange(50) % 3)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=np.arange(50) % 3)
    for name in ("x.npy", "d.npz"):
        ds = load_dataset(str(tmp_path / name), limit=7)
        assert np.allclose(ds.x[:, 0], x[:7]) and list(ds.y) == [0, 1, 2, 0, 1, 2, 0]  # type: ignore[arg-type]
        assert ds.to_dict()["provenance"]["limit"] == 7  # type: ignore[index]
        assert ds.provenance["original_shape"] == [50, 8, 8]
    sub = load_dataset(str(tmp_path / "x.npy")).subset(4)
    assert sub.provenance["limit"] == 4 and sub.provenance["n"] == 4
    assert load_dataset(str(tmp_path / "x.npy"), limit=3).subset(10).provenance["limit"] == 3
    # a labels file of the wrong length is still caught when only the first samples are read
    np.save(tmp_path / "short.npy", np.arange(40) % 3)
    with pytest.raises(DataError, match="40 entries but the data has 50 samples"):
        load_dataset(str(tmp_path / "x.npy"), labels=str(tmp_path / "short.npy"), limit=5)


def test_npz_member_shorter_than_declared(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 8, 8)}
    )
    path = tmp_path / "t.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header.getvalue() + bytes(4 * 64 * 3))
    with pytest.raises(DataError, match=r"t\.npz\['x'\] is truncated"):
        load_dataset(str(path), limit=2)


# -- messages that named the wrong cause ----------------------------------------------------


@pytest.mark.parametrize(("fmt", "what"), [("PNG", "a PNG image"), ("JPEG", "a JPEG image")])
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_image_named_like_an_array(tmp_path: Path, fmt: str, what: str, suffix: str) -> None:
    path = tmp_path / f"digit{suffix}"
    Image.new("L", (8, 8), 128).save(path, format=fmt)
    with pytest.raises(DataError) as exc:
        load_dataset(str(path))
    message = str(exc.value)
    assert f"is {what}, not a numpy array" in message and "pickle" not in message
    assert "image-folder dataset" in message and "numpy.save" in message


def test_symlink_loop_named(tmp_path: Path) -> None:
    loop = tmp_path / "data.npy"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match="is a symlink loop; point it at"):
        load_dataset(str(loop))
    a, b = tmp_path / "a", tmp_path / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(DataError, match="is a symlink loop"):
        load_dataset(str(a))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"labels file .* is a symlink loop; fix the --labels"):
        load_dataset(str(x), labels=str(loop))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npy"))


def test_string_labels_name_the_labels_file(tmp_path: Path) -> None:
    x = tmp_path / "images.npy"
    np.save(x, np.zeros((3, 8, 8), np.float32))
    np.save(tmp_path / "names.npy", np.array(["cat", "dog", "cat"]))
    with pytest.raises(DataError) as exc:
        load_dataset(str(x), labels=str(tmp_path / "names.npy"))
    message = str(exc.value)
    assert "labels in " in message and "names.npy have dtype <U3 (text)" in message
    assert "images.npy" not in message and "map the class names to 0..k-1" in message
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8, 8)), y=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"labels in .*d\.npz\['y'\] have dtype"):
        load_dataset(str(tmp_path / "d.npz"))


def test_float_0_255_data_pointed_at_scale_255(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((4, 8, 8)) * 255)
    with pytest.raises(DataError, match="not whole numbers; pass --scale 255") as exc:
        load_dataset(str(path))
    assert "\n" not in str(exc.value)
    assert load_dataset(str(path), scale="255").x.max() <= 1.0


def test_data_layout_errors_name_data_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-layout NCHW, NHWC or flat"):
        load_dataset("digits", layout="CHW")
    nchw = tmp_path / "x.npy"
    np.save(nchw, np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"fix --input-shape or --data-layout$"):
        load_dataset(str(nchw), layout="NHWC", input_shape=(3, 8, 8))
    flat = tmp_path / "f.npy"
    np.save(flat, np.zeros((2, 64), np.float32))
    with pytest.raises(DataError, match="--data-layout NCHW needs 4-D data; use --data-layout"):
        load_dataset(str(flat), layout="NCHW")


def test_object_arrays_still_refused(tmp_path: Path) -> None:
    obj = np.array([{"a": 1}, None, 3], dtype=object)
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    np.savez(tmp_path / "o.npz", x=obj)
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
    for call in (
        lambda: load_dataset(str(tmp_path / "o.npy"), limit=1),
        lambda: load_dataset(str(tmp_path / "o.npz")),
        lambda: load_dataset(str(tmp_path / "x.npy"), labels=str(tmp_path / "o.npy")),
    ):
        with pytest.raises(DataError, match=r"object \(pickled\) array, which aegis refuses"):
            call()
