"""Small reference architectures, their typed training recipes and the reference trainer of
the built-in datasets (the loop itself is :mod:`aegis.training`)."""

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
from aegis.zoo.files import TrainResult, load_reference
from aegis.zoo.recipes import RECIPES, Recipe
from aegis.zoo.train import train_reference

__all__ = [
    "ARCHITECTURES",
    "DATASET_ARCH",
    "ENTRY_POINT_GROUP",
    "RECIPES",
    "Recipe",
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
