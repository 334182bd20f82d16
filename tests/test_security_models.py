"""Loading a model never runs code from it (or from its sidecar) unless the user says so.

Every attack here was reproduced against aegis: each test builds the hostile file, asserts that
loading it is refused with a one-line message naming the cause, and that the marker file the
payload would create never appears.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import sys
import warnings
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import _factories
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from aegis.errors import AegisError, ModelError, UnsafeFileError
from aegis.io.models import load_classifier
from aegis.zoo import architectures
from aegis.zoo.architectures import ARCHITECTURES, register_architecture, tiny_mlp
from aegis.zoo.train import FACTORY_PREFIX

SHAPE = (1, 8, 8)
CFG = "data/weights/model_weights_config.json"


class Touch:
    """Unpickling it creates ``marker``: the stand-in for any code a file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


class System:
    """Unpickling it runs ``touch marker`` through ``os.system`` (``posix.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.system, (f"touch {self.marker}",))


def _refused(path: Path, marker: Path, match: str, **kwargs: Any) -> str:
    with pytest.raises(UnsafeFileError, match=match) as info:
        load_classifier(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "corrupt" not in message, message
    assert not marker.exists(), f"code from {path.name} ran"
    return message


def _mlp_weights(path: Path) -> nn.Module:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = tiny_mlp(SHAPE, 3).eval()
    save_file(net.state_dict(), str(path))
    return net


def _sidecar(path: Path, **data: Any) -> None:
    path.with_suffix(".json").write_text(json.dumps(data))


# -- sidecars are data, never code ----------------------------------------------------------------
HOSTILE_FACTORIES = [
    "aegis.zoo.train:os.system",
    "aegis.zoo:__builtins__",
    "aegis.zoo.architectures:ConvNet.__init__.__globals__",
    "aegis.zoo.train.os:system",
    "aegis.zoo.architectures:mnist_cnn.__globals__",
    "os:system",
    "subprocess:getoutput",
    "aegis.zoo.architectures:no_such_net",
]


@pytest.mark.parametrize("spec", HOSTILE_FACTORIES)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_sidecar_cannot_name_an_unregistered_factory(
    tmp_path: Path, spec: str, suffix: str
) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / f"net{suffix}"
    if suffix == ".pt":
        torch.save(tiny_mlp(SHAPE, 3).state_dict(), path)
    else:
        _mlp_weights(path)
    _sidecar(path, factory=spec, factory_kwargs={"command": f"touch {marker}", "cmd": "id"})
    message = _refused(path, marker, "not a registered architecture")
    assert f"names factory {spec} which" in message
    assert f"pass --factory {spec} to trust it, or --trust-sidecar" in message


def test_a_sidecar_imports_no_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_sidecar_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from _factories import make_mlp as make\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    net = _factories.make_mlp().eval()
    torch.save(net.state_dict(), path)
    (tmp_path / "model.json").write_text(json.dumps({"factory": "evil_sidecar_mod:make"}))
    _refused(
        path, marker, r"evil_sidecar_mod:make which is not a registered", input_shape=(1, 12, 12)
    )
    assert "evil_sidecar_mod" not in sys.modules
    # --trust-sidecar: imported as if given by --factory.
    monkeypatch.delitem(sys.modules, "evil_sidecar_mod", raising=False)
    clf = load_classifier(path, input_shape=(1, 12, 12), trust_sidecar=True)
    assert marker.exists() and clf.provenance["factory"] == "sidecar: evil_sidecar_mod:make"
    x = torch.rand(2, 1, 12, 12)
    torch.testing.assert_close(clf.logits(x), net(x), atol=1e-5, rtol=0)
    sys.modules.pop("evil_sidecar_mod", None)


def test_an_explicit_factory_still_loads_beside_a_hostile_sidecar(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "net.safetensors"
    net = _mlp_weights(path)
    _sidecar(path, factory="aegis.zoo.train:os.system", factory_kwargs={"command": "id"})
    clf = load_classifier(
        path,
        factory="aegis.zoo.architectures:tiny_mlp",
        factory_kwargs={"input_shape": list(SHAPE), "num_classes": 3},
        input_shape=SHAPE,
    )
    assert not marker.exists() and clf.provenance["factory"].startswith("flag: ")
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(clf.logits(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", [FACTORY_PREFIX + "tiny_mlp", "aegis.zoo:tiny_mlp", "tiny_mlp"])
def test_a_registered_factory_from_a_sidecar_loads(tmp_path: Path, spec: str) -> None:
    path = tmp_path / "net.safetensors"
    net = _mlp_weights(path)
    _sidecar(
        path,
        factory=spec,
        factory_kwargs={"input_shape": list(SHAPE), "num_classes": 3},
        input_shape=list(SHAPE),
    )
    clf = load_classifier(path)
    assert clf.provenance["factory"].startswith(f"sidecar: {spec}")
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(clf.logits(x), net(x), atol=1e-5, rtol=0)


def test_registered_and_entry_point_architectures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "net.pt"
    torch.manual_seed(0)
    net = _factories.make_cnn().eval()
    torch.save(net.state_dict(), path)
    x = torch.rand(2, 1, 12, 12)
    register_architecture("test_small_cnn", _factories.make_cnn)
    try:
        assert "test_small_cnn" in architectures.list_architectures()
        _sidecar(path, factory="test_small_cnn", input_shape=[1, 12, 12])
        torch.testing.assert_close(load_classifier(path).logits(x), net(x), atol=1e-5, rtol=0)
        with pytest.raises(AegisError, match="already registered"):
            register_architecture("test_small_cnn", _factories.make_mlp)
        with pytest.raises(AegisError, match="architecture name"):
            register_architecture("a:b", _factories.make_mlp)
    finally:
        ARCHITECTURES.pop("test_small_cnn", None)
    point = metadata.EntryPoint(
        name="ep_cnn", value="_factories:make_cnn", group=architectures.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(architectures, "_entry_points", lambda: [point])
    for spec in ("ep_cnn", "_factories:make_cnn"):  # by the entry point's name or value
        _sidecar(path, factory=spec, input_shape=[1, 12, 12])
        torch.testing.assert_close(load_classifier(path).logits(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ([1, 2], "must be a JSON object"),
        ({"not a name": 1}, "not a keyword name"),
        ({"width": float("nan")}, "not a plain JSON value"),
        ({"width": {"deep": [1, float("inf")]}}, "not a plain JSON value"),
    ],
)
def test_sidecar_factory_kwargs_are_plain_json(tmp_path: Path, kwargs: Any, match: str) -> None:
    path = tmp_path / "net.safetensors"
    _mlp_weights(path)
    _sidecar(path, factory="tiny_mlp", factory_kwargs=kwargs, input_shape=list(SHAPE))
    with pytest.raises(ModelError, match=match):
        load_classifier(path)


# -- pickles of every protocol ------------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_plain_pickles_of_every_protocol_are_refused(
    tmp_path: Path, protocol: int, suffix: str
) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"model": Touch(marker)}, protocol=protocol))
    _refused(path, marker, "plain Python pickle: loading it would execute code", input_shape=SHAPE)


def test_the_pickle_payload_is_real(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Touch(marker), protocol=0))
    with pytest.raises(ModelError, match="not a model or a state dict"):
        load_classifier(path, input_shape=SHAPE, allow_unsafe_pickle=True)
    assert marker.exists()  # so the refusals above did stop a payload that runs


def test_a_torch_save_pickle_naming_os_system_is_unsafe_not_corrupt(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": System(marker)}, path)
    message = _refused(path, marker, "would execute code", input_shape=SHAPE)
    assert f"references {os.system.__module__}.system" in message


# -- zip archives that torch and Python read differently ------------------------------------------
@pytest.fixture(scope="module")
def pt2_members(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(2, *SHAPE),)), str(path))
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _evil_config(members: list[tuple[str, bytes]], marker: Path) -> tuple[str, bytes, bytes]:
    """The weights config with one weight switched to ``use_pickle`` on a payload that touches
    ``marker`` when unpickled: (config entry name, evil config, payload)."""
    name = next(n for n, _ in members if n.endswith(CFG))
    config = json.loads(dict(members)[name])
    key = next(iter(config["config"]))
    config["config"][key].update(use_pickle=True, path_name="evil_0")
    payload = io.BytesIO()
    torch.save(Touch(marker), payload)
    return name, json.dumps(config).encode(), payload.getvalue()


def _write_zip(path: Path, items: list[tuple[str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in items:
                zf.writestr(name, data)
    return path


def _pt2_with_two_configs(
    members: list[tuple[str, bytes]], marker: Path, path: Path, i: int, j: int
) -> Path:
    name, evil, payload = _evil_config(members, marker)
    top = name.split("/", 1)[0]
    items = [(n, d) for n, d in members if n != name] + [(f"{top}/data/weights/evil_0", payload)]
    items.insert(j, (name, dict(members)[name]))
    items.insert(i, (name, evil))
    return _write_zip(path, items)


def test_the_duplicate_entry_attack_is_real(
    tmp_path: Path, pt2_members: list[tuple[str, bytes]]
) -> None:
    marker = tmp_path / "PWNED"
    path = _pt2_with_two_configs(pt2_members, marker, tmp_path / "net.pt2", 0, 1)
    with zipfile.ZipFile(path) as zf:  # Python sees the benign copy, torch the evil one
        assert b'use_pickle": true' not in zf.read(next(n for n in zf.namelist() if CFG in n))
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        torch.export.load(str(path))  # unpickles the payload, then trips over what it made
    assert marker.exists()


def test_pt2_with_duplicate_entries_is_refused_in_every_order(
    tmp_path: Path, pt2_members: list[tuple[str, bytes]]
) -> None:
    marker = tmp_path / "PWNED"
    n = len(pt2_members)
    for i in range(0, n + 1, 2):
        for j in range(i, n + 1, 3):
            path = _pt2_with_two_configs(pt2_members, marker, tmp_path / "net.pt2", i, j)
            for unsafe in (False, True):
                message = _refused(
                    path, marker, "holds two entries named", allow_unsafe_pickle=unsafe
                )
                assert "torch and Python read differently; refused (re-save the model)" in message


def test_pt2_variants_renamed_and_reordered(
    tmp_path: Path, pt2_members: list[tuple[str, bytes]]
) -> None:
    marker = tmp_path / "PWNED"
    name, evil, payload = _evil_config(pt2_members, marker)
    top = name.split("/", 1)[0]
    benign = dict(pt2_members)[name]
    rest = [(n, d) for n, d in pt2_members if n != name] + [(f"{top}/data/weights/evil_0", payload)]
    upper = name.replace("model_weights", "MODEL_weights")
    variants = {  # name -> (entries, what the message says)
        "case": ([(upper, evil), (name, benign), *rest], "torch reads as one"),
        "case-last": ([*rest, (name, benign), (upper, evil)], "torch reads as one"),
        "other-top": ([*rest, (name, benign), (f"zz/{CFG}", evil)], "pickled parts"),
        "reordered": ([(name, evil), *reversed(rest)], "pickled parts"),
        "evil-only": ([*rest, (name, evil)], "pickled parts"),
    }
    for label, (items, match) in variants.items():
        path = _write_zip(tmp_path / f"{label}.pt2", items)
        _refused(path, marker, match)
    # The local header names another entry than the central directory.
    path = _write_zip(tmp_path / "header.pt2", [*rest, (name, benign)])
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(name).header_offset
    size = struct.unpack("<H", raw[offset + 26 : offset + 28])[0]
    raw[offset + 30 + size - 6] ^= 0x20  # ".json" → ".jsOn" in the local header only
    path.write_bytes(bytes(raw))
    _refused(path, marker, "whose local header names")
    # A clean archive reordered still loads.
    clean = _write_zip(tmp_path / "clean.pt2", list(reversed(pt2_members)))
    assert load_classifier(clean).num_classes == 3


@settings(
    max_examples=int(os.environ.get("AEGIS_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_pt2_entries_duplicated_reordered_renamed(
    tmp_path: Path, pt2_members: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    marker = tmp_path / "PWNED"
    name, evil, payload = _evil_config(pt2_members, marker)
    top = name.split("/", 1)[0]
    items = [*pt2_members, (f"{top}/data/weights/evil_0", payload)]
    items = data.draw(st.permutations(items))
    for _ in range(data.draw(st.integers(0, 2))):  # copies of the config, benign or evil
        copy = (name, data.draw(st.sampled_from([evil, dict(pt2_members)[name]])))
        items.insert(data.draw(st.integers(0, len(items))), copy)
    if data.draw(st.booleans()):  # one entry renamed: another case, or another top folder
        k = data.draw(st.integers(0, len(items) - 1))
        old_name, content = items[k]
        new_name = data.draw(st.sampled_from([old_name.upper(), "zz/" + old_name.split("/", 1)[1]]))
        items[k] = (new_name, content)
    path = _write_zip(tmp_path / "fuzz.pt2", items)
    try:
        load_classifier(path)
    except AegisError as exc:
        assert "\n" not in str(exc)
    assert not marker.exists()


def test_torch_save_with_a_duplicate_data_pkl_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    good = tmp_path / "good.pt"
    torch.save(tiny_mlp(SHAPE, 3).state_dict(), good)
    with zipfile.ZipFile(good) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    pkl = next(n for n, _ in members if n.endswith("/data.pkl"))
    evil = io.BytesIO()
    torch.save(System(marker), evil)
    with zipfile.ZipFile(io.BytesIO(evil.getvalue())) as zf:
        evil_pkl = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    for i in (0, len(members)):
        items = list(members)
        items.insert(i, (pkl, evil_pkl))
        path = _write_zip(tmp_path / f"dup{i}.pt", items)
        for unsafe in (False, True):
            _refused(
                path,
                marker,
                "two entries named .*data.pkl",
                input_shape=SHAPE,
                allow_unsafe_pickle=unsafe,
            )


# -- ONNX external data, symlinks ------------------------------------------------------------------
def _onnx_with_external(path: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 64), np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "256")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Add", ["f", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_external_data_must_stay_in_the_models_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "net"
    folder.mkdir(parents=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(256))
    (folder / "w.bin").write_bytes(bytes(256))
    path = folder / "net.onnx"
    assert load_classifier(_onnx_with_external(path, "w.bin")).num_classes == 64
    marker = tmp_path / "never"
    for location in ("../../secret.bin", str(secret), "sub/../../../secret.bin"):
        message = _refused(_onnx_with_external(path, location), marker, "points outside")
        assert f"refused: {location} points outside the model's folder" in message
    (folder / "link.bin").symlink_to(secret)
    message = _refused(_onnx_with_external(path, "link.bin"), marker, "through a symlink")
    assert "refused: link.bin points outside the model's folder" in message


def test_symlink_loops_and_dangling_links(tmp_path: Path) -> None:
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    with pytest.raises(ModelError, match="is a symlink loop"):
        load_classifier(loop)
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    with pytest.raises(ModelError, match="is a symlink loop"):
        load_classifier(tmp_path / "a.pt")
    dangling = tmp_path / "gone.pt"
    dangling.symlink_to(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="which does not exist"):
        load_classifier(dangling)


# -- TorchScript frozen, Keras Lambda -------------------------------------------------------------
def test_frozen_torchscript_loads_and_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).eval()
    path = tmp_path / "frozen.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(net)), str(path))
    clf = load_classifier(path, input_shape=SHAPE)
    x = torch.rand(4, *SHAPE)
    torch.testing.assert_close(clf.logits(x), net(x).detach(), atol=1e-5, rtol=0)
    _, _, grad = clf.value_and_grad(x, lambda z: z.sum(dim=1))
    assert grad.shape == x.shape and bool(grad.abs().sum() > 0)
    assert clf.provenance["mode"].startswith("frozen TorchScript")


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_a_keras_lambda_layer_does_not_run_on_load(tmp_path: Path, ext: str) -> None:
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except Exception:  # not installed, or no usable backend
        pytest.skip("keras is not importable")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    marker = tmp_path / "PWNED"
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Lambda(lambda t, m=str(marker): (open(m, "a").close(), t)[1]),
            keras.layers.Dense(3),
        ]
    )
    path = tmp_path / f"lambda{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(path))
    marker.unlink(missing_ok=True)  # building the model ran it once; loading must not
    _refused(path, marker, r"Lambda layer .* --unsafe-pickle")
