"""ImageNet architectures (3×224×224 input) whose public checkpoints users attack.

The parameter and buffer names and shapes are those of torchvision's ``resnet50``
(``torchvision/models/resnet.py``: ``conv1``, ``bn1``, ``layer1..4`` of ``Bottleneck`` blocks with
``downsample.0/1``, ``fc``), key for key, so its state dicts (and those of the robust ImageNet
checkpoints written for it) load with ``strict=True``. The bottleneck strides on its 3×3 conv
(torchvision's "ResNet v1.5"). Input is NCHW; normalise it outside (``--mean imagenet --std
imagenet``).

    >>> resnet50()(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aegis.errors import ConfigError
from aegis.zoo.architectures import ARCHITECTURES


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, each followed by BN; ReLU after the
    first two and after the residual sum; ``downsample`` (1×1 conv + BN) when shapes change."""

    expansion = 4
    downsample: nn.Sequential | None

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                _conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip: Tensor = x if self.downsample is None else self.downsample(x)
        result: Tensor = self.relu(out + skip)
        return result


class ImageNetResNet(nn.Module):
    """Bottleneck ResNet: 7×7/2 stem with BN-ReLU and a 3×3/2 max-pool, four stages (64, 128,
    256, 512 bottleneck widths, strides 1, 2, 2, 2), global average pool and ``fc``.

    Args:
        layers: blocks per stage ((3, 4, 6, 3) for ResNet-50).
        num_classes: number of logits.
    """

    def __init__(
        self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), *, num_classes: int = 1000
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if min(layers) < 1:
            raise ConfigError(f"layers must be >= 1 each, got {layers}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for planes, stride, count in zip((64, 128, 256, 512), (1, 2, 2, 2), layers, strict=True):
            blocks: list[nn.Module] = []
            for s in [stride] + [1] * (count - 1):
                blocks.append(Bottleneck(in_planes, planes, s))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        logits: Tensor = self.fc(torch.flatten(self.avgpool(out), 1))
        return logits


def resnet50(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 for 224×224 ImageNet input (torchvision's ``resnet50`` keys; ≈ 25.6M
    parameters)."""
    return ImageNetResNet((3, 4, 6, 3), num_classes=num_classes)


# sidecars name these as aegis.zoo.architectures:NAME, the CLI as --factory aegis.zoo:NAME
ARCHITECTURES.register("resnet50", resnet50)

__all__ = ["Bottleneck", "ImageNetResNet", "resnet50"]
