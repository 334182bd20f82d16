"""Small reference architectures and a seeded trainer for the built-in datasets."""

from aegis.zoo.architectures import (
    ARCHITECTURES,
    DATASET_ARCH,
    create,
    digits_cnn,
    mnist_cnn,
    tiny_mlp,
)
from aegis.zoo.train import RECIPES, TrainResult, load_reference, train_reference

__all__ = [
    "ARCHITECTURES",
    "DATASET_ARCH",
    "RECIPES",
    "TrainResult",
    "create",
    "digits_cnn",
    "load_reference",
    "mnist_cnn",
    "tiny_mlp",
    "train_reference",
]
