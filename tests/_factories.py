"""Tiny architectures that tests load by factory name ("_factories:make_cnn"), and shared test
model helpers (random Keras weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """conv 3x3 → ReLU → max-pool 2 → linear, for 1x12x12 inputs."""

    def __init__(self, width: int = 4, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width * 6 * 6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def make_cnn(width: int = 4, num_classes: int = 4) -> SmallCNN:
    return SmallCNN(width=width, num_classes=num_classes)


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 4))


def not_a_module() -> int:
    return 3


def attack_argv(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``aegis attack`` on the tiny TorchScript model and its .npy inputs (8×8 digits-like
    images), writing to ``out``; ``extra`` adds options."""
    return [
        "attack",
        str(files["model"]),
        str(files["x"]),
        "--labels",
        str(files["y"]),
        "--input-shape",
        "1,8,8",
        "--out",
        str(out),
        *extra,
    ]


def hardmax_onnx(path: Path, seed: int = 0) -> None:
    """A query-only ONNX graph (Hardmax has no differentiable converter): a flat input of 16
    values (1×4×4) → MatMul → scores + Hardmax(scores), 4 classes; weights drawn from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Hardmax", ["z"], ["h"], axis=-1),
        helper.make_node("Add", ["z", "h"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hardmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    opset = [helper.make_opsetid("", 13)]
    onnx.save(helper.make_model(graph, opset_imports=opset, ir_version=8), str(path))


class NoisyMLP(nn.Module):
    """An MLP for 1×8×8 inputs whose forward warns like a chatty third-party library."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        import warnings

        warnings.warn("third-party chatter", UserWarning, stacklevel=1)
        out: Tensor = self.net(x)
        return out


def make_noisy() -> NoisyMLP:
    torch.manual_seed(0)
    return NoisyMLP()


def randomize_keras(model: Any, seed: int) -> Any:
    """Seeded random weights for a Keras model (BatchNorm variances kept positive)."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()]
    model.set_weights(
        [
            np.abs(w) + 0.5 if "variance" in v.path else w
            for w, v in zip(weights, model.weights, strict=True)
        ]
    )
    return model
