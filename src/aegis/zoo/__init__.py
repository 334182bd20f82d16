"""Small reference architectures and a seeded trainer for the built-in datasets."""

from aegis.zoo.architectures import (
    ARCHITECTURES,
    DATASET_ARCH,
    ENTRY_POINT_GROUP,
    create,
    digits_cnn,
    find_architecture,
    list_architectures,
    mnist_cnn,
    register_architecture,
    tiny_mlp,
)
from aegis.zoo.train import RECIPES, TrainResult, load_reference, train_reference

__all__ = [
    "ARCHITECTURES",
    "DATASET_ARCH",
    "ENTRY_POINT_GROUP",
    "RECIPES",
    "TrainResult",
    "create",
    "digits_cnn",
    "find_architecture",
    "list_architectures",
    "load_reference",
    "mnist_cnn",
    "register_architecture",
    "tiny_mlp",
    "train_reference",
]
