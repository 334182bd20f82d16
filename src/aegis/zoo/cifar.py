"""CIFAR architectures (3×32×32 input) whose public checkpoints users attack.

The parameter and buffer names and shapes are those of RobustBench's model definitions
(``robustbench/model_zoo/architectures/resnet.py`` for ``ResNet18`` and ``PreActResNet18``,
``wide_resnet.py`` for ``WideResNet(depth, widen_factor)``), key for key, so their state dicts
load with ``strict=True``; the forward passes compute the same functions (post-activation
``BasicBlock`` with conv+BN shortcuts; pre-activation blocks with a 1×1 conv shortcut on the raw
input; WideResNet's shortcut on the pre-activated input and its final BN-ReLU-pool). Every model
takes NCHW input (normalise it outside, e.g. ``--mean cifar10 --std cifar10``) and returns logits.

    >>> net = wrn_28_10()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from aegis.errors import ConfigError
from aegis.zoo.architectures import ARCHITECTURES


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (identity, or 1×1 conv + BN), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()  # empty: identity, and no state-dict keys
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                _conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus a shortcut: identity, or a 1×1 conv (no BN) applied to the
    raw input (to the pre-activated input with ``out_shortcut=True``)."""

    shortcut: nn.Sequential | None

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, *, out_shortcut: bool = False
    ) -> None:
        super().__init__()
        self.out_shortcut = out_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(_conv1x1(in_planes, planes, stride))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        source = out if self.out_shortcut else x
        skip: Tensor = x if self.shortcut is None else self.shortcut(source)
        out = self.conv1(out)
        residual: Tensor = self.conv2(F.relu(self.bn2(out)))
        return residual + skip


class CifarResNet(nn.Module):
    """ResNet for 32×32 input: a 3×3 stem, four stages (64, 128, 256, 512 channels, strides
    1, 2, 2, 2), a 4×4 average pool and ``linear``.

    Args:
        num_blocks: blocks per stage.
        preact: pre-activation blocks (no stem BN) instead of post-activation ones.
        num_classes: number of logits.
        bn_before_fc: (pre-activation only) a final BN + ReLU named ``bn`` before the pool.
        out_shortcut: (pre-activation only) shortcuts see the pre-activated input.
    """

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        *,
        preact: bool = False,
        num_classes: int = 10,
        bn_before_fc: bool = False,
        out_shortcut: bool = False,
    ) -> None:
        super().__init__()
        _check_classes(num_classes)
        if min(num_blocks) < 1:
            raise ConfigError(f"num_blocks must be >= 1 each, got {num_blocks}")
        if not preact and (bn_before_fc or out_shortcut):
            raise ConfigError("bn_before_fc and out_shortcut apply to pre-activation nets only")
        self.preact = preact
        self.conv1 = _conv3x3(3, 64)
        self.bn1: nn.BatchNorm2d | None = None if preact else nn.BatchNorm2d(64)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for planes, stride, count in zip(
            (64, 128, 256, 512), (1, 2, 2, 2), num_blocks, strict=True
        ):
            blocks: list[nn.Module] = []
            for s in [stride] + [1] * (count - 1):
                if preact:
                    blocks.append(PreActBlock(in_planes, planes, s, out_shortcut=out_shortcut))
                else:
                    blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(512) if bn_before_fc else None
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        logits: Tensor = self.linear(out.flatten(1))
        return logits


class WideBlock(nn.Module):
    """WideResNet's pre-activation block: BN-ReLU-conv-BN-ReLU-(dropout)-conv; when the width or
    stride changes, the shortcut is a 1×1 ``convShortcut`` on the pre-activated input."""

    convShortcut: nn.Conv2d | None  # the checkpoints' key name

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = _conv3x3(out_planes, out_planes)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = _conv1x1(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        residual: Tensor = self.conv2(out)
        skip: Tensor = x if self.convShortcut is None else self.convShortcut(act)
        return skip + residual


class WideStage(nn.Module):
    """A stage of ``count`` wide blocks, held as ``layer`` (the checkpoints' key prefix)."""

    def __init__(
        self, count: int, in_planes: int, out_planes: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(count)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32×32 input: a 16-channel 3×3 stem, three stages of
    (depth - 4) / 6 blocks (16k, 32k, 64k channels, strides 1, 2, 2), BN-ReLU, an 8×8 average
    pool and ``fc``.

    Args:
        depth: 6n + 4 (28 or 34 for the common checkpoints).
        widen_factor: channel multiplier k.
        num_classes: number of logits.
        dropout: dropout inside each block (only active in ``train()``).
        bias_last: whether ``fc`` has a bias.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        *,
        num_classes: int = 10,
        dropout: float = 0.0,
        bias_last: bool = True,
    ) -> None:
        super().__init__()
        _check_classes(num_classes)
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ConfigError(f"widen_factor must be >= 1, got {widen_factor}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(3, widths[0])
        self.block1 = WideStage(n, widths[0], widths[1], 1, dropout)
        self.block2 = WideStage(n, widths[1], widths[2], 2, dropout)
        self.block3 = WideStage(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)
        self.channels = widths[3]

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        logits: Tensor = self.fc(out.reshape(-1, self.channels))
        return logits


def resnet18_cifar(*, num_classes: int = 10) -> nn.Module:
    """ResNet-18 for CIFAR (RobustBench's ``ResNet18``: keys ``conv1``, ``bn1``, ``layer1..4``
    with ``shortcut.0/1``, ``linear``; ≈ 11.2M parameters)."""
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes)


def preact_resnet18(
    *, num_classes: int = 10, bn_before_fc: bool = False, out_shortcut: bool = False
) -> nn.Module:
    """PreAct-ResNet-18 for CIFAR (RobustBench's ``PreActResNet18``: no stem BN, ``shortcut.0``
    convs, ``linear``; ``bn_before_fc`` adds the final ``bn`` some checkpoints have)."""
    return CifarResNet(
        (2, 2, 2, 2),
        preact=True,
        num_classes=num_classes,
        bn_before_fc=bn_before_fc,
        out_shortcut=out_shortcut,
    )


def wrn_28_10(*, num_classes: int = 10, dropout: float = 0.0, bias_last: bool = True) -> nn.Module:
    """WideResNet-28-10 (RobustBench's ``WideResNet(depth=28, widen_factor=10)``, ≈ 36.5M
    parameters)."""
    return WideResNet(28, 10, num_classes=num_classes, dropout=dropout, bias_last=bias_last)


def wrn_34_10(*, num_classes: int = 10, dropout: float = 0.0, bias_last: bool = True) -> nn.Module:
    """WideResNet-34-10 (RobustBench's ``WideResNet(depth=34, widen_factor=10)``, ≈ 46.2M
    parameters)."""
    return WideResNet(34, 10, num_classes=num_classes, dropout=dropout, bias_last=bias_last)


# sidecars name these as aegis.zoo.architectures:NAME, the CLI as --factory aegis.zoo:NAME
ARCHITECTURES.register("preact_resnet18", preact_resnet18)
ARCHITECTURES.register("resnet18_cifar", resnet18_cifar)
ARCHITECTURES.register("wrn_28_10", wrn_28_10)
ARCHITECTURES.register("wrn_34_10", wrn_34_10)

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PreActBlock",
    "WideBlock",
    "WideResNet",
    "WideStage",
    "preact_resnet18",
    "resnet18_cifar",
    "wrn_28_10",
    "wrn_34_10",
]
