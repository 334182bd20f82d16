"""Fuzz the model loaders: any bytes, a damaged real file, a hostile path → a Classifier or one
AegisError with a one-line message, never another exception (and never code from the file)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from _factories import SmallCNN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.errors import AegisError
from aegis.io.models import load_classifier
from aegis.model import Classifier

FUZZ = settings(
    max_examples=int(os.environ.get("AEGIS_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SUFFIXES = (".pt", ".pth", ".ts", ".pt2", ".safetensors", ".onnx", ".keras", ".h5")
HEADS = (b"", b"PK\x03\x04", b"\x80\x02", b"\x08\x01\x12", b"\x89HDF\r\n\x1a\n", b"{}")


def _load_or_one_line_error(path: Path) -> None:
    try:
        clf = load_classifier(path, num_classes=4, input_shape=(1, 12, 12))
    except AegisError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
        return
    assert isinstance(clf, Classifier)


@FUZZ
@given(data=st.binary(max_size=300), head=st.sampled_from(HEADS), suffix=st.sampled_from(SUFFIXES))
def test_fuzz_random_bytes_as_a_model(
    tmp_path: Path, data: bytes, head: bytes, suffix: str
) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(head + data)
    _load_or_one_line_error(path)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    net = SmallCNN().eval()
    x = torch.rand(2, 1, 12, 12)
    torch.jit.save(torch.jit.trace(net, x), str(d / "m.ts"))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "m.safetensors"))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return {
        ".ts": (d / "m.ts").read_bytes(),
        ".safetensors": (d / "m.safetensors").read_bytes(),
        ".pt": buf.getvalue(),
    }


@FUZZ
@given(
    suffix=st.sampled_from([".ts", ".safetensors", ".pt"]),
    cut=st.floats(min_value=0.0, max_value=1.0),
    flips=st.lists(st.integers(min_value=0, max_value=10**6), max_size=4),
)
def test_fuzz_damaged_model_files(
    tmp_path: Path, good_files: dict[str, bytes], suffix: str, cut: float, flips: list[int]
) -> None:
    raw = bytearray(good_files[suffix])
    for f in flips:
        raw[f % len(raw)] ^= 0x5A
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(bytes(raw[: max(1, int(cut * len(raw)))]))
    _load_or_one_line_error(path)


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "/", "no/such/dir/model.pt", "model.unknown", "\x00.pt", "a" * 300 + ".pt"],
)
def test_hostile_paths_give_one_line_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(AegisError) as info:
        load_classifier(name, num_classes=4, input_shape=(1, 12, 12))
    assert "\n" not in str(info.value).strip()


def test_a_pickle_that_runs_code_is_refused_by_default(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(AegisError) as info:
        load_classifier(path, num_classes=4, input_shape=(1, 12, 12))
    assert "\n" not in str(info.value).strip()
    assert not marker.exists()  # nothing from the file ran


@pytest.mark.parametrize("spec", ["", "  ", "a" * 300 + ".npy", "x\x00.npy", "no/such/x.npz"])
def test_hostile_data_paths_give_one_line_errors(spec: str) -> None:
    from aegis.errors import DataError
    from aegis.io.data import load_dataset

    with pytest.raises(DataError) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value).strip()
