"""The real-scale zoo (CIFAR ResNet-18, PreAct-ResNet-18, WRN-28-10, WRN-34-10, ImageNet
ResNet-50): state dicts identical to the public definitions their checkpoints are written for.

Where the expected keys come from: the tables below were generated once by a scratch script (not
part of aegis) that instantiated the public definitions and listed ``state_dict()`` in order,
``name=shape`` (``prefix=bnC`` abbreviates a BatchNorm2d's weight, bias, running_mean, running_var
of shape (C,) and its scalar num_batches_tracked). The sources, read at these commits:

- RobustBench/robustbench @ 78fcc9e48a07a861268f295a777b975f25155964,
  robustbench/model_zoo/architectures/resnet.py: ``PreActResNet18()`` and ``ResNet18()``;
  robustbench/model_zoo/architectures/wide_resnet.py: ``WideResNet(depth=28|34,
  widen_factor=10)``;
- pytorch/vision @ f50e776b051ddf007b90d7bc8f70b0708c12d008, torchvision/models/resnet.py:
  ``resnet50()``.

The same script loaded each public model's randomly initialised state dict (BatchNorm statistics
randomised) into the aegis model with ``strict=True`` and found identical eval-mode logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import aegis.zoo
from aegis.errors import ConfigError
from aegis.io.factories import _import_factory
from aegis.io.models import load_classifier
from aegis.zoo import (
    ARCHITECTURES,
    find_architecture,
    preact_resnet18,
    resnet18_cifar,
    resnet50,
    wrn_28_10,
    wrn_34_10,
)
from aegis.zoo.architectures import Factory

FACTORIES: dict[str, Factory] = {
    "preact_resnet18": preact_resnet18,
    "resnet18_cifar": resnet18_cifar,
    "wrn_28_10": wrn_28_10,
    "wrn_34_10": wrn_34_10,
    "resnet50": resnet50,
}
INPUT = {name: (3, 224, 224) if name == "resnet50" else (3, 32, 32) for name in FACTORIES}
CLASSES = {name: 1000 if name == "resnet50" else 10 for name in FACTORIES}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

EXPECTED: dict[str, str] = {
    "preact_resnet18": """
    conv1.weight=64x3x3x3 layer1.0.bn1=bn64 layer1.0.conv1.weight=64x64x3x3 layer1.0.bn2=bn64
    layer1.0.conv2.weight=64x64x3x3 layer1.1.bn1=bn64 layer1.1.conv1.weight=64x64x3x3
    layer1.1.bn2=bn64 layer1.1.conv2.weight=64x64x3x3 layer2.0.bn1=bn64
    layer2.0.conv1.weight=128x64x3x3 layer2.0.bn2=bn128 layer2.0.conv2.weight=128x128x3x3
    layer2.0.shortcut.0.weight=128x64x1x1 layer2.1.bn1=bn128 layer2.1.conv1.weight=128x128x3x3
    layer2.1.bn2=bn128 layer2.1.conv2.weight=128x128x3x3 layer3.0.bn1=bn128
    layer3.0.conv1.weight=256x128x3x3 layer3.0.bn2=bn256 layer3.0.conv2.weight=256x256x3x3
    layer3.0.shortcut.0.weight=256x128x1x1 layer3.1.bn1=bn256 layer3.1.conv1.weight=256x256x3x3
    layer3.1.bn2=bn256 layer3.1.conv2.weight=256x256x3x3 layer4.0.bn1=bn256
    layer4.0.conv1.weight=512x256x3x3 layer4.0.bn2=bn512 layer4.0.conv2.weight=512x512x3x3
    layer4.0.shortcut.0.weight=512x256x1x1 layer4.1.bn1=bn512 layer4.1.conv1.weight=512x512x3x3
    layer4.1.bn2=bn512 layer4.1.conv2.weight=512x512x3x3 linear.weight=10x512 linear.bias=10
    """,
    "resnet18_cifar": """
    conv1.weight=64x3x3x3 bn1=bn64 layer1.0.conv1.weight=64x64x3x3 layer1.0.bn1=bn64
    layer1.0.conv2.weight=64x64x3x3 layer1.0.bn2=bn64 layer1.1.conv1.weight=64x64x3x3
    layer1.1.bn1=bn64 layer1.1.conv2.weight=64x64x3x3 layer1.1.bn2=bn64
    layer2.0.conv1.weight=128x64x3x3 layer2.0.bn1=bn128 layer2.0.conv2.weight=128x128x3x3
    layer2.0.bn2=bn128 layer2.0.shortcut.0.weight=128x64x1x1 layer2.0.shortcut.1=bn128
    layer2.1.conv1.weight=128x128x3x3 layer2.1.bn1=bn128 layer2.1.conv2.weight=128x128x3x3
    layer2.1.bn2=bn128 layer3.0.conv1.weight=256x128x3x3 layer3.0.bn1=bn256
    layer3.0.conv2.weight=256x256x3x3 layer3.0.bn2=bn256 layer3.0.shortcut.0.weight=256x128x1x1
    layer3.0.shortcut.1=bn256 layer3.1.conv1.weight=256x256x3x3 layer3.1.bn1=bn256
    layer3.1.conv2.weight=256x256x3x3 layer3.1.bn2=bn256 layer4.0.conv1.weight=512x256x3x3
    layer4.0.bn1=bn512 layer4.0.conv2.weight=512x512x3x3 layer4.0.bn2=bn512
    layer4.0.shortcut.0.weight=512x256x1x1 layer4.0.shortcut.1=bn512
    layer4.1.conv1.weight=512x512x3x3 layer4.1.bn1=bn512 layer4.1.conv2.weight=512x512x3x3
    layer4.1.bn2=bn512 linear.weight=10x512 linear.bias=10
    """,
    "wrn_28_10": """
    conv1.weight=16x3x3x3 block1.layer.0.bn1=bn16 block1.layer.0.conv1.weight=160x16x3x3
    block1.layer.0.bn2=bn160 block1.layer.0.conv2.weight=160x160x3x3
    block1.layer.0.convShortcut.weight=160x16x1x1 block1.layer.1.bn1=bn160
    block1.layer.1.conv1.weight=160x160x3x3 block1.layer.1.bn2=bn160
    block1.layer.1.conv2.weight=160x160x3x3 block1.layer.2.bn1=bn160
    block1.layer.2.conv1.weight=160x160x3x3 block1.layer.2.bn2=bn160
    block1.layer.2.conv2.weight=160x160x3x3 block1.layer.3.bn1=bn160
    block1.layer.3.conv1.weight=160x160x3x3 block1.layer.3.bn2=bn160
    block1.layer.3.conv2.weight=160x160x3x3 block2.layer.0.bn1=bn160
    block2.layer.0.conv1.weight=320x160x3x3 block2.layer.0.bn2=bn320
    block2.layer.0.conv2.weight=320x320x3x3 block2.layer.0.convShortcut.weight=320x160x1x1
    block2.layer.1.bn1=bn320 block2.layer.1.conv1.weight=320x320x3x3 block2.layer.1.bn2=bn320
    block2.layer.1.conv2.weight=320x320x3x3 block2.layer.2.bn1=bn320
    block2.layer.2.conv1.weight=320x320x3x3 block2.layer.2.bn2=bn320
    block2.layer.2.conv2.weight=320x320x3x3 block2.layer.3.bn1=bn320
    block2.layer.3.conv1.weight=320x320x3x3 block2.layer.3.bn2=bn320
    block2.layer.3.conv2.weight=320x320x3x3 block3.layer.0.bn1=bn320
    block3.layer.0.conv1.weight=640x320x3x3 block3.layer.0.bn2=bn640
    block3.layer.0.conv2.weight=640x640x3x3 block3.layer.0.convShortcut.weight=640x320x1x1
    block3.layer.1.bn1=bn640 block3.layer.1.conv1.weight=640x640x3x3 block3.layer.1.bn2=bn640
    block3.layer.1.conv2.weight=640x640x3x3 block3.layer.2.bn1=bn640
    block3.layer.2.conv1.weight=640x640x3x3 block3.layer.2.bn2=bn640
    block3.layer.2.conv2.weight=640x640x3x3 block3.layer.3.bn1=bn640
    block3.layer.3.conv1.weight=640x640x3x3 block3.layer.3.bn2=bn640
    block3.layer.3.conv2.weight=640x640x3x3 bn1=bn640 fc.weight=10x640 fc.bias=10
    """,
    "wrn_34_10": """
    conv1.weight=16x3x3x3 block1.layer.0.bn1=bn16 block1.layer.0.conv1.weight=160x16x3x3
    block1.layer.0.bn2=bn160 block1.layer.0.conv2.weight=160x160x3x3
    block1.layer.0.convShortcut.weight=160x16x1x1 block1.layer.1.bn1=bn160
    block1.layer.1.conv1.weight=160x160x3x3 block1.layer.1.bn2=bn160
    block1.layer.1.conv2.weight=160x160x3x3 block1.layer.2.bn1=bn160
    block1.layer.2.conv1.weight=160x160x3x3 block1.layer.2.bn2=bn160
    block1.layer.2.conv2.weight=160x160x3x3 block1.layer.3.bn1=bn160
    block1.layer.3.conv1.weight=160x160x3x3 block1.layer.3.bn2=bn160
    block1.layer.3.conv2.weight=160x160x3x3 block1.layer.4.bn1=bn160
    block1.layer.4.conv1.weight=160x160x3x3 block1.layer.4.bn2=bn160
    block1.layer.4.conv2.weight=160x160x3x3 block2.layer.0.bn1=bn160
    block2.layer.0.conv1.weight=320x160x3x3 block2.layer.0.bn2=bn320
    block2.layer.0.conv2.weight=320x320x3x3 block2.layer.0.convShortcut.weight=320x160x1x1
    block2.layer.1.bn1=bn320 block2.layer.1.conv1.weight=320x320x3x3 block2.layer.1.bn2=bn320
    block2.layer.1.conv2.weight=320x320x3x3 block2.layer.2.bn1=bn320
    block2.layer.2.conv1.weight=320x320x3x3 block2.layer.2.bn2=bn320
    block2.layer.2.conv2.weight=320x320x3x3 block2.layer.3.bn1=bn320
    block2.layer.3.conv1.weight=320x320x3x3 block2.layer.3.bn2=bn320
    block2.layer.3.conv2.weight=320x320x3x3 block2.layer.4.bn1=bn320
    block2.layer.4.conv1.weight=320x320x3x3 block2.layer.4.bn2=bn320
    block2.layer.4.conv2.weight=320x320x3x3 block3.layer.0.bn1=bn320
    block3.layer.0.conv1.weight=640x320x3x3 block3.layer.0.bn2=bn640
    block3.layer.0.conv2.weight=640x640x3x3 block3.layer.0.convShortcut.weight=640x320x1x1
    block3.layer.1.bn1=bn640 block3.layer.1.conv1.weight=640x640x3x3 block3.layer.1.bn2=bn640
    block3.layer.1.conv2.weight=640x640x3x3 block3.layer.2.bn1=bn640
    block3.layer.2.conv1.weight=640x640x3x3 block3.layer.2.bn2=bn640
    block3.layer.2.conv2.weight=640x640x3x3 block3.layer.3.bn1=bn640
    block3.layer.3.conv1.weight=640x640x3x3 block3.layer.3.bn2=bn640
    block3.layer.3.conv2.weight=640x640x3x3 block3.layer.4.bn1=bn640
    block3.layer.4.conv1.weight=640x640x3x3 block3.layer.4.bn2=bn640
    block3.layer.4.conv2.weight=640x640x3x3 bn1=bn640 fc.weight=10x640 fc.bias=10
    """,
    "resnet50": """
    conv1.weight=64x3x7x7 bn1=bn64 layer1.0.conv1.weight=64x64x1x1 layer1.0.bn1=bn64
    layer1.0.conv2.weight=64x64x3x3 layer1.0.bn2=bn64 layer1.0.conv3.weight=256x64x1x1
    layer1.0.bn3=bn256 layer1.0.downsample.0.weight=256x64x1x1 layer1.0.downsample.1=bn256
    layer1.1.conv1.weight=64x256x1x1 layer1.1.bn1=bn64 layer1.1.conv2.weight=64x64x3x3
    layer1.1.bn2=bn64 layer1.1.conv3.weight=256x64x1x1 layer1.1.bn3=bn256
    layer1.2.conv1.weight=64x256x1x1 layer1.2.bn1=bn64 layer1.2.conv2.weight=64x64x3x3
    layer1.2.bn2=bn64 layer1.2.conv3.weight=256x64x1x1 layer1.2.bn3=bn256
    layer2.0.conv1.weight=128x256x1x1 layer2.0.bn1=bn128 layer2.0.conv2.weight=128x128x3x3
    layer2.0.bn2=bn128 layer2.0.conv3.weight=512x128x1x1 layer2.0.bn3=bn512
    layer2.0.downsample.0.weight=512x256x1x1 layer2.0.downsample.1=bn512
    layer2.1.conv1.weight=128x512x1x1 layer2.1.bn1=bn128 layer2.1.conv2.weight=128x128x3x3
    layer2.1.bn2=bn128 layer2.1.conv3.weight=512x128x1x1 layer2.1.bn3=bn512
    layer2.2.conv1.weight=128x512x1x1 layer2.2.bn1=bn128 layer2.2.conv2.weight=128x128x3x3
    layer2.2.bn2=bn128 layer2.2.conv3.weight=512x128x1x1 layer2.2.bn3=bn512
    layer2.3.conv1.weight=128x512x1x1 layer2.3.bn1=bn128 layer2.3.conv2.weight=128x128x3x3
    layer2.3.bn2=bn128 layer2.3.conv3.weight=512x128x1x1 layer2.3.bn3=bn512
    layer3.0.conv1.weight=256x512x1x1 layer3.0.bn1=bn256 layer3.0.conv2.weight=256x256x3x3
    layer3.0.bn2=bn256 layer3.0.conv3.weight=1024x256x1x1 layer3.0.bn3=bn1024
    layer3.0.downsample.0.weight=1024x512x1x1 layer3.0.downsample.1=bn1024
    layer3.1.conv1.weight=256x1024x1x1 layer3.1.bn1=bn256 layer3.1.conv2.weight=256x256x3x3
    layer3.1.bn2=bn256 layer3.1.conv3.weight=1024x256x1x1 layer3.1.bn3=bn1024
    layer3.2.conv1.weight=256x1024x1x1 layer3.2.bn1=bn256 layer3.2.conv2.weight=256x256x3x3
    layer3.2.bn2=bn256 layer3.2.conv3.weight=1024x256x1x1 layer3.2.bn3=bn1024
    layer3.3.conv1.weight=256x1024x1x1 layer3.3.bn1=bn256 layer3.3.conv2.weight=256x256x3x3
    layer3.3.bn2=bn256 layer3.3.conv3.weight=1024x256x1x1 layer3.3.bn3=bn1024
    layer3.4.conv1.weight=256x1024x1x1 layer3.4.bn1=bn256 layer3.4.conv2.weight=256x256x3x3
    layer3.4.bn2=bn256 layer3.4.conv3.weight=1024x256x1x1 layer3.4.bn3=bn1024
    layer3.5.conv1.weight=256x1024x1x1 layer3.5.bn1=bn256 layer3.5.conv2.weight=256x256x3x3
    layer3.5.bn2=bn256 layer3.5.conv3.weight=1024x256x1x1 layer3.5.bn3=bn1024
    layer4.0.conv1.weight=512x1024x1x1 layer4.0.bn1=bn512 layer4.0.conv2.weight=512x512x3x3
    layer4.0.bn2=bn512 layer4.0.conv3.weight=2048x512x1x1 layer4.0.bn3=bn2048
    layer4.0.downsample.0.weight=2048x1024x1x1 layer4.0.downsample.1=bn2048
    layer4.1.conv1.weight=512x2048x1x1 layer4.1.bn1=bn512 layer4.1.conv2.weight=512x512x3x3
    layer4.1.bn2=bn512 layer4.1.conv3.weight=2048x512x1x1 layer4.1.bn3=bn2048
    layer4.2.conv1.weight=512x2048x1x1 layer4.2.bn1=bn512 layer4.2.conv2.weight=512x512x3x3
    layer4.2.bn2=bn512 layer4.2.conv3.weight=2048x512x1x1 layer4.2.bn3=bn2048
    fc.weight=1000x2048 fc.bias=1000
    """,
}
"""Architecture name → its public definition's state dict, in order (see the module docstring)."""


