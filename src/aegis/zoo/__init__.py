"""Reference architectures (small ones for the built-in datasets; CIFAR ResNet-18,
PreAct-ResNet-18, WRN-28-10/34-10 and ImageNet ResNet-50 for public checkpoints), their typed
training recipes and the reference trainer of the built-in datasets (the loop itself is
:mod:`aegis.training`)."""

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
from aegis.zoo.cifar import preact_resnet18, resnet18_cifar, wrn_28_10, wrn_34_10
from aegis.zoo.files import TrainResult, load_reference
from aegis.zoo.imagenet import resnet50
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
    "preact_resnet18",
    "register_architecture",
    "resnet18_cifar",
    "resnet50",
    "tiny_mlp",
    "train_reference",
    "wrn_28_10",
    "wrn_34_10",
]
