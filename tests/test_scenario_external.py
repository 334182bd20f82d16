"""The seed's scenario on model files and data that aegis did not create.

A Keras `.keras` model trained with Keras alone, an ONNX file exported by torch, and a
TorchScript file, each with an `attack_dataset.npy` of uint8 NHWC images and a labels file:
targeted PGD toward class 5, step 0.01, 100 iterations, 90% success required.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from aegis.cli import EXIT_GATE


def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as a user would hold them: uint8 NHWC images and int labels."""
    d = load_digits()
    x = np.round(d.images / 16 * 255).astype(np.uint8)[..., None]
    return x, d.target.astype(np.int64)


def scenario(cli, model: Path, data: Path, labels: Path, out: Path) -> dict[str, object]:
    code, text, err = cli(
        "attack",
        str(model),
        str(data),
        "--labels",
        str(labels),
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--step",
        "0.01",
        "--iterations",
        "100",
        "--target",
        "5",
        "--success-threshold",
        "0.9",
        "--gate",
        "--limit",
        "200",
        "--out",
        str(out),
    )
    assert code == EXIT_GATE, err + text
    assert "attack SUCCEEDS" in text
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["success"]["rate"] >= 0.9
    assert res["data"]["provenance"]
    return res


def torch_digits_net() -> torch.nn.Module:
    torch.manual_seed(0)
    x, y = digits()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 16, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), torch.from_numpy(y)).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("user")
    x, y = digits()
    np.save(d / "attack_dataset.npy", x)
    np.save(d / "labels.npy", y)
    net = torch_digits_net()
    example = torch.zeros(1, 1, 8, 8)
    torch.jit.save(torch.jit.trace(net, example), str(d / "model.pt"))
    if pytest.importorskip("onnx"):
        torch.onnx.export(
            net,
            (example,),
            str(d / "model.onnx"),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    return {"dir": d, "x": d / "attack_dataset.npy", "y": d / "labels.npy"}


def test_torchscript(user_files, cli, tmp_path) -> None:
    res = scenario(
        cli, user_files["dir"] / "model.pt", user_files["x"], user_files["y"], tmp_path / "ts"
    )
    assert res["data"]["provenance"]["layout"] == "NHWC"


def test_onnx(user_files, cli, tmp_path) -> None:
    pytest.importorskip("onnx")
    res = scenario(
        cli,
        user_files["dir"] / "model.onnx",
        user_files["x"],
        user_files["y"],
        tmp_path / "onnx",
    )
    assert res["model"]["differentiable"] is True


def test_keras(user_files, cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    x, y = digits()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x.astype("float32") / 255, y, epochs=15, batch_size=128, verbose=0)
    path = user_files["dir"] / "model.keras"
    model.save(path)
    res = scenario(cli, path, user_files["x"], user_files["y"], tmp_path / "keras")
    assert res["model"]["layout"] == "NHWC"