def _expand(table: str) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = []
    for entry in table.split():
        key, shape = entry.split("=")
        if shape.startswith("bn"):
            c = int(shape[2:])
            out += [(f"{key}.{s}", (c,)) for s in BN_KEYS[:4]]
            out.append((f"{key}.num_batches_tracked", ()))
        else:
            out.append((key, tuple(int(d) for d in shape.split("x"))))
    return out


def _keys(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_matches_the_public_definition(name: str) -> None:
    torch.manual_seed(0)
    model = FACTORIES[name]()
    expected, actual = _expand(EXPECTED[name]), _keys(model)
    assert [k for k, _ in actual] == [k for k, _ in expected]
    assert actual == expected
    # a checkpoint of the public definition (here: ours, the same keys) loads strictly
    fresh = FACTORIES[name]()
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_forward_gives_one_logit_per_class(name: str) -> None:
    model = FACTORIES[name]().eval()
    batch = 1 if name == "resnet50" else 2
    with torch.no_grad():
        logits = model(torch.rand(batch, *INPUT[name]))
    assert logits.shape == (batch, CLASSES[name])
    assert torch.isfinite(logits).all()


def test_num_classes_and_options() -> None:
    assert preact_resnet18(num_classes=100).state_dict()["linear.weight"].shape == (100, 512)
    assert resnet18_cifar(num_classes=2).state_dict()["linear.bias"].shape == (2,)
    assert resnet50(num_classes=10).state_dict()["fc.weight"].shape == (10, 2048)
    assert wrn_28_10(num_classes=100).state_dict()["fc.weight"].shape == (100, 640)
    assert "fc.bias" not in wrn_28_10(bias_last=False).state_dict()
    with_bn = _keys(preact_resnet18(bn_before_fc=True, out_shortcut=True))
    expected = _expand(EXPECTED["preact_resnet18"])
    assert with_bn == expected[:-2] + _expand("bn=bn512") + expected[-2:]
    for bad in (
        lambda: wrn_34_10(num_classes=1),
        lambda: resnet50(num_classes=0),
        lambda: resnet18_cifar(num_classes=1),
        lambda: wrn_28_10(dropout=1.0),
        lambda: aegis.zoo.cifar.WideResNet(depth=30),
        lambda: aegis.zoo.cifar.CifarResNet(bn_before_fc=True),
    ):
        with pytest.raises(ConfigError):
            bad()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_registered_for_sidecars_and_the_factory_flag(name: str) -> None:
    factory = FACTORIES[name]
    assert ARCHITECTURES[name] is factory
    assert find_architecture(f"aegis.zoo.architectures:{name}") is factory
    assert find_architecture(f"aegis.zoo:{name}") is factory
    assert _import_factory(f"aegis.zoo:{name}") is factory


def test_checkpoint_loads_from_sidecar_and_factory_flag(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = resnet18_cifar().eval()
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    flag = load_classifier(path, factory="aegis.zoo:resnet18_cifar", input_shape=(3, 32, 32))
    assert flag.provenance["factory"] == "flag: aegis.zoo:resnet18_cifar"
    path.with_suffix(".json").write_text(
        '{"factory": "aegis.zoo.architectures:resnet18_cifar", "input_shape": [3, 32, 32]}'
    )
    side = load_classifier(path)
    assert side.provenance["factory"] == "sidecar: aegis.zoo.architectures:resnet18_cifar"
    for clf in (flag, side):
        with torch.no_grad():
            torch.testing.assert_close(clf.module(x), want)
