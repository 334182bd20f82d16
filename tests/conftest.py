"""Tiny models trained in under a second on synthetic data, plus a parameter-free one."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from aegis.io.data import load_dataset
from aegis.model import Classifier, ModelInfo

# The test models are tiny: one thread avoids thread start-up and contention costs that
# dominate their run time on a 2-core machine (measured 10-15x on loaded CI-sized machines).
torch.set_num_threads(1)

SHAPE = (1, 8, 8)
CLASSES = 3


def synthetic(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 8×8 images: a bright top, a bright left half, a bright centre."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    protos = torch.zeros(CLASSES, *SHAPE)
    protos[0, :, :3, :] = 0.8
    protos[1, :, :, :3] = 0.8
    protos[2, :, 2:6, 2:6] = 0.8
    x = (protos[y] + 0.15 * torch.randn(n, *SHAPE, generator=g)).clamp(0, 1)
    return x, y


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = nn.functional.max_pool2d(h, 2)
        return self.fc(h.flatten(1))


def train_tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyCNN()
    x, y = synthetic(seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


class ParameterFree(nn.Module):
    """A fixed template-matching classifier with no parameters and no buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x[:, 0, :3, :].mean((1, 2))
        left = x[:, 0, :, :3].mean((1, 2))
        centre = x[:, 0, 2:6, 2:6].mean((1, 2))
        return 10 * torch.stack([top, left, centre], 1)


@pytest.fixture(scope="session")
def tiny_net() -> nn.Module:
    return train_tiny()


@pytest.fixture()
def tiny(tiny_net: nn.Module) -> Classifier:
    return Classifier(tiny_net, ModelInfo(num_classes=CLASSES, input_shape=SHAPE), name="tiny")


@pytest.fixture()
def param_free() -> Classifier:
    return Classifier(
        ParameterFree(), ModelInfo(num_classes=CLASSES, input_shape=SHAPE), name="param-free"
    )


@pytest.fixture(scope="session")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(60, seed=1)


@pytest.fixture(scope="session")
def data_np(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return data[0].numpy(), data[1].numpy()


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``aegis ARGS...`` in-process: returns (exit code, stdout, stderr)."""
    import sys

    from aegis.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        argv, sys.argv = sys.argv, ["aegis", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            sys.argv = argv
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def digits_model() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """A 10-class MLP on sklearn's 8×8 digits (DLR needs ≥ 3 classes, targeted DLR ≥ 4)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    model = Classifier(net.eval(), ModelInfo(num_classes=10, input_shape=(1, 8, 8)))
    keep = model.predict(x[:300]) == y[:300]
    return model, x[:300][keep], y[:300][keep]


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory, tiny_net: nn.Module, data):  # type: ignore[no-untyped-def]
    """The tiny model as TorchScript and the test data as float NCHW .npy files."""
    d = tmp_path_factory.mktemp("tiny-files")
    x, y = data
    torch.jit.save(torch.jit.trace(tiny_net, x[:2]), str(d / "tiny.pt"))
    np.save(d / "x.npy", x.numpy())
    np.save(d / "y.npy", y.numpy())
    return {"model": d / "tiny.pt", "x": d / "x.npy", "y": d / "y.npy"}


@pytest.fixture(scope="module")
def keras() -> Any:
    """Keras 3 on the torch backend (skipped where keras is missing or on another backend)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    mod = pytest.importorskip("keras")
    if mod.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    return mod


@pytest.fixture(scope="module")
def digits_net() -> nn.Module:
    """A 10-class MLP on the built-in digits, trained in well under a second (one per test
    module, so no module sees another's changes)."""
    torch.manual_seed(0)
    ds = load_dataset("digits", split="train")
    x, y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()
